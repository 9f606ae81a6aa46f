//! The fixed index of a block image: which chunk holds each `chunk_size`
//! bytes of the image, found in O(1) per offset.
//!
//! An image of `image_size` bytes is cut at multiples of `chunk_size`; chunk
//! `i` covers `[i * chunk_size, min((i + 1) * chunk_size, image_size))`. The
//! ids of the chunks are stored in segments of `segment_chunks` entries (the
//! last one shorter), each a blob of type `fixed`; the root, another `fixed`
//! blob, lists the segment ids. A JSON tree would not do: a 2 TiB device at
//! 1 MiB is two million ids. Both are binary, little-endian:
//!
//! ```text
//! root:    "BTNFIXR1" chunk_size:u32 segment_chunks:u32 image_size:u64
//!          segments:u32 segment_id[segments]:32 bytes each
//! segment: "BTNFIXS1" first_chunk:u64 count:u32 chunk_id[count]:32 bytes each
//! ```
//!
//! A chunk id of 32 zero bytes is a hole (the chunk is all zeros and was not
//! stored); a keyed BLAKE3 id is never all zeros in practice (2^-256).
//! Blob ids are keyed hashes of these bytes, so the root binds every segment
//! and every segment binds its chunks, as a tree binds its content.

use crate::FormatError;
use baton_types::Id;

const ROOT_MAGIC: &[u8; 8] = b"BTNFIXR1";
const SEGMENT_MAGIC: &[u8; 8] = b"BTNFIXS1";
const ROOT_HEADER: usize = 8 + 4 + 4 + 8 + 4;
const SEGMENT_HEADER: usize = 8 + 8 + 4;

/// Smallest and largest chunk sizes accepted (powers of two).
pub const MIN_CHUNK_SIZE: u32 = 4 << 10;
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
/// Default chunk size of `backup --block`: 1 MiB (see docs/design.md).
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Entries per segment written by this version: 256 ids (8 KiB), 256 MiB
/// of image at 1 MiB. Readers accept 1..=[`MAX_SEGMENT_CHUNKS`].
pub const SEGMENT_CHUNKS: u32 = 256;
pub const MAX_SEGMENT_CHUNKS: u32 = 1 << 16;
/// Largest image accepted: 2^56 bytes (64 PiB).
pub const MAX_IMAGE_SIZE: u64 = 1 << 56;

/// The shape of an image: its size and how it is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub chunk_size: u32,
    pub segment_chunks: u32,
    pub image_size: u64,
}

impl Layout {
    /// Checks the sizes; every reader relies on these bounds.
    pub fn new(chunk_size: u32, segment_chunks: u32, image_size: u64) -> Result<Self, FormatError> {
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        {
            return Err(FormatError::malformed(
                "fixed index",
                format!("chunk size {chunk_size} is not a power of two from 4 KiB to 64 MiB"),
            ));
        }
        if !(1..=MAX_SEGMENT_CHUNKS).contains(&segment_chunks) {
            return Err(FormatError::malformed(
                "fixed index",
                format!("{segment_chunks} entries per segment"),
            ));
        }
        if image_size > MAX_IMAGE_SIZE {
            return Err(FormatError::malformed(
                "fixed index",
                format!("image size {image_size} is too large"),
            ));
        }
        Ok(Layout {
            chunk_size,
            segment_chunks,
            image_size,
        })
    }

    pub fn chunk_count(&self) -> u64 {
        self.image_size.div_ceil(u64::from(self.chunk_size))
    }

    pub fn segment_count(&self) -> u64 {
        self.chunk_count().div_ceil(u64::from(self.segment_chunks))
    }

    /// The chunk holding byte `offset` (which must be below the size).
    pub fn chunk_of(&self, offset: u64) -> u64 {
        offset / u64::from(self.chunk_size)
    }

    /// Start and length of chunk `i`.
    pub fn chunk_range(&self, i: u64) -> (u64, u64) {
        let start = i * u64::from(self.chunk_size);
        (
            start,
            (self.image_size - start.min(self.image_size)).min(u64::from(self.chunk_size)),
        )
    }

    /// The segment holding chunk `i`, and the chunk's place in it.
    pub fn segment_of(&self, chunk: u64) -> (u64, usize) {
        let s = u64::from(self.segment_chunks);
        (chunk / s, (chunk % s) as usize)
    }

    /// First chunk and number of chunks of segment `s`.
    pub fn segment_range(&self, s: u64) -> (u64, u32) {
        let first = s * u64::from(self.segment_chunks);
        let n = (self.chunk_count() - first.min(self.chunk_count()))
            .min(u64::from(self.segment_chunks));
        (first, n as u32)
    }
}

/// The root of a fixed index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedRoot {
    pub layout: Layout,
    pub segments: Vec<Id>,
}

impl FixedRoot {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(ROOT_HEADER + 32 * self.segments.len());
        b.extend_from_slice(ROOT_MAGIC);
        b.extend_from_slice(&self.layout.chunk_size.to_le_bytes());
        b.extend_from_slice(&self.layout.segment_chunks.to_le_bytes());
        b.extend_from_slice(&self.layout.image_size.to_le_bytes());
        b.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for s in &self.segments {
            b.extend_from_slice(s.as_bytes());
        }
        b
    }

    /// Decodes untrusted bytes: sizes in bounds, exactly as many segments
    /// as the size needs, nothing trailing.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let bad = |d: String| FormatError::malformed("fixed index root", d);
        if b.len() < ROOT_HEADER || &b[..8] != ROOT_MAGIC {
            return Err(bad("not a fixed index root".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let size = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
        let layout = Layout::new(u32_at(8), u32_at(12), size)?;
        let n = u64::from(u32_at(24));
        if n != layout.segment_count() {
            return Err(bad(format!(
                "{n} segments for an image that needs {}",
                layout.segment_count()
            )));
        }
        let rest = &b[ROOT_HEADER..];
        if rest.len() as u64 != n * 32 {
            return Err(bad(format!("{} bytes of segment ids for {n}", rest.len())));
        }
        let segments = rest.chunks_exact(32).map(id_of).collect();
        Ok(FixedRoot { layout, segments })
    }
}

fn id_of(b: &[u8]) -> Id {
    Id::from_bytes(b.try_into().expect("32 bytes"))
}

/// One segment: the chunk ids of `count` consecutive chunks; `None` is a hole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedSegment {
    pub first_chunk: u64,
    pub chunks: Vec<Option<Id>>,
}

impl FixedSegment {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SEGMENT_HEADER + 32 * self.chunks.len());
        b.extend_from_slice(SEGMENT_MAGIC);
        b.extend_from_slice(&self.first_chunk.to_le_bytes());
        b.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            match c {
                Some(id) => b.extend_from_slice(id.as_bytes()),
                None => b.extend_from_slice(&[0; 32]),
            }
        }
        b
    }

    /// Decodes untrusted bytes as segment `index` of an image of `layout`:
    /// its first chunk and count must be the ones that place implies.
    pub fn decode(b: &[u8], layout: &Layout, index: u64) -> Result<Self, FormatError> {
        let bad = |d: String| FormatError::malformed("fixed index segment", d);
        if b.len() < SEGMENT_HEADER || &b[..8] != SEGMENT_MAGIC {
            return Err(bad("not a fixed index segment".into()));
        }
        let first = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        let count = u32::from_le_bytes(b[16..20].try_into().expect("4 bytes"));
        let (want_first, want_count) = layout.segment_range(index);
        if first != want_first || count != want_count {
            return Err(bad(format!(
                "covers chunks {first}+{count}, expected {want_first}+{want_count} (segment {index})"
            )));
        }
        let rest = &b[SEGMENT_HEADER..];
        if rest.len() as u64 != u64::from(count) * 32 {
            return Err(bad(format!("{} bytes of ids for {count}", rest.len())));
        }
        let chunks = rest
            .chunks_exact(32)
            .map(|c| (c != [0u8; 32]).then(|| id_of(c)))
            .collect();
        Ok(FixedSegment {
            first_chunk: first,
            chunks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_cuts_the_image() {
        let l = Layout::new(4096, 3, 4096 * 7 + 10).unwrap();
        assert_eq!(l.chunk_count(), 8);
        assert_eq!(l.segment_count(), 3);
        assert_eq!(l.chunk_range(7), (4096 * 7, 10));
        assert_eq!(l.segment_range(2), (6, 2));
        assert_eq!(l.segment_of(7), (2, 1));
        assert_eq!(l.chunk_of(4096 * 7 + 9), 7);
        let empty = Layout::new(4096, 3, 0).unwrap();
        assert_eq!((empty.chunk_count(), empty.segment_count()), (0, 0));
        assert!(Layout::new(4095, 3, 1).is_err());
        assert!(Layout::new(1 << 27, 3, 1).is_err());
        assert!(Layout::new(4096, 0, 1).is_err());
        assert!(Layout::new(4096, 1, u64::MAX).is_err());
    }

    #[test]
    fn a_segment_must_sit_where_it_claims() {
        let l = Layout::new(4096, 2, 4096 * 3).unwrap();
        let s = FixedSegment {
            first_chunk: 2,
            chunks: vec![Some(Id::from_bytes([1; 32]))],
        };
        assert_eq!(FixedSegment::decode(&s.encode(), &l, 1).unwrap(), s);
        assert!(FixedSegment::decode(&s.encode(), &l, 0).is_err());
        let root = FixedRoot {
            layout: l,
            segments: vec![Id::from_bytes([2; 32])],
        };
        assert!(
            FixedRoot::decode(&root.encode()).is_err(),
            "needs two segments"
        );
    }

    proptest! {
        #[test]
        fn round_trip(size in 0u64..1 << 24, seg in 1u32..9, holes in proptest::collection::vec(any::<bool>(), 0..64)) {
            let l = Layout::new(64 << 10, seg, size).unwrap();
            let root = FixedRoot { layout: l, segments: (0..l.segment_count()).map(|i| Id::from_bytes([(i as u8).wrapping_add(1); 32])).collect() };
            prop_assert_eq!(FixedRoot::decode(&root.encode()).unwrap(), root.clone());
            for s in 0..l.segment_count() {
                let (first, n) = l.segment_range(s);
                let chunks = (0..n).map(|i| (!holes.get(i as usize).copied().unwrap_or(false)).then(|| Id::from_bytes([(i as u8).wrapping_add(7); 32]))).collect();
                let seg = FixedSegment { first_chunk: first, chunks };
                prop_assert_eq!(FixedSegment::decode(&seg.encode(), &l, s).unwrap(), seg);
            }
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = FixedRoot::decode(&b);
            let l = Layout::new(4096, 4, 1 << 20).unwrap();
            let _ = FixedSegment::decode(&b, &l, 3);
        }
    }
}
