//! Opening the local files of an overlay and an instant restore (the
//! overlay, its map, the copy record, the state): they hold a client's
//! writes and decide what is merged into the target, so another local user
//! must not be able to plant, read or swap them (docs/design.md §0, §20).

use baton_repo::{RepoError, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Opens an existing private file: not through a symlink, owned by this
/// user, one link, no group or other permissions. `None` if absent.
pub fn open_existing(path: &Path) -> Result<Option<File>> {
    let f = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RepoError::io(path, e)),
    };
    let m = f.metadata().map_err(|e| RepoError::io(path, e))?;
    let me = nix::unistd::geteuid().as_raw();
    if !m.is_file() || m.uid() != me || m.nlink() != 1 || m.mode() & 0o077 != 0 {
        return Err(RepoError::Invalid(format!(
            "{} is not a private file of this user (owner {}, mode {:o}, {} links): refusing to use it; remove it if it is not yours",
            path.display(),
            m.uid(),
            m.mode() & 0o7777,
            m.nlink()
        )));
    }
    Ok(Some(f))
}

/// Creates a new private file (`O_EXCL`: never one planted before).
pub fn create_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .map_err(|e| RepoError::io(path, e))
}

/// Opens the private file at `path`, creating it if absent.
pub fn open_or_create(path: &Path) -> Result<File> {
    match open_existing(path)? {
        Some(f) => Ok(f),
        None => create_new(path),
    }
}

/// Syncs the directory holding `path` (after a create or rename).
pub fn sync_parent(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RepoError::io(dir, e))
}

/// `path` with `suffix` appended to its file name.
pub fn suffixed(p: &Path, s: &str) -> PathBuf {
    let mut o = p.as_os_str().to_owned();
    o.push(s);
    PathBuf::from(o)
}

/// Writes `bytes` as a new file at `path` atomically: a fresh temporary
/// file beside it (random name, `O_EXCL`), synced, renamed over `path`,
/// the directory synced.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let tmp = suffixed(
        path,
        &format!(".tmp-{}", &baton_format::random_id().to_hex()[..16]),
    );
    let f = create_new(&tmp)?;
    let written = f
        .write_all_at(bytes, 0)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(RepoError::io(path, e));
    }
    sync_parent(path)
}

/// Allocates a zeroed bitmap, failing cleanly instead of aborting.
pub fn bitmap(bytes: u64, what: &str) -> Result<Vec<u8>> {
    let n = usize::try_from(bytes)
        .ok()
        .filter(|&n| n <= MAX_BITMAP)
        .ok_or_else(|| {
            RepoError::Invalid(format!(
                "{what} would need a {bytes} byte bitmap; images up to {} TiB are served",
                (MAX_BITMAP as u64 * 8 * 4096) >> 40
            ))
        })?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        RepoError::Internal(format!("cannot allocate the {what} bitmap ({n} bytes)"))
    })?;
    v.resize(n, 0);
    Ok(v)
}

/// Largest bitmap held in memory: 512 MiB, 16 TiB of image at 4 KiB.
pub const MAX_BITMAP: usize = 512 << 20;
