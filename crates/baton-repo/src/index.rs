//! The in-memory index: blob id -> location, built from the index objects.

use baton_format::index::{IndexFile, IndexPack};
use baton_types::{BlobLocation, Id};
use std::collections::{HashMap, HashSet};

/// Maps every indexed blob to the pack that holds it.
#[derive(Default)]
pub struct Index {
    blobs: HashMap<Id, BlobLocation>,
    packs: HashSet<Id>,
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

    pub fn add_pack(&mut self, p: &IndexPack) {
        self.packs.insert(p.id);
        for e in &p.blobs {
            self.blobs.entry(e.id).or_insert(BlobLocation {
                pack: p.id,
                blob_type: e.blob_type,
                offset: e.offset,
                length: e.length,
                raw_length: e.raw_length,
                compressed: e.compressed,
            });
        }
    }

    pub fn get(&self, id: &Id) -> Option<&BlobLocation> {
        self.blobs.get(id)
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    pub fn has_pack(&self, id: &Id) -> bool {
        self.packs.contains(id)
    }

    /// Every indexed blob and its location.
    pub fn iter(&self) -> impl Iterator<Item = (&Id, &BlobLocation)> {
        self.blobs.iter()
    }

    /// Plaintext length of a blob.
    pub fn plain_len(&self, id: &Id) -> Option<u64> {
        self.blobs.get(id).map(|l| l.raw_length as u64)
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
            for (i, id) in ids.iter().enumerate() {
                let loc = idx.get(id).unwrap();
                prop_assert_eq!(loc.pack, Id::from_bytes([(i / 7) as u8; 32]));
                prop_assert_eq!(loc.offset, (i % 7) as u32 * 100);
            }
            prop_assert!(!idx.contains(&Id::from_bytes([0xff; 32])) || ids.contains(&Id::from_bytes([0xff; 32])));
        }
    }
}
