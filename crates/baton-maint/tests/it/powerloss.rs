//! Power loss at every acknowledged storage operation of a backup: a
//! storage layer records each put/remove the backup completes; replaying
//! only the first k of them gives the repository as a power cut after the
//! k-th acknowledgement would leave it (everything acknowledged is durable,
//! nothing later is). From every such state the next backup must resume and
//! produce exactly the tree of the uninterrupted backup.

use crate::baton::{BackupOptions, Cancel, NoProgress, Repository, RestoreOptions};
use crate::faults::fast_init;
use crate::recording::{Op, Recording};
use baton_storage::{LocalStorage, ObjectKind, Storage};
use baton_testing::{CompareOptions, compare_trees, write_file};
use std::sync::{Arc, Mutex};

#[test]
fn power_loss_after_every_acknowledged_write_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for i in 0..6 {
        write_file(&src.join(format!("big/{i}")), 1_500_000, i).unwrap();
    }
    for i in 0..150 {
        write_file(
            &src.join(format!("small/{}/{i}", i % 4)),
            3_000 + i * 37,
            100 + i,
        )
        .unwrap();
    }
    let total = baton_testing::dir_size(&src);
    let rec = Arc::new(Recording {
        inner: LocalStorage::new(dir.path().join("repo")),
        ops: Mutex::new(Vec::new()),
    });
    let mut repo = Repository::init(rec.clone(), b"pw", &fast_init()).unwrap();
    let opts = BackupOptions {
        paths: vec![src.clone()],
        checkpoint_interval: Some(std::time::Duration::ZERO),
        ..Default::default()
    };
    let clean = crate::baton::backup(&mut repo, &opts, None, &NoProgress, &Cancel::new()).unwrap();
    let reference = clean.snapshot.tree;
    let ops = rec.ops.lock().unwrap().clone();
    let journal_writes = ops
        .iter()
        .filter(|o| matches!(o, Op::Put(ObjectKind::Journal, ..)))
        .count();
    assert!(
        journal_writes >= 5,
        "the backup should journal several times, wrote {journal_writes}"
    );
    let init_ops = 2; // key file and config
    let mut resumed_states = 0;
    for k in init_ops..=ops.len() {
        let replay = dir.path().join(format!("replay-{k}"));
        let s = LocalStorage::new(&replay);
        s.create().unwrap();
        for op in &ops[..k] {
            match op {
                Op::Put(kind, name, data) => s.put(*kind, name, data).unwrap(),
                Op::Remove(kind, name) => s.remove(*kind, name).unwrap(),
            }
        }
        let s = Arc::new(s);
        let mut repo = Repository::open(s.clone(), b"pw").unwrap();
        let jobs = crate::baton::list_jobs(&repo).unwrap();
        let durable = jobs.first().map_or(0, |j| j.position);
        let r = crate::baton::backup(&mut repo, &opts, None, &NoProgress, &Cancel::new())
            .unwrap_or_else(|e| panic!("after {k} of {} operations: {e}", ops.len()));
        assert_eq!(
            r.snapshot.tree, reference,
            "power cut after operation {k}: different tree"
        );
        let s_sum = r.summary();
        if s_sum.resumed_job.is_some() {
            resumed_states += 1;
            let bound = total - durable + (1 << 20) + 1_500_000;
            assert!(
                s_sum.bytes_read <= bound,
                "after {k}: read {} > bound {bound}",
                s_sum.bytes_read
            );
        }
        assert!(crate::baton::list_jobs(&repo).unwrap().is_empty());
        if k % 7 == 0 || k == ops.len() {
            repo.load_index().unwrap();
            let target = dir.path().join(format!("restore-{k}"));
            let (_, snap) = repo.find_snapshot("latest").unwrap();
            let res = crate::baton::restore(
                &repo,
                &snap,
                Some(src.to_str().unwrap()),
                &target,
                &RestoreOptions::default(),
                &NoProgress,
                &Cancel::new(),
            )
            .unwrap();
            assert!(res.errors.is_empty());
            let o = CompareOptions {
                ownership: false,
                ..Default::default()
            };
            compare_trees(&src, &target, &o)
                .unwrap_or_else(|d| panic!("after {k}: {}", d.join("\n")));
        }
        std::fs::remove_dir_all(&replay).unwrap();
    }
    assert!(
        resumed_states >= journal_writes - 2,
        "resumed from {resumed_states} states"
    );
    eprintln!(
        "power cuts exercised: {} (resumed from {resumed_states})",
        ops.len() - init_ops + 1
    );
}
