//! Read-ahead for the archiver. The archiver reads one file at a time; on a
//! cold cache that leaves the disk with one request in flight, and small
//! files cost a full round trip each. The prefetcher opens the next files
//! the archiver is going to read and asks the kernel to start reading them
//! (`posix_fadvise(WILLNEED)`), up to a budget of bytes and files ahead, so
//! the disk works on many requests while the archiver chunks the current
//! one. Within a large file, [`ReadAhead`] keeps a window ahead of the
//! reader in the same way, whatever the device's own read-ahead setting.
//!
//! Only a hint: a file that cannot be opened here is opened again by the
//! archiver, which reports the error; nothing is read into our memory.

use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Bytes the kernel is asked to read ahead of the archiver, across files.
const BUDGET_BYTES: u64 = 16 << 20;
/// Files held open ahead of the archiver at most.
const BUDGET_FILES: usize = 128;
/// Window hinted ahead of the reader within one file.
const WINDOW: u64 = 8 << 20;

struct Ahead {
    path: PathBuf,
    file: Option<File>,
    hinted: u64,
}

/// Files the archiver will read, in its order.
#[derive(Default)]
pub(super) struct Prefetcher {
    /// Queued, not yet hinted.
    waiting: VecDeque<(PathBuf, u64)>,
    /// Hinted (opened), not yet taken by the archiver.
    ahead: VecDeque<Ahead>,
    ahead_bytes: u64,
}

impl Prefetcher {
    /// Queues a file of `len` bytes that the archiver will read after every
    /// file queued before it.
    pub fn push(&mut self, path: PathBuf, len: u64) {
        if len > 0 {
            self.waiting.push_back((path, len));
        }
        self.fill();
    }

    /// The file at `path`, opened by the prefetcher if it was queued. Files
    /// queued before it that the archiver did not take are forgotten.
    pub fn take(&mut self, path: &Path) -> Option<(File, u64)> {
        if !self.ahead.iter().any(|a| a.path == path) {
            if self.waiting.iter().any(|(p, _)| p == path) {
                // Far ahead of the hints: drop what came before it.
                self.drop_ahead();
                while let Some((p, _)) = self.waiting.pop_front() {
                    if p == path {
                        break;
                    }
                }
                self.fill();
            }
            return None;
        }
        let mut found = None;
        while let Some(a) = self.ahead.pop_front() {
            self.ahead_bytes -= a.hinted;
            if a.path == path {
                found = a.file.map(|f| (f, a.hinted));
                break;
            }
        }
        self.fill();
        found
    }

    /// Forgets everything queued and closes what was opened ahead.
    pub fn clear(&mut self) {
        self.drop_ahead();
        self.waiting.clear();
    }

    fn drop_ahead(&mut self) {
        self.ahead.clear();
        self.ahead_bytes = 0;
    }

    fn fill(&mut self) {
        while self.ahead_bytes < BUDGET_BYTES && self.ahead.len() < BUDGET_FILES {
            let Some((path, len)) = self.waiting.pop_front() else {
                return;
            };
            let hinted = len.min(WINDOW).min(BUDGET_BYTES - self.ahead_bytes);
            let file = super::archiver::open_noatime(&path).ok();
            if let Some(f) = &file {
                hint(f, 0, hinted);
            }
            self.ahead_bytes += hinted;
            self.ahead.push_back(Ahead { path, file, hinted });
        }
    }
}

fn hint(f: &File, offset: u64, len: u64) {
    // Only advice: a failure changes nothing but speed.
    let _ = posix_fadvise(
        f,
        offset as i64,
        len as i64,
        PosixFadviseAdvice::POSIX_FADV_WILLNEED,
    );
}

/// Reads a file while keeping a window ahead of the position hinted to the
/// kernel.
pub(super) struct ReadAhead<'f> {
    file: &'f File,
    pos: u64,
    hinted: u64,
    /// The file's size when it was listed (hints stop there).
    len: u64,
}

impl<'f> ReadAhead<'f> {
    /// `hinted`: bytes from the start already hinted; `len`: the file's
    /// expected size.
    pub fn new(file: &'f File, hinted: u64, len: u64) -> Self {
        ReadAhead {
            file,
            pos: 0,
            hinted,
            len,
        }
    }
}

impl Read for ReadAhead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.hinted < self.len && self.pos + WINDOW / 2 >= self.hinted {
            let from = self.hinted.max(self.pos);
            hint(self.file, from, WINDOW);
            self.hinted = from + WINDOW;
        }
        let n = (&mut &*self.file).read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_returns_queued_files_in_order_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..300)
            .map(|i| {
                let p = dir.path().join(format!("f{i:03}"));
                std::fs::write(&p, vec![i as u8; 1000 + i]).unwrap();
                p
            })
            .collect();
        let mut pf = Prefetcher::default();
        for p in &paths {
            pf.push(p.clone(), std::fs::metadata(p).unwrap().len());
        }
        assert!(pf.ahead.len() <= BUDGET_FILES);
        // In order: every file comes back opened, and reads its own bytes.
        for (i, p) in paths.iter().enumerate().take(10) {
            let (f, _) = pf.take(p).expect("queued files are opened ahead");
            let mut data = Vec::new();
            ReadAhead::new(&f, 0, 1000 + i as u64)
                .read_to_end(&mut data)
                .unwrap();
            assert_eq!(data, vec![i as u8; 1000 + i]);
        }
        // Skipping some forgets them; a file far ahead is still found later.
        assert!(pf.take(&paths[20]).is_some());
        assert!(pf.take(&paths[15]).is_none());
        assert!(pf.take(&paths[250]).is_none());
        assert!(pf.take(&paths[251]).is_some());
        // An unknown path changes nothing.
        assert!(pf.take(&dir.path().join("nope")).is_none());
        assert!(pf.take(&paths[252]).is_some());
    }

    #[test]
    fn read_ahead_reads_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let data: Vec<u8> = (0..(3 * WINDOW as usize + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        let mut out = Vec::new();
        ReadAhead::new(&f, 0, data.len() as u64)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }
}
