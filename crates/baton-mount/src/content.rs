//! A regular file's content: where each chunk starts (from the chunks'
//! plaintext lengths in the index, computed once per file), which chunks
//! cover a read, and a bounded cache of decrypted chunks shared by all
//! files (a reader moving through a file in the kernel's 128 KiB requests
//! decrypts each chunk once).
//!
//! Trees are not trusted: a file's size is what its chunks hold, whatever
//! its node says. A chunk the index does not know has no known length;
//! the file is then reported at its recorded size, and reads from that
//! chunk on fail.

use baton_types::Id;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Bytes of decrypted chunks kept for reads.
pub(crate) const CHUNK_CACHE_BYTES: u64 = 32 << 20;

/// Where a file's chunks lie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Content {
    /// End offset of each chunk, in order, up to the first chunk of
    /// unknown length.
    ends: Vec<u64>,
    /// Whether every chunk's length is known.
    complete: bool,
    /// The size to report: the sum of the chunks' lengths, or (some
    /// unknown) the node's size.
    pub(crate) size: u64,
}

impl Content {
    /// From each chunk's length (`None`: not in the index) and the size the
    /// node records.
    pub(crate) fn new(lengths: impl Iterator<Item = Option<u64>>, node_size: u64) -> Content {
        let mut ends = Vec::new();
        let mut end = 0u64;
        let mut complete = true;
        for len in lengths {
            match len.and_then(|l| end.checked_add(l)) {
                Some(e) => {
                    end = e;
                    ends.push(e);
                }
                None => {
                    complete = false;
                    break;
                }
            }
        }
        let size = if complete { end } else { node_size.max(end) };
        Content {
            ends,
            complete,
            size,
        }
    }

    /// Whether every chunk's length is known (else reads stop at the
    /// first unknown one).
    pub(crate) fn complete(&self) -> bool {
        self.complete
    }

    /// Reads `[offset, offset + size)` (cut at the end of the file),
    /// loading chunk `i` of length `len` with `load(i, len)`. Fails at the
    /// first chunk that cannot be loaded, or of unknown length.
    pub(crate) fn read(
        &self,
        offset: u64,
        size: u32,
        load: &dyn Fn(usize, u64) -> Result<Arc<Vec<u8>>, String>,
    ) -> Result<Vec<u8>, String> {
        let end = offset.saturating_add(u64::from(size)).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        let mut i = self.ends.partition_point(|&e| e <= offset);
        while pos < end {
            let Some(&chunk_end) = self.ends.get(i) else {
                return Err(format!(
                    "chunk {i} of the file is not in the index (missing data)"
                ));
            };
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            if chunk_end > start {
                let data = load(i, chunk_end - start)?;
                let from = (pos - start) as usize;
                let to = (chunk_end.min(end) - start) as usize;
                let part = data.get(from..to).ok_or_else(|| {
                    format!(
                        "chunk {i} holds {} bytes, the index says {}",
                        data.len(),
                        chunk_end - start
                    )
                })?;
                out.extend_from_slice(part);
                pos = start + to as u64;
            }
            i += 1;
        }
        Ok(out)
    }
}

/// A least-recently-used cache of decrypted chunks, bounded by bytes.
#[derive(Debug)]
pub(crate) struct ChunkCache {
    inner: Mutex<Lru>,
}

#[derive(Debug)]
struct Lru {
    map: HashMap<Id, (Arc<Vec<u8>>, u64)>,
    /// Tick of last use -> chunk.
    order: BTreeMap<u64, Id>,
    tick: u64,
    used: u64,
    cap: u64,
}

impl ChunkCache {
    pub(crate) fn new(cap: u64) -> ChunkCache {
        ChunkCache {
            inner: Mutex::new(Lru {
                map: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                used: 0,
                cap,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // Every change leaves the cache consistent between statements that
        // cannot panic; a poisoned lock is used as it is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, id: &Id) -> Option<Arc<Vec<u8>>> {
        let mut l = self.lock();
        l.tick += 1;
        let t = l.tick;
        let (data, old) = {
            let e = l.map.get_mut(id)?;
            let old = std::mem::replace(&mut e.1, t);
            (e.0.clone(), old)
        };
        l.order.remove(&old);
        l.order.insert(t, *id);
        Some(data)
    }

    /// Keeps `data`, evicting the least recently used chunks beyond the
    /// bound (the newest one is always kept).
    pub(crate) fn put(&self, id: Id, data: Arc<Vec<u8>>) {
        let mut l = self.lock();
        l.tick += 1;
        let t = l.tick;
        let cost = data.len() as u64;
        if let Some((old, old_t)) = l.map.insert(id, (data, t)) {
            l.used -= old.len() as u64;
            l.order.remove(&old_t);
        }
        l.order.insert(t, id);
        l.used += cost;
        while l.used > l.cap && l.map.len() > 1 {
            let Some((_, oldest)) = l.order.pop_first() else {
                break;
            };
            if let Some((d, _)) = l.map.remove(&oldest) {
                l.used -= d.len() as u64;
            }
        }
    }

    #[cfg(test)]
    fn used(&self) -> (usize, u64) {
        let l = self.lock();
        (l.map.len(), l.used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A file of chunks with these lengths; chunk `i` holds bytes `i + 1`.
    fn chunks(lens: &[u64]) -> Vec<Vec<u8>> {
        lens.iter()
            .enumerate()
            .map(|(i, &l)| vec![i as u8 + 1; l as usize])
            .collect()
    }

    #[test]
    fn reads_cover_exactly_the_chunks_needed() {
        let lens = [10, 0, 5, 20];
        let data = chunks(&lens);
        let whole: Vec<u8> = data.concat();
        let c = Content::new(lens.iter().map(|&l| Some(l)), 999);
        assert_eq!(c.size, 35);
        assert!(c.complete());
        let loaded = RefCell::new(Vec::new());
        let load = |i: usize, len: u64| {
            assert_eq!(len, lens[i]);
            loaded.borrow_mut().push(i);
            Ok(Arc::new(data[i].clone()))
        };
        for off in 0..40u64 {
            for size in [0u32, 1, 4, 5, 6, 15, 100] {
                loaded.borrow_mut().clear();
                let got = c.read(off, size, &load).unwrap();
                let lo = (off as usize).min(whole.len());
                let hi = (off as usize + size as usize).min(whole.len());
                assert_eq!(got, &whole[lo..hi], "read {size} at {off}");
                // Only chunks overlapping the range, never an empty one.
                for &i in loaded.borrow().iter() {
                    let start: u64 = lens[..i].iter().sum();
                    assert!(lens[i] > 0 && start < off + u64::from(size));
                    assert!(start + lens[i] > off);
                }
            }
        }
    }

    #[test]
    fn unknown_chunk_fails_reads_from_it_on() {
        let c = Content::new([Some(4), None, Some(4)].into_iter(), 12);
        assert_eq!(c.size, 12);
        assert!(!c.complete());
        let load = |_: usize, len: u64| Ok(Arc::new(vec![7; len as usize]));
        assert_eq!(c.read(0, 4, &load).unwrap(), vec![7; 4]);
        assert!(
            c.read(2, 4, &load)
                .unwrap_err()
                .contains("not in the index")
        );
        // A loader returning fewer bytes than the index says is an error.
        let c = Content::new([Some(4)].into_iter(), 4);
        let short = |_: usize, _: u64| Ok(Arc::new(vec![1; 2]));
        assert!(c.read(0, 4, &short).is_err());
        let fail = |_: usize, _: u64| Err("gone".to_string());
        assert_eq!(c.read(0, 4, &fail).unwrap_err(), "gone");
    }

    #[test]
    fn cache_is_bounded_and_keeps_recent_chunks() {
        let id = |n: u8| Id::from_bytes([n; 32]);
        let cache = ChunkCache::new(100);
        cache.put(id(1), Arc::new(vec![0; 40]));
        cache.put(id(2), Arc::new(vec![0; 40]));
        assert!(cache.get(&id(1)).is_some());
        cache.put(id(3), Arc::new(vec![0; 40]));
        // 2 was least recently used.
        assert!(cache.get(&id(2)).is_none());
        assert!(cache.get(&id(1)).is_some() && cache.get(&id(3)).is_some());
        assert_eq!(cache.used(), (2, 80));
        cache.put(id(4), Arc::new(vec![0; 500]));
        assert_eq!(cache.used(), (1, 500));
        cache.put(id(4), Arc::new(vec![0; 10]));
        assert_eq!(cache.used(), (1, 10));
    }
}
