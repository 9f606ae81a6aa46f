//! `baton check`: a clean repository checks clean; every kind of damage to
//! every kind of object is found and named; damaged data is traced to the
//! snapshots and files it affects; packs of an unfinished backup are not
//! garbage.

use crate::common::*;
use baton_testing::write_file;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Two snapshots: the first of `a` and `sub/c`, the second adds `b`. Each
/// file is one chunk, so each backup stores one data pack, one tree pack
/// and one index object.
pub fn two_snapshots(env: &Env) -> (PathBuf, [String; 2]) {
    let src = env.path("src");
    write_file(&src.join("a"), 300_000, 1).unwrap();
    write_file(&src.join("sub/c"), 100_000, 3).unwrap();
    let first = env.backup(&[&src], &[]);
    write_file(&src.join("b"), 300_000, 2).unwrap();
    let second = env.backup(&[&src], &[]);
    let id = |v: &Value| v["snapshot_id"].as_str().unwrap().to_string();
    (src, [id(&first), id(&second)])
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Packs of each type, by the index's account: (data packs, tree packs),
/// each in the order of the backups that stored them.
pub fn packs_by_type(env: &Env) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut data, mut trees) = (Vec::new(), Vec::new());
    let mut indexes = objects(&env.repo, "index");
    // In backup order (on S3, which keeps no such order for us: by name).
    if crate::common::s3_mode() {
        indexes.sort();
    } else {
        indexes.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    }
    for idx in indexes {
        let j: Value =
            serde_json::from_str(&env.run(&["cat", "index", &name(&idx)]).ok().stdout).unwrap();
        for p in j["packs"].as_array().unwrap() {
            let id = p["id"].as_str().unwrap();
            let path = env.repo.join("data").join(&id[..2]).join(id);
            match p["blobs"][0]["type"].as_str().unwrap() {
                "tree" => trees.push(path),
                _ => data.push(path),
            }
        }
    }
    (data, trees)
}

fn check(env: &Env, extra: &[&str]) -> (Run, Value) {
    let mut args = vec!["check", "--json"];
    args.extend_from_slice(extra);
    let r = env.run(&args);
    no_panic(&r);
    let j = if r.stdout.trim().is_empty() {
        Value::Null
    } else {
        r.json()
    };
    (r, j)
}

fn flip(p: &Path) {
    let mut b = crate::common::obj_read(p);
    let i = b.len() / 2;
    b[i] ^= 0x55;
    crate::common::obj_write(p, &b);
}

#[test]
fn clean_repository_checks_clean_with_read_data() {
    let env = Env::new();
    two_snapshots(&env);
    let packs = objects(&env.repo, "data");
    let pack_bytes: u64 = packs.iter().map(|p| crate::common::obj_len(p)).sum();
    let (r, j) = check(&env, &["--read-data"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(j["error_count"], 0, "{j}");
    assert_eq!(j["warning_count"], 0, "{j}");
    assert_eq!(j["problems"].as_array().unwrap().len(), 0);
    assert_eq!(j["snapshots"], 2);
    assert_eq!(j["packs_checked"], packs.len() as u64);
    assert_eq!(j["bytes_read"], pack_bytes);
    // 3 data chunks, and at least one tree per snapshot.
    assert!(j["blobs_checked"].as_u64().unwrap() >= 5, "{j}");
    // Without --read-data nothing is read.
    let (r, j) = check(&env, &[]);
    assert_eq!(r.code, 0);
    assert_eq!(j["packs_checked"], 0);
    assert_eq!(j["bytes_read"], 0);
    // The human report says so too.
    let r = env.run(&["check", "--read-data"]).ok();
    assert!(r.stdout.contains("no problems found"), "{}", r.stdout);
    assert!(
        objects(&env.repo, "locks").is_empty(),
        "the lock is released"
    );
}

#[test]
fn read_data_subsets_select_packs() {
    let env = Env::new();
    two_snapshots(&env);
    let total = objects(&env.repo, "data").len() as u64;
    let mut sum = 0;
    for k in 1..=3 {
        let (r, j) = check(&env, &[&format!("--read-data-subset={k}/3")]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        sum += j["packs_checked"].as_u64().unwrap();
    }
    assert_eq!(sum, total, "groups 1/3..3/3 read every pack once");
    let (_, j) = check(&env, &["--read-data-subset=50%"]);
    assert_eq!(j["packs_checked"], total.div_ceil(2));
    let (_, j) = check(&env, &["--read-data-subset=100%"]);
    assert_eq!(j["packs_checked"], total);
    // A size smaller than every pack reads none; a huge one reads all.
    let (_, j) = check(&env, &["--read-data-subset=10"]);
    assert_eq!(j["packs_checked"], 0);
    let (_, j) = check(&env, &["--read-data-subset=1G"]);
    assert_eq!(j["packs_checked"], total);
    for bad in ["0%", "4/3", "lots"] {
        let r = env.run(&["check", &format!("--read-data-subset={bad}")]);
        assert_eq!(r.code, 2, "{bad}: {}", r.stderr);
    }
}

/// A damaged data pack: the report names the pack, the blob, the snapshot
/// that holds the file and the file's path, and not the unaffected
/// snapshot; the unaffected files still restore.
#[test]
fn damaged_data_is_traced_to_snapshots_and_files() {
    if crate::common::local_only("needs the packs in backup order (file times)") {
        return;
    }
    let env = Env::new();
    let (src, [first, second]) = two_snapshots(&env);
    let (data, _) = packs_by_type(&env);
    let victim = &data[1]; // holds only b
    flip(victim);
    let (r, j) = check(&env, &["--read-data"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("check found"), "{}", r.stderr);
    let problems = j["problems"].as_array().unwrap();
    let with_paths: Vec<&Value> = problems
        .iter()
        .filter(|p| !p["paths"].as_array().unwrap().is_empty())
        .collect();
    assert!(!with_paths.is_empty(), "{j}");
    let b = src.join("b").to_string_lossy().into_owned();
    for p in &with_paths {
        assert_eq!(p["paths"], serde_json::json!([b]), "{p}");
        assert_eq!(p["snapshots"], serde_json::json!([second]), "{p}");
        assert!(
            p["message"].as_str().unwrap().contains(&name(victim)),
            "{p}"
        );
    }
    assert!(
        problems
            .iter()
            .any(|p| p["object"] == format!("pack {}", name(victim))),
        "the pack itself is named: {j}"
    );
    assert!(!j.to_string().contains(&first), "{j}");
    // The human report lists the file under the snapshot.
    let human = env.run(&["check", "--read-data"]);
    assert_eq!(human.code, 1);
    assert!(human.stdout.contains(&b) && human.stdout.contains(&second[..8]));
    // The first snapshot is unaffected and restores; so does `a` from the second.
    let t = env.path("t1");
    env.restore(&first, &t, &[]).ok();
    let t2 = env.path("t2");
    let r = env.restore(&second, &t2, &[]);
    assert_eq!(r.code, 1, "b cannot be restored");
    for (t, f) in [(&t, "a"), (&t, "sub/c"), (&t2, "a"), (&t2, "sub/c")] {
        let restored = t.join(src.strip_prefix("/").unwrap()).join(f);
        assert_eq!(
            std::fs::read(&restored).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{}",
            restored.display()
        );
    }
}

/// Kill -9 a backup once its journal names packs: those packs are in no
/// index yet, but they belong to a resumable job, so they are not
/// "unreferenced"; the repository checks clean.
#[test]
fn packs_of_an_unfinished_backup_are_not_unreferenced() {
    let env = Env::with_pack_size(1);
    let src = env.path("big");
    for i in 0..24 {
        write_file(&src.join(format!("f{i:02}")), 12 << 20, 100 + i).unwrap();
    }
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin!("baton"))
        .env("BATON_REPOSITORY", &env.repo)
        .envs(crate::common::backend_env())
        .env("BATON_PASSWORD", PASSWORD)
        .args(["backup", "-q", "--checkpoint-interval", "0.1"])
        .arg(&src)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let job = loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup finished before it could be interrupted"
        );
        assert!(std::time::Instant::now() < deadline, "no job with packs");
        let r = env.run(&["jobs", "--json"]);
        if r.code == 0
            && let Some(job) = serde_json::from_str::<Value>(&r.stdout)
                .ok()
                .and_then(|v| v["jobs"].as_array().cloned())
                .and_then(|jobs| jobs.into_iter().find(|j| j["packs"].as_u64() > Some(0)))
        {
            break job;
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        objects(&env.repo, "index").is_empty(),
        "no index was written"
    );
    // (A pack being written when the process died is a `.tmp-*` file,
    // which `objects` leaves out, as storage does.)
    let packs = objects(&env.repo, "data");
    assert!(packs.len() as u64 >= job["packs"].as_u64().unwrap());
    let (r, j) = check(&env, &["--read-data"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(j["error_count"], 0, "{j}");
    // Only packs stored after the job's last journal record are garbage.
    let jobs: Value = serde_json::from_str(&env.run(&["jobs", "--json"]).ok().stdout).unwrap();
    let journaled = jobs["jobs"][0]["packs"].as_u64().unwrap();
    eprintln!(
        "interrupted backup: {} packs stored, {journaled} in its journal",
        packs.len()
    );
    assert!(journaled >= job["packs"].as_u64().unwrap());
    for p in j["problems"].as_array().unwrap() {
        assert_eq!(p["kind"], "unreferenced_pack", "{p}");
    }
    assert_eq!(
        j["warning_count"].as_u64().unwrap(),
        packs.len() as u64 - journaled,
        "the journal's packs are referenced: {j}"
    );
    assert_eq!(j["packs_checked"], packs.len() as u64);
}
