//! `baton copy` between repositories: the copy restores identically, only
//! the blobs the destination lacks are sent, a killed copy resumes without
//! storing a blob twice, and `init --copy-chunker-params` makes a
//! destination that deduplicates with the source. Between two local
//! repositories and from a local repository to S3 (Ceph RGW); in the S3
//! matrix, between two buckets as well.

use crate::common::{Env, PASSWORD, Run, is_s3, remove_s3_repository, run, s3_mode};
use baton_testing::{CompareOptions, compare_trees, write_file};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const OTHER_PASSWORD: &str = "another password for the second site";

/// `baton` on repository `repo` (password `pw`), copying from `from`
/// (password [`PASSWORD`]).
fn at(env: &Env, repo: &Path, pw: &str, from: &Path) -> assert_cmd::Command {
    assert_cmd::Command::from_std(std_at(env, repo, pw, from))
}

fn std_at(env: &Env, repo: &Path, pw: &str, from: &Path) -> std::process::Command {
    let mut c = env.std_cmd();
    c.env("BATON_REPOSITORY", repo)
        .env("BATON_PASSWORD", pw)
        .env("BATON_FROM_REPOSITORY", from)
        .env("BATON_FROM_PASSWORD", PASSWORD);
    if is_s3(repo) || is_s3(from) {
        c.envs(crate::common::gateway().env());
    }
    c
}

fn go(env: &Env, repo: &Path, pw: &str, from: &Path, args: &[&str]) -> Run {
    run(at(env, repo, pw, from).args(args))
}

/// A second repository location: a bucket of its own on S3 (in the S3
/// matrix, or when `s3` is asked for), else a directory.
fn second(env: &Env, name: &str, s3: bool) -> Option<PathBuf> {
    if s3 || s3_mode() {
        let gw = baton_testing::s3::gateway()?;
        Some(PathBuf::from(
            gw.location(&baton_testing::s3::unique_bucket(), name),
        ))
    } else {
        Some(env.path(name))
    }
}

/// Removes a bucket's objects when dropped.
struct Cleanup(Vec<PathBuf>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            remove_s3_repository(p);
        }
    }
}

fn init(env: &Env, repo: &Path, pw: &str, from: &Path, extra: &[&str]) {
    let mut args = vec!["init", "--kdf-memory", "8192", "--kdf-iterations", "1"];
    args.extend(extra);
    go(env, repo, pw, from, &args).ok();
}

/// Restores `snapshot` of `repo` and compares it with `src`.
fn restores_exactly(env: &Env, repo: &Path, pw: &str, snapshot: &str, src: &Path) {
    let target = env.path(&format!("restore-{}", &snapshot[..8]));
    go(
        env,
        repo,
        pw,
        repo,
        &["restore", snapshot, "--target", target.to_str().unwrap()],
    )
    .ok();
    let opts = CompareOptions {
        ownership: false,
        ..CompareOptions::default()
    };
    compare_trees(src, &target.join(src.strip_prefix("/").unwrap()), &opts)
        .unwrap_or_else(|d| panic!("{}", d.join("\n")));
}

fn ids(v: &serde_json::Value, list: &str, field: &str) -> Vec<String> {
    v[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[field].as_str().unwrap().to_string())
        .collect()
}

fn copy_restores_identically_and_sends_only_what_is_missing(s3: bool) {
    let env = Env::new();
    let Some(dst) = second(&env, "second-site", s3) else {
        return;
    };
    let _clean = Cleanup(vec![dst.clone()]);
    let src = env.path("src");
    for i in 0..4 {
        write_file(&src.join(format!("d{}/f{i}", i % 2)), 3_000_000, i).unwrap();
    }
    std::fs::write(src.join("small"), b"a small file").unwrap();
    std::os::unix::fs::symlink("d0/f0", src.join("link")).unwrap();
    let s1 = env.backup(&[&src], &["--tag", "drill"])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    write_file(&src.join("d1/f1"), 3_000_000, 99).unwrap();
    let s2 = env.backup(&[&src], &[])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    // The destination has its own password and its own master key.
    init(&env, &dst, OTHER_PASSWORD, &env.repo, &[]);
    let r = go(&env, &dst, OTHER_PASSWORD, &env.repo, &["copy", "--json"])
        .ok()
        .json();
    assert_eq!(r["same_ids"], false, "{r}");
    assert_eq!(ids(&r, "copied", "source").len(), 2, "{r}");
    assert!(r["blobs_sent"].as_u64().unwrap() > 0, "{r}");
    // Snapshot 2 shares all but one file with snapshot 1: it sent little.
    let per: Vec<u64> = r["copied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["bytes_sent"].as_u64().unwrap())
        .collect();
    assert!(per[1] < 3_000_000 + 100_000, "{r}");
    assert!(per[0] >= 12_000_000, "{r}");
    // The copies restore to the source's bytes and metadata; their tags and
    // their source are kept.
    let copied = ids(&r, "copied", "copy");
    restores_exactly(&env, &dst, OTHER_PASSWORD, &copied[1], &src);
    let snaps = go(
        &env,
        &dst,
        OTHER_PASSWORD,
        &env.repo,
        &["snapshots", "--json", "--tag", "drill"],
    )
    .ok()
    .json();
    assert_eq!(ids(&snaps, "snapshots", "id"), vec![copied[0].clone()]);
    let cat = go(
        &env,
        &dst,
        OTHER_PASSWORD,
        &env.repo,
        &["cat", "snapshot", &copied[0]],
    )
    .ok();
    let snap: serde_json::Value = serde_json::from_str(&cat.stdout).unwrap();
    assert_eq!(snap["original"], serde_json::json!(s1));
    // Again: nothing to copy, nothing sent.
    let again = go(&env, &dst, OTHER_PASSWORD, &env.repo, &["copy", "--json"])
        .ok()
        .json();
    assert_eq!(
        ids(&again, "already_copied", "source"),
        vec![s1, s2.clone()]
    );
    assert_eq!(again["blobs_sent"], 0, "{again}");
    // A new snapshot: only its new file is sent.
    write_file(&src.join("new"), 2_000_000, 7).unwrap();
    let s3id = env.backup(&[&src], &[])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let third = go(
        &env,
        &dst,
        OTHER_PASSWORD,
        &env.repo,
        &["copy", "--json", &s3id],
    )
    .ok()
    .json();
    assert_eq!(ids(&third, "copied", "source"), vec![s3id]);
    let sent = third["bytes_sent"].as_u64().unwrap();
    assert!((2_000_000..2_100_000).contains(&sent), "{third}");
    restores_exactly(
        &env,
        &dst,
        OTHER_PASSWORD,
        third["copied"][0]["copy"].as_str().unwrap(),
        &src,
    );
    let check = go(
        &env,
        &dst,
        OTHER_PASSWORD,
        &env.repo,
        &["check", "--read-data"],
    );
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    // The wrong password for the source is refused as such.
    let wrong = run(at(&env, &dst, OTHER_PASSWORD, &env.repo)
        .env("BATON_FROM_PASSWORD", "not it")
        .args(["copy"]));
    assert_eq!(wrong.code, 12, "{}", wrong.stderr);
}

#[test]
fn copy_between_repositories_restores_identically_and_sends_only_what_is_missing() {
    copy_restores_identically_and_sends_only_what_is_missing(false);
}

#[test]
fn copy_from_a_local_repository_to_s3() {
    if s3_mode() {
        // The matrix runs the test above between two buckets; this one is
        // local to S3 on every run.
        return;
    }
    copy_restores_identically_and_sends_only_what_is_missing(true);
}

/// Every blob entry of every pack of `repo`, counted by `repair index`
/// (which reads each pack's header): a blob stored twice counts twice.
fn stored_blob_entries(env: &Env, repo: &Path, pw: &str) -> u64 {
    let r = go(env, repo, pw, repo, &["repair", "index", "--json"])
        .ok()
        .json();
    r["blobs_indexed"].as_u64().unwrap()
}

/// A copy killed -9 midway and run again stores no blob twice: the packs it
/// stored are found (indexed at once, or adopted from their headers) and
/// their blobs are not sent again. With `init --copy-chunker-params` the
/// destination names blobs as the source does, so a blob it holds is not
/// even read.
#[test]
fn a_killed_copy_resumes_without_sending_a_blob_twice() {
    let env = Env::new();
    let Some(dst) = second(&env, "killed", false) else {
        return;
    };
    let Some(clean) = second(&env, "clean", false) else {
        return;
    };
    let _clean = Cleanup(vec![dst.clone(), clean.clone()]);
    let src = env.path("src");
    for i in 0..8 {
        write_file(&src.join(format!("f{i}")), 4_000_000, 100 + i).unwrap();
    }
    env.backup(&[&src], &[]);
    init(
        &env,
        &dst,
        OTHER_PASSWORD,
        &env.repo,
        &["--copy-chunker-params", "--pack-size", "1"],
    );
    // 32 MB at 4 MiB/s: killed once a few packs are stored.
    let mut child = std_at(&env, &dst, OTHER_PASSWORD, &env.repo)
        .args(["copy", "--limit-upload", "4096"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let packs = || {
        crate::common::storage(&dst)
            .list(baton_storage::ObjectKind::Pack)
            .map(|l| l.len())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while packs() < 4 {
        assert!(Instant::now() < deadline, "the copy stored no packs");
        assert!(child.try_wait().unwrap().is_none(), "the copy ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = packs();
    assert!(before < 30, "killed too late: {before} packs");
    let snaps = go(
        &env,
        &dst,
        OTHER_PASSWORD,
        &env.repo,
        &["snapshots", "--json"],
    )
    .ok()
    .json();
    assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 0, "{snaps}");
    let r = go(&env, &dst, OTHER_PASSWORD, &env.repo, &["copy", "--json"])
        .ok()
        .json();
    assert_eq!(r["same_ids"], true, "{r}");
    assert!(r["blobs_present"].as_u64().unwrap() >= 3, "{r}");
    // Blobs the destination held were not read again.
    assert_eq!(
        r["blobs_read"].as_u64().unwrap(),
        r["blobs_sent"].as_u64().unwrap(),
        "{r}"
    );
    restores_exactly(
        &env,
        &dst,
        OTHER_PASSWORD,
        r["copied"][0]["copy"].as_str().unwrap(),
        &src,
    );
    // The same copy, never interrupted, stores as many blob entries.
    init(
        &env,
        &clean,
        OTHER_PASSWORD,
        &env.repo,
        &["--pack-size", "1"],
    );
    go(&env, &clean, OTHER_PASSWORD, &env.repo, &["copy"]).ok();
    assert_eq!(
        stored_blob_entries(&env, &dst, OTHER_PASSWORD),
        stored_blob_entries(&env, &clean, OTHER_PASSWORD),
    );
    // Copied with shared ids, the tree is the source's.
    let tree = |repo: &Path| {
        let v = go(
            &env,
            repo,
            if *repo == env.repo {
                PASSWORD
            } else {
                OTHER_PASSWORD
            },
            &env.repo,
            &["snapshots", "--json"],
        )
        .ok()
        .json();
        v["snapshots"][0]["tree"].clone()
    };
    assert_eq!(tree(&dst), tree(&env.repo));
}

/// `init --copy-chunker-params`: a backup of the same files straight into
/// the destination stores nothing new after a copy (the same chunks, the
/// same ids), while a destination with its own chunker stores them again.
#[test]
fn copied_chunker_params_carry_deduplication_over() {
    let env = Env::new();
    let (Some(related), Some(unrelated)) = (
        second(&env, "related", false),
        second(&env, "unrelated", false),
    ) else {
        return;
    };
    let _clean = Cleanup(vec![related.clone(), unrelated.clone()]);
    let src = env.path("src");
    write_file(&src.join("big"), 12_000_000, 5).unwrap();
    env.backup(&[&src], &[]);
    init(
        &env,
        &related,
        OTHER_PASSWORD,
        &env.repo,
        &["--copy-chunker-params"],
    );
    init(&env, &unrelated, OTHER_PASSWORD, &env.repo, &[]);
    let stored = |repo: &Path| {
        go(&env, repo, OTHER_PASSWORD, &env.repo, &["copy"]).ok();
        // The same bytes, written again: the copy is the backup's parent,
        // and a file whose times changed is read and cut again.
        write_file(&src.join("big"), 12_000_000, 5).unwrap();
        let b = run(at(&env, repo, OTHER_PASSWORD, &env.repo).args([
            "backup",
            "--json",
            "--tag",
            "direct",
            src.to_str().unwrap(),
        ]))
        .ok()
        .json();
        b["bytes_stored"].as_u64().unwrap()
    };
    // A backup straight into the destination after the copy: with the
    // source's chunker every chunk is already there; with its own chunker
    // the file is cut elsewhere and stored again.
    let with = stored(&related);
    let without = stored(&unrelated);
    assert!(
        with < 100_000,
        "{with} bytes stored with the copied chunker"
    );
    assert!(without > 6_000_000, "{without} bytes stored with its own");
    // --copy-chunker-params needs --from-repo.
    let usage = run(env
        .cmd()
        .env("BATON_REPOSITORY", env.path("x"))
        .args(["init", "--copy-chunker-params"]));
    assert_eq!(usage.code, 2, "{}", usage.stderr);
}

/// A block image is copied with its fixed index: into a repository with
/// another key the index is written anew with the new chunk ids, and the
/// copy restores the same bytes (holes included).
#[test]
fn a_block_image_copies_to_another_key() {
    let env = Env::new();
    let Some(dst) = second(&env, "images", false) else {
        return;
    };
    let _clean = Cleanup(vec![dst.clone()]);
    let img = env.path("disk.img");
    let mut want = vec![0u8; 9 << 20];
    let mut rng = 7u64;
    for (i, b) in want.iter_mut().enumerate() {
        // A hole in the middle, pseudo-random bytes around it.
        if !(3 << 20..5 << 20).contains(&i) {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (rng >> 33) as u8;
        }
    }
    std::fs::write(&img, &want).unwrap();
    env.backup(
        &[],
        &["--block", img.to_str().unwrap(), "--block-size", "64KiB"],
    );
    init(&env, &dst, OTHER_PASSWORD, &env.repo, &[]);
    let r = go(&env, &dst, OTHER_PASSWORD, &env.repo, &["copy", "--json"])
        .ok()
        .json();
    assert_eq!(r["same_ids"], false, "{r}");
    let copied = r["copied"][0]["copy"].as_str().unwrap().to_string();
    let out = env.path("restored.img");
    go(
        &env,
        &dst,
        OTHER_PASSWORD,
        &env.repo,
        &["restore", &copied, "--target", out.to_str().unwrap()],
    )
    .ok();
    assert!(
        std::fs::read(&out).unwrap() == want,
        "the copied image differs"
    );
    let check = go(
        &env,
        &dst,
        OTHER_PASSWORD,
        &env.repo,
        &["check", "--read-data"],
    );
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
}
