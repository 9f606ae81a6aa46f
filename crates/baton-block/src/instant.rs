//! The pseudo-volume and instant restore.
//!
//! A [`PseudoVolume`] presents an image of a snapshot as a writable
//! volume. A read is served from (1) the overlay of blocks the client
//! wrote, else (2) the destination, for chunks the background restore has
//! already copied there, else (3) the repository, fetched on demand
//! through the [`ImageReader`] (whose cache the background restore then
//! reuses). Writes go to the overlay only.
//!
//! Instant restore copies the image to the destination in the background,
//! in order, but first the chunks a client has just read (so a client's
//! working set lands on the destination first). Progress is durable: the
//! destination is synced before the chunks copied are recorded in
//! `OVERLAY.restored` (bits only set), so a restore killed at any point
//! continues where it was. When the copy is complete the caller stops the
//! application, and [`merge`] writes the overlay's blocks into the
//! destination; [`verify`] then checks every chunk of the destination
//! against the snapshot with the overlay applied. The phase is kept in
//! `OVERLAY.state` (replaced atomically), so a kill during the merge
//! repeats the merge (it is idempotent) and a kill after it does not.

use crate::files;
use crate::overlay::{self, Overlay};
use crate::reader::ImageReader;
use baton_repo::progress::Cancel;
use baton_repo::{RepoError, Result};
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

const RESTORED_MAGIC: &[u8; 8] = b"BTNRST01";
const RESTORED_HEADER: u64 = 4096;

/// Phases of an instant restore, kept in `OVERLAY.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Serving, and copying the image to the destination.
    Copying,
    /// The copy is complete; the overlay is being merged into it.
    Merging,
    /// Merged and verified; the application may run on the destination.
    Verified,
    /// Finished; the restore's files are being removed.
    Done,
}

/// The durable state of an instant restore.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstantState {
    pub identity: String,
    pub target: String,
    pub phase: Phase,
}

/// Paths of an instant restore's files, all beside the overlay.
pub fn state_path(overlay: &Path) -> PathBuf {
    files::suffixed(overlay, ".state")
}

fn restored_path(overlay: &Path) -> PathBuf {
    files::suffixed(overlay, ".restored")
}

/// Reads the state of an instant restore, if one was started (a private
/// file of this user only).
pub fn load_state(overlay: &Path) -> Result<Option<InstantState>> {
    let p = state_path(overlay);
    let Some(f) = files::open_existing(&p)? else {
        return Ok(None);
    };
    let mut b = Vec::new();
    use std::io::Read;
    (&f).take(1 << 20)
        .read_to_end(&mut b)
        .map_err(|e| RepoError::io(&p, e))?;
    serde_json::from_slice(&b)
        .map(Some)
        .map_err(|e| RepoError::Damaged(format!("instant restore state {}: {e}", p.display())))
}

/// Replaces the state atomically (a fresh file, synced, renamed, the
/// directory synced).
pub fn save_state(overlay: &Path, st: &InstantState) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(st).expect("state serializes");
    files::replace(&state_path(overlay), &bytes)
}

/// Removes the files of a finished instant restore. The state says `done`
/// first and goes last, so a kill in between leaves a restore that is
/// known to be complete, never one that would start over on its target.
pub fn remove_files(overlay: &Path, st: &InstantState) -> Result<()> {
    let mut done = st.clone();
    done.phase = Phase::Done;
    save_state(overlay, &done)?;
    for p in [
        overlay.to_path_buf(),
        overlay::map_path(overlay),
        restored_path(overlay),
        state_path(overlay),
    ] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RepoError::io(&p, e)),
        }
    }
    files::sync_parent(overlay)
}

/// How [`Destination::open`] treats what an earlier run left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Start over: the target is emptied (a file) and nothing is copied.
    Fresh,
    /// Keep what the record says was copied; a missing or foreign record
    /// starts over (allowed while copying: nothing was merged yet).
    Continue,
    /// Keep what was copied; a missing or foreign record is an error (the
    /// target may hold merged writes: it must never be emptied).
    Strict,
}

/// The restore's destination and which chunks are already copied there.
pub struct Destination {
    path: PathBuf,
    file: File,
    device: bool,
    record: File,
    record_path: PathBuf,
    bits: Mutex<Vec<u8>>,
    copied: AtomicU64,
    /// Chunks a client read that are not copied yet: copied first.
    wanted: Mutex<VecDeque<u64>>,
}

impl Destination {
    /// Opens the destination of an image of `chunks` chunks and `size`
    /// bytes. `resume`: keep what an earlier run copied (recorded beside
    /// `overlay`); else the destination starts empty.
    pub fn open(
        path: &Path,
        overlay: &Path,
        size: u64,
        chunks: u64,
        identity: &str,
        mode: OpenMode,
    ) -> Result<Self> {
        let resume = mode != OpenMode::Fresh;
        let record_path = restored_path(overlay);
        let nbytes = chunks.div_ceil(8) as usize;
        let mut header = vec![0u8; RESTORED_HEADER as usize];
        header[..8].copy_from_slice(RESTORED_MAGIC);
        header[8..16].copy_from_slice(&size.to_le_bytes());
        let id = identity.as_bytes();
        let id = &id[..id.len().min(1024)];
        header[16..20].copy_from_slice(&(id.len() as u32).to_le_bytes());
        header[20..20 + id.len()].copy_from_slice(id);
        let mut bits = files::bitmap(nbytes as u64, "the copy record")?;
        let record = files::open_or_create(&record_path)?;
        let have = record
            .metadata()
            .map_err(|e| RepoError::io(&record_path, e))?
            .len();
        let mut fresh = true;
        if resume && have == RESTORED_HEADER + nbytes as u64 {
            let mut h = vec![0u8; RESTORED_HEADER as usize];
            record
                .read_exact_at(&mut h, 0)
                .map_err(|e| RepoError::io(&record_path, e))?;
            if h == header {
                record
                    .read_exact_at(&mut bits, RESTORED_HEADER)
                    .map_err(|e| RepoError::io(&record_path, e))?;
                fresh = false;
            }
        }
        if fresh && mode == OpenMode::Strict {
            return Err(RepoError::Damaged(format!(
                "{} is missing or belongs to another restore, but the restore of {} was already merging: the target is left as it is (check it, then remove the restore's files to start over)",
                record_path.display(),
                path.display()
            )));
        }
        let (file, device) = crate::restore::open_target(path)?;
        if fresh {
            bits.fill(0);
            if device {
                let have = crate::restore::device_size(&file, path)?;
                if have < size {
                    return Err(RepoError::Invalid(format!(
                        "block device {} holds {have} bytes, the image {size}",
                        path.display()
                    )));
                }
            } else {
                file.set_len(0).map_err(|e| RepoError::io(path, e))?;
                file.set_len(size).map_err(|e| RepoError::io(path, e))?;
                file.sync_all().map_err(|e| RepoError::io(path, e))?;
            }
            record
                .set_len(0)
                .and_then(|()| record.write_all_at(&header, 0))
                .and_then(|()| record.set_len(RESTORED_HEADER + nbytes as u64))
                .and_then(|()| record.sync_all())
                .map_err(|e| RepoError::io(&record_path, e))?;
        }
        let copied = bits.iter().map(|b| u64::from(b.count_ones())).sum();
        Ok(Destination {
            path: path.to_path_buf(),
            file,
            device,
            record,
            record_path,
            bits: Mutex::new(bits),
            copied: AtomicU64::new(copied),
            wanted: Mutex::new(VecDeque::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether chunk `i` is copied.
    pub fn has(&self, i: u64) -> bool {
        let b = self.bits.lock().expect("restored bits");
        b[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Chunks copied so far.
    pub fn copied(&self) -> u64 {
        self.copied.load(Ordering::Relaxed)
    }

    fn set(&self, i: u64) {
        let mut b = self.bits.lock().expect("restored bits");
        let (k, m) = ((i / 8) as usize, 1u8 << (i % 8));
        if b[k] & m == 0 {
            b[k] |= m;
            self.copied.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Syncs the destination, then records the chunks copied.
    fn persist(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| RepoError::io(&self.path, e))?;
        let bits = self.bits.lock().expect("restored bits").clone();
        self.record
            .write_all_at(&bits, RESTORED_HEADER)
            .and_then(|()| self.record.sync_data())
            .map_err(|e| RepoError::io(&self.record_path, e))
    }

    fn want(&self, i: u64) {
        let mut w = self.wanted.lock().expect("wanted chunks");
        if w.len() < 1024 && !w.contains(&i) {
            w.push_back(i);
        }
    }
}

/// Counters of a pseudo-volume.
#[derive(Debug, Default)]
pub struct VolumeStats {
    pub reads: AtomicU64,
    pub bytes_read: AtomicU64,
    pub writes: AtomicU64,
    pub bytes_written: AtomicU64,
    pub flushes: AtomicU64,
}

/// An image of a snapshot as a writable volume (see the module docs).
pub struct PseudoVolume {
    reader: Arc<ImageReader>,
    overlay: Overlay,
    dest: Option<Arc<Destination>>,
    started: Instant,
    first_read: OnceLock<std::time::Duration>,
    pub stats: VolumeStats,
}

impl PseudoVolume {
    pub fn new(reader: Arc<ImageReader>, overlay: Overlay, dest: Option<Arc<Destination>>) -> Self {
        PseudoVolume {
            reader,
            overlay,
            dest,
            started: Instant::now(),
            first_read: OnceLock::new(),
            stats: VolumeStats::default(),
        }
    }

    /// Counts time to first byte from `t` instead of from `new`.
    pub fn started_at(mut self, t: Instant) -> Self {
        self.started = t;
        self
    }

    pub fn size(&self) -> u64 {
        self.reader.size()
    }

    pub fn reader(&self) -> &Arc<ImageReader> {
        &self.reader
    }

    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    /// Time from start to the first read served, once there was one.
    pub fn time_to_first_byte(&self) -> Option<std::time::Duration> {
        self.first_read.get().copied()
    }

    /// The layers below the overlay: the destination where copied, else
    /// the repository (asking the background copy for the chunk first).
    fn lower(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let l = *self.reader.layout();
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let i = l.chunk_of(pos);
            let (start, len) = l.chunk_range(i);
            let n = ((start + len).min(end) - pos) as usize;
            let out = &mut buf[(pos - offset) as usize..][..n];
            match &self.dest {
                Some(d) if d.has(i) => d
                    .file
                    .read_exact_at(out, pos)
                    .map_err(|e| RepoError::io(&d.path, e))?,
                Some(d) => {
                    d.want(i);
                    self.reader.read_at(pos, out)?;
                }
                None => self.reader.read_at(pos, out)?,
            }
            pos += n as u64;
        }
        Ok(())
    }

    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.overlay.read(offset, buf, &|o, b| self.lower(o, b))?;
        self.first_read.get_or_init(|| self.started.elapsed());
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    pub fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        self.overlay.write(offset, data, &|o, b| self.lower(o, b))?;
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_written
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// WRITE_ZEROES and TRIM both leave the range reading as zeros.
    pub fn zero(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.overlay.zero(offset, len, &|o, b| self.lower(o, b))?;
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.overlay.flush()
    }

    /// Allocation by chunk: `(length, hole)` runs. A chunk is a hole when
    /// the image has none of its bytes and the client wrote none of them.
    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<(u64, bool)>> {
        self.reader
            .extents(offset, len, &|start, clen| self.overlay.any_in(start, clen))
    }
}

/// Progress of the background copy.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CopyProgress {
    pub chunks: u64,
    pub copied: u64,
    pub bytes_copied: u64,
    /// Chunks copied out of order because a client read them.
    pub jumped: u64,
}

/// Copies every chunk not yet in the destination, in order but a client's
/// reads first; records progress durably at least every `sync_every`
/// chunks. Returns the chunks that could not be read (each logged by
/// `report`); the copy is complete when there are none.
pub fn copy_to_destination(
    vol: &PseudoVolume,
    dest: &Destination,
    sync_every: u64,
    rate_limit: Option<u64>,
    report: &dyn Fn(&CopyProgress, Option<&str>),
    cancel: &Cancel,
) -> Result<Vec<u64>> {
    let reader = &vol.reader;
    let l = *reader.layout();
    let mut p = CopyProgress {
        chunks: l.chunk_count(),
        copied: dest.copied(),
        ..Default::default()
    };
    let mut failed = Vec::new();
    let mut tries: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
    let mut cursor = 0u64;
    let mut since_sync = 0u64;
    let mut last_sync = Instant::now();
    let zeros = vec![0u8; l.chunk_size as usize];
    let began = Instant::now();
    let mut budget_used = 0u64;
    loop {
        cancel.check()?;
        if let Some(rate) = rate_limit.filter(|r| *r > 0) {
            // Stay under `rate` bytes per second of copied chunks.
            let due = std::time::Duration::from_secs_f64(budget_used as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                std::thread::sleep(wait.min(std::time::Duration::from_millis(200)));
                continue;
            }
        }
        let next = loop {
            let w = dest.wanted.lock().expect("wanted chunks").pop_front();
            match w {
                Some(i) if dest.has(i) => continue,
                Some(i) => {
                    p.jumped += 1;
                    break Some(i);
                }
                None => break None,
            }
        };
        let i = match next {
            Some(i) => i,
            None => {
                while cursor < l.chunk_count() && dest.has(cursor) {
                    cursor += 1;
                }
                if cursor >= l.chunk_count() {
                    break;
                }
                cursor += 1;
                cursor - 1
            }
        };
        if failed.contains(&i) {
            continue;
        }
        let (start, len) = l.chunk_range(i);
        match reader.chunk(i) {
            Ok(Some(c)) => {
                dest.file
                    .write_all_at(&c, start)
                    .map_err(|e| RepoError::io(&dest.path, e))?;
                p.bytes_copied += len;
                budget_used += len;
            }
            Ok(None) => {
                if dest.device {
                    budget_used += len;
                    dest.file
                        .write_all_at(&zeros[..len as usize], start)
                        .map_err(|e| RepoError::io(&dest.path, e))?;
                }
            }
            Err(e) if e.class() == baton_repo::ErrorClass::Cancelled => return Err(e),
            Err(e) => {
                // A storage fault that may pass is tried again (10 times, a
                // second apart); damage is not.
                let n = tries.entry(i).or_insert(0u32);
                *n += 1;
                if e.class() == baton_repo::ErrorClass::RetryLater && *n < 10 {
                    report(&p, Some(&format!("{e} (trying again)")));
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    dest.wanted.lock().expect("wanted chunks").push_front(i);
                    continue;
                }
                failed.push(i);
                report(&p, Some(&e.to_string()));
                continue;
            }
        }
        dest.set(i);
        p.copied = dest.copied();
        since_sync += 1;
        if since_sync >= sync_every || last_sync.elapsed().as_secs() >= 1 {
            dest.persist()?;
            since_sync = 0;
            last_sync = Instant::now();
            report(&p, None);
        }
    }
    dest.persist()?;
    p.copied = dest.copied();
    report(&p, None);
    Ok(failed)
}

/// Writes the overlay's blocks into the destination and syncs it;
/// returns the bytes merged. Idempotent.
pub fn merge(overlay: &Overlay, dest: &Destination) -> Result<u64> {
    overlay.flush()?;
    let mut total = 0;
    let mut buf = Vec::new();
    for (off, len) in overlay.written_ranges() {
        let mut pos = off;
        while pos < off + len {
            let n = (off + len - pos).min(4 << 20) as usize;
            buf.resize(n, 0);
            overlay.read_written(pos, &mut buf)?;
            dest.file
                .write_all_at(&buf, pos)
                .map_err(|e| RepoError::io(&dest.path, e))?;
            pos += n as u64;
            total += n as u64;
        }
    }
    dest.file
        .sync_all()
        .map_err(|e| RepoError::io(&dest.path, e))?;
    Ok(total)
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    pub chunks: u64,
    /// Chunks checked by their keyed hash alone (no overlay blocks in them).
    pub by_hash: u64,
    /// Chunks compared byte by byte with the snapshot plus the overlay.
    pub with_overlay: u64,
    /// Chunks whose content differs: `(offset, length)`.
    pub mismatches: Vec<(u64, u64)>,
}

/// Checks the destination against the snapshot with the overlay applied.
pub fn verify(vol: &PseudoVolume, dest: &Destination, cancel: &Cancel) -> Result<VerifyReport> {
    let reader = &vol.reader;
    let key = reader.repository().key();
    let l = *reader.layout();
    let mut r = VerifyReport {
        chunks: l.chunk_count(),
        ..Default::default()
    };
    let mut got = vec![0u8; l.chunk_size as usize];
    let mut want = vec![0u8; l.chunk_size as usize];
    for i in 0..l.chunk_count() {
        cancel.check()?;
        let (start, len) = l.chunk_range(i);
        let got = &mut got[..len as usize];
        dest.file
            .read_exact_at(got, start)
            .map_err(|e| RepoError::io(&dest.path, e))?;
        let ok = if !vol.overlay.any_in(start, len) {
            r.by_hash += 1;
            match reader.chunk_id(i)? {
                Some(id) => key.blob_id(got) == id,
                None => got.iter().all(|&b| b == 0),
            }
        } else {
            r.with_overlay += 1;
            let want = &mut want[..len as usize];
            vol.overlay
                .read(start, want, &|o, b| reader.read_at(o, b))?;
            got == want
        };
        if !ok {
            r.mismatches.push((start, len));
        }
    }
    Ok(r)
}
