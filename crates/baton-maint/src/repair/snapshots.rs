//! `baton repair snapshots`: for every snapshot that references missing or
//! damaged blobs, write a copy without them. A file with a lost chunk is
//! dropped; a directory whose tree cannot be loaded becomes empty. The copy
//! is tagged `repaired` and names the snapshot it replaces in `original`.
//!
//! Order of writes: tree packs, then their index object, then the new
//! snapshots, then (with `forget`) the deletion of the old ones.

use crate::check::{blob_beyond_pack, verify_pack};
use baton_format::compress::Compressor;
use baton_format::index::{IndexFile, IndexPack};
use baton_format::object::{from_json, to_json};
use baton_format::pack::{PackEntry, PackWriter, seal_blob_into};
use baton_repo::browse::join;
use baton_repo::progress::{Cancel, Progress};
use baton_repo::{RepoError, Repository, Result};
use baton_storage::ObjectKind;
use baton_types::{BlobType, Id, NodeKind, Snapshot, Tree};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The tag of every snapshot written by `repair snapshots`.
pub const REPAIRED_TAG: &str = "repaired";

/// Options of `baton repair snapshots`.
#[derive(Debug, Clone, Default)]
pub struct RepairSnapshotsOptions {
    /// Delete each damaged snapshot once its repaired copy is stored.
    pub forget: bool,
    /// Read every pack first and treat blobs that fail verification as lost
    /// (otherwise only blobs missing from the index or from the packs are).
    pub read_data: bool,
}

/// One entry removed from a snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RemovedEntry {
    pub path: String,
    /// "file" (dropped: content lost) or "dir" (kept empty: listing lost).
    pub kind: &'static str,
    pub reason: String,
}

/// A snapshot that needed repair.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RepairedSnapshot {
    pub original: Id,
    /// The repaired copy (written now, or by an earlier run that kept the original).
    pub repaired: Id,
    pub removed: Vec<RemovedEntry>,
    /// Whether the damaged snapshot was deleted.
    pub forgotten: bool,
}

/// What `repair snapshots` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RepairSnapshotsReport {
    pub snapshots_checked: u64,
    pub repaired: Vec<RepairedSnapshot>,
    /// Snapshot objects that cannot be read, with the reason: left alone,
    /// or with `--forget` deleted (nothing in them can be saved).
    pub unreadable: Vec<(String, String)>,
    /// Whether the unreadable snapshot objects were deleted (`--forget`).
    pub unreadable_forgotten: bool,
    pub trees_written: u64,
}

enum Outcome {
    Unchanged,
    Changed(Id),
    Unreadable(String),
}

struct Rewriter<'a> {
    repo: &'a Repository,
    bad: HashSet<Id>,
    cancel: &'a Cancel,
    clean: HashSet<Id>,
    written: HashSet<Id>,
    compressor: Compressor,
    pack: PackWriter,
    stored: Vec<IndexPack>,
    trees_written: u64,
    /// Trees still to visit (see `check`'s attribution pass: a crafted
    /// snapshot can hold one tree exponentially often).
    visits_left: u64,
    depth: usize,
}

/// Most trees `repair snapshots` visits, over all snapshots.
const MAX_VISITS: u64 = 200_000;

impl Rewriter<'_> {
    fn is_bad(&self, id: &Id) -> bool {
        !self.repo.index().contains(id) || self.bad.contains(id)
    }

    fn save_tree(&mut self, mut tree: Tree) -> Result<Id> {
        tree.sort();
        let json = to_json(&tree);
        let key = self.repo.key();
        let id = key.blob_id(&json);
        if self.is_bad(&id) && self.written.insert(id) {
            let mut sealed = Vec::new();
            let compressed = match self.compressor.compress(&json) {
                Some(z) => {
                    seal_blob_into(key, BlobType::Tree, &id, &z, &mut sealed);
                    true
                }
                None => {
                    seal_blob_into(key, BlobType::Tree, &id, &json, &mut sealed);
                    false
                }
            };
            self.pack
                .add(BlobType::Tree, id, &sealed, json.len() as u32, compressed);
            self.trees_written += 1;
            if self.pack.size() as u64 >= self.repo.config().pack_size {
                self.flush()?;
            }
        }
        Ok(id)
    }

    /// Stores the open pack (durably, before any index names it).
    fn flush(&mut self) -> Result<()> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let (pack, _) = self.repo.store_pack(std::mem::take(&mut self.pack))?;
        self.stored.push(pack);
        Ok(())
    }

    fn tree(&mut self, id: Id, path: &str, removed: &mut Vec<RemovedEntry>) -> Result<Outcome> {
        if self.clean.contains(&id) {
            return Ok(Outcome::Unchanged);
        }
        self.cancel.check()?;
        if self.visits_left == 0 || self.depth > baton_repo::MAX_TREE_DEPTH {
            return Err(RepoError::Damaged(
                "the snapshots' trees nest too deep or hold each other too many times over (crafted or damaged); nothing was rewritten".into(),
            ));
        }
        self.visits_left -= 1;
        if self.is_bad(&id) {
            return Ok(Outcome::Unreadable(format!(
                "tree {} is missing or damaged",
                id.short()
            )));
        }
        let t = match self.repo.load_tree(&id) {
            Ok(t) => t,
            Err(e) => return Ok(Outcome::Unreadable(e.to_string())),
        };
        let mut changed = false;
        let mut nodes = Vec::with_capacity(t.nodes.len());
        for n in &t.nodes {
            let p = join(path, &n.name.lossy());
            let mut n = n.clone();
            match n.kind {
                NodeKind::File => {
                    let lost = n.content.iter().filter(|c| self.is_bad(c)).count();
                    if lost > 0 {
                        removed.push(RemovedEntry {
                            path: p,
                            kind: "file",
                            reason: format!(
                                "{lost} of its {} chunks are missing or damaged",
                                n.content.len()
                            ),
                        });
                        changed = true;
                        continue;
                    }
                }
                NodeKind::Dir => {
                    let outcome = match n.subtree {
                        Some(sub) => {
                            self.depth += 1;
                            let o = self.tree(sub, &p, removed);
                            self.depth -= 1;
                            o?
                        }
                        None => Outcome::Unreadable("the directory has no subtree".into()),
                    };
                    match outcome {
                        Outcome::Unchanged => {}
                        Outcome::Changed(new) => {
                            n.subtree = Some(new);
                            changed = true;
                        }
                        Outcome::Unreadable(reason) => {
                            n.subtree = Some(self.save_tree(Tree::default())?);
                            removed.push(RemovedEntry {
                                path: p,
                                kind: "dir",
                                reason,
                            });
                            changed = true;
                        }
                    }
                }
                _ => {}
            }
            nodes.push(n);
        }
        if !changed {
            self.clean.insert(id);
            return Ok(Outcome::Unchanged);
        }
        Ok(Outcome::Changed(self.save_tree(Tree { nodes })?))
    }
}

/// Blobs whose index entry points at a missing pack or past a pack's end,
/// and (with `read_data`) blobs that fail verification.
fn lost_blobs(
    repo: &Repository,
    read_data: bool,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<HashSet<Id>> {
    let sizes: HashMap<Id, u64> = repo
        .storage()
        .list(ObjectKind::Pack)?
        .into_iter()
        .filter_map(|o| Id::from_hex(&o.name).ok().map(|id| (id, o.size)))
        .collect();
    let mut by_pack: BTreeMap<Id, Vec<PackEntry>> = BTreeMap::new();
    let mut bad = HashSet::new();
    for (id, loc) in repo.index().iter() {
        match sizes.get(&loc.pack) {
            Some(&size) if !blob_beyond_pack(&loc, size) => {
                by_pack.entry(loc.pack).or_default().push(PackEntry {
                    blob_type: loc.blob_type,
                    id: *id,
                    offset: loc.offset,
                    length: loc.length,
                    raw_length: loc.raw_length,
                    compressed: loc.compressed,
                });
            }
            _ => {
                bad.insert(*id);
            }
        }
    }
    if read_data {
        progress.set_total(by_pack.len() as u64, by_pack.keys().map(|p| sizes[p]).sum());
        for (pack, entries) in &by_pack {
            cancel.check()?;
            let v = verify_pack(repo, pack, Some(entries));
            bad.extend(v.bad_blobs().copied());
            progress.bytes(sizes[pack]);
        }
    }
    Ok(bad)
}

/// Packs that no index lists may hold exactly the blobs that look lost (a
/// deleted or damaged index object): repairing snapshots then would throw
/// away data that `repair index` can bring back. Packs of unfinished
/// backups are expected to be unindexed.
fn refuse_unindexed_packs(repo: &Repository) -> Result<()> {
    let mut job_packs = HashSet::new();
    for job in baton_repo::journal::list_job_ids(repo)? {
        if let Ok(st) = baton_repo::journal::load_job(repo, &job) {
            job_packs.extend(st.packs.iter().map(|p| p.id));
        }
    }
    let unindexed: Vec<String> = repo
        .storage()
        .list(ObjectKind::Pack)?
        .into_iter()
        .filter(|o| {
            Id::from_hex(&o.name)
                .is_ok_and(|id| !repo.index().has_pack(&id) && !job_packs.contains(&id))
        })
        .map(|o| o.name)
        .collect();
    match unindexed.first() {
        None => Ok(()),
        Some(first) => Err(RepoError::Damaged(format!(
            "{} pack(s) are in no index (pack {first}{}): they may hold the data the snapshots \
             miss; run `baton repair index` first",
            unindexed.len(),
            if unindexed.len() > 1 { ", ..." } else { "" }
        ))),
    }
}

/// Writes repaired copies of every snapshot that references lost blobs.
pub fn repair_snapshots(
    repo: &mut Repository,
    opts: &RepairSnapshotsOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<RepairSnapshotsReport> {
    if opts.forget {
        repo.require_deletes("repair snapshots --forget")?;
    }
    let lock = repo.lock(true)?;
    repo.load_index()?;
    let repo: &Repository = repo;
    refuse_unindexed_packs(repo)?;
    let mut report = RepairSnapshotsReport::default();
    let mut snapshots: Vec<(Id, Snapshot)> = Vec::new();
    for o in repo.storage().list(ObjectKind::Snapshot)? {
        let loaded = repo
            .load_object(ObjectKind::Snapshot, &o.name)
            .and_then(|p| {
                from_json::<Snapshot>("snapshot", &p)
                    .map_err(|e| RepoError::format(format!("snapshot {}", o.name), e))
            });
        match (loaded, Id::from_hex(&o.name)) {
            (Ok(s), Ok(id)) => snapshots.push((id, s)),
            // A fault that may pass says nothing about the snapshot: stop
            // (with --forget it would otherwise be deleted).
            (Err(RepoError::Storage(e)), _) if e.is_transient() || e.is_not_found() => {
                if e.is_not_found() {
                    continue;
                }
                return Err(RepoError::Storage(e));
            }
            (Err(e), _) => report.unreadable.push((o.name, e.to_string())),
            (_, Err(e)) => report.unreadable.push((o.name, e.to_string())),
        }
    }
    snapshots.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
    let repaired_before: Vec<(Id, Id, Id)> = snapshots
        .iter()
        .filter_map(|(id, s)| s.original.map(|o| (*id, o, s.tree)))
        .collect();
    report.snapshots_checked = snapshots.len() as u64;
    let mut w = Rewriter {
        repo,
        bad: lost_blobs(repo, opts.read_data, progress, cancel)?,
        cancel,
        clean: HashSet::new(),
        written: HashSet::new(),
        compressor: Compressor::new(repo.config().compression),
        pack: PackWriter::new(),
        stored: Vec::new(),
        trees_written: 0,
        visits_left: MAX_VISITS,
        depth: 0,
    };
    let mut changed = Vec::new();
    for (id, s) in snapshots {
        let mut removed = Vec::new();
        let root = match w.tree(s.tree, "/", &mut removed)? {
            Outcome::Unchanged => continue,
            Outcome::Changed(root) => root,
            Outcome::Unreadable(reason) => {
                removed.push(RemovedEntry {
                    path: "/".into(),
                    kind: "dir",
                    reason,
                });
                w.save_tree(Tree::default())?
            }
        };
        let mut new = s.clone();
        new.tree = root;
        new.tags.push(REPAIRED_TAG.into());
        new.tags.sort();
        new.tags.dedup();
        new.original = Some(s.original.unwrap_or(id));
        // Repairing again (the original was kept) finds the earlier copy.
        let earlier = repaired_before
            .iter()
            .find(|(_, orig, tree)| Some(*orig) == new.original && *tree == root)
            .map(|(rid, _, _)| *rid);
        changed.push((id, new, removed, earlier));
    }
    w.flush()?;
    report.trees_written = w.trees_written;
    if !w.stored.is_empty() {
        let idx = IndexFile {
            supersedes: Vec::new(),
            packs: std::mem::take(&mut w.stored),
            damaged: Vec::new(),
        };
        repo.save_object(ObjectKind::Index, &idx.encode())?;
    }
    for (old, new, removed, earlier) in changed {
        let new_id = match earlier {
            Some(id) => id,
            None => repo.save_snapshot(&new)?.0,
        };
        if opts.forget {
            repo.storage().remove(ObjectKind::Snapshot, &old.to_hex())?;
        }
        report.repaired.push(RepairedSnapshot {
            original: old,
            repaired: new_id,
            removed,
            forgotten: opts.forget,
        });
    }
    if opts.forget {
        // A snapshot that cannot be read holds nothing to copy; it must
        // not stay to block prune and name itself in every listing.
        for (name, _) in &report.unreadable {
            lock.ensure_fresh()?;
            repo.storage().remove(ObjectKind::Snapshot, name)?;
        }
        report.unreadable_forgotten = !report.unreadable.is_empty();
    }
    drop(lock);
    Ok(report)
}
