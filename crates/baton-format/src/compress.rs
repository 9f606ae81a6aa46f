//! zstd compression of blobs and metadata, skipped when it does not pay.

use crate::FormatError;

/// A reusable compressor (keeps its zstd context between calls).
pub struct Compressor {
    level: i32,
    inner: Option<zstd::bulk::Compressor<'static>>,
}

impl Compressor {
    /// `level` 0 disables compression.
    pub fn new(level: i32) -> Self {
        let inner = if level == 0 {
            None
        } else {
            zstd::bulk::Compressor::new(level).ok()
        };
        Compressor { level, inner }
    }

    pub fn level(&self) -> i32 {
        self.level
    }

    /// Returns the compressed bytes, or `None` when compression is off or does
    /// not save at least 1/32 of the input (then the blob is stored raw).
    pub fn compress(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.compress_into(data, &mut out).then_some(out)
    }

    /// Like [`Compressor::compress`], into `out` (cleared first; reused
    /// across calls, it saves an allocation per blob). Returns whether `out`
    /// holds the compressed bytes worth storing.
    pub fn compress_into(&mut self, data: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        let Some(c) = self.inner.as_mut() else {
            return false;
        };
        if data.len() < 64 {
            return false;
        }
        out.reserve(zstd::zstd_safe::compress_bound(data.len()));
        c.compress_to_buffer(data, out).is_ok() && out.len() + data.len() / 32 < data.len()
    }
}

thread_local! {
    /// One decompression context per thread: creating one per blob showed
    /// up as 12% of a restore's CPU.
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

fn with_dctx<T>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<T>,
) -> Result<T, FormatError> {
    DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| FormatError::Decompress(e.to_string()))?,
            );
        }
        f(slot.as_mut().expect("just created")).map_err(|e| FormatError::Decompress(e.to_string()))
    })
}

/// Decompresses a blob whose plaintext length is known.
pub fn decompress(data: &[u8], raw_len: usize) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::new();
    decompress_into(data, raw_len, &mut out)?;
    Ok(out)
}

/// Like [`decompress`], into `out` (cleared first; reused across calls, it
/// saves an allocation per blob).
pub fn decompress_into(data: &[u8], raw_len: usize, out: &mut Vec<u8>) -> Result<(), FormatError> {
    out.clear();
    out.reserve(raw_len);
    with_dctx(|d| d.decompress_to_buffer(data, out))?;
    if out.len() != raw_len {
        return Err(FormatError::Decompress(format!(
            "expected {raw_len} bytes, got {}",
            out.len()
        )));
    }
    Ok(())
}

/// Decompresses data of unknown length (metadata objects), bounded to `limit`.
pub fn decompress_unknown(data: &[u8], limit: usize) -> Result<Vec<u8>, FormatError> {
    // Frames written by this crate record their size: decode in one call.
    // A recorded size beyond the limit is refused at once: such a frame either
    // decodes to more than the limit or is damaged (the stream decoder below
    // does not check a recorded size against what a frame holds).
    if let Ok(Some(n)) = zstd::zstd_safe::get_frame_content_size(data) {
        if n > limit as u64 {
            return Err(FormatError::Decompress(format!(
                "frame records {n} bytes, more than {limit}"
            )));
        }
        return decompress(data, n as usize);
    }
    let mut out = Vec::new();
    let mut dec = zstd::stream::read::Decoder::new(data)
        .map_err(|e| FormatError::Decompress(e.to_string()))?;
    use std::io::Read;
    (&mut dec)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| FormatError::Decompress(e.to_string()))?;
    if out.len() > limit {
        return Err(FormatError::Decompress(format!("more than {limit} bytes")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(0u8..4, 0..20000)) {
            let mut c = Compressor::new(3);
                        match c.compress(&data) {
                Some(z) => prop_assert_eq!(decompress(&z, data.len()).unwrap(), data),
                // Skipped only when small or when zstd does not save 1/32.
                None => prop_assert!(data.len() < 64 || zstd::bulk::compress(&data, 3).unwrap().len() + data.len() / 32 >= data.len()),
            }
        }
    }

    /// Found by the `object` fuzz target (fuzz/regressions/object/): a frame
    /// whose header declares 2 MiB but whose only block is empty. Whatever
    /// the limit, decoding it is an error: the stream decoder alone used to
    /// return 0 bytes for it, so a small limit accepted what a large one
    /// refused.
    #[test]
    fn fuzz_object_frame_declaring_more_than_it_holds() {
        let frame = [
            0x28, 0xb5, 0x2f, 0xfd, 0xd0, 0x1e, 0x00, 0x04, 0x21, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x01, 0x00, 0x00,
        ];
        for limit in [0, 1000, 2 << 20, crate::object::MAX_OBJECT] {
            assert!(decompress_unknown(&frame, limit).is_err(), "limit {limit}");
        }
    }

    /// A frame that records its size is refused when that size is beyond the
    /// limit, and decoded when it is within.
    #[test]
    fn recorded_size_and_limit() {
        let data = vec![7u8; 5000];
        let z = Compressor::new(3).compress(&data).unwrap();
        assert!(decompress_unknown(&z, 4999).is_err());
        assert_eq!(decompress_unknown(&z, 5000).unwrap(), data);
    }

    #[test]
    fn incompressible_is_skipped_and_zero_level_is_off() {
        let mut rnd = vec![0u8; 4096];
        crate::random_bytes(&mut rnd);
        assert!(Compressor::new(3).compress(&rnd).is_none());
        assert!(Compressor::new(0).compress(&[0u8; 4096]).is_none());
        assert!(decompress(b"not zstd", 10).is_err());
    }
}
