//! File content: text-like, random, repeated blocks, zero runs.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::rng::Rng;
use crate::walk;

pub(crate) const WORDS: &[&str] = &[
    "baton",
    "backup",
    "chunk",
    "restore",
    "snapshot",
    "the",
    "a",
    "of",
    "and",
    "to",
    "repository",
    "index",
    "pack",
    "blob",
    "tree",
    "seed",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "naïve",
    "café",
    "☃",
    "données",
];

/// Appends text-like content (words, lines) to `out` until it holds `len` bytes.
pub(crate) fn text_into(rng: &mut Rng, out: &mut Vec<u8>, len: usize) {
    let mut line = 0;
    while out.len() < len {
        let w = WORDS[rng.index(WORDS.len())].as_bytes();
        out.extend_from_slice(w);
        line += w.len() + 1;
        if line > 60 + rng.index(20) {
            out.push(b'\n');
            line = 0;
        } else {
            out.push(b' ');
        }
    }
    out.truncate(len);
}

pub(crate) fn small_content(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    match rng.below(10) {
        0..=4 => text_into(rng, &mut v, len),
        5..=8 => {
            v.resize(len, 0);
            rng.fill(&mut v);
        }
        _ => v.resize(len, 0),
    }
    v
}

/// Writes `len` bytes of deterministic pseudo-random content derived from
/// `seed` to `path` (creating its parent directories), streaming in 64 KiB
/// pieces so large files are fine.
pub fn write_file(path: &Path, len: u64, seed: u64) -> io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    let mut rng = Rng::derive(seed, "write_file");
    let mut w = BufWriter::new(File::create(path)?);
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Sum of the apparent sizes of the regular files below `root` (each
/// hard-link name counts; symlinks are not followed; unreadable parts count 0).
pub fn dir_size(root: &Path) -> u64 {
    walk::scan(root)
        .map(|v| {
            v.iter()
                .filter(|(_, m)| m.is_file())
                .map(|(_, m)| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Writes a medium file of `len` bytes; `kind` 0 text, 1 random,
/// 2 a block repeated with rare flips, 3 runs of zeros/random/text.
pub(crate) fn write_medium(path: &Path, len: u64, kind: usize, rng: &mut Rng) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 16, File::create(path)?);
    let mut block = vec![0u8; rng.range(512, 16384) as usize];
    rng.fill(&mut block);
    let mut buf = Vec::with_capacity(1 << 17);
    let mut left = len;
    while left > 0 {
        buf.clear();
        match kind % 4 {
            0 => text_into(rng, &mut buf, 1 << 16),
            1 => {
                buf.resize(1 << 16, 0);
                rng.fill(&mut buf);
            }
            2 => {
                for _ in 0..8 {
                    buf.extend_from_slice(&block);
                }
                if rng.chance(30) {
                    let i = rng.index(buf.len());
                    buf[i] ^= 0x5a;
                }
            }
            _ => {
                let n = rng.range(1024, 256 * 1024) as usize;
                match rng.below(3) {
                    0 => buf.resize(n, 0),
                    1 => {
                        buf.resize(n, 0);
                        rng.fill(&mut buf);
                    }
                    _ => text_into(rng, &mut buf, n),
                }
            }
        }
        let n = (buf.len() as u64).min(left) as usize;
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.flush()
}
