//! The write overlay of a pseudo-volume: the blocks a client wrote, kept
//! apart from the image (which is read-only in the repository) until they
//! are merged into the restored copy.
//!
//! Two files: `PATH` holds written blocks at their image offsets (sparse),
//! `PATH.map` a header and a bitmap with one bit per 4 KiB block. A write
//! goes to `PATH` (a partial block is completed from the layers below
//! first) and sets its bits in memory; a flush makes `PATH` durable
//! (`fdatasync`) and only then writes the changed pages of the bitmap and
//! syncs it. Bits are only ever set, so after a crash every set bit names a
//! block whose data was durable before the bit was: every acknowledged
//! flush survives, as the NBD protocol requires.

use baton_repo::{RepoError, Result};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Bytes per overlay block.
pub const BLOCK: u64 = 4096;
const MAGIC: &[u8; 8] = b"BTNOVL01";
/// The bitmap starts after a header page.
const HEADER: u64 = 4096;
/// Bitmap bytes written together (one page: 32768 blocks, 128 MiB).
const MAP_PAGE: u64 = 4096;
const MAX_IDENTITY: usize = 1024;

/// Reads `buf.len()` bytes of the layers below the overlay at an offset.
pub type Lower<'a> = &'a dyn Fn(u64, &mut [u8]) -> Result<()>;

struct State {
    bits: Vec<u8>,
    dirty_pages: BTreeSet<u64>,
    written: u64,
}

/// A durable overlay of written blocks over an image of fixed size.
pub struct Overlay {
    path: PathBuf,
    data: File,
    map: File,
    size: u64,
    state: Mutex<State>,
    /// Serialises writers (read-modify-write of partial blocks).
    writing: Mutex<()>,
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .map_err(|e| RepoError::io(path, e))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RepoError + '_ {
    move |e| RepoError::io(path, e)
}

impl Overlay {
    /// Opens the overlay at `path` for an image of `size` bytes, creating
    /// it if absent. `identity` names what it overlays (snapshot and image):
    /// an existing overlay of something else is refused, never mixed in.
    pub fn open(path: &Path, size: u64, identity: &str) -> Result<Self> {
        if identity.len() > MAX_IDENTITY {
            return Err(RepoError::Invalid("overlay identity too long".into()));
        }
        let map_path = map_path(path);
        let data = open_rw(path)?;
        let map = open_rw(&map_path)?;
        let blocks = size.div_ceil(BLOCK);
        let nbytes = blocks.div_ceil(8) as usize;
        let mut header = vec![0u8; HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&size.to_le_bytes());
        header[16..20].copy_from_slice(&(identity.len() as u32).to_le_bytes());
        header[20..20 + identity.len()].copy_from_slice(identity.as_bytes());
        let existing = map.metadata().map_err(io(&map_path))?.len();
        let mut bits = vec![0u8; nbytes];
        if existing == 0 {
            map.write_all_at(&header, 0).map_err(io(&map_path))?;
            map.set_len(HEADER + nbytes as u64).map_err(io(&map_path))?;
            map.sync_all().map_err(io(&map_path))?;
            data.set_len(size).map_err(io(path))?;
            data.sync_all().map_err(io(path))?;
            if let Some(dir) = path.parent() {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
            }
        } else {
            let mut have = vec![0u8; HEADER as usize];
            map.read_exact_at(&mut have, 0).map_err(io(&map_path))?;
            if have != header {
                return Err(RepoError::Invalid(format!(
                    "overlay {} belongs to another image or snapshot (or is not an overlay); \
                     give another --overlay, or remove it and its .map to discard its writes",
                    path.display()
                )));
            }
            if existing != HEADER + nbytes as u64 {
                return Err(RepoError::Damaged(format!(
                    "overlay map {} has {existing} bytes, expected {}",
                    map_path.display(),
                    HEADER + nbytes as u64
                )));
            }
            map.read_exact_at(&mut bits, HEADER)
                .map_err(io(&map_path))?;
            // Bits past the last block are never set by a writer.
            if !blocks.is_multiple_of(8)
                && let Some(last) = bits.last_mut()
            {
                *last &= (1u8 << (blocks % 8)) - 1;
            }
        }
        let written = bits.iter().map(|b| u64::from(b.count_ones())).sum();
        Ok(Overlay {
            path: path.to_path_buf(),
            data,
            map,
            size,
            state: Mutex::new(State {
                bits,
                dirty_pages: BTreeSet::new(),
                written,
            }),
            writing: Mutex::new(()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Blocks written so far.
    pub fn written_blocks(&self) -> u64 {
        self.state.lock().expect("overlay").written
    }

    fn has(st: &State, b: u64) -> bool {
        st.bits[(b / 8) as usize] & (1 << (b % 8)) != 0
    }

    /// Whether block `b` was written.
    pub fn contains(&self, b: u64) -> bool {
        Self::has(&self.state.lock().expect("overlay"), b)
    }

    /// Whether any block of `[offset, offset + len)` was written.
    pub fn any_in(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let st = self.state.lock().expect("overlay");
        (offset / BLOCK..(offset + len).div_ceil(BLOCK)).any(|b| Self::has(&st, b))
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(e) if e <= self.size => Ok(()),
            _ => Err(RepoError::Invalid(format!(
                "{len} bytes at {offset} are past the end ({})",
                self.size
            ))),
        }
    }

    /// Reads `buf` at `offset`: written blocks from the overlay, the rest
    /// from `lower` (in as few calls as runs of unwritten blocks).
    pub fn read(&self, offset: u64, buf: &mut [u8], lower: Lower<'_>) -> Result<()> {
        self.check(offset, buf.len() as u64)?;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let b = pos / BLOCK;
            let written = self.contains(b);
            // Extend the run while blocks stay on the same side.
            let mut run_end = ((b + 1) * BLOCK).min(end);
            while run_end < end && self.contains(run_end / BLOCK) == written {
                run_end = (run_end + BLOCK).min(end);
            }
            let out = &mut buf[(pos - offset) as usize..(run_end - offset) as usize];
            if written {
                self.data.read_exact_at(out, pos).map_err(io(&self.path))?;
            } else {
                lower(pos, out)?;
            }
            pos = run_end;
        }
        Ok(())
    }

    /// Writes `data` at `offset`; a partial block is completed from `lower`
    /// (or the overlay) first. Durable after the next [`Overlay::flush`].
    pub fn write(&self, offset: u64, data: &[u8], lower: Lower<'_>) -> Result<()> {
        self.check(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let _w = self.writing.lock().expect("overlay writer");
        let end = offset + data.len() as u64;
        let first = offset / BLOCK;
        let last = (end - 1) / BLOCK;
        // Complete the partial head and tail blocks.
        for b in [first, last] {
            let (bs, be) = (b * BLOCK, ((b + 1) * BLOCK).min(self.size));
            if (offset > bs || end < be) && !self.contains(b) {
                let mut blk = vec![0u8; (be - bs) as usize];
                lower(bs, &mut blk)?;
                self.data.write_all_at(&blk, bs).map_err(io(&self.path))?;
            }
        }
        self.data
            .write_all_at(data, offset)
            .map_err(io(&self.path))?;
        self.mark(first, last);
        Ok(())
    }

    /// Zeroes `[offset, offset + len)` (WRITE_ZEROES and TRIM): whole
    /// blocks are punched out of the overlay file (reading as zeros),
    /// partial ones written.
    pub fn zero(&self, offset: u64, len: u64, lower: Lower<'_>) -> Result<()> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let whole_start = offset.div_ceil(BLOCK) * BLOCK;
        let whole_end = if end == self.size {
            end
        } else {
            end / BLOCK * BLOCK
        };
        if whole_start >= whole_end {
            return self.write(offset, &vec![0u8; len as usize], lower);
        }
        if offset < whole_start {
            self.write(offset, &vec![0u8; (whole_start - offset) as usize], lower)?;
        }
        if whole_end < end {
            self.write(whole_end, &vec![0u8; (end - whole_end) as usize], lower)?;
        }
        let _w = self.writing.lock().expect("overlay writer");
        punch(&self.data, whole_start, whole_end - whole_start).map_err(io(&self.path))?;
        self.mark(whole_start / BLOCK, (whole_end - 1) / BLOCK);
        Ok(())
    }

    fn mark(&self, first: u64, last: u64) {
        let mut st = self.state.lock().expect("overlay");
        for b in first..=last {
            let (i, m) = ((b / 8) as usize, 1u8 << (b % 8));
            if st.bits[i] & m == 0 {
                st.bits[i] |= m;
                st.written += 1;
                st.dirty_pages.insert(i as u64 / MAP_PAGE);
            }
        }
    }

    /// Makes every write so far durable: the data first, then the bitmap.
    pub fn flush(&self) -> Result<()> {
        let _w = self.writing.lock().expect("overlay writer");
        self.data.sync_data().map_err(io(&self.path))?;
        let (pages, bits) = {
            let mut st = self.state.lock().expect("overlay");
            (std::mem::take(&mut st.dirty_pages), st.bits.clone())
        };
        if pages.is_empty() {
            return Ok(());
        }
        let map_path = map_path(&self.path);
        for p in &pages {
            let from = (p * MAP_PAGE) as usize;
            let to = (from + MAP_PAGE as usize).min(bits.len());
            self.map
                .write_all_at(&bits[from..to], HEADER + from as u64)
                .map_err(io(&map_path))?;
        }
        if let Err(e) = self.map.sync_data() {
            // Written again by the next flush.
            self.state
                .lock()
                .expect("overlay")
                .dirty_pages
                .extend(pages);
            return Err(RepoError::io(&map_path, e));
        }
        Ok(())
    }

    /// Runs of written blocks, as byte ranges `(offset, length)`.
    pub fn written_ranges(&self) -> Vec<(u64, u64)> {
        let st = self.state.lock().expect("overlay");
        let blocks = self.size.div_ceil(BLOCK);
        let mut out: Vec<(u64, u64)> = Vec::new();
        for b in 0..blocks {
            if Self::has(&st, b) {
                let start = b * BLOCK;
                let len = BLOCK.min(self.size - start);
                match out.last_mut() {
                    Some((s, l)) if *s + *l == start => *l += len,
                    _ => out.push((start, len)),
                }
            }
        }
        out
    }

    /// Reads written bytes directly (for the merge).
    pub fn read_written(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.data.read_exact_at(buf, offset).map_err(io(&self.path))
    }

    /// Removes the overlay's files (after a completed merge).
    pub fn remove(self) -> Result<()> {
        let map = map_path(&self.path);
        drop(self.data);
        drop(self.map);
        for p in [&self.path, &map] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(RepoError::io(p, e)),
            }
        }
        Ok(())
    }
}

/// The bitmap file of an overlay.
pub fn map_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".map");
    PathBuf::from(p)
}

/// Deallocates a range so it reads as zeros (writes zeros where the file
/// system cannot punch holes).
fn punch(f: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use nix::fcntl::{FallocateFlags, fallocate};
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    if fallocate(f, flags, offset as i64, len as i64).is_ok() {
        return Ok(());
    }
    let zeros = vec![0u8; (1 << 20).min(len) as usize];
    let mut pos = offset;
    while pos < offset + len {
        let n = (offset + len - pos).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lower_pattern(off: u64, buf: &mut [u8]) -> Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = ((off + i as u64) % 251) as u8;
        }
        Ok(())
    }

    fn model(size: usize) -> Vec<u8> {
        let mut m = vec![0u8; size];
        lower_pattern(0, &mut m).unwrap();
        m
    }

    #[test]
    fn partial_writes_and_zeroes_read_back_over_the_lower_layer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ovl");
        let size = 5 * BLOCK as usize + 100;
        let o = Overlay::open(&p, size as u64, "snap:img").unwrap();
        let mut m = model(size);
        let ops: &[(u64, usize, u8)] = &[
            (10, 20, 1),
            (4090, 10, 2),
            (8192, 4096, 3),
            (size as u64 - 50, 50, 4),
        ];
        for &(off, len, v) in ops {
            o.write(off, &vec![v; len], &lower_pattern).unwrap();
            m[off as usize..off as usize + len].fill(v);
        }
        o.zero(100, 3 * BLOCK, &lower_pattern).unwrap();
        m[100..100 + 3 * BLOCK as usize].fill(0);
        let mut got = vec![0u8; size];
        o.read(0, &mut got, &lower_pattern).unwrap();
        assert!(got == m, "overlay read differs from the model");
        assert!(o.write(size as u64 - 1, &[1, 2], &lower_pattern).is_err());
    }

    #[test]
    fn flushed_writes_survive_reopening_and_another_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ovl");
        let size = 64 * BLOCK;
        {
            let o = Overlay::open(&p, size, "a").unwrap();
            o.write(BLOCK * 3 + 7, b"hello", &lower_pattern).unwrap();
            o.flush().unwrap();
        }
        let o = Overlay::open(&p, size, "a").unwrap();
        assert!(o.contains(3) && !o.contains(2));
        let mut b = [0u8; 5];
        o.read(BLOCK * 3 + 7, &mut b, &lower_pattern).unwrap();
        assert_eq!(&b, b"hello");
        assert_eq!(o.written_ranges(), vec![(3 * BLOCK, BLOCK)]);
        drop(o);
        assert!(Overlay::open(&p, size, "b").is_err());
        assert!(Overlay::open(&p, size + BLOCK, "a").is_err());
    }
}
