//! A backup never starts over: `kill -9` at random instants, resume, and
//! prove the result is the same as if nothing had happened.

use crate::common::*;
use baton_testing::{CompareOptions, compare_trees, write_file};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PACK_MIB: u64 = 4;

/// A deterministic xorshift generator (the seed is printed for reproduction).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// A copy of `template`'s repository in a new environment: same keys and
/// chunker seed, so tree ids are comparable across the copies.
fn clone_env(template: &Env) -> Env {
    let e = Env::empty();
    crate::common::copy_repository(&template.repo, &e.repo);
    e
}

/// Several source paths with large and small files; returns (sources, total bytes, largest file).
fn make_sources(
    root: &Path,
    large: usize,
    large_size: u64,
    small: usize,
    seed: u64,
) -> (Vec<PathBuf>, u64, u64) {
    let sources: Vec<PathBuf> = ["vol-a", "vol-b", "vol-c"]
        .iter()
        .map(|v| root.join(v))
        .collect();
    let mut total = 0;
    for i in 0..large {
        let p = sources[i % 3].join(format!("large/l{i}.bin"));
        write_file(&p, large_size, seed + i as u64).unwrap();
        total += large_size;
    }
    for i in 0..small {
        let size = 1000 + (i as u64 * 7919) % 60_000;
        let p = sources[i % 3].join(format!("d{}/e{}/s{i}.txt", i % 7, i % 5));
        write_file(&p, size, seed + 1000 + i as u64).unwrap();
        total += size;
    }
    (sources, total, large_size.max(61_000))
}

fn spawn(env: &Env, args: &[&str], sources: &[PathBuf]) -> Child {
    Command::new(assert_cmd::cargo::cargo_bin!("baton"))
        .env("BATON_REPOSITORY", &env.repo)
        .envs(crate::common::backend_env())
        .env("BATON_PASSWORD", PASSWORD)
        .args(args)
        .args(sources)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Kills the process after `delay`; returns false if it had already exited.
fn kill_after(mut child: Child, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed = child.try_wait().unwrap().is_none();
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    killed
}

fn backup_json(env: &Env, args: &[&str], sources: &[PathBuf]) -> serde_json::Value {
    let mut c = env.cmd();
    c.arg("backup").arg("--json").args(args).args(sources);
    run(&mut c).ok().json()
}

fn jobs(env: &Env) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&env.run(&["jobs", "--json"]).ok().stdout)
        .unwrap()["jobs"]
        .as_array()
        .unwrap()
        .clone()
}

fn restore_equals(env: &Env, sources: &[PathBuf]) {
    let out = tempfile::tempdir().unwrap();
    env.restore("latest", out.path(), &[]).ok();
    for s in sources {
        let o = CompareOptions {
            ownership: is_root(),
            ..Default::default()
        };
        if let Err(d) = compare_trees(s, &out.path().join(s.strip_prefix("/").unwrap()), &o) {
            panic!("restore differs from {}:\n{}", s.display(), d.join("\n"));
        }
    }
}

/// The crash-injection harness: 20 seeded kills at random instants of a
/// backup of 320 MiB over three source paths; after each kill the backup
/// resumes, reads no more than what was not durable plus one pack and one
/// file, and produces exactly the tree of a clean backup.
#[test]
fn kill_at_random_instants_and_resume() {
    let seed = std::env::var("BATON_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_u64);
    eprintln!("crash harness seed: {seed} (set BATON_CRASH_SEED to reproduce another)");
    let mut rng = Rng(seed);
    let template = Env::with_pack_size(PACK_MIB);
    let data = tempfile::tempdir().unwrap();
    let (sources, total, largest) = make_sources(data.path(), 7, 32 << 20, 3000, seed);
    assert!(total >= 300 << 20, "{total}");
    // A clean backup into a copy of the empty repository: the reference tree
    // and the duration of a full run.
    let reference_env = clone_env(&template);
    let t0 = Instant::now();
    let clean = backup_json(&reference_env, &["--resume", "never"], &sources);
    let full = t0.elapsed();
    let reference = clean["tree_id"].clone();
    eprintln!(
        "clean full backup of {} MiB: {:.2}s",
        total >> 20,
        full.as_secs_f64()
    );

    let kills_wanted = std::env::var("BATON_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let (mut kills, mut attempts) = (0, 0);
    let mut positions = Vec::new();
    while kills < kills_wanted {
        attempts += 1;
        assert!(
            attempts < kills_wanted * 4,
            "could not kill the backup mid-run often enough"
        );
        // Every cycle starts from the empty repository, so packs and journal
        // records are really being written when the kill comes.
        let env = clone_env(&template);
        let delay = Duration::from_micros(rng.range(20_000, (full.as_micros() as u64).max(40_000)));
        let child = spawn(&env, &["backup", "--checkpoint-interval", "0.05"], &sources);
        if !kill_after(child, delay) {
            continue; // finished before the kill: try another instant
        }
        kills += 1;
        let js = jobs(&env);
        assert!(js.len() <= 1, "{js:?}");
        // Killed after the snapshot was stored but before its journal was
        // deleted: the job is sealed, and the next run must not resume it.
        let sealed = !objects(&env.repo, "snapshots").is_empty();
        let durable = js.first().map_or(0, |j| j["position"].as_u64().unwrap());
        let r = backup_json(&env, &[], &sources);
        assert_eq!(r["error_count"], 0);
        if !js.is_empty() && !sealed {
            assert_eq!(r["resumed"], true, "{r}");
            assert_eq!(r["resumed_job"], js[0]["id"]);
        }
        let read = r["bytes_read"].as_u64().unwrap();
        let bound = total - durable + (PACK_MIB << 20) + largest;
        assert!(
            read <= bound,
            "kill {kills} at {delay:?}: resume read {read} bytes, bound {bound} (durable {durable} of {total})"
        );
        assert_eq!(
            r["tree_id"], reference,
            "kill {kills} at {delay:?}: resumed tree differs from a clean backup's"
        );
        assert!(
            jobs(&env).is_empty(),
            "the journal is deleted once the snapshot is sealed"
        );
        // The strongest proof: a fresh, non-resumed backup in the same repository
        // makes the same tree.
        if kills % 5 == 0 {
            // Every stored byte verifies, and no pack is left unreferenced.
            let check = env.run(&["check", "--read-data", "--json"]).ok().json();
            assert_eq!(check["error_count"], 0, "{check}");
            let fresh = backup_json(&env, &["--force", "--resume", "never"], &sources);
            assert_eq!(fresh["tree_id"], r["tree_id"]);
            restore_equals(&env, &sources);
        }
        positions.push((delay.as_millis(), durable >> 20, read >> 20));
    }
    eprintln!(
        "{kills} kills in {attempts} attempts; (kill ms, durable MiB, re-read MiB): {positions:?}"
    );
}

/// Several kills in a row before any run completes; then a modified file
/// and a deleted directory between the kill and the resume.
#[test]
fn several_kills_in_a_row_then_changes_before_resume() {
    if crate::common::local_only(
        "its kill times are fractions of a local backup's duration; on S3 the start-up dominates and no kill lands mid-job (resume after kills on S3: kill_at_random_instants_and_resume, s3::*)",
    ) {
        return;
    }
    let template = Env::with_pack_size(PACK_MIB);
    let data = tempfile::tempdir().unwrap();
    let (sources, total, _) = make_sources(data.path(), 6, 12 << 20, 600, 77);
    // Duration of a clean backup into an empty copy of the repository.
    let probe = clone_env(&template);
    let t0 = Instant::now();
    let clean = backup_json(&probe, &["--resume", "never"], &sources);
    let full = t0.elapsed().max(Duration::from_millis(200));
    // Kills in a row, each early enough that the job cannot finish; a run
    // that finishes anyway (a slow machine's timing) restarts the attempt.
    let mut env = clone_env(&template);
    let mut kills = 0;
    for attempt in 0..40 {
        let child = spawn(&env, &["backup", "--checkpoint-interval", "0.05"], &sources);
        if kill_after(child, full / 8 + Duration::from_millis(5 * (attempt % 4))) {
            kills += 1;
        } else {
            env = clone_env(&template);
            kills = 0;
        }
        if kills >= 4 && jobs(&env).len() == 1 {
            break;
        }
    }
    assert!(kills >= 4, "only {kills} kills in a row");
    let js = jobs(&env);
    assert_eq!(js.len(), 1, "kills in a row continue one job: {js:?}");
    let progressed = js[0]["position"].as_u64().unwrap();
    assert!(progressed < total);
    // Change the source: modify a file that is likely already durable,
    // delete a whole directory, add a file.
    let victim = sources[0].join("large/l0.bin");
    write_file(&victim, 12 << 20, 4242).unwrap();
    std::fs::remove_dir_all(sources[1].join("d1")).unwrap();
    write_file(&sources[2].join("new.txt"), 5000, 1).unwrap();
    let r = backup_json(&env, &[], &sources);
    assert_eq!(r["resumed"], true);
    assert!(
        r["bytes_read"].as_u64().unwrap() >= 12 << 20,
        "the modified file is read again: {r}"
    );
    // Nothing stale is kept: the result equals the changed source and a
    // fresh backup of it.
    restore_equals(&env, &sources);
    let fresh = backup_json(&env, &["--force", "--resume", "never"], &sources);
    assert_eq!(r["tree_id"], fresh["tree_id"]);
    let reference = backup_json(&probe, &["--resume", "never"], &sources);
    assert_eq!(r["tree_id"], reference["tree_id"]);
    assert_ne!(r["tree_id"], clean["tree_id"]);
    let check = env.run(&["check", "--read-data", "--json"]).ok().json();
    assert_eq!(check["error_count"], 0, "{check}");
}

/// A crash at each step of sealing (index stored, snapshot stored, journal
/// not yet deleted) and right after a pack or a journal record.
#[test]
fn crash_points_while_sealing_and_journaling() {
    let template = Env::with_pack_size(PACK_MIB);
    let data = tempfile::tempdir().unwrap();
    let (sources, _, _) = make_sources(data.path(), 3, 9 << 20, 200, 5);
    let reference_env = clone_env(&template);
    let reference =
        backup_json(&reference_env, &["--resume", "never"], &sources)["tree_id"].clone();
    for point in [
        "after-pack:3",
        "after-journal:4",
        "after-index",
        "after-snapshot",
    ] {
        let env = clone_env(&template);
        let mut c = env.cmd();
        c.env("BATON_CRASHPOINT", point)
            .args(["backup", "--checkpoint-interval", "0"])
            .args(&sources);
        let r = run(&mut c);
        assert_ne!(r.code, 0, "{point}: the crash point was not reached");
        assert!(r.stderr.contains("crash point"), "{point}: {}", r.stderr);
        let count = |env: &Env| {
            serde_json::from_str::<serde_json::Value>(
                &env.run(&["snapshots", "--json"]).ok().stdout,
            )
            .unwrap()["snapshots"]
                .as_array()
                .unwrap()
                .len()
        };
        let before = count(&env);
        let r = backup_json(&env, &[], &sources);
        assert_eq!(r["tree_id"], reference, "{point}");
        assert!(jobs(&env).is_empty(), "{point}: journal left behind");
        assert_eq!(count(&env), before + 1, "{point}");
        // Sealed (snapshot stored) jobs are recognised, not resumed.
        assert_eq!(r["resumed"], point != "after-snapshot", "{point}: {r}");
        restore_equals(&env, &sources);
        let check = env.run(&["check", "--read-data", "--json"]).ok().json();
        assert_eq!(check["error_count"], 0, "{point}: {check}");
    }
}

/// A restore killed at random instants and run again ends equal to the
/// source, and each re-run fetches at most what was not restored yet plus
/// one pack.
#[test]
fn restore_killed_and_run_again() {
    let env = Env::with_pack_size(PACK_MIB);
    let data = tempfile::tempdir().unwrap();
    let (sources, total, _) = make_sources(data.path(), 6, 16 << 20, 400, 9);
    backup_json(&env, &[], &sources);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("t");
    let t0 = Instant::now();
    let first = run(env
        .cmd()
        .args(["restore", "latest", "--json", "--target"])
        .arg(out.path().join("probe")))
    .ok()
    .json();
    let full = t0.elapsed().max(Duration::from_millis(100));
    assert_eq!(
        first["bytes_fetched"].as_u64().unwrap(),
        total,
        "a fresh restore fetches everything"
    );
    let mut rng = Rng(99);
    let mut kills = 0;
    let mut ceiling = full.as_micros() as u64;
    for _ in 0..12 {
        if kills >= 4 {
            break;
        }
        let child = Command::new(assert_cmd::cargo::cargo_bin!("baton"))
            .env("BATON_REPOSITORY", &env.repo)
            .envs(crate::common::backend_env())
            .env("BATON_PASSWORD", PASSWORD)
            .args(["restore", "latest", "--target"])
            .arg(&target)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if !kill_after(
            child,
            Duration::from_micros(rng.range(5_000, ceiling.max(10_000))),
        ) {
            // Finished first: start again from half a restore, kill sooner.
            ceiling /= 2;
            for s in &sources {
                for p in walk(s).iter().filter(|p| p.is_file()).step_by(2) {
                    let _ = std::fs::remove_file(target.join(p.strip_prefix("/").unwrap()));
                }
            }
            continue;
        }
        kills += 1;
        // What is already restored, whole files only (a lower bound).
        let mut done = 0;
        for s in &sources {
            for p in walk(s) {
                let d = target.join(p.strip_prefix("/").unwrap());
                if p.is_file() && std::fs::read(&p).ok() == std::fs::read(&d).ok() {
                    done += std::fs::metadata(&p).unwrap().len();
                }
            }
        }
        let again = run(env
            .cmd()
            .args(["restore", "latest", "--json", "--target"])
            .arg(&target))
        .ok()
        .json();
        let fetched = again["bytes_fetched"].as_u64().unwrap();
        assert!(
            fetched <= total - done + (PACK_MIB << 20),
            "re-run fetched {fetched}, not yet restored {}",
            total - done
        );
        // Start the next round from a half-restored state again.
        for s in &sources {
            for p in walk(s).iter().filter(|p| p.is_file()).step_by(2) {
                let d = target.join(p.strip_prefix("/").unwrap());
                let _ = std::fs::remove_file(d);
            }
        }
    }
    assert!(kills >= 1);
    let last = run(env
        .cmd()
        .args(["restore", "latest", "--json", "--verify", "--target"])
        .arg(&target))
    .ok()
    .json();
    assert!(last["bytes_verified_in_place"].as_u64().unwrap() > 0);
    for s in &sources {
        let o = CompareOptions {
            ownership: is_root(),
            ..Default::default()
        };
        compare_trees(s, &target.join(s.strip_prefix("/").unwrap()), &o)
            .unwrap_or_else(|d| panic!("{}", d.join("\n")));
    }
    // A file damaged in the target is never trusted: it is rewritten.
    let f = sources[0].join("large/l0.bin");
    let d = target.join(f.strip_prefix("/").unwrap());
    let mut bytes = std::fs::read(&d).unwrap();
    bytes[5_000_000] ^= 1;
    std::fs::write(&d, bytes).unwrap();
    let fix = run(env
        .cmd()
        .args(["restore", "latest", "--json", "--target"])
        .arg(&target))
    .ok()
    .json();
    assert!(fix["bytes_fetched"].as_u64().unwrap() > 0);
    assert!(
        fix["bytes_fetched"].as_u64().unwrap() <= 8 << 20,
        "only the damaged chunk is fetched: {fix}"
    );
    assert_eq!(std::fs::read(&d).unwrap(), std::fs::read(&f).unwrap());
}
