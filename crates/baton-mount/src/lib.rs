//! `baton mount`: a repository's snapshots as a read-only FUSE file system,
//! served by [`fuser`] (pure Rust; as root it mounts with `mount(2)`,
//! otherwise through `fusermount3`).
//!
//! ```text
//! /ids/<short id>/...                the snapshot's root tree
//! /snapshots/<time>/...              2026-01-31T14:00:00Z (UTC, seconds;
//!                                    "-<short id>" when two share a second)
//! /snapshots/latest -> <time>        the newest (not dated in the future)
//! /hosts/<host>/<time>/...   and /hosts/<host>/latest
//! /tags/<tag>/<time>/...     and /tags/<tag>/latest
//! ```
//!
//! Files, directories, symlinks, FIFOs and device nodes show the metadata
//! their tree nodes record (mode, owner, times, size, xattrs; hard links
//! share an inode); block images are regular files of their size, read
//! through [`baton_block::ImageReader`]. Virtual directories are root's,
//! mode 0555. A file's content is read chunk by chunk from the repository
//! (each authenticated), with a 32 MiB cache of decrypted chunks; a chunk
//! that cannot be read fails the read with `EIO` and a line on stderr.
//!
//! ```no_run
//! use baton_mount::{MountOptions, mount};
//! use baton_repo::{Cancel, Repository};
//! use baton_storage::LocalStorage;
//! use std::sync::Arc;
//! let mut repo = Repository::open(Arc::new(LocalStorage::new("/tmp/repo")), b"password")?;
//! let _lock = repo.lock(false)?;
//! repo.load_index()?;
//! let snapshots = repo.list_snapshots()?;
//! let stop = Cancel::new(); // cancel it (e.g. on SIGINT) to unmount
//! mount(Arc::new(repo), snapshots, "/mnt/baton".as_ref(), &MountOptions::default(), &stop)?;
//! # Ok::<(), baton_repo::RepoError>(())
//! ```
//!
//! # Permissions
//! Without `allow_other` only the mounting user can enter the mount (the
//! kernel's rule for FUSE), and that user holds the repository's password,
//! so modes are shown but not enforced. With `allow_other` the mount uses
//! `default_permissions`: the kernel checks every access against the
//! recorded owner and mode, so other users read only what they could read
//! in the source. The mount is always `ro,nosuid,nodev`: a snapshot's
//! setuid programs and device nodes are shown, never honoured.
//!
//! # Consistency
//! The snapshots, their trees and chunks never change, so the kernel may
//! cache entries, attributes and pages for long. The caller holds a shared
//! lock for the mount's life, so no prune removes what is shown.
//!
//! # Cancellation
//! [`mount`] polls its `stop` handle every 100 ms; once it is set, the
//! file system is unmounted (lazily if still in use: processes inside then
//! see errors once this process exits) and `mount` returns. An unmount
//! from outside (`fusermount3 -u`, `umount`) ends it too.

mod attr;
mod content;
mod fs;
mod inodes;
mod layout;

use baton_repo::{Cancel, RepoError, Repository, Result};
use baton_types::{Id, Snapshot};
use fuser::{Config, MountOption, SessionACL};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How the file system is mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// Let other users (root included) use the mount, with the kernel
    /// checking the recorded owners and modes; for a user other than root,
    /// `/etc/fuse.conf` must allow it (`user_allow_other`).
    pub allow_other: bool,
}

/// How often `stop` is polled.
const POLL: Duration = Duration::from_millis(100);

/// Threads answering the kernel: reads wait for storage, so more than one.
const THREADS: usize = 4;

/// Mounts `snapshots` of `repo` (whose index is loaded) at `mountpoint`, an
/// existing empty directory, and serves until `stop` is set or the file
/// system is unmounted from outside; then unmounts and returns.
///
/// Errors: [`RepoError::Invalid`] for a mountpoint that is missing, not a
/// directory or not empty; [`RepoError::Io`] when mounting or unmounting
/// fails (no `/dev/fuse`, no permission, `allow_other` refused…);
/// [`RepoError::LockLost`] after unmounting when `stop` was aborted with a
/// reason ([`Cancel::abort`], as `LockGuard::abort_on_loss` does). A plain
/// stop returns `Ok`.
pub fn mount(
    repo: Arc<Repository>,
    snapshots: Vec<(Id, Snapshot)>,
    mountpoint: &Path,
    opts: &MountOptions,
    stop: &Cancel,
) -> Result<()> {
    check_mountpoint(mountpoint)?;
    let fs = fs::BatonFs::new(repo, layout::Layout::new(snapshots));
    let session = fuser::spawn_mount(fs, mountpoint, &config(opts))
        .map_err(|e| RepoError::io(mountpoint, e))?;
    loop {
        if session.guard.is_finished() {
            // Unmounted from outside: the session ended by itself.
            return session.join().map_err(|e| RepoError::io(mountpoint, e));
        }
        if stop.is_cancelled() {
            break;
        }
        std::thread::sleep(POLL);
    }
    match session.umount_and_join() {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(fuser::Errno::EBUSY.code()) => {
            lazy_unmount(mountpoint, e)?
        }
        Err(e) => return Err(RepoError::io(mountpoint, e)),
    }
    // A stop with a reason (the repository lock was lost) is an error.
    match stop.check() {
        Err(e @ RepoError::LockLost(_)) => Err(e),
        _ => Ok(()),
    }
}

fn config(opts: &MountOptions) -> Config {
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::FSName("baton".into()),
        MountOption::Subtype("baton".into()),
    ];
    if opts.allow_other {
        cfg.mount_options.push(MountOption::DefaultPermissions);
        cfg.acl = SessionACL::All;
    }
    cfg.n_threads = Some(THREADS);
    cfg
}

fn check_mountpoint(mountpoint: &Path) -> Result<()> {
    let shown = mountpoint.display();
    let md = std::fs::metadata(mountpoint)
        .map_err(|e| RepoError::Invalid(format!("mountpoint {shown} cannot be used: {e}")))?;
    if !md.is_dir() {
        return Err(RepoError::Invalid(format!(
            "mountpoint {shown} is not a directory"
        )));
    }
    let mut entries = std::fs::read_dir(mountpoint)
        .map_err(|e| RepoError::Invalid(format!("mountpoint {shown} cannot be read: {e}")))?;
    if entries.next().is_some() {
        return Err(RepoError::Invalid(format!(
            "mountpoint {shown} is not empty"
        )));
    }
    Ok(())
}

/// Detaches a busy mount (`fusermount3 -u -z`): it disappears from the
/// namespace at once; the processes still inside see errors once this
/// process exits.
fn lazy_unmount(mountpoint: &Path, busy: std::io::Error) -> Result<()> {
    let out = std::process::Command::new("fusermount3")
        .args(["-u", "-z", "--"])
        .arg(mountpoint)
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(RepoError::io(
            mountpoint,
            std::io::Error::other(format!(
                "cannot unmount ({busy}); `fusermount3 -u -z` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
        )),
        Err(e) => Err(RepoError::io(
            mountpoint,
            std::io::Error::other(format!(
                "cannot unmount ({busy}) and cannot run fusermount3: {e}; unmount it with `umount -l`"
            )),
        )),
    }
}
