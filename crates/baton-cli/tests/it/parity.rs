//! What a restic user reaches for (issue 16, in part): `find`, `stats`,
//! `list`, snapshot selection by host/path/tag, shell completions and man
//! pages. Each checks the effect against the source or the repository.

use crate::common::{Env, run};
use std::collections::BTreeSet;
use std::path::Path;

fn write(p: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// Every file below `root` whose name ends with `suffix` (case-insensitive
/// if asked), as absolute paths.
fn walk_matching(root: &Path, suffix: &str, nocase: bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let hit = if nocase {
                name.to_lowercase().ends_with(&suffix.to_lowercase())
            } else {
                name.ends_with(suffix)
            };
            if hit {
                out.insert(p.to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[test]
fn find_matches_a_walk_of_the_source() {
    let env = Env::new();
    let src = env.path("src");
    for (i, p) in [
        "a.conf",
        "etc/b.conf",
        "etc/conf.d/c.CONF",
        "etc/conf.d/not-conf.txt",
        "deep/x/y/z/d.conf",
        "deep/x/e.config",
    ]
    .iter()
    .enumerate()
    {
        write(&src.join(p), format!("content {i}").as_bytes());
    }
    // An old file, for --newest/--oldest.
    let old = src.join("etc/old.conf");
    write(&old, b"old");
    let st = std::process::Command::new("touch")
        .args(["-d", "2020-01-02T03:04:05Z"])
        .arg(&old)
        .status()
        .unwrap();
    assert!(st.success());
    env.backup(&[&src], &[]);
    let src = std::fs::canonicalize(&src).unwrap();

    let found = |args: &[&str]| -> BTreeSet<String> {
        let mut c = env.cmd();
        c.args(["find", "--json"]).args(args);
        let v = run(&mut c).ok().json();
        v["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["matches"].as_array().unwrap().clone())
            .map(|m| m["path"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(found(&["*.conf"]), walk_matching(&src, ".conf", false));
    assert_eq!(found(&["-i", "*.conf"]), walk_matching(&src, ".conf", true));
    let newest = found(&["*.conf", "--newest", "2021-01-01"]);
    assert_eq!(
        newest,
        [old.canonicalize().unwrap().to_string_lossy().into_owned()].into()
    );
    let oldest = found(&["*.conf", "--oldest", "2021-01-01"]);
    assert!(!oldest.is_empty() && !oldest.iter().any(|p| p.ends_with("old.conf")));
    // A pattern with a slash matches whole paths.
    let by_path = found(&[&format!("{}/etc/*", src.display())]);
    assert!(
        by_path
            .iter()
            .all(|p| p.starts_with(&format!("{}/etc/", src.display())))
    );
    assert!(
        by_path.contains(&format!("{}/etc/conf.d", src.display())),
        "{by_path:?}"
    );
    assert!(
        !by_path.iter().any(|p| p.ends_with("c.CONF")),
        "{by_path:?}"
    );
}

#[test]
fn stats_count_what_restores_and_what_is_stored() {
    let env = Env::new();
    let src = env.path("src");
    let mut rng = baton_testing::Rng::new(7);
    let mut total = 0u64;
    for i in 0..6 {
        let mut b = vec![0u8; 300_000 + i * 1000];
        rng.fill(&mut b);
        total += b.len() as u64;
        write(&src.join(format!("a/f{i}")), &b);
        // The same content twice: deduplicated.
        write(&src.join(format!("b/f{i}")), &b);
    }
    env.backup(&[&src], &[]);
    let s = env.run(&["stats", "--json"]).ok().json();
    assert_eq!(s["message_type"], "stats");
    assert_eq!(s["snapshots"], 1);
    assert_eq!(s["files"], 12);
    assert_eq!(s["restore_size"], 2 * total, "{s}");
    let unique = s["unique_size"].as_u64().unwrap();
    assert!(unique >= total && unique < total + 64 * 1024, "{s}");
    assert!(s["dedup_ratio"].as_f64().unwrap() > 1.9, "{s}");
    let stored = s["stored_size"].as_u64().unwrap();
    let repo = s["repository_size"].as_u64().unwrap();
    assert!(stored <= repo && repo - stored < 64 * 1024, "{s}");
    if !crate::common::is_s3(&env.repo) {
        let on_disk =
            crate::common::du(&env.repo.join("data")) + crate::common::du(&env.repo.join("index"));
        assert_eq!(repo, on_disk);
    }
    // A second, unchanged snapshot restores twice as much and stores nothing more.
    env.backup(&[&src], &[]);
    let s2 = env.run(&["stats", "--json"]).ok().json();
    assert_eq!(s2["restore_size"], 4 * total);
    assert_eq!(s2["unique_size"], s["unique_size"]);
    let one = env.run(&["stats", "--json", "latest"]).ok().json();
    assert_eq!(one["restore_size"], 2 * total);
}

#[test]
fn list_names_what_cat_can_read() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("x"), b"x");
    env.backup(&[&src], &[]);
    env.backup(&[&src], &["--force"]);
    let ids: BTreeSet<String> = env
        .run(&["list", "snapshots"])
        .ok()
        .stdout
        .lines()
        .map(str::to_string)
        .collect();
    let snaps = env.run(&["snapshots", "--json"]).ok().json()["snapshots"].clone();
    let want: BTreeSet<String> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, want);
    for id in env.run(&["list", "index"]).ok().stdout.lines() {
        let cat = env.run(&["cat", "index", id]).ok();
        assert!(cat.stdout.contains("packs"), "{}", cat.stdout);
    }
    let r = env.run(&["list", "nonsense"]);
    assert_eq!(r.code, 2);
}

#[test]
fn latest_follows_host_path_and_tag_filters() {
    let env = Env::new();
    let a = env.path("a");
    let b = env.path("b");
    write(&a.join("only-a"), b"a");
    write(&b.join("only-b"), b"b");
    env.backup(&[&a], &["--host", "h1", "--tag", "x"]);
    env.backup(&[&b], &["--host", "h2"]);
    let names = |args: &[&str]| {
        let mut c = env.cmd();
        c.arg("ls").args(args);
        run(&mut c).ok().stdout
    };
    assert!(names(&["latest"]).contains("only-b"));
    assert!(names(&["latest", "--host", "h1"]).contains("only-a"));
    assert!(names(&["latest", "--tag", "x"]).contains("only-a"));
    // A relative --path is made absolute as backup does.
    let mut c = env.cmd();
    c.current_dir(env.dir.path())
        .args(["ls", "latest", "--path", "a"]);
    assert!(run(&mut c).ok().stdout.contains("only-a"));
    // restore and dump take the same filters.
    let t = env.path("t");
    env.restore("latest", &t, &["--host", "h1"]).ok();
    assert!(
        crate::common::walk(&t)
            .iter()
            .any(|p| p.ends_with("only-a"))
    );
    let a_file = std::fs::canonicalize(a.join("only-a")).unwrap();
    let d = env
        .run(&["dump", "latest", a_file.to_str().unwrap(), "--tag", "x"])
        .ok();
    assert_eq!(d.stdout, "a");
    // A filter nothing matches is an error, not another snapshot.
    let r = env.run(&["ls", "latest", "--host", "nobody"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no snapshot matches"), "{}", r.stderr);
}

#[test]
fn completions_load_and_man_pages_render() {
    let bin = assert_cmd::cargo::cargo_bin!("baton");
    let script = std::process::Command::new(bin)
        .args(["completion", "bash"])
        .output()
        .unwrap();
    assert!(script.status.success());
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("baton.bash");
    std::fs::write(&f, &script.stdout).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(baton ''); COMP_CWORD=1; _baton baton '' baton; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            f.display()
        ))
        .output()
        .unwrap();
    let words = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "backup",
        "restore",
        "find",
        "stats",
        "serve-nbd",
        "completion",
    ] {
        assert!(words.lines().any(|w| w == sub), "{sub} missing: {words}");
    }
    for shell in ["zsh", "fish"] {
        let s = std::process::Command::new(bin)
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(s.status.success() && String::from_utf8_lossy(&s.stdout).contains("backup"));
    }
    let man = dir.path().join("man");
    let st = std::process::Command::new(bin)
        .arg("man")
        .arg(&man)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(man.join("baton.1").exists() && man.join("baton-backup.1").exists());
    let rendered = std::process::Command::new("man")
        .arg("-l")
        .arg(man.join("baton-backup.1"))
        .env("MANPAGER", "cat")
        .output();
    if let Ok(r) = rendered
        && r.status.success()
    {
        let text = String::from_utf8_lossy(&r.stdout);
        assert!(
            text.contains("baton-backup") && text.contains("--exclude"),
            "{text}"
        );
    }
}

fn touch(p: &Path, when: &str) {
    let st = std::process::Command::new("touch")
        .args(["-m", "-d", when])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Restores the latest snapshot into `t`, then edits the restored source
/// (at `rel` below it): `edited` rewritten now, `newer` rewritten and dated
/// 2030, `older` rewritten and dated 2020. Returns the source's directory.
fn restore_and_edit(env: &Env, t: &Path, rel: &Path) -> std::path::PathBuf {
    env.restore("latest", t, &[]).ok();
    let dir = t.join(rel);
    write(&dir.join("edited"), b"locally edited");
    write(&dir.join("newer"), b"target newer");
    touch(&dir.join("newer"), "2030-01-01T00:00:00Z");
    write(&dir.join("older"), b"target older");
    touch(&dir.join("older"), "2020-01-01T00:00:00Z");
    dir
}

/// Each `--overwrite` policy against a target holding an edited file, a
/// newer one, an older one, one altered behind size and time, and an
/// extra one.
#[test]
fn overwrite_policies_decide_what_happens_to_existing_files() {
    let env = Env::new();
    let src = env.path("src");
    for f in ["edited", "newer", "older", "same"] {
        write(&src.join(f), format!("snapshot {f}").as_bytes());
        touch(&src.join(f), "2025-01-01T00:00:00Z");
    }
    env.backup(&[&src], &[]);
    let snap_src = std::fs::canonicalize(&src).unwrap();
    let rel = snap_src.strip_prefix("/").unwrap().to_path_buf();
    let content = |t: &Path, f: &str| std::fs::read_to_string(t.join(&rel).join(f)).unwrap();
    for (policy, want) in [
        (
            "always",
            [
                "snapshot edited",
                "snapshot newer",
                "snapshot older",
                "snapshot same",
            ],
        ),
        (
            "if-changed",
            [
                "snapshot edited",
                "snapshot newer",
                "snapshot older",
                "altered-same!",
            ],
        ),
        (
            "if-newer",
            [
                "locally edited",
                "target newer",
                "snapshot older",
                "altered-same!",
            ],
        ),
        (
            "never",
            [
                "locally edited",
                "target newer",
                "target older",
                "altered-same!",
            ],
        ),
    ] {
        let t = env.path(&format!("t-{policy}"));
        let dir = restore_and_edit(&env, &t, &rel);
        // Same size, same mtime, other bytes: only reading would tell.
        write(&dir.join("same"), b"altered-same!");
        touch(&dir.join("same"), "2025-01-01T00:00:00Z");
        write(&dir.join("extra"), b"not in the snapshot");
        let r = env
            .restore("latest", &t, &["--overwrite", policy, "--json"])
            .ok();
        let got = ["edited", "newer", "older", "same"].map(|f| content(&t, f));
        assert_eq!(got, want, "policy {policy}");
        assert_eq!(
            content(&t, "extra"),
            "not in the snapshot",
            "policy {policy}"
        );
        let s = r.json();
        let kept = want.iter().filter(|w| !w.starts_with("snapshot")).count() as u64;
        if policy == "if-changed" {
            assert_eq!(s["files_unchanged"], 1, "{s}");
        } else {
            assert_eq!(s["skipped"], kept, "policy {policy}: {s}");
        }
    }
}

/// Names of everything (files and directories) below a restored source.
fn restored_names(env: &Env, t: &Path) -> BTreeSet<String> {
    let _ = env;
    crate::common::walk(t)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn backup_selection_options_leave_out_what_they_name() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("small"), &[1u8; 100]);
    write(&src.join("big"), &[2u8; 5000]);
    write(&src.join("keep/a.txt"), b"a");
    write(&src.join("skipme/.nobackup"), b"");
    write(&src.join("skipme/secret"), b"s");
    write(&src.join("Logs/x.LOG"), b"l");
    write(&src.join("y.log"), b"l");
    let s = env.backup(
        &[&src],
        &[
            "--exclude-larger-than",
            "4KiB",
            "--exclude-if-present",
            ".nobackup",
            "--iexclude",
            "*.log",
        ],
    );
    let t = env.path("t");
    env.restore(s["snapshot_id"].as_str().unwrap(), &t, &[])
        .ok();
    let names = restored_names(&env, &t);
    for gone in ["big", "secret", ".nobackup", "x.LOG", "y.log"] {
        assert!(!names.contains(gone), "{gone} was backed up: {names:?}");
    }
    for kept in ["small", "a.txt", "skipme", "Logs"] {
        assert!(names.contains(kept), "{kept} is missing: {names:?}");
    }
    assert_eq!(s["bytes_total"], 100 + 1, "{s}");
}

#[test]
fn files_from_lists_the_sources() {
    let env = Env::new();
    let (a, b, c) = (env.path("a"), env.path("b"), env.path("c"));
    for d in [&a, &b, &c] {
        write(&d.join("f"), b"x");
    }
    let list = env.path("list");
    std::fs::write(
        &list,
        format!("# sources\n{}\n\n  {}  \n", a.display(), b.display()),
    )
    .unwrap();
    let raw = env.path("raw");
    std::fs::write(&raw, format!("{}\0", c.display())).unwrap();
    let mut cmd = env.cmd();
    cmd.args(["backup", "--json", "--files-from"])
        .arg(&list)
        .arg("--files-from-raw")
        .arg(&raw);
    let s = run(&mut cmd).ok().json();
    let snaps = env.run(&["snapshots", "--json"]).ok().json()["snapshots"].clone();
    let paths: BTreeSet<String> = snaps[0]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = [&a, &b, &c]
        .iter()
        .map(|p| {
            std::fs::canonicalize(p)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(paths, want, "{s}");
    let empty = env.path("empty");
    std::fs::write(&empty, "# nothing\n").unwrap();
    let r = env.run(&["backup", "--files-from", empty.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

/// `--retry-lock` waits for another process's lock: it fails after the
/// wait while the lock is held, and succeeds once it is released.
#[test]
fn retry_lock_waits_for_the_lock_to_go() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f"), b"x");
    env.backup(&[&src], &[]);
    let img = env.path("i.img");
    std::fs::write(&img, vec![1u8; 4096]).unwrap();
    env.backup(&[], &["--block", img.to_str().unwrap()]);
    // serve-nbd holds a shared lock while it serves; prune wants exclusive.
    let sock = env.path("l.sock");
    let mut holder = env
        .std_cmd()
        .args(["serve-nbd", "latest", "--listen"])
        .arg(format!("unix:{}", sock.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !sock.exists() {
        assert!(t.elapsed().as_secs() < 30, "serve-nbd did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let r = env.run(&["prune"]);
    assert_eq!(r.code, 11, "no wait: locked at once: {}", r.stderr);
    let t = std::time::Instant::now();
    let r = env.run(&["prune", "--retry-lock", "1s"]);
    assert_eq!(r.code, 11, "{}", r.stderr);
    assert!(
        t.elapsed() >= std::time::Duration::from_secs(1),
        "it did not wait"
    );
    // Released while waiting: the prune goes ahead.
    let mut waiting = env
        .std_cmd()
        .args(["prune", "--retry-lock", "2m"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(waiting.try_wait().unwrap().is_none(), "prune did not wait");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = holder.wait();
    let st = waiting.wait().unwrap();
    assert!(st.success(), "prune failed after the lock went");
}

#[test]
fn snapshots_group_and_cut_and_forget_follows_the_filters() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f"), b"x");
    for (host, day) in [("h1", 1), ("h1", 2), ("h1", 3), ("h2", 1), ("h2", 2)] {
        env.backup(
            &[&src],
            &[
                "--host",
                host,
                "--force",
                "--time",
                &format!("2026-01-0{day}T12:00:00Z"),
            ],
        );
    }
    let groups = env
        .run(&["snapshots", "--json", "--group-by", "host", "--latest", "2"])
        .ok()
        .json();
    let groups = groups["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    for g in groups {
        let snaps = g["snapshots"].as_array().unwrap();
        assert_eq!(snaps.len(), 2, "{g}");
        let host = g["group_key"]["hostname"].as_str().unwrap();
        assert!(snaps.iter().all(|s| s["hostname"] == host));
        // The newest two, oldest first.
        assert!(snaps[0]["time"].as_str() < snaps[1]["time"].as_str());
        let newest = if host == "h1" {
            "2026-01-03"
        } else {
            "2026-01-02"
        };
        assert!(
            snaps[1]["time"].as_str().unwrap().starts_with(newest),
            "{g}"
        );
    }
    let text = env.run(&["snapshots", "--latest", "1"]).ok().stdout;
    assert!(text.contains("1 snapshot\n"), "{text}");
    // keep-last 1 applied to h1 only: h2 keeps both.
    env.run(&["forget", "--keep-last", "1", "--host", "h1"])
        .ok();
    let left = env.run(&["snapshots", "--json"]).ok().json()["snapshots"].clone();
    let hosts: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(hosts.iter().filter(|h| **h == "h1").count(), 1, "{hosts:?}");
    assert_eq!(hosts.iter().filter(|h| **h == "h2").count(), 2, "{hosts:?}");
}

/// `rewrite` removes exactly the named paths: the copy restores to the
/// source minus them, the original is untouched (or gone with --forget),
/// and check is clean.
#[test]
fn rewrite_removes_exactly_the_named_paths() {
    let env = Env::new();
    let src = env.path("src");
    for p in [
        "keep/a.txt",
        "keep/b.tmp",
        "secret/key",
        "deep/x/y.tmp",
        "deep/x/z.txt",
        "top.txt",
    ] {
        write(&src.join(p), p.as_bytes());
    }
    let first = env.backup(&[&src], &[]);
    let abs = std::fs::canonicalize(&src).unwrap();
    let secret = format!("{}/secret", abs.display());
    let dry = env
        .run(&[
            "rewrite",
            "--json",
            "--dry-run",
            "-e",
            "*.tmp",
            "-e",
            &secret,
        ])
        .ok()
        .json();
    let mut removed: Vec<String> = dry["rewritten"][0]["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    removed.sort();
    let mut want = vec![
        format!("{}/deep/x/y.tmp", abs.display()),
        format!("{}/keep/b.tmp", abs.display()),
        secret.clone(),
    ];
    want.sort();
    assert_eq!(removed, want);
    assert_eq!(
        env.run(&["list", "snapshots"]).ok().stdout.lines().count(),
        1,
        "a dry run wrote"
    );

    let r = env
        .run(&["rewrite", "--json", "-e", "*.tmp", "-e", &secret])
        .ok()
        .json();
    let new = r["rewritten"][0]["new"].as_str().unwrap().to_string();
    let t = env.path("t");
    env.restore(&new, &t, &[]).ok();
    let got: BTreeSet<String> = crate::common::walk(&t)
        .iter()
        .filter(|p| p.is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let expect: BTreeSet<String> = ["a.txt", "z.txt", "top.txt"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, expect);
    // The original is still there and whole.
    let t2 = env.path("t2");
    env.restore(first["snapshot_id"].as_str().unwrap(), &t2, &[])
        .ok();
    assert_eq!(
        crate::common::walk(&t2)
            .iter()
            .filter(|p| p.is_file())
            .count(),
        6
    );
    let snap: serde_json::Value =
        serde_json::from_str(&env.run(&["cat", "snapshot", &new]).ok().stdout).unwrap();
    assert_eq!(snap["original"], first["snapshot_id"]);
    // --forget replaces it; nothing left to remove afterwards.
    let again = env
        .run(&["rewrite", "--json", "--forget", "-e", "*.txt"])
        .ok()
        .json();
    assert!(
        again["rewritten"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["forgotten"] == true)
    );
    let left = env.run(&["snapshots", "--json"]).ok().json()["snapshots"].clone();
    assert_eq!(left.as_array().unwrap().len(), 2);
    let c = env.run(&["check"]).ok();
    assert!(
        c.stdout.contains("no problems") || c.stdout.contains("no errors"),
        "{}",
        c.stdout
    );
}

/// `tag` changes a snapshot's tags after the fact: a new snapshot of the
/// same tree replaces the old one; selecting by the new tags finds it; an
/// append-only key cannot; a change to what the tags already are writes
/// nothing.
#[test]
fn tag_changes_a_snapshots_tags_after_the_fact() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f"), b"tagged");
    let first = env.backup(&[&src], &["--tag", "web,daily"]);
    let id = first["snapshot_id"].as_str().unwrap().to_string();
    let before = env.run(&["snapshots", "--json"]).ok().json();
    let tree = before["snapshots"][0]["tree"].clone();
    let r = env
        .run(&["tag", "--json", &id, "--add", "drill", "--remove", "daily"])
        .ok()
        .json();
    assert_eq!(r["changed"].as_array().unwrap().len(), 1, "{r}");
    let new = r["changed"][0]["new"].as_str().unwrap().to_string();
    assert_eq!(r["changed"][0]["tags"], serde_json::json!(["drill", "web"]));
    let snaps = env
        .run(&["snapshots", "--json", "--tag", "drill"])
        .ok()
        .json();
    let found = snaps["snapshots"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{snaps}");
    assert_eq!(found[0]["id"], serde_json::json!(new));
    // The same tree; the old snapshot is gone, and named as the original.
    let old = serde_json::json!(id);
    assert_eq!(found[0]["tree"], tree);
    let all = env.run(&["snapshots", "--json"]).ok().json();
    assert_eq!(all["snapshots"].as_array().unwrap().len(), 1, "{all}");
    let snap: serde_json::Value =
        serde_json::from_str(&env.run(&["cat", "snapshot", &new]).ok().stdout).unwrap();
    assert_eq!(snap["original"], old);
    // Nothing to change: nothing written.
    let same = env
        .run(&["tag", "--json", "--tag", "drill", "--add", "web"])
        .ok()
        .json();
    assert_eq!(
        (
            same["changed"].as_array().unwrap().len(),
            &same["unchanged"]
        ),
        (0, &serde_json::json!(1))
    );
    // --set replaces them all; the restore is the source still.
    env.run(&["tag", &new, "--set", "kept"]).ok();
    let t = env.path("t");
    env.restore("latest", &t, &[]).ok();
    let abs = std::fs::canonicalize(&src).unwrap();
    assert_eq!(
        std::fs::read(t.join(abs.strip_prefix("/").unwrap()).join("f")).unwrap(),
        b"tagged"
    );
    let snaps = env.run(&["snapshots", "--json"]).ok().json();
    assert_eq!(snaps["snapshots"][0]["tags"], serde_json::json!(["kept"]));
    // Without a change asked for: a usage error.
    assert_ne!(env.run(&["tag", "latest"]).code, 0);
}

/// `--delete` removes what the snapshot does not have (files, whole
/// directories, symlinks as links, never what they point to), and keeps
/// what the restore does not select.
#[test]
fn restore_delete_removes_exactly_the_extra_entries() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("keep/a"), b"a");
    write(&src.join("b"), b"b");
    env.backup(&[&src], &[]);
    let t = env.path("t");
    env.restore("latest:/", &t, &[]).ok();
    let rel = std::fs::canonicalize(&src).unwrap();
    let dir = t.join(rel.strip_prefix("/").unwrap());
    let outside = env.path("outside");
    write(&outside.join("precious"), b"must survive");
    write(&dir.join("extra"), b"x");
    write(&dir.join("keep/extra-deep/more/file"), b"x");
    std::os::unix::fs::symlink(&outside, dir.join("link-out")).unwrap();
    write(&dir.join("ignored.log"), b"excluded from the restore: kept");
    // Beside the source, in an ancestor the backup did not read: not the
    // snapshot's business, kept.
    let beside = dir.parent().unwrap().join("beside-the-source");
    write(&beside, b"kept");
    let r = env
        .restore("latest", &t, &["--delete", "--exclude", "*.log", "--json"])
        .ok();
    let s = r.json();
    assert_eq!(s["deleted"], 3, "{s}");
    assert!(!dir.join("extra").exists());
    assert!(!dir.join("keep/extra-deep").exists());
    assert!(std::fs::symlink_metadata(dir.join("link-out")).is_err());
    assert_eq!(
        std::fs::read(outside.join("precious")).unwrap(),
        b"must survive"
    );
    assert!(dir.join("ignored.log").exists());
    assert!(
        beside.exists(),
        "--delete reached above the snapshot's source"
    );
    assert_eq!(std::fs::read(dir.join("keep/a")).unwrap(), b"a");
    assert_eq!(std::fs::read(dir.join("b")).unwrap(), b"b");
}

/// `backup --json` and `restore --json` stream `status` lines (phase,
/// progress, current file) before their summary, every line JSON with a
/// `message_type`.
#[test]
fn json_output_streams_status_lines_then_a_summary() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..20 {
        write(&src.join(format!("d/f{i}")), &vec![i as u8; 10_000]);
    }
    for (args, phase) in [
        (
            vec![
                "backup".to_string(),
                "--json".into(),
                src.to_string_lossy().into_owned(),
            ],
            "reading",
        ),
        (
            vec![
                "restore".into(),
                "latest".into(),
                "--json".into(),
                "--target".into(),
                env.path("t").to_string_lossy().into_owned(),
            ],
            "restoring",
        ),
    ] {
        let mut c = env.cmd();
        c.args(&args);
        let out = run(&mut c).ok();
        let lines: Vec<serde_json::Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        assert!(
            lines.iter().all(|v| v["message_type"].is_string()),
            "{lines:?}"
        );
        let status: Vec<_> = lines
            .iter()
            .filter(|v| v["message_type"] == "status")
            .collect();
        assert!(!status.is_empty(), "no status line: {}", out.stdout);
        assert_eq!(status[0]["phase"], phase, "{:?}", status[0]);
        assert!(status[0]["current_files"].is_array());
        assert_eq!(lines.last().unwrap()["message_type"], "summary");
    }
}

/// `-vv` labels directories new, modified or unmodified against the
/// parent snapshot.
#[test]
fn verbose_labels_directories_by_what_changed() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("changed/f"), b"1");
    write(&src.join("same/f"), b"1");
    env.backup(&[&src], &[]);
    write(&src.join("changed/f"), b"22");
    write(&src.join("added/f"), b"1");
    let mut c = env.cmd();
    c.args(["backup", "-vv"]).arg(&src);
    let out = run(&mut c).ok().stdout;
    let label = |dir: &str| {
        out.lines()
            .find(|l| l.ends_with(&format!("/{dir}")))
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .unwrap_or_else(|| panic!("{dir} not listed:\n{out}"))
    };
    assert_eq!(label("changed"), "modified", "{out}");
    assert_eq!(label("same"), "unmodified", "{out}");
    assert_eq!(label("added"), "new", "{out}");
}

/// What prune says it freed is what the repository shrank by (packs and
/// index objects), even when it only deleted small packs.
#[test]
fn prune_reports_the_space_it_really_freed() {
    let env = Env::new();
    if crate::common::is_s3(&env.repo) {
        return;
    }
    let src = env.path("src");
    let mut rng = baton_testing::Rng::new(3);
    for round in 0..3 {
        for i in 0..4 {
            let mut b = vec![0u8; 20_000];
            rng.fill(&mut b);
            write(&src.join(format!("r{round}-{i}")), &b);
        }
        env.backup(&[&src], &[]);
        for i in 0..4 {
            std::fs::remove_file(src.join(format!("r{round}-{i}"))).unwrap();
        }
    }
    let size =
        || crate::common::du(&env.repo.join("data")) + crate::common::du(&env.repo.join("index"));
    env.run(&["forget", "--keep-last", "1"]).ok();
    let before = size();
    let r = env
        .run(&["prune", "--json", "--max-unused", "0"])
        .ok()
        .json();
    let after = size();
    assert!(before > after, "nothing was freed");
    assert_eq!(r["bytes_freed"], before - after, "{r}");
}

/// `baton mount`: the mounted snapshot, read through the kernel, equals a
/// restore of the same snapshot entry by entry; Ctrl-C unmounts and exits 0.
#[test]
fn mount_shows_what_restore_writes() {
    let fuse_ok = crate::common::is_root()
        && Path::new("/dev/fuse").exists()
        && crate::nbd::have("fusermount3");
    if !fuse_ok {
        eprintln!("skipped: needs root, /dev/fuse and fusermount3");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    let opts = baton_testing::GenOptions {
        seed: 21,
        small_files: 60,
        medium_files: 2,
        special_files: false,
        ..baton_testing::GenOptions::default()
    };
    baton_testing::generate_tree(&src, &opts).unwrap();
    env.backup(&[&src], &["--tag", "m"]);
    let restored = env.path("restored");
    env.restore("latest", &restored, &[]).ok();
    let mnt = env.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut child = env
        .std_cmd()
        .arg("mount")
        .arg(&mnt)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let latest = mnt.join("snapshots/latest");
    let t = std::time::Instant::now();
    while std::fs::read_link(&latest).is_err() {
        assert!(t.elapsed().as_secs() < 30, "the mount did not appear");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let rel = std::fs::canonicalize(&src).unwrap();
    let rel = rel.strip_prefix("/").unwrap();
    let r = baton_testing::compare_trees(
        &restored.join(rel),
        &latest.join(rel),
        &baton_testing::CompareOptions {
            sparse: false,
            ..Default::default()
        },
    );
    let tagged = std::fs::read_dir(mnt.join("tags/m")).unwrap().count();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let st = child.wait().unwrap();
    assert!(
        r.is_ok(),
        "mounted tree differs from the restore: {:?}",
        r.err()
    );
    assert!(tagged >= 1);
    assert_eq!(st.code(), Some(0), "Ctrl-C should end a mount cleanly");
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0, "still mounted");
}

/// A command's help lists its own options first and the global ones under
/// their own heading.
#[test]
fn help_puts_the_commands_own_options_first() {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin!("baton"))
        .args(["backup", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let own = text.find("Options:").expect("an Options section");
    let global = text
        .find("Global options:")
        .expect("a Global options section");
    let exclude = text.find("--exclude <PATTERN>").unwrap();
    let repo = text.find("--repo <REPO>").unwrap();
    assert!(own < exclude && exclude < global && global < repo, "{text}");
    assert!(text.contains("--time <RFC3339>"), "{text}");
}

/// The README's tour: `ls latest /etc` right after a `--stdin` backup lists
/// `/etc` from the newest snapshot that holds it (and `dump`/`restore` of a
/// path do the same).
#[test]
fn latest_with_a_path_is_the_newest_snapshot_holding_it() {
    let env = Env::new();
    let src = env.path("etc");
    write(&src.join("hosts"), b"127.0.0.1 localhost");
    env.backup(&[&src], &[]);
    let mut c = env.cmd();
    c.args(["backup", "--stdin", "--stdin-filename", "db.sql"])
        .write_stdin("dump");
    run(&mut c).ok();
    let abs = std::fs::canonicalize(&src).unwrap();
    let ls = env.run(&["ls", "latest", abs.to_str().unwrap()]).ok();
    assert!(ls.stdout.contains("hosts"), "{}", ls.stdout);
    let file = abs.join("hosts");
    let d = env.run(&["dump", "latest", file.to_str().unwrap()]).ok();
    assert_eq!(d.stdout, "127.0.0.1 localhost");
    // Without a path, latest is the newest of all: the stdin backup.
    let all = env.run(&["ls", "latest"]).ok();
    assert!(
        all.stdout.contains("db.sql") && !all.stdout.contains("hosts"),
        "{}",
        all.stdout
    );
}

/// A restore run again after one that did not finish trusts the files the
/// first run finished (size and mtime as in the snapshot: a restore sets
/// the mtime last) instead of reading them back; a fresh restore onto the
/// same files reads them.
#[test]
fn a_restore_run_again_trusts_what_it_finished() {
    let env = Env::new();
    let src = env.path("src");
    let mut rng = baton_testing::Rng::new(8);
    for n in ["a", "b", "c", "d", "e"] {
        let mut b = vec![0u8; 100_000];
        rng.fill(&mut b);
        write(&src.join(n), &b);
    }
    env.backup(&[&src], &[]);
    let t = env.path("t");
    let dir = t.join(
        std::fs::canonicalize(&src)
            .unwrap()
            .strip_prefix("/")
            .unwrap(),
    );
    // A non-empty directory where file `e` goes: the first run ends with
    // an error, unfinished.
    write(&dir.join("e/blocker"), b"x");
    let first = env.restore("latest", &t, &["--json"]);
    assert_ne!(first.code, 0);
    std::fs::remove_dir_all(dir.join("e")).unwrap();
    // Trusted content is not trusted metadata: a mode changed since (which
    // leaves the mtime alone) is put back; a file given to another user
    // since is replaced.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(dir.join("a"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let root = nix::unistd::geteuid().is_root();
    if root {
        std::os::unix::fs::chown(dir.join("b"), Some(4321), Some(4321)).unwrap();
    }
    let again = env.restore("latest", &t, &["--json"]).ok().json();
    assert_eq!(again["bytes_verified_in_place"], 0, "{again}");
    // A file another user owns is never trusted: it is restored anew.
    let (trusted, fetched) = if root { (3, 200_000) } else { (4, 100_000) };
    assert_eq!(again["files_already_restored"], trusted, "{again}");
    assert_eq!(again["bytes_fetched"], fetched, "{again}");
    for n in ["a", "b", "c", "d", "e"] {
        assert_eq!(
            std::fs::read(dir.join(n)).unwrap(),
            std::fs::read(src.join(n)).unwrap()
        );
        let (got, want) = (
            std::fs::metadata(dir.join(n)).unwrap(),
            std::fs::metadata(src.join(n)).unwrap(),
        );
        assert_eq!(got.mode(), want.mode(), "{n}");
        assert_eq!(got.mtime_nsec(), want.mtime_nsec(), "{n}");
        if root {
            assert_eq!((got.uid(), got.gid()), (want.uid(), want.gid()), "{n}");
        }
    }
    // Finished: the next restore onto it is a fresh one and verifies.
    let third = env.restore("latest", &t, &["--json"]).ok().json();
    assert_eq!(third["bytes_verified_in_place"], 500_000, "{third}");
}

/// Everything below `root`: relative path -> (content of a file, mtime in
/// ns); directories have no content.
fn tree_state(root: &Path) -> std::collections::BTreeMap<String, (Option<Vec<u8>>, i128)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
            if m.is_dir() {
                stack.push(p.clone());
                out.insert(rel, (None, mtime));
            } else {
                out.insert(rel, (Some(std::fs::read(&p).unwrap()), mtime));
            }
        }
    }
    out
}

/// `restore --dry-run` changes nothing, and says exactly what the restore
/// then does: for each `--overwrite` policy, with `--delete`, against a
/// target holding edited, newer, older, missing and extra entries.
#[test]
fn restore_dry_run_predicts_the_restore_and_changes_nothing() {
    let env = Env::new();
    let src = env.path("src");
    for f in ["edited", "newer", "older", "same", "missing", "d/inner"] {
        write(&src.join(f), format!("snapshot {f}").as_bytes());
        touch(&src.join(f), "2025-01-01T00:00:00Z");
    }
    env.backup(&[&src], &[]);
    let snap_src = std::fs::canonicalize(&src).unwrap();
    let rel = snap_src.strip_prefix("/").unwrap().to_path_buf();

    // Into a target that does not exist: everything is new, nothing made.
    let none = env.path("not-there");
    let r = env.restore("latest", &none, &["--dry-run", "--json"]).ok();
    assert!(!none.exists(), "a dry run created its target");
    let s = r.json();
    assert_eq!(s["dry_run"], true, "{s}");
    // Six files and the directories down to them.
    let dirs = rel.components().count() as u64 + 1;
    assert_eq!(s["restore"], 6 + dirs, "{s}");
    assert_eq!(s["bytes_to_write"], s["bytes_to_fetch"]);

    for policy in ["always", "if-changed", "if-newer", "never"] {
        let t = env.path(&format!("t-{policy}"));
        let dir = restore_and_edit(&env, &t, &rel);
        std::fs::remove_file(dir.join("missing")).unwrap();
        write(&dir.join("extra"), b"not in the snapshot");
        write(&dir.join("extra-dir/x"), b"x");
        let before = tree_state(&t);

        let r = env
            .restore(
                "latest",
                &t,
                &[
                    "--dry-run",
                    "--delete",
                    "--overwrite",
                    policy,
                    "--json",
                    "-v",
                ],
            )
            .ok();
        assert_eq!(
            tree_state(&t),
            before,
            "{policy}: the dry run changed the target"
        );
        let mut planned: std::collections::BTreeMap<String, String> = Default::default();
        for line in r.stdout.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["message_type"] == "verbose_status" {
                let item = v["item"].as_str().unwrap();
                let relp = Path::new(item).strip_prefix(&t).unwrap();
                planned.insert(
                    relp.to_string_lossy().into_owned(),
                    v["action"].as_str().unwrap().into(),
                );
            }
        }
        let plan = r.json();

        env.restore("latest", &t, &["--delete", "--overwrite", policy])
            .ok();
        let after = tree_state(&t);
        // What the restore really did, entry by entry.
        let mut did: std::collections::BTreeMap<String, String> = Default::default();
        for (p, (content, _)) in &before {
            match after.get(p) {
                None => {
                    // Below a deleted directory: the directory is the entry.
                    let parent_gone = Path::new(p).parent().is_some_and(|q| {
                        !after.contains_key(&*q.to_string_lossy())
                            && before.contains_key(&*q.to_string_lossy())
                    });
                    if !parent_gone {
                        did.insert(p.clone(), "delete".into());
                    }
                }
                Some((c, _)) if c != content => {
                    did.insert(p.clone(), "update".into());
                }
                Some(_) => {}
            }
        }
        for p in after.keys().filter(|p| !before.contains_key(*p)) {
            did.insert(p.clone(), "restore".into());
        }
        let changes: std::collections::BTreeMap<String, String> = planned
            .iter()
            .filter(|(_, a)| matches!(a.as_str(), "restore" | "update" | "delete"))
            .map(|(p, a)| (p.clone(), a.clone()))
            .collect();
        assert_eq!(changes, did, "{policy}: the plan and the restore differ");
        // Kept entries are the ones the plan called unchanged or skipped.
        for (p, a) in &planned {
            if a == "skip" || a == "unchanged" {
                assert_eq!(before[p].0, after[p].0, "{policy}: {p} was {a} but changed");
            }
        }
        let count = |a: &str| planned.values().filter(|x| *x == a).count() as u64;
        for a in ["restore", "update", "unchanged", "skip", "delete"] {
            assert_eq!(plan[a], count(a), "{policy}: {a} in {plan}");
        }
        // if-newer keeps the edited file (edited now) and the newer one;
        // never also the older one.
        let skipped = match policy {
            "always" | "if-changed" => 0,
            "if-newer" => 2,
            _ => 3,
        };
        assert_eq!(plan["skip"], skipped, "{policy}: {plan}");
        assert_eq!(plan["delete"], 2, "{policy}: {plan}");
    }
}

/// Every command's `--json` output is a stream of documented messages
/// (each line is checked against docs/json by `common::run`); this runs
/// each command and message kind at least once, and the failures on
/// stderr too.
#[test]
fn every_json_message_is_documented_and_valid() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a.conf"), b"a");
    write(&src.join("d/b.txt"), b"bb");
    let mut seen = BTreeSet::new();
    let mut note = |r: &crate::common::Run| {
        for l in r
            .stdout
            .lines()
            .chain(r.stderr.lines().filter(|l| l.starts_with('{')))
        {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            seen.insert(v["message_type"].as_str().unwrap().to_string());
        }
    };
    let j = |args: &[&str]| {
        let mut a = args.to_vec();
        a.push("--json");
        env.run(&a)
    };
    let first = j(&["backup", "-v", src.to_str().unwrap()]).ok();
    note(&first);
    write(&src.join("c.conf"), b"c");
    note(&j(&["backup", "-vv", src.to_str().unwrap()]).ok());
    let t = env.path("t");
    for args in [
        &["snapshots"][..],
        &["snapshots", "--group-by", "host"],
        &["ls", "latest"],
        &["find", "*.conf"],
        &["stats"],
        &["list", "snapshots"],
        &["rewrite", "--exclude", "*.txt", "--dry-run"],
        &["check", "--read-data"],
        &["key", "list"],
        &["unlock"],
        &["jobs"],
        &["forget", "--keep-last", "5", "--dry-run"],
        &["prune", "--dry-run"],
        &["repair", "snapshots"],
    ] {
        note(&j(args).ok());
    }
    let ids = j(&["list", "snapshots"]).ok().json();
    let (a, b) = (
        ids["ids"][0].as_str().unwrap().to_string(),
        ids["ids"][1].as_str().unwrap().to_string(),
    );
    note(&j(&["diff", &a, &b]).ok());
    note(&j(&["restore", "latest", "--target", t.to_str().unwrap(), "-v"]).ok());
    note(
        &j(&[
            "restore",
            "latest",
            "--target",
            t.to_str().unwrap(),
            "--dry-run",
        ])
        .ok(),
    );
    // An unreadable file: an `error` line on stderr, exit 3.
    if !crate::common::is_root() {
        use std::os::unix::fs::PermissionsExt;
        let f = src.join("secret");
        write(&f, b"s");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o000)).unwrap();
        let r = j(&["backup", src.to_str().unwrap()]);
        assert_eq!(r.code, 3, "{}", r.stderr);
        note(&r);
        std::fs::remove_file(&f).unwrap();
    }
    // A failure: `exit_error` on stderr with the exit code.
    let r = j(&[
        "restore",
        "no-such-snapshot",
        "--target",
        t.to_str().unwrap(),
    ]);
    assert_ne!(r.code, 0);
    let last: serde_json::Value = serde_json::from_str(r.stderr.lines().last().unwrap()).unwrap();
    assert_eq!(last["message_type"], "exit_error");
    assert_eq!(last["code"], r.code);
    note(&r);
    for want in [
        "summary",
        "status",
        "verbose_status",
        "snapshots",
        "snapshot_groups",
        "snapshot",
        "node",
        "find",
        "stats",
        "list",
        "rewrite",
        "check",
        "keys",
        "unlocked",
        "jobs",
        "forget",
        "prune",
        "repair_snapshots",
        "diff",
        "exit_error",
    ] {
        assert!(seen.contains(want), "no {want} message seen: {seen:?}");
    }
}

/// A file already in the target is verified in place on the writer's
/// workers: only the chunks that differ are fetched, and a chunk of zeros
/// is written over garbage (not skipped as a hole would be), longer files
/// are cut to the snapshot's length.
#[test]
fn an_existing_file_is_repaired_in_place_chunk_by_chunk() {
    let env = Env::new();
    let src = env.path("src");
    let mut rng = baton_testing::Rng::new(21);
    let mut data = vec![0u8; 12 << 20];
    rng.fill(&mut data[..6 << 20]);
    rng.fill(&mut data[9 << 20..]);
    write(&src.join("f"), &data);
    env.backup(&[&src], &[]);
    let t = env.path("t");
    env.restore("latest", &t, &[]).ok();
    let f = t
        .join(
            std::fs::canonicalize(&src)
                .unwrap()
                .strip_prefix("/")
                .unwrap(),
        )
        .join("f");
    // Garbage in the zeros, and a tail beyond the snapshot's end.
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        file.write_all_at(&[0xAA; 300_000], (7 << 20) + 5).unwrap();
        file.write_all_at(b"tail", 12 << 20).unwrap();
    }
    let again = env.restore("latest", &t, &["--json"]).ok().json();
    assert!(std::fs::read(&f).unwrap() == data, "not repaired");
    let fetched = again["bytes_fetched"].as_u64().unwrap();
    assert!(fetched > 0, "{again}");
    assert!(fetched < 8 << 20, "fetched {fetched} of 12 MiB: {again}");
    assert!(
        again["bytes_verified_in_place"].as_u64().unwrap() >= 4 << 20,
        "{again}"
    );
}

/// A file where the snapshot has a directory: `--overwrite never` keeps
/// it (and the dry run says so), `always` replaces it with the directory.
#[test]
fn overwrite_never_keeps_a_file_where_a_directory_goes() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("d/inner"), b"inner");
    env.backup(&[&src], &[]);
    let rel = std::fs::canonicalize(&src).unwrap();
    let rel = rel.strip_prefix("/").unwrap();
    let t = env.path("t");
    env.restore("latest", &t, &[]).ok();
    let d = t.join(rel).join("d");
    std::fs::remove_dir_all(&d).unwrap();
    write(&d, b"a file of mine");
    let plan = env
        .restore(
            "latest",
            &t,
            &["--dry-run", "--json", "--overwrite", "never"],
        )
        .ok()
        .json();
    assert_eq!(plan["skip"], 1, "{plan}");
    assert_eq!(plan["update"], 0, "{plan}");
    let r = env
        .restore("latest", &t, &["--json", "--overwrite", "never"])
        .ok()
        .json();
    assert_eq!(r["skipped"], 1, "{r}");
    assert_eq!(std::fs::read(&d).unwrap(), b"a file of mine");
    env.restore("latest", &t, &[]).ok();
    assert_eq!(std::fs::read(d.join("inner")).unwrap(), b"inner");
}

/// The dry run counts a hard-linked file's data once, as the restore
/// writes it once and links the other names.
#[test]
fn restore_dry_run_counts_hard_linked_data_once() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a"), &[7u8; 100_000]);
    std::fs::hard_link(src.join("a"), src.join("b")).unwrap();
    env.backup(&[&src], &[]);
    let plan = env
        .restore("latest", &env.path("t"), &["--dry-run", "--json"])
        .ok()
        .json();
    assert_eq!(plan["bytes_to_write"], 100_000, "{plan}");
    let r = env
        .restore("latest", &env.path("t"), &["--json"])
        .ok()
        .json();
    assert!(r["bytes_fetched"].as_u64().unwrap() <= 100_000, "{r}");
}

/// An empty target others may write to is restored with exclusive
/// creation (the walk's way), and comes out equal all the same.
#[test]
fn a_shared_empty_target_restores_equal() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a"), &[1u8; 70_000]);
    write(&src.join("d/b"), b"bee");
    env.backup(&[&src], &[]);
    let t = env.path("shared");
    std::fs::create_dir(&t).unwrap();
    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o1777)).unwrap();
    env.restore("latest", &t, &[]).ok();
    let dir = t.join(
        std::fs::canonicalize(&src)
            .unwrap()
            .strip_prefix("/")
            .unwrap(),
    );
    assert_eq!(std::fs::read(dir.join("a")).unwrap(), vec![1u8; 70_000]);
    assert_eq!(std::fs::read(dir.join("d/b")).unwrap(), b"bee");
}
