//! The write pipeline of a backup: the archiver (caller's thread) hands new
//! blobs to compression/encryption workers, which hand sealed blobs to one
//! packer thread that fills packs; each full pack goes to an uploader thread
//! that stores it (durably: the store fsyncs), so the packer fills the next
//! pack while the last one is written. Queues are bounded, so memory stays
//! flat however large the input.
//!
//! Data and metadata (tree, fixed index) blobs go to separate packs, so reading trees (browsing,
//! check, the parent of the next backup) touches few, small packs.

use crate::repo::put_content_addressed;
use crate::{RepoError, Result};
use baton_format::compress::Compressor;
use baton_format::crypto::MasterKey;
use baton_format::index::IndexPack;
use baton_format::pack::{PackWriter, seal_blob_into};
use baton_format::storage_id;
use baton_storage::{ObjectKind, Storage};
use baton_types::{BlobType, Id};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

/// Bytes of blobs queued between the archiver and the packer at most: one
/// and a half packs, within these bounds (a single larger blob is let
/// through alone). Tied to the pack size so that, as with small packs in
/// tests, the archiver never runs far ahead of what is durable.
const IN_FLIGHT_MIN: u64 = 1 << 20;
const IN_FLIGHT_MAX: u64 = 16 << 20;

/// Capacity of the blob buffers kept for reuse, at most.
const POOL_BYTES: usize = 12 << 20;
/// Pack buffers kept for reuse.
const POOLED_PACKS: usize = 1;

/// Buffers passed around the pipeline and handed back for reuse: the
/// archiver copies a new chunk into one, a worker seals into another and
/// returns the first, the packer returns the sealed one after copying it
/// into the pack, and the uploader returns pack buffers. Fresh memory for
/// every blob means page faults and zeroing, which on a VM cost as much as
/// the copies themselves, and fragments the allocator's arenas.
pub struct BufPool {
    bufs: Mutex<(Vec<Vec<u8>>, usize)>,
    limit: usize,
    max_count: usize,
}

impl BufPool {
    fn new(limit: usize, max_count: usize) -> Self {
        BufPool {
            bufs: Mutex::new((Vec::new(), 0)),
            limit,
            max_count,
        }
    }

    pub fn get(&self) -> Vec<u8> {
        let mut p = self.bufs.lock().expect("buffer pool");
        match p.0.pop() {
            Some(b) => {
                p.1 -= b.capacity();
                b
            }
            None => Vec::new(),
        }
    }

    pub fn put(&self, mut b: Vec<u8>) {
        b.clear();
        let mut p = self.bufs.lock().expect("buffer pool");
        if p.0.len() < self.max_count && p.1.saturating_add(b.capacity()) <= self.limit {
            p.1 += b.capacity();
            p.0.push(b);
        }
    }
}

/// Blobs per pack at most, so a header stays far below the reader's limit
/// (`baton_format::pack::MAX_HEADER`) even with tiny chunks.
const MAX_BLOBS_PER_PACK: usize = 100_000;

/// A new blob to store.
pub struct Job {
    pub blob_type: BlobType,
    pub id: Id,
    pub data: Vec<u8>,
}

struct Sealed {
    blob_type: BlobType,
    id: Id,
    sealed: Vec<u8>,
    raw_len: u32,
    compressed: bool,
}

/// What the packer stored.
#[derive(Default)]
pub struct PackerOutput {
    pub packs: Vec<IndexPack>,
    pub bytes_stored: u64,
}

/// Settings the pipeline needs from the repository.
pub struct PipelineConfig<'a> {
    pub storage: &'a dyn Storage,
    pub key: &'a MasterKey,
    /// The repository's id, which pack headers are bound to.
    pub repository: Id,
    pub compression: i32,
    pub pack_size: u64,
    pub dry_run: bool,
    pub workers: usize,
    /// Longest time a pack stays open before it is stored anyway.
    pub flush_age: Duration,
}

/// Counts the bytes of blobs between the archiver and the packer, so the
/// pipeline's memory is bounded in bytes, not in blobs (a blob is up to the
/// chunker's maximum, 8 MiB by default).
struct Budget {
    cap: u64,
    state: Mutex<(u64, bool)>,
    freed: Condvar,
}

impl Budget {
    /// Waits until `n` more bytes fit (or nothing else is queued). False
    /// once the packer has stopped.
    fn acquire(&self, n: u64) -> bool {
        let mut st = self.state.lock().expect("budget lock");
        while !st.1 && st.0 > 0 && st.0 + n > self.cap {
            st = self.freed.wait(st).expect("budget lock");
        }
        st.0 += n;
        !st.1
    }

    fn release(&self, n: u64) {
        let mut st = self.state.lock().expect("budget lock");
        st.0 = st.0.saturating_sub(n);
        self.freed.notify_all();
    }

    fn close(&self) {
        self.state.lock().expect("budget lock").1 = true;
        self.freed.notify_all();
    }
}

/// Closes the budget when the packer stops, however it stops.
struct CloseOnDrop<'a>(&'a Budget);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

pub struct Pipeline<'scope> {
    /// `None` once the input is closed.
    jobs: Mutex<Option<SyncSender<Job>>>,
    budget: Arc<Budget>,
    blobs: Arc<BufPool>,
    /// Each pack, once durably stored (for the journal).
    stored: Receiver<IndexPack>,
    workers: Vec<ScopedJoinHandle<'scope, ()>>,
    packer: ScopedJoinHandle<'scope, Result<()>>,
    uploader: ScopedJoinHandle<'scope, Result<PackerOutput>>,
}

/// A finished pack on its way to storage.
struct Finished {
    id: Id,
    bytes: Vec<u8>,
    pack: IndexPack,
}

impl<'scope> Pipeline<'scope> {
    pub fn start<'env>(scope: &'scope Scope<'scope, 'env>, cfg: PipelineConfig<'env>) -> Self
    where
        'env: 'scope,
    {
        let n = cfg.workers.max(1);
        // Bounded in bytes by the budget; these bounds only cap the count.
        let (job_tx, job_rx) = sync_channel::<Job>(64);
        let (sealed_tx, sealed_rx) = sync_channel::<Sealed>(64);
        let budget = Arc::new(Budget {
            cap: (cfg.pack_size / 2 * 3).clamp(IN_FLIGHT_MIN, IN_FLIGHT_MAX),
            state: Mutex::new((0, false)),
            freed: Condvar::new(),
        });
        let job_rx = Arc::new(Mutex::new(job_rx));
        let key = cfg.key;
        let level = cfg.compression;
        let blobs = Arc::new(BufPool::new(POOL_BYTES, 64));
        let packs = Arc::new(BufPool::new(usize::MAX, POOLED_PACKS));
        let workers = (0..n)
            .map(|_| {
                let (rx, tx, pool) = (job_rx.clone(), sealed_tx.clone(), blobs.clone());
                std::thread::Builder::new()
                    .name("baton-seal".into())
                    .spawn_scoped(scope, move || worker(&rx, tx, key, level, &pool))
                    .expect("spawning a thread")
            })
            .collect();
        drop(sealed_tx);
        let (stored_tx, stored) = channel();
        // A finished pack is handed over when the uploader is free: at most
        // two packs (one stored, one waiting) besides the one being filled.
        let (finished_tx, finished_rx) = sync_channel::<Finished>(0);
        let (storage, dry_run) = (cfg.storage, cfg.dry_run);
        let (b, bp, pp) = (budget.clone(), blobs.clone(), packs.clone());
        let packer = std::thread::Builder::new()
            .name("baton-packer".into())
            .spawn_scoped(scope, move || {
                let _close = CloseOnDrop(&b);
                packer(sealed_rx, cfg, finished_tx, &b, &bp, &pp)
            })
            .expect("spawning a thread");
        let uploader = std::thread::Builder::new()
            .name("baton-upload".into())
            .spawn_scoped(scope, move || {
                uploader(finished_rx, storage, dry_run, stored_tx, &packs)
            })
            .expect("spawning a thread");
        Pipeline {
            jobs: Mutex::new(Some(job_tx)),
            budget,
            blobs,
            stored,
            workers,
            packer,
            uploader,
        }
    }

    /// Queues a blob. Returns false when the pipeline has failed (the error
    /// comes from [`Pipeline::finish`]).
    pub fn send(&self, job: Job) -> bool {
        if !self.budget.acquire(job.data.len() as u64) {
            return false;
        }
        let tx = self.jobs.lock().expect("pipeline input").clone();
        tx.is_some_and(|t| t.send(job).is_ok())
    }

    /// An empty buffer for a new blob's data (reused when one is free).
    pub fn buffer(&self) -> Vec<u8> {
        self.blobs.get()
    }

    /// Closes the input, waits until everything queued is stored (or the
    /// pipeline failed), and returns the packs stored since the last call.
    pub fn drain(&self) -> Vec<IndexPack> {
        self.jobs.lock().expect("pipeline input").take();
        self.stored.iter().collect()
    }

    /// Packs durably stored since the last call (never blocks).
    pub fn stored_packs(&self) -> Vec<IndexPack> {
        self.stored.try_iter().collect()
    }

    /// Flushes the last packs and returns what was stored.
    pub fn finish(self) -> Result<PackerOutput> {
        self.jobs.lock().expect("pipeline input").take();
        for w in self.workers {
            w.join()
                .map_err(|_| RepoError::Internal("a compression worker panicked".into()))?;
        }
        let packed = self
            .packer
            .join()
            .map_err(|_| RepoError::Internal("the packer thread panicked".into()))?;
        let uploaded = self
            .uploader
            .join()
            .map_err(|_| RepoError::Internal("the uploader thread panicked".into()))?;
        // A failed upload stops the packer too; the upload's error says why.
        let out = uploaded?;
        packed?;
        Ok(out)
    }
}

fn worker(
    jobs: &Mutex<Receiver<Job>>,
    out: SyncSender<Sealed>,
    key: &MasterKey,
    level: i32,
    pool: &BufPool,
) {
    let mut c = Compressor::new(level);
    let mut z = Vec::new();
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let raw_len = job.data.len() as u32;
        let compressed = c.compress_into(&job.data, &mut z);
        let mut sealed = pool.get();
        let payload = if compressed { &z } else { &job.data };
        seal_blob_into(key, job.blob_type, &job.id, payload, &mut sealed);
        pool.put(job.data);
        let s = Sealed {
            blob_type: job.blob_type,
            id: job.id,
            sealed,
            raw_len,
            compressed,
        };
        if out.send(s).is_err() {
            return;
        }
    }
}

/// An open pack and when it received its first blob.
#[derive(Default)]
struct OpenPack {
    w: PackWriter,
    since: Option<Instant>,
}

impl OpenPack {
    fn add(&mut self, s: &Sealed) {
        self.since.get_or_insert_with(Instant::now);
        self.w
            .add(s.blob_type, s.id, &s.sealed, s.raw_len, s.compressed);
    }
    fn full(&self, cfg: &PipelineConfig<'_>) -> bool {
        self.w.size() as u64 >= cfg.pack_size || self.w.len() >= MAX_BLOBS_PER_PACK
    }
    fn older_than(&self, age: Duration) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= age)
    }
    fn store(
        &mut self,
        cfg: &PipelineConfig<'_>,
        out: &SyncSender<Finished>,
        packs: &BufPool,
    ) -> Result<()> {
        self.since = None;
        if self.w.is_empty() {
            return Ok(());
        }
        let w = std::mem::replace(&mut self.w, PackWriter::with_buffer(packs.get()));
        let (bytes, entries) = w.finish(cfg.key, &cfg.repository);
        let id = storage_id(&bytes);
        let pack = IndexPack { id, blobs: entries };
        out.send(Finished { id, bytes, pack })
            // The uploader stopped: its error is the one to report.
            .map_err(|_| RepoError::Internal("storing a pack failed".into()))
    }
}

/// Fills packs and stores them. Progress only becomes durable with the
/// trees of finished directories, so the open tree pack is stored along
/// with every data pack, and any pack left open longer than `flush_age`
/// is stored even if it is small (a trickle of changes must not hold the
/// journal back until the end).
fn packer(
    rx: Receiver<Sealed>,
    cfg: PipelineConfig<'_>,
    out: SyncSender<Finished>,
    budget: &Budget,
    blobs: &BufPool,
    packs: &BufPool,
) -> Result<()> {
    let mut data = OpenPack::default();
    let mut trees = OpenPack::default();
    loop {
        let msg = rx.recv_timeout(cfg.flush_age);
        let s = match msg {
            Ok(s) => Some(s),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => None,
        };
        if let Some(s) = s {
            budget.release(s.raw_len as u64);
            if s.blob_type.is_metadata() {
                trees.add(&s);
                if trees.full(&cfg) {
                    trees.store(&cfg, &out, packs)?;
                }
            } else {
                data.add(&s);
                if data.full(&cfg) {
                    data.store(&cfg, &out, packs)?;
                    trees.store(&cfg, &out, packs)?;
                }
            }
            blobs.put(s.sealed);
        }
        if data.older_than(cfg.flush_age) || trees.older_than(cfg.flush_age) {
            data.store(&cfg, &out, packs)?;
            trees.store(&cfg, &out, packs)?;
        }
    }
    data.store(&cfg, &out, packs)?;
    trees.store(&cfg, &out, packs)?;
    Ok(())
}

/// Stores finished packs, in order, and acknowledges each once durable.
fn uploader(
    rx: Receiver<Finished>,
    storage: &dyn Storage,
    dry_run: bool,
    stored: Sender<IndexPack>,
    packs: &BufPool,
) -> Result<PackerOutput> {
    let mut out = PackerOutput::default();
    for f in rx {
        if !dry_run {
            put_content_addressed(storage, ObjectKind::Pack, &f.id, &f.bytes)?;
        }
        crate::crashpoint::crashpoint("after-pack");
        out.bytes_stored += f.bytes.len() as u64;
        // The archiver may have finished already; then nobody needs the ack.
        let _ = stored.send(f.pack.clone());
        out.packs.push(f.pack);
        packs.put(f.bytes);
    }
    Ok(out)
}
