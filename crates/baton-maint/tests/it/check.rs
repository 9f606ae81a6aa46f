//! `check` and `repair` through the library: locking, cancellation, and
//! damage the CLI tests do not reach.

use crate::baton::{
    BackupOptions, Cancel, CheckOptions, NoProgress, ProblemKind, ReadData, RepoError, Repository,
    Severity,
};
use crate::faults::fast_init;
use baton_storage::{LocalStorage, ObjectKind, Storage};
use baton_testing::write_file;
use std::path::Path;
use std::sync::Arc;

fn repo_with_backup(dir: &Path) -> (Repository, Arc<LocalStorage>) {
    let src = dir.join("src");
    write_file(&src.join("f"), 200_000, 1).unwrap();
    write_file(&src.join("d/g"), 50_000, 2).unwrap();
    let storage = Arc::new(LocalStorage::new(dir.join("repo")));
    let mut repo = Repository::init(storage.clone(), b"pw", &fast_init()).unwrap();
    let opts = BackupOptions {
        paths: vec![src],
        ..BackupOptions::default()
    };
    crate::baton::backup(&mut repo, &opts, None, &NoProgress, &Cancel::new()).unwrap();
    (repo, storage)
}

fn read_all() -> CheckOptions {
    CheckOptions {
        read_data: ReadData::All,
    }
}

#[test]
fn clean_check_cancel_and_lock() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, storage) = repo_with_backup(dir.path());
    let r = crate::baton::check(&repo, &read_all(), &NoProgress, &Cancel::new()).unwrap();
    assert!(r.is_clean() && r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(
        r.packs_checked,
        storage.list(ObjectKind::Pack).unwrap().len() as u64
    );
    assert!(storage.list(ObjectKind::Lock).unwrap().is_empty());
    let cancel = Cancel::new();
    cancel.cancel();
    assert!(matches!(
        crate::baton::check(&repo, &read_all(), &NoProgress, &cancel),
        Err(RepoError::Cancelled)
    ));
    // Check shares; repairs exclude.
    let held = repo.lock(true).unwrap();
    let err = crate::baton::check(&repo, &CheckOptions::default(), &NoProgress, &Cancel::new());
    assert!(matches!(err, Err(RepoError::Locked { .. })), "{err:?}");
    drop(held);
    let _shared = repo.lock(false).unwrap();
    crate::baton::check(&repo, &CheckOptions::default(), &NoProgress, &Cancel::new()).unwrap();
    let err = crate::baton::repair_index(&repo, &NoProgress, &Cancel::new());
    assert!(matches!(err, Err(RepoError::Locked { .. })), "{err:?}");
}

/// A pack whose index entries are right but whose header lies: the
/// structure pass cannot see it; reading the data does.
#[test]
fn garbage_where_a_pack_should_be() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, storage) = repo_with_backup(dir.path());
    let pack = storage
        .list(ObjectKind::Pack)
        .unwrap()
        .into_iter()
        .max_by_key(|o| o.size)
        .unwrap();
    let path = dir
        .path()
        .join("repo/data")
        .join(&pack.name[..2])
        .join(&pack.name);
    std::fs::write(&path, vec![0xa5; pack.size as usize]).unwrap();
    let structure =
        crate::baton::check(&repo, &CheckOptions::default(), &NoProgress, &Cancel::new()).unwrap();
    assert!(structure.is_clean(), "same size, so the layout fits");
    let r = crate::baton::check(&repo, &read_all(), &NoProgress, &Cancel::new()).unwrap();
    let kinds: Vec<ProblemKind> = r.problems.iter().map(|p| p.kind).collect();
    for k in [
        ProblemKind::HashMismatch,
        ProblemKind::Damaged,
        ProblemKind::DamagedBlob,
    ] {
        assert!(kinds.contains(&k), "{k:?} missing: {:?}", r.problems);
    }
    assert!(r.problems.iter().all(|p| p.severity == Severity::Error));
    let f = dir.path().join("src/f").to_string_lossy().into_owned();
    assert!(
        r.problems.iter().any(|p| p.paths.contains(&f)),
        "{:?}",
        r.problems
    );
}
