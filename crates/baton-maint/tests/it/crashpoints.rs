//! Forget and key changes through every crash point: the repository state
//! after each acknowledged write of the operation (and nothing later) checks
//! clean with a full data read, opens with a password that was valid, and
//! restores every snapshot that is still listed exactly.

use crate::baton::{
    BackupOptions, Cancel, CheckOptions, ForgetOptions, NoProgress, ReadData, Repository,
    RestoreOptions,
};
use crate::faults::fast_init;
use crate::recording::{Op, Recording, replay};
use baton_storage::{LocalStorage, ObjectKind};
use baton_testing::{CompareOptions, compare_trees, write_file};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn copy_dir(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A repository with three snapshots of three sources.
fn base(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let repo_dir = dir.join("base");
    let mut repo =
        Repository::init(Arc::new(LocalStorage::new(&repo_dir)), b"old", &fast_init()).unwrap();
    let mut sources = Vec::new();
    for s in 0..3u64 {
        let src = dir.join(format!("src{s}"));
        for i in 0..4 {
            write_file(&src.join(format!("f{i}")), 300_000 + i * 1000, s * 10 + i).unwrap();
        }
        let opts = BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        };
        crate::baton::backup(&mut repo, &opts, None, &NoProgress, &Cancel::new()).unwrap();
        sources.push(src);
    }
    (repo_dir, sources)
}

/// Runs `op` on a copy of the base, recording its writes.
fn record(dir: &Path, base: &Path, name: &str, op: impl FnOnce(&mut Repository)) -> Vec<Op> {
    let work = dir.join(format!("work-{name}"));
    copy_dir(base, &work);
    let rec = Arc::new(Recording::new(LocalStorage::new(&work)));
    let mut repo = Repository::open(rec.clone(), b"old").unwrap();
    op(&mut repo);
    std::mem::take(&mut *rec.ops.lock().unwrap())
}

/// Every prefix of `ops` applied to the base: check clean, every listed
/// snapshot restores equal to its source.
fn verify_prefixes(
    dir: &Path,
    base: &Path,
    sources: &[PathBuf],
    name: &str,
    ops: &[Op],
    passwords: &[&[u8]],
) -> usize {
    for k in 0..=ops.len() {
        let state = dir.join(format!("state-{name}-{k}"));
        copy_dir(base, &state);
        let storage = LocalStorage::new(&state);
        // The crashed process is gone, so its lock is stale: leave it out
        // (a live lock of this test process would block the check).
        let ops_k: Vec<Op> = ops[..k]
            .iter()
            .filter(|o| {
                !matches!(
                    o,
                    Op::Put(ObjectKind::Lock, ..) | Op::Remove(ObjectKind::Lock, _)
                )
            })
            .cloned()
            .collect();
        replay(&storage, &ops_k);
        let storage = Arc::new(storage);
        let mut repo = passwords
            .iter()
            .find_map(|p| Repository::open(storage.clone(), p).ok())
            .unwrap_or_else(|| panic!("{name}: after {k} writes no password opens the repository"));
        let report = crate::baton::check(
            &repo,
            &CheckOptions {
                read_data: ReadData::All,
            },
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
        assert!(
            report.is_clean(),
            "{name}: after {k} of {} writes check found {:?}",
            ops.len(),
            report.problems
        );
        repo.load_index().unwrap();
        for (id, snap) in repo.list_snapshots().unwrap() {
            let src = PathBuf::from(&snap.paths[0]);
            assert!(sources.contains(&src));
            let target = state.join(format!("restore-{}", id.short()));
            let r = crate::baton::restore(
                &repo,
                &snap,
                Some(&snap.paths[0]),
                &target,
                &RestoreOptions::default(),
                &NoProgress,
                &Cancel::new(),
            )
            .unwrap();
            assert!(r.errors.is_empty(), "{name} after {k}: {:?}", r.errors);
            compare_trees(
                &src,
                &target,
                &CompareOptions {
                    ownership: false,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|d| panic!("{name} after {k}: {}", d.join("\n")));
        }
        std::fs::remove_dir_all(&state).unwrap();
    }
    ops.len() + 1
}

#[test]
fn forget_and_key_changes_survive_a_crash_at_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let (base, sources) = base(dir.path());
    let mut points = 0;

    let ops = record(dir.path(), &base, "forget", |repo| {
        let ids: Vec<String> = repo
            .list_snapshots()
            .unwrap()
            .iter()
            .take(2)
            .map(|(id, _)| id.to_hex())
            .collect();
        let opts = ForgetOptions {
            snapshots: ids,
            ..Default::default()
        };
        let r = crate::baton::forget(repo, &opts).unwrap();
        assert_eq!(r.removed.len(), 2);
    });
    assert!(ops.iter().filter(|o| matches!(o, Op::Remove(..))).count() >= 2);
    points += verify_prefixes(dir.path(), &base, &sources, "forget", &ops, &[b"old"]);

    let kdf = crate::baton::kdf_params(8192, 1);
    let ops = record(dir.path(), &base, "passwd", |repo| {
        repo.change_password(b"new", &kdf).unwrap();
    });
    assert!(ops.len() >= 2, "passwd writes a key and removes one");
    points += verify_prefixes(
        dir.path(),
        &base,
        &sources,
        "passwd",
        &ops,
        &[b"old", b"new"],
    );

    let ops = record(dir.path(), &base, "key-add-remove", |repo| {
        let added = repo.add_key(b"second", &kdf).unwrap();
        let reopened = Repository::open(repo.storage().clone(), b"second").unwrap();
        reopened.remove_key(repo.key_name()).unwrap();
        assert_ne!(added, repo.key_name());
    });
    points += verify_prefixes(
        dir.path(),
        &base,
        &sources,
        "key-add-remove",
        &ops,
        &[b"old", b"second"],
    );
    eprintln!("crash points exercised for forget and key changes: {points}");
}
