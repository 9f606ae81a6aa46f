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
use std::collections::HashSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Most bytes of one cached pack (tree packs are the repository's pack size).
pub const MAX_CACHED_PACK: u64 = 256 << 20;

/// The cache of one repository.
pub struct Cache {
    dir: PathBuf,
    max_bytes: u64,
    /// Bytes written since the last eviction pass.
    written: Mutex<u64>,
}

fn base_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    var("BATON_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| var("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("baton")))
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/baton")))
}

fn valid_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Cache {
    /// The cache of repository `id`, or None where there is no place for it
    /// (or `BATON_NO_CACHE` is set).
    pub fn open(id: &Id) -> Option<Cache> {
        if std::env::var_os("BATON_NO_CACHE").is_some_and(|v| !v.is_empty()) {
            return None;
        }
        let dir = base_dir()?.join(id.to_hex());
        for sub in ["index", "snapshots", "data"] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir.join(sub))
                .ok()?;
        }
        let max_bytes = std::env::var("BATON_CACHE_MAX")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(1 << 30, |mib| mib << 20);
        Some(Cache {
            dir,
            max_bytes,
            written: Mutex::new(0),
        })
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, kind: &str, name: &str) -> PathBuf {
        self.dir.join(kind).join(name)
    }

    /// A cached object whose bytes still hash to its name.
    pub fn get(&self, kind: &str, name: &str) -> Option<Vec<u8>> {
        if !valid_name(name) {
            return None;
        }
        let p = self.path(kind, name);
        let bytes = fs::read(&p).ok()?;
        if storage_id(&bytes).to_hex() != name {
            let _ = fs::remove_file(&p);
            return None;
        }
        touch(&p);
        Some(bytes)
    }

    /// `len` bytes at `offset` of a cached pack (checked by the caller: a
    /// blob authenticates itself).
    pub fn read_range(&self, pack: &str, offset: u64, len: usize) -> Option<Vec<u8>> {
        if !valid_name(pack) {
            return None;
        }
        let p = self.path("data", pack);
        let mut f = fs::File::open(&p).ok()?;
        f.seek(SeekFrom::Start(offset)).ok()?;
        let mut buf = vec![0; len];
        f.read_exact(&mut buf).ok()?;
        touch(&p);
        Some(buf)
    }

    /// Forgets a cached entry (it failed to open).
    pub fn remove(&self, kind: &str, name: &str) {
        if valid_name(name) {
            let _ = fs::remove_file(self.path(kind, name));
        }
    }

    /// Stores an object whose bytes hash to `name` (others are ignored).
    pub fn put(&self, kind: &str, name: &str, bytes: &[u8]) {
        if !valid_name(name) || storage_id(bytes).to_hex() != name {
            return;
        }
        let p = self.path(kind, name);
        let tmp = self.dir.join(kind).join(format!(
            ".tmp-{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, bytes))
            .and_then(|()| fs::rename(&tmp, &p));
        if written.is_err() {
            // A full or read-only cache only costs speed.
            let _ = fs::remove_file(&tmp);
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

    /// Deletes the cached objects of `kind` that the repository no longer
    /// has (`keep`: the names it lists).
    pub fn retain(&self, kind: &str, keep: &HashSet<String>) {
        let Ok(rd) = fs::read_dir(self.dir.join(kind)) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Deletes the least recently used entries until the cache fits.
    fn evict(&self) {
        let mut entries = Vec::new();
        for kind in ["index", "snapshots", "data"] {
            let Ok(rd) = fs::read_dir(self.dir.join(kind)) else {
                continue;
            };
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    let t = m.modified().unwrap_or(std::time::UNIX_EPOCH);
                    entries.push((t, m.len(), e.path()));
                }
            }
        }
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        if total <= self.max_bytes {
            return;
        }
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}

/// Marks an entry as used now (eviction goes by modification time).
fn touch(p: &Path) {
    if let Ok(f) = fs::File::options().append(true).open(p) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, max: u64) -> Cache {
        for sub in ["index", "snapshots", "data"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        Cache {
            dir: dir.to_path_buf(),
            max_bytes: max,
            written: Mutex::new(0),
        }
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
        fs::write(d.path().join("index").join(&name), b"planted").unwrap();
        assert!(c.get("index", &name).is_none());
        assert!(!d.path().join("index").join(&name).exists());
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
