//! Writing the contents of a batch of restored files, in pack order: every
//! blob the batch needs is listed under its pack, each pack's needed blobs
//! are read with as few range reads as possible (neighbours are read
//! together), opened once (decrypted, decompressed, checked against its id)
//! and written to every place it belongs, with sparse writes. Packs are
//! shared out to one worker per core, so a restore reads each pack once and
//! decrypts and decompresses on every core.

use super::target::Target;
use super::write_sparse;
use baton_format::pack::{BlobBuffers, open_blob_into};
use baton_repo::progress::{Cancel, Progress};
use baton_repo::{RepoError, Repository, Result};
use baton_storage::ObjectKind;
use baton_types::{BlobType, Id};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Blobs of one pack closer than this are read with one request.
const MAX_GAP: u64 = 1 << 20;

/// A file whose content is to be written: it exists at its final length
/// and reads as zeros, or (`create`) it does not exist yet and the worker
/// that writes its first chunk creates it, the one that writes its last
/// gives it its length (trailing holes).
pub(super) struct FileJob<'a> {
    pub path: PathBuf,
    pub content: Vec<Id>,
    /// The size the snapshot records.
    pub size: u64,
    pub create: bool,
    /// With `create`: something else may appear at the name meanwhile, so
    /// the first worker to open it creates it exclusively (and pins that
    /// inode); the others open what it created.
    pub exclusive: bool,
    /// It exists at its length holding this many bytes of something
    /// earlier: chunks there are verified in place (on every core) and
    /// only those that differ are written.
    pub in_place: Option<u64>,
    /// The snapshot hard-links this file: other links are expected.
    pub linked: bool,
    /// Metadata to apply, on the worker's own handle, once the file's last
    /// chunk is written (`None`: the caller applies it).
    pub meta: Option<&'a baton_types::Node>,
}

/// What writing a batch did.
pub(super) struct Outcome {
    /// Per file of the batch: why it could not be written, if it could not.
    pub failed: Vec<Option<String>>,
    /// Plaintext bytes of blobs loaded from the repository.
    pub bytes_fetched: u64,
    /// Bytes of `in_place` files found intact and kept.
    pub bytes_verified_in_place: u64,
    /// Per file: an `in_place` file found complete (nothing written).
    pub complete_in_place: Vec<bool>,
    /// Per file with `meta`: the result of applying it, if a worker did
    /// (after its last write); `None`: the caller still has to.
    pub metadata: Vec<Option<Result<(), String>>>,
    /// The first write that found the target full: the batch stopped there.
    pub no_space: Option<(PathBuf, std::io::Error)>,
}

struct Want {
    id: Id,
    offset: u64,
    length: u64,
    raw_length: u32,
    compressed: bool,
    /// (file, offset in the file)
    targets: Vec<(usize, u64)>,
}

struct Failures(Mutex<Vec<Option<String>>>);

impl Failures {
    fn set(&self, file: usize, msg: impl FnOnce() -> String) {
        let mut f = self.0.lock().expect("failure list");
        if f[file].is_none() {
            f[file] = Some(msg());
        }
    }
    fn has(&self, file: usize) -> bool {
        self.0.lock().expect("failure list")[file].is_some()
    }
}

/// Writes the content of every file in `files`; a file that cannot be
/// written completely is reported in the outcome, the others go on.
pub(super) fn write_files(
    repo: &Repository,
    target: &Target,
    files: &[FileJob<'_>],
    is_root: bool,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Outcome> {
    let failures = Failures(Mutex::new(vec![None; files.len()]));
    let (intact, bytes_verified_in_place) = verify_in_place(repo, target, files, progress, cancel)?;
    // Plan: every blob once, under its pack; packs in order of first use.
    let mut wants: Vec<Want> = Vec::new();
    let mut by_id: HashMap<Id, usize> = HashMap::new();
    let mut packs: Vec<(Id, Vec<usize>)> = Vec::new();
    let mut pack_of: HashMap<Id, usize> = HashMap::new();
    let mut remaining: Vec<usize> = vec![0; files.len()];
    for (fi, f) in files.iter().enumerate() {
        let mut offset = 0u64;
        for (ci, id) in f.content.iter().enumerate() {
            let Some(loc) = repo.index().locate(id) else {
                failures.set(fi, || {
                    format!("blob {id} is not in the index (missing data)")
                });
                break;
            };
            if intact[fi].as_ref().is_some_and(|m| m[ci]) {
                offset += loc.raw_length as u64;
                continue;
            }
            remaining[fi] += 1;
            let w = *by_id.entry(*id).or_insert_with(|| {
                let p = *pack_of.entry(loc.pack).or_insert_with(|| {
                    packs.push((loc.pack, Vec::new()));
                    packs.len() - 1
                });
                packs[p].1.push(wants.len());
                wants.push(Want {
                    id: *id,
                    offset: loc.offset as u64,
                    length: loc.length as u64,
                    raw_length: loc.raw_length,
                    compressed: loc.compressed,
                    targets: Vec::new(),
                });
                wants.len() - 1
            });
            wants[w].targets.push((fi, offset));
            offset += loc.raw_length as u64;
        }
        if offset != f.size && !failures.has(fi) {
            failures.set(fi, || {
                format!(
                    "snapshot records {} bytes but its chunks hold {offset}",
                    f.size
                )
            });
        }
    }
    drop(by_id);
    drop(pack_of);
    for (_, ws) in &mut packs {
        ws.sort_by_key(|&w| wants[w].offset);
    }

    // Chunk writes left per file, to know which write is a file's last.
    let complete_in_place: Vec<bool> = files
        .iter()
        .zip(&remaining)
        .map(|(f, &r)| f.in_place.is_some() && r == 0)
        .collect();
    // Chunk writes not yet finished per file: the worker that finishes the
    // last one applies the file's metadata (times last, after every write).
    let unwritten: Vec<AtomicUsize> = remaining.iter().map(|&r| AtomicUsize::new(r)).collect();
    let remaining: Vec<AtomicUsize> = remaining.into_iter().map(AtomicUsize::new).collect();
    let metadata: Mutex<Vec<Option<Result<(), String>>>> = Mutex::new(vec![None; files.len()]);
    let next = AtomicUsize::new(0);
    let fetched = AtomicU64::new(0);
    let no_space: Mutex<Option<(PathBuf, std::io::Error)>> = Mutex::new(None);
    let created: Vec<OnceLock<Result<(), Made>>> = files.iter().map(|_| OnceLock::new()).collect();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                std::thread::Builder::new()
                    .name("baton-restore".into())
                    .spawn_scoped(s, || -> Result<()> {
                        let mut out = Writer::default();
                        loop {
                            cancel.check()?;
                            if no_space.lock().expect("no space").is_some() {
                                return Ok(());
                            }
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some((pack, ws)) = packs.get(i) else {
                                return Ok(());
                            };
                            let ctx = Ctx {
                                repo,
                                target,
                                files,
                                failures: &failures,
                                progress,
                                fetched: &fetched,
                                remaining: &remaining,
                                unwritten: &unwritten,
                                metadata: &metadata,
                                created: &created,
                                is_root,
                                no_space: &no_space,
                            };
                            ctx.pack(pack, ws, &wants, &mut out);
                        }
                    })
                    .expect("spawning a thread")
            })
            .collect();
        let mut result = Ok(());
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(RepoError::Internal("a restore worker panicked".into())));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })?;
    Ok(Outcome {
        failed: failures.0.into_inner().expect("failure list"),
        bytes_fetched: fetched.into_inner(),
        bytes_verified_in_place,
        complete_in_place,
        metadata: metadata.into_inner().expect("metadata"),
        no_space: no_space.into_inner().expect("no space"),
    })
}

struct Ctx<'a> {
    repo: &'a Repository,
    target: &'a Target,
    files: &'a [FileJob<'a>],
    failures: &'a Failures,
    progress: &'a dyn Progress,
    fetched: &'a AtomicU64,
    remaining: &'a [AtomicUsize],
    unwritten: &'a [AtomicUsize],
    metadata: &'a Mutex<Vec<Option<Result<(), String>>>>,
    /// Per `exclusive` file: whether its creation succeeded (errno and
    /// message if not), set by the worker that created it.
    created: &'a [OnceLock<Result<(), Made>>],
    is_root: bool,
    no_space: &'a Mutex<Option<(PathBuf, std::io::Error)>>,
}

impl Ctx<'_> {
    /// Restores what the batch needs from one pack.
    fn pack(&self, pack: &Id, ws: &[usize], wants: &[Want], out: &mut Writer) {
        let mut start = 0;
        while start < ws.len() {
            // A run of neighbouring blobs, read with one request.
            let first = &wants[ws[start]];
            let mut end = start + 1;
            let mut run_end = first.offset + first.length;
            while end < ws.len() && wants[ws[end]].offset <= run_end + MAX_GAP {
                let w = &wants[ws[end]];
                run_end = run_end.max(w.offset + w.length);
                end += 1;
            }
            let run = &ws[start..end];
            let len = (run_end - first.offset) as usize;
            let read = self.repo.storage().read_range_scratch(
                ObjectKind::Pack,
                &pack.to_hex(),
                first.offset,
                len,
                &mut out.buf,
            );
            match read {
                Ok(range) => {
                    let whole = std::mem::take(&mut out.buf);
                    let bytes = &whole[range];
                    for &w in run {
                        let w = &wants[w];
                        let at = (w.offset - first.offset) as usize;
                        let sealed = &bytes[at..at + w.length as usize];
                        self.blob(pack, w, sealed, out);
                    }
                    out.buf = whole;
                }
                Err(e) => {
                    for &w in run {
                        for &(f, _) in &wants[w].targets {
                            self.failures.set(f, || format!("reading pack {pack}: {e}"));
                        }
                    }
                }
            }
            start = end;
        }
    }

    fn blob(&self, pack: &Id, w: &Want, sealed: &[u8], out: &mut Writer) {
        let key = self.repo.key();
        let mut bufs = std::mem::take(&mut out.blobs);
        let data = match open_blob_into(
            key,
            BlobType::Data,
            &w.id,
            sealed,
            w.raw_length,
            w.compressed,
            &mut bufs,
        ) {
            Ok(d) => d,
            Err(e) => {
                for &(f, _) in &w.targets {
                    self.failures
                        .set(f, || format!("blob {} in pack {pack}: {e}", w.id));
                }
                out.blobs = bufs;
                return;
            }
        };
        self.fetched.fetch_add(data.len() as u64, Ordering::Relaxed);
        for &(f, offset) in &w.targets {
            if self.failures.has(f) {
                continue;
            }
            let job = &self.files[f];
            let last = self.remaining[f].fetch_sub(1, Ordering::AcqRel) == 1;
            let written = out.file(self, f).and_then(|file| {
                match job.in_place {
                    // Over old bytes, zeros must be written too.
                    Some(old_len) if offset < old_len => file.write_all_at(data, offset)?,
                    _ => write_sparse(file, data, offset)?,
                }
                if last && (job.create || job.in_place.is_some()) {
                    file.set_len(job.size)?;
                }
                Ok(())
            });
            if let Err(e) = written {
                if super::is_no_space(&e) {
                    let mut first = self.no_space.lock().expect("no space");
                    if first.is_none() {
                        *first = Some((job.path.clone(), e));
                    }
                    break;
                }
                self.failures
                    .set(f, || format!("writing {}: {e}", job.path.display()));
            }
            if self.unwritten[f].fetch_sub(1, Ordering::AcqRel) == 1
                && let Some(node) = job.meta
                && !self.failures.has(f)
                && let Some((_, file)) = out.open.as_ref().filter(|(i, _)| *i == f)
            {
                let r = self
                    .target
                    .apply_metadata_on(&job.path, file, node, self.is_root);
                self.metadata.lock().expect("metadata")[f] = Some(r);
            }
            self.progress.bytes(data.len() as u64);
        }
        out.blobs = bufs;
    }
}

/// Reads back the chunks of the `in_place` files, on every core: per file,
/// which chunks are there intact (by their keyed hash), and the bytes so
/// kept.
fn verify_in_place(
    repo: &Repository,
    target: &Target,
    files: &[FileJob<'_>],
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<(Vec<Option<Vec<bool>>>, u64)> {
    let todo: Vec<usize> = (0..files.len())
        .filter(|&i| files[i].in_place.is_some_and(|l| l > 0))
        .collect();
    let mut intact: Vec<Option<Vec<bool>>> = vec![None; files.len()];
    if todo.is_empty() {
        return Ok((intact, 0));
    }
    let next = AtomicUsize::new(0);
    let kept = AtomicU64::new(0);
    let found: Mutex<Vec<(usize, Vec<bool>)>> = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..workers.min(todo.len()))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut buf = Vec::new();
                    while let Some(&fi) = todo.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let f = &files[fi];
                        let old_len = f.in_place.unwrap_or(0);
                        let mut mask = vec![false; f.content.len()];
                        // Unreadable: every chunk is fetched (and the
                        // write reports what is wrong).
                        if let Ok(file) = target.open_read(&f.path) {
                            let mut offset = 0u64;
                            for (ci, id) in f.content.iter().enumerate() {
                                cancel.check()?;
                                let Some(len) = repo.index().plain_len_any(id) else {
                                    break;
                                };
                                if offset + len > old_len {
                                    break;
                                }
                                buf.resize(len as usize, 0);
                                if file.read_exact_at(&mut buf, offset).is_ok()
                                    && &repo.key().blob_id(&buf) == id
                                {
                                    mask[ci] = true;
                                    kept.fetch_add(len, Ordering::Relaxed);
                                    progress.bytes(len);
                                }
                                offset += len;
                            }
                        }
                        found.lock().expect("verified").push((fi, mask));
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .unwrap_or_else(|_| Err(RepoError::Internal("a verify worker panicked".into())))?;
        }
        Ok(())
    })?;
    for (fi, mask) in found.into_inner().expect("verified") {
        intact[fi] = Some(mask);
    }
    Ok((intact, kept.into_inner()))
}

/// The file a worker wrote last, kept open: a large file's chunks tend to
/// follow each other in a pack.
#[derive(Default)]
struct Writer {
    open: Option<(usize, File)>,
    /// Read buffer, reused for every range this worker reads.
    buf: Vec<u8>,
    /// Decryption and decompression buffers, reused for every blob.
    blobs: BlobBuffers,
}

/// Why an exclusive creation failed: its errno, if any, and its message.
#[derive(Debug)]
struct Made(Option<i32>, String);

impl Writer {
    /// The handle of the batch's file `f`, opened (or created) if it is not
    /// the one this worker wrote last.
    fn file(&mut self, ctx: &Ctx<'_>, f: usize) -> std::io::Result<&File> {
        if self.open.as_ref().is_none_or(|(i, _)| *i != f) {
            self.open = None;
            let job = &ctx.files[f];
            let (target, path) = (ctx.target, &job.path);
            let file = if job.create && job.exclusive {
                let mut mine = None;
                let made = ctx.created[f].get_or_init(|| {
                    let file = target.open_file(path, true, true, false).map_err(|e| {
                        let msg = if e.kind() == std::io::ErrorKind::AlreadyExists {
                            "something appeared at this name during the restore".to_string()
                        } else {
                            e.to_string()
                        };
                        Made(e.raw_os_error(), msg)
                    })?;
                    target
                        .pin(path, &file)
                        .map_err(|e| Made(e.raw_os_error(), e.to_string()))?;
                    mine = Some(file);
                    Ok(())
                });
                match (mine, made) {
                    (Some(file), _) => file,
                    // Created by another worker: that very inode.
                    (None, Ok(())) => target.open_file(path, false, false, false)?,
                    (None, Err(Made(Some(errno), _))) if *errno != nix::libc::EEXIST => {
                        return Err(std::io::Error::from_raw_os_error(*errno));
                    }
                    (None, Err(Made(_, msg))) => return Err(std::io::Error::other(msg.clone())),
                }
            } else {
                target.open_file(path, job.create, false, job.linked)?
            };
            self.open = Some((f, file));
        }
        Ok(&self.open.as_ref().expect("just opened").1)
    }
}
