//! Pack files: many sealed blobs followed by a sealed header that lists them.
//!
//! ```text
//! pack   = blob* sealed_header header_len:u32le
//! blob   = sealed(payload)                  payload = zstd(chunk) or chunk
//! header = sealed("BTNPACK1" count:u32le entry*)
//! ```
//! A blob is sealed bound to its type and id ([`crate::role::blob`]), the
//! header to its role and the repository ([`crate::role::pack_header`]).
//! ```text
//! entry  = type:u8 flags:u8 length:u32le raw_length:u32le id:[32]   (42 bytes)
//! ```
//! Blob offsets are implicit: blobs are stored back to back in header order
//! starting at offset 0. `flags` bit 0 means the payload is zstd-compressed;
//! `raw_length` is the plaintext length after decompression. Because each pack
//! carries its own header, the index can always be rebuilt from the packs.

use crate::FormatError;
use crate::crypto::{MasterKey, OVERHEAD};
use crate::role;
use baton_types::{BlobType, Id};

/// Magic at the start of a decrypted pack header. Chosen once; never changes.
pub const HEADER_MAGIC: &[u8; 8] = b"BTNPACK1";
const ENTRY_LEN: usize = 42;
/// Largest header accepted when reading (about 400k blobs).
pub const MAX_HEADER: usize = 16 << 20;

/// One blob of a pack as listed in its header, with its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub blob_type: BlobType,
    pub id: Id,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
    pub compressed: bool,
}

/// Accumulates sealed blobs into a pack in memory.
#[derive(Default)]
pub struct PackWriter {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl PackWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer that fills `buf` (cleared first): a reused buffer saves
    /// allocating and faulting in a pack's worth of memory per pack.
    pub fn with_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        PackWriter {
            buf,
            entries: Vec::new(),
        }
    }

    /// Appends a sealed blob.
    pub fn add(
        &mut self,
        blob_type: BlobType,
        id: Id,
        sealed: &[u8],
        raw_length: u32,
        compressed: bool,
    ) {
        self.entries.push(PackEntry {
            blob_type,
            id,
            offset: self.buf.len() as u32,
            length: sealed.len() as u32,
            raw_length,
            compressed,
        });
        self.buf.extend_from_slice(sealed);
    }

    /// Bytes of blob data so far.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Appends the sealed header and returns the pack bytes and its entries.
    pub fn finish(mut self, key: &MasterKey, repository: &Id) -> (Vec<u8>, Vec<PackEntry>) {
        let mut h = Vec::with_capacity(12 + self.entries.len() * ENTRY_LEN);
        h.extend_from_slice(HEADER_MAGIC);
        h.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            h.push(e.blob_type.as_byte());
            h.push(e.compressed as u8);
            h.extend_from_slice(&e.length.to_le_bytes());
            h.extend_from_slice(&e.raw_length.to_le_bytes());
            h.extend_from_slice(e.id.as_bytes());
        }
        let sealed = key.encrypt(&role::pack_header(repository), &h);
        self.buf.extend_from_slice(&sealed);
        self.buf
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        (self.buf, self.entries)
    }
}

/// Length of the sealed header, read from the last 4 bytes of a pack.
pub fn header_length(pack_len: u64, tail: &[u8]) -> Result<u32, FormatError> {
    let t: [u8; 4] = tail
        .try_into()
        .map_err(|_| FormatError::malformed("pack", "tail is not 4 bytes"))?;
    let n = u32::from_le_bytes(t);
    if (n as usize) < OVERHEAD + 12 || n as u64 + 4 > pack_len || n as usize > MAX_HEADER {
        return Err(FormatError::malformed(
            "pack",
            format!("header length {n} impossible for a pack of {pack_len} bytes"),
        ));
    }
    Ok(n)
}

/// Decodes a sealed header and checks it against the pack's length.
pub fn parse_header(
    key: &MasterKey,
    repository: &Id,
    sealed_header: &[u8],
    pack_len: u64,
) -> Result<Vec<PackEntry>, FormatError> {
    let h = key.decrypt(&role::pack_header(repository), sealed_header)?;
    if h.len() < 12 || &h[..8] != HEADER_MAGIC {
        return Err(FormatError::malformed("pack header", "bad magic"));
    }
    let count = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes")) as usize;
    let body = &h[12..];
    if body.len() != count * ENTRY_LEN {
        return Err(FormatError::malformed(
            "pack header",
            format!(
                "{count} entries need {} bytes, have {}",
                count * ENTRY_LEN,
                body.len()
            ),
        ));
    }
    let mut entries = Vec::with_capacity(count);
    let mut offset: u64 = 0;
    for e in body.chunks_exact(ENTRY_LEN) {
        let blob_type = BlobType::from_byte(e[0]).ok_or_else(|| {
            FormatError::malformed("pack header", format!("unknown blob type {}", e[0]))
        })?;
        if e[1] > 1 {
            return Err(FormatError::malformed(
                "pack header",
                format!("unknown flags {}", e[1]),
            ));
        }
        let length = u32::from_le_bytes(e[2..6].try_into().expect("4 bytes"));
        let raw_length = u32::from_le_bytes(e[6..10].try_into().expect("4 bytes"));
        let id = Id::from_slice(&e[10..42]).expect("32 bytes");
        if (length as usize) < OVERHEAD {
            return Err(FormatError::malformed(
                "pack header",
                "blob shorter than its seal",
            ));
        }
        entries.push(PackEntry {
            blob_type,
            id,
            offset: offset as u32,
            length,
            raw_length,
            compressed: e[1] == 1,
        });
        offset += length as u64;
    }
    let expected = offset + sealed_header.len() as u64 + 4;
    if expected != pack_len {
        return Err(FormatError::malformed(
            "pack",
            format!("blobs and header cover {expected} bytes but the pack has {pack_len}"),
        ));
    }
    Ok(entries)
}

/// Reads the header of a whole pack held in memory.
pub fn read_header(
    key: &MasterKey,
    repository: &Id,
    pack: &[u8],
) -> Result<Vec<PackEntry>, FormatError> {
    if pack.len() < 4 {
        return Err(FormatError::malformed("pack", "shorter than 4 bytes"));
    }
    let n = header_length(pack.len() as u64, &pack[pack.len() - 4..])? as usize;
    let start = pack.len() - 4 - n;
    parse_header(
        key,
        repository,
        &pack[start..pack.len() - 4],
        pack.len() as u64,
    )
}

/// Buffers for [`open_blob_into`], reused across blobs.
#[derive(Default)]
pub struct BlobBuffers {
    plain: Vec<u8>,
    raw: Vec<u8>,
}

/// Like [`open_blob`], into reused buffers: returns the verified plaintext,
/// borrowed from `bufs`. Restoring or checking many blobs this way does not
/// allocate (and fault in) fresh memory for each.
pub fn open_blob_into<'b>(
    key: &MasterKey,
    blob_type: BlobType,
    id: &Id,
    sealed: &[u8],
    raw_length: u32,
    compressed: bool,
    bufs: &'b mut BlobBuffers,
) -> Result<&'b [u8], FormatError> {
    key.decrypt_into(&role::blob(blob_type, id), sealed, &mut bufs.plain)?;
    let data = if compressed {
        crate::compress::decompress_into(&bufs.plain, raw_length as usize, &mut bufs.raw)?;
        &bufs.raw
    } else {
        &bufs.plain
    };
    let actual = key.blob_id(data);
    if &actual != id {
        return Err(FormatError::malformed(
            "blob",
            format!(
                "content hashes to {} instead of {}",
                actual.short(),
                id.short()
            ),
        ));
    }
    Ok(data)
}

/// Seals a blob's payload (compressed or not) bound to its type and id.
pub fn seal_blob_into(
    key: &MasterKey,
    blob_type: BlobType,
    id: &Id,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    key.encrypt_into(&role::blob(blob_type, id), payload, out)
}

/// Opens one blob's sealed bytes: decrypts, decompresses, and verifies that the
/// plaintext hashes to the expected id.
pub fn open_blob(
    key: &MasterKey,
    blob_type: BlobType,
    id: &Id,
    sealed: &[u8],
    raw_length: u32,
    compressed: bool,
) -> Result<Vec<u8>, FormatError> {
    let mut bufs = BlobBuffers::default();
    open_blob_into(
        key, blob_type, id, sealed, raw_length, compressed, &mut bufs,
    )?;
    Ok(if compressed { bufs.raw } else { bufs.plain })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Compressor;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pack_round_trip(blobs in proptest::collection::vec(proptest::collection::vec(0u8..5, 0..3000), 1..12)) {
            let key = MasterKey::generate();
            let repo = Id::from_bytes([3; 32]);
            let mut c = Compressor::new(3);
            let mut w = PackWriter::new();
            let mut sealed = Vec::new();
            for b in &blobs {
                let id = key.blob_id(b);
                match c.compress(b) {
                    Some(z) => {
                        seal_blob_into(&key, BlobType::Data, &id, &z, &mut sealed);
                        w.add(BlobType::Data, id, &sealed, b.len() as u32, true)
                    }
                    None => {
                        seal_blob_into(&key, BlobType::Tree, &id, b, &mut sealed);
                        w.add(BlobType::Tree, id, &sealed, b.len() as u32, false)
                    }
                }
            }
            let (pack, entries) = w.finish(&key, &repo);
            let parsed = read_header(&key, &repo, &pack).unwrap();
            prop_assert_eq!(&parsed, &entries);
            prop_assert!(read_header(&key, &Id::from_bytes([4; 32]), &pack).is_err());
            for (e, b) in parsed.iter().zip(&blobs) {
                let sealed = &pack[e.offset as usize..(e.offset + e.length) as usize];
                prop_assert_eq!(&open_blob(&key, e.blob_type, &e.id, sealed, e.raw_length, e.compressed).unwrap(), b);
                let other = if e.blob_type == BlobType::Data { BlobType::Tree } else { BlobType::Data };
                prop_assert!(open_blob(&key, other, &e.id, sealed, e.raw_length, e.compressed).is_err());
            }
        }

        #[test]
        fn damaged_packs_never_panic(cut in 0usize..2000, flip in any::<usize>()) {
            let key = MasterKey::generate();
            let repo = Id::from_bytes([3; 32]);
            let mut w = PackWriter::new();
            let id = key.blob_id(b"abc");
            let mut sealed = Vec::new();
            seal_blob_into(&key, BlobType::Data, &id, b"abc", &mut sealed);
            w.add(BlobType::Data, id, &sealed, 3, false);
            let (pack, _) = w.finish(&key, &repo);
            let mut p = pack.clone();
            let i = flip % p.len();
            p[i] ^= 0x40;
            prop_assert!(read_header(&key, &repo, &p).is_err() || i < 43);
            let _ = read_header(&key, &repo, &pack[..cut.min(pack.len())]);
        }
    }

    #[test]
    fn blob_with_wrong_id_is_rejected() {
        let key = MasterKey::generate();
        let id = key.blob_id(b"data");
        let mut sealed = Vec::new();
        seal_blob_into(&key, BlobType::Data, &id, b"data", &mut sealed);
        let other = key.blob_id(b"other");
        assert!(open_blob(&key, BlobType::Data, &other, &sealed, 4, false).is_err());
        assert!(open_blob(&key, BlobType::Tree, &id, &sealed, 4, false).is_err());
        assert!(open_blob(&key, BlobType::Data, &id, &sealed, 4, false).is_ok());
    }
}
