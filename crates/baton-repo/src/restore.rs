//! `baton restore`: recreate a snapshot (or part of it) in a directory with
//! all metadata. Files are written with positional writes; all-zero chunks
//! are skipped so sparse files stay sparse. Directory metadata is applied after
//! the directory's children, so their creation does not disturb it.

use crate::browse::{find_node, join};
use crate::filter::PatternSet;
use crate::meta::apply_metadata;
use crate::progress::{Cancel, EntryStatus, Progress};
use crate::{RepoError, Repository, Result};
use baton_types::{Id, Node, NodeKind, Snapshot};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Options of `baton restore`.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore only paths matching these patterns (and what is below them).
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
    /// Re-read every restored file and compare it with the snapshot.
    pub verify: bool,
}

/// What a restore did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub other: u64,
    pub bytes: u64,
    pub files_verified: u64,
    /// Bytes loaded from the repository.
    pub bytes_fetched: u64,
    /// Bytes of files left by an earlier, interrupted restore that were
    /// verified intact and kept.
    pub bytes_verified_in_place: u64,
    /// Files found complete and intact from an earlier restore.
    pub files_already_restored: u64,
    /// (path, message) of every entry that could not be restored or verified.
    pub errors: Vec<(String, String)>,
}

struct Restorer<'a> {
    repo: &'a Repository,
    includes: PatternSet,
    excludes: PatternSet,
    progress: &'a dyn Progress,
    cancel: &'a Cancel,
    is_root: bool,
    hardlinks: HashMap<(u64, u64), PathBuf>,
    to_verify: Vec<(PathBuf, Vec<Id>)>,
    verify: bool,
    summary: RestoreSummary,
}

/// Restores `subpath` (or the whole snapshot) of `snapshot` into `target`.
/// The repository's index must be loaded. A directory's contents go directly
/// into `target`; a single file goes to `target/<name>`.
pub fn restore(
    repo: &Repository,
    snapshot: &Snapshot,
    subpath: Option<&str>,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<RestoreSummary> {
    let lock = repo.lock(false)?;
    lock.abort_on_loss(cancel);
    let sub = subpath.unwrap_or("/");
    let (node, subtree) = find_node(repo, &snapshot.tree, sub)?;
    fs::create_dir_all(target).map_err(|e| RepoError::io(target, e))?;
    let mut r = Restorer {
        repo,
        includes: PatternSet::new(&opts.includes)?,
        excludes: PatternSet::new(&opts.excludes)?,
        progress,
        cancel,
        is_root: nix::unistd::geteuid().is_root(),
        hardlinks: HashMap::new(),
        to_verify: Vec::new(),
        verify: opts.verify,
        summary: RestoreSummary::default(),
    };
    match (node, subtree) {
        (Some(n), _) if n.kind != NodeKind::Dir => {
            let dst = target.join(n.name.as_os());
            r.leaf(&n, &dst, sub)?;
        }
        (_, Some(tree)) => {
            r.tree(&tree, target, sub, false)?;
        }
        (_, None) => {}
    }
    if opts.verify {
        r.verify_all()?;
    }
    Ok(r.summary)
}

impl Restorer<'_> {
    fn error(&mut self, path: &Path, msg: String) {
        let p = path.display().to_string();
        self.progress.error(&p, &msg);
        self.summary.errors.push((p, msg));
    }

    /// Restores the entries of `tree` into `dir`. Returns whether anything was restored.
    fn tree(&mut self, tree: &Id, dir: &Path, prefix: &str, selected: bool) -> Result<bool> {
        let t = self.repo.load_tree(tree)?;
        let mut any = false;
        for n in &t.nodes {
            self.cancel.check()?;
            let p = join(prefix, &n.name.lossy());
            if self.excludes.matches(Path::new(&p)) {
                continue;
            }
            let sel = selected || self.includes.is_empty() || self.includes.matches(Path::new(&p));
            if !safe_name(&n.name.0) {
                self.error(
                    dir,
                    format!(
                        "refusing entry with unsafe name {:?} (it would escape the target)",
                        n.name.lossy()
                    ),
                );
                continue;
            }
            let dst = dir.join(n.name.as_os());
            if n.kind == NodeKind::Dir {
                if let Err(e) = make_dir(&dst) {
                    self.error(&dst, format!("cannot create directory: {e}"));
                    continue;
                }
                let inner = match n.subtree {
                    Some(sub) => match self.tree(&sub, &dst, &p, sel) {
                        Ok(b) => b,
                        Err(RepoError::Cancelled) => return Err(RepoError::Cancelled),
                        Err(e) => {
                            self.error(&dst, format!("cannot restore directory contents: {e}"));
                            true
                        }
                    },
                    None => false,
                };
                if sel || inner {
                    if let Err(e) = apply_metadata(&dst, n, self.is_root) {
                        self.error(&dst, e);
                    }
                    self.summary.dirs += 1;
                    any = true;
                } else {
                    let _ = fs::remove_dir(&dst);
                }
            } else if sel {
                self.leaf(n, &dst, &p)?;
                any = true;
            }
        }
        Ok(any)
    }

    fn leaf(&mut self, n: &Node, dst: &Path, snap_path: &str) -> Result<()> {
        if n.kind == NodeKind::File {
            return self.file(n, dst, snap_path);
        }
        if let Ok(m) = fs::symlink_metadata(dst) {
            let removed = if m.is_dir() {
                fs::remove_dir(dst)
            } else {
                fs::remove_file(dst)
            };
            if let Err(e) = removed {
                self.error(dst, format!("cannot replace existing entry: {e}"));
                return Ok(());
            }
        }
        let result = match n.kind {
            NodeKind::File => unreachable!("files are restored by file()"),

            NodeKind::Symlink => match &n.link_target {
                Some(t) => std::os::unix::fs::symlink(t.as_os(), dst).map_err(|e| e.to_string()),
                None => Err("symlink without target in snapshot".into()),
            },
            NodeKind::Fifo => {
                nix::unistd::mkfifo(dst, nix::sys::stat::Mode::from_bits_truncate(n.mode))
                    .map_err(|e| e.to_string())
            }
            NodeKind::Chardev | NodeKind::Blockdev => {
                let kind = if n.kind == NodeKind::Chardev {
                    nix::sys::stat::SFlag::S_IFCHR
                } else {
                    nix::sys::stat::SFlag::S_IFBLK
                };
                nix::sys::stat::mknod(
                    dst,
                    kind,
                    nix::sys::stat::Mode::from_bits_truncate(n.mode),
                    n.rdev as _,
                )
                .map_err(|e| format!("cannot create device node: {e}"))
            }
            NodeKind::Dir => unreachable!("directories are restored by tree()"),
        };
        match result.and_then(|()| apply_metadata(dst, n, self.is_root)) {
            Ok(()) => self.summary.other += 1,
            Err(e) => self.error(dst, e),
        }
        self.progress.entry(dst, EntryStatus::Restored);
        Ok(())
    }

    fn file(&mut self, n: &Node, dst: &Path, _snap_path: &str) -> Result<()> {
        // Anything but a regular file in the way is replaced; a regular file
        // is kept and verified in place (an earlier, interrupted restore).
        let existing = fs::symlink_metadata(dst).ok();
        let replace = match &existing {
            Some(m) if m.is_dir() => Some(fs::remove_dir(dst)),
            Some(m)
                if !m.is_file()
                    || (n.links > 1 && self.hardlinks.contains_key(&(n.device_id, n.inode))) =>
            {
                Some(fs::remove_file(dst))
            }
            _ => None,
        };
        if let Some(Err(e)) = replace {
            self.error(dst, format!("cannot replace existing entry: {e}"));
            return Ok(());
        }
        if n.links > 1 {
            let key = (n.device_id, n.inode);
            if let Some(first) = self.hardlinks.get(&key) {
                match fs::hard_link(first, dst) {
                    Ok(()) => self.summary.files += 1,
                    Err(e) => self.error(
                        dst,
                        format!("cannot create hard link to {}: {e}", first.display()),
                    ),
                }
                return Ok(());
            }
            self.hardlinks.insert(key, dst.to_path_buf());
        }
        match self.write_content(n, dst) {
            Ok(()) => {}
            Err(RepoError::Cancelled) => return Err(RepoError::Cancelled),
            Err(e) => {
                let _ = fs::remove_file(dst);
                self.hardlinks.remove(&(n.device_id, n.inode));
                self.error(dst, format!("cannot restore file: {e}"));
                return Ok(());
            }
        }
        if let Err(e) = apply_metadata(dst, n, self.is_root) {
            self.error(dst, e);
        }
        self.summary.files += 1;
        self.summary.bytes += n.size;
        if self.verify {
            self.to_verify.push((dst.to_path_buf(), n.content.clone()));
        }
        self.progress.entry(dst, EntryStatus::Restored);
        Ok(())
    }

    /// Writes a file's content. An existing file (left by an interrupted
    /// restore) is verified chunk by chunk against the snapshot: intact
    /// chunks are kept and only the others are fetched and written, so a
    /// restore run again never starts over and never trusts what it has not
    /// verified.
    fn write_content(&mut self, n: &Node, dst: &Path) -> Result<()> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dst)
            .map_err(|e| RepoError::io(dst, e))?;
        let old_len = f.metadata().map_err(|e| RepoError::io(dst, e))?.len();
        let mut offset = 0u64;
        let mut buf = Vec::new();
        let mut fetched_any = false;
        for id in &n.content {
            self.cancel.check()?;
            let len = self.repo.index().plain_len(id);
            if let Some(len) = len
                && offset + len <= old_len
            {
                buf.resize(len as usize, 0);
                if f.read_exact_at(&mut buf, offset).is_ok() && &self.repo.key().blob_id(&buf) == id
                {
                    offset += len;
                    self.summary.bytes_verified_in_place += len;
                    self.progress.bytes(len);
                    continue;
                }
            }
            let data = self.repo.load_blob(id)?;
            self.summary.bytes_fetched += data.len() as u64;
            fetched_any = true;
            if offset >= old_len {
                // Beyond the old end the file reads as zeros: keep holes.
                write_sparse(&f, &data, offset).map_err(|e| RepoError::io(dst, e))?;
            } else {
                f.write_all_at(&data, offset)
                    .map_err(|e| RepoError::io(dst, e))?;
            }
            offset += data.len() as u64;
            self.progress.bytes(data.len() as u64);
        }
        f.set_len(offset).map_err(|e| RepoError::io(dst, e))?;
        if offset != n.size {
            return Err(RepoError::Invalid(format!(
                "snapshot records {} bytes but its chunks hold {offset}",
                n.size
            )));
        }
        if !fetched_any && old_len == offset && old_len > 0 {
            self.summary.files_already_restored += 1;
        }
        Ok(())
    }

    fn verify_all(&mut self) -> Result<()> {
        for (path, content) in std::mem::take(&mut self.to_verify) {
            self.cancel.check()?;
            match verify_file(self.repo, &path, &content) {
                Ok(()) => self.summary.files_verified += 1,
                Err(e) => self.error(&path, format!("verification failed: {e}")),
            }
        }
        Ok(())
    }
}

/// Granularity of hole detection: the usual filesystem block size.
const HOLE_BLOCK: u64 = 4096;

/// Writes `data` at `offset`, leaving all-zero filesystem blocks unwritten so
/// they stay holes (the file was just truncated, so they read as zeros).
/// Sparse source files therefore restore sparse, even when a chunk mixes
/// data and zeros.
fn write_sparse(f: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    let mut pos = 0usize;
    let mut run_start: Option<usize> = None;
    while pos < data.len() {
        // Blocks are aligned to the file, not the chunk.
        let block_end = (((offset + pos as u64) / HOLE_BLOCK + 1) * HOLE_BLOCK - offset) as usize;
        let end = block_end.min(data.len());
        let zero = data[pos..end].iter().all(|&b| b == 0);
        match (zero, run_start) {
            (false, None) => run_start = Some(pos),
            (true, Some(s)) => {
                f.write_all_at(&data[s..pos], offset + s as u64)?;
                run_start = None;
            }
            _ => {}
        }
        pos = end;
    }
    if let Some(s) = run_start {
        f.write_all_at(&data[s..], offset + s as u64)?;
    }
    Ok(())
}

/// A tree entry name that stays inside its directory: not empty, `.` or
/// `..`, and without `/` or NUL. Trees are authenticated, so only a holder of
/// the key could write such a name; restore refuses it all the same.
fn safe_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

fn make_dir(dst: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(dst) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            fs::remove_file(dst)?;
            fs::create_dir(dst)
        }
        Err(_) => fs::create_dir(dst),
    }
}

/// Re-reads a restored file and checks every chunk against its id.
fn verify_file(repo: &Repository, path: &Path, content: &[Id]) -> Result<()> {
    let mut f = File::open(path).map_err(|e| RepoError::io(path, e))?;
    let mut buf = Vec::new();
    for (i, id) in content.iter().enumerate() {
        let len = repo
            .index()
            .plain_len(id)
            .ok_or_else(|| RepoError::NotFound(format!("blob {id} is not in the index")))?;
        buf.resize(len as usize, 0);
        f.read_exact(&mut buf).map_err(|e| RepoError::io(path, e))?;
        if &repo.key().blob_id(&buf) != id {
            return Err(RepoError::Invalid(format!(
                "chunk {i} differs from the snapshot"
            )));
        }
    }
    let mut extra = [0u8; 1];
    if f.read(&mut extra).map_err(|e| RepoError::io(path, e))? != 0 {
        return Err(RepoError::Invalid(
            "file is longer than in the snapshot".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn unsafe_names_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"../x", b"a\0b"] {
            assert!(!safe_name(bad), "{bad:?}");
        }
        assert!(safe_name(b"..."));
        assert!(safe_name("naïve ☃".as_bytes()));
    }

    #[test]
    fn sparse_writes_leave_zero_blocks_as_holes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let f = File::create(&p).unwrap();
        // A chunk at an unaligned offset: zeros, 10 data bytes, many zeros, data at the end.
        let mut data = vec![0u8; 3 << 20];
        data[100_000..100_010].copy_from_slice(b"0123456789");
        let n = data.len();
        data[n - 5..].copy_from_slice(b"tail!");
        write_sparse(&f, &data, 1234).unwrap();
        f.set_len(1234 + n as u64).unwrap();
        let back = std::fs::read(&p).unwrap();
        assert_eq!(&back[1234..], &data[..]);
        assert!(back[..1234].iter().all(|&b| b == 0));
        let allocated = std::fs::metadata(&p).unwrap().blocks() * 512;
        assert!(allocated <= 4 * HOLE_BLOCK, "{allocated} bytes allocated");
    }
}
