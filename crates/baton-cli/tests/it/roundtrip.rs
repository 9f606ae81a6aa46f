//! Backup -> restore round trips on generated trees.

use crate::common::*;
use baton_testing::{CompareOptions, GenOptions, compare_trees, generate_tree, write_file};
use std::path::{Path, PathBuf};

fn restored_path(target: &Path, src: &Path) -> PathBuf {
    target.join(src.strip_prefix("/").unwrap())
}

fn assert_same(src: &Path, dst: &Path) -> usize {
    let opts = CompareOptions {
        ownership: is_root(),
        ..CompareOptions::default()
    };
    match compare_trees(src, dst, &opts) {
        Ok(n) => n,
        Err(d) => panic!("restored tree differs from the source:\n{}", d.join("\n")),
    }
}

/// Every kind of entry, a 1 GiB sparse file, odd names, hard links, xattrs:
/// the restore equals the source entry by entry, the sparse file stays
/// sparse, and a second backup of the unchanged tree reads nothing and
/// produces the same tree id.
#[test]
fn full_tree_round_trip_and_unchanged_rebackup() {
    let env = Env::new();
    let src = env.path("src");
    let manifest = generate_tree(
        &src,
        &GenOptions {
            seed: 7,
            sparse_file_size: 1 << 30,
            ..GenOptions::default()
        },
    )
    .unwrap();
    let first = env.backup(&[&src], &[]);
    for field in [
        "snapshot_id",
        "tree_id",
        "files_new",
        "files_changed",
        "files_unmodified",
        "dirs",
        "bytes_total",
        "bytes_read",
        "bytes_stored",
        "errors",
        "duration_s",
    ] {
        assert!(
            first.get(field).is_some(),
            "backup --json lacks {field}: {first}"
        );
    }
    assert_eq!(first["error_count"], 0, "{first}");
    assert_eq!(first["files_changed"], 0);
    assert!(first["files_new"].as_u64().unwrap() >= manifest.files as u64 - 1);
    assert_eq!(first["bytes_total"].as_u64().unwrap(), manifest.bytes);
    assert_eq!(first["bytes_read"].as_u64().unwrap(), manifest.bytes);
    // A 1 GiB sparse file is mostly zeros: it must not cost 1 GiB of storage.
    assert!(
        first["bytes_stored"].as_u64().unwrap() < manifest.bytes / 10,
        "{first}"
    );

    // Restore outside the environment: the source's ancestors are part of
    // the snapshot, and a new sibling would change their metadata.
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("restore");
    env.restore("latest", &target, &["--verify"]).ok();
    let n = assert_same(&src, &restored_path(&target, &src));
    assert_eq!(n, manifest.entries);

    let second = env.backup(&[&src], &[]);
    assert_eq!(
        second["bytes_read"], 0,
        "unchanged files were read again: {second}"
    );
    assert_eq!(second["files_new"], 0);
    assert_eq!(second["files_changed"], 0);
    assert_eq!(second["files_unmodified"], first["files_new"]);
    assert_eq!(second["tree_id"], first["tree_id"], "same data, same tree");
    assert_eq!(second["parent"], first["snapshot_id"]);

    // Restoring a path inside the snapshot puts its contents into the target.
    let sub = src.join("hardlinks");
    let target2 = out.path().join("restore-sub");
    env.restore(
        &format!(
            "{}:{}",
            &first["snapshot_id"].as_str().unwrap()[..10],
            sub.display()
        ),
        &target2,
        &[],
    )
    .ok();
    assert_same(&sub, &target2);
}

#[test]
fn changed_file_is_read_again_and_force_reads_everything() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..20 {
        write_file(
            &src.join(format!("d{}/f{i}", i % 3)),
            10_000 + i as u64 * 1000,
            i as u64,
        )
        .unwrap();
    }
    let first = env.backup(&[&src], &[]);
    assert_eq!(first["files_new"], 20);
    // Same size, new content and mtime.
    let victim = src.join("d1/f7");
    write_file(&victim, 17_000, 999).unwrap();
    let second = env.backup(&[&src], &[]);
    assert_eq!(second["files_changed"], 1, "{second}");
    assert_eq!(second["files_unmodified"], 19);
    assert_eq!(second["bytes_read"], 17_000);
    assert_ne!(second["tree_id"], first["tree_id"]);
    let forced = env.backup(&[&src], &["--force"]);
    assert_eq!(forced["bytes_read"], forced["bytes_total"]);
    assert_eq!(
        forced["bytes_read"].as_u64().unwrap(),
        baton_testing::dir_size(&src)
    );
    assert_eq!(forced["tree_id"], second["tree_id"]);
    let target = env.path("r");
    env.restore("latest", &target, &[]).ok();
    assert_same(&src, &restored_path(&target, &src));
}

/// A copied 100 MiB file adds almost nothing, within a snapshot and across snapshots.
#[test]
fn dedup_of_a_copied_large_file() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("big"), 100 << 20, 1).unwrap();
    let first = env.backup(&[&src], &[]);
    let size_after_first = du(&env.repo);
    assert!(
        first["bytes_stored"].as_u64().unwrap() > 100 << 20,
        "random data does not compress: {first}"
    );
    std::fs::copy(src.join("big"), src.join("big-copy")).unwrap();
    let second = env.backup(&[&src], &[]);
    assert_eq!(second["files_new"], 1);
    assert_eq!(second["bytes_read"].as_u64().unwrap(), 100 << 20);
    let added = second["bytes_stored"].as_u64().unwrap();
    assert!(added < 64 << 10, "a copy added {added} bytes");
    assert!(du(&env.repo) - size_after_first < 256 << 10);
    let target = env.path("r");
    env.restore("latest", &target, &[]).ok();
    assert_same(&src, &restored_path(&target, &src));
}

#[test]
fn excludes_and_cache_dirs() {
    let env = Env::new();
    let src = env.path("src");
    for p in [
        "keep/a.txt",
        "keep/b.log",
        "skip-me/x",
        "deep/er/tmp/t.txt",
        "cache/data",
        "patterns/y.bak",
    ] {
        write_file(&src.join(p), 100, 3).unwrap();
    }
    std::fs::write(
        src.join("cache/CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc55\n# cache",
    )
    .unwrap();
    std::fs::write(env.path("excludes.txt"), "# comment\n\n*.bak\n").unwrap();
    let excl_file = env.path("excludes.txt");
    env.backup(
        &[&src],
        &[
            "--exclude",
            "*.log",
            "--exclude",
            "skip-me",
            "--exclude",
            "er/tmp",
            "--exclude-caches",
            "--exclude-file",
            excl_file.to_str().unwrap(),
        ],
    );
    let ls = env.run(&["ls", "latest"]).ok().stdout;
    let base = src.display().to_string();
    for present in ["keep/a.txt", "cache/CACHEDIR.TAG", "deep/er"] {
        assert!(
            ls.lines().any(|l| l == format!("{base}/{present}")),
            "{present} missing:\n{ls}"
        );
    }
    for absent in [
        "keep/b.log",
        "skip-me",
        "deep/er/tmp",
        "cache/data",
        "patterns/y.bak",
    ] {
        assert!(
            !ls.lines().any(|l| l == format!("{base}/{absent}")),
            "{absent} was not excluded:\n{ls}"
        );
    }
}

#[test]
fn restore_include_exclude_and_verify() {
    let env = Env::new();
    let src = env.path("src");
    for p in ["a/1.txt", "a/2.dat", "b/3.txt", "b/c/4.txt", "e/5.dat"] {
        write_file(&src.join(p), 5000, 4).unwrap();
    }
    env.backup(&[&src], &[]);
    let t = env.path("t");
    env.restore("latest", &t, &["--include", "*.txt", "--exclude", "c"])
        .ok();
    let r = restored_path(&t, &src);
    assert!(r.join("a/1.txt").is_file());
    assert!(r.join("b/3.txt").is_file());
    assert!(!r.join("a/2.dat").exists());
    assert!(!r.join("b/c").exists());
    assert!(
        !r.join("e").exists(),
        "directories with nothing selected are not created"
    );
    // --verify notices nothing wrong on a good restore and reports counts.
    let t2 = env.path("t2");
    let out = env
        .restore("latest", &t2, &["--verify", "--json"])
        .ok()
        .json();
    assert_eq!(out["files_verified"], 5);
    assert_eq!(out["files"], 5);
}

#[test]
fn stdin_backup_and_dump() {
    let env = Env::new();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = env
        .cmd()
        .args(["backup", "--stdin", "--stdin-filename", "db.sql", "--json"])
        .write_stdin(data.clone())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dumped = env
        .cmd()
        .args(["dump", "latest", "/db.sql"])
        .output()
        .unwrap();
    assert!(dumped.status.success());
    assert_eq!(dumped.stdout, data);
    let snaps = env.run(&["snapshots", "--json"]).ok().stdout;
    let v: serde_json::Value = serde_json::from_str(&snaps).unwrap();
    assert_eq!(v["snapshots"][0]["paths"][0], "/db.sql");
}

#[test]
fn dump_directory_as_tar() {
    let env = Env::new();
    let src = env.path("src");
    for p in ["x/1", "x/y/2", "z"] {
        write_file(&src.join(p), 70_000, 5).unwrap();
    }
    std::os::unix::fs::symlink("x/1", src.join("link")).unwrap();
    env.backup(&[&src], &[]);
    let out = env
        .cmd()
        .args(["dump", "latest"])
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tarfile = env.path("out.tar");
    std::fs::write(&tarfile, &out.stdout).unwrap();
    let x = env.path("extract");
    std::fs::create_dir(&x).unwrap();
    let st = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&tarfile)
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    for p in ["x/1", "x/y/2", "z"] {
        assert_eq!(
            std::fs::read(src.join(p)).unwrap(),
            std::fs::read(x.join(p)).unwrap(),
            "{p}"
        );
    }
    assert_eq!(
        std::fs::read_link(x.join("link")).unwrap(),
        Path::new("x/1")
    );
}

#[test]
fn dry_run_writes_nothing() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), 2_000_000, 6).unwrap();
    let before = du(&env.repo);
    let out = env.backup(&[&src], &["--dry-run"]);
    assert!(out["snapshot_id"].is_null());
    assert_eq!(out["bytes_read"], 2_000_000);
    assert_eq!(du(&env.repo), before);
    assert!(objects(&env.repo, "snapshots").is_empty());
    assert!(objects(&env.repo, "data").is_empty());
}

#[test]
fn several_sources_keep_their_full_paths() {
    let env = Env::new();
    let a = env.path("one/a");
    let b = env.path("two/b");
    write_file(&a.join("f"), 10, 1).unwrap();
    write_file(&b.join("g"), 20, 2).unwrap();
    write_file(&env.path("one/solo.txt"), 30, 3).unwrap();
    let solo = env.path("one/solo.txt");
    env.backup(&[&a, &b, &solo], &[]);
    let t = env.path("t");
    env.restore("latest", &t, &[]).ok();
    assert_eq!(
        std::fs::read(restored_path(&t, &a).join("f")).unwrap(),
        std::fs::read(a.join("f")).unwrap()
    );
    assert_eq!(
        std::fs::read(restored_path(&t, &b).join("g")).unwrap(),
        std::fs::read(b.join("g")).unwrap()
    );
    assert_eq!(
        std::fs::read(restored_path(&t, &solo)).unwrap(),
        std::fs::read(&solo).unwrap()
    );
}

/// `--one-file-system` does not descend into another mounted filesystem.
#[test]
fn one_file_system() {
    if !is_root() {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("here"), 10, 1).unwrap();
    let mnt = src.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status();
    if !st.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot mount tmpfs here");
        return;
    }
    write_file(&mnt.join("there"), 10, 2).unwrap();
    let out = env.backup(&[&src], &["-x"]);
    let full = env.backup(&[&src], &["--force"]);
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    assert_eq!(out["files_new"], 1, "{out}");
    assert_eq!(
        full["files_new"].as_u64().unwrap() + full["files_changed"].as_u64().unwrap(),
        2,
        "{full}"
    );
}
