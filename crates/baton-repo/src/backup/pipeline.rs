//! The write pipeline of a backup: the archiver (caller's thread) hands new
//! blobs to compression/encryption workers, which hand sealed blobs to one
//! packer thread that fills packs and stores each when it reaches the target
//! size. Queues are bounded, so memory stays flat however large the input.
//!
//! Data and tree blobs go to separate packs, so reading trees (browsing,
//! check, the parent of the next backup) touches few, small packs.

use crate::{RepoError, Result};
use baton_format::compress::Compressor;
use baton_format::crypto::MasterKey;
use baton_format::index::IndexPack;
use baton_format::pack::PackWriter;
use baton_format::storage_id;
use baton_storage::{ObjectKind, Storage};
use baton_types::{BlobType, Id};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

/// Blobs per pack at most, so a header stays far below the reader's limit
/// (`baton_format::pack::MAX_HEADER`) even with tiny chunks.
const MAX_BLOBS_PER_PACK: usize = 100_000;

/// A new blob to store.
pub(crate) struct Job {
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
pub(crate) struct PackerOutput {
    pub packs: Vec<IndexPack>,
    pub bytes_stored: u64,
}

/// Settings the pipeline needs from the repository.
pub(crate) struct PipelineConfig<'a> {
    pub storage: &'a dyn Storage,
    pub key: &'a MasterKey,
    pub compression: i32,
    pub pack_size: u64,
    pub dry_run: bool,
    pub workers: usize,
    /// Longest time a pack stays open before it is stored anyway.
    pub flush_age: Duration,
}

pub(crate) struct Pipeline<'scope> {
    jobs: Option<SyncSender<Job>>,
    /// Each pack, once durably stored (for the journal).
    stored: Receiver<IndexPack>,
    workers: Vec<ScopedJoinHandle<'scope, ()>>,
    packer: ScopedJoinHandle<'scope, Result<PackerOutput>>,
}

impl<'scope> Pipeline<'scope> {
    pub fn start<'env>(scope: &'scope Scope<'scope, 'env>, cfg: PipelineConfig<'env>) -> Self
    where
        'env: 'scope,
    {
        let n = cfg.workers.max(1);
        let (job_tx, job_rx) = sync_channel::<Job>(2 * n);
        let (sealed_tx, sealed_rx) = sync_channel::<Sealed>(2 * n);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let key = cfg.key;
        let level = cfg.compression;
        let workers = (0..n)
            .map(|_| {
                let (rx, tx) = (job_rx.clone(), sealed_tx.clone());
                scope.spawn(move || worker(&rx, tx, key, level))
            })
            .collect();
        drop(sealed_tx);
        let (stored_tx, stored) = channel();
        let packer = scope.spawn(move || packer(sealed_rx, cfg, stored_tx));
        Pipeline {
            jobs: Some(job_tx),
            stored,
            workers,
            packer,
        }
    }

    /// Queues a blob. Returns false when the pipeline has failed (the error
    /// comes from [`Pipeline::finish`]).
    pub fn send(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|t| t.send(job).is_ok())
    }

    /// Packs durably stored since the last call (never blocks).
    pub fn stored_packs(&self) -> Vec<IndexPack> {
        self.stored.try_iter().collect()
    }

    /// Flushes the last packs and returns what was stored.
    pub fn finish(mut self) -> Result<PackerOutput> {
        self.jobs = None;
        for w in self.workers {
            w.join()
                .map_err(|_| RepoError::Invalid("a compression worker panicked".into()))?;
        }
        self.packer
            .join()
            .map_err(|_| RepoError::Invalid("the packer thread panicked".into()))?
    }
}

fn worker(jobs: &Mutex<Receiver<Job>>, out: SyncSender<Sealed>, key: &MasterKey, level: i32) {
    let mut c = Compressor::new(level);
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let raw_len = job.data.len() as u32;
        let (sealed, compressed) = match c.compress(&job.data) {
            Some(z) => (key.encrypt(&z), true),
            None => (key.encrypt(&job.data), false),
        };
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
        out: &mut PackerOutput,
        stored: &Sender<IndexPack>,
    ) -> Result<()> {
        self.since = None;
        let w = std::mem::take(&mut self.w);
        if w.is_empty() {
            Ok(())
        } else {
            store_pack(w, cfg, out, stored)
        }
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
    stored: Sender<IndexPack>,
) -> Result<PackerOutput> {
    let mut out = PackerOutput::default();
    let mut data = OpenPack::default();
    let mut trees = OpenPack::default();
    loop {
        let msg = rx.recv_timeout(cfg.flush_age);
        if let Ok(s) = &msg {
            match s.blob_type {
                BlobType::Data => {
                    data.add(s);
                    if data.full(&cfg) {
                        data.store(&cfg, &mut out, &stored)?;
                        trees.store(&cfg, &mut out, &stored)?;
                    }
                }
                BlobType::Tree => {
                    trees.add(s);
                    if trees.full(&cfg) {
                        trees.store(&cfg, &mut out, &stored)?;
                    }
                }
            }
        }
        if matches!(msg, Err(RecvTimeoutError::Disconnected)) {
            break;
        }
        if data.older_than(cfg.flush_age) || trees.older_than(cfg.flush_age) {
            data.store(&cfg, &mut out, &stored)?;
            trees.store(&cfg, &mut out, &stored)?;
        }
    }
    data.store(&cfg, &mut out, &stored)?;
    trees.store(&cfg, &mut out, &stored)?;
    Ok(out)
}

fn store_pack(
    w: PackWriter,
    cfg: &PipelineConfig<'_>,
    out: &mut PackerOutput,
    stored: &Sender<IndexPack>,
) -> Result<()> {
    let (bytes, entries) = w.finish(cfg.key);
    let id = storage_id(&bytes);
    if !cfg.dry_run {
        match cfg.storage.put(ObjectKind::Pack, &id.to_hex(), &bytes) {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
    }
    crate::crashpoint::crashpoint("after-pack");
    out.bytes_stored += bytes.len() as u64;
    let pack = IndexPack { id, blobs: entries };
    // The archiver may have finished already; then nobody needs the ack.
    let _ = stored.send(pack.clone());
    out.packs.push(pack);
    Ok(())
}
