//! Command-line conventions: help, passwords, default repository, JSON.

use crate::common::*;
use baton_testing::write_file;

const COMMANDS: &[(&str, &[&str])] = &[
    ("init", &["--compression", "--pack-size"]),
    (
        "backup",
        &[
            "--exclude",
            "--exclude-file",
            "--exclude-caches",
            "--one-file-system",
            "--force",
            "--tag",
            "--host",
            "--dry-run",
            "--stdin",
            "--stdin-filename",
            "--parent",
        ],
    ),
    (
        "restore",
        &["--target", "--include", "--exclude", "--verify"],
    ),
    ("snapshots", &["--tag", "--host", "--path"]),
    ("ls", &["--long", "--recursive"]),
    ("diff", &[]),
    ("dump", &[]),
    ("cat", &[]),
    ("key", &["list", "add", "remove", "passwd"]),
    ("unlock", &["--remove-all"]),
];

#[test]
fn help_is_complete() {
    let env = Env::empty();
    let top = env.run(&["--help"]).ok().stdout;
    for (c, _) in COMMANDS {
        assert!(top.contains(c), "top-level help lacks {c}");
    }
    for global in [
        "--repo",
        "--password-file",
        "--password-command",
        "--json",
        "--verbose",
        "--quiet",
        "BATON_PASSWORD",
        "Exit codes",
        "12",
    ] {
        assert!(top.contains(global), "top-level help lacks {global}");
    }
    assert_eq!(env.run(&["help"]).ok().stdout, top);
    for (c, opts) in COMMANDS {
        let h = env.run(&[c, "--help"]).ok().stdout;
        for o in *opts {
            assert!(h.contains(o), "`baton {c} --help` lacks {o}:\n{h}");
        }
        assert_eq!(env.run(&["help", c]).ok().stdout, h);
    }
    assert!(env.run(&["--version"]).ok().stdout.starts_with("baton "));
    let bad = env.run(&["backup", "--no-such-flag"]);
    assert_eq!(bad.code, 2);
}

#[test]
fn passwords_from_file_and_command() {
    let env = Env::new();
    let pwfile = env.path("pw");
    std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
    let r = run(env
        .cmd()
        .env_remove("BATON_PASSWORD")
        .arg("--password-file")
        .arg(&pwfile)
        .arg("snapshots"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(env
        .cmd()
        .env_remove("BATON_PASSWORD")
        .env("BATON_PASSWORD_FILE", &pwfile)
        .arg("snapshots"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(env.cmd().env_remove("BATON_PASSWORD").args([
        "--password-command",
        &format!("echo '{PASSWORD}'"),
        "snapshots",
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(env.cmd().env_remove("BATON_PASSWORD").args([
        "--password-command",
        "echo nope",
        "snapshots",
    ]));
    assert_eq!(r.code, 12);
    // No password and no terminal: a clear error, not a hang.
    let r = run(env.cmd().env_remove("BATON_PASSWORD").arg("snapshots"));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("BATON_PASSWORD"), "{}", r.stderr);
}

/// With no repository configured, `backup` creates the default one on first use.
#[test]
fn default_repository_is_created_on_first_backup() {
    let env = Env::empty();
    let src = env.path("src");
    write_file(&src.join("f"), 1234, 1).unwrap();
    let r = run(env
        .cmd()
        .env_remove("BATON_REPOSITORY")
        .args(["backup", "--json"])
        .arg(&src));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(env.path(".local/share/baton/repo/config").is_file());
    assert_eq!(r.json()["files_new"], 1);
    let snaps = run(env
        .cmd()
        .env_remove("BATON_REPOSITORY")
        .args(["snapshots", "--json"]))
    .ok()
    .stdout;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&snaps).unwrap()["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // An explicit --init creates a repository at an explicit location too.
    let other = env.path("other");
    let r = run(env
        .cmd()
        .arg("-r")
        .arg(&other)
        .args(["backup", "--init", "-q"])
        .arg(&src));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(other.join("config").is_file());
}

#[test]
fn quiet_and_verbose() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), 10, 1).unwrap();
    let q = env
        .run_os(&["backup".as_ref(), "-q".as_ref(), src.as_os_str()])
        .ok();
    assert!(q.stdout.is_empty(), "{}", q.stdout);
    assert!(
        q.stderr.is_empty(),
        "no progress bars when stderr is not a terminal: {}",
        q.stderr
    );
    write_file(&src.join("g"), 10, 2).unwrap();
    let v = env
        .run_os(&["backup".as_ref(), "-v".as_ref(), src.as_os_str()])
        .ok();
    assert!(
        v.stdout
            .lines()
            .any(|l| l.starts_with("new") && l.ends_with("/g")),
        "{}",
        v.stdout
    );
    assert!(
        !v.stdout.lines().any(|l| l.ends_with("/f")),
        "unmodified files are listed only with -vv"
    );
}

/// Progress bars go to stderr when it is a terminal, and only then.
#[test]
fn progress_bar_only_on_a_terminal() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("big"), 64 << 20, 1).unwrap();
    let plain = env.run_os(&["backup".as_ref(), src.as_os_str()]).ok();
    assert!(
        !plain.stderr.contains("ETA") && !plain.stderr.contains('\u{1b}'),
        "no bar without a terminal: {:?}",
        plain.stderr
    );
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped the terminal half: `script` (util-linux) is not installed");
        return;
    }
    write_file(&src.join("big2"), 64 << 20, 2).unwrap();
    let bin = assert_cmd::cargo::cargo_bin!("baton");
    let cmd = format!("{} backup {}", bin.display(), src.display());
    let out = run(assert_cmd::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("BATON_REPOSITORY", &env.repo)
        .envs(crate::common::backend_env())
        .env("BATON_PASSWORD", PASSWORD)
        .env("TERM", "xterm"));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stdout.contains("ETA"),
        "a progress bar with an ETA is drawn on a terminal: {:?}",
        &out.stdout[..out.stdout.len().min(400)]
    );
    assert!(out.stdout.contains("MiB"), "it shows bytes");
}

/// The hidden `debug` commands the benchmark (bench/run.sh) relies on: not
/// in the help, JSON with the fields the report reads.
#[test]
fn debug_commands_for_the_benchmark() {
    let env = Env::empty();
    assert!(!env.run(&["--help"]).ok().stdout.contains("debug"));
    let p = env
        .run(&[
            "debug",
            "primitives",
            "--json",
            "--mib",
            "2",
            "--repeat",
            "1",
        ])
        .ok()
        .json();
    for s in ["text", "random", "mix"] {
        for k in [
            "chunking_mib_s",
            "blake3_keyed_mib_s",
            "zstd_mib_s",
            "seal_mib_s",
            "pipeline_mib_s",
        ] {
            assert!(p["samples"][s][k].as_f64().unwrap() > 0.0, "{s} {k}: {p}");
        }
    }
    let r = &p["samples"]["random"];
    assert_eq!(r["stored_ratio"], 1.0, "random data is stored raw: {p}");
    assert!(p["samples"]["text"]["stored_ratio"].as_f64().unwrap() < 0.6);
    let i = env
        .run(&["debug", "index-memory", "--json", "--chunks", "50000"])
        .ok()
        .json();
    assert_eq!(i["chunks"], 50000);
    assert!(i["bytes_per_chunk"].as_f64().unwrap() > 32.0, "{i}");
    assert!(i["lookup_hit_ns"].as_f64().unwrap() > 0.0);
}
