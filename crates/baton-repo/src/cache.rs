//! A local cache of what a remote repository needs read often: index
//! objects, snapshots, and the packs that hold trees. With it a no-change
//! backup of a repository on S3 costs a few listings and writes, not a
//! download of every tree.
//!
//! Every cached object is content-addressed (named by the BLAKE3 of its
//! stored bytes), so an entry is checked on every read: an index object or
//! snapshot by its hash, a tree read from a cached pack by the blob's own
//! authentication. A damaged or planted entry is deleted and the object is
//! read from the repository again. Entries are written to a temporary name
//! and renamed, so a crash leaves none half-written; the cache may be
//! deleted at any time. It is bounded (`BATON_CACHE_MAX`, MiB, default
//! 1024): the least recently used entries go first. It lives in
//! `$BATON_CACHE_DIR`, else `$XDG_CACHE_HOME/baton`, else
//! `~/.cache/baton`, one directory per repository id, mode 0700.

use baton_format::storage_id;
use baton_types::Id;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Most bytes of one cached pack (tree packs are the repository's pack size).
pub const MAX_CACHED_PACK: u64 = 256 << 20;

/// Most bytes of one cached index object or snapshot.
const MAX_CACHED_OBJECT: u64 = 1 << 30;

const KINDS: [&str; 3] = ["index", "snapshots", "data"];

/// The cache of one repository. Every entry is reached through handles of
/// its directories, opened once with `O_NOFOLLOW` and checked to belong to
/// this user and to be writable by nobody else: whoever can write an
/// ancestor (root running with a user's `HOME`) can rename it, but never
/// redirect what this process reads, writes or deletes.
pub struct Cache {
    dir: PathBuf,
    /// index, snapshots, data
    subdirs: [OwnedFd; 3],
    max_bytes: u64,
    /// Bytes written since the last eviction pass.
    written: Mutex<u64>,
}

/// The directory Baton's caches live under (see the module docs).
pub fn base_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    var("BATON_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| var("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("baton")))
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/baton")))
}

fn valid_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether an opened directory is ours alone to change.
fn private(fd: &OwnedFd) -> bool {
    fstat(fd).is_ok_and(|st| {
        st.st_uid == nix::unistd::geteuid().as_raw()
            && st.st_mode & 0o022 == 0
            && st.st_mode & libc_s_ifmt() == libc_s_ifdir()
    })
}

fn libc_s_ifmt() -> u32 {
    nix::sys::stat::SFlag::S_IFMT.bits()
}

fn libc_s_ifdir() -> u32 {
    nix::sys::stat::SFlag::S_IFDIR.bits()
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Opens (creating it `0700` if missing) directory `name` below `parent`,
/// refusing a symbolic link and a directory another user could change.
fn subdir(parent: &OwnedFd, name: &str) -> Option<OwnedFd> {
    let _ = mkdirat(parent, name, Mode::from_bits_truncate(0o700));
    let fd = openat(parent, name, dir_flags(), Mode::empty()).ok()?;
    private(&fd).then_some(fd)
}

impl Cache {
    /// The cache of repository `id`, or None where there is no safe place
    /// for it (or `BATON_NO_CACHE` is set).
    pub fn open(id: &Id) -> Option<Cache> {
        if std::env::var_os("BATON_NO_CACHE").is_some_and(|v| !v.is_empty()) {
            return None;
        }
        let base = base_dir()?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&base)
            .ok()?;
        let base_fd = nix::fcntl::open(&base, dir_flags(), Mode::empty()).ok()?;
        if !private(&base_fd) {
            return None;
        }
        let hex = id.to_hex();
        let repo = subdir(&base_fd, &hex)?;
        let subdirs = [
            subdir(&repo, KINDS[0])?,
            subdir(&repo, KINDS[1])?,
            subdir(&repo, KINDS[2])?,
        ];
        let max_bytes = std::env::var("BATON_CACHE_MAX")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(1 << 30, |mib| mib << 20);
        let cache = Cache {
            dir: base.join(hex),
            subdirs,
            max_bytes,
            written: Mutex::new(0),
        };
        // Runs of other processes may have filled it.
        cache.evict();
        Some(cache)
    }

    /// The cache's directory (for messages).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sub(&self, kind: &str) -> &OwnedFd {
        let i = KINDS.iter().position(|k| *k == kind).expect("a cache kind");
        &self.subdirs[i]
    }

    /// Opens entry `name` of `kind` for reading: a regular file (never a
    /// link, FIFO or device) of at most `max` bytes.
    fn open_entry(&self, kind: &str, name: &str, max: u64) -> Option<fs::File> {
        if !valid_name(name) {
            return None;
        }
        let fd = openat(
            self.sub(kind),
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let st = fstat(&fd).ok()?;
        let regular = st.st_mode & libc_s_ifmt() == nix::sys::stat::SFlag::S_IFREG.bits();
        if !regular || st.st_size as u64 > max {
            self.remove(kind, name);
            return None;
        }
        let f = fs::File::from(fd);
        // Eviction goes by modification time: mark it used.
        let _ = f.set_modified(std::time::SystemTime::now());
        Some(f)
    }

    /// A cached object whose bytes still hash to its name.
    pub fn get(&self, kind: &str, name: &str) -> Option<Vec<u8>> {
        let f = self.open_entry(kind, name, MAX_CACHED_OBJECT)?;
        let mut bytes = Vec::new();
        f.take(MAX_CACHED_OBJECT + 1).read_to_end(&mut bytes).ok()?;
        if storage_id(&bytes).to_hex() != name {
            self.remove(kind, name);
            return None;
        }
        Some(bytes)
    }

    /// `len` bytes at `offset` of a cached pack (checked by the caller: a
    /// blob authenticates itself).
    pub fn read_range(&self, pack: &str, offset: u64, len: usize) -> Option<Vec<u8>> {
        let f = self.open_entry("data", pack, MAX_CACHED_PACK)?;
        let mut buf = vec![0; len];
        f.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }

    /// Forgets a cached entry.
    pub fn remove(&self, kind: &str, name: &str) {
        if valid_name(name) {
            let _ = unlinkat(self.sub(kind), name, UnlinkatFlags::NoRemoveDir);
        }
    }

    /// Stores an object whose bytes hash to `name` (others are ignored).
    pub fn put(&self, kind: &str, name: &str, bytes: &[u8]) {
        if !valid_name(name) || storage_id(bytes).to_hex() != name {
            return;
        }
        let dir = self.sub(kind);
        let tmp = format!(
            ".tmp-{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let written = openat(
            dir,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(std::io::Error::from)
        .and_then(|fd| fs::File::from(fd).write_all(bytes))
        .and_then(|()| renameat(dir, tmp.as_str(), dir, name).map_err(std::io::Error::from));
        if written.is_err() {
            // A full or read-only cache only costs speed.
            let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return;
        }
        let mut w = self.written.lock().expect("cache");
        *w += bytes.len() as u64;
        if *w > self.max_bytes / 8 {
            *w = 0;
            drop(w);
            self.evict();
        }
    }

    /// The names in directory `kind`, with size and modification time.
    fn entries(&self, kind: &str) -> Vec<(String, u64, i64)> {
        let dir = self.sub(kind);
        let Ok(mut d) = nix::dir::Dir::openat(dir, ".", dir_flags(), Mode::empty()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in d.iter().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            if let Ok(st) = fstatat(dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                out.push((
                    name,
                    st.st_size as u64,
                    st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
                ));
            }
        }
        out
    }

    /// Deletes the cached objects of `kind` that the repository no longer
    /// has (`keep`: the names it lists).
    pub fn retain(&self, kind: &str, keep: &HashSet<String>) {
        for (name, _, _) in self.entries(kind) {
            if !keep.contains(&name) && !name.starts_with(".tmp-") {
                let _ = unlinkat(self.sub(kind), name.as_str(), UnlinkatFlags::NoRemoveDir);
            }
        }
    }

    /// Deletes the least recently used entries until the cache fits.
    fn evict(&self) {
        let mut all: Vec<(i64, u64, &str, String)> = Vec::new();
        for kind in KINDS {
            for (name, len, mtime) in self.entries(kind) {
                all.push((mtime, len, kind, name));
            }
        }
        let mut total: u64 = all.iter().map(|e| e.1).sum();
        if total <= self.max_bytes {
            return;
        }
        all.sort();
        for (_, len, kind, name) in all {
            if total <= self.max_bytes {
                break;
            }
            if unlinkat(self.sub(kind), name.as_str(), UnlinkatFlags::NoRemoveDir).is_ok() {
                total -= len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, max: u64) -> Cache {
        let mut c = None;
        // SAFETY-free: the environment is read by Cache::open only.
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let base = nix::fcntl::open(dir, dir_flags(), Mode::empty()).unwrap();
        let repo = subdir(&base, "r").unwrap();
        let subdirs = [
            subdir(&repo, KINDS[0]).unwrap(),
            subdir(&repo, KINDS[1]).unwrap(),
            subdir(&repo, KINDS[2]).unwrap(),
        ];
        c.get_or_insert(Cache {
            dir: dir.join("r"),
            subdirs,
            max_bytes: max,
            written: Mutex::new(0),
        });
        c.unwrap()
    }

    /// A directory others may write is no place for a cache.
    #[test]
    fn a_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let open = fs::Permissions::from_mode(0o777);
        fs::set_permissions(d.path(), open).unwrap();
        let fd = nix::fcntl::open(d.path(), dir_flags(), Mode::empty()).unwrap();
        assert!(!private(&fd));
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let fd = nix::fcntl::open(d.path(), dir_flags(), Mode::empty()).unwrap();
        assert!(private(&fd));
        // A symbolic link where a directory is expected is refused.
        std::os::unix::fs::symlink("/tmp", d.path().join("link")).unwrap();
        assert!(subdir(&fd, "link").is_none());
    }

    #[test]
    fn entries_are_checked_and_bounded() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path(), 3000);
        let a = vec![1u8; 1000];
        let name = storage_id(&a).to_hex();
        c.put("index", &name, &a);
        assert_eq!(c.get("index", &name).unwrap(), a);
        // Damaged in the cache: refused and deleted.
        fs::write(d.path().join("r/index").join(&name), b"planted").unwrap();
        assert!(c.get("index", &name).is_none());
        assert!(!d.path().join("r/index").join(&name).exists());
        // A symbolic link planted as an entry is never followed.
        let outside = d.path().join("outside");
        fs::write(&outside, &a).unwrap();
        std::os::unix::fs::symlink(&outside, d.path().join("r/index").join(&name)).unwrap();
        assert!(c.get("index", &name).is_none());
        assert!(outside.exists());
        // Bytes that do not hash to the name are never stored.
        c.put("index", &name, b"other");
        assert!(c.get("index", &name).is_none());
        // Over the bound, the oldest go.
        let mut names = Vec::new();
        for i in 0..8u8 {
            let b = vec![i; 1000];
            let n = storage_id(&b).to_hex();
            c.put("snapshots", &n, &b);
            names.push(n);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        c.evict();
        let left = names
            .iter()
            .filter(|n| c.get("snapshots", n).is_some())
            .count();
        assert!(left <= 3, "{left}");
        assert!(c.get("snapshots", names.last().unwrap()).is_some());
    }
}
