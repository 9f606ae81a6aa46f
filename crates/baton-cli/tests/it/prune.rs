//! `baton prune`: space comes back, the rest restores byte-identically,
//! partly used packs are repacked, dry runs write nothing, and unfinished
//! backup jobs keep their packs (and resume) unless they are too old.

use crate::common::*;
use baton_testing::{CompareOptions, compare_trees, write_file};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every file in the repository with its size.
pub fn listing(repo: &Path) -> Vec<(PathBuf, u64)> {
    if repo.to_str().is_some_and(|r| r.starts_with("s3:")) {
        let s = crate::common::storage(repo);
        let mut v: Vec<(PathBuf, u64)> = baton_storage::ObjectKind::ALL
            .iter()
            .flat_map(|k| {
                s.list(*k)
                    .unwrap()
                    .into_iter()
                    .map(|o| (PathBuf::from(k.dir()).join(o.name), o.size))
            })
            .collect();
        v.sort();
        return v;
    }
    let mut v: Vec<(PathBuf, u64)> = walk(repo)
        .into_iter()
        .filter_map(|p| {
            let m = std::fs::symlink_metadata(&p).ok()?;
            m.is_file().then_some((p, m.len()))
        })
        .collect();
    v.sort();
    v
}

/// Pack names (without the `.tmp-*` files a killed write may leave, which
/// storage never lists).
fn pack_names(repo: &Path) -> BTreeSet<String> {
    objects(repo, "data")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// Restores `snapshot:src` and compares it with `src`, entry by entry.
pub fn assert_restores(env: &Env, snapshot: &str, src: &Path) {
    let target = env.path(&format!("restore-{}", &snapshot[..8.min(snapshot.len())]));
    let _ = std::fs::remove_dir_all(&target);
    env.restore(
        &format!("{snapshot}:{}", src.display()),
        &target,
        &["--verify"],
    )
    .ok();
    let o = CompareOptions {
        ownership: is_root(),
        ..CompareOptions::default()
    };
    if let Err(d) = compare_trees(src, &target, &o) {
        panic!(
            "snapshot {snapshot} differs from {}:\n{}",
            src.display(),
            d.join("\n")
        );
    }
}

fn prune_json(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["prune", "--json"];
    all.extend_from_slice(args);
    env.run(&all).ok().json()
}

fn id(v: &serde_json::Value) -> String {
    v["snapshot_id"].as_str().unwrap().to_string()
}

#[test]
fn prune_frees_what_only_forgotten_snapshots_used() {
    let env = Env::new();
    let (v1, v2, v3) = (env.path("v1"), env.path("v2"), env.path("v3"));
    write_file(&v1.join("only-v1"), 6 << 20, 1).unwrap();
    write_file(&v1.join("shared"), 3 << 20, 2).unwrap();
    write_file(&v2.join("shared"), 3 << 20, 2).unwrap();
    write_file(&v2.join("v2-v3"), 2 << 20, 3).unwrap();
    write_file(&v3.join("v2-v3"), 2 << 20, 3).unwrap();
    write_file(&v3.join("only-v3"), 1 << 20, 4).unwrap();
    let s1 = id(&env.backup(&[&v1], &[]));
    let s2 = id(&env.backup(&[&v2], &[]));
    let s3 = id(&env.backup(&[&v3], &[]));
    // Nothing to do yet.
    let r = prune_json(&env, &[]);
    assert_eq!(r["bytes_freed"], 0, "{r}");
    assert_eq!(r["index_written"], false, "{r}");

    let before = du(&env.repo);
    env.run(&["forget", &s1]).ok();
    let r = prune_json(&env, &[]);
    let freed = before - du(&env.repo);
    assert!(
        (6 << 20..(6 << 20) + (512 << 10)).contains(&freed),
        "freed {freed}, expected about the 6 MiB only v1 had: {r}"
    );
    assert_eq!(r["snapshots"], 2);
    assert_eq!(r["index_written"], true);
    assert_eq!(
        objects(&env.repo, "index").len(),
        1,
        "one index replaces all"
    );
    assert_restores(&env, &s2, &v2);
    assert_restores(&env, &s3, &v3);
    // New backups deduplicate against what is left.
    let again = env.backup(&[&v2], &[]);
    assert!(
        again["bytes_stored"].as_u64().unwrap() < 64 << 10,
        "{again}"
    );
    // A second prune finds nothing to do.
    let r = prune_json(&env, &[]);
    assert_eq!(
        (r["packs_delete"].as_u64(), r["packs_repack"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(objects(&env.repo, "locks").is_empty());
}

#[test]
fn prune_repacks_a_partly_used_pack() {
    let env = Env::new();
    let src = env.path("src");
    // One backup, one data pack (16 MiB target) holding both files.
    write_file(&src.join("a"), 3 << 20, 1).unwrap();
    write_file(&src.join("b"), 3 << 20, 2).unwrap();
    env.backup(&[&src], &[]);
    std::fs::remove_file(src.join("a")).unwrap();
    let s2 = id(&env.backup(&[&src], &[]));
    env.run(&["forget", "--keep-last", "1"]).ok();
    let packs_before = pack_names(&env.repo);

    // Tolerated: a total of 100 MiB unused, or no limit at all.
    for limit in ["100M", "unlimited", "60%"] {
        let r = prune_json(&env, &["--max-unused", limit, "--dry-run"]);
        assert_eq!(r["packs_repack"], 0, "{limit}: {r}");
    }
    let dry = prune_json(&env, &["--dry-run"]);
    assert_eq!(dry["packs_repack"], 1, "{dry}");
    let rewrite = dry["bytes_rewrite"].as_u64().unwrap();
    assert!(
        (3 << 20..(3 << 20) + (64 << 10)).contains(&rewrite),
        "{dry}"
    );
    assert_eq!(pack_names(&env.repo), packs_before, "dry run");

    let r = prune_json(&env, &[]);
    assert_eq!(r["packs_repack"], 1, "{r}");
    assert_eq!(r["bytes_rewrite"], rewrite);
    assert!(r["packs_written"].as_u64().unwrap() >= 1);
    let packs_after = pack_names(&env.repo);
    assert_ne!(packs_after, packs_before);
    assert!(
        packs_after.iter().any(|p| !packs_before.contains(p)),
        "a new pack holds b"
    );
    assert!(
        du(&env.repo) < (3 << 20) + (512 << 10),
        "a's 3 MiB are gone"
    );
    assert_restores(&env, &s2, &src);
    // The new pack is fully used: nothing more to repack.
    let r = prune_json(&env, &["--max-unused", "0%"]);
    assert_eq!(r["packs_repack"], 0, "{r}");
    assert_eq!(r["bytes_unused"], 0, "{r}");
}

#[test]
fn prune_dry_run_writes_nothing() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("a"), 2 << 20, 1).unwrap();
    write_file(&src.join("b"), 2 << 20, 2).unwrap();
    env.backup(&[&src], &[]);
    std::fs::remove_file(src.join("a")).unwrap();
    env.backup(&[&src], &[]);
    env.run(&["forget", "--keep-last", "1"]).ok();
    let before = listing(&env.repo);
    let r = prune_json(&env, &["--dry-run", "--max-unused", "0%"]);
    assert_eq!(r["dry_run"], true);
    assert!(r["packs_repack"].as_u64().unwrap() + r["packs_delete"].as_u64().unwrap() > 0);
    assert!(r["bytes_freed"].as_u64().unwrap() > 2_000_000, "{r}");
    let human = env.run(&["prune", "--dry-run"]).ok().stdout;
    assert!(human.contains("dry run: would free"), "{human}");
    assert_eq!(
        listing(&env.repo),
        before,
        "prune --dry-run changed the repository"
    );
}

/// Starts a large backup with frequent checkpoints and kills it (SIGKILL)
/// once its journal lists packs and completed files. Returns the job as
/// `baton jobs --json` shows it.
fn kill_mid_backup(env: &Env, src: &Path) -> serde_json::Value {
    for i in 0..48 {
        write_file(&src.join(format!("f{i:02}")), 8 << 20, 100 + i).unwrap();
    }
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin!("baton"))
        .env("BATON_REPOSITORY", &env.repo)
        .envs(crate::common::backend_env())
        .env("BATON_PASSWORD", PASSWORD)
        .args(["backup", "--checkpoint-interval", "0.1", "-q"])
        .arg(src)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let job = loop {
        assert!(Instant::now() < deadline, "no journal appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup finished before it could be interrupted"
        );
        let r = env.run(&["jobs", "--json"]);
        if r.code == 0 {
            let jobs: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
            if let Some(j) = jobs["jobs"].as_array().and_then(|a| a.first())
                && j["packs"].as_u64().unwrap_or(0) > 0
                && j["catalog_bytes"].as_u64().unwrap_or(0) > 0
            {
                break j.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    // The journal may have grown between the look and the kill.
    let jobs = env.run(&["jobs", "--json"]).ok().json()["jobs"].clone();
    assert_eq!(jobs.as_array().unwrap().len(), 1);
    assert_eq!(jobs[0]["id"], job["id"]);
    jobs[0].clone()
}

#[test]
fn an_unfinished_jobs_packs_survive_prune_and_the_backup_resumes() {
    let env = Env::with_pack_size(1);
    let other = env.path("other");
    write_file(&other.join("x"), 1 << 20, 1).unwrap();
    let s1 = id(&env.backup(&[&other], &[]));
    let src = env.path("src");
    let job = kill_mid_backup(&env, &src);
    let packs = job["packs"].as_u64().unwrap();

    let r = prune_json(&env, &["--max-unused", "0%"]);
    assert_eq!(r["jobs_kept"][0], job["id"], "{r}");
    assert_eq!(r["jobs_stale"].as_array().unwrap().len(), 0);
    assert_eq!(r["job_packs"].as_u64(), Some(packs), "{r}");
    // The journal and its packs are intact.
    let after = env.run(&["jobs", "--json"]).ok().json()["jobs"].clone();
    assert_eq!(after[0], job);
    assert!(
        pack_names(&env.repo).len() as u64 > packs,
        "the job's packs and x's"
    );

    // The backup resumes: completed files are not read again, because the
    // packs holding their content are still there.
    let resumed = env.backup(&[&src], &[]);
    assert_eq!(resumed["resumed"], true, "{resumed}");
    assert_eq!(resumed["resumed_job"], job["id"]);
    assert!(
        resumed["bytes_resumed"].as_u64().unwrap() >= job["catalog_bytes"].as_u64().unwrap(),
        "{resumed} vs {job}"
    );
    assert!(
        env.run(&["jobs", "--json"]).ok().json()["jobs"]
            .clone()
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_restores(&env, &id(&resumed), &src);
    assert_restores(&env, &s1, &other);
    // The job's packs went into the index with the snapshot: prune keeps them.
    let r = prune_json(&env, &[]);
    assert_eq!(r["packs_delete"], 0, "{r}");
    assert_restores(&env, &id(&resumed), &src);
}

#[test]
fn prune_forgets_a_job_older_than_max_job_age() {
    let env = Env::with_pack_size(1);
    let src = env.path("src");
    let job = kill_mid_backup(&env, &src);
    let packs = job["packs"].as_u64().unwrap();
    let before = du(&env.repo);

    // Young enough for the default (7 days).
    let r = prune_json(&env, &["--dry-run"]);
    assert_eq!(r["jobs_kept"][0], job["id"], "{r}");
    let r = prune_json(&env, &["--dry-run", "--max-job-age", "0s"]);
    assert_eq!(r["jobs_stale"][0]["id"], job["id"], "{r}");
    assert_eq!(
        env.run(&["jobs", "--json"]).ok().json()["jobs"].clone()[0],
        job,
        "dry run"
    );
    let r = prune_json(&env, &["--max-job-age", "0s"]);
    assert_eq!(r["jobs_stale"][0]["id"], job["id"], "{r}");
    assert_eq!(r["jobs_stale"][0]["packs"].as_u64(), Some(packs));
    assert!(r["packs_unreferenced"].as_u64().unwrap() >= packs, "{r}");
    assert!(
        env.run(&["jobs", "--json"]).ok().json()["jobs"]
            .clone()
            .as_array()
            .unwrap()
            .is_empty()
    );
    let left = pack_names(&env.repo);
    assert!(
        left.is_empty(),
        "no snapshot: no data left, yet {left:?} after {r}"
    );
    assert!(du(&env.repo) < before - (packs << 20) / 2);
    let fresh = env.backup(&[&src], &[]);
    assert_eq!(fresh["resumed"], false, "{fresh}");
    assert_restores(&env, &id(&fresh), &src);
}
