//! Tree generation: options, the manifest, creation primitives, and the
//! final ownership / mode / time passes. What goes where is in `layout.rs`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, Permissions};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{Mode, UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use crate::rng::Rng;
use crate::walk;

/// What [`generate_tree`] puts into the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenOptions {
    /// Seed of all content, names, sizes and times.
    pub seed: u64,
    /// Number of small files spread over a nested tree (default 300).
    pub small_files: usize,
    /// Length of the chain of nested directories under `deep/` (default 12).
    pub max_depth: usize,
    /// Number of files of 64 KiB .. 3 MiB (default 6).
    pub medium_files: usize,
    /// Apparent size of `sparse/sparse.img`; 0 (the default) means no sparse file.
    pub sparse_file_size: u64,
    /// FIFOs, and char/block device nodes when root (default true).
    pub special_files: bool,
    /// `user.*` xattrs on some files and directories (default true).
    pub xattrs: bool,
    /// Odd owners on some entries when root (default true).
    pub ownership: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            seed: 0x00ba_7000,
            small_files: 300,
            max_depth: 12,
            medium_files: 6,
            sparse_file_size: 0,
            special_files: true,
            xattrs: true,
            ownership: true,
        }
    }
}

/// What [`generate_tree`] created (counted from the finished tree; the root
/// itself is not counted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Regular files; each hard-link name counts.
    pub files: usize,
    /// Directories below the root.
    pub dirs: usize,
    /// Sum of apparent sizes of the regular files (each name counts), as [`dir_size`](crate::dir_size).
    pub bytes: u64,
    /// What was skipped and why (not root, no xattr support, mknod refused…).
    pub notes: Vec<String>,
    /// Symbolic links.
    pub symlinks: usize,
    /// FIFOs, device nodes and sockets.
    pub specials: usize,
    /// All entries below the root: what `compare_trees(root, copy)` returns on success.
    pub entries: usize,
}

pub(crate) fn ts(sec: i64, nsec: i64) -> TimeSpec {
    TimeSpec::new(sec, nsec)
}

pub(crate) fn name(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.to_vec()))
}

pub(crate) struct Gen<'a> {
    pub(crate) root: PathBuf,
    pub(crate) opts: &'a GenOptions,
    pub(crate) is_root: bool,
    pub(crate) xattrs_ok: bool,
    pub(crate) notes: Vec<String>,
    pub(crate) chowns: Vec<(PathBuf, u32, u32)>,
    pub(crate) chmods: Vec<(PathBuf, u32)>,
    pub(crate) times: HashMap<PathBuf, (TimeSpec, TimeSpec)>,
}

impl Gen<'_> {
    pub(crate) fn abs(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// Creates directory `rel` and its missing parents, each with mode 0755.
    pub(crate) fn dir(&mut self, rel: impl AsRef<Path>) -> io::Result<PathBuf> {
        let rel = rel.as_ref();
        let mut cur = self.root.clone();
        for c in rel.components() {
            cur.push(c);
            if fs::symlink_metadata(&cur).is_err() {
                fs::create_dir(&cur)?;
                fs::set_permissions(&cur, Permissions::from_mode(0o755))?;
            }
        }
        Ok(rel.to_path_buf())
    }

    /// Creates regular file `rel` (mode 0644) holding `content`.
    pub(crate) fn file(&mut self, rel: impl AsRef<Path>, content: &[u8]) -> io::Result<PathBuf> {
        let rel = rel.as_ref();
        if let Some(p) = rel.parent() {
            self.dir(p)?;
        }
        let abs = self.abs(rel);
        fs::write(&abs, content)?;
        fs::set_permissions(&abs, Permissions::from_mode(0o644))?;
        Ok(rel.to_path_buf())
    }

    pub(crate) fn symlink(
        &mut self,
        target: impl AsRef<Path>,
        rel: impl AsRef<Path>,
    ) -> io::Result<PathBuf> {
        let rel = rel.as_ref();
        if let Some(p) = rel.parent() {
            self.dir(p)?;
        }
        symlink(target, self.abs(rel))?;
        Ok(rel.to_path_buf())
    }

    pub(crate) fn hard_link(&mut self, existing: &Path, rel: impl AsRef<Path>) -> io::Result<()> {
        let rel = rel.as_ref();
        if let Some(p) = rel.parent() {
            self.dir(p)?;
        }
        fs::hard_link(self.abs(existing), self.abs(rel))
    }

    pub(crate) fn fifo(&mut self, rel: impl AsRef<Path>, mode: u32) -> io::Result<PathBuf> {
        let rel = rel.as_ref();
        let abs = self.abs(rel);
        nix::unistd::mkfifo(&abs, Mode::from_bits_truncate(0o600)).map_err(io::Error::from)?;
        fs::set_permissions(&abs, Permissions::from_mode(mode))?;
        Ok(rel.to_path_buf())
    }

    /// Sets a `user.*` xattr, or notes once that the filesystem refuses them.
    pub(crate) fn xattr(&mut self, rel: &Path, key: &str, value: &[u8]) -> io::Result<()> {
        if !self.opts.xattrs || !self.xattrs_ok {
            return Ok(());
        }
        match xattr::set(self.abs(rel), key, value) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(nix::libc::ENOTSUP | nix::libc::EPERM | nix::libc::EACCES)
                ) =>
            {
                self.xattrs_ok = false;
                self.notes.push(format!(
                    "xattrs skipped: filesystem refused user.* xattrs ({e})"
                ));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Queues an ownership change (applied before the modes, when root).
    pub(crate) fn chown(&mut self, rel: &Path, uid: u32, gid: u32) {
        if self.opts.ownership && self.is_root {
            self.chowns.push((rel.to_path_buf(), uid, gid));
        }
    }

    /// Queues a mode change (applied after all content and ownership).
    pub(crate) fn chmod(&mut self, rel: &Path, mode: u32) {
        self.chmods.push((rel.to_path_buf(), mode));
    }

    /// Sets atime/mtime of everything below `rel` (children first), then of `rel`.
    fn set_times(&self, rel: &Path, rng: &mut Rng) -> io::Result<()> {
        let abs = self.abs(rel);
        if fs::symlink_metadata(&abs)?.is_dir() {
            for n in walk::list_dir(&abs)? {
                self.set_times(&rel.join(n), rng)?;
            }
        }
        let mtime_s = rng.range(946_684_800, 1_750_000_000) as i64;
        let mtime = ts(mtime_s, rng.range(1, 1_000_000_000) as i64);
        let delta = rng.range(1, 30 * 86_400) as i64;
        let atime_s = if rng.chance(70) {
            mtime_s + delta
        } else {
            mtime_s - delta
        };
        let atime = ts(atime_s, rng.range(1, 1_000_000_000) as i64);
        let (atime, mtime) = self.times.get(rel).copied().unwrap_or((atime, mtime));
        utimensat(
            AT_FDCWD,
            &abs,
            &atime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("utimensat {}: {e}", abs.display()),
            )
        })
    }
}

/// Creates `root` (which must not exist, or be an empty directory) and fills
/// it deterministically from `opts.seed`.
///
/// Layout below the root (fixed names, so tests can mutate known entries):
///
/// | path | what |
/// |------|------|
/// | `small/…` | `small_files` small files (0 B .. 64 KiB; text, random, zeros) in a random nested tree |
/// | `deep/level-01/…/level-NN/bottom.txt` | a chain of `max_depth` nested directories |
/// | `medium/medium-N-KIND` | `medium_files` files of 64 KiB .. 3 MiB (text, random, repeated blocks, mixed with zero runs) |
/// | `names/…` | odd names: unicode, spaces, `-rf`, `line\nbreak`, 255-byte names, non-UTF-8 bytes |
/// | `empty/…` | empty directories (also nested) and empty files |
/// | `links/…` | symlinks: relative, absolute, dangling, to a directory, to a symlink, self-loop, non-UTF-8 target |
/// | `hardlinks/…` | `a/one`, `b/two`, `c/three` share one inode; `pair-1`/`pair-2` share another; `empty-1`/`d/empty-2` are a linked empty file |
/// | `special/…` | FIFOs; `null` (char 1:3) and `loop200` (block 7:200) when root |
/// | `perms/…` | 0600, 0755, 0444, setuid/setgid/sticky files and dirs, a 0700 dir, a 0500 dir with files |
/// | `owners/…` | entries owned by 1234:5678, 0:0, 65534:65534, 4321:8765 (when root) |
/// | `xattrs/…` | files and a dir with `user.*` xattrs (binary, empty, large, many) |
/// | `times/…` | a pre-1970 mtime, a year-2100 mtime |
/// | `sparse/sparse.img` | the sparse file, if `sparse_file_size > 0` |
///
/// Every entry gets explicit atime and mtime (non-zero nanoseconds), set in a
/// final post-order pass so directory mtimes stick.
///
/// Without root privileges, device nodes and ownership changes are skipped
/// and [`Manifest::notes`] says so; likewise for a filesystem without
/// `user.*` xattr support.
pub fn generate_tree(root: &Path, opts: &GenOptions) -> io::Result<Manifest> {
    match fs::symlink_metadata(root) {
        Ok(m) if m.is_dir() => {
            if fs::read_dir(root)?.next().is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} is not empty", root.display()),
                ));
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a directory", root.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(root)?,
        Err(e) => return Err(e),
    }
    fs::set_permissions(root, Permissions::from_mode(0o755))?;
    let mut g = Gen {
        root: root.to_path_buf(),
        opts,
        is_root: nix::unistd::geteuid().is_root(),
        xattrs_ok: true,
        notes: Vec::new(),
        chowns: Vec::new(),
        chmods: Vec::new(),
        times: HashMap::new(),
    };
    g.small()?;
    g.deep()?;
    g.medium()?;
    g.names()?;
    g.empty()?;
    g.links()?;
    g.hardlinks()?;
    if opts.special_files {
        g.special()?;
    }
    g.perms()?;
    g.owners()?;
    g.xattrs()?;
    g.times_dir()?;
    if opts.sparse_file_size > 0 {
        g.sparse()?;
    }
    // Ownership first (chown clears setuid/setgid), then modes, then times.
    for (rel, uid, gid) in std::mem::take(&mut g.chowns) {
        lchown(g.abs(&rel), Some(uid), Some(gid))?;
    }
    for (rel, mode) in std::mem::take(&mut g.chmods) {
        fs::set_permissions(g.abs(&rel), Permissions::from_mode(mode))?;
    }
    let entries = walk::scan(root)?;
    g.set_times(Path::new(""), &mut Rng::derive(opts.seed, "times"))?;

    let mut m = Manifest {
        notes: g.notes,
        entries: entries.len(),
        ..Manifest::default()
    };
    for (_, meta) in &entries {
        let ft = meta.file_type();
        if ft.is_file() {
            m.files += 1;
            m.bytes += meta.len();
        } else if ft.is_dir() {
            m.dirs += 1;
        } else if ft.is_symlink() {
            m.symlinks += 1;
        } else {
            m.specials += 1;
        }
    }
    Ok(m)
}
