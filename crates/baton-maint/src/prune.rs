//! `baton prune`: delete the data no snapshot uses.
//!
//! Under the exclusive lock: (1) read every index object, list the packs in
//! storage, and load the journals of unfinished jobs; journals of jobs whose
//! snapshot exists, and of jobs older than `max_job_age`, are to be
//! forgotten. (2) Mark: walk the trees of every snapshot (each tree once) to
//! collect the used blobs, and the catalogs of the remaining jobs. (3) Plan
//! ([`plan::plan`]): keep, delete or repack each indexed pack; packs no index
//! lists and no job uses are unreferenced. (4) Unless a dry run: forget the
//! journals, copy the used blobs of repacked packs into new packs (stored
//! durably), write ONE new index object listing every kept and new pack and
//! superseding every existing index object, then delete the old index
//! objects, then the obsolete packs. See "Prune protocol" in docs/design.md
//! for why the repository is valid after a crash at any point.

mod plan;
mod repack;

use crate::forget::require_exclusive;
use baton_format::index::{IndexFile, IndexPack};
use baton_format::object::from_json;
use baton_repo::index::Index;
use baton_repo::journal::{self, JobState};
use baton_repo::progress::Progress;
use baton_repo::{
    Cancel, IndexSummary, LockGuard, RepoError, Repository, Result, superseded_index_objects,
};
use baton_storage::ObjectKind;
use baton_types::{Id, Tree};
use plan::{Fate, PackInfo};
pub use plan::{MaxUnused, PlanStats};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

/// Objects deleted per batch (S3's `DeleteObjects` takes up to 1000).
const DELETE_BATCH: usize = 200;

/// Options of `baton prune`.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Plan and report, change nothing.
    pub dry_run: bool,
    pub max_unused: MaxUnused,
    /// Unfinished jobs whose last journal record is older are forgotten (and
    /// their packs deleted); younger ones keep all their packs.
    pub max_job_age: Duration,
    /// Snapshots to treat as already deleted (`forget --dry-run --prune`).
    pub ignore_snapshots: Vec<Id>,
    /// Stops prune at its next safe point: while planning, between
    /// repacked packs, between deletions (each leaves a repository that the
    /// next prune finishes).
    pub cancel: Cancel,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            max_unused: MaxUnused::default(),
            max_job_age: Duration::from_secs(7 * 86_400),
            ignore_snapshots: Vec::new(),
            cancel: Cancel::new(),
        }
    }
}

/// A job whose journal prune forgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgottenJob {
    pub id: Id,
    pub last_record: String,
    pub packs: usize,
}

/// What prune found, decided and (unless a dry run) did.
#[derive(Debug, Clone, Default)]
pub struct PruneResult {
    pub dry_run: bool,
    /// Snapshots whose data is kept.
    pub snapshots: usize,
    /// Unfinished jobs whose packs are kept.
    pub jobs_kept: Vec<Id>,
    /// Unfinished jobs older than `max_job_age`: journal deleted.
    pub jobs_stale: Vec<ForgottenJob>,
    /// Jobs whose snapshot exists (a crash before their journal was deleted).
    pub jobs_finished: Vec<Id>,
    /// Packs only an unfinished job's journal references, kept.
    pub job_packs: usize,
    pub stats: PlanStats,
    /// Index objects that existed (all superseded when an index is written).
    pub index_objects: usize,
    /// Whether a new index object was (or would be) written.
    pub index_written: bool,
    pub packs_written: usize,
    pub bytes_written: u64,
    /// Stored bytes deleted: packs and replaced index objects (in a dry
    /// run: the packs to delete).
    pub bytes_deleted: u64,
    /// `bytes_deleted` minus bytes written (packs and the new index): how
    /// much smaller the repository became.
    pub bytes_freed: u64,
}

/// Takes the exclusive lock and runs [`prune_locked`].
pub fn prune(
    repo: &mut Repository,
    opts: &PruneOptions,
    progress: &dyn Progress,
) -> Result<PruneResult> {
    let lock = repo.lock(true)?;
    prune_locked(repo, &lock, opts, progress)
}

/// Parses a tree blob without filling the repository's tree cache. Not
/// validated: a tree with unsafe names still keeps what it references.
fn read_tree(repo: &Repository, id: &Id) -> Result<Tree> {
    let bytes = repo.load_blob_of(baton_types::BlobType::Tree, id)?;
    from_json("tree", &bytes).map_err(|e| RepoError::format(format!("tree {id}"), e))
}

/// Adds every blob below `root` to `used`; `seen` holds the trees already walked.
fn mark_tree(
    repo: &Repository,
    root: Id,
    seen: &mut HashSet<Id>,
    used: &mut HashSet<Id>,
    cancel: &Cancel,
) -> Result<()> {
    let mut stack = vec![root];
    while let Some(t) = stack.pop() {
        cancel.check()?;
        if !seen.insert(t) {
            continue;
        }
        used.insert(t);
        for n in read_tree(repo, &t)?.nodes {
            if let Some(root) = n.image
                && seen.insert(root)
            {
                baton_repo::image::ImageIndex::load(repo, &root)?.referenced(repo, used)?;
            }
            used.extend(n.content);
            stack.extend(n.subtree);
        }
    }
    Ok(())
}

fn job_is_stale(job: &JobState, max_age: Duration, now: SystemTime) -> bool {
    if max_age.is_zero() {
        return true;
    }
    humantime::parse_rfc3339_weak(&job.last_time)
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|age| age > max_age)
}

/// Runs prune; `lock` must be an exclusive lock of this repository.
pub fn prune_locked(
    repo: &mut Repository,
    lock: &LockGuard,
    opts: &PruneOptions,
    progress: &dyn Progress,
) -> Result<PruneResult> {
    require_exclusive(lock, "prune")?;
    if !opts.dry_run {
        repo.require_deletes("prune")?;
    }
    let storage = repo.storage().clone();
    let mut result = PruneResult {
        dry_run: opts.dry_run,
        ..PruneResult::default()
    };

    // (1) Index objects, packs in storage, snapshots, jobs.
    let mut index_names = Vec::new();
    let mut files = Vec::new();
    for o in storage.list(ObjectKind::Index)? {
        let id = Id::from_hex(&o.name).map_err(|_| {
            RepoError::Damaged(format!("index object {:?} has an invalid name", o.name))
        })?;
        let f = repo.read_index(&o.name)?;
        index_names.push(id);
        files.push((id, f));
    }
    result.index_objects = index_names.len();
    let stored: HashMap<Id, u64> = storage
        .list(ObjectKind::Pack)?
        .into_iter()
        .filter_map(|o| Id::from_hex(&o.name).ok().map(|id| (id, o.size)))
        .collect();
    // A claim to supersede is honoured only where it hides no pack that
    // exists (see `superseded_index_objects`).
    let summaries: Vec<IndexSummary> = files
        .iter()
        .map(|(id, f)| IndexSummary::of(&id.to_hex(), f))
        .collect();
    let superseded = superseded_index_objects(&summaries, || Ok(stored.keys().copied().collect()))?;
    let listing = repo.list_snapshots_all()?;
    let ignored_ids: HashSet<Id> = opts.ignore_snapshots.iter().copied().collect();
    if let Some((name, e)) = listing
        .unreadable
        .iter()
        .find(|(n, _)| Id::from_hex(n).map_or(true, |id| !ignored_ids.contains(&id)))
    {
        // Prune must know everything every snapshot uses: an unreadable
        // one might still reference data that repair could save.
        return Err(RepoError::Damaged(format!(
            "snapshot {name} cannot be read ({e}); prune must know what every snapshot uses: remove it with `baton forget {}` or `baton repair snapshots --forget`, then prune again",
            &name[..8.min(name.len())]
        )));
    }
    let snapshots = listing.snapshots;
    let ignored: HashSet<Id> = opts.ignore_snapshots.iter().copied().collect();
    let now = SystemTime::now();
    let mut kept_jobs = Vec::new();
    let mut dropped_jobs = Vec::new();
    for job in journal::list_job_ids(repo)? {
        let st = journal::load_job(repo, &job).map_err(|e| {
            RepoError::Damaged(format!(
                "the journal of unfinished job {} cannot be read ({e}); prune must know which packs unfinished jobs use: drop it with `baton jobs forget {}`, then prune again",
                job.short(),
                job.short()
            ))
        })?;
        if snapshots.iter().any(|(_, s)| s.job == Some(job)) {
            result.jobs_finished.push(job);
            dropped_jobs.push(job);
        } else if job_is_stale(&st, opts.max_job_age, now) {
            result.jobs_stale.push(ForgottenJob {
                id: job,
                last_record: st.last_time.clone(),
                packs: st.packs.len(),
            });
            dropped_jobs.push(job);
        } else {
            result.jobs_kept.push(job);
            kept_jobs.push(st);
        }
    }

    // (2) Mark: snapshots first (through the live index), then job catalogs
    // (through the index plus the jobs' own packs; unreadable parts skipped:
    // a resumed backup reads again whatever is missing).
    let mut index = Index::new();
    for (id, f) in &files {
        if !superseded.contains(id) {
            index.load_file(f);
        }
    }
    index.compact();
    *repo.index_mut() = index;
    let mut used = HashSet::new();
    let mut seen = HashSet::new();
    for (id, s) in snapshots.iter().filter(|(id, _)| !ignored.contains(id)) {
        result.snapshots += 1;
        mark_tree(repo, s.tree, &mut seen, &mut used, &opts.cancel).map_err(|e| {
            RepoError::Damaged(format!(
                "snapshot {}: {e}; the repository is damaged, prune changed nothing",
                id.short()
            ))
        })?;
    }
    let protected: HashSet<Id> = kept_jobs
        .iter()
        .flat_map(|j| j.packs.iter().map(|p| p.id))
        .collect();
    for p in kept_jobs.iter().flat_map(|j| &j.packs) {
        if stored.contains_key(&p.id) {
            repo.index_mut().add_pack(&journal::from_journal_pack(p));
        }
    }
    let mut wanted = HashSet::new();
    // An unfinished block backup references chunks through its segments.
    for job in &kept_jobs {
        let Some(m) = &job.manifest.image else {
            continue;
        };
        let Ok(layout) = baton_format::fixed::Layout::new(m.chunk_size, m.segment_chunks, m.size)
        else {
            continue;
        };
        for (&i, seg) in &job.segments {
            wanted.insert(*seg);
            if let Ok(b) = repo.load_blob_of(baton_types::BlobType::Fixed, seg)
                && let Ok(s) = baton_format::fixed::FixedSegment::decode(&b, &layout, i)
            {
                wanted.extend(s.chunks.into_iter().flatten());
            }
        }
    }
    for node in kept_jobs.iter().flat_map(|j| j.catalog.values()) {
        wanted.extend(node.content.iter().copied());
        if let Some(root) = node.image
            && let Ok(img) = baton_repo::image::ImageIndex::load(repo, &root)
        {
            let _ = img.referenced(repo, &mut wanted);
        }
        if let Some(t) = node.subtree {
            let _ = mark_tree(repo, t, &mut seen, &mut wanted, &opts.cancel);
        }
    }

    // (3) Plan. Copies known damaged are no copies: they never own a blob
    // (a fresh copy elsewhere does), so their bytes count as unused.
    let damaged: HashSet<(Id, Id)> = files
        .iter()
        .filter(|(id, _)| !superseded.contains(id))
        .flat_map(|(_, f)| f.damaged.iter().copied())
        .collect();
    // But a copy marked damaged that is the only copy of its blob stays,
    // with its whole pack (never repacked: reading it may fail): the mark
    // may be wrong (a faulty read, or an append-only key's doing), and
    // deleting the only copy would lose what a repair could still save.
    let live_files = || files.iter().filter(|(id, _)| !superseded.contains(id));
    let healthy: HashSet<Id> = live_files()
        .flat_map(|(_, f)| &f.packs)
        .filter(|p| stored.contains_key(&p.id))
        .flat_map(|p| {
            p.blobs
                .iter()
                .filter(|e| !damaged.contains(&(p.id, e.id)))
                .map(|e| e.id)
        })
        .collect();
    let mut packs: Vec<PackInfo> = Vec::new();
    let mut listed = HashSet::new();
    for (_, f) in live_files() {
        for p in &f.packs {
            if listed.insert(p.id) {
                let only_copy = |e: &&baton_format::pack::PackEntry| {
                    damaged.contains(&(p.id, e.id)) && !healthy.contains(&e.id)
                };
                let last_resort = p.blobs.iter().any(|e| only_copy(&e));
                packs.push(PackInfo {
                    id: p.id,
                    size: stored.get(&p.id).copied(),
                    entries: p
                        .blobs
                        .iter()
                        .filter(|e| !damaged.contains(&(p.id, e.id)) || only_copy(e))
                        .copied()
                        .collect(),
                    protected: protected.contains(&p.id) || last_resort,
                });
            }
        }
    }
    let plan = plan::plan(&packs, &used, &wanted, opts.max_unused)?;
    result.stats = plan.stats.clone();
    let mut unreferenced = Vec::new();
    for (id, size) in &stored {
        if listed.contains(id) {
            continue;
        }
        if protected.contains(id) {
            result.job_packs += 1;
        } else {
            unreferenced.push(*id);
            result.stats.packs_unreferenced += 1;
            result.stats.bytes_unreferenced += size;
        }
    }
    unreferenced.sort();
    let st = &result.stats;
    let deleted = st.bytes_delete + st.bytes_repack + st.bytes_unreferenced;
    let index_changes = st.packs_delete + st.packs_repack + st.packs_missing > 0;
    result.index_written = index_changes;
    if opts.dry_run {
        result.bytes_deleted = deleted;
        result.bytes_freed = deleted.saturating_sub(st.bytes_rewrite);
        repo.load_index()?;
        return Ok(result);
    }

    // (4) Execute. Journals first: their packs become unreferenced garbage.
    opts.cancel.check()?;
    for job in &dropped_jobs {
        opts.cancel.check()?;
        lock.ensure_fresh()?;
        journal::forget_job(repo, job)?;
    }
    progress.set_total(0, result.stats.bytes_rewrite);
    let (new_packs, new_bytes) =
        repack::repack(repo, lock, &packs, &plan.copy, progress, &opts.cancel)?;
    result.packs_written = new_packs.len();
    result.bytes_written = new_bytes;
    let old_index: Vec<Id> = if index_changes {
        let mut kept: Vec<IndexPack> = packs
            .iter()
            .zip(&plan.fates)
            .filter(|(_, f)| **f == Fate::Keep)
            .map(|(p, _)| IndexPack {
                id: p.id,
                blobs: p.entries.clone(),
            })
            .collect();
        // Known damage stays known for the packs that stay.
        let kept_ids: HashSet<Id> = kept.iter().map(|p| p.id).collect();
        let mut damaged: Vec<(Id, Id)> = files
            .iter()
            .flat_map(|(_, f)| f.damaged.iter().copied())
            .filter(|(p, _)| kept_ids.contains(p))
            .collect();
        damaged.sort();
        damaged.dedup();
        kept.extend(new_packs);
        let idx = IndexFile {
            supersedes: index_names.clone(),
            packs: kept,
            damaged,
        };
        // The new index is durable before anything it replaces is deleted.
        let (_, n) = repo.save_object(ObjectKind::Index, &idx.encode())?;
        result.bytes_written += n;
        index_names
    } else {
        // Nothing indexed changes: only already superseded index objects
        // (left by an interrupted prune) go.
        index_names
            .into_iter()
            .filter(|id| superseded.contains(id))
            .collect()
    };
    // Deleted in batches (one request per batch on S3), the lock checked
    // and cancellation honoured between batches.
    let names: Vec<String> = old_index.iter().map(Id::to_hex).collect();
    // What the replaced index objects held counts as freed too.
    let old_index_bytes: u64 = if names.is_empty() {
        0
    } else {
        let wanted: HashSet<&String> = names.iter().collect();
        storage
            .list(ObjectKind::Index)?
            .iter()
            .filter(|o| wanted.contains(&o.name))
            .map(|o| o.size)
            .sum()
    };
    for batch in names.chunks(DELETE_BATCH) {
        opts.cancel.check()?;
        lock.ensure_fresh()?;
        storage.remove_many(ObjectKind::Index, batch)?;
    }
    let obsolete: Vec<String> = packs
        .iter()
        .zip(&plan.fates)
        .filter(|(_, f)| matches!(f, Fate::Delete | Fate::Repack))
        .map(|(p, _)| p.id)
        .chain(unreferenced)
        .map(|id| id.to_hex())
        .collect();
    for batch in obsolete.chunks(DELETE_BATCH) {
        opts.cancel.check()?;
        lock.ensure_fresh()?;
        storage.remove_many(ObjectKind::Pack, batch)?;
    }
    result.bytes_deleted = deleted + old_index_bytes;
    result.bytes_freed = result.bytes_deleted.saturating_sub(result.bytes_written);
    repo.load_index()?;
    Ok(result)
}
