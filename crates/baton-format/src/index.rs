//! Index objects: which blobs are in which pack, at which offset.
//!
//! ```text
//! index  = sealed_object(payload)    (see object.rs; ids rarely compress, so it is usually raw)
//! payload = "BTNIDX01" n_supersedes:u32le id* n_packs:u32le pack* n_damaged:u32le damaged*
//! pack   = pack_id:[32] n_blobs:u32le blob*
//! blob   = type:u8 flags:u8 offset:u32le length:u32le raw_length:u32le id:[32]   (46 bytes)
//! damaged = pack_id:[32] blob_id:[32]
//! ```
//! `supersedes` lists index objects this one replaces (written by prune and
//! repair); a reader ignores superseded index objects that still exist.
//! `damaged` lists copies of blobs that `check --read-data` found damaged
//! (or whose pack is missing): a reader leaves those copies out, so the next
//! backup stores a fresh copy instead of deduplicating against a bad one.

use crate::FormatError;
use crate::pack::PackEntry;
use baton_types::{BlobType, Id};

/// Magic at the start of a decoded index payload. Chosen once; never changes.
pub const INDEX_MAGIC: &[u8; 8] = b"BTNIDX01";
const BLOB_LEN: usize = 46;

/// The blobs of one pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPack {
    pub id: Id,
    pub blobs: Vec<PackEntry>,
}

/// A decoded index object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFile {
    pub supersedes: Vec<Id>,
    pub packs: Vec<IndexPack>,
    /// (pack, blob) copies known damaged.
    pub damaged: Vec<(Id, Id)>,
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let blobs: usize = self.packs.iter().map(|p| p.blobs.len()).sum();
        let mut b = Vec::with_capacity(
            16 + self.supersedes.len() * 32 + self.packs.len() * 36 + blobs * BLOB_LEN,
        );
        b.extend_from_slice(INDEX_MAGIC);
        b.extend_from_slice(&(self.supersedes.len() as u32).to_le_bytes());
        for s in &self.supersedes {
            b.extend_from_slice(s.as_bytes());
        }
        b.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            b.extend_from_slice(p.id.as_bytes());
            b.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
            for e in &p.blobs {
                b.push(e.blob_type.as_byte());
                b.push(e.compressed as u8);
                b.extend_from_slice(&e.offset.to_le_bytes());
                b.extend_from_slice(&e.length.to_le_bytes());
                b.extend_from_slice(&e.raw_length.to_le_bytes());
                b.extend_from_slice(e.id.as_bytes());
            }
        }
        b.extend_from_slice(&(self.damaged.len() as u32).to_le_bytes());
        for (pack, blob) in &self.damaged {
            b.extend_from_slice(pack.as_bytes());
            b.extend_from_slice(blob.as_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader { b, pos: 0 };
        if r.take(8)? != INDEX_MAGIC {
            return Err(FormatError::malformed("index", "bad magic"));
        }
        let ns = r.u32()? as usize;
        let mut supersedes = Vec::with_capacity(ns.min(r.remaining() / 32));
        for _ in 0..ns {
            supersedes.push(r.id()?);
        }
        let np = r.u32()? as usize;
        let mut packs = Vec::with_capacity(np.min(r.remaining() / 36));
        for _ in 0..np {
            let id = r.id()?;
            let nb = r.u32()? as usize;
            let mut blobs = Vec::with_capacity(nb.min(r.remaining() / BLOB_LEN));
            for _ in 0..nb {
                let t = r.take(1)?[0];
                let blob_type = BlobType::from_byte(t).ok_or_else(|| {
                    FormatError::malformed("index", format!("unknown blob type {t}"))
                })?;
                let flags = r.take(1)?[0];
                if flags > 1 {
                    return Err(FormatError::malformed(
                        "index",
                        format!("unknown flags {flags}"),
                    ));
                }
                let offset = r.u32()?;
                let length = r.u32()?;
                let raw_length = r.u32()?;
                let id = r.id()?;
                blobs.push(PackEntry {
                    blob_type,
                    id,
                    offset,
                    length,
                    raw_length,
                    compressed: flags == 1,
                });
            }
            packs.push(IndexPack { id, blobs });
        }
        let nd = r.u32()? as usize;
        let mut damaged = Vec::with_capacity(nd.min(r.remaining() / 64));
        for _ in 0..nd {
            damaged.push((r.id()?, r.id()?));
        }
        if r.remaining() != 0 {
            return Err(FormatError::malformed(
                "index",
                format!("{} trailing bytes", r.remaining()),
            ));
        }
        Ok(IndexFile {
            supersedes,
            packs,
            damaged,
        })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.remaining() < n {
            return Err(FormatError::malformed("index", "truncated"));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn id(&mut self) -> Result<Id, FormatError> {
        Ok(Id::from_slice(self.take(32)?).expect("32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = PackEntry> {
        (
            any::<bool>(),
            proptest::array::uniform32(any::<u8>()),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
        )
            .prop_map(
                |(t, id, offset, length, raw_length, compressed)| PackEntry {
                    blob_type: if t { BlobType::Tree } else { BlobType::Data },
                    id: Id::from_bytes(id),
                    offset,
                    length,
                    raw_length,
                    compressed,
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(sup in proptest::collection::vec(proptest::array::uniform32(any::<u8>()), 0..3),
                      packs in proptest::collection::vec((proptest::array::uniform32(any::<u8>()), proptest::collection::vec(entry(), 0..20)), 0..5)) {
            let f = IndexFile {
                supersedes: sup.iter().copied().map(Id::from_bytes).collect(),
                packs: packs.into_iter().map(|(id, blobs)| IndexPack { id: Id::from_bytes(id), blobs }).collect(),
                damaged: sup.into_iter().map(|s| (Id::from_bytes(s), Id::from_bytes([1; 32]))).collect(),
            };
            let enc = f.encode();
            prop_assert_eq!(IndexFile::decode(&enc).unwrap(), f);
            for cut in [0, 7, enc.len() / 2, enc.len().saturating_sub(1)] {
                if cut < enc.len() {
                    prop_assert!(IndexFile::decode(&enc[..cut]).is_err());
                }
            }
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = IndexFile::decode(&b);
            let mut with_magic = INDEX_MAGIC.to_vec();
            with_magic.extend_from_slice(&b);
            let _ = IndexFile::decode(&with_magic);
        }
    }
}
