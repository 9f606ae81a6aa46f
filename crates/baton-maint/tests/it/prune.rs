//! Prune under faults: storage fails at the k-th write or delete of a prune,
//! for every k; after each failure the repository must be valid (every
//! snapshot restores exactly, every indexed pack exists, every job's journal
//! loads and its packs exist), and prune run again must finish with the same
//! result as an undisturbed prune.

use crate::baton::{
    BackupOptions, Cancel, ForgetOptions, InitOptions, MaxUnused, NoProgress, Progress,
    PruneOptions, PruneResult, RepoError, Repository, RestoreOptions,
};
use baton_format::object::to_json;
use baton_storage::{FaultPlan, FaultyStorage, LocalStorage, ObjectKind, Storage, WriteLimits};
use baton_testing::{CompareOptions, compare_trees, write_file};
use baton_types::{ChunkerParams, Id, JournalRecord};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const PW: &[u8] = b"pw";

fn init_options() -> InitOptions {
    InitOptions {
        pack_size: 1 << 20,
        // Small chunks: a pack holds many, so files share packs.
        chunker: Some(ChunkerParams {
            min_size: 16 << 10,
            avg_size: 64 << 10,
            max_size: 256 << 10,
            seed: 7,
        }),
        kdf: crate::baton::kdf_params(8192, 1),
        ..InitOptions::default()
    }
}

fn prune_options() -> PruneOptions {
    PruneOptions {
        max_unused: MaxUnused::Percent(0.0),
        max_job_age: Duration::from_secs(86_400),
        ..PruneOptions::default()
    }
}

fn backup(repo: &mut Repository, src: &Path) -> String {
    let opts = BackupOptions {
        paths: vec![src.to_path_buf()],
        ..BackupOptions::default()
    };
    let r = crate::baton::backup(repo, &opts, None, &NoProgress, &Cancel::new()).unwrap();
    r.snapshot_id.unwrap().to_hex()
}

/// Cancels the operation once `limit` bytes went by.
struct CancelAfter {
    limit: u64,
    seen: AtomicU64,
    cancel: Cancel,
}

impl Progress for CancelAfter {
    fn bytes(&self, n: u64) {
        if self.seen.fetch_add(n, Ordering::SeqCst) + n >= self.limit {
            self.cancel.cancel();
        }
    }
}

/// Starts a backup of `src` and cancels it part-way: an unfinished job.
fn interrupted_backup(repo: &mut Repository, src: &Path) -> Id {
    let cancel = Cancel::new();
    let p = CancelAfter {
        limit: 5 << 20,
        seen: AtomicU64::new(0),
        cancel: cancel.clone(),
    };
    let opts = BackupOptions {
        paths: vec![src.to_path_buf()],
        ..BackupOptions::default()
    };
    let e = crate::baton::backup(repo, &opts, None, &p, &cancel).unwrap_err();
    assert!(matches!(e, RepoError::Cancelled), "{e}");
    let jobs = crate::baton::list_jobs(repo).unwrap();
    let job = jobs
        .iter()
        .find(|j| j.manifest.paths == [src.to_string_lossy()])
        .expect("the interrupted backup left a journal");
    assert!(!job.packs.is_empty(), "the job journaled no pack");
    job.job
}

/// Rewrites a job's records as if its last record were written in 2000.
fn age_job(repo: &Repository, job: &Id) {
    let s = repo.storage();
    for o in s.list(ObjectKind::Journal).unwrap() {
        if !o.name.starts_with(&job.to_hex()) {
            continue;
        }
        let plain = repo.load_object(ObjectKind::Journal, &o.name).unwrap();
        let mut rec: JournalRecord = serde_json::from_slice(&plain).unwrap();
        rec.time = "2000-01-01T00:00:00Z".into();
        let sealed = repo.seal(ObjectKind::Journal, &o.name, 0, &to_json(&rec));
        s.remove(ObjectKind::Journal, &o.name).unwrap();
        s.put(ObjectKind::Journal, &o.name, &sealed).unwrap();
    }
}

struct Scenario {
    repo: PathBuf,
    /// Snapshots that must survive, with their source directories.
    snapshots: Vec<(String, PathBuf)>,
    kept_job: Id,
    stale_job: Id,
}

/// Three snapshots sharing data (the first one forgotten), an unfinished
/// job, and an unfinished job that is stale.
fn scenario(dir: &Path) -> Scenario {
    let v = |n: &str| dir.join(n);
    write_file(&v("v1/a"), 1_500_000, 1).unwrap();
    write_file(&v("v1/b"), 1_500_000, 2).unwrap();
    write_file(&v("v1/c"), 300_000, 3).unwrap();
    write_file(&v("v2/b"), 1_500_000, 2).unwrap();
    write_file(&v("v2/c"), 300_000, 4).unwrap();
    write_file(&v("v2/d"), 1_000_000, 5).unwrap();
    write_file(&v("v3/b"), 1_500_000, 2).unwrap();
    write_file(&v("v3/d"), 1_000_000, 5).unwrap();
    write_file(&v("v3/e"), 500_000, 6).unwrap();
    for (job, seed) in [("j1", 20), ("j2", 30)] {
        for i in 0..3 {
            write_file(&v(&format!("{job}/f{i}")), 2 << 20, seed + i).unwrap();
        }
    }
    let path = dir.join("repo");
    let mut repo =
        Repository::init(Arc::new(LocalStorage::new(&path)), PW, &init_options()).unwrap();
    let s1 = backup(&mut repo, &v("v1"));
    let s2 = backup(&mut repo, &v("v2"));
    let s3 = backup(&mut repo, &v("v3"));
    let kept_job = interrupted_backup(&mut repo, &v("j1"));
    let stale_job = interrupted_backup(&mut repo, &v("j2"));
    age_job(&repo, &stale_job);
    let f = crate::baton::forget(
        &repo,
        &ForgetOptions {
            snapshots: vec![s1],
            ..ForgetOptions::default()
        },
    )
    .unwrap();
    assert_eq!(f.removed.len(), 1);
    Scenario {
        repo: path,
        snapshots: vec![(s2, v("v2")), (s3, v("v3"))],
        kept_job,
        stale_job,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a failed");
}

/// Everything a valid repository promises after a prune (or a crash in one).
fn check_valid(path: &Path, sc: &Scenario, scratch: &Path, what: &str) -> Repository {
    let mut repo = Repository::open(Arc::new(LocalStorage::new(path)), PW).unwrap();
    repo.unlock(true).unwrap();
    repo.load_index().unwrap();
    let stored: HashSet<String> = repo
        .storage()
        .list(ObjectKind::Pack)
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    // Every live index object names only packs that exist.
    let mut superseded = HashSet::new();
    let mut files = Vec::new();
    for o in repo.storage().list(ObjectKind::Index).unwrap() {
        let f = repo.read_index(&o.name).unwrap();
        superseded.extend(f.supersedes.iter().map(|i| i.to_hex()));
        files.push((o.name, f));
    }
    for (name, f) in &files {
        if superseded.contains(name) {
            continue;
        }
        for p in &f.packs {
            assert!(
                stored.contains(&p.id.to_hex()),
                "{what}: index {name} lists pack {} which is gone",
                p.id
            );
        }
    }
    // Every job's journal loads, and its packs exist; the kept job is there.
    let jobs = crate::baton::list_jobs(&repo)
        .unwrap_or_else(|e| panic!("{what}: journals unreadable: {e}"));
    assert!(jobs.iter().any(|j| j.job == sc.kept_job), "{what}");
    for j in &jobs {
        for p in &j.packs {
            assert!(
                stored.contains(&p.id.to_hex()),
                "{what}: job {} lost pack {}",
                j.job.short(),
                p.id
            );
        }
    }
    assert_eq!(repo.list_snapshots().unwrap().len(), sc.snapshots.len());
    for (id, src) in &sc.snapshots {
        let (_, s) = repo.find_snapshot(id).unwrap();
        let target = scratch.join("restore");
        let _ = std::fs::remove_dir_all(&target);
        let r = crate::baton::restore(
            &repo,
            &s,
            Some(src.to_str().unwrap()),
            &target,
            &RestoreOptions::default(),
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap_or_else(|e| panic!("{what}: restoring {id}: {e}"));
        assert!(r.errors.is_empty(), "{what}: {:?}", r.errors);
        let o = CompareOptions {
            ownership: false,
            ..CompareOptions::default()
        };
        compare_trees(src, &target, &o).unwrap_or_else(|d| panic!("{what}: {}", d.join("\n")));
    }
    repo
}

/// The blob ids of the live index and the packs in storage that nothing
/// (neither the index nor a job) references.
fn final_state(repo: &mut Repository) -> (Vec<Id>, usize) {
    repo.load_index().unwrap();
    let mut indexed = HashSet::new();
    let mut blobs = Vec::new();
    for o in repo.storage().list(ObjectKind::Index).unwrap() {
        for p in repo.read_index(&o.name).unwrap().packs {
            indexed.insert(p.id);
            blobs.extend(p.blobs.iter().map(|b| b.id));
        }
    }
    for j in crate::baton::list_jobs(repo).unwrap() {
        indexed.extend(j.packs.iter().map(|p| p.id));
    }
    let loose = repo
        .storage()
        .list(ObjectKind::Pack)
        .unwrap()
        .into_iter()
        .filter(|o| !indexed.contains(&Id::from_hex(&o.name).unwrap()))
        .count();
    blobs.sort();
    (blobs, loose)
}

fn prune_with(storage: Arc<dyn Storage>) -> (Repository, Result<PruneResult, RepoError>) {
    let mut repo = Repository::open(storage, PW).unwrap();
    let r = crate::baton::prune(&mut repo, &prune_options(), &NoProgress);
    (repo, r)
}

#[test]
fn prune_survives_a_failure_at_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let sc = scenario(dir.path());
    let work = dir.path().join("work");
    let scratch = dir.path().join("scratch");

    // Undisturbed run: count its writes and deletes, and check it did everything.
    copy_dir(&sc.repo, &work);
    let faulty = Arc::new(FaultyStorage::new(
        LocalStorage::new(&work),
        FaultPlan::default(),
    ));
    let mut repo = Repository::open(faulty.clone(), PW).unwrap();
    faulty.set_limits(WriteLimits::default());
    let r = crate::baton::prune(&mut repo, &prune_options(), &NoProgress).unwrap();
    let ops = faulty.writes();
    assert!(r.stats.packs_delete > 0, "{r:?}");
    assert!(r.stats.packs_repack > 0, "{r:?}");
    assert!(r.packs_written > 0, "{r:?}");
    assert!(
        r.stats.packs_unreferenced > 0,
        "the stale job's packs: {r:?}"
    );
    assert_eq!(r.jobs_kept, [sc.kept_job]);
    assert_eq!(r.jobs_stale.len(), 1);
    assert_eq!(r.jobs_stale[0].id, sc.stale_job);
    assert!(r.index_written && r.index_objects == 3, "{r:?}");
    let mut clean = check_valid(&work, &sc, &scratch, "undisturbed");
    let expected = final_state(&mut clean);
    assert_eq!(
        expected.1, 0,
        "unreferenced packs left by an undisturbed prune"
    );
    eprintln!("prune performed {ops} writes and deletes");
    assert!(ops > 10, "{ops}");

    for k in 0..ops {
        copy_dir(&sc.repo, &work);
        let faulty = Arc::new(FaultyStorage::new(
            LocalStorage::new(&work),
            FaultPlan::default(),
        ));
        let mut repo = Repository::open(faulty.clone(), PW).unwrap();
        faulty.set_limits(WriteLimits {
            fail_writes_after: Some(k),
            ..WriteLimits::default()
        });
        let r = crate::baton::prune(&mut repo, &prune_options(), &NoProgress);
        // Only the release of the lock (the last delete) fails silently.
        assert!(
            r.is_err() || k + 1 == ops,
            "k={k}: a failed write went unnoticed"
        );
        drop(repo);
        let what = format!("failure at write {k} of {ops}");
        check_valid(&work, &sc, &scratch, &what);
        let (mut again, r2) = prune_with(Arc::new(LocalStorage::new(&work)));
        r2.unwrap_or_else(|e| panic!("{what}: prune again: {e}"));
        let mut after = check_valid(&work, &sc, &scratch, &format!("{what}, pruned again"));
        assert_eq!(final_state(&mut after), expected, "{what}");
        // And a further prune finds nothing to do.
        let r3 = crate::baton::prune(&mut again, &prune_options(), &NoProgress).unwrap();
        assert_eq!(
            (r3.stats.packs_delete, r3.stats.packs_repack),
            (0, 0),
            "{what}"
        );
        assert_eq!(r3.stats.packs_unreferenced, 0, "{what}");
        assert!(!r3.index_written, "{what}");
    }
}

#[test]
fn dry_run_and_shared_locks() {
    let dir = tempfile::tempdir().unwrap();
    let sc = scenario(dir.path());
    let storage = Arc::new(FaultyStorage::new(
        LocalStorage::new(&sc.repo),
        FaultPlan::default(),
    ));
    let mut repo = Repository::open(storage.clone(), PW).unwrap();
    storage.set_limits(WriteLimits::default());
    let opts = PruneOptions {
        dry_run: true,
        ..prune_options()
    };
    let r = crate::baton::prune(&mut repo, &opts, &NoProgress).unwrap();
    assert!(r.stats.packs_delete > 0 && r.stats.packs_repack > 0);
    assert!(r.bytes_freed > 0);
    // A dry run writes only its lock, and deletes only that.
    assert_eq!((storage.puts(), storage.removes()), (1, 1));
    // Prune refuses a shared lock.
    let shared = repo.lock(false).unwrap();
    let e =
        crate::baton::prune_locked(&mut repo, &shared, &prune_options(), &NoProgress).unwrap_err();
    assert!(e.to_string().contains("exclusive"), "{e}");
    drop(shared);
    // ... and a second process' lock.
    let _other = repo.lock(false).unwrap();
    let e = crate::baton::prune(&mut repo, &prune_options(), &NoProgress).unwrap_err();
    assert!(matches!(e, RepoError::Locked { .. }), "{e}");
}
