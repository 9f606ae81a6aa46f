//! Application-consistent volume snapshots: quiesce the application, take
//! a snapshot of the volume its data lives on, release the application at
//! once; the backup then reads the snapshot, which stays until the copy at
//! the second site is acknowledged (`baton replicate`).
//!
//! Snapshots are btrfs subvolume snapshots, made with `btrfs` (btrfs-progs:
//! the maintained tool for the `BTRFS_IOC_SNAP_CREATE_V2` ioctls, which we
//! would otherwise hand-write as unsafe code). They live in the subvolume
//! itself, under `.baton-snapshots/` (a snapshot holds no nested
//! subvolume, so snapshots never contain each other). LVM is not offered
//! (no device-mapper on the machines we test on) and an XFS reflink copy
//! of a tree is not a point in time. `fsfreeze` of the btrfs itself cannot
//! be combined with its snapshot (the snapshot waits for the frozen file
//! system for ever): a btrfs snapshot flushes the subvolume's dirty data and
//! is atomic by itself; `fsfreeze` quiesces a file system that lives in an
//! image file on the subvolume (a loop device, a VM's disk).
//!
//! Quiescing PostgreSQL: `CHECKPOINT` (its buffers flushed), then
//! `pg_backup_start` (fast), the snapshot (writable at first), then
//! `pg_backup_stop`; its label goes into the snapshot's data directory as
//! `backup_label`, with the WAL from the start to the stop copied into the
//! snapshot's `pg_wal` (so recovery reaches the end of the backup without
//! an archive), `postmaster.pid` removed; then the snapshot is made
//! read-only. A server started on a copy of it recovers to a consistent
//! state holding every transaction committed before the snapshot.

use crate::postgres::{self, PgError};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory in a subvolume that holds its snapshots.
pub const SNAPSHOT_DIR: &str = ".baton-snapshots";

/// `statfs` magic of btrfs.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
/// The inode number of a btrfs subvolume's root directory.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("quiescing PostgreSQL: {0}")]
    Postgres(#[from] PgError),
}

/// How the application is quiesced before the snapshot.
#[derive(Debug, Clone, Default)]
pub enum Quiesce {
    /// Nothing beyond the snapshot's own flush (crash-consistent).
    #[default]
    None,
    /// PostgreSQL at this URL: `CHECKPOINT` + `pg_backup_start`.
    Postgres { url: String },
    /// `fsfreeze` of the file system mounted at `mount` (not btrfs: a
    /// btrfs snapshot waits for a frozen btrfs for ever): for an
    /// application whose file system lives in an image file on the
    /// subvolume (a loop device, a VM disk). Frozen, it has written
    /// everything to its device; the subvolume's snapshot then holds a
    /// consistent image; it is thawed at once, whatever happened.
    Fsfreeze { mount: PathBuf },
    /// Shell commands: `quiesce` before the snapshot (must succeed),
    /// `release` after it (always run once `quiesce` ran).
    Command {
        quiesce: String,
        release: Option<String>,
    },
}

impl Quiesce {
    pub fn name(&self) -> &'static str {
        match self {
            Quiesce::None => "none",
            Quiesce::Postgres { .. } => "postgres",
            Quiesce::Fsfreeze { .. } => "fsfreeze",
            Quiesce::Command { .. } => "command",
        }
    }
}

/// A volume snapshot taken.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Taken {
    /// The subvolume snapshotted (the backup's paths are in it).
    pub subvolume: PathBuf,
    /// The snapshot (read-only), `SUBVOLUME/.baton-snapshots/NAME`.
    pub snapshot: PathBuf,
    pub quiesce: String,
    /// When the application was quiesced, and released (RFC 3339): every
    /// transaction committed before `quiesced_at` is in the snapshot.
    pub quiesced_at: String,
    pub released_at: String,
    /// How long the application was held, in milliseconds.
    pub held_ms: u64,
    /// PostgreSQL: the backup's WAL start and stop (`X/Y`).
    pub wal_start: Option<String>,
    pub wal_stop: Option<String>,
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> VolumeError {
    let what = what.to_string();
    move |e| VolumeError::Io(what, e)
}

fn run(cmd: &mut Command) -> Result<String, VolumeError> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd.output().map_err(|e| VolumeError::Command {
        command: shown.clone(),
        message: if e.kind() == std::io::ErrorKind::NotFound {
            "not installed (btrfs snapshots need btrfs-progs)".into()
        } else {
            e.to_string()
        },
    })?;
    if !out.status.success() {
        return Err(VolumeError::Command {
            command: shown,
            message: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The btrfs subvolume holding `path` (the nearest ancestor that is a
/// subvolume's root), or an error saying why there is none.
pub fn subvolume_of(path: &Path) -> Result<PathBuf, VolumeError> {
    use std::os::unix::fs::MetadataExt;
    let abs = std::fs::canonicalize(path).map_err(io(path.display()))?;
    let fs = nix::sys::statfs::statfs(&abs)
        .map_err(|e| VolumeError::Io(abs.display().to_string(), e.into()))?;
    if fs.filesystem_type().0 as i64 != BTRFS_SUPER_MAGIC {
        return Err(VolumeError::Unsupported(format!(
            "{} is not on btrfs: volume snapshots are btrfs subvolume snapshots (LVM and XFS are not offered; see docs/design.md §25)",
            abs.display()
        )));
    }
    let dev = std::fs::metadata(&abs).map_err(io(abs.display()))?.dev();
    let mut at = abs.as_path();
    loop {
        let md = std::fs::metadata(at).map_err(io(at.display()))?;
        if md.dev() == dev && md.ino() == BTRFS_FIRST_FREE_OBJECTID && md.is_dir() {
            return Ok(at.to_path_buf());
        }
        match at.parent() {
            Some(p) if std::fs::metadata(p).is_ok_and(|m| m.dev() == dev) => at = p,
            _ => {
                return Err(VolumeError::Unsupported(format!(
                    "no btrfs subvolume holds {}",
                    abs.display()
                )));
            }
        }
    }
}

/// Snapshots `subvolume` as `SUBVOLUME/.baton-snapshots/NAME`, quiescing
/// the application around it; the snapshot is read-only when this returns.
pub async fn take(subvolume: &Path, name: &str, quiesce: &Quiesce) -> Result<Taken, VolumeError> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(VolumeError::Unsupported(format!(
            "{name:?} is not a snapshot name"
        )));
    }
    let dir = subvolume.join(SNAPSHOT_DIR);
    match std::fs::create_dir(&dir) {
        Ok(()) => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(dir.display())(e)),
    }
    let snapshot = dir.join(name);
    let now = || humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    let quiesced_at = now();
    let held = std::time::Instant::now();
    let mut taken = Taken {
        subvolume: subvolume.to_path_buf(),
        snapshot: snapshot.clone(),
        quiesce: quiesce.name().to_string(),
        quiesced_at,
        released_at: String::new(),
        held_ms: 0,
        wal_start: None,
        wal_stop: None,
    };
    match quiesce {
        Quiesce::None => {
            create(subvolume, &snapshot, true)?;
        }
        Quiesce::Fsfreeze { mount } => {
            let fs = nix::sys::statfs::statfs(mount.as_path())
                .map_err(|e| VolumeError::Io(mount.display().to_string(), e.into()))?;
            if fs.filesystem_type().0 as i64 == BTRFS_SUPER_MAGIC {
                return Err(VolumeError::Unsupported(format!(
                    "{} is btrfs: freezing it would block the snapshot for ever (a btrfs snapshot is atomic by itself: leave out --quiesce-fsfreeze)",
                    mount.display()
                )));
            }
            run(Command::new("fsfreeze").arg("-f").arg(mount))?;
            let made = create(subvolume, &snapshot, true);
            let thawed = run(Command::new("fsfreeze").arg("-u").arg(mount)).map(|_| ());
            made?;
            thawed?;
        }
        Quiesce::Command { quiesce, release } => {
            run(Command::new("sh").arg("-c").arg(quiesce))?;
            let made = create(subvolume, &snapshot, true);
            let released = match release {
                Some(r) => run(Command::new("sh").arg("-c").arg(r)).map(|_| ()),
                None => Ok(()),
            };
            made?;
            released?;
        }
        Quiesce::Postgres { url } => {
            let mut session = postgres::BackupSession::start_after_checkpoint(
                url,
                &format!("baton volume snapshot {name}"),
            )
            .await?;
            let data_dir =
                std::fs::canonicalize(&session.data_dir).map_err(io(session.data_dir.display()))?;
            let Ok(rel) = data_dir.strip_prefix(subvolume) else {
                return Err(VolumeError::Unsupported(format!(
                    "PostgreSQL's data directory {} is not in the subvolume {}",
                    data_dir.display(),
                    subvolume.display()
                )));
            };
            let rel = rel.to_path_buf();
            let made = create(subvolume, &snapshot, false);
            // Released at once, whatever happened to the snapshot.
            let stopped = session.stop().await;
            made?;
            let stopped = match stopped {
                Ok(s) => s,
                Err(e) => {
                    let _ = delete(&snapshot);
                    return Err(e.into());
                }
            };
            taken.released_at = now();
            taken.held_ms = held.elapsed().as_millis() as u64;
            let seg = session.segment_size;
            let fill = (|| -> Result<(), VolumeError> {
                let snap_data = snapshot.join(&rel);
                write_private(&snap_data.join("backup_label"), stopped.label.as_bytes())?;
                if !stopped.tablespace_map.is_empty() {
                    write_private(
                        &snap_data.join("tablespace_map"),
                        stopped.tablespace_map.as_bytes(),
                    )?;
                }
                let first = session.start_lsn / seg;
                let last = postgres::segment_before(stopped.stop_lsn, seg).max(first);
                postgres::copy_wal(&data_dir, &snap_data, (first, last), seg)?;
                for f in ["postmaster.pid", "postmaster.opts"] {
                    match std::fs::remove_file(snap_data.join(f)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(io(f)(e));
                        }
                        _ => {}
                    }
                }
                set_read_only(&snapshot)
            })();
            if let Err(e) = fill {
                let _ = delete(&snapshot);
                return Err(e);
            }
            taken.wal_start = Some(postgres::format_lsn(session.start_lsn));
            taken.wal_stop = Some(postgres::format_lsn(stopped.stop_lsn));
            return Ok(taken);
        }
    }
    taken.released_at = now();
    taken.held_ms = held.elapsed().as_millis() as u64;
    Ok(taken)
}

/// Writes a new file readable by its owner only, owned like its directory
/// (PostgreSQL refuses a data directory with files it cannot read).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), VolumeError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path.display()))?;
    std::io::Write::write_all(&mut f, bytes).map_err(io(path.display()))?;
    f.sync_all().map_err(io(path.display()))?;
    if let Some(parent) = path.parent() {
        let md = std::fs::metadata(parent).map_err(io(parent.display()))?;
        std::os::unix::fs::fchown(&f, Some(md.uid()), Some(md.gid()))
            .map_err(io(path.display()))?;
    }
    Ok(())
}

fn create(subvolume: &Path, snapshot: &Path, read_only: bool) -> Result<(), VolumeError> {
    let mut c = Command::new("btrfs");
    c.args(["subvolume", "snapshot"]);
    if read_only {
        c.arg("-r");
    }
    c.arg(subvolume).arg(snapshot);
    run(&mut c).map(|_| ())
}

fn set_read_only(snapshot: &Path) -> Result<(), VolumeError> {
    run(Command::new("btrfs")
        .args(["property", "set", "-ts"])
        .arg(snapshot)
        .args(["ro", "true"]))
    .map(|_| ())
}

/// Deletes a snapshot this module made (a path under a `.baton-snapshots`
/// directory, nothing else).
pub fn delete(snapshot: &Path) -> Result<(), VolumeError> {
    if snapshot.parent().and_then(|p| p.file_name()) != Some(std::ffi::OsStr::new(SNAPSHOT_DIR)) {
        return Err(VolumeError::Unsupported(format!(
            "{} is not a Baton volume snapshot",
            snapshot.display()
        )));
    }
    if !snapshot.exists() {
        return Ok(());
    }
    run(Command::new("btrfs")
        .args(["subvolume", "delete"])
        .arg(snapshot))
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_baton_snapshots_are_deleted() {
        let e = delete(Path::new("/srv/data")).unwrap_err();
        assert!(e.to_string().contains("not a Baton volume snapshot"), "{e}");
        assert!(delete(Path::new("/nonexistent/.baton-snapshots/x")).is_ok());
    }

    #[test]
    fn a_path_off_btrfs_is_refused_with_the_reason() {
        let dir = std::env::temp_dir();
        if let Err(VolumeError::Unsupported(m)) = subvolume_of(&dir) {
            assert!(m.contains("not on btrfs"), "{m}");
        }
    }
}
