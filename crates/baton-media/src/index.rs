//! A media agent's in-memory index of a pool: the packs it knows the
//! pool's repository holds. One per pool, shared by every job the media
//! agent serves: loaded once by listing the pool's packs (in the
//! background, when the pool is opened), then kept current by its own
//! writes and by the journals handed over to it.
//!
//! It holds pack ids only: blob ids and everything else of the
//! repository's index are sealed with the repository's key, which media
//! agents never have. That is what a handover needs: every pack a job's
//! acknowledged records name must be in the pool's storage before the job
//! continues there.

use baton_storage::{ObjectKind, Storage, StorageError};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// Above this many packs unknown to the index, a handover lists the
/// pool's packs again (one listing is cheaper than that many lookups).
const RELIST_ABOVE: usize = 32;

/// Lookups in storage at once, for packs the index does not know.
const LOOKUPS_AT_ONCE: usize = 8;

#[derive(Default)]
pub struct PackIndex {
    packs: RwLock<HashSet<[u8; 32]>>,
    loaded: AtomicBool,
    /// One listing at a time (a second waits for it and finds its
    /// result); how many were made, and when the last was tried.
    listing: Mutex<Option<Instant>>,
    listings: AtomicU64,
}

/// What applying a handed-over journal found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Distinct packs the journal names, all checked.
    pub checked: u64,
    /// Of them, those the index did not know and storage was asked for.
    pub looked_up: u64,
    /// Those the pool's storage does not hold (hex ids).
    pub missing: Vec<String>,
}

fn id_of(hex_id: &str) -> Option<[u8; 32]> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(hex_id, &mut id).ok()?;
    Some(id)
}

impl PackIndex {
    pub fn len(&self) -> usize {
        self.packs.read().expect("index").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first listing has completed.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn contains(&self, hex_id: &str) -> bool {
        id_of(hex_id).is_some_and(|id| self.packs.read().expect("index").contains(&id))
    }

    /// A pack now stored.
    pub fn insert(&self, hex_id: &str) {
        if let Some(id) = id_of(hex_id) {
            self.packs.write().expect("index").insert(id);
        }
    }

    /// How many times the pool's packs were listed.
    pub fn listings(&self) -> u64 {
        self.listings.load(Ordering::Relaxed)
    }

    /// Whether a listing should be tried (in the background): none has
    /// completed, and none was tried in the last `every`.
    pub fn wants_listing(&self, every: Duration) -> bool {
        !self.loaded()
            && self
                .listing
                .try_lock()
                .is_ok_and(|t| t.is_none_or(|t| t.elapsed() >= every))
    }

    /// Notes that a listing is about to be tried (in the background), so
    /// that [`PackIndex::wants_listing`] does not ask for another.
    pub fn note_try(&self) {
        *self.listing.lock().expect("listing") = Some(Instant::now());
    }

    /// Lists the pool's packs into the index.
    pub fn load(&self, storage: &dyn Storage) -> Result<usize, StorageError> {
        self.list_since(storage, None)
    }

    /// Lists the pool's packs, unless a listing that started after
    /// `since` has completed meanwhile (one listing serves everyone who
    /// waited for it).
    fn list_since(
        &self,
        storage: &dyn Storage,
        since: Option<Instant>,
    ) -> Result<usize, StorageError> {
        let mut last = self.listing.lock().expect("listing");
        if let (Some(since), Some(t)) = (since, *last)
            && t >= since
            && self.loaded()
        {
            return Ok(self.len());
        }
        *last = Some(Instant::now());
        self.listings.fetch_add(1, Ordering::Relaxed);
        let listed = storage.list(ObjectKind::Pack)?;
        let ids: Vec<[u8; 32]> = listed.iter().filter_map(|o| id_of(&o.name)).collect();
        let mut packs = self.packs.write().expect("index");
        packs.extend(ids);
        self.loaded.store(true, Ordering::Release);
        Ok(packs.len())
    }

    /// Applies a job's handed-over journal: every pack its records name
    /// is checked, in the index or else in storage (and then added), and
    /// those storage does not hold are returned.
    pub fn apply<'a>(
        &self,
        storage: &dyn Storage,
        packs: impl IntoIterator<Item = &'a String>,
    ) -> Result<Applied, StorageError> {
        let mut named: Vec<&String> = packs.into_iter().collect();
        named.sort_unstable();
        named.dedup();
        let unknown = |idx: &PackIndex| -> Vec<&String> {
            named.iter().copied().filter(|p| !idx.contains(p)).collect()
        };
        let asked = Instant::now();
        let mut todo = unknown(self);
        if !todo.is_empty() && (!self.loaded() || todo.len() > RELIST_ABOVE) {
            self.list_since(storage, Some(asked))?;
            todo = unknown(self);
        }
        // What is still unknown (written since the listing, or not there)
        // is looked up, several at once.
        let found: Vec<Result<bool, StorageError>> = std::thread::scope(|sc| {
            let chunk = todo.len().div_ceil(LOOKUPS_AT_ONCE).max(1);
            let workers: Vec<_> = todo
                .chunks(chunk)
                .map(|part| {
                    sc.spawn(move || {
                        part.iter()
                            .map(|p| {
                                if id_of(p).is_none() {
                                    return Ok(false);
                                }
                                match storage.size(ObjectKind::Pack, p) {
                                    Ok(_) => Ok(true),
                                    Err(e) if e.kind == baton_storage::ErrorKind::NotFound => {
                                        Ok(false)
                                    }
                                    Err(e) => Err(e),
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("a lookup thread"))
                .collect()
        });
        let mut missing = Vec::new();
        for (p, f) in todo.iter().zip(found) {
            if f? {
                self.insert(p);
            } else {
                missing.push((*p).clone());
            }
        }
        Ok(Applied {
            checked: named.len() as u64,
            looked_up: todo.len() as u64,
            missing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_storage::LocalStorage;

    fn pack(s: &LocalStorage, bytes: &[u8]) -> String {
        let id = baton_format::storage_id(bytes).to_hex();
        s.put(ObjectKind::Pack, &id, bytes).unwrap();
        id
    }

    #[test]
    fn a_handover_finds_the_acknowledged_packs_storage_does_not_hold() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        s.create().unwrap();
        let old = pack(&s, b"a previous backup's pack");
        let idx = PackIndex::default();
        assert!(idx.wants_listing(Duration::from_secs(60)));
        assert_eq!(idx.load(&s).unwrap(), 1);
        assert!(idx.loaded() && idx.contains(&old));
        assert!(!idx.wants_listing(Duration::ZERO));
        // Written by another media agent after the listing.
        let peer = pack(&s, b"the peer's pack");
        let never = baton_format::storage_id(b"acknowledged, never stored").to_hex();
        let journal = [old.clone(), peer.clone(), never.clone(), peer.clone()];
        let a = idx.apply(&s, &journal).unwrap();
        assert_eq!(
            a,
            Applied {
                checked: 3,
                looked_up: 2,
                missing: vec![never.clone()],
            }
        );
        // The peer's pack is known now; the missing one is not.
        assert!(idx.contains(&peer) && !idx.contains(&never));
        assert_eq!(idx.apply(&s, &journal[..2]).unwrap().looked_up, 0);
    }

    #[test]
    fn many_unknown_packs_are_found_by_one_listing() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        s.create().unwrap();
        let idx = PackIndex::default();
        let ids: Vec<String> = (0..40u32).map(|i| pack(&s, &i.to_le_bytes())).collect();
        let a = idx.apply(&s, &ids).unwrap();
        assert_eq!((a.checked, a.looked_up, a.missing.len()), (40, 0, 0));
        assert!(idx.loaded());
        assert_eq!((idx.len(), idx.listings()), (40, 1));
        // Past the listing: a few new ones are looked up, not listed.
        let more: Vec<String> = (40..45u32).map(|i| pack(&s, &i.to_le_bytes())).collect();
        let a = idx.apply(&s, &more).unwrap();
        assert_eq!((a.looked_up, a.missing.len(), idx.listings()), (5, 0, 1));
    }
}
