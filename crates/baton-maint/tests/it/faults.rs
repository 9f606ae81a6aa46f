use crate::baton::{
    BackupOptions, Cancel, EntryStatus, InitOptions, NoProgress, Progress, RepoError, Repository,
    RestoreOptions,
};
use baton_storage::{ErrorKind, FaultPlan, FaultyStorage, LocalStorage, Storage};
use baton_testing::{CompareOptions, compare_trees, write_file};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub fn fast_init() -> InitOptions {
    InitOptions {
        pack_size: 1 << 20,
        kdf: crate::baton::kdf_params(8192, 1),
        ..InitOptions::default()
    }
}

fn opts(paths: &[&Path]) -> BackupOptions {
    BackupOptions {
        paths: paths.iter().map(|p| p.to_path_buf()).collect(),
        ..BackupOptions::default()
    }
}

fn restore_and_compare(repo: &mut Repository, snap: &str, src: &Path, scratch: &Path) {
    repo.load_index().unwrap();
    let (_, s) = repo.find_snapshot(snap).unwrap();
    let target = scratch.join(format!("restore-{snap}"));
    let sub = src.to_str().unwrap();
    let r = crate::baton::restore(
        repo,
        &s,
        Some(sub),
        &target,
        &RestoreOptions::default(),
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let o = CompareOptions {
        ownership: false,
        ..Default::default()
    };
    compare_trees(src, &target, &o).unwrap_or_else(|d| panic!("{}", d.join("\n")));
}

/// A full disk in the middle of a backup: the backup fails with a clear
/// NoSpace error, no lock is left, every earlier snapshot still restores,
/// and once space is back the next backup works.
#[test]
fn full_disk_mid_backup() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_file(&src.join("small"), 100_000, 1).unwrap();
    let local = LocalStorage::new(dir.path().join("repo"));
    let faulty = Arc::new(FaultyStorage::new(local.clone(), FaultPlan::default()));
    let mut repo = Repository::init(faulty.clone(), b"pw", &fast_init()).unwrap();
    let first =
        crate::baton::backup(&mut repo, &opts(&[&src]), None, &NoProgress, &Cancel::new()).unwrap();

    for i in 0..6 {
        write_file(&src.join(format!("big{i}")), 1 << 20, 10 + i).unwrap();
    }
    for limit in [0, 1, 2, 4] {
        // The lock object is the first put; packs follow.
        faulty.set_plan(FaultPlan {
            fail_puts_after: Some(limit),
            error: Some(ErrorKind::NoSpace),
        });
        let err =
            crate::baton::backup(&mut repo, &opts(&[&src]), None, &NoProgress, &Cancel::new())
                .unwrap_err();
        match &err {
            RepoError::Storage(e) => assert_eq!(e.kind, ErrorKind::NoSpace, "{err}"),
            other => panic!("expected a storage error, got {other}"),
        }
        assert!(err.to_string().contains("no space"), "{err}");
        faulty.set_plan(FaultPlan::default());
        assert!(
            local
                .list(baton_storage::ObjectKind::Lock)
                .unwrap()
                .is_empty(),
            "lock left after failure"
        );
        // The repository opens afresh and the earlier snapshot restores.
        let mut fresh = Repository::open(Arc::new(local.clone()), b"pw").unwrap();
        assert_eq!(fresh.list_snapshots().unwrap().len(), 1);
        restore_and_compare_first(&mut fresh, &first, dir.path(), limit);
    }
    faulty.set_plan(FaultPlan::default());
    let ok =
        crate::baton::backup(&mut repo, &opts(&[&src]), None, &NoProgress, &Cancel::new()).unwrap();
    let mut fresh = Repository::open(Arc::new(local), b"pw").unwrap();
    restore_and_compare(
        &mut fresh,
        &ok.snapshot_id.unwrap().to_hex(),
        &src,
        dir.path(),
    );
}

fn restore_and_compare_first(
    repo: &mut Repository,
    first: &crate::baton::BackupResult,
    scratch: &Path,
    n: usize,
) {
    repo.load_index().unwrap();
    let (_, s) = repo
        .find_snapshot(&first.snapshot_id.unwrap().to_hex())
        .unwrap();
    let target = scratch.join(format!("first-{n}"));
    let r = crate::baton::restore(
        repo,
        &s,
        None,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.files, 1);
}

/// Deletes one file and grows another while the archiver is between them.
struct Saboteur {
    dir: PathBuf,
    done: Mutex<bool>,
}

impl Progress for Saboteur {
    fn entry(&self, path: &Path, _status: EntryStatus) {
        let mut done = self.done.lock().unwrap();
        if !*done && path == self.dir.join("a") {
            *done = true;
            std::fs::remove_file(self.dir.join("b-vanishes")).unwrap();
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(self.dir.join("c-grows"))
                .unwrap();
            std::io::Write::write_all(&mut f, &[7u8; 5000]).unwrap();
        }
    }
}

#[test]
fn files_that_vanish_or_change_while_read_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for n in ["a", "b-vanishes", "c-grows", "d"] {
        write_file(&src.join(n), 10_000, 1).unwrap();
    }
    let mut repo = Repository::init(
        Arc::new(LocalStorage::new(dir.path().join("repo"))),
        b"pw",
        &fast_init(),
    )
    .unwrap();
    let sab = Saboteur {
        dir: src.clone(),
        done: Mutex::new(false),
    };
    let r = crate::baton::backup(&mut repo, &opts(&[&src]), None, &sab, &Cancel::new()).unwrap();
    let s = r.summary();
    let errs: Vec<String> = s
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect();
    assert_eq!(s.errors.len(), 2, "{errs:?}");
    assert!(
        errs.iter()
            .any(|e| e.contains("b-vanishes") && e.contains("cannot open")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("c-grows") && e.contains("changed while it was read")),
        "{errs:?}"
    );
    assert_eq!(s.files_new, 3, "the backup went on: a, c and d are in it");
    // The grown file's content as read is in the snapshot; a second backup reads it again.
    let again =
        crate::baton::backup(&mut repo, &opts(&[&src]), None, &NoProgress, &Cancel::new()).unwrap();
    assert_eq!(again.summary().files_changed, 1);
    assert_eq!(again.summary().bytes_read, 15_000);
    restore_and_compare(
        &mut repo,
        &again.snapshot_id.unwrap().to_hex(),
        &src,
        dir.path(),
    );
}

#[test]
fn cancelled_backup_leaves_a_valid_repository() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_file(&src.join("f"), 3 << 20, 1).unwrap();
    let mut repo = Repository::init(
        Arc::new(LocalStorage::new(dir.path().join("repo"))),
        b"pw",
        &fast_init(),
    )
    .unwrap();
    let c = Cancel::new();
    c.cancel();
    let e = crate::baton::backup(&mut repo, &opts(&[&src]), None, &NoProgress, &c).unwrap_err();
    assert!(matches!(e, RepoError::Cancelled), "{e}");
    assert!(repo.list_snapshots().unwrap().is_empty());
    let ok =
        crate::baton::backup(&mut repo, &opts(&[&src]), None, &NoProgress, &Cancel::new()).unwrap();
    restore_and_compare(
        &mut repo,
        &ok.snapshot_id.unwrap().to_hex(),
        &src,
        dir.path(),
    );
}

/// A slow store (5 ms per call) that also fails every other call with a
/// transient error, behind the retry wrapper: backup, check and restore are
/// still exact; without the wrapper the fault surfaces as a clear error.
#[test]
fn slow_and_flaky_storage() {
    use baton_storage::{RetryPolicy, RetryStorage, SlowStorage};
    use std::time::Duration;

    /// Fails every other call of each thread with a transient error. The
    /// count is per thread: with one shared count, the parallel readers of
    /// `check` could take every successful turn of one retrying thread, and
    /// three failures in a row are not what this test is about.
    struct Flaky {
        inner: SlowStorage<LocalStorage>,
        calls: std::sync::Mutex<std::collections::HashMap<std::thread::ThreadId, u64>>,
    }
    impl Flaky {
        fn fault(&self) -> Result<(), baton_storage::StorageError> {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(std::thread::current().id()).or_default();
            *n += 1;
            if (*n - 1).is_multiple_of(2) {
                Err(baton_storage::StorageError::new(
                    ErrorKind::Transient,
                    "x",
                    "connection reset",
                ))
            } else {
                Ok(())
            }
        }
    }
    impl Storage for Flaky {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn exists(&self) -> Result<bool, baton_storage::StorageError> {
            self.fault()?;
            self.inner.exists()
        }
        fn create(&self) -> Result<(), baton_storage::StorageError> {
            self.fault()?;
            self.inner.create()
        }
        fn put(
            &self,
            k: baton_storage::ObjectKind,
            n: &str,
            d: &[u8],
        ) -> Result<(), baton_storage::StorageError> {
            self.fault()?;
            self.inner.put(k, n, d)
        }
        fn get(
            &self,
            k: baton_storage::ObjectKind,
            n: &str,
        ) -> Result<Vec<u8>, baton_storage::StorageError> {
            self.fault()?;
            self.inner.get(k, n)
        }
        fn get_range(
            &self,
            k: baton_storage::ObjectKind,
            n: &str,
            o: u64,
            l: u64,
        ) -> Result<Vec<u8>, baton_storage::StorageError> {
            self.fault()?;
            self.inner.get_range(k, n, o, l)
        }
        fn size(
            &self,
            k: baton_storage::ObjectKind,
            n: &str,
        ) -> Result<u64, baton_storage::StorageError> {
            self.fault()?;
            self.inner.size(k, n)
        }
        fn list(
            &self,
            k: baton_storage::ObjectKind,
        ) -> Result<Vec<baton_storage::ObjectInfo>, baton_storage::StorageError> {
            self.fault()?;
            self.inner.list(k)
        }
        fn remove(
            &self,
            k: baton_storage::ObjectKind,
            n: &str,
        ) -> Result<(), baton_storage::StorageError> {
            self.fault()?;
            self.inner.remove(k, n)
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for i in 0..5 {
        write_file(&src.join(format!("f{i}")), 700_000, i).unwrap();
    }
    let flaky = Flaky {
        inner: SlowStorage::new(
            LocalStorage::new(dir.path().join("repo")),
            Duration::from_millis(5),
        ),
        calls: Default::default(),
    };
    let policy = RetryPolicy {
        attempts: 3,
        initial_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
    };
    let storage = Arc::new(RetryStorage::new(flaky, policy));
    let mut repo = Repository::init(storage.clone(), b"pw", &fast_init()).unwrap();
    let r =
        crate::baton::backup(&mut repo, &opts(&[&src]), None, &NoProgress, &Cancel::new()).unwrap();
    let report = crate::baton::check(
        &repo,
        &crate::baton::CheckOptions {
            read_data: crate::baton::ReadData::All,
        },
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    restore_and_compare(
        &mut repo,
        &r.snapshot_id.unwrap().to_hex(),
        &src,
        dir.path(),
    );
    // Without the retry wrapper the same faults fail the operation, clearly.
    let bare = Flaky {
        inner: SlowStorage::new(LocalStorage::new(dir.path().join("repo")), Duration::ZERO),
        calls: Default::default(),
    };
    let err = Repository::open(Arc::new(bare), b"pw").unwrap_err();
    assert!(err.to_string().contains("connection reset"), "{err}");
}
