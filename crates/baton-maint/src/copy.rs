//! `baton copy`: snapshots from one repository into another (restic's
//! `copy`). Only the blobs the destination lacks are stored there; the
//! destination may have another password and another master key.
//!
//! Blob ids are keyed hashes (design §3), so a blob's id in the destination
//! depends on the destination's MAC key. When both repositories share it
//! (`init --from-repo --copy-chunker-params` makes one that does), ids are
//! kept and a blob the destination already holds is never read from the
//! source. Otherwise every blob of a snapshot is read and hashed again, and
//! the trees and block-image indexes that name blobs are written anew with
//! the new ids; what the destination holds is still not stored twice.
//!
//! Resuming: each pack stored in the destination gets its index object at
//! once, so a copy killed midway and run again finds those blobs present. A
//! pack stored in the instant before its index object (or by any other
//! interrupted writer) is found at the start of the next copy, by listing
//! the packs no index names and reading their headers with the destination's
//! key: nothing stored is stored again.
//!
//! A copy names its source snapshot in `original`; a snapshot that already
//! has a copy in the destination (the same source id) is not copied again.
//! `tag` and `rewrite` of a copy keep that name.

use crate::repair::read_pack_header;
use baton_format::fixed::{FixedRoot, FixedSegment};
use baton_format::index::{IndexFile, IndexPack};
use baton_format::object::to_json;
use baton_repo::pipeline::{Job, Pipeline, PipelineConfig};
use baton_repo::progress::{Cancel, Progress};
use baton_repo::{RepoError, Repository, Result};
use baton_storage::ObjectKind;
use baton_types::{BlobType, Id, Node, NodeKind, Snapshot, Tree};
use std::collections::{HashMap, HashSet};

/// Options of `baton copy`.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// Find what would be copied and how much the destination lacks; store
    /// nothing.
    pub dry_run: bool,
}

/// One source snapshot copied (or, in a dry run, to copy).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CopiedSnapshot {
    pub source: Id,
    /// The copy's id in the destination; `None` in a dry run.
    pub copy: Option<Id>,
    /// Blobs of this snapshot the destination lacked (stored now).
    pub blobs_sent: u64,
    /// Their plaintext bytes.
    pub bytes_sent: u64,
}

/// A source snapshot that already had a copy in the destination.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AlreadyCopied {
    pub source: Id,
    pub copy: Id,
}

/// What `copy` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CopyReport {
    pub copied: Vec<CopiedSnapshot>,
    pub already_copied: Vec<AlreadyCopied>,
    /// Whether the two repositories name blobs alike (the same MAC key).
    pub same_ids: bool,
    /// Blobs stored in the destination (data, trees, image indexes).
    pub blobs_sent: u64,
    /// Their plaintext bytes.
    pub bytes_sent: u64,
    /// Blobs the destination already held.
    pub blobs_present: u64,
    /// Blobs read from the source (with another MAC key, also those present).
    pub blobs_read: u64,
    /// Packs stored in the destination, and their bytes.
    pub packs_stored: u64,
    pub pack_bytes_stored: u64,
    /// Packs an interrupted run had stored without an index object, indexed
    /// now (their blobs are not sent again).
    pub packs_adopted: u64,
}

/// Copies `snapshots` of `src` (whose index is loaded, under the caller's
/// lock) into `dst`, under a shared lock of `dst` (as a backup).
pub fn copy(
    src: &Repository,
    dst: &mut Repository,
    snapshots: &[(Id, Snapshot)],
    opts: &CopyOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<CopyReport> {
    if src.config().id == dst.config().id {
        return Err(RepoError::Invalid(
            "the source and the destination are the same repository".into(),
        ));
    }
    let lock = dst.lock(false)?;
    lock.abort_on_loss(cancel);
    dst.load_index()?;
    let mut report = CopyReport {
        same_ids: same_ids(src, dst),
        ..CopyReport::default()
    };
    if !opts.dry_run {
        report.packs_adopted = adopt_unindexed_packs(dst, cancel)?;
    }
    // Copies already in the destination, by the source snapshot they name.
    let mut copies: HashMap<Id, Id> = HashMap::new();
    for (id, s) in dst.list_snapshots()? {
        if let Some(o) = s.original {
            copies.entry(o).or_insert(id);
        }
    }
    let mut todo = Vec::new();
    let mut seen = HashSet::new();
    for (id, snap) in snapshots {
        if !seen.insert(*id) {
            continue;
        }
        match copies.get(id) {
            Some(c) => report.already_copied.push(AlreadyCopied {
                source: *id,
                copy: *c,
            }),
            None => todo.push((*id, snap)),
        }
    }
    if todo.is_empty() {
        drop(lock);
        return Ok(report);
    }
    progress.phase("copying");
    let dst_ref: &Repository = dst;
    let cfg = PipelineConfig {
        storage: &**dst_ref.storage(),
        key: dst_ref.key(),
        repository: dst_ref.config().id,
        compression: dst_ref.config().compression,
        pack_size: dst_ref.config().pack_size,
        dry_run: opts.dry_run,
        workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        flush_age: std::time::Duration::from_secs(5),
    };
    let mut stored_packs: Vec<IndexPack> = Vec::new();
    let outcome = std::thread::scope(|scope| -> Result<()> {
        let pipeline = Pipeline::start(scope, cfg);
        let mut c = Copier {
            src,
            dst: dst_ref,
            same: report.same_ids,
            pipeline: &pipeline,
            cancel,
            progress,
            trees: HashMap::new(),
            data: HashMap::new(),
            sent: HashSet::new(),
            stats: Stats::default(),
            stored: &mut stored_packs,
            dry_run: opts.dry_run,
        };
        let walked = (|| -> Result<Vec<(Id, Id, Stats)>> {
            let mut roots = Vec::new();
            for (id, snap) in &todo {
                let before = c.stats.clone();
                let root = c.tree(snap.tree, 0)?;
                c.index_stored()?;
                roots.push((*id, root, c.stats.since(&before)));
            }
            Ok(roots)
        })();
        // Whatever happened, what is queued is stored and indexed: a
        // failed or cancelled copy keeps what it sent.
        let rest = pipeline.drain();
        let indexed = c.index_packs(rest);
        let stats = c.stats.clone();
        drop(c);
        let out = pipeline.finish();
        let roots = walked?;
        indexed?;
        let out = out?;
        report.packs_stored = stored_packs.len() as u64;
        report.pack_bytes_stored = out.bytes_stored;
        report.blobs_sent = stats.sent;
        report.bytes_sent = stats.sent_bytes;
        report.blobs_present = stats.present;
        report.blobs_read = stats.read;
        for (source, root, s) in roots {
            report.copied.push(CopiedSnapshot {
                source,
                copy: Some(root),
                blobs_sent: s.sent,
                bytes_sent: s.sent_bytes,
            });
        }
        Ok(())
    });
    for p in &stored_packs {
        dst.index_mut().add_pack(p);
    }
    outcome?;
    // Snapshots last: each names a tree whose every blob is now indexed.
    for (entry, (_, snap)) in report.copied.iter_mut().zip(&todo) {
        let root = entry.copy.take().expect("set above");
        if opts.dry_run {
            continue;
        }
        cancel.check()?;
        let mut s = (*snap).clone();
        s.tree = root;
        s.original = Some(entry.source);
        // Ids of the source repository mean nothing here.
        s.parent = None;
        s.job = None;
        let (id, _) = dst.save_snapshot(&s)?;
        entry.copy = Some(id);
    }
    drop(lock);
    Ok(report)
}

/// Whether both repositories' MAC keys are the same (then blob ids are).
fn same_ids(a: &Repository, b: &Repository) -> bool {
    const PROBE: &[u8] = b"baton copy: do these repositories name blobs alike?";
    a.key().blob_id(PROBE) == b.key().blob_id(PROBE)
}

/// Indexes the packs in `dst`'s storage that no index object names and
/// whose header opens with its key; returns how many.
fn adopt_unindexed_packs(dst: &mut Repository, cancel: &Cancel) -> Result<u64> {
    let listed = dst.storage().list(ObjectKind::Pack)?;
    let mut found = Vec::new();
    for o in listed {
        cancel.check()?;
        let Ok(id) = Id::from_hex(&o.name) else {
            continue;
        };
        if dst.index().has_pack(&id) {
            continue;
        }
        // A header that does not open is damage or another key's: left to
        // `check` and `repair`.
        if let Ok(blobs) = read_pack_header(dst, &o.name, o.size) {
            found.push(IndexPack { id, blobs });
        }
    }
    let n = found.len() as u64;
    if !found.is_empty() {
        baton_repo::journal::save_packs_index(dst, found)?;
    }
    Ok(n)
}

#[derive(Debug, Clone, Default)]
struct Stats {
    sent: u64,
    sent_bytes: u64,
    present: u64,
    read: u64,
}

impl Stats {
    fn since(&self, before: &Stats) -> Stats {
        Stats {
            sent: self.sent - before.sent,
            sent_bytes: self.sent_bytes - before.sent_bytes,
            present: self.present - before.present,
            read: self.read - before.read,
        }
    }
}

struct Copier<'a, 'p> {
    src: &'a Repository,
    dst: &'a Repository,
    same: bool,
    pipeline: &'a Pipeline<'p>,
    cancel: &'a Cancel,
    progress: &'a dyn Progress,
    /// Source tree → destination tree, for trees done.
    trees: HashMap<Id, Id>,
    /// Source blob → destination blob (with another MAC key).
    data: HashMap<Id, Id>,
    /// Destination ids queued in this run.
    sent: HashSet<Id>,
    stats: Stats,
    /// Packs stored and indexed so far.
    stored: &'a mut Vec<IndexPack>,
    dry_run: bool,
}

impl Copier<'_, '_> {
    fn present(&self, id: &Id) -> bool {
        self.sent.contains(id) || self.dst.index().contains(id)
    }

    /// Queues a blob for the destination unless it holds it already.
    fn send(&mut self, blob_type: BlobType, id: Id, data: Vec<u8>) -> Result<()> {
        if self.present(&id) {
            self.stats.present += 1;
            return Ok(());
        }
        self.sent.insert(id);
        self.stats.sent += 1;
        self.stats.sent_bytes += data.len() as u64;
        if !self.pipeline.send(Job {
            blob_type,
            id,
            data,
        }) {
            // The pipeline failed; its error comes from `finish`.
            return Err(RepoError::Internal(
                "the destination's writer stopped".into(),
            ));
        }
        self.index_stored()
    }

    /// Writes an index object for the packs stored since the last call.
    fn index_stored(&mut self) -> Result<()> {
        let packs = self.pipeline.stored_packs();
        self.index_packs(packs)
    }

    fn index_packs(&mut self, packs: Vec<IndexPack>) -> Result<()> {
        if packs.is_empty() || self.dry_run {
            return Ok(());
        }
        let idx = IndexFile {
            supersedes: Vec::new(),
            packs,
            damaged: Vec::new(),
        };
        self.dst.save_object(ObjectKind::Index, &idx.encode())?;
        self.stored.extend(idx.packs);
        Ok(())
    }

    /// The destination id of source blob `id` of `blob_type`, stored there
    /// if missing. With shared ids a blob the destination holds is not read.
    fn blob(&mut self, blob_type: BlobType, id: Id) -> Result<Id> {
        self.cancel.check()?;
        if self.same {
            if self.present(&id) {
                self.stats.present += 1;
                return Ok(id);
            }
            let plain = self.src.load_blob_of(blob_type, &id)?;
            self.stats.read += 1;
            self.progress.bytes(plain.len() as u64);
            self.send(blob_type, id, plain)?;
            return Ok(id);
        }
        if let Some(d) = self.data.get(&id) {
            return Ok(*d);
        }
        let plain = self.src.load_blob_of(blob_type, &id)?;
        self.stats.read += 1;
        self.progress.bytes(plain.len() as u64);
        let new = self.dst.key().blob_id(&plain);
        self.send(blob_type, new, plain)?;
        self.data.insert(id, new);
        Ok(new)
    }

    /// Copies tree `id` and everything below it; returns its id in the
    /// destination. Children are queued before their parent.
    fn tree(&mut self, id: Id, depth: usize) -> Result<Id> {
        if let Some(d) = self.trees.get(&id) {
            return Ok(*d);
        }
        if depth > baton_repo::MAX_TREE_DEPTH {
            return Err(RepoError::Damaged(format!(
                "tree {} is nested deeper than {} levels",
                id.short(),
                baton_repo::MAX_TREE_DEPTH
            )));
        }
        self.cancel.check()?;
        // Read and checked as a tree (sorted, unique, safe names) whatever
        // the destination holds: a copy is a reader of the source.
        let tree = self.src.read_tree(&id)?;
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        for n in &tree.nodes {
            nodes.push(self.node(n, depth)?);
        }
        let new = if self.same {
            // The source's bytes, so the id stays the source's.
            if self.present(&id) {
                self.stats.present += 1;
            } else {
                let plain = self.src.load_blob_of(BlobType::Tree, &id)?;
                self.stats.read += 1;
                self.send(BlobType::Tree, id, plain)?;
            }
            id
        } else {
            let json = to_json(&Tree { nodes });
            let new = self.dst.key().blob_id(&json);
            self.send(BlobType::Tree, new, json)?;
            new
        };
        self.trees.insert(id, new);
        Ok(new)
    }

    fn node(&mut self, n: &Node, depth: usize) -> Result<Node> {
        let mut n = n.clone();
        for c in &mut n.content {
            *c = self.blob(BlobType::Data, *c)?;
        }
        if let (NodeKind::Dir, Some(sub)) = (n.kind, n.subtree) {
            n.subtree = Some(self.tree(sub, depth + 1)?);
        }
        if let (NodeKind::Image, Some(root)) = (n.kind, n.image) {
            n.image = Some(self.image(&n, root)?);
        }
        Ok(n)
    }

    /// Copies a block image's fixed index and chunks; returns the root's id.
    fn image(&mut self, n: &Node, root_id: Id) -> Result<Id> {
        let idx = baton_repo::image::ImageIndex::of_node(self.src, n)?;
        let mut segments = Vec::with_capacity(idx.root.segments.len());
        for (s, seg_id) in idx.root.segments.iter().enumerate() {
            let seg = idx.segment(self.src, s as u64)?;
            let mut chunks = Vec::with_capacity(seg.chunks.len());
            for c in &seg.chunks {
                chunks.push(match c {
                    Some(c) => Some(self.blob(BlobType::Data, *c)?),
                    None => None,
                });
            }
            if self.same {
                self.blob(BlobType::Fixed, *seg_id)?;
                segments.push(*seg_id);
            } else {
                let bytes = FixedSegment {
                    first_chunk: seg.first_chunk,
                    chunks,
                }
                .encode();
                let new = self.dst.key().blob_id(&bytes);
                self.send(BlobType::Fixed, new, bytes)?;
                segments.push(new);
            }
        }
        if self.same {
            return self.blob(BlobType::Fixed, root_id);
        }
        let bytes = FixedRoot {
            layout: idx.root.layout,
            segments,
        }
        .encode();
        let new = self.dst.key().blob_id(&bytes);
        self.send(BlobType::Fixed, new, bytes)?;
        Ok(new)
    }
}

/// Checks that every blob of the tree `root` is in `repo` (whose index is
/// loaded): each tree and image index is read and authenticated, each data
/// blob found in the index. The second site's proof that a copy arrived
/// whole; returns how many blobs it holds.
pub fn verify_complete(repo: &Repository, root: Id, cancel: &Cancel) -> Result<u64> {
    let mut seen: HashSet<Id> = HashSet::new();
    let mut todo = vec![(root, 0usize)];
    let missing =
        |id: &Id| RepoError::Damaged(format!("blob {} of the copy is not there", id.short()));
    while let Some((id, depth)) = todo.pop() {
        cancel.check()?;
        if !seen.insert(id) {
            continue;
        }
        if depth > baton_repo::MAX_TREE_DEPTH {
            return Err(RepoError::Damaged(format!(
                "tree {} is nested deeper than {} levels",
                id.short(),
                baton_repo::MAX_TREE_DEPTH
            )));
        }
        let tree = repo.read_tree(&id)?;
        for n in &tree.nodes {
            for c in &n.content {
                if seen.insert(*c) && !repo.index().contains(c) {
                    return Err(missing(c));
                }
            }
            if let (NodeKind::Dir, Some(sub)) = (n.kind, n.subtree) {
                todo.push((sub, depth + 1));
            }
            if n.kind == NodeKind::Image {
                let idx = baton_repo::image::ImageIndex::of_node(repo, n)?;
                let mut ids = Vec::new();
                idx.referenced(repo, &mut ids)?;
                for c in ids {
                    if seen.insert(c) && !repo.index().contains(&c) {
                        return Err(missing(&c));
                    }
                }
            }
        }
    }
    Ok(seen.len() as u64)
}
