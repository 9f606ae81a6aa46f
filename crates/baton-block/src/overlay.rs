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

use crate::files;
use baton_repo::{RepoError, Result};
use nix::fcntl::{Flock, FlockArg};
use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// Locked exclusively while open: two processes never share an overlay.
    map: Flock<File>,
    size: u64,
    state: Mutex<State>,
    /// Serialises writers (read-modify-write of partial blocks).
    writing: Mutex<()>,
    /// Set when a sync failed: the kernel may have dropped the dirty pages,
    /// so no later flush may claim durability (every write and flush fails).
    poisoned: AtomicBool,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RepoError + '_ {
    move |e| RepoError::io(path, e)
}

fn header(size: u64, identity: &str) -> Vec<u8> {
    let mut h = vec![0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&size.to_le_bytes());
    h[16..20].copy_from_slice(&(identity.len() as u32).to_le_bytes());
    h[20..20 + identity.len()].copy_from_slice(identity.as_bytes());
    h
}

impl Overlay {
    /// Opens the overlay at `path` for an image of `size` bytes, creating
    /// it if absent. `identity` names what it overlays (snapshot and image):
    /// an existing overlay of something else is refused, never mixed in.
    /// Its files must be this user's private files (never planted by
    /// another), and no other process may have it open.
    pub fn open(path: &Path, size: u64, identity: &str) -> Result<Self> {
        if identity.len() > MAX_IDENTITY {
            return Err(RepoError::Invalid("overlay identity too long".into()));
        }
        let map_path = map_path(path);
        let blocks = size.div_ceil(BLOCK);
        let mut bits = files::bitmap(blocks.div_ceil(8), "the overlay")?;
        let nbytes = bits.len() as u64;
        let want = header(size, identity);
        let map = match files::open_existing(&map_path)? {
            Some(m) => m,
            None => {
                // A new overlay: the data file must not exist (a planted
                // one would be used), the map appears whole (renamed).
                let data = files::create_new(path)?;
                data.set_len(size).map_err(io(path))?;
                data.sync_all().map_err(io(path))?;
                drop(data);
                let mut map = want.clone();
                map.resize((HEADER + nbytes) as usize, 0);
                files::replace(&map_path, &map)?;
                files::open_existing(&map_path)?
                    .ok_or_else(|| RepoError::Internal("overlay map vanished".into()))?
            }
        };
        let map = Flock::lock(map, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            RepoError::Invalid(format!(
                "overlay {} is in use by another baton process ({e}); stop it first",
                path.display()
            ))
        })?;
        let data = files::open_existing(path)?.ok_or_else(|| {
            RepoError::Damaged(format!(
                "overlay {} has a map but no data file",
                path.display()
            ))
        })?;
        let mut have = vec![0u8; HEADER as usize];
        map.read_exact_at(&mut have, 0).map_err(io(&map_path))?;
        if have != want {
            return Err(RepoError::Invalid(format!(
                "overlay {} belongs to another image or snapshot (or is not an overlay); \
                 give another --overlay, or remove it and its .map to discard its writes",
                path.display()
            )));
        }
        let existing = map.metadata().map_err(io(&map_path))?.len();
        if existing != HEADER + nbytes {
            return Err(RepoError::Damaged(format!(
                "overlay map {} has {existing} bytes, expected {}",
                map_path.display(),
                HEADER + nbytes
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
            poisoned: AtomicBool::new(false),
        })
    }

    fn healthy(&self) -> Result<()> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(RepoError::io(
                &self.path,
                std::io::Error::other(
                    "an earlier flush of the overlay failed; its writes since the last good flush may be lost, so it takes no more (restart to continue from what was flushed)",
                ),
            ));
        }
        Ok(())
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
        self.healthy()?;
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
        self.healthy()?;
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

    /// Makes every write so far durable: the data first, then the changed
    /// pages of the bitmap. A failure poisons the overlay (see `poisoned`).
    pub fn flush(&self) -> Result<()> {
        let _w = self.writing.lock().expect("overlay writer");
        self.healthy()?;
        let poison = |e: RepoError| {
            self.poisoned.store(true, Ordering::SeqCst);
            e
        };
        self.data
            .sync_data()
            .map_err(io(&self.path))
            .map_err(poison)?;
        // Copy only the dirty pages (a whole bitmap per flush would be
        // 64 MiB at 2 TiB); writers are held off by `writing`.
        let pages: Vec<(u64, Vec<u8>)> = {
            let mut st = self.state.lock().expect("overlay");
            let dirty = std::mem::take(&mut st.dirty_pages);
            dirty
                .into_iter()
                .map(|p| {
                    let from = (p * MAP_PAGE) as usize;
                    let to = (from + MAP_PAGE as usize).min(st.bits.len());
                    (p, st.bits[from..to].to_vec())
                })
                .collect()
        };
        if pages.is_empty() {
            return Ok(());
        }
        let map_path = map_path(&self.path);
        let r = pages
            .iter()
            .try_for_each(|(p, bytes)| self.map.write_all_at(bytes, HEADER + p * MAP_PAGE))
            .and_then(|()| self.map.sync_data());
        if let Err(e) = r {
            // Kept for the record, though nothing is flushed any more.
            self.state
                .lock()
                .expect("overlay")
                .dirty_pages
                .extend(pages.iter().map(|(p, _)| *p));
            return Err(poison(RepoError::io(&map_path, e)));
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
}

/// The bitmap file of an overlay.
pub fn map_path(path: &Path) -> PathBuf {
    files::suffixed(path, ".map")
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
        // One process at a time.
        let again = Overlay::open(&p, size, "a");
        assert!(again.is_err_and(|e| e.to_string().contains("in use")));
        drop(o);
        assert!(Overlay::open(&p, size, "b").is_err());
        assert!(Overlay::open(&p, size + BLOCK, "a").is_err());
    }

    #[test]
    fn planted_or_shared_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // A data file someone created before the overlay exists.
        let p = dir.path().join("planted");
        std::fs::write(&p, b"").unwrap();
        let e = Overlay::open(&p, 8 * BLOCK, "a").err().unwrap();
        assert!(
            e.to_string().contains("planted") || e.to_string().contains("exists"),
            "{e}"
        );
        // An overlay whose map others may read or write.
        let q = dir.path().join("ovl");
        drop(Overlay::open(&q, 8 * BLOCK, "a").unwrap());
        std::fs::set_permissions(map_path(&q), std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = Overlay::open(&q, 8 * BLOCK, "a").err().unwrap();
        assert!(e.to_string().contains("not a private file"), "{e}");
        // A second link to the data file (it could be read through it).
        std::fs::set_permissions(map_path(&q), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::hard_link(&q, dir.path().join("other-name")).unwrap();
        let e = Overlay::open(&q, 8 * BLOCK, "a").err().unwrap();
        assert!(e.to_string().contains("links"), "{e}");
    }

    #[test]
    fn huge_images_are_refused_not_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let e = Overlay::open(&dir.path().join("o"), 1 << 55, "a")
            .err()
            .unwrap();
        assert!(e.to_string().contains("bitmap"), "{e}");
    }
}
