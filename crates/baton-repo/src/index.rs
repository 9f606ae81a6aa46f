//! The in-memory index: blob id -> location, built from the index objects.
//!
//! Memory is the constraint (a repository can hold tens of millions of
//! chunks), so an entry is 48 bytes: the 32-byte id, and the location packed
//! into 16 (pack *number*, offset, length, raw length; blob type and
//! compression in the top three bits of the pack number). Loaded entries live in
//! one vector sorted by id (binary search): loading appends to it and
//! [`Index::compact`] sorts it in place, so the peak while loading stays
//! near the final size. Blobs added afterwards (a backup's new packs) go to
//! a small hash map until the next [`Index::compact`].

use baton_format::index::{IndexFile, IndexPack};
use baton_types::{BlobLocation, BlobType, Id};
use std::collections::HashMap;

/// The blob type's byte sits in the top two bits.
const TYPE_SHIFT: u32 = 30;
const COMPRESSED_BIT: u32 = 1 << 29;
const PACK_MASK: u32 = COMPRESSED_BIT - 1;

#[derive(Clone, Copy)]
struct Loc {
    pack_and_flags: u32,
    offset: u32,
    length: u32,
    raw_length: u32,
}

#[derive(Clone, Copy)]
struct Entry {
    id: Id,
    loc: Loc,
}

/// Maps every indexed blob to the pack that holds it.
#[derive(Default)]
pub struct Index {
    packs: Vec<Id>,
    pack_numbers: HashMap<Id, u32>,
    sorted: Vec<Entry>,
    /// `sorted` has entries appended by loading that are not sorted yet.
    unsorted: bool,
    /// Where each run of ids with the same top `bucket_bits` bits starts in
    /// `sorted` (ids are uniform hashes, so a run holds a few entries): a
    /// look-up is one step here and a short binary search, instead of ~24
    /// cache misses across 10 million entries.
    buckets: Vec<u32>,
    bucket_bits: u32,
    recent: HashMap<Id, Loc>,
    /// (pack, blob) copies known damaged: left out of look-ups, so a backup
    /// stores a fresh copy instead of deduplicating against them.
    damaged: std::collections::HashSet<(Id, Id)>,
    /// One copy known damaged of each blob that has no other: a read
    /// still tries it (it is authenticated, so a really damaged copy fails
    /// to open), so that a copy marked damaged wrongly (by a faulty disk
    /// read, or by whoever holds an append-only key) never makes data
    /// unreadable; only deduplication leaves it out.
    last_resort: HashMap<Id, Loc>,
}

/// The top `bits` bits of an id.
fn bucket_of(id: &Id, bits: u32) -> u64 {
    let b = id.as_bytes();
    let top = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    if bits == 0 { 0 } else { top >> (64 - bits) }
}

fn pack_number(l: &Loc) -> u32 {
    l.pack_and_flags & PACK_MASK
}

fn loc_of(number: u32, e: &baton_format::pack::PackEntry) -> Loc {
    let mut flags = u32::from(e.blob_type.as_byte()) << TYPE_SHIFT;
    if e.compressed {
        flags |= COMPRESSED_BIT;
    }
    Loc {
        pack_and_flags: number | flags,
        offset: e.offset,
        length: e.length,
        raw_length: e.raw_length,
    }
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the entries of one decoded index object.
    pub fn add_file(&mut self, f: &IndexFile) {
        self.damaged.extend(f.damaged.iter().copied());
        for p in &f.packs {
            self.add_pack(p);
        }
        if !f.damaged.is_empty() {
            self.drop_damaged();
        }
    }

    /// The (pack, blob) copies known damaged.
    pub fn damaged(&self) -> impl Iterator<Item = &(Id, Id)> {
        self.damaged.iter()
    }

    /// Whether the copy of `blob` in `pack` is known damaged.
    pub fn is_damaged(&self, pack: &Id, blob: &Id) -> bool {
        self.damaged.contains(&(*pack, *blob))
    }

    /// Removes the damaged copies from the look-up structures.
    fn drop_damaged(&mut self) {
        if self.damaged.is_empty() {
            return;
        }
        let packs = &self.packs;
        let damaged = &self.damaged;
        let bad = |id: &Id, l: &Loc| damaged.contains(&(packs[pack_number(l) as usize], *id));
        let last_resort = &mut self.last_resort;
        self.sorted.retain(|e| {
            let keep = !bad(&e.id, &e.loc);
            if !keep {
                last_resort.entry(e.id).or_insert(e.loc);
            }
            keep
        });
        self.recent.retain(|id, l| {
            let keep = !bad(id, l);
            if !keep {
                last_resort.entry(*id).or_insert(*l);
            }
            keep
        });
        self.build_buckets();
    }

    fn number(&mut self, pack: Id) -> u32 {
        let number = *self.pack_numbers.entry(pack).or_insert_with(|| {
            self.packs.push(pack);
            (self.packs.len() - 1) as u32
        });
        assert!(number <= PACK_MASK, "more than 2^29 packs in one index");
        number
    }

    /// Adds a pack's blobs; a blob already indexed keeps its first location.
    pub fn add_pack(&mut self, p: &IndexPack) {
        self.compact_loaded();
        let number = self.number(p.id);
        for e in &p.blobs {
            if self.find(&e.id).is_none() {
                self.recent.insert(e.id, loc_of(number, e));
            }
        }
    }

    /// Adds the entries of one index object in bulk, while loading: they
    /// are only appended, and [`Index::compact`] must run before look-ups.
    pub fn load_file(&mut self, f: &IndexFile) {
        self.damaged.extend(f.damaged.iter().copied());
        for p in &f.packs {
            let number = self.number(p.id);
            self.sorted.extend(p.blobs.iter().map(|e| Entry {
                id: e.id,
                loc: loc_of(number, e),
            }));
            self.unsorted |= !p.blobs.is_empty();
        }
    }

    /// Sorts what loading appended, in place. A blob listed more than once
    /// keeps its first location: pack numbers follow the loading order.
    fn compact_loaded(&mut self) {
        if !self.unsorted {
            return;
        }
        // Damaged copies go before duplicates are dropped, so that a fresh
        // copy of the same blob (stored after the damage was found) stays.
        if !self.damaged.is_empty() {
            let packs = &self.packs;
            let damaged = &self.damaged;
            let last_resort = &mut self.last_resort;
            self.sorted.retain(|e| {
                let keep = !damaged.contains(&(packs[pack_number(&e.loc) as usize], e.id));
                if !keep {
                    last_resort.entry(e.id).or_insert(e.loc);
                }
                keep
            });
        }
        self.sorted.sort_unstable_by(|a, b| {
            a.id.cmp(&b.id)
                .then(pack_number(&a.loc).cmp(&pack_number(&b.loc)))
                .then(a.loc.offset.cmp(&b.loc.offset))
        });
        self.sorted.dedup_by(|later, first| later.id == first.id);
        self.unsorted = false;
        self.build_buckets();
    }

    /// Sorts what was loaded and moves recent additions into the sorted
    /// vector (call after loading).
    pub fn compact(&mut self) {
        self.compact_loaded();
        if !self.recent.is_empty() {
            self.sorted.reserve_exact(self.recent.len());
            self.sorted
                .extend(self.recent.drain().map(|(id, loc)| Entry { id, loc }));
            self.sorted.sort_unstable_by_key(|e| e.id);
            self.recent.shrink_to_fit();
        }
        self.sorted.shrink_to_fit();
        self.build_buckets();
    }

    fn build_buckets(&mut self) {
        let n = self.sorted.len();
        assert!(n < u32::MAX as usize, "more than 2^32 blobs in one index");
        // About eight entries per bucket (4 bytes per bucket: < 1 byte per entry).
        let bits = (n / 8).max(1).ilog2().min(24);
        let mut buckets = Vec::with_capacity((1 << bits) + 1);
        let mut i = 0usize;
        for b in 0..(1u64 << bits) {
            while i < n && bucket_of(&self.sorted[i].id, bits) < b {
                i += 1;
            }
            buckets.push(i as u32);
        }
        buckets.push(n as u32);
        self.buckets = buckets;
        self.bucket_bits = bits;
    }

    fn find(&self, id: &Id) -> Option<Loc> {
        debug_assert!(!self.unsorted, "look-up before Index::compact");
        let run = if self.buckets.len() == (1 << self.bucket_bits) + 1 {
            let b = bucket_of(id, self.bucket_bits) as usize;
            &self.sorted[self.buckets[b] as usize..self.buckets[b + 1] as usize]
        } else {
            // Not built yet (nothing compacted).
            &self.sorted[..]
        };
        if let Ok(i) = run.binary_search_by(|e| e.id.cmp(id)) {
            return Some(run[i].loc);
        }
        self.recent.get(id).copied()
    }

    fn location(&self, l: Loc) -> BlobLocation {
        BlobLocation {
            pack: self.packs[(l.pack_and_flags & PACK_MASK) as usize],
            blob_type: BlobType::from_byte((l.pack_and_flags >> TYPE_SHIFT) as u8)
                .expect("only known types are stored"),
            offset: l.offset,
            length: l.length,
            raw_length: l.raw_length,
            compressed: l.pack_and_flags & COMPRESSED_BIT != 0,
        }
    }

    pub fn get(&self, id: &Id) -> Option<BlobLocation> {
        self.find(id).map(|l| self.location(l))
    }

    /// Where to read a blob: a copy not known damaged, else (the last
    /// resort) one known damaged, which its authentication then judges.
    pub fn locate(&self, id: &Id) -> Option<BlobLocation> {
        self.get(id)
            .or_else(|| self.last_resort.get(id).map(|l| self.location(*l)))
    }

    /// Plaintext length of a blob, from any copy of it (see [`Index::locate`]).
    pub fn plain_len_any(&self, id: &Id) -> Option<u64> {
        self.locate(id).map(|l| l.raw_length as u64)
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.find(id).is_some()
    }

    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    /// The packs this index knows.
    pub fn pack_ids(&self) -> impl Iterator<Item = &Id> {
        self.packs.iter()
    }

    pub fn has_pack(&self, id: &Id) -> bool {
        self.pack_numbers.contains_key(id)
    }

    /// Every indexed blob and its location.
    pub fn iter(&self) -> impl Iterator<Item = (&Id, BlobLocation)> {
        self.sorted
            .iter()
            .map(|e| (&e.id, self.location(e.loc)))
            .chain(self.recent.iter().map(|(id, l)| (id, self.location(*l))))
    }

    /// Plaintext length of a blob.
    pub fn plain_len(&self, id: &Id) -> Option<u64> {
        self.find(id).map(|l| l.raw_length as u64)
    }

    /// Bytes of memory the entries take (for the memory figures).
    pub fn memory_bytes(&self) -> usize {
        self.sorted.capacity() * std::mem::size_of::<Entry>()
            + self.buckets.capacity() * 4
            + self.recent.capacity() * (std::mem::size_of::<(Id, Loc)>() + 1)
            + self.packs.capacity() * 32
            + self.pack_numbers.capacity() * (std::mem::size_of::<(Id, u32)>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_format::pack::PackEntry;
    use baton_types::BlobType;
    use proptest::prelude::*;

    #[test]
    fn buckets_find_every_blob_of_a_large_index() {
        let id = |i: u64| Id::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes());
        let mut idx = Index::new();
        for p in 0..500u64 {
            let blobs = (0..100)
                .map(|j| PackEntry {
                    blob_type: BlobType::Data,
                    id: id(p * 100 + j),
                    offset: j as u32,
                    length: 1,
                    raw_length: 1,
                    compressed: false,
                })
                .collect();
            idx.load_file(&IndexFile {
                supersedes: vec![],
                packs: vec![IndexPack {
                    id: id((1 << 40) | p),
                    blobs,
                }],
                damaged: Vec::new(),
            });
        }
        idx.compact();
        assert!(idx.bucket_bits >= 12, "{}", idx.bucket_bits);
        for i in 0..50_000 {
            let loc = idx.get(&id(i)).expect("indexed blob found");
            assert_eq!(loc.pack, id((1 << 40) | (i / 100)));
            assert_eq!(loc.offset, (i % 100) as u32);
        }
        assert!((50_000..60_000).all(|i| !idx.contains(&id(i))));
        // A blob added after loading is found too, and after compacting again.
        let extra = IndexPack {
            id: id(1 << 41),
            blobs: vec![PackEntry {
                blob_type: BlobType::Tree,
                id: id(99_999_999),
                offset: 7,
                length: 1,
                raw_length: 1,
                compressed: true,
            }],
        };
        idx.add_pack(&extra);
        assert_eq!(idx.get(&id(99_999_999)).unwrap().offset, 7);
        idx.compact();
        assert_eq!(idx.get(&id(99_999_999)).unwrap().blob_type, BlobType::Tree);
        assert_eq!(idx.len(), 50_001);
    }

    proptest! {
        #[test]
        fn every_added_blob_is_found(ids in proptest::collection::hash_set(proptest::array::uniform32(any::<u8>()), 0..200)) {
            let ids: Vec<Id> = ids.into_iter().map(Id::from_bytes).collect();
            let mut idx = Index::new();
            for (n, chunk) in ids.chunks(7).enumerate() {
                let pack = Id::from_bytes([n as u8; 32]);
                let blobs = chunk.iter().enumerate().map(|(i, id)| PackEntry {
                    blob_type: BlobType::Data, id: *id, offset: i as u32 * 100, length: 100, raw_length: 60, compressed: false,
                }).collect();
                idx.add_file(&IndexFile { supersedes: vec![], packs: vec![IndexPack { id: pack, blobs }], damaged: vec![] });
            }
            prop_assert_eq!(idx.len(), ids.len());
            // Half of the lookups before compaction, half after.
            if ids.len().is_multiple_of(2) { idx.compact(); }
            // Loading in bulk finds the same, and keeps first locations.
            let mut bulk = Index::new();
            for (n, chunk) in ids.chunks(7).enumerate() {
                let pack = Id::from_bytes([n as u8; 32]);
                let blobs: Vec<PackEntry> = chunk.iter().enumerate().map(|(i, id)| PackEntry {
                    blob_type: BlobType::Data, id: *id, offset: i as u32 * 100, length: 100, raw_length: 60, compressed: false,
                }).collect();
                bulk.load_file(&IndexFile { supersedes: vec![], packs: vec![IndexPack { id: pack, blobs: blobs.clone() }], damaged: vec![] });
                // The same blobs again in a pack loaded later: ignored.
                bulk.load_file(&IndexFile { supersedes: vec![], packs: vec![IndexPack { id: Id::from_bytes([200 + n as u8; 32]), blobs }], damaged: vec![] });
            }
            bulk.compact();
            prop_assert_eq!(bulk.len(), ids.len());
            for (i, id) in ids.iter().enumerate() {
                let loc = bulk.get(id).unwrap();
                prop_assert_eq!(loc.pack, Id::from_bytes([(i / 7) as u8; 32]));
                prop_assert_eq!(loc.offset, (i % 7) as u32 * 100);
            }
            for (i, id) in ids.iter().enumerate() {
                let loc = idx.get(id).unwrap();
                prop_assert_eq!(loc.pack, Id::from_bytes([(i / 7) as u8; 32]));
                prop_assert_eq!(loc.offset, (i % 7) as u32 * 100);
            }
            prop_assert!(!idx.contains(&Id::from_bytes([0xff; 32])) || ids.contains(&Id::from_bytes([0xff; 32])));
        }
    }
}
