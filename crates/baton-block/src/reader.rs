//! Random access to an image in a snapshot, shared by restore, dump and the
//! NBD server: any byte range is served from the chunks that hold it, each
//! fetched by a ranged read of its pack (`Repository::load_blob`, which
//! authenticates it) and kept in a bounded cache of decrypted chunks.
//! Sequential access is detected and the next chunks are fetched ahead by
//! background threads, so a reader streaming the image waits for storage
//! only once.

use baton_format::fixed::{FixedSegment, Layout};
use baton_repo::image::ImageIndex;
use baton_repo::{RepoError, Repository, Result};
use baton_types::{Id, Node};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};

/// Settings of a reader.
#[derive(Debug, Clone, Copy)]
pub struct ReaderConfig {
    /// Bytes of decrypted chunks kept (at least a few chunks).
    pub cache_bytes: u64,
    /// Chunks fetched ahead of a sequential reader.
    pub read_ahead: u64,
    /// Threads fetching ahead.
    pub threads: usize,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            cache_bytes: 64 << 20,
            read_ahead: 8,
            threads: 2,
        }
    }
}

/// A least-recently-used map bounded by a cost (bytes): look-up and
/// eviction in O(log n).
struct Lru<V> {
    map: HashMap<u64, (V, u64, u64)>,
    order: BTreeMap<u64, u64>,
    tick: u64,
    used: u64,
    cap: u64,
}

impl<V: Clone> Lru<V> {
    fn new(cap: u64) -> Self {
        Lru {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            used: 0,
            cap,
        }
    }
    fn get(&mut self, k: u64) -> Option<V> {
        self.tick += 1;
        let t = self.tick;
        let e = self.map.get_mut(&k)?;
        self.order.remove(&e.1);
        self.order.insert(t, k);
        e.1 = t;
        Some(e.0.clone())
    }
    fn put(&mut self, k: u64, v: V, cost: u64) {
        self.tick += 1;
        if let Some(old) = self.map.insert(k, (v, self.tick, cost)) {
            self.used -= old.2;
            self.order.remove(&old.1);
        }
        self.order.insert(self.tick, k);
        self.used += cost;
        while self.used > self.cap && self.map.len() > 1 {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.map.remove(&oldest) {
                self.used -= e.2;
            }
        }
    }
}

/// One chunk's bytes; `None` for a hole.
pub type Chunk = Option<Arc<Vec<u8>>>;

struct Inner {
    repo: Arc<Repository>,
    index: ImageIndex,
    segments: Mutex<Lru<Arc<FixedSegment>>>,
    chunks: Mutex<Lru<Chunk>>,
    fetching: Mutex<HashSet<u64>>,
    fetched: Condvar,
    fetches: AtomicU64,
    /// The chunk after the last one read.
    next: AtomicU64,
}

impl Inner {
    fn segment(&self, s: u64) -> Result<Arc<FixedSegment>> {
        if let Some(seg) = self.segments.lock().expect("segment cache").get(s) {
            return Ok(seg);
        }
        let seg = Arc::new(self.index.segment(&self.repo, s)?);
        self.segments
            .lock()
            .expect("segment cache")
            .put(s, seg.clone(), 1);
        Ok(seg)
    }

    fn chunk_id(&self, i: u64) -> Result<Option<Id>> {
        let l = self.index.layout();
        if i >= l.chunk_count() {
            return Err(RepoError::Invalid(format!(
                "chunk {i} is past the image's end"
            )));
        }
        let (s, k) = l.segment_of(i);
        Ok(self.segment(s)?.chunks[k])
    }

    fn chunk(&self, i: u64) -> Result<Chunk> {
        // A hole costs a segment look-up (cached), never a cache entry.
        if self.chunk_id(i)?.is_none() {
            return Ok(None);
        }
        loop {
            if let Some(c) = self.chunks.lock().expect("chunk cache").get(i) {
                return Ok(c);
            }
            let mut f = self.fetching.lock().expect("fetch set");
            if f.insert(i) {
                break;
            }
            // Another thread fetches it: wait, then look again.
            while f.contains(&i) {
                f = self.fetched.wait(f).expect("fetch set");
            }
        }
        let r = self.fetch(i);
        if let Ok(c) = &r {
            let cost = c.as_ref().map_or(0, |b| b.len() as u64);
            self.chunks
                .lock()
                .expect("chunk cache")
                .put(i, c.clone(), cost);
        }
        self.fetching.lock().expect("fetch set").remove(&i);
        self.fetched.notify_all();
        r
    }

    fn fetch(&self, i: u64) -> Result<Chunk> {
        let Some(id) = self.chunk_id(i)? else {
            return Ok(None);
        };
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let (start, len) = self.index.layout().chunk_range(i);
        let bytes = self.repo.load_blob(&id).map_err(|e| match e.class() {
            // A storage fault that may pass, or a cancellation, stays what
            // it is (the caller may retry).
            baton_repo::ErrorClass::RetryLater | baton_repo::ErrorClass::Cancelled => e,
            _ => RepoError::Damaged(format!(
                "image bytes {start}..{}: chunk {} cannot be read: {e}",
                start + len,
                id.short()
            )),
        })?;
        if bytes.len() as u64 != len {
            return Err(RepoError::Damaged(format!(
                "image bytes {start}..{}: chunk {} holds {} bytes, its place needs {len}",
                start + len,
                id.short(),
                bytes.len()
            )));
        }
        Ok(Some(Arc::new(bytes)))
    }
}

/// Reads an image of a snapshot at any offset.
pub struct ImageReader {
    inner: Arc<Inner>,
    ahead: Mutex<Option<SyncSender<u64>>>,
    read_ahead: u64,
    /// How far ahead is queued.
    queued_to: AtomicU64,
}

impl ImageReader {
    /// Opens the image `node` (an image node of a snapshot's tree).
    pub fn open(repo: Arc<Repository>, node: &Node, cfg: ReaderConfig) -> Result<Self> {
        let index = ImageIndex::of_node(&repo, node)?;
        let chunk = u64::from(index.layout().chunk_size);
        let cache = cfg.cache_bytes.max(4 * chunk);
        // Chunks fetched ahead must still be cached when they are read: the
        // distance stays below the cache's size (else they are evicted
        // first and fetched twice).
        let ahead_chunks = cfg.read_ahead.min((cache / chunk).saturating_sub(2));
        let inner = Arc::new(Inner {
            repo,
            index,
            segments: Mutex::new(Lru::new(64)),
            chunks: Mutex::new(Lru::new(cache)),
            fetching: Mutex::new(HashSet::new()),
            fetched: Condvar::new(),
            fetches: AtomicU64::new(0),
            next: AtomicU64::new(u64::MAX),
        });
        // Hints beyond what the threads can take are dropped (a client's
        // CACHE requests must not queue without bound).
        let (tx, rx) = sync_channel::<u64>(256);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..cfg.threads.max(1) {
            let (weak, rx) = (Arc::downgrade(&inner), rx.clone());
            std::thread::Builder::new()
                .name("baton-readahead".into())
                .spawn(move || read_ahead(&weak, &rx))
                .map_err(|e| RepoError::Internal(format!("cannot start a thread: {e}")))?;
        }
        Ok(ImageReader {
            inner,
            ahead: Mutex::new(Some(tx)),
            read_ahead: ahead_chunks,
            queued_to: AtomicU64::new(0),
        })
    }

    pub fn layout(&self) -> &Layout {
        self.inner.index.layout()
    }

    pub fn size(&self) -> u64 {
        self.layout().image_size
    }

    pub fn repository(&self) -> &Arc<Repository> {
        &self.inner.repo
    }

    /// Chunks fetched from the repository so far (not from the cache).
    pub fn fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// The id of chunk `i`; `None` for a hole.
    pub fn chunk_id(&self, i: u64) -> Result<Option<Id>> {
        self.inner.chunk_id(i)
    }

    /// The bytes of chunk `i` (`None` for a hole), fetching ahead when the
    /// access is sequential.
    pub fn chunk(&self, i: u64) -> Result<Chunk> {
        self.note_access(i);
        self.inner.chunk(i)
    }

    fn note_access(&self, i: u64) {
        let prev = self.inner.next.swap(i + 1, Ordering::Relaxed);
        if prev != i || self.read_ahead == 0 {
            return;
        }
        let last = (i + self.read_ahead).min(self.layout().chunk_count());
        let from = self.queued_to.load(Ordering::Relaxed).max(i + 1);
        if from >= last {
            return;
        }
        self.queued_to.store(last, Ordering::Relaxed);
        if let Some(tx) = self.ahead.lock().expect("read-ahead").as_ref() {
            for c in from..last {
                let _ = tx.try_send(c);
            }
        }
    }

    /// Asks for chunk `i` to be fetched in the background (a hint, dropped
    /// when the read-ahead queue is full).
    pub fn prefetch(&self, i: u64) {
        if let Some(tx) = self.ahead.lock().expect("read-ahead").as_ref() {
            let _ = tx.try_send(i);
        }
    }

    /// Fills `buf` with the image's bytes from `offset`; holes read as zeros.
    /// A chunk that cannot be read fails the whole call, naming its range.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size())
            .ok_or_else(|| {
                RepoError::Invalid(format!(
                    "read of {} bytes at {offset} is past the image's end ({})",
                    buf.len(),
                    self.size()
                ))
            })?;
        let l = *self.layout();
        let mut pos = offset;
        while pos < end {
            let i = l.chunk_of(pos);
            let (start, len) = l.chunk_range(i);
            let from = (pos - start) as usize;
            let n = ((start + len).min(end) - pos) as usize;
            let out = &mut buf[(pos - offset) as usize..][..n];
            match self.chunk(i)? {
                Some(c) => out.copy_from_slice(&c[from..from + n]),
                None => out.fill(0),
            }
            pos += n as u64;
        }
        Ok(())
    }

    /// Which parts of `[offset, offset + len)` are holes, as runs of
    /// `(length, hole)`, merged; a chunk for which `written(start, len)` is
    /// true (an overlay holds some of it) is never a hole.
    pub fn extents(
        &self,
        offset: u64,
        len: u64,
        written: &dyn Fn(u64, u64) -> bool,
    ) -> Result<Vec<(u64, bool)>> {
        let end = offset.saturating_add(len).min(self.size());
        let l = *self.layout();
        let mut out: Vec<(u64, bool)> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let i = l.chunk_of(pos);
            let (start, clen) = l.chunk_range(i);
            let n = (start + clen).min(end) - pos;
            let hole = self.chunk_id(i)?.is_none() && !written(start, clen);
            match out.last_mut() {
                Some((m, h)) if *h == hole => *m += n,
                _ => out.push((n, hole)),
            }
            pos += n;
        }
        Ok(out)
    }
}

impl Drop for ImageReader {
    fn drop(&mut self) {
        // Closing the channel stops the read-ahead threads.
        self.ahead.lock().expect("read-ahead").take();
    }
}

fn read_ahead(inner: &std::sync::Weak<Inner>, rx: &Mutex<Receiver<u64>>) {
    loop {
        let next = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok(i) = next else { return };
        let Some(inner) = inner.upgrade() else { return };
        // A hint the reader has passed already is stale: fetching it would
        // only evict what it is about to read.
        if i.saturating_add(1) < inner.next.load(Ordering::Relaxed) {
            continue;
        }
        // Errors surface when the chunk is read for real.
        let _ = inner.chunk(i);
    }
}
