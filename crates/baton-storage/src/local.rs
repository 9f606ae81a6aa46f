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
use std::io::{Read, Seek, SeekFrom, Write};
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

fn check_name(kind: ObjectKind, name: &str) -> Result<(), StorageError> {
    let ok = match kind {
        ObjectKind::Config => true,
        ObjectKind::Journal => {
            let mut parts = name.split('/');
            let good = |p: Option<&str>| {
                p.is_some_and(|p| {
                    !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
            };
            good(parts.next()) && good(parts.next()) && parts.next().is_none()
        }
        _ => !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
    };
    if ok {
        Ok(())
    } else {
        Err(StorageError::new(
            ErrorKind::Permanent,
            format!("{} {name:?}", kind.dir()),
            "invalid object name",
        ))
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn tmp_name() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the operating system's random number generator failed");
    format!(".tmp-{}", u64::from_le_bytes(b))
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
        fs::create_dir_all(&self.root).map_err(io)?;
        for k in ObjectKind::ALL {
            if k != ObjectKind::Config {
                fs::create_dir_all(self.root.join(k.dir())).map_err(io)?;
            }
        }
        for i in 0..=255u8 {
            fs::create_dir_all(self.root.join("data").join(format!("{i:02x}"))).map_err(io)?;
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
        if kind == ObjectKind::Journal && !dir.is_dir() {
            // A new job's directory: make its entry in journal/ durable too.
            fs::create_dir_all(&dir).map_err(err)?;
            if let Some(parent) = dir.parent() {
                fsync_dir(parent).map_err(err)?;
            }
        }
        let tmp = dir.join(tmp_name());
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            drop(f);
            fs::hard_link(&tmp, &path)
        })();
        let _ = fs::remove_file(&tmp);
        result.map_err(err)?;
        fsync_dir(&dir).map_err(err)
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StorageError> {
        check_name(kind, name)?;
        fs::read(self.path(kind, name))
            .map_err(|e| StorageError::from_io(&e, kind, name, "reading"))
    }

    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StorageError> {
        check_name(kind, name)?;
        let err = |e: std::io::Error| StorageError::from_io(&e, kind, name, "reading");
        let mut f = File::open(self.path(kind, name)).map_err(err)?;
        f.seek(SeekFrom::Start(offset)).map_err(err)?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact(&mut buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                StorageError::new(
                    ErrorKind::Permanent,
                    format!("{} {name}", kind.dir()),
                    format!("object is shorter than {} bytes (truncated?)", offset + len),
                )
            } else {
                err(e)
            }
        })?;
        Ok(buf)
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
                for e in fs::read_dir(&base).map_err(err)? {
                    let e = e.map_err(err)?;
                    if e.file_type().map_err(err)?.is_dir() {
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
            for e in fs::read_dir(&dir).map_err(err)? {
                let e = e.map_err(err)?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let m = e.metadata().map_err(err)?;
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
    fn rejects_path_traversal_and_non_empty_init() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path());
        fs::write(d.path().join("f"), b"x").unwrap();
        assert!(s.create().is_err());
        assert!(s.put(ObjectKind::Snapshot, "../x", b"").is_err());
        assert!(s.get(ObjectKind::Journal, "a/../../b").is_err());
    }
}
