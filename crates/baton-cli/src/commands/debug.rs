//! Hidden developer commands for the benchmark (`bench/run.sh`):
//!
//! - `baton debug primitives`: single-core speed of what a backup runs every
//!   byte through (content-defined chunking, keyed BLAKE3 chunk ids, zstd,
//!   XChaCha20-Poly1305), measured with the repository's own code on generated
//!   data, half text-like and half random. From these the benchmark derives
//!   the CPU floor of a full backup.
//! - `baton debug index-memory`: resident memory per chunk and look-up speed
//!   of the in-memory [`Index`] filled with N synthetic entries.
//!
//! Both print a table, or one JSON object with `--json`.

use crate::baton::Index;
use crate::cli::{DebugCommand, Global, IndexMemoryArgs, PrimitivesArgs};
use anyhow::{Context, Result};
use baton_format::chunker::ChunkStream;
use baton_format::compress::Compressor;
use baton_format::crypto::MasterKey;
use baton_format::index::{IndexFile, IndexPack};
use baton_format::pack::PackEntry;
use baton_types::{BlobType, ChunkerParams, Id};
use serde_json::{Value, json};
use std::hint::black_box;
use std::time::Instant;

const MIB: f64 = 1024.0 * 1024.0;

pub fn run(g: &Global, c: DebugCommand) -> Result<i32> {
    match c {
        DebugCommand::Primitives(a) => primitives(g, &a),
        DebugCommand::IndexMemory(a) => index_memory(g, &a),
    }
}

/// SplitMix64: a small, fast, deterministic generator (the data and ids
/// must be the same on every run, and cheap next to what is measured).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---------------------------------------------------------------------------
// primitives
// ---------------------------------------------------------------------------

/// `n` incompressible bytes.
fn random_data(n: usize, rng: &mut SplitMix) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(n);
    v
}

/// `n` bytes of source-like text: indented lines of words from a made-up
/// vocabulary with a skewed (Zipf-like) frequency, and punctuation. zstd -3
/// gets about 2.5-3x on it, like on real source trees.
fn text_data(n: usize, rng: &mut SplitMix) -> Vec<u8> {
    const LETTERS: &[u8] = b"etaoinshrdlcumwfgypbvkjxqz";
    const PUNCT: [&[u8]; 8] = [b" = ", b"(", b"); ", b", ", b".", b" -> ", b": ", b" "];
    let vocab: Vec<Vec<u8>> = (0..4000)
        .map(|_| {
            let len = 2 + (rng.next() % 10) as usize;
            (0..len)
                .map(|_| {
                    let r = rng.next();
                    let (a, b) = ((r % 26) as usize, ((r >> 8) % 26) as usize);
                    LETTERS[a.min(b)]
                })
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(n + 256);
    while out.len() < n {
        out.extend(std::iter::repeat_n(b' ', (rng.next() % 4) as usize * 4));
        for _ in 0..2 + rng.next() % 9 {
            let u = rng.unit();
            let w = &vocab[((u * u * u) * vocab.len() as f64) as usize];
            out.extend_from_slice(w);
            out.extend_from_slice(PUNCT[(rng.next() & 7) as usize]);
        }
        out.push(b'\n');
    }
    out.truncate(n);
    out
}

/// Seconds each stage took over one sample, and what it produced.
#[derive(Clone, Copy)]
struct StageTimes {
    chunk: f64,
    hash: f64,
    compress: f64,
    seal: f64,
    chunks: usize,
    /// Bytes sealed: the zstd output when compression paid, else the chunk.
    to_seal: u64,
}

impl StageTimes {
    fn min(self, o: StageTimes) -> StageTimes {
        StageTimes {
            chunk: self.chunk.min(o.chunk),
            hash: self.hash.min(o.hash),
            compress: self.compress.min(o.compress),
            seal: self.seal.min(o.seal),
            ..self
        }
    }

    fn add(self, o: StageTimes) -> StageTimes {
        StageTimes {
            chunk: self.chunk + o.chunk,
            hash: self.hash + o.hash,
            compress: self.compress + o.compress,
            seal: self.seal + o.seal,
            chunks: self.chunks + o.chunks,
            to_seal: self.to_seal + o.to_seal,
        }
    }
}

/// Runs `data` through the stages one after the other, on this thread, as
/// the backup pipeline does per chunk: cut (ChunkStream, which copies the
/// input through its buffer like a file read), id (keyed BLAKE3), compress
/// (zstd, kept only when it saves 1/32), seal (XChaCha20-Poly1305 of what
/// is stored).
fn measure(data: &[u8], key: &MasterKey, params: &ChunkerParams, level: i32) -> StageTimes {
    let mut bounds: Vec<(usize, usize)> = Vec::new();
    let mut cs = ChunkStream::new(params);
    let mut pos = 0;
    let t = Instant::now();
    cs.run(data, |c| {
        bounds.push((pos, c.len()));
        pos += c.len();
        Ok::<(), ()>(())
    })
    .map_err(|_| ())
    .expect("chunking an in-memory buffer cannot fail");
    let chunk = t.elapsed().as_secs_f64();
    let chunks: Vec<&[u8]> = bounds.iter().map(|&(o, l)| &data[o..o + l]).collect();

    let t = Instant::now();
    for c in &chunks {
        black_box(key.blob_id(black_box(c)));
    }
    let hash = t.elapsed().as_secs_f64();

    let mut comp = Compressor::new(level);
    let t = Instant::now();
    let compressed: Vec<Option<Vec<u8>>> = chunks.iter().map(|c| comp.compress(c)).collect();
    let compress = t.elapsed().as_secs_f64();

    let mut to_seal = 0u64;
    let t = Instant::now();
    for (c, z) in chunks.iter().zip(&compressed) {
        let plain = z.as_deref().unwrap_or(c);
        to_seal += plain.len() as u64;
        black_box(key.encrypt(b"baton/2/blob\0", plain));
    }
    let seal = t.elapsed().as_secs_f64();
    StageTimes {
        chunk,
        hash,
        compress,
        seal,
        chunks: chunks.len(),
        to_seal,
    }
}

/// Rates in MiB/s of input bytes; the pipeline rate is that of one core
/// doing all four stages: bytes / (sum of the stage times).
fn rates(bytes: usize, t: &StageTimes) -> Value {
    let rate = |s: f64| (bytes as f64 / MIB / s * 10.0).round() / 10.0;
    json!({
        "bytes": bytes,
        "chunks": t.chunks,
        "chunking_mib_s": rate(t.chunk),
        "blake3_keyed_mib_s": rate(t.hash),
        "zstd_mib_s": rate(t.compress),
        "seal_mib_s": rate(t.seal),
        "seal_mib_s_of_sealed_bytes": ((t.to_seal as f64 / MIB / t.seal) * 10.0).round() / 10.0,
        "stored_ratio": (t.to_seal as f64 / bytes as f64 * 1000.0).round() / 1000.0,
        "pipeline_mib_s": rate(t.chunk + t.hash + t.compress + t.seal),
    })
}

fn primitives(g: &Global, a: &PrimitivesArgs) -> Result<i32> {
    let half = (a.mib as usize * 1024 * 1024) / 2;
    let mut rng = SplitMix(0xBA70_0001);
    let samples = [
        ("text", text_data(half, &mut rng)),
        ("random", random_data(half, &mut rng)),
    ];
    let key = MasterKey::from_parts([7; 32], [9; 32]);
    let params = ChunkerParams::with_seed(0x5EED);
    // Warm up (page in the buffers, build the zstd context), then keep the
    // fastest of `repeat` runs of each stage.
    let mut best: Vec<StageTimes> = samples
        .iter()
        .map(|(_, d)| measure(&d[..d.len().min(8 << 20)], &key, &params, a.level))
        .collect();
    for round in 0..a.repeat {
        for (i, (_, d)) in samples.iter().enumerate() {
            let t = measure(d, &key, &params, a.level);
            best[i] = if round == 0 { t } else { best[i].min(t) };
        }
    }
    let mix = best[0].add(best[1]);
    let mut by_sample = serde_json::Map::new();
    for ((name, d), t) in samples.iter().zip(&best) {
        by_sample.insert(name.to_string(), rates(d.len(), t));
    }
    by_sample.insert("mix".into(), rates(2 * half, &mix));
    let out = json!({
        "threads": 1,
        "mib": a.mib,
        "repeat": a.repeat,
        "zstd_level": a.level,
        "chunker": {"min_size": params.min_size, "avg_size": params.avg_size, "max_size": params.max_size},
        "data": "half source-like text, half random bytes; mix = both halves one after the other",
        "samples": by_sample,
        "pipeline_mib_s": by_sample["mix"]["pipeline_mib_s"],
    });
    if g.json {
        super::print_json("primitives", out);
        return Ok(crate::exit::OK);
    }
    outln!(
        "single-core MiB/s of input ({} MiB, best of {}; chunker {}/{}/{} KiB; zstd -{}):",
        a.mib,
        a.repeat,
        params.min_size / 1024,
        params.avg_size / 1024,
        params.max_size / 1024,
        a.level
    );
    outln!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "data",
        "chunking",
        "blake3",
        "zstd",
        "seal",
        "pipeline",
        "stored"
    );
    for name in ["text", "random", "mix"] {
        let r = |k: &str| by_sample[name][k].as_f64().unwrap_or(f64::NAN);
        outln!(
            "{:<8} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>7.1}%",
            name,
            r("chunking_mib_s"),
            r("blake3_keyed_mib_s"),
            r("zstd_mib_s"),
            r("seal_mib_s"),
            r("pipeline_mib_s"),
            r("stored_ratio") * 100.0
        );
    }
    outln!("pipeline = bytes / (sum of the four stage times): one core doing all of it");
    Ok(crate::exit::OK)
}

// ---------------------------------------------------------------------------
// index-memory
// ---------------------------------------------------------------------------

/// A field of /proc/self/status in KiB (VmRSS, VmHWM).
fn status_kib(field: &str) -> Result<u64> {
    let s = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/self/status"))
}

/// The synthetic id number `i` of stream `stream` (0: blobs, 1: absent
/// blobs, 2: packs): uniformly spread, like keyed hashes.
fn synthetic_id(stream: u64, i: u64) -> Id {
    let mut r = SplitMix(i.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ (stream << 56));
    let mut b = [0u8; 32];
    for c in b.chunks_mut(8) {
        c.copy_from_slice(&r.next().to_le_bytes());
    }
    Id::from_bytes(b)
}

fn index_memory(g: &Global, a: &IndexMemoryArgs) -> Result<i32> {
    let n = a.chunks;
    let rss0 = status_kib("VmRSS")?;
    let hwm0 = status_kib("VmHWM")?;
    let t = Instant::now();
    let mut idx = Index::new();
    let (mut i, mut packs) = (0u64, 0u64);
    while i < n {
        let k = a.blobs_per_pack.min(n - i);
        let blobs = (0..k)
            .map(|j| PackEntry {
                blob_type: BlobType::Data,
                id: synthetic_id(0, i + j),
                offset: (j as u32) << 20,
                length: 1 << 20,
                raw_length: 1 << 20,
                compressed: true,
            })
            .collect();
        // As `Repository::load_index` loads it: in bulk, then compacted.
        idx.load_file(&IndexFile {
            supersedes: Vec::new(),
            packs: vec![IndexPack {
                id: synthetic_id(2, packs),
                blobs,
            }],
            damaged: Vec::new(),
        });
        i += k;
        packs += 1;
    }
    idx.compact();
    let build_s = t.elapsed().as_secs_f64();
    let rss1 = status_kib("VmRSS")?;
    let hwm1 = status_kib("VmHWM")?;
    anyhow::ensure!(
        idx.len() as u64 == n,
        "index holds {} of {n} entries",
        idx.len()
    );

    // Look-ups at random positions: ids that are there, then ids that are not.
    let lookups = a.lookups.max(1);
    let mut rng = SplitMix(42);
    let probe: Vec<Id> = (0..lookups)
        .map(|_| synthetic_id(0, rng.next() % n.max(1)))
        .collect();
    let t = Instant::now();
    let hits = probe.iter().filter(|id| idx.get(id).is_some()).count() as u64;
    let hit_s = t.elapsed().as_secs_f64();
    let absent: Vec<Id> = (0..lookups).map(|i| synthetic_id(1, i)).collect();
    let t = Instant::now();
    let false_hits = absent.iter().filter(|id| idx.contains(id)).count();
    let miss_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        n == 0 || hits == lookups,
        "only {hits} of {lookups} present ids found"
    );
    anyhow::ensure!(false_hits == 0, "{false_hits} absent ids found");
    let rss2 = status_kib("VmRSS")?;
    black_box(&idx);

    let per_chunk = |kib: u64| {
        if n == 0 {
            0.0
        } else {
            (kib as f64 * 1024.0 / n as f64 * 10.0).round() / 10.0
        }
    };
    let out = json!({
        "chunks": n,
        "packs": packs,
        "blobs_per_pack": a.blobs_per_pack,
        "accounted_bytes_per_chunk": idx.memory_bytes() / (n.max(1) as usize),
        "build_s": (build_s * 1000.0).round() / 1000.0,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "hwm_before_kib": hwm0,
        "hwm_after_kib": hwm1,
        "index_rss_bytes": (rss1.saturating_sub(rss0)) * 1024,
        "index_peak_bytes": (hwm1.saturating_sub(rss0)) * 1024,
        "bytes_per_chunk": per_chunk(rss1.saturating_sub(rss0)),
        "peak_bytes_per_chunk": per_chunk(hwm1.saturating_sub(rss0)),
        "lookups": lookups,
        "lookup_hit_ns": (hit_s * 1e9 / lookups as f64 * 10.0).round() / 10.0,
        "lookup_miss_ns": (miss_s * 1e9 / lookups as f64 * 10.0).round() / 10.0,
        "lookups_per_s": (lookups as f64 / hit_s).round() as u64,
        "rss_after_lookups_kib": rss2,
    });
    if g.json {
        super::print_json("index_memory", out);
        return Ok(crate::exit::OK);
    }
    outln!(
        "index of {n} chunks in {packs} packs: built in {build_s:.2}s; {} B per chunk by its own accounting",
        out["accounted_bytes_per_chunk"]
    );
    outln!(
        "resident +{} ({} B/chunk), peak +{} ({} B/chunk)",
        super::bytes((rss1.saturating_sub(rss0)) * 1024),
        out["bytes_per_chunk"],
        super::bytes((hwm1.saturating_sub(rss0)) * 1024),
        out["peak_bytes_per_chunk"]
    );
    outln!(
        "look-ups: {} ns (present), {} ns (absent), {} per second",
        out["lookup_hit_ns"],
        out["lookup_miss_ns"],
        out["lookups_per_s"]
    );
    Ok(crate::exit::OK)
}
