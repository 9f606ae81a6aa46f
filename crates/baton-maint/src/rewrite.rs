//! `baton rewrite`: copies of snapshots without the entries a predicate
//! names (restic's `rewrite --exclude`). Only the trees on the way to a
//! removed entry are written again; everything else is shared. A copy
//! keeps the original's time, host, paths and tags and names it in
//! `original`; with `forget`, the original is deleted once its copy is
//! stored.
//!
//! Order of writes: tree packs with their index objects, then the new
//! snapshot, then (with `forget`) the deletion of the old one: a crash at
//! any point leaves both, or the old one.

use baton_format::object::to_json;
use baton_repo::browse::join;
use baton_repo::progress::Cancel;
use baton_repo::{RepoError, Repository, Result};
use baton_storage::ObjectKind;
use baton_types::{BlobType, Id, Node, NodeKind, Snapshot, Tree};
use std::collections::HashMap;

/// Options of `baton rewrite`.
#[derive(Debug, Clone, Default)]
pub struct RewriteOptions {
    /// Delete each original once its copy is stored.
    pub forget: bool,
    /// Decide and report, write nothing.
    pub dry_run: bool,
}

/// One snapshot rewritten (or, in a dry run, to rewrite).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rewritten {
    pub original: Id,
    /// `None` in a dry run.
    pub new: Option<Id>,
    /// Snapshot paths of the entries removed (a directory covers all below).
    pub removed: Vec<String>,
    pub forgotten: bool,
}

/// What `rewrite` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RewriteReport {
    pub rewritten: Vec<Rewritten>,
    /// Snapshots with nothing to remove (left as they are).
    pub unchanged: u64,
    pub trees_written: u64,
}

struct Rewriter<'a> {
    repo: &'a Repository,
    exclude: &'a dyn Fn(&str, &Node) -> bool,
    cancel: &'a Cancel,
    /// (tree, its path) → its rewritten id, or None when nothing changed.
    memo: HashMap<(Id, String), Option<Id>>,
    /// New trees not yet stored.
    pending: Vec<(BlobType, Vec<u8>)>,
    dry_run: bool,
}

impl Rewriter<'_> {
    /// The id of `tree` (at `prefix`) without the excluded entries, or
    /// `None` if it has none; `removed` collects their paths.
    fn tree(
        &mut self,
        id: Id,
        prefix: &str,
        depth: usize,
        removed: &mut Vec<String>,
    ) -> Result<Option<Id>> {
        if let Some(r) = self.memo.get(&(id, prefix.to_string())) {
            return Ok(*r);
        }
        if depth > baton_repo::MAX_TREE_DEPTH {
            return Err(RepoError::Damaged(format!(
                "tree {} is nested deeper than {} levels",
                id.short(),
                baton_repo::MAX_TREE_DEPTH
            )));
        }
        self.cancel.check()?;
        let tree = self.repo.read_tree(&id)?;
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        let mut changed = false;
        for n in &tree.nodes {
            let path = join(prefix, &n.name.lossy());
            if (self.exclude)(&path, n) {
                removed.push(path);
                changed = true;
                continue;
            }
            let mut n = n.clone();
            if let (NodeKind::Dir, Some(sub)) = (n.kind, n.subtree)
                && let Some(new) = self.tree(sub, &path, depth + 1, removed)?
            {
                n.subtree = Some(new);
                changed = true;
            }
            nodes.push(n);
        }
        let out = if changed {
            let json = to_json(&Tree { nodes });
            let new = self.repo.key().blob_id(&json);
            if !self.dry_run && !self.repo.index().contains(&new) {
                self.pending.push((BlobType::Tree, json));
            }
            Some(new)
        } else {
            None
        };
        self.memo.insert((id, prefix.to_string()), out);
        Ok(out)
    }
}

/// Writes copies of `snapshots` without the entries `exclude(path, node)`
/// names. Takes the exclusive lock (with `forget`, originals are deleted).
pub fn rewrite(
    repo: &mut Repository,
    snapshots: &[(Id, Snapshot)],
    exclude: &dyn Fn(&str, &Node) -> bool,
    opts: &RewriteOptions,
    cancel: &Cancel,
) -> Result<RewriteReport> {
    if opts.forget && !opts.dry_run {
        repo.require_deletes("rewrite --forget")?;
    }
    let lock = repo.lock(true)?;
    lock.abort_on_loss(cancel);
    repo.load_index()?;
    let mut report = RewriteReport::default();
    let mut memo = HashMap::new();
    for (id, snap) in snapshots {
        let mut removed = Vec::new();
        let (new_root, pending) = {
            let mut w = Rewriter {
                repo: &*repo,
                exclude,
                cancel,
                memo: std::mem::take(&mut memo),
                pending: Vec::new(),
                dry_run: opts.dry_run,
            };
            let r = w.tree(snap.tree, "", 0, &mut removed)?;
            memo = std::mem::take(&mut w.memo);
            (r, w.pending)
        };
        let Some(root) = new_root else {
            report.unchanged += 1;
            continue;
        };
        let mut new = None;
        let mut forgotten = false;
        if !opts.dry_run {
            let pack_size = repo.config().pack_size;
            for chunk in chunk_by_size(pending, pack_size) {
                report.trees_written += chunk.len() as u64;
                repo.store_raw_blobs(&chunk)?;
            }
            let mut copy = snap.clone();
            copy.tree = root;
            copy.original = Some(snap.original.unwrap_or(*id));
            let (nid, _) = repo.save_snapshot(&copy)?;
            new = Some(nid);
            if opts.forget {
                repo.storage().remove(ObjectKind::Snapshot, &id.to_hex())?;
                forgotten = true;
            }
        }
        report.rewritten.push(Rewritten {
            original: *id,
            new,
            removed,
            forgotten,
        });
    }
    drop(lock);
    Ok(report)
}

/// Splits blobs into groups of about `size` bytes (one pack each).
fn chunk_by_size(mut blobs: Vec<(BlobType, Vec<u8>)>, size: u64) -> Vec<Vec<(BlobType, Vec<u8>)>> {
    blobs.sort_by(|a, b| a.1.cmp(&b.1));
    blobs.dedup();
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0u64;
    for b in blobs {
        bytes += b.1.len() as u64;
        cur.push(b);
        if bytes >= size {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}
