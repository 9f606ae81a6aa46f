//! The restore target: every file-system operation of a restore goes through
//! one directory handle, never through a path the kernel would resolve on
//! its own.
//!
//! A restore writes where someone else may write too (a local user with a
//! directory inside a non-empty target) and reads trees that only a key
//! holder could have made, but must still not trust. So:
//!
//! - The target directory is opened once; every entry below it is reached
//!   with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`
//!   from that handle: a symbolic link anywhere on the way, or `..`, fails
//!   with `ELOOP`/`EXDEV` instead of leading elsewhere.
//! - The last component is created or opened with no-follow and, where the
//!   entry is new and someone else could write to its directory, exclusive
//!   flags (`O_CREAT | O_EXCL | O_NOFOLLOW`, `mkdirat`, `symlinkat`,
//!   `mknodat`, `linkat` without `AT_SYMLINK_FOLLOW`), and an opened entry's
//!   type is checked on the handle (`fstat`) before anything is written to
//!   it.
//! - Entries the restore made or checked where others can write are
//!   **pinned** by path to their (device, inode): every later use of the path
//!   (a file's writes and metadata, a directory's entries and metadata) must
//!   reach that inode, so a local user who swaps in a file or directory of
//!   their own in between is refused.
//! - Metadata is applied to a handle of the entry (`O_PATH | O_NOFOLLOW`,
//!   type checked), through `/proc/self/fd/N`, which names exactly the inode
//!   that was opened; symbolic links themselves by `fchownat`/`utimensat`
//!   with `AT_SYMLINK_NOFOLLOW` on their parent's handle.
//! - Directories are created `0700` and get their mode at the very end, so
//!   nobody else can add entries to them while the restore runs.

use baton_types::{Node, NodeKind, hex_decode};
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, UtimensatFlags, fstat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::UnlinkatFlags;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Mode of a directory while the restore fills it.
const DIR_MODE_WHILE_RESTORING: u32 = 0o700;
/// Mode of a new file until its metadata is applied.
const FILE_MODE_WHILE_RESTORING: u32 = 0o600;

/// The restore target, opened once.
pub(crate) struct Target {
    root: OwnedFd,
    path: PathBuf,
    /// Pinned entries, by path: the (device, inode) this restore created or
    /// checked there. A file the snapshot hard-links is expected to have
    /// other links, so it is written and given metadata only while its path
    /// still names that very inode (a local user who swaps in a link to a
    /// file outside the target in between is refused); the same holds for
    /// files verified in place, files created where others can write, and
    /// the directories on the way there.
    linked: Mutex<HashMap<PathBuf, (u64, u64)>>,
    /// The (device, inode) of every pinned directory: one may not be
    /// pinned at a second path.
    pinned_dirs: Mutex<std::collections::HashSet<(u64, u64)>>,
    /// How many directories are pinned: none, in the common case, and then
    /// paths are not looked up.
    dirs_pinned: std::sync::atomic::AtomicUsize,
}

fn errno(e: Errno) -> io::Error {
    match e {
        Errno::ELOOP => {
            io::Error::other("a path component inside the target is a symbolic link (not followed)")
        }
        Errno::EXDEV => io::Error::other("the path would leave the restore target (not followed)"),
        Errno::ENOTDIR => io::Error::other(
            "a path component inside the target is not a directory (replaced meanwhile?)",
        ),
        e => io::Error::from(e),
    }
}

fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

fn is_type(st: &FileStat, t: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == t
}

fn type_of(kind: NodeKind) -> SFlag {
    match kind {
        NodeKind::File => SFlag::S_IFREG,
        NodeKind::Dir => SFlag::S_IFDIR,
        NodeKind::Symlink => SFlag::S_IFLNK,
        NodeKind::Fifo => SFlag::S_IFIFO,
        NodeKind::Chardev => SFlag::S_IFCHR,
        NodeKind::Blockdev => SFlag::S_IFBLK,
        NodeKind::Image => SFlag::S_IFREG,
    }
}

fn changed() -> io::Error {
    io::Error::other(
        "the entry was replaced by something of another type while the restore ran (left alone)",
    )
}

fn other_links() -> io::Error {
    io::Error::other(
        "the file has other hard links (one may lie outside the target): not written through (left alone)",
    )
}

fn dir_not_ours() -> io::Error {
    io::Error::other(
        "a directory on the way is no longer the one this restore created or checked there (replaced while the restore ran): nothing written into it",
    )
}

fn not_ours() -> io::Error {
    io::Error::other(
        "the file is no longer the one this restore created or checked there (replaced while the restore ran): not written through (left alone)",
    )
}

fn dev_ino(st: &FileStat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

fn timespec(ns: i64) -> TimeSpec {
    TimeSpec::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

/// The status of an entry found in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub atime_ns: i64,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// (device, inode).
    pub id: (u64, u64),
}

/// A directory's owner, mode and whether it is empty.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirStatus {
    pub uid: u32,
    pub mode: u32,
    pub empty: bool,
}

/// What is at a path below the target, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Existing {
    Nothing,
    Dir,
    File,
    Other,
}

impl Target {
    /// Opens (creating it and its parents if needed) the target directory.
    /// The target itself is the user's choice and may be reached through
    /// symbolic links; nothing below it is.
    pub fn open(path: &Path) -> io::Result<Target> {
        std::fs::create_dir_all(path)?;
        let root = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)?;
        Ok(Target {
            root,
            path: path.to_path_buf(),
            linked: Mutex::new(HashMap::new()),
            pinned_dirs: Mutex::new(std::collections::HashSet::new()),
            dirs_pinned: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Opens the target directory if it exists (`None` if not), creating
    /// nothing: for `restore --dry-run`.
    pub fn open_existing(path: &Path) -> io::Result<Option<Target>> {
        let root = match nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(Target {
            root,
            path: path.to_path_buf(),
            linked: Mutex::new(HashMap::new()),
            pinned_dirs: Mutex::new(std::collections::HashSet::new()),
            dirs_pinned: std::sync::atomic::AtomicUsize::new(0),
        }))
    }

    /// `p` relative to the target (`p` is the target joined with names).
    fn rel<'a>(&self, p: &'a Path) -> io::Result<&'a Path> {
        p.strip_prefix(&self.path).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not inside the restore target", p.display()),
            )
        })
    }

    /// A handle of the directory holding `p`, and `p`'s last component.
    fn parent<'a>(&self, p: &'a Path) -> io::Result<(OwnedFd, &'a OsStr)> {
        let rel = self.rel(p)?;
        let name = rel.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the target itself has no parent here",
            )
        })?;
        let dir = match rel.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(beneath());
        let fd = openat2(&self.root, dir, how).map_err(errno)?;
        self.check_dir_pinned(p.parent(), &fd)?;
        Ok((fd, name))
    }

    /// If the directory `dir` is pinned, whether `fd` is that directory.
    fn check_dir_pinned(&self, dir: Option<&Path>, fd: &OwnedFd) -> io::Result<()> {
        let Some(dir) = dir else { return Ok(()) };
        if self.dirs_pinned.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return Ok(());
        }
        let pinned = self.linked.lock().expect("linked files").get(dir).copied();
        match pinned {
            Some(id) if dev_ino(&fstat(fd).map_err(errno)?) != id => Err(dir_not_ours()),
            _ => Ok(()),
        }
    }

    /// Whether a directory is pinned anywhere (then every open goes through
    /// its parent's handle, to check it).
    fn any_dir_pinned(&self, p: &Path) -> bool {
        self.dirs_pinned.load(std::sync::atomic::Ordering::Acquire) > 0
            && p.parent()
                .is_some_and(|d| self.linked.lock().expect("linked files").contains_key(d))
    }

    /// Opens `p` itself in one call: every component, the last included,
    /// resolved beneath the target without following any symbolic link.
    fn open_beneath(&self, p: &Path, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
        if self.any_dir_pinned(p) {
            // Its directory is pinned: opened through a checked handle of it.
            let (dir, name) = self.parent(p)?;
            return nix::fcntl::openat(
                &dir,
                name,
                flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                Mode::from_bits_truncate(mode),
            )
            .map_err(errno);
        }
        let rel = self.rel(p)?;
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(beneath());
        openat2(&self.root, rel, how).map_err(errno)
    }

    /// What is at `p` (not followed).
    pub fn existing(&self, p: &Path) -> io::Result<Existing> {
        self.existing_stat(p).map(|(e, _)| e)
    }

    /// What is at `p` (not followed), with its status when there is
    /// something: one `fstatat` for both.
    pub fn existing_stat(&self, p: &Path) -> io::Result<(Existing, Option<EntryStat>)> {
        let (dir, name) = self.parent(p)?;
        Self::existing_stat_in(&dir, name)
    }

    /// A handle of the directory holding `p` (resolved beneath the target,
    /// following nothing), for [`Target::existing_stat_in`]: a walk looks
    /// at a directory's entries through one handle instead of resolving
    /// every entry's path.
    pub fn parent_handle(&self, p: &Path) -> io::Result<OwnedFd> {
        self.parent(p).map(|(fd, _)| fd)
    }

    /// What is at `name` in the directory `dir` (not followed), with its
    /// status.
    pub fn existing_stat_in(
        dir: &OwnedFd,
        name: &OsStr,
    ) -> io::Result<(Existing, Option<EntryStat>)> {
        let st = match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok((Existing::Nothing, None)),
            Err(e) => return Err(errno(e)),
        };
        let kind = if is_type(&st, SFlag::S_IFDIR) {
            Existing::Dir
        } else if is_type(&st, SFlag::S_IFREG) && st.st_nlink == 1 {
            // A file with other hard links is never written through: the
            // other name may be outside the target (a link planted by a
            // local user); it is replaced like anything else in the way.
            Existing::File
        } else {
            Existing::Other
        };
        Ok((
            kind,
            Some(EntryStat {
                size: st.st_size as u64,
                mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
                atime_ns: st.st_atime * 1_000_000_000 + st.st_atime_nsec,
                mode: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
                id: dev_ino(&st),
            }),
        ))
    }

    /// Opens the directory `p` for reading: the target itself, or a
    /// directory below it (not followed).
    fn open_dir(&self, p: &Path) -> io::Result<OwnedFd> {
        if p == self.path {
            nix::fcntl::openat(
                &self.root,
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno)
        } else {
            self.open_beneath(p, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)
        }
    }

    /// The names in the directory `p` (below the target, not followed).
    pub fn list(&self, p: &Path) -> io::Result<Vec<std::ffi::OsString>> {
        use std::os::unix::ffi::OsStrExt;
        let fd = self.open_dir(p)?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(errno)?;
        let mut out = Vec::new();
        for e in dir.iter() {
            let e = e.map_err(errno)?;
            let name = e.file_name().to_bytes();
            if name != b"." && name != b".." {
                out.push(OsStr::from_bytes(name).to_owned());
            }
        }
        Ok(out)
    }

    /// Removes `p` and, for a directory, everything below it: each entry
    /// through its parent's handle, never following a symbolic link (a
    /// link is removed, not what it points to).
    pub fn remove_all(&self, p: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(p)?;
        let dir = nix::fcntl::openat(
            &dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        remove_in(&dir, name, 0)
    }

    /// Creates the directory `p` (mode 0700 until its metadata is applied).
    pub fn create_dir(&self, p: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(p)?;
        nix::sys::stat::mkdirat(
            &dir,
            name,
            Mode::from_bits_truncate(DIR_MODE_WHILE_RESTORING),
        )
        .map_err(errno)
    }

    /// Removes the entry `p` (a directory only if empty), not following it.
    pub fn remove(&self, p: &Path, is_dir: bool) -> io::Result<()> {
        let (dir, name) = self.parent(p)?;
        let flag = if is_dir {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        nix::unistd::unlinkat(&dir, name, flag).map_err(errno)
    }

    pub fn symlink(&self, target: &OsStr, p: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(p)?;
        nix::unistd::symlinkat(target, &dir, name).map_err(errno)
    }

    pub fn mknod(&self, p: &Path, kind: NodeKind, mode: u32, rdev: u64) -> io::Result<()> {
        let (dir, name) = self.parent(p)?;
        let perm = Mode::from_bits_truncate(mode & 0o777);
        match kind {
            NodeKind::Fifo => nix::unistd::mkfifoat(&dir, name, perm).map_err(errno),
            NodeKind::Chardev | NodeKind::Blockdev => {
                nix::sys::stat::mknodat(&dir, name, type_of(kind), perm, rdev as _).map_err(errno)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a special file",
            )),
        }
    }

    /// Opens the regular file `p` for writing (and reading), creating it
    /// (exclusively with `exclusive`) if it does not exist; never follows a
    /// symbolic link, and refuses anything that is not a regular file.
    /// `linked`: the snapshot hard-links this file, so other links are
    /// expected, and it must be created here exclusively (it is then
    /// remembered) or be the very inode created so; otherwise a file with
    /// other links is refused.
    pub fn open_file(
        &self,
        p: &Path,
        create: bool,
        exclusive: bool,
        linked: bool,
    ) -> io::Result<File> {
        // O_NONBLOCK keeps a FIFO planted in the way from blocking the open;
        // on the regular file that is checked for below it changes nothing.
        let mut flags = OFlag::O_RDWR | OFlag::O_NONBLOCK;
        if create {
            flags |= OFlag::O_CREAT;
        }
        if exclusive {
            flags |= OFlag::O_EXCL;
        }
        // openat2 refuses a mode without O_CREAT.
        let mode = if create { FILE_MODE_WHILE_RESTORING } else { 0 };
        let fd = self.open_beneath(p, flags, mode)?;
        let st = fstat(&fd).map_err(errno)?;
        if !is_type(&st, SFlag::S_IFREG) {
            return Err(changed());
        }
        if linked {
            if create && exclusive {
                self.remember(p, &st);
            } else {
                self.check_ours(p, &st)?;
            }
        } else if st.st_nlink != 1 {
            return Err(other_links());
        } else {
            self.check_pinned(p, &st)?;
        }
        Ok(File::from(fd))
    }

    /// Opens the regular file `p` for reading (never following it).
    pub fn open_read(&self, p: &Path) -> io::Result<File> {
        let fd = self.open_beneath(p, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0)?;
        let st = fstat(&fd).map_err(errno)?;
        if !is_type(&st, SFlag::S_IFREG) {
            return Err(changed());
        }
        self.check_pinned(p, &st)?;
        Ok(File::from(fd))
    }

    /// The owner, mode and emptiness of the directory `p` (the target
    /// itself, or below it, not followed); `None` if it cannot be read.
    pub fn dir_status(&self, p: &Path) -> Option<DirStatus> {
        let fd = self.open_dir(p).ok()?;
        let st = fstat(&fd).ok()?;
        let mut dir = nix::dir::Dir::from_fd(fd).ok()?;
        let empty = dir
            .iter()
            .all(|e| e.is_ok_and(|e| matches!(e.file_name().to_bytes(), b"." | b"..")));
        Some(DirStatus {
            uid: st.st_uid,
            mode: st.st_mode & 0o7777,
            empty,
        })
    }

    /// Pins `p` to the inode `file` is open on: every later open of `p`
    /// by this restore (to verify, write, apply metadata) must reach that
    /// very inode, so what is verified is what is written and given the
    /// snapshot's owner and mode, whatever is swapped in at the name.
    pub fn pin(&self, p: &Path, file: &File) -> io::Result<()> {
        let st = fstat(file).map_err(errno)?;
        self.remember(p, &st);
        Ok(())
    }

    /// Pins `p` to the entry `st` describes (found by the walk's `fstatat`):
    /// later uses of `p` must reach that inode.
    pub fn pin_id(&self, p: &Path, id: (u64, u64)) {
        self.linked
            .lock()
            .expect("linked files")
            .insert(p.to_path_buf(), id);
    }

    /// Pins the directory `p` (below the target) to what is there now,
    /// if its owner is one `owner_ok` accepts and it is not a directory
    /// already pinned at another path (one of this restore's, moved).
    pub fn pin_dir(&self, p: &Path, owner_ok: impl Fn(u32) -> bool) -> io::Result<()> {
        let (dir, name) = self.parent(p)?;
        let st =
            nix::sys::stat::fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(errno)?;
        if !is_type(&st, SFlag::S_IFDIR) {
            return Err(changed());
        }
        if !owner_ok(st.st_uid) {
            return Err(io::Error::other(format!(
                "owned by another user (uid {}) where others can write: not restored into (restore into a directory only you can write to)",
                st.st_uid
            )));
        }
        let mut dirs = self.pinned_dirs.lock().expect("pinned directories");
        if !dirs.insert(dev_ino(&st)) {
            return Err(dir_not_ours());
        }
        self.dirs_pinned
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        self.remember(p, &st);
        Ok(())
    }

    /// Forgets the pin of `p` (a file that is finished).
    pub fn unpin(&self, p: &Path) {
        self.linked.lock().expect("linked files").remove(p);
    }

    /// Removes `p` if it is the inode pinned there (something else at the
    /// name, or nothing pinned, is left alone).
    pub fn remove_if_pinned(&self, p: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(p)?;
        let st =
            nix::sys::stat::fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(errno)?;
        let pinned = self.linked.lock().expect("linked files").get(p).copied();
        if pinned == Some(dev_ino(&st)) {
            nix::unistd::unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir).map_err(errno)?;
        }
        Ok(())
    }

    /// For a pinned path, whether `st` is the pinned inode.
    fn check_pinned(&self, p: &Path, st: &FileStat) -> io::Result<()> {
        match self.linked.lock().expect("linked files").get(p) {
            Some(known) if *known != dev_ino(st) => Err(not_ours()),
            _ => Ok(()),
        }
    }

    fn remember(&self, p: &Path, st: &FileStat) {
        self.linked
            .lock()
            .expect("linked files")
            .insert(p.to_path_buf(), dev_ino(st));
    }

    /// Whether `p`, opened as `st`, is the inode this restore created there.
    fn check_ours(&self, p: &Path, st: &FileStat) -> io::Result<()> {
        match self.linked.lock().expect("linked files").get(p) {
            Some(known) if *known == dev_ino(st) => Ok(()),
            _ => Err(not_ours()),
        }
    }

    /// Makes `to` a hard link of `from` (both below the target), `from`
    /// being a hard-linked file this restore created: the new link is
    /// checked to reach that very inode, and removed if it does not.
    pub fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (fdir, fname) = self.parent(from)?;
        let (tdir, tname) = self.parent(to)?;
        nix::unistd::linkat(&fdir, fname, &tdir, tname, AtFlags::empty()).map_err(errno)?;
        let st =
            nix::sys::stat::fstatat(&tdir, tname, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(errno)?;
        let expected = self.linked.lock().expect("linked files").get(from).copied();
        if !is_type(&st, SFlag::S_IFREG) || expected != Some(dev_ino(&st)) {
            let _ = nix::unistd::unlinkat(&tdir, tname, UnlinkatFlags::NoRemoveDir);
            return Err(not_ours());
        }
        self.remember(to, &st);
        Ok(())
    }

    /// Whether the entry at `p`, opened as `st`, may be given `node`'s
    /// metadata: of the node's type, and a file with other links only if
    /// the snapshot hard-links it and it is the inode this restore created.
    fn check_links(&self, p: &Path, node: &Node, st: &FileStat) -> Result<(), String> {
        if !is_type(st, type_of(node.kind)) {
            return Err(changed().to_string());
        }
        if node.kind == NodeKind::Dir {
            self.check_pinned(p, st)
                .map_err(|_| dir_not_ours().to_string())?;
        }
        if node.kind == NodeKind::File {
            if node.links > 1 {
                self.check_ours(p, st).map_err(|e| e.to_string())?;
            } else if st.st_nlink != 1 {
                return Err(other_links().to_string());
            } else {
                self.check_pinned(p, st).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// [`Target::apply_metadata`] on a handle of the regular file `p` that
    /// is already open (the one its content was written through).
    pub fn apply_metadata_on(
        &self,
        p: &Path,
        file: &File,
        node: &Node,
        is_root: bool,
    ) -> Result<(), String> {
        let st = fstat(file).map_err(|e| errno(e).to_string())?;
        self.check_links(p, node, &st)?;
        metadata_on_handle(file, node, is_root)
    }

    /// Applies ownership, xattrs, permissions and times of `node` to the
    /// entry at `p`, on a handle of that very entry (its type checked), in
    /// the order that keeps each from undoing another (chown clears setuid
    /// bits, so it comes before chmod; times come last). Returns the first
    /// failure, after trying everything.
    pub fn apply_metadata(&self, p: &Path, node: &Node, is_root: bool) -> Result<(), String> {
        if matches!(node.kind, NodeKind::File | NodeKind::Dir) {
            // The common case, on a plain handle of the entry (one call
            // to open it, then calls on the handle alone). A file this
            // process may not read (mode 0 from an earlier restore, not
            // root) takes the way below.
            let flags = if node.kind == NodeKind::Dir {
                OFlag::O_RDONLY | OFlag::O_DIRECTORY
            } else {
                OFlag::O_RDONLY | OFlag::O_NONBLOCK
            };
            match self.open_beneath(p, flags, 0) {
                Ok(fd) => {
                    let st = fstat(&fd).map_err(|e| errno(e).to_string())?;
                    self.check_links(p, node, &st)?;
                    return metadata_on_handle(&fd, node, is_root);
                }
                Err(e) if e.raw_os_error() == Some(nix::libc::EACCES) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        let (dir, name) = self.parent(p).map_err(|e| e.to_string())?;
        if node.kind == NodeKind::Symlink {
            return symlink_metadata(&dir, name, node, is_root);
        }
        let fd = nix::fcntl::openat(
            &dir,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno(e).to_string())?;
        let st = fstat(&fd).map_err(|e| errno(e).to_string())?;
        self.check_links(p, node, &st)?;
        // The handle's own name: following it reaches exactly this inode,
        // whatever the name in the directory points at by now.
        let me = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let mut first_err: Option<String> = None;
        let mut note = |e: String| {
            first_err.get_or_insert(e);
        };
        if is_root && let Err(e) = std::os::unix::fs::chown(&me, Some(node.uid), Some(node.gid)) {
            note(format!("chown: {e}"));
        }
        for x in &node.xattrs {
            let Some(v) = hex_decode(&x.value) else {
                note(format!("xattr {:?}: value is not hex", x.name));
                continue;
            };
            if let Err(e) =
                rustix::fs::setxattr(&me, x.name.as_os(), &v, rustix::fs::XattrFlags::empty())
            {
                note(format!("xattr {}: {e}", x.name.lossy()));
            }
        }
        {
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) =
                std::fs::set_permissions(&me, std::fs::Permissions::from_mode(node.mode & 0o7777))
            {
                note(format!("chmod: {e}"));
            }
        }
        // Ancestors of the backed-up paths carry no times (ctime 0): leave them.
        if node.ctime_ns != 0 {
            let atime = if node.atime_ns == 0 {
                TimeSpec::UTIME_OMIT
            } else {
                timespec(node.atime_ns)
            };
            if let Err(e) = utimensat(
                nix::fcntl::AT_FDCWD,
                &me,
                &atime,
                &timespec(node.mtime_ns),
                UtimensatFlags::FollowSymlink,
            ) {
                note(format!("setting times: {e}"));
            }
        }
        drop(fd);
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

/// Ownership, xattrs, mode and times of `node`, on an open handle of the
/// entry (its type and links checked first by [`Target::check_links`]).
fn metadata_on_handle(fd: &impl AsFd, node: &Node, is_root: bool) -> Result<(), String> {
    let mut first_err: Option<String> = None;
    let mut note = |e: String| {
        first_err.get_or_insert(e);
    };
    if is_root && let Err(e) = nix::unistd::fchown(fd, Some(node.uid.into()), Some(node.gid.into()))
    {
        note(format!("chown: {e}"));
    }
    for x in &node.xattrs {
        let Some(v) = hex_decode(&x.value) else {
            note(format!("xattr {:?}: value is not hex", x.name));
            continue;
        };
        if let Err(e) =
            rustix::fs::fsetxattr(fd, x.name.as_os(), &v, rustix::fs::XattrFlags::empty())
        {
            note(format!("xattr {}: {e}", x.name.lossy()));
        }
    }
    if let Err(e) = nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(node.mode & 0o7777)) {
        note(format!("chmod: {e}"));
    }
    // Ancestors of the backed-up paths carry no times (ctime 0): leave them.
    if node.ctime_ns != 0 {
        let atime = if node.atime_ns == 0 {
            TimeSpec::UTIME_OMIT
        } else {
            timespec(node.atime_ns)
        };
        if let Err(e) = nix::sys::stat::futimens(fd, &atime, &timespec(node.mtime_ns)) {
            note(format!("setting times: {e}"));
        }
    }
    match first_err {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// A symbolic link's owner and modification time, on the link itself: an
/// `O_PATH | O_NOFOLLOW` handle of the entry, checked to be a symbolic link,
/// then `fchownat`/`utimensat` with `AT_EMPTY_PATH` on that handle, so a
/// name swapped meanwhile (for a hard link to a file elsewhere) is never
/// chowned.
fn symlink_metadata(dir: &OwnedFd, name: &OsStr, node: &Node, is_root: bool) -> Result<(), String> {
    use rustix::fs::{AtFlags as RAt, Timestamps, chownat, utimensat as r_utimensat};
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| errno(e).to_string())?;
    let st = fstat(&fd).map_err(|e| errno(e).to_string())?;
    if !is_type(&st, SFlag::S_IFLNK) {
        return Err(changed().to_string());
    }
    let mut first_err = None;
    if is_root
        && let Err(e) = chownat(
            &fd,
            "",
            Some(rustix::fs::Uid::from_raw(node.uid)),
            Some(rustix::fs::Gid::from_raw(node.gid)),
            RAt::EMPTY_PATH | RAt::SYMLINK_NOFOLLOW,
        )
    {
        first_err = Some(format!("chown: {e}"));
    }
    if node.ctime_ns != 0 {
        let ts = |ns: i64| rustix::fs::Timespec {
            tv_sec: ns.div_euclid(1_000_000_000),
            tv_nsec: ns.rem_euclid(1_000_000_000) as _,
        };
        let times = Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
            last_modification: ts(node.mtime_ns),
        };
        if let Err(e) = r_utimensat(&fd, "", &times, RAt::EMPTY_PATH | RAt::SYMLINK_NOFOLLOW)
            && first_err.is_none()
        {
            first_err = Some(format!("setting times: {e}"));
        }
    }
    match first_err {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Removes `name` in the directory `dir` (recursively, never following).
fn remove_in(dir: &OwnedFd, name: &OsStr, depth: usize) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    if depth > 4096 {
        return Err(io::Error::other("directories nested too deep to delete"));
    }
    let st = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(errno)?;
    if is_type(&st, SFlag::S_IFDIR) {
        let sub = nix::fcntl::openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        let names: Vec<std::ffi::OsString> = {
            let d = nix::dir::Dir::from_fd(sub.try_clone()?).map_err(errno)?;
            let mut v = Vec::new();
            for e in d.into_iter() {
                let e = e.map_err(errno)?;
                let n = e.file_name().to_bytes();
                if n != b"." && n != b".." {
                    v.push(OsStr::from_bytes(n).to_owned());
                }
            }
            v
        };
        for n in &names {
            remove_in(&sub, n, depth + 1)?;
        }
        nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir).map_err(errno)
    } else {
        nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(errno)
    }
}
