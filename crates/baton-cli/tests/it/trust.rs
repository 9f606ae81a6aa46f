//! Trust: one bad object never stops the next backup, and nothing dated in
//! the future or planted wins.

use crate::common::{Env, no_panic, objects};
use baton_testing::write_file;

fn snapshot_ids(env: &Env) -> Vec<String> {
    let v = env.run(&["snapshots", "--json"]).json()["snapshots"].clone();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// One byte flipped in one snapshot file: `snapshots` names it and lists
/// the rest, `ls`, `backup` and `forget` go on, and `forget ID` removes it.
#[test]
fn a_damaged_snapshot_never_stops_the_next_backup() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("a"), 10_000, 1).unwrap();
    env.backup(&[&src], &[]);
    write_file(&src.join("b"), 10_000, 2).unwrap();
    env.backup(&[&src], &[]);
    let ids = snapshot_ids(&env);
    assert_eq!(ids.len(), 2);
    let damaged = objects(&env.repo, "snapshots")
        .into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy() == ids[1])
        .unwrap();
    let mut b = crate::common::obj_read(&damaged);
    b[40] ^= 0x01;
    crate::common::obj_write(&damaged, &b);
    env.drop_cache();

    let r = env.run(&["snapshots"]);
    no_panic(&r);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains(&ids[1]), "{}", r.stderr);
    assert!(r.stdout.contains(&ids[0][..8]), "{}", r.stdout);
    env.run(&["ls", "latest"]).ok();
    // The next backup works (its parent is the readable snapshot).
    write_file(&src.join("c"), 10_000, 3).unwrap();
    env.backup(&[&src], &[]);
    let r = env.run(&["forget", "--keep-last", "5"]);
    no_panic(&r);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Prune refuses while a snapshot cannot be read, saying what to do.
    let r = env.run(&["prune"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("baton forget"), "{}", r.stderr);
    // Forgotten by id without being read.
    env.run(&["forget", &ids[1][..8]]).ok();
    let r = env.run(&["snapshots"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!damaged.exists());
    env.run(&["prune"]).ok();
    env.run(&["check", "--read-data"]).ok();
}

/// A snapshot dated in the future is never `latest`, never a parent, and
/// never takes a policy's place: `forget --keep-last 1` keeps the real
/// newest snapshot.
#[test]
fn a_snapshot_dated_in_the_future_never_wins() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("a"), 10_000, 1).unwrap();
    let first = env.backup(&[&src], &[]);
    let future = env.backup(&[&src], &["--time", "2099-01-01T00:00:00Z"]);
    write_file(&src.join("b"), 10_000, 2).unwrap();
    let third = env.backup(&[&src], &[]);
    // Its parent is the first, not the future one.
    assert_eq!(third["parent"], first["snapshot_id"], "{third}");
    let latest: serde_json::Value =
        serde_json::from_str(&env.run(&["cat", "snapshot", "latest"]).ok().stdout).unwrap();
    assert_eq!(latest["tree"], third["tree_id"]);
    let r = env.run(&["forget", "--keep-last", "1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("future"), "{}", r.stderr);
    let left = snapshot_ids(&env);
    let id = |v: &serde_json::Value| v["snapshot_id"].as_str().unwrap().to_string();
    assert!(left.contains(&id(&third)), "{left:?}");
    assert!(left.contains(&id(&future)), "{left:?}");
    assert!(!left.contains(&id(&first)), "{left:?}");
}

/// Access times are not stored unless asked: a file read by anything else
/// between two backups leaves the second snapshot's tree id unchanged.
#[test]
fn atimes_are_stored_only_with_with_atime() {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("a"), 10_000, 1).unwrap();
    // An atime before the mtime: the next read updates it (relatime).
    utimensat(
        nix::fcntl::AT_FDCWD,
        &src.join("a"),
        &TimeSpec::new(1_000_000, 0),
        &TimeSpec::UTIME_OMIT,
        UtimensatFlags::FollowSymlink,
    )
    .unwrap();
    let first = env.backup(&[&src], &[]);
    let before = std::fs::metadata(src.join("a")).unwrap();
    std::fs::read(src.join("a")).unwrap();
    let after = std::fs::metadata(src.join("a")).unwrap();
    use std::os::unix::fs::MetadataExt;
    let read_moved_atime = before.atime() != after.atime();
    let second = env.backup(&[&src], &[]);
    assert_eq!(
        first["tree_id"], second["tree_id"],
        "atime={read_moved_atime}"
    );
    let with = env.backup(&[&src], &["--with-atime"]);
    assert_ne!(with["tree_id"], second["tree_id"]);
}

/// Runs `baton ARGS`, reads one line of its stdout, closes the pipe, and
/// returns the exit code and stderr.
fn run_and_close_stdout(env: &Env, args: &[&str]) -> (i32, String) {
    use std::io::{BufRead, Read};
    let mut c = env.std_cmd();
    c.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    drop(out);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), err)
}

/// `baton ls latest | head -1` does not panic, and `baton backup -vv SRC |
/// head -1` still finishes its backup.
#[test]
fn a_closed_stdout_never_aborts_a_backup() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..3000 {
        std::fs::create_dir_all(src.join(format!("d{}", i % 30))).unwrap();
        std::fs::write(
            src.join(format!("d{}/file-with-a-long-name-{i}", i % 30)),
            b"x",
        )
        .unwrap();
    }
    let (code, err) = run_and_close_stdout(&env, &["backup", "-vv", src.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let snaps = env.run(&["snapshots", "--json"]).ok().json()["snapshots"].clone();
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    let (code, err) = run_and_close_stdout(&env, &["ls", "latest"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (code, err) = run_and_close_stdout(&env, &["dump", "latest", src.to_str().unwrap()]);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(code, 0, "{err}");
}

/// Explicit flags win over the environment; two sources at once are a usage
/// error (exit 2); an empty variable counts as unset.
#[test]
fn password_sources_and_precedence() {
    let env = Env::new();
    let good = env.path("good");
    std::fs::write(&good, crate::common::PASSWORD).unwrap();
    let bad = env.path("bad");
    std::fs::write(&bad, "wrong").unwrap();
    let run = |c: &mut assert_cmd::Command| crate::common::run(c);
    // The flag beats BATON_PASSWORD (wrong here).
    let r = run(env.cmd().env("BATON_PASSWORD", "wrong").args([
        "--password-file",
        good.to_str().unwrap(),
        "snapshots",
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // ... and BATON_PASSWORD_FILE.
    let r = run(env
        .cmd()
        .env_remove("BATON_PASSWORD")
        .env("BATON_PASSWORD_FILE", &bad)
        .args(["--password-file", good.to_str().unwrap(), "snapshots"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Two flags: usage error.
    let r = run(env.cmd().args([
        "--password-file",
        good.to_str().unwrap(),
        "--password-command",
        "echo x",
        "snapshots",
    ]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    // Two variables: usage error, naming both.
    let r = run(env.cmd().env("BATON_PASSWORD_FILE", &good).arg("snapshots"));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("BATON_PASSWORD_FILE"), "{}", r.stderr);
    // An empty variable is unset.
    let r = run(env.cmd().env("BATON_PASSWORD_FILE", "").arg("snapshots"));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// A file name carrying terminal escape sequences is shown escaped.
#[test]
fn control_characters_in_names_are_escaped() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("evil\x1b]0;pwned\x07\x1b[2J"), b"x").unwrap();
    env.backup(&[&src], &[]);
    for args in [&["ls", "latest"][..], &["ls", "-l", "latest"]] {
        let out = env.run(args).ok().stdout;
        assert!(!out.contains('\x1b') && !out.contains('\x07'), "{out:?}");
        assert!(out.contains("evil\\x1b]0;pwned\\x07"), "{out}");
    }
}

/// SIGINT (SIGTERM) during a backup: it stops cleanly, says how to go on,
/// leaves no lock behind and exits 130 (143). The backup reads an endless
/// stream, so the signal always arrives while it runs.
#[test]
fn sigint_and_sigterm_stop_cleanly_and_release_the_lock() {
    use std::io::{Read, Write};
    let env = Env::new();
    for (sig, code) in [
        (nix::sys::signal::Signal::SIGINT, 130),
        (nix::sys::signal::Signal::SIGTERM, 143),
    ] {
        let mut child = env
            .std_cmd()
            .args(["backup", "--stdin", "--stdin-filename", "endless"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            let mut block = vec![0u8; 1 << 16];
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            loop {
                for b in block.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                if stdin.write_all(&block).is_err() {
                    return;
                }
            }
        });
        // Wait until the backup holds its lock, then interrupt it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while crate::common::objects(&env.repo, "locks").is_empty() {
            assert!(std::time::Instant::now() < deadline, "no lock appeared");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = child.wait().unwrap();
        feeder.join().unwrap();
        assert_eq!(status.code(), Some(code), "{sig}: {err}");
        assert!(err.contains("stopping cleanly"), "{err}");
        assert!(
            err.contains("run the same command again")
                || err.contains("Run the same command again"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            crate::common::objects(&env.repo, "locks").is_empty(),
            "{sig} left a lock"
        );
    }
    // The repository is fine: a backup, then check.
    let src = env.path("src");
    write_file(&src.join("a"), 1000, 1).unwrap();
    env.backup(&[&src], &[]);
    env.run(&["check"]).ok();
}

/// A restore onto a full disk stops at the first "no space" with one clear
/// message (not one per file); with space again, the same restore completes
/// and the result equals the source. Uses a real tmpfs (root only).
#[test]
fn restore_onto_a_full_disk_stops_once_and_resumes() {
    if !crate::common::is_root() {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    for i in 0..200 {
        write_file(&src.join(format!("d{}/f{i}", i % 10)), 40_000, i).unwrap();
    }
    env.backup(&[&src], &[]);
    let mnt = env.path("small");
    let Some(_tmpfs) = crate::common::Tmpfs::mount(&mnt, "2m") else {
        return;
    };
    let sub = format!("latest:{}", src.display());
    let r = env.run(&["restore", &sub, "--target", mnt.to_str().unwrap()]);
    no_panic(&r);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no space"), "{}", r.stderr);
    let errors = r.stderr.lines().filter(|l| l.starts_with("error")).count();
    assert_eq!(errors, 1, "{}", r.stderr);
    assert!(crate::common::objects(&env.repo, "locks").is_empty());
    let st = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let r = env.run(&[
        "restore",
        &sub,
        "--target",
        mnt.to_str().unwrap(),
        "--verify",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let o = baton_testing::CompareOptions {
        ownership: true,
        ..Default::default()
    };
    baton_testing::compare_trees(&src, &mnt, &o).unwrap_or_else(|d| panic!("{}", d.join("\n")));
}

/// A blob found damaged by `check --read-data` is not reused: the next
/// backup (without --force) stores a fresh copy, `repair packs` replaces
/// the damaged pack, and afterwards every snapshot is whole again.
#[test]
fn a_damaged_blob_is_stored_afresh_and_its_pack_replaced() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("a"), 300_000, 7).unwrap();
    write_file(&src.join("b"), 1000, 8).unwrap();
    env.backup(&[&src], &[]);
    // The largest pack holds the file data; damage one byte of its first blob.
    let pack = objects(&env.repo, "data")
        .into_iter()
        .max_by_key(|p| crate::common::obj_len(p))
        .unwrap();
    let mut bytes = crate::common::obj_read(&pack);
    bytes[100] ^= 0x01;
    crate::common::obj_write(&pack, &bytes);
    let r = env.run(&["check", "--read-data"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("recorded"), "{}", r.stdout);
    assert!(r.stdout.contains("baton repair packs"), "{}", r.stdout);
    // The next backup reads the file again and stores it afresh.
    // The next backup reads the file whose blob was damaged again (one
    // file, though nothing changed) and stores it afresh.
    let second = env.backup(&[&src], &[]);
    assert_eq!(second["files_changed"], 1, "{second}");
    assert!(second["bytes_read"].as_u64().unwrap() > 0, "{second}");
    assert!(second["blobs_new"].as_u64().unwrap() >= 1, "{second}");
    let t = env.path("t");
    env.restore("latest", &t, &["--verify"]).ok();
    for f in ["a", "b"] {
        assert_eq!(
            std::fs::read(t.join(src.strip_prefix("/").unwrap()).join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap()
        );
    }
    // repair packs replaces the damaged pack; then everything checks clean,
    // the first snapshot included (its blob exists again).
    let r = env.run(&["repair", "packs"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("replaced 1 pack"), "{}", r.stdout);
    assert!(!pack.exists());
    let r = env.run(&["check", "--read-data"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    for snap in env.run(&["snapshots", "--json"]).ok().json()["snapshots"]
        .clone()
        .as_array()
        .unwrap()
    {
        let t = env.path(&format!("t-{}", snap["short_id"].as_str().unwrap()));
        env.restore(snap["id"].as_str().unwrap(), &t, &["--verify"])
            .ok();
    }
}

/// A parent that cannot serve (dated in the future) is passed over with a
/// warning, and `repair snapshots --forget` removes an unreadable snapshot.
#[test]
fn parent_passed_over_warns_and_repair_forgets_unreadable_snapshots() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("a"), 10_000, 1).unwrap();
    env.backup(&[&src], &["--time", "2099-01-01T00:00:00Z"]);
    let r = env.run(&["backup", src.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("was not used as the parent"),
        "{}",
        r.stderr
    );
    // Damage the newer (real) snapshot beyond reading.
    let ids = snapshot_ids(&env);
    let victim = objects(&env.repo, "snapshots")
        .into_iter()
        .find(|p| ids.iter().any(|i| p.ends_with(i)))
        .unwrap();
    let mut b = crate::common::obj_read(&victim);
    b[30] ^= 0x04;
    crate::common::obj_write(&victim, &b);
    env.drop_cache();
    assert_eq!(env.run(&["snapshots"]).code, 3);
    let r = env.run(&["repair", "snapshots", "--forget"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("removed"), "{}", r.stderr);
    let r = env.run(&["snapshots"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    env.run(&["prune"]).ok();
}
