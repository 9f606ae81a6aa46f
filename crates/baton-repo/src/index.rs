//! The in-memory index: blob id -> location, built from the index objects.
//!
//! Memory is the constraint (a repository can hold tens of millions of
//! chunks), so an entry is 48 bytes: the 32-byte id, and the location packed
//! into 16 (pack *number*, offset, length, raw length; blob type and
//! compression in the top bits of the pack number). Loaded entries live in
//! one vector sorted by id (binary search); blobs added afterwards (a backup's
//! new packs) go to a small hash map until the next [`Index::compact`].

use baton_format::index::{IndexFile, IndexPack};
use baton_types::{BlobLocation, BlobType, Id};
use std::collections::HashMap;

const TREE_BIT: u32 = 1 << 31;
const COMPRESSED_BIT: u32 = 1 << 30;
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
    recent: HashMap<Id, Loc>,
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the entries of one decoded index object.
    pub fn add_file(&mut self, f: &IndexFile) {
        for p in &f.packs {
            self.add_pack(p);
        }
    }

    /// Adds a pack's blobs; a blob already indexed keeps its first location.
    pub fn add_pack(&mut self, p: &IndexPack) {
        let number = *self.pack_numbers.entry(p.id).or_insert_with(|| {
            self.packs.push(p.id);
            (self.packs.len() - 1) as u32
        });
        assert!(number <= PACK_MASK, "more than 2^30 packs in one index");
        for e in &p.blobs {
            if self.find(&e.id).is_some() {
                continue;
            }
            let mut flags = 0;
            if e.blob_type == BlobType::Tree {
                flags |= TREE_BIT;
            }
            if e.compressed {
                flags |= COMPRESSED_BIT;
            }
            self.recent.insert(
                e.id,
                Loc {
                    pack_and_flags: number | flags,
                    offset: e.offset,
                    length: e.length,
                    raw_length: e.raw_length,
                },
            );
        }
    }

    /// Moves recent additions into the sorted vector (call after loading).
    pub fn compact(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        self.sorted.reserve_exact(self.recent.len());
        self.sorted
            .extend(self.recent.drain().map(|(id, loc)| Entry { id, loc }));
        self.sorted.sort_unstable_by_key(|e| e.id);
        self.sorted.shrink_to_fit();
        self.recent.shrink_to_fit();
    }

    fn find(&self, id: &Id) -> Option<Loc> {
        if let Ok(i) = self.sorted.binary_search_by(|e| e.id.cmp(id)) {
            return Some(self.sorted[i].loc);
        }
        self.recent.get(id).copied()
    }

    fn location(&self, l: Loc) -> BlobLocation {
        BlobLocation {
            pack: self.packs[(l.pack_and_flags & PACK_MASK) as usize],
            blob_type: if l.pack_and_flags & TREE_BIT != 0 {
                BlobType::Tree
            } else {
                BlobType::Data
            },
            offset: l.offset,
            length: l.length,
            raw_length: l.raw_length,
            compressed: l.pack_and_flags & COMPRESSED_BIT != 0,
        }
    }

    pub fn get(&self, id: &Id) -> Option<BlobLocation> {
        self.find(id).map(|l| self.location(l))
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
                idx.add_file(&IndexFile { supersedes: vec![], packs: vec![IndexPack { id: pack, blobs }] });
            }
            prop_assert_eq!(idx.len(), ids.len());
            // Half of the lookups before compaction, half after.
            if ids.len().is_multiple_of(2) { idx.compact(); }
            for (i, id) in ids.iter().enumerate() {
                let loc = idx.get(id).unwrap();
                prop_assert_eq!(loc.pack, Id::from_bytes([(i / 7) as u8; 32]));
                prop_assert_eq!(loc.offset, (i % 7) as u32 * 100);
            }
            prop_assert!(!idx.contains(&Id::from_bytes([0xff; 32])) || ids.contains(&Id::from_bytes([0xff; 32])));
        }
    }
}
