//! Content-defined chunking with FastCDC (2020, normalization level 1) and the
//! repository's seeded gear table. An insertion in a large file changes only the
//! chunks around it; everything before and after keeps its boundaries.

use baton_types::ChunkerParams;
use fastcdc::v2020::{Normalization, StreamCDC};
use std::io::Read;

/// Splits a byte stream into chunks.
pub struct Chunker<R: Read> {
    inner: StreamCDC<R>,
}

impl<R: Read> Chunker<R> {
    pub fn new(reader: R, p: &ChunkerParams) -> Self {
        Chunker {
            inner: StreamCDC::with_level_and_seed(
                reader,
                p.min_size as usize,
                p.avg_size as usize,
                p.max_size as usize,
                Normalization::Level1,
                p.seed,
            ),
        }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.inner.next()? {
            Ok(c) => Some(Ok(c.data)),
            Err(fastcdc::v2020::Error::IoError(e)) => Some(Err(e)),
            Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
        }
    }
}

/// Why cutting a stream stopped.
#[derive(Debug)]
pub enum StreamError<E> {
    /// Reading failed after `read` bytes.
    Io { error: std::io::Error, read: u64 },
    /// The sink returned an error.
    Sink(E),
}

/// Cuts streams into chunks like [`Chunker`], but with one buffer reused for
/// every stream: a backup of many small files must not allocate (and zero)
/// a max-size buffer per file. Produces exactly the chunks of [`Chunker`].
pub struct ChunkStream {
    params: ChunkerParams,
    buf: Vec<u8>,
}

impl ChunkStream {
    pub fn new(params: &ChunkerParams) -> Self {
        ChunkStream {
            params: *params,
            buf: Vec::new(),
        }
    }

    fn cut(&self, data: &[u8]) -> usize {
        let p = &self.params;
        let cdc = fastcdc::v2020::FastCDC::with_level_and_seed(
            data,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            Normalization::Level1,
            p.seed,
        );
        cdc.cut(0, data.len()).1
    }

    /// Reads `reader` to its end and passes each chunk, in order, to `sink`.
    /// Returns the number of bytes read.
    pub fn run<R: Read, E>(
        &mut self,
        mut reader: R,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, StreamError<E>> {
        let max = self.params.max_size as usize;
        if self.buf.len() < 2 * max {
            self.buf = vec![0; 2 * max];
        }
        let (mut start, mut end, mut eof, mut read) = (0usize, 0usize, false, 0u64);
        loop {
            // Fill until a whole max-size window is available, or the end.
            while !eof && end - start < max {
                if end == self.buf.len() {
                    self.buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                }
                match reader.read(&mut self.buf[end..]) {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        end += n;
                        read += n as u64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(StreamError::Io { error, read }),
                }
            }
            if start == end {
                return Ok(read);
            }
            let window = (end - start).min(max);
            let len = self.cut(&self.buf[start..start + window]);
            sink(&self.buf[start..start + len]).map_err(StreamError::Sink)?;
            start += len;
        }
    }
}

/// Chunk boundaries (end offsets) of an in-memory buffer; for tests and tools.
pub fn boundaries(data: &[u8], p: &ChunkerParams) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut pos = 0;
    for c in Chunker::new(data, p) {
        pos += c.expect("reading from a slice cannot fail").len();
        ends.push(pos);
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small(seed: u64) -> ChunkerParams {
        ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
            seed,
        }
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn chunks_concatenate_to_input_and_respect_bounds() {
        let data = pseudo_random(300_000, 7);
        let p = small(1);
        let chunks: Vec<Vec<u8>> = Chunker::new(&data[..], &p).map(|c| c.unwrap()).collect();
        assert_eq!(chunks.concat(), data);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= 1024 && c.len() <= 16384, "{}", c.len());
        }
    }

    /// Returns at most `step` bytes per read, to exercise refills.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// The buffer-reusing stream cuts exactly like the reference chunker,
        /// whatever the read sizes, across several streams in a row.
        #[test]
        fn chunk_stream_matches_chunker(seed in any::<u64>(), lens in proptest::collection::vec(0usize..120_000, 1..4), step in 1usize..70_000) {
            let p = small(seed);
            let mut cs = ChunkStream::new(&p);
            for (i, len) in lens.into_iter().enumerate() {
                let data = pseudo_random(len, seed ^ i as u64);
                let want: Vec<Vec<u8>> = Chunker::new(&data[..], &p).map(|c| c.unwrap()).collect();
                let mut got = Vec::new();
                let n = cs.run(Trickle { data: &data, step }, |c| { got.push(c.to_vec()); Ok::<(), ()>(()) }).unwrap();
                prop_assert_eq!(n, len as u64);
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn seed_changes_boundaries() {
        let data = pseudo_random(200_000, 9);
        assert_ne!(boundaries(&data, &small(1)), boundaries(&data, &small(2)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// An insertion changes only nearby boundaries: boundaries well before
        /// the insertion are identical, and boundaries well after it are the
        /// same shifted by the insertion's length.
        #[test]
        fn boundaries_stable_under_insert(seed in any::<u64>(), at in 0usize..200_000, ins in proptest::collection::vec(any::<u8>(), 1..3000)) {
            let p = small(seed);
            let data = pseudo_random(200_000, seed);
            let mut edited = data[..at].to_vec();
            edited.extend_from_slice(&ins);
            edited.extend_from_slice(&data[at..]);
            let a = boundaries(&data, &p);
            let b = boundaries(&edited, &p);
                        // FastCDC 2020 tests cut points two bytes at a time, so a boundary
            // right at the insertion may depend on the first inserted byte.
            let before: Vec<_> = a.iter().filter(|&&e| e + 2 <= at).collect();
            prop_assert_eq!(&before[..], &b.iter().filter(|&&e| e + 2 <= at).collect::<Vec<_>>()[..]);
            // Far after the edit the chunker has resynchronised.
            let far = at + 3 * 16384;
            let after_a: Vec<usize> = a.iter().copied().filter(|&e| e > far).collect();
            let after_b: Vec<usize> = b.iter().copied().filter(|&e| e > far + ins.len()).map(|e| e - ins.len()).collect();
            prop_assert_eq!(after_a, after_b);
        }
    }
}
