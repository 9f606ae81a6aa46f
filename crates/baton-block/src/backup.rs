//! `baton backup --block`: a device, an image file or a stream cut into
//! fixed-size chunks, stored in the same repository as file backups.
//!
//! Chunk `i` covers bytes `[i * chunk_size, (i + 1) * chunk_size)`. A chunk
//! that is all zeros, or that the source reports as a hole (`SEEK_DATA`), is
//! not read or stored: the fixed index records a hole. Every other chunk is
//! hashed with the repository's keyed hash and stored only if the repository
//! does not hold it yet, so a backup of an image whose previous backup is in
//! the repository stores only the chunks that changed.
//!
//! Crash consistency is the file backup's: packs are stored durably as they
//! fill; each completed fixed index segment becomes durable once its pack
//! and the packs of all its new chunks are stored, and is then journaled
//! (`segments` of a journal record). A run killed at any point resumes after
//! the last journaled segment. The snapshot, written after the root and the
//! index object, is the commit point.

use baton_format::fixed::{FixedRoot, FixedSegment, Layout, SEGMENT_CHUNKS};
use baton_format::index::IndexPack;
use baton_format::object::to_json;
use baton_repo::journal::{self, JournalWriter};
use baton_repo::pipeline::{Job, Pipeline, PipelineConfig};
use baton_repo::progress::{Cancel, Progress};
use baton_repo::repo::{hostname, in_future, now_rfc3339, username};
use baton_repo::{RepoError, Repository, Result};
use baton_types::{
    BlobType, FsName, Id, ImageManifest, JobManifest, JournalSegment, Node, NodeKind, Snapshot,
    SnapshotSummary, Tree,
};
use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where a block backup reads from.
pub enum BlockSource<'a> {
    /// A block device or a raw image file.
    Path(PathBuf),
    /// A stream of unknown length (not resumable: nothing can be re-read).
    Stream(&'a mut (dyn Read + Send)),
}

/// Options of `baton backup --block`.
#[derive(Debug, Clone)]
pub struct BlockBackupOptions {
    /// The image's name in the snapshot (default: the source's file name,
    /// or `stdin.img` for a stream).
    pub name: Option<String>,
    pub chunk_size: u32,
    pub tags: Vec<String>,
    pub host: Option<String>,
    /// The snapshot's time instead of the backup's start (RFC 3339).
    pub time: Option<String>,
    /// Resume an unfinished job of the same host, source and size.
    pub resume: bool,
    /// Read an image file even if it looks unchanged since the parent.
    pub force: bool,
    /// Longest time between journal records while progress is made.
    pub checkpoint_interval: Duration,
}

impl Default for BlockBackupOptions {
    fn default() -> Self {
        BlockBackupOptions {
            name: None,
            chunk_size: baton_format::fixed::DEFAULT_CHUNK_SIZE,
            tags: Vec::new(),
            host: None,
            time: None,
            resume: true,
            force: false,
            checkpoint_interval: Duration::from_secs(5),
        }
    }
}

/// What a block backup produced.
#[derive(Debug, Clone)]
pub struct BlockBackupResult {
    pub snapshot_id: Id,
    pub snapshot: Snapshot,
    /// Chunks of the image, holes among them, and chunks stored new.
    pub chunks: u64,
    pub holes: u64,
    pub chunks_new: u64,
    /// Chunks that differ from the parent snapshot's image (all, without one).
    pub chunks_changed: u64,
    pub warnings: Vec<String>,
}

/// Reads the source: a file/device with positioned reads, or a stream.
enum Reader<'a> {
    File(File),
    Stream(&'a mut (dyn Read + Send)),
}

impl Reader<'_> {
    /// Fills `buf` from `offset` (a stream is read in order); returns the
    /// bytes read, short only at the end.
    fn read_chunk(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            let r = match self {
                Reader::File(f) => f.read_at(&mut buf[n..], offset + n as u64),
                Reader::Stream(s) => s.read(&mut buf[n..]),
            };
            match r {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Whether `[offset, offset + len)` is a hole the source reports
    /// (`SEEK_DATA` finds no data in it). False where not supported.
    fn is_hole(&self, offset: u64, len: u64) -> bool {
        let Reader::File(f) = self else { return false };
        use nix::unistd::{Whence, lseek};
        match lseek(f, offset as i64, Whence::SeekData) {
            Ok(next) => next as u64 >= offset + len,
            // ENXIO: no data at or after offset, or offset past the end (a
            // file that shrank: then it is read, and found short).
            Err(nix::errno::Errno::ENXIO) => f
                .metadata()
                .is_ok_and(|m| m.file_type().is_block_device() || m.len() >= offset + len),
            Err(_) => false,
        }
    }
}

/// Size of an image file or block device.
fn source_size(f: &File, path: &Path) -> Result<u64> {
    let m = f.metadata().map_err(|e| RepoError::io(path, e))?;
    if m.file_type().is_block_device() {
        use std::io::Seek;
        let mut f = f;
        return f
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| RepoError::io(path, e));
    }
    if !m.is_file() {
        return Err(RepoError::Invalid(format!(
            "{} is neither a block device nor a regular file (use - for standard input)",
            path.display()
        )));
    }
    Ok(m.len())
}

fn node_for(name: &str, meta: Option<&std::fs::Metadata>, size: u64, root: Id) -> Node {
    let (mode, uid, gid, mtime_ns) = match meta {
        Some(m) => (
            m.mode() & 0o7777,
            m.uid(),
            m.gid(),
            m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ),
        None => (0o600, nix::unistd::getuid().as_raw(), 0, 0),
    };
    // What tells an unchanged image file (as for files, §10); a block
    // device's node times say nothing about its content and are not kept.
    let (ctime_ns, inode, device_id) = match meta.filter(|m| m.is_file()) {
        Some(m) => (m.ctime() * 1_000_000_000 + m.ctime_nsec(), m.ino(), m.dev()),
        None => (0, 0, 0),
    };
    Node {
        name: FsName(name.as_bytes().to_vec()),
        kind: NodeKind::Image,
        mode,
        uid,
        gid,
        user: None,
        group: None,
        mtime_ns,
        atime_ns: 0,
        ctime_ns,
        inode,
        device_id,
        links: 1,
        size,
        rdev: 0,
        content: Vec::new(),
        subtree: None,
        link_target: None,
        xattrs: Vec::new(),
        image: Some(root),
    }
}

/// The image node of a snapshot whose tree holds exactly one image, or the
/// one named `name`.
pub fn find_image(repo: &Repository, snapshot: &Snapshot, name: Option<&str>) -> Result<Node> {
    let tree = repo.load_tree(&snapshot.tree)?;
    let images: Vec<&Node> = tree
        .nodes
        .iter()
        .filter(|n| n.kind == NodeKind::Image)
        .collect();
    match name {
        Some(want) => images
            .into_iter()
            .find(|n| n.name.0 == want.trim_start_matches('/').as_bytes())
            .cloned()
            .ok_or_else(|| {
                RepoError::NotFound(format!("the snapshot has no image named {want:?}"))
            }),
        None => match images.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(RepoError::Invalid(
                "the snapshot holds no block image (it is a file backup)".into(),
            )),
            _ => Err(RepoError::Invalid(
                "the snapshot holds several images: name one as SNAPSHOT:IMAGE".into(),
            )),
        },
    }
}

/// A segment waiting for its blobs to become durable.
struct Pending {
    index: u64,
    id: Id,
    needs: Vec<Id>,
}

/// Tracks which new blobs are durably stored, and journals segments (in
/// order) once everything they reference is.
struct Durability {
    writer: Option<JournalWriter>,
    durable: HashSet<Id>,
    pending: VecDeque<Pending>,
    packs: Vec<IndexPack>,
    unjournaled: Vec<IndexPack>,
    segments_done: u64,
    last_record: Instant,
}

impl Durability {
    fn absorb(&mut self, packs: Vec<IndexPack>) {
        for p in packs {
            self.durable.extend(p.blobs.iter().map(|b| b.id));
            self.unjournaled.push(p.clone());
            self.packs.push(p);
        }
    }

    /// Journals what became durable (a record after every pack, and at
    /// least every `interval` while segments complete).
    fn checkpoint(&mut self, repo: &Repository, layout: &Layout, interval: Duration) -> Result<()> {
        let mut ready: Vec<JournalSegment> = Vec::new();
        while let Some(p) = self.pending.front() {
            if p.needs.iter().all(|n| self.durable.contains(n)) {
                let p = self.pending.pop_front().expect("front exists");
                for n in &p.needs {
                    self.durable.remove(n);
                }
                ready.push(JournalSegment {
                    index: p.index,
                    id: p.id,
                });
            } else {
                break;
            }
        }
        let Some(w) = &mut self.writer else {
            return Ok(());
        };
        if self.unjournaled.is_empty()
            && (ready.is_empty() || self.last_record.elapsed() < interval)
        {
            // Nothing new durable yet, or too soon: keep the segments.
            for s in ready.into_iter().rev() {
                self.pending.push_front(Pending {
                    index: s.index,
                    id: s.id,
                    needs: Vec::new(),
                });
            }
            return Ok(());
        }
        if let Some(last) = ready.last() {
            self.segments_done = last.index + 1;
        }
        let position =
            (self.segments_done * u64::from(layout.segment_chunks) * u64::from(layout.chunk_size))
                .min(layout.image_size);
        let packs = std::mem::take(&mut self.unjournaled)
            .iter()
            .map(journal::to_journal_pack)
            .collect();
        w.append_segments(repo, packs, position, ready)?;
        self.last_record = Instant::now();
        Ok(())
    }
}

/// Runs a block backup of `source`.
pub fn backup_block(
    repo: &mut Repository,
    source: BlockSource<'_>,
    opts: &BlockBackupOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<BlockBackupResult> {
    let start = Instant::now();
    progress.phase("reading");
    let start_time = now_rfc3339();
    let snapshot_time = baton_repo::repo::snapshot_time(opts.time.as_deref(), &start_time)?;
    // Checked before anything is written.
    Layout::new(opts.chunk_size, SEGMENT_CHUNKS, 0)
        .map_err(|e| RepoError::Invalid(format!("--block-size: {e}")))?;
    let (mut reader, meta, size, path_str, default_name) = match source {
        BlockSource::Path(p) => {
            let abs = std::path::absolute(&p).map_err(|e| RepoError::io(&p, e))?;
            let f = File::open(&abs).map_err(|e| {
                RepoError::NotFound(format!("block source {} cannot be read: {e}", p.display()))
            })?;
            let size = source_size(&f, &abs)?;
            let meta = f.metadata().map_err(|e| RepoError::io(&abs, e))?;
            let name = abs
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into());
            let path = abs.to_string_lossy().into_owned();
            (Reader::File(f), Some(meta), Some(size), path, name)
        }
        BlockSource::Stream(s) => (
            Reader::Stream(s),
            None,
            None,
            String::new(),
            "stdin.img".into(),
        ),
    };
    let name = opts.name.clone().unwrap_or(default_name);
    if !baton_types::safe_name(name.as_bytes()) {
        return Err(RepoError::Invalid(format!(
            "image name {name:?} must be a plain file name"
        )));
    }
    let paths = vec![if path_str.is_empty() {
        format!("/{name}")
    } else {
        path_str
    }];
    let host = opts.host.clone().unwrap_or_else(hostname);

    let lock = repo.lock(false)?;
    lock.abort_on_loss(cancel);
    repo.load_index()?;
    let snapshots = repo.list_snapshots()?;

    // The parent: the newest snapshot of this host and source with an image
    // of this name (for the changed-chunk count; deduplication needs none).
    let mut warnings = Vec::new();
    let parent = snapshots
        .iter()
        .rev()
        .filter(|(_, s)| s.hostname == host && s.paths == paths && !in_future(&s.time))
        .find_map(|(id, s)| {
            let n = find_image(repo, s, Some(&name)).ok()?;
            let img = baton_repo::image::ImageIndex::of_node(repo, &n).ok()?;
            Some((*id, img, n))
        });
    // An image file whose size, times, inode and device are the parent's
    // is not read again (as an unchanged file); `force` reads it anyway.
    let unchanged = parent.as_ref().is_some_and(|(_, img, n)| {
        let now = meta
            .as_ref()
            .filter(|m| m.is_file())
            .map(|m| node_for(&name, Some(m), m.len(), img.root_id));
        !opts.force
            && img.layout().chunk_size == opts.chunk_size
            && img.layout().segment_chunks == SEGMENT_CHUNKS
            && now.is_some_and(|now| {
                now.size == n.size
                    && now.mtime_ns == n.mtime_ns
                    && now.ctime_ns == n.ctime_ns
                    && now.inode == n.inode
                    && now.device_id == n.device_id
                    && n.inode != 0
            })
    });
    let parent = parent.map(|(id, img, _)| (id, img));
    if let Some((pid, p)) = &parent
        && p.layout().chunk_size != opts.chunk_size
    {
        warnings.push(format!(
            "the parent snapshot {} was cut into {} byte chunks, this backup into {}: nothing deduplicates",
            pid.short(),
            p.layout().chunk_size,
            opts.chunk_size
        ));
    }

    let image_manifest = size.map(|size| ImageManifest {
        name: name.clone(),
        size,
        chunk_size: opts.chunk_size,
        segment_chunks: SEGMENT_CHUNKS,
    });
    let manifest = JobManifest {
        hostname: host.clone(),
        paths: paths.clone(),
        tags: opts.tags.clone(),
        parent: parent.as_ref().map(|(id, _)| *id),
        started: start_time.clone(),
        image: image_manifest.clone(),
    };
    let journaled = image_manifest.is_some();
    let resumed = if journaled && opts.resume && !unchanged {
        journal::find_resumable(repo, &lock, &snapshots, |m| {
            m.hostname == manifest.hostname
                && m.paths == manifest.paths
                && m.image == manifest.image
        })?
    } else {
        None
    };
    let mut earlier_packs = Vec::new();
    let mut segments: Vec<Id> = Vec::new();
    if unchanged && let Some((_, p)) = &parent {
        segments = p.root.segments.clone();
    }
    if let Some(job) = &resumed {
        earlier_packs = journal::reindex_job_packs(repo, job);
        // Resume after the journaled segments, from the first, each in
        // its place, readable, and with every chunk still indexed (a pack
        // lost since would make the image unreadable there).
        let layout = Layout::new(opts.chunk_size, SEGMENT_CHUNKS, size.unwrap_or(0))
            .map_err(|e| RepoError::Invalid(format!("image: {e}")))?;
        while let Some(seg) = job.segments.get(&(segments.len() as u64)) {
            let place = segments.len() as u64;
            let usable = repo
                .load_blob_of(BlobType::Fixed, seg)
                .ok()
                .and_then(|b| FixedSegment::decode(&b, &layout, place).ok())
                .is_some_and(|s| s.chunks.iter().flatten().all(|c| repo.index().contains(c)));
            if !usable {
                break;
            }
            segments.push(*seg);
        }
    }
    let writer = if journaled {
        Some(journal::start_or_resume(
            repo,
            &lock,
            resumed.as_ref(),
            manifest.clone(),
        )?)
    } else {
        None
    };
    let job_id = writer.as_ref().map(JournalWriter::job);

    let repo_ref: &Repository = repo;
    let cfg = PipelineConfig {
        storage: &**repo_ref.storage(),
        key: repo_ref.key(),
        repository: repo_ref.config().id,
        compression: repo_ref.config().compression,
        pack_size: repo_ref.config().pack_size,
        dry_run: false,
        workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        flush_age: opts.checkpoint_interval.max(Duration::from_secs(1)),
    };
    let chunk_size = opts.chunk_size;
    let mut stats = Stats::default();
    let resumed_segments = if unchanged { 0 } else { segments.len() as u64 };
    let (run, packed) = std::thread::scope(|s| {
        let pipe = Pipeline::start(s, cfg);
        let mut d = Durability {
            writer,
            durable: HashSet::new(),
            pending: VecDeque::new(),
            packs: Vec::new(),
            unjournaled: Vec::new(),
            segments_done: resumed_segments,
            last_record: Instant::now(),
        };
        let r = read_image(
            repo_ref,
            &pipe,
            &mut reader,
            ReadPlan {
                chunk_size,
                size,
                parent: parent.as_ref().map(|(_, p)| p),
                interval: opts.checkpoint_interval,
            },
            &mut segments,
            &mut d,
            &mut stats,
            progress,
            cancel,
        );
        let r = r.and_then(|layout| {
            let root = FixedRoot {
                layout,
                segments: segments.clone(),
            };
            let bytes = root.encode();
            let root_id = repo_ref.key().blob_id(&bytes);
            send(repo_ref, &pipe, BlobType::Fixed, root_id, bytes, &mut stats)?;
            let node = node_for(&name, meta.as_ref(), layout.image_size, root_id);
            let tree = Tree { nodes: vec![node] };
            let tree_bytes = to_json(&tree);
            let tree_id = repo_ref.key().blob_id(&tree_bytes);
            send(
                repo_ref,
                &pipe,
                BlobType::Tree,
                tree_id,
                tree_bytes,
                &mut stats,
            )?;
            Ok((tree_id, layout))
        });
        let finished = pipe.finish();
        (r.map(|x| (x, d.packs)), finished)
    });
    let packed = packed?;
    let ((tree, layout), _) = run?;

    let mut packs = earlier_packs;
    packs.extend(packed.packs);
    let bytes_stored = packed.bytes_stored + journal::save_packs_index(repo, packs)?;
    let summary = SnapshotSummary {
        files_new: u64::from(parent.is_none()),
        files_changed: u64::from(parent.is_some() && stats.changed > 0),
        files_unmodified: u64::from(parent.is_some() && stats.changed == 0),
        dirs: 0,
        others: 0,
        bytes_total: layout.image_size,
        bytes_read: stats.bytes_read,
        bytes_stored,
        blobs_new: stats.blobs_new,
        bytes_resumed: (resumed_segments
            * u64::from(layout.segment_chunks)
            * u64::from(layout.chunk_size))
        .min(layout.image_size),
        resumed_job: resumed.as_ref().map(|j| j.job),
        backup_start: start_time,
        backup_end: now_rfc3339(),
        duration_s: start.elapsed().as_secs_f64(),
        errors: Vec::new(),
    };
    let mut tags = opts.tags.clone();
    tags.sort();
    tags.dedup();
    let snapshot = Snapshot {
        time: snapshot_time,
        tree,
        paths,
        hostname: host,
        username: username(),
        tags,
        parent: parent.as_ref().map(|(id, _)| *id),
        program_version: concat!("baton ", env!("CARGO_PKG_VERSION")).to_string(),
        job: job_id,
        original: None,
        summary: Some(summary),
    };
    let (snapshot_id, _) = repo.save_snapshot(&snapshot)?;
    baton_repo::crashpoint::crashpoint("after-snapshot");
    if let Some(job) = job_id {
        journal::forget_job(repo, &job)?;
    }
    Ok(BlockBackupResult {
        snapshot_id,
        snapshot,
        chunks: layout.chunk_count(),
        holes: stats.holes,
        chunks_new: stats.chunks_new,
        chunks_changed: stats.changed,
        warnings,
    })
}

#[derive(Default)]
struct Stats {
    bytes_read: u64,
    blobs_new: u64,
    chunks_new: u64,
    holes: u64,
    changed: u64,
    /// Blobs queued in this run (not yet in the repository's index).
    queued: HashSet<Id>,
}

/// Queues a blob unless the repository or this run has it; true if new.
fn send(
    repo: &Repository,
    pipe: &Pipeline<'_>,
    blob_type: BlobType,
    id: Id,
    data: Vec<u8>,
    stats: &mut Stats,
) -> Result<bool> {
    if repo.index().contains(&id) || stats.queued.contains(&id) {
        return Ok(false);
    }
    stats.queued.insert(id);
    stats.blobs_new += 1;
    if !pipe.send(Job {
        blob_type,
        id,
        data,
    }) {
        // The pipeline failed; finish() reports why.
        return Err(RepoError::Internal("storing blobs failed".into()));
    }
    Ok(true)
}

struct ReadPlan<'a> {
    chunk_size: u32,
    /// None for a stream.
    size: Option<u64>,
    parent: Option<&'a baton_repo::image::ImageIndex>,
    interval: Duration,
}

/// Reads the image from the first segment not yet in `segments`; returns
/// its layout (for a stream, known only at the end).
#[allow(clippy::too_many_arguments)]
fn read_image(
    repo: &Repository,
    pipe: &Pipeline<'_>,
    reader: &mut Reader<'_>,
    plan: ReadPlan<'_>,
    segments: &mut Vec<Id>,
    d: &mut Durability,
    stats: &mut Stats,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Layout> {
    let cs = u64::from(plan.chunk_size);
    let seg_chunks = u64::from(SEGMENT_CHUNKS);
    let mut chunk = segments.len() as u64 * seg_chunks;
    progress.bytes((chunk * cs).min(plan.size.unwrap_or(u64::MAX)));
    let mut parent_seg: Option<(u64, FixedSegment)> = None;
    let mut current: Vec<Option<Id>> = Vec::with_capacity(SEGMENT_CHUNKS as usize);
    let mut needs: Vec<Id> = Vec::new();
    let mut end_of_stream = false;
    let mut image_size = chunk * cs;
    let layout_for = |size: u64| {
        Layout::new(plan.chunk_size, SEGMENT_CHUNKS, size)
            .map_err(|e| RepoError::Invalid(format!("image: {e}")))
    };
    if let Some(size) = plan.size {
        layout_for(size)?;
    }
    loop {
        cancel.check()?;
        if let Some(size) = plan.size
            && chunk * cs >= size
        {
            image_size = size;
            end_of_stream = true;
        }
        if !end_of_stream {
            let offset = chunk * cs;
            let want = plan.size.map_or(cs, |s| (s - offset).min(cs));
            let id = if reader.is_hole(offset, want) {
                stats.holes += 1;
                image_size = offset + want;
                None
            } else {
                let mut buf = pipe.buffer();
                buf.resize(want as usize, 0);
                let n = reader
                    .read_chunk(offset, &mut buf)
                    .map_err(|e| RepoError::Io {
                        path: format!("block source at byte {offset}"),
                        cause: e,
                    })?;
                if plan.size.is_some() && (n as u64) < want {
                    return Err(RepoError::Invalid(format!(
                        "the block source ended at byte {} while {} were expected (it shrank during the backup)",
                        offset + n as u64,
                        plan.size.unwrap_or(0)
                    )));
                }
                buf.truncate(n);
                if n == 0 {
                    end_of_stream = true;
                    None
                } else {
                    stats.bytes_read += n as u64;
                    image_size = offset + n as u64;
                    if (n as u64) < cs {
                        end_of_stream = true;
                    }
                    if buf.iter().all(|&b| b == 0) {
                        stats.holes += 1;
                        None
                    } else {
                        let id = repo.key().blob_id(&buf);
                        if send(repo, pipe, BlobType::Data, id, buf, stats)? {
                            stats.chunks_new += 1;
                            needs.push(id);
                        }
                        Some(id)
                    }
                }
            };
            if !(end_of_stream && plan.size.is_none() && id.is_none() && image_size <= offset) {
                // A chunk of the image (the stream's end reads as nothing).
                let prev = parent_chunk(repo, plan.parent, plan.chunk_size, chunk, &mut parent_seg);
                if prev != Some(id) {
                    stats.changed += 1;
                }
                current.push(id);
                chunk += 1;
                progress.bytes(want.min(image_size.saturating_sub(offset)));
            }
        }
        let full = current.len() as u64 == seg_chunks;
        if full || (end_of_stream && !current.is_empty()) {
            let seg = FixedSegment {
                first_chunk: segments.len() as u64 * seg_chunks,
                chunks: std::mem::take(&mut current),
            };
            let bytes = seg.encode();
            let id = repo.key().blob_id(&bytes);
            if send(repo, pipe, BlobType::Fixed, id, bytes, stats)? {
                needs.push(id);
            }
            d.pending.push_back(Pending {
                index: segments.len() as u64,
                id,
                needs: std::mem::take(&mut needs),
            });
            segments.push(id);
        }
        d.absorb(pipe.stored_packs());
        let layout = layout_for(plan.size.unwrap_or(image_size))?;
        d.checkpoint(repo, &layout, plan.interval)?;
        if end_of_stream {
            break;
        }
    }
    let layout = layout_for(image_size)?;
    if layout.segment_count() != segments.len() as u64 {
        return Err(RepoError::Internal(format!(
            "{} segments for {} chunks",
            segments.len(),
            layout.chunk_count()
        )));
    }
    Ok(layout)
}

/// The parent image's entry for `chunk` (`None` past its end or with
/// another chunk size), loading its segments one at a time.
fn parent_chunk(
    repo: &Repository,
    parent: Option<&baton_repo::image::ImageIndex>,
    chunk_size: u32,
    chunk: u64,
    cached: &mut Option<(u64, FixedSegment)>,
) -> Option<Option<Id>> {
    let p = parent?;
    let l = p.layout();
    if l.chunk_size != chunk_size || chunk >= l.chunk_count() {
        return None;
    }
    let (s, i) = l.segment_of(chunk);
    if cached.as_ref().is_none_or(|(c, _)| *c != s) {
        *cached = Some((s, p.segment(repo, s).ok()?));
    }
    cached
        .as_ref()
        .and_then(|(_, seg)| seg.chunks.get(i).copied())
}
