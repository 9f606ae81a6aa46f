//! `baton stats`: how much the selected snapshots restore to, how much
//! distinct data they hold, and what that costs in the repository.
//!
//! Every distinct tree is read once: a tree's totals (files, bytes) are
//! memoised by id, so snapshots that share most of their trees (the usual
//! case) cost little more than one, and an exponentially expanding DAG
//! costs its distinct trees, not its paths.

use baton_repo::image::ImageIndex;
use baton_repo::{Cancel, RepoError, Repository, Result};
use baton_types::{Id, NodeKind, Snapshot};
use std::collections::{HashMap, HashSet};

/// Sizes of a set of snapshots.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    pub snapshots: u64,
    /// What a restore of every selected snapshot writes: files (and
    /// images) counted once per path and snapshot.
    pub restore_size: u64,
    pub files: u64,
    pub dirs: u64,
    /// Distinct blobs the snapshots reference (data, trees, fixed indexes).
    pub blobs: u64,
    /// Their plaintext size (after decompression): the deduplicated data.
    pub unique_size: u64,
    /// Their size as stored (compressed and sealed).
    pub stored_size: u64,
    /// Referenced blobs the index does not know (damage).
    pub missing_blobs: u64,
    /// `restore_size / unique_size`: what deduplication saved.
    pub dedup_ratio: f64,
    /// `unique_size / stored_size`: what compression saved.
    pub compression_ratio: f64,
}

#[derive(Clone, Copy, Default)]
struct Totals {
    files: u64,
    dirs: u64,
    bytes: u64,
}

struct Walker<'a> {
    repo: &'a Repository,
    memo: HashMap<Id, Totals>,
    blobs: HashSet<Id>,
    cancel: &'a Cancel,
}

impl Walker<'_> {
    fn tree(&mut self, id: Id, depth: usize) -> Result<Totals> {
        if let Some(t) = self.memo.get(&id) {
            return Ok(*t);
        }
        if depth > baton_repo::MAX_TREE_DEPTH {
            return Err(RepoError::Damaged(format!(
                "tree {} is nested deeper than {} levels",
                id.short(),
                baton_repo::MAX_TREE_DEPTH
            )));
        }
        self.cancel.check()?;
        self.blobs.insert(id);
        let tree = self.repo.read_tree(&id)?;
        let mut t = Totals::default();
        for n in &tree.nodes {
            match n.kind {
                NodeKind::Dir => {
                    t.dirs += 1;
                    if let Some(sub) = n.subtree {
                        let s = self.tree(sub, depth + 1)?;
                        t.files += s.files;
                        t.dirs += s.dirs;
                        t.bytes = t.bytes.saturating_add(s.bytes);
                    }
                }
                NodeKind::File => {
                    t.files += 1;
                    t.bytes = t.bytes.saturating_add(n.size);
                    self.blobs.extend(n.content.iter().copied());
                }
                NodeKind::Image => {
                    t.files += 1;
                    t.bytes = t.bytes.saturating_add(n.size);
                    if let Some(root) = n.image
                        && !self.blobs.contains(&root)
                    {
                        ImageIndex::load(self.repo, &root)?
                            .referenced(self.repo, &mut self.blobs)?;
                    }
                }
                _ => {}
            }
        }
        self.memo.insert(id, t);
        Ok(t)
    }
}

/// Computes [`Stats`] of `snapshots` (the index must be loaded).
pub fn stats(repo: &Repository, snapshots: &[(Id, Snapshot)], cancel: &Cancel) -> Result<Stats> {
    let mut w = Walker {
        repo,
        memo: HashMap::new(),
        blobs: HashSet::new(),
        cancel,
    };
    let mut s = Stats {
        snapshots: snapshots.len() as u64,
        ..Stats::default()
    };
    for (id, snap) in snapshots {
        let t = w
            .tree(snap.tree, 0)
            .map_err(|e| RepoError::Damaged(format!("snapshot {}: {e}", id.short())))?;
        s.files += t.files;
        s.dirs += t.dirs;
        s.restore_size = s.restore_size.saturating_add(t.bytes);
    }
    s.blobs = w.blobs.len() as u64;
    for b in &w.blobs {
        match repo.index().locate(b) {
            Some(l) => {
                s.unique_size += u64::from(l.raw_length);
                s.stored_size += u64::from(l.length);
            }
            None => s.missing_blobs += 1,
        }
    }
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    s.dedup_ratio = ratio(s.restore_size, s.unique_size);
    s.compression_ratio = ratio(s.unique_size, s.stored_size);
    Ok(s)
}
