//! Block images: `backup --block`, restore, dump, incremental, resume after
//! a kill, check and prune (issue 12). Properties, not exit codes: the
//! restored image equals the source byte for byte and is sparse, an
//! incremental stores only the changed chunk and reads no holes, a resumed
//! run reads less than the whole image.

use crate::common::{Env, du, is_s3, run};
use baton_testing::Rng;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const MIB: u64 = 1 << 20;

/// A sparse image of `size` bytes with random data in `[start, len)`
/// regions; returns its bytes as read back.
pub fn make_image(path: &Path, size: u64, regions: &[(u64, u64)], seed: u64) -> Vec<u8> {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut rng = Rng::new(seed);
    for &(start, len) in regions {
        let mut b = vec![0u8; len as usize];
        rng.fill(&mut b);
        f.write_all_at(&b, start).unwrap();
    }
    f.sync_all().unwrap();
    std::fs::read(path).unwrap()
}

/// Bytes allocated on disk by a file.
pub fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// `check` (with `--read-data`) finds no errors (warnings, such as a
/// forgotten parent or a pack a killed run left, are allowed).
pub fn check_clean(env: &Env, read_data: bool) {
    let mut args = vec!["check"];
    if read_data {
        args.push("--read-data");
    }
    let c = env.run(&args).ok();
    assert!(
        c.stdout.contains("no problems found") || c.stdout.contains("no errors found"),
        "{}",
        c.stdout
    );
}

pub fn block_backup(env: &Env, image: &Path, extra: &[&str]) -> serde_json::Value {
    let mut c = env.cmd();
    c.args(["backup", "--json", "--block"])
        .arg(image)
        .args(extra);
    run(&mut c).ok().json()
}

#[test]
fn an_image_round_trips_sparse_and_dumps_byte_exact() {
    let env = Env::new();
    let img = env.path("disk.img");
    // Not a multiple of the chunk size; data straddling chunk boundaries.
    let size = 40 * MIB + 12_345;
    let want = make_image(
        &img,
        size,
        &[
            (3 * MIB - 100, 2 * MIB),
            (17 * MIB, 4096),
            (size - 5000, 5000),
        ],
        1,
    );
    let s = block_backup(&env, &img, &[]);
    assert_eq!(s["image_size"], size);
    assert_eq!(s["chunks"], 41);
    // Chunks 2, 3, 4, 17 and 40 hold data: the rest are holes.
    assert_eq!(s["holes"], 41 - 5, "{s}");
    assert!(
        s["bytes_read"].as_u64().unwrap() <= 6 * MIB + 12_345,
        "holes must not be read: {s}"
    );

    let out = env.path("restored.img");
    env.restore("latest", &out, &[]).ok();
    assert!(
        std::fs::read(&out).unwrap() == want,
        "restored image differs"
    );
    assert!(
        allocated(&out) <= 8 * MIB,
        "restored image is not sparse: {} bytes allocated",
        allocated(&out)
    );
    // Restoring over an existing, larger file leaves nothing of it behind.
    std::fs::write(&out, vec![0xee; 50 * MIB as usize]).unwrap();
    env.restore("latest:disk.img", &out, &[]).ok();
    assert!(std::fs::read(&out).unwrap() == want);

    let dumped = env
        .cmd()
        .args(["dump", "latest", "/disk.img"])
        .output()
        .unwrap();
    assert!(dumped.stdout == want, "dump differs");

    let ls = env.run(&["ls", "--json", "latest"]).ok();
    assert!(
        ls.stdout.contains("disk.img") && ls.stdout.contains("\"image\""),
        "{}",
        ls.stdout
    );
    let snaps = env.run(&["snapshots", "--json"]).ok().json()["snapshots"].clone();
    assert!(
        snaps[0]["paths"][0]
            .as_str()
            .unwrap()
            .ends_with("/disk.img"),
        "{snaps}"
    );
    check_clean(&env, true);
}

#[test]
fn an_incremental_stores_only_the_changed_chunk() {
    let env = Env::new();
    let img = env.path("vm.raw");
    let size = 32 * MIB;
    let first = make_image(&img, size, &[(0, 8 * MIB), (20 * MIB, MIB)], 2);
    let a = block_backup(&env, &img, &[]);
    assert_eq!(a["chunks_new"], 9);
    // Change 4 KiB in chunk 5.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&[0x5a; 4096], 5 * MIB + 777).unwrap();
    drop(f);
    let second = std::fs::read(&img).unwrap();
    let b = block_backup(&env, &img, &[]);
    assert_eq!(b["chunks_new"], 1, "{b}");
    assert_eq!(b["chunks_changed"], 1, "{b}");
    assert_eq!(b["parent"], a["snapshot_id"]);
    // Holes are skipped by SEEK_DATA: only the 9 data chunks are read.
    assert_eq!(b["bytes_read"], 9 * MIB, "{b}");
    assert!(
        b["bytes_stored"].as_u64().unwrap() < 2 * MIB,
        "one chunk and metadata: {b}"
    );
    // Unchanged since: not read at all, same tree; --force reads it.
    let c = block_backup(&env, &img, &[]);
    assert_eq!(c["bytes_read"], 0, "{c}");
    assert_eq!(c["tree_id"], b["tree_id"], "{c}");
    let d = block_backup(&env, &img, &["--force"]);
    assert_eq!(d["bytes_read"], 9 * MIB, "{d}");
    assert_eq!(d["chunks_new"], 0, "{d}");
    assert_eq!(d["tree_id"], b["tree_id"], "{d}");
    for (snap, want) in [
        (a["snapshot_id"].as_str().unwrap(), &first),
        ("latest", &second),
    ] {
        let out = env.path(&format!("out-{}", &snap[..6]));
        env.restore(snap, &out, &[]).ok();
        assert!(
            std::fs::read(&out).unwrap() == *want,
            "snapshot {snap} restores wrong"
        );
    }
}

#[test]
fn a_stream_is_backed_up_as_an_image() {
    let env = Env::new();
    let src = env.path("src.img");
    let want = make_image(&src, 5 * MIB + 3, &[(MIB / 2, 3 * MIB)], 3);
    let mut c = env.cmd();
    c.args([
        "backup",
        "--json",
        "--block",
        "-",
        "--image-name",
        "piped.img",
    ])
    .pipe_stdin(&src)
    .unwrap();
    let s = run(&mut c).ok().json();
    assert_eq!(s["image_size"], 5 * MIB + 3);
    let out = env.path("out.img");
    env.restore("latest:piped.img", &out, &[]).ok();
    assert!(std::fs::read(&out).unwrap() == want);
}

#[test]
fn a_killed_block_backup_resumes_without_rereading() {
    let env = Env::with_pack_size(1);
    let img = env.path("big.img");
    let size = 48 * MIB;
    let want = make_image(&img, size, &[(0, size)], 4);
    // 64 KiB chunks: a segment covers 16 MiB; the third journal record
    // holds at least one segment.
    let mut c = env.cmd();
    c.env("BATON_CRASHPOINT", "after-journal:40")
        .args([
            "backup",
            "--json",
            "--checkpoint-interval",
            "0",
            "--block-size",
            "64KiB",
            "--block",
        ])
        .arg(&img);
    let killed = run(&mut c);
    assert_ne!(
        killed.code, 0,
        "the crash point was not reached: {}",
        killed.stderr
    );
    assert!(killed.stderr.contains("crash point"), "{}", killed.stderr);
    let jobs = env.run(&["jobs", "--json"]).ok();
    assert!(jobs.stdout.contains("big.img"), "{}", jobs.stdout);
    let s = block_backup(&env, &img, &["--block-size", "64KiB"]);
    assert_eq!(s["resumed"], true, "{s}");
    let resumed = s["bytes_resumed"].as_u64().unwrap();
    assert!(resumed >= 16 * MIB, "{s}");
    assert_eq!(s["bytes_read"].as_u64().unwrap(), size - resumed, "{s}");
    let out = env.path("out.img");
    env.restore("latest", &out, &[]).ok();
    assert!(
        std::fs::read(&out).unwrap() == want,
        "resumed image differs"
    );
    check_clean(&env, false);
}

#[test]
fn check_and_prune_understand_images() {
    let env = Env::new();
    let img = env.path("d.img");
    make_image(&img, 16 * MIB, &[(0, 4 * MIB)], 5);
    let a = block_backup(&env, &img, &[]);
    let want = make_image(&img, 16 * MIB, &[(8 * MIB, 4 * MIB)], 6);
    block_backup(&env, &img, &[]);
    let before = du(&env.repo);
    env.run(&["forget", a["snapshot_id"].as_str().unwrap()])
        .ok();
    env.run(&["prune"]).ok();
    assert!(
        du(&env.repo) + 3 * MIB < before,
        "prune freed the first image's chunks: {} -> {}",
        before,
        du(&env.repo)
    );
    let out = env.path("out.img");
    env.restore("latest", &out, &[]).ok();
    assert!(
        std::fs::read(&out).unwrap() == want,
        "prune lost a chunk still used"
    );
    check_clean(&env, true);

    if is_s3(&env.repo) {
        return;
    }
    // A data pack goes missing: check names the image's missing chunks.
    let packs = crate::common::objects(&env.repo, "data");
    let biggest = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    std::fs::remove_file(biggest).unwrap();
    let check = env.run(&["check"]);
    assert_ne!(check.code, 0);
    let text = format!("{}{}", check.stdout, check.stderr);
    assert!(
        text.contains("does not exist") && text.contains("1 error"),
        "{text}"
    );
    // A restore fails with a message naming the range, no panic.
    let r = env.restore("latest", &env.path("again.img"), &[]);
    crate::common::no_panic(&r);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("image bytes"), "{}", r.stderr);
}

#[test]
fn images_and_files_are_kept_apart() {
    let env = Env::new();
    let img = env.path("x.img");
    make_image(&img, 2 * MIB, &[(0, MIB)], 7);
    block_backup(&env, &img, &[]);
    // A file restore of an image snapshot is not possible as files; a
    // block restore of a file snapshot is refused.
    let data = env.path("files");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("a"), b"a").unwrap();
    env.backup(&[&data], &[]);
    let r = env.restore("latest", &env.path("t"), &["--instant"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    // Bad sizes are usage errors.
    let r = env.run(&[
        "backup",
        "--block",
        img.to_str().unwrap(),
        "--block-size",
        "3000",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = env.run(&["backup", "--block", "/nonexistent/device"]);
    assert_ne!(r.code, 0);
    crate::common::no_panic(&r);
}

#[test]
fn an_image_restores_onto_a_block_device() {
    if !crate::common::is_root() {
        eprintln!("skipped: needs root for a loop device");
        return;
    }
    let env = Env::new();
    let img = env.path("dev.img");
    let want = make_image(&img, 8 * MIB, &[(MIB, MIB), (6 * MIB, 100)], 8);
    block_backup(&env, &img, &[]);
    // A device full of old bytes: the image's holes must come out as zeros.
    let backing = env.path("backing");
    std::fs::write(&backing, vec![0xee; 8 * MIB as usize]).unwrap();
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&backing)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "skipped: no loop device: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = env.restore("latest", Path::new(&dev), &[]);
    let _ = std::process::Command::new("losetup")
        .args(["-d", &dev])
        .status();
    r.ok();
    assert!(
        std::fs::read(&backing).unwrap() == want,
        "device content differs from the image"
    );
}

/// A resumed run whose journaled segments lost a pack re-reads from there,
/// is killed again, and the third run still builds the right image (each
/// journaled segment carries its place).
#[test]
fn a_resume_after_a_lost_pack_and_a_second_kill_builds_the_right_image() {
    if is_s3(&Env::empty().repo) {
        return;
    }
    let env = Env::with_pack_size(1);
    let img = env.path("big.img");
    let size = 48 * MIB;
    let want = make_image(&img, size, &[(0, size)], 9);
    let killed = |n: u32| {
        let mut c = env.cmd();
        c.env("BATON_CRASHPOINT", format!("after-journal:{n}"))
            .args([
                "backup",
                "--checkpoint-interval",
                "0",
                "--block-size",
                "64KiB",
                "--block",
            ])
            .arg(&img);
        let r = run(&mut c);
        assert!(
            r.stderr.contains("crash point"),
            "run {n}: exit {}\n{}\n{}",
            r.code,
            r.stdout,
            r.stderr
        );
    };
    // Well before the end: under load, several packs may share a record.
    killed(20);
    // The oldest data pack (chunks of segment 0) is lost.
    let mut packs = crate::common::objects(&env.repo, "data");
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    let first_data = packs
        .iter()
        .find(|p| std::fs::metadata(p).unwrap().len() > 512 << 10)
        .unwrap();
    std::fs::remove_file(first_data).unwrap();
    killed(2);
    let s = block_backup(&env, &img, &["--block-size", "64KiB"]);
    assert_eq!(s["resumed"], true, "{s}");
    let out = env.path("out.img");
    env.restore("latest", &out, &[]).ok();
    assert!(
        std::fs::read(&out).unwrap() == want,
        "the image differs after two resumes"
    );
    check_clean(&env, true);
}
