//! A repository in a local directory.
//!
//! Layout: `config`, `keys/<id>`, `data/<first two hex digits>/<id>`,
//! `index/<id>`, `snapshots/<id>`, `locks/<id>`, `journal/<job>/<id>`.
//!
//! Crash consistency: an object is written to a temporary file in its final
//! directory, fsynced, then published with `link(2)` (which fails if the name
//! exists, giving create-only semantics without a race), the temporary name is
//! removed, and the directory is fsynced. After a crash at any instant an
//! object is either absent or complete; leftover temporary files (`.tmp-*`) are
//! never listed and can be deleted at any time.

use crate::{ErrorKind, ObjectInfo, ObjectKind, Storage, StorageError};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A repository stored in a directory of the local filesystem.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStorage { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, kind: ObjectKind, name: &str) -> PathBuf {
        match kind {
            ObjectKind::Config => self.root.join("config"),
            ObjectKind::Pack => self
                .root
                .join("data")
                .join(name.get(..2).unwrap_or("00"))
                .join(name),
            _ => self.root.join(kind.dir()).join(name),
        }
    }
}

use crate::check_name;

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn tmp_name() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the operating system's random number generator failed");
    format!(".tmp-{}", u64::from_le_bytes(b))
}

/// Objects at least this large are written with `O_DIRECT`.
const DIRECT_MIN: usize = 1 << 20;
/// Bytes per direct write (the size of each thread's aligned scratch buffer).
const DIRECT_PIECE: usize = 1 << 20;
/// Alignment of direct writes: buffer address, file offset and length.
const DIRECT_ALIGN: usize = 4096;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes `data` to a new file at `tmp` and makes it durable (fsync).
///
/// Large objects (packs) bypass the page cache: a buffered write copies
/// every byte into newly allocated cache pages, which on the virtual
/// machines we measured cost ~3 CPU seconds per GiB, as much as compressing
/// it; `O_DIRECT` from a small aligned buffer costs a tenth of that (see
/// docs/performance.md). Filesystems without `O_DIRECT` get a buffered write.
fn write_durably(tmp: &Path, data: &[u8]) -> std::io::Result<()> {
    if data.len() >= DIRECT_MIN {
        match write_direct(tmp, data) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                // No O_DIRECT here (or an alignment it refuses): start over.
                fs::remove_file(tmp)?;
            }
            Err(e) => return Err(e),
        }
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(tmp)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Mode of every object file: the owner's alone, like restic. Key files
/// (plaintext KDF parameters and the wrapped key) and the names of packs
/// are nobody else's business on a shared machine.
const FILE_MODE: u32 = 0o600;
/// Mode of every directory the repository creates.
const DIR_MODE: u32 = 0o700;

fn create_dirs(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

fn write_direct(tmp: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(nix::libc::O_DIRECT)
        .open(tmp)?;
    let aligned = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < DIRECT_PIECE + DIRECT_ALIGN {
            *s = vec![0; DIRECT_PIECE + DIRECT_ALIGN];
        }
        let off = s.as_ptr().align_offset(DIRECT_ALIGN);
        for piece in data[..aligned].chunks(DIRECT_PIECE) {
            let buf = &mut s[off..off + piece.len()];
            buf.copy_from_slice(piece);
            f.write_all(buf)?;
        }
        Ok::<(), std::io::Error>(())
    })?;
    if aligned < data.len() {
        // The unaligned tail goes through the page cache.
        drop(f);
        f = OpenOptions::new().append(true).open(tmp)?;
        f.write_all(&data[aligned..])?;
    }
    f.sync_all()
}

impl Storage for LocalStorage {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn exists(&self) -> Result<bool, StorageError> {
        match fs::metadata(self.root.join("config")) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(false),
            Err(e) => Err(StorageError::from_io(
                &e,
                ObjectKind::Config,
                "",
                "checking for the repository",
            )),
        }
    }

    fn create(&self) -> Result<(), StorageError> {
        let io = |e: std::io::Error| {
            StorageError::from_io(
                &e,
                ObjectKind::Config,
                "",
                &format!("creating {}", self.root.display()),
            )
        };
        if let Ok(mut rd) = fs::read_dir(&self.root)
            && rd.next().is_some()
        {
            return Err(StorageError::new(
                ErrorKind::AlreadyExists,
                self.root.display().to_string(),
                "directory exists and is not empty",
            ));
        }
        create_dirs(&self.root).map_err(io)?;
        for k in ObjectKind::ALL {
            if k != ObjectKind::Config {
                create_dirs(&self.root.join(k.dir())).map_err(io)?;
            }
        }
        for i in 0..=255u8 {
            create_dirs(&self.root.join("data").join(format!("{i:02x}"))).map_err(io)?;
        }
        fsync_dir(&self.root).map_err(io)?;
        if let Some(parent) = self.root.parent() {
            let _ = fsync_dir(parent);
        }
        Ok(())
    }

    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StorageError> {
        check_name(kind, name)?;
        let path = self.path(kind, name);
        let dir = path
            .parent()
            .expect("object paths have a parent")
            .to_path_buf();
        let err = |e: std::io::Error| StorageError::from_io(&e, kind, name, "writing");
        if !dir.is_dir() {
            // A new job's directory (or one missing from a copied
            // repository): make its entry in the parent durable too.
            create_dirs(&dir).map_err(err)?;
            if let Some(parent) = dir.parent() {
                fsync_dir(parent).map_err(err)?;
            }
        }
        let tmp = dir.join(tmp_name());
        let result = write_durably(&tmp, data).and_then(|()| fs::hard_link(&tmp, &path));
        let _ = fs::remove_file(&tmp);
        result.map_err(err)?;
        fsync_dir(&dir).map_err(err)
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StorageError> {
        check_name(kind, name)?;
        fs::read(self.path(kind, name))
            .map_err(|e| StorageError::from_io(&e, kind, name, "reading"))
    }

    fn get_limited(&self, kind: ObjectKind, name: &str, max: u64) -> Result<Vec<u8>, StorageError> {
        use std::io::Read;
        check_name(kind, name)?;
        let err = |e: std::io::Error| StorageError::from_io(&e, kind, name, "reading");
        let f = File::open(self.path(kind, name)).map_err(err)?;
        let len = f.metadata().map_err(err)?.len();
        if len > max {
            return Err(crate::too_large(kind, name, len, max));
        }
        // Read at most one byte past the limit: a file that grew since the
        // stat is refused too, and never read whole.
        let mut out = Vec::with_capacity(len as usize);
        f.take(max + 1).read_to_end(&mut out).map_err(err)?;
        if out.len() as u64 > max {
            return Err(crate::too_large(kind, name, out.len() as u64, max));
        }
        Ok(out)
    }

    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StorageError> {
        check_name(kind, name)?;
        let mut buf = vec![0u8; len as usize];
        self.read_range_into(kind, name, offset, &mut buf)?;
        Ok(buf)
    }

    fn read_range_scratch(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: usize,
        scratch: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>, StorageError> {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let buffered = |scratch: &mut Vec<u8>| {
            crate::read_range_buffered(self, kind, name, offset, len, scratch)
        };
        if len < DIRECT_MIN {
            return buffered(scratch);
        }
        check_name(kind, name)?;
        // The aligned range around the wanted one, read straight into an
        // aligned part of `scratch` (no page-cache copy; see write_durably).
        let align = DIRECT_ALIGN as u64;
        let start = offset / align * align;
        let end = (offset + len as u64).div_ceil(align) * align;
        let span = (end - start) as usize;
        if scratch.len() < span + DIRECT_ALIGN {
            scratch.resize(span + DIRECT_ALIGN, 0);
        }
        let at = scratch.as_ptr().align_offset(DIRECT_ALIGN);
        let want = (offset - start) as usize + len;
        let read = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(self.path(kind, name))
            .and_then(|f| {
                // The object may end before the aligned end: short reads.
                let mut got = 0;
                while got < want {
                    let n = f.read_at(&mut scratch[at + got..at + span], start + got as u64)?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                Ok(got)
            });
        match read {
            Ok(got) if got >= want => {
                let from = at + (offset - start) as usize;
                Ok(from..from + len)
            }
            // Short (truncated object: the buffered read names the error),
            // or no O_DIRECT here: read through the page cache.
            Ok(_) => buffered(scratch),
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => buffered(scratch),
            Err(e) => Err(StorageError::from_io(&e, kind, name, "reading")),
        }
    }

    fn read_range_into(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), StorageError> {
        use std::os::unix::fs::FileExt;
        check_name(kind, name)?;
        let err = |e: std::io::Error| StorageError::from_io(&e, kind, name, "reading");
        let f = File::open(self.path(kind, name)).map_err(err)?;
        f.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                StorageError::new(
                    ErrorKind::Permanent,
                    format!("{} {name}", kind.dir()),
                    format!(
                        "object is shorter than {} bytes (truncated?)",
                        offset + buf.len() as u64
                    ),
                )
            } else {
                err(e)
            }
        })
    }

    fn size(&self, kind: ObjectKind, name: &str) -> Result<u64, StorageError> {
        check_name(kind, name)?;
        fs::metadata(self.path(kind, name))
            .map(|m| m.len())
            .map_err(|e| StorageError::from_io(&e, kind, name, "reading the size of"))
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError> {
        let err = |e: std::io::Error| StorageError::from_io(&e, kind, "", "listing");
        let mut out = Vec::new();
        let base = self.root.join(kind.dir());
        let dirs: Vec<(PathBuf, String)> = match kind {
            ObjectKind::Config => {
                return Ok(match fs::metadata(self.root.join("config")) {
                    Ok(m) => vec![ObjectInfo {
                        name: "config".into(),
                        size: m.len(),
                    }],
                    Err(_) => vec![],
                });
            }
            ObjectKind::Pack | ObjectKind::Journal => {
                let mut v = Vec::new();
                let entries = match fs::read_dir(&base) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                    r => r.map_err(err)?,
                };
                for e in entries {
                    let e = e.map_err(err)?;
                    let is_dir = match e.file_type() {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        r => r.map_err(err)?.is_dir(),
                    };
                    if is_dir {
                        let prefix = match kind {
                            ObjectKind::Journal => format!("{}/", e.file_name().to_string_lossy()),
                            _ => String::new(),
                        };
                        v.push((e.path(), prefix));
                    }
                }
                v
            }
            _ => vec![(base, String::new())],
        };
        for (dir, prefix) in dirs {
            let entries = match fs::read_dir(&dir) {
                // A kind's directory that is missing holds no objects (git
                // keeps no empty directories, so a committed fixture
                // repository has none).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                r => r.map_err(err)?,
            };
            for e in entries {
                let e = e.map_err(err)?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                // An object deleted since the directory was read (a lock
                // another process released) is not listed, not an error.
                let m = match e.metadata() {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    r => r.map_err(err)?,
                };
                if m.is_file() {
                    out.push(ObjectInfo {
                        name: format!("{prefix}{name}"),
                        size: m.len(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn remove(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError> {
        check_name(kind, name)?;
        let path = self.path(kind, name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StorageError::from_io(&e, kind, name, "deleting")),
        }
        if kind == ObjectKind::Journal
            && let Some(dir) = path.parent()
        {
            // Drop the job's directory once its last record is gone.
            let _ = fs::remove_dir(dir);
        }
        let _ = fsync_dir(path.parent().expect("object paths have a parent"));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path().join("r"));
        assert!(!s.exists().unwrap());
        s.create().unwrap();
        s.put(ObjectKind::Config, "", b"cfg").unwrap();
        assert!(s.exists().unwrap());
        s.put(ObjectKind::Pack, "abcd", b"0123456789").unwrap();
        s.put(ObjectKind::Journal, "job1/rec1", b"j").unwrap();
        assert_eq!(s.get_range(ObjectKind::Pack, "abcd", 2, 3).unwrap(), b"234");
        assert!(s.get_range(ObjectKind::Pack, "abcd", 8, 3).is_err());
        assert_eq!(
            s.list(ObjectKind::Pack).unwrap(),
            vec![ObjectInfo {
                name: "abcd".into(),
                size: 10
            }]
        );
        assert_eq!(s.list(ObjectKind::Journal).unwrap()[0].name, "job1/rec1");
        assert!(
            s.put(ObjectKind::Pack, "abcd", b"x")
                .unwrap_err()
                .is_already_exists()
        );
        assert_eq!(s.get(ObjectKind::Pack, "abcd").unwrap(), b"0123456789");
        s.remove(ObjectKind::Pack, "abcd").unwrap();
        s.remove(ObjectKind::Pack, "abcd").unwrap();
        assert!(s.get(ObjectKind::Pack, "abcd").unwrap_err().is_not_found());
        s.remove(ObjectKind::Journal, "job1/rec1").unwrap();
        assert!(s.list(ObjectKind::Journal).unwrap().is_empty());
        // No temporary files are left behind.
        let leftovers: Vec<_> = fs::read_dir(d.path().join("r/data/ab")).unwrap().collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn large_objects_round_trip_at_every_alignment() {
        // Objects of at least DIRECT_MIN bytes take the O_DIRECT path (or
        // its buffered fallback): aligned, unaligned, and a short tail.
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path().join("r"));
        s.create().unwrap();
        for (i, len) in [
            DIRECT_MIN - 1,
            DIRECT_MIN,
            DIRECT_MIN + 1,
            3 * DIRECT_PIECE + DIRECT_ALIGN + 17,
            5 * DIRECT_PIECE,
        ]
        .into_iter()
        .enumerate()
        {
            let data: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8).collect();
            let name = format!("{i:02}big");
            s.put(ObjectKind::Pack, &name, &data).unwrap();
            assert_eq!(s.get(ObjectKind::Pack, &name).unwrap(), data, "len {len}");
            assert_eq!(s.size(ObjectKind::Pack, &name).unwrap(), len as u64);
            let mut part = vec![0u8; 1000];
            s.read_range_into(ObjectKind::Pack, &name, len as u64 - 1000, &mut part)
                .unwrap();
            assert_eq!(part, data[len - 1000..]);
            // Reading past the end is an error that names the object.
            let e = s
                .read_range_into(ObjectKind::Pack, &name, len as u64 - 10, &mut part)
                .unwrap_err();
            assert!(e.to_string().contains(&name), "{e}");
            // Large ranges (direct I/O around them), unaligned, up to the end.
            let mut scratch = Vec::new();
            for (off, n) in [
                (0, len),
                (17, len - 17),
                (4095, len - 5000),
                (1, DIRECT_MIN),
            ] {
                if off + n > len {
                    continue;
                }
                let r = s
                    .read_range_scratch(ObjectKind::Pack, &name, off as u64, n, &mut scratch)
                    .unwrap();
                assert_eq!(&scratch[r], &data[off..off + n], "len {len} at {off}+{n}");
            }
            let e = s
                .read_range_scratch(ObjectKind::Pack, &name, 1, len, &mut scratch)
                .unwrap_err();
            assert!(e.to_string().contains("shorter"), "{e}");
        }
        let leftovers: Vec<_> = std::fs::read_dir(d.path().join("r/data/00"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn rejects_path_traversal_and_non_empty_init() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path());
        fs::write(d.path().join("f"), b"x").unwrap();
        assert!(s.create().is_err());
        assert!(s.put(ObjectKind::Snapshot, "../x", b"").is_err());
        assert!(s.get(ObjectKind::Journal, "a/../../b").is_err());
    }
}
