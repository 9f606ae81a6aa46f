//! The storage seam of a Baton repository.
//!
//! A repository is a set of immutable, named objects of a few kinds. Storage
//! only needs to: create an object atomically and durably (never a torn or
//! half-visible object, never an overwrite), read a whole object or a byte range
//! of it, list the objects of a kind, and delete one. That is exactly what a
//! local directory and an S3 bucket (with `If-None-Match: *`) both offer, so the
//! repository format works unchanged on either. Wrappers for tests (fault
//! injection, crash simulation) implement the same trait.
//!
//! ```
//! use baton_storage::{LocalStorage, ObjectKind, Storage};
//! let dir = tempfile::tempdir().unwrap();
//! let s = LocalStorage::new(dir.path().join("repo"));
//! s.create().unwrap();
//! s.put(ObjectKind::Snapshot, "ab12", b"bytes").unwrap();
//! assert_eq!(s.get(ObjectKind::Snapshot, "ab12").unwrap(), b"bytes");
//! assert!(s.put(ObjectKind::Snapshot, "ab12", b"other").unwrap_err().is_already_exists());
//! ```

mod error;
mod fault;
mod local;
mod retry;
mod slow;
mod throttle;

pub use error::{ErrorKind, StorageError};
pub use fault::{FaultPlan, FaultyStorage, WriteLimits};
pub use local::LocalStorage;
pub use retry::{RetryPolicy, RetryStorage};
pub use slow::SlowStorage;
pub use throttle::ThrottledStorage;

/// The kinds of objects in a repository; each lives in its own namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// The single `config` object (name is ignored).
    Config,
    Key,
    Pack,
    Index,
    Snapshot,
    Lock,
    /// Backup journal records, named `<job id>/<record id>`.
    Journal,
}

impl ObjectKind {
    /// Directory (or key prefix) of this kind.
    pub fn dir(self) -> &'static str {
        match self {
            ObjectKind::Config => "",
            ObjectKind::Key => "keys",
            ObjectKind::Pack => "data",
            ObjectKind::Index => "index",
            ObjectKind::Snapshot => "snapshots",
            ObjectKind::Lock => "locks",
            ObjectKind::Journal => "journal",
        }
    }

    pub const ALL: [ObjectKind; 7] = [
        ObjectKind::Config,
        ObjectKind::Key,
        ObjectKind::Pack,
        ObjectKind::Index,
        ObjectKind::Snapshot,
        ObjectKind::Lock,
        ObjectKind::Journal,
    ];
}

/// A listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
}

/// [`Storage::read_range_scratch`] for a backend without a faster way:
/// the range at the start of `scratch`.
pub(crate) fn read_range_buffered<S: Storage + ?Sized>(
    storage: &S,
    kind: ObjectKind,
    name: &str,
    offset: u64,
    len: usize,
    scratch: &mut Vec<u8>,
) -> Result<std::ops::Range<usize>, StorageError> {
    if scratch.len() < len {
        scratch.resize(len, 0);
    }
    storage.read_range_into(kind, name, offset, &mut scratch[..len])?;
    Ok(0..len)
}

/// The error of an object larger than a reader accepts.
pub fn too_large(kind: ObjectKind, name: &str, len: u64, max: u64) -> StorageError {
    let what = match kind {
        ObjectKind::Config => "config".to_string(),
        _ => format!("{} {}", kind.dir(), name),
    };
    StorageError::new(
        ErrorKind::Permanent,
        what,
        format!(
            "is {len} bytes, more than the {max} accepted for this kind of object (damaged or planted)"
        ),
    )
}

/// Object storage: small, synchronous and usable as `dyn Storage`.
pub trait Storage: Send + Sync {
    /// Human-readable location (a path or URL) for messages.
    fn location(&self) -> String;

    /// Whether a repository (its `config` object) exists here.
    fn exists(&self) -> Result<bool, StorageError>;

    /// Prepares an empty location for a new repository.
    fn create(&self) -> Result<(), StorageError>;

    /// Creates an object atomically and durably. Fails with
    /// [`ErrorKind::AlreadyExists`] if the name is taken; callers of
    /// content-addressed objects treat that as success.
    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StorageError>;

    /// Reads a whole object.
    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StorageError>;

    /// Reads a whole object of at most `max` bytes; a larger one fails with
    /// [`ErrorKind::Permanent`] before it is read. Every read of an object
    /// whose size is not known from authenticated data goes through this:
    /// a planted multi-gigabyte (or sparse) key or lock file must not make
    /// a command run out of memory.
    fn get_limited(&self, kind: ObjectKind, name: &str, max: u64) -> Result<Vec<u8>, StorageError> {
        // One call, checked after: a backend that can bound its reads
        // (a local file, an HTTP range) overrides this.
        let data = self.get(kind, name)?;
        if data.len() as u64 > max {
            return Err(too_large(kind, name, data.len() as u64, max));
        }
        Ok(data)
    }

    /// Reads `len` bytes at `offset`; fails if the object is shorter.
    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StorageError>;

    /// Reads `len` bytes at `offset` into `scratch` (reused across calls),
    /// returning where in `scratch` they are; fails if the object is
    /// shorter. A backend may read more around the range, e.g. to meet the
    /// alignment of direct I/O (the local backend reads large ranges with
    /// `O_DIRECT`, bypassing the page cache).
    fn read_range_scratch(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: usize,
        scratch: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>, StorageError> {
        read_range_buffered(self, kind, name, offset, len, scratch)
    }

    /// Reads `buf.len()` bytes at `offset` into `buf`; fails if the object
    /// is shorter. Lets a caller that reads many ranges reuse one buffer.
    fn read_range_into(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), StorageError> {
        let data = self.get_range(kind, name, offset, buf.len() as u64)?;
        buf.copy_from_slice(&data);
        Ok(())
    }

    /// Size of an object.
    fn size(&self, kind: ObjectKind, name: &str) -> Result<u64, StorageError>;

    /// Lists the objects of a kind (for `Journal`, names include the job prefix).
    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError>;

    /// Deletes an object; deleting a missing object is not an error.
    fn remove(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError>;

    /// Lists the objects of a kind whose names start with `prefix` (a
    /// job's journal records: `"<job>/"`). A remote backend asks the server
    /// for just those.
    fn list_prefix(&self, kind: ObjectKind, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut all = self.list(kind)?;
        all.retain(|o| o.name.starts_with(prefix));
        Ok(all)
    }

    /// Deletes many objects of a kind (missing ones are not an error); a
    /// remote backend deletes them in batches of up to 1000 per request.
    /// On failure some may be deleted and others not.
    fn remove_many(&self, kind: ObjectKind, names: &[String]) -> Result<(), StorageError> {
        for n in names {
            self.remove(kind, n)?;
        }
        Ok(())
    }

    /// Whether [`Storage::put`] refuses an existing name atomically: of two
    /// racing creators of one name exactly one succeeds. Locks, journal
    /// records and the config rely on it; a backend that cannot promise it
    /// refuses to create a repository instead of answering false silently.
    fn atomic_create(&self) -> bool {
        true
    }

    /// Whether reads cross a network (a repository there keeps a local
    /// cache of what it reads often).
    fn is_remote(&self) -> bool {
        false
    }
}

/// Checks an object name against the names the format uses: hex ids (and
/// `<job>/<record>` for journal records); anything else (`..`, `/`, empty)
/// is refused before it reaches a path or a key.
pub fn check_name(kind: ObjectKind, name: &str) -> Result<(), StorageError> {
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

/// Implements every method of [`Storage`] for a wrapper by calling `$call`
/// on the inner storage, with `$before` run first: one list of methods, so
/// that no wrapper silently loses a backend's fast path (ranged reads into a
/// buffer, listing by prefix, batch deletes).
#[macro_export]
macro_rules! forward_storage {
    (|$this:ident| $inner:expr, |$s:ident, $op:ident| $wrap:expr) => {
        fn location(&self) -> String {
            {
                let $this = self;
                $inner
            }
            .location()
        }
        fn exists(&self) -> Result<bool, $crate::StorageError> {
            let $s = self;
            #[allow(unused_mut)]
            let mut $op = || {
                {
                    let $this = $s;
                    $inner
                }
                .exists()
            };
            $wrap
        }
        fn create(&self) -> Result<(), $crate::StorageError> {
            let $s = self;
            #[allow(unused_mut)]
            let mut $op = || {
                {
                    let $this = $s;
                    $inner
                }
                .create()
            };
            $wrap
        }
        fn put(
            &self,
            kind: $crate::ObjectKind,
            name: &str,
            data: &[u8],
        ) -> Result<(), $crate::StorageError> {
            let $s = self;
            #[allow(unused_mut)]
            let mut $op = || {
                {
                    let $this = $s;
                    $inner
                }
                .put(kind, name, data)
            };
            $wrap
        }
        fn get(
            &self,
            kind: $crate::ObjectKind,
            name: &str,
        ) -> Result<Vec<u8>, $crate::StorageError> {
            let $s = self;
            #[allow(unused_mut)]
            let mut $op = || {
                {
                    let $this = $s;
                    $inner
                }
                .get(kind, name)
            };
            $wrap
        }
        fn get_limited(
            &self,
            kind: $crate::ObjectKind,
            name: &str,
            max: u64,
        ) -> Result<Vec<u8>, $crate::StorageError> {
            let $s = self;
            #[allow(unused_mut)]
            let mut $op = || {
                {
                    let $this = $s;
                    $inner
                }
                .get_limited(kind, name, max)
            };
            $wrap
        }
        fn get_range(
            &self,
            kind: $crate::ObjectKind,
            name: &str,
            offset: u64,
            len: u64,
        ) -> Result<Vec<u8>, $crate::StorageError> {
            let $s = self;
            #[allow(unused_mut)]
            let mut $op = || {
                {
                    let $this = $s;
                    $inner
                }
                .get_range(kind, name, offset, len)
            };
            $wrap
        }
        fn read_range_scratch(
            &self,
            kind: $crate::ObjectKind,
            name: &str,
            offset: u64,
            len: usize,
            scratch: &mut Vec<u8>,
        ) -> Result<std::ops::Range<usize>, $crate::StorageError> {
            let $s = self;
            let mut scratch = scratch;
            #[allow(unused_mut)]
            let mut $op = || {
                {
                    let $this = $s;
                    $inner
                }
                .read_range_scratch(kind, name, offset, len, &mut scratch)
            };
            $wrap
        }
        fn read_range_into(
            &self,
            kind: $crate::ObjectKind,
            name: &str,
            offset: u64,
            buf: &mut [u8],
        ) -> Result<(), $crate::StorageError> {
            let $s = self;
            let mut buf = buf;
            #[allow(unused_mut)]
            let mut $op = || {
                {
                    let $this = $s;
                    $inner
                }
                .read_range_into(kind, name, offset, &mut buf)
            };
            $wrap
        }
        fn size(&self, kind: $crate::ObjectKind, name: &str) -> Result<u64, $crate::StorageError> {
            let $s = self;
            #[allow(unused_mut)]
            let mut $op = || {
                {
                    let $this = $s;
                    $inner
                }
                .size(kind, name)
            };
            $wrap
        }
        fn list(
            &self,
            kind: $crate::ObjectKind,
        ) -> Result<Vec<$crate::ObjectInfo>, $crate::StorageError> {
            let $s = self;
            #[allow(unused_mut)]
            let mut $op = || {
                {
                    let $this = $s;
                    $inner
                }
                .list(kind)
            };
            $wrap
        }
        fn list_prefix(
            &self,
            kind: $crate::ObjectKind,
            prefix: &str,
        ) -> Result<Vec<$crate::ObjectInfo>, $crate::StorageError> {
            let $s = self;
            #[allow(unused_mut)]
            let mut $op = || {
                {
                    let $this = $s;
                    $inner
                }
                .list_prefix(kind, prefix)
            };
            $wrap
        }
        fn remove(&self, kind: $crate::ObjectKind, name: &str) -> Result<(), $crate::StorageError> {
            let $s = self;
            #[allow(unused_mut)]
            let mut $op = || {
                {
                    let $this = $s;
                    $inner
                }
                .remove(kind, name)
            };
            $wrap
        }
        fn remove_many(
            &self,
            kind: $crate::ObjectKind,
            names: &[String],
        ) -> Result<(), $crate::StorageError> {
            let $s = self;
            #[allow(unused_mut)]
            let mut $op = || {
                {
                    let $this = $s;
                    $inner
                }
                .remove_many(kind, names)
            };
            $wrap
        }
        fn atomic_create(&self) -> bool {
            {
                let $this = self;
                $inner
            }
            .atomic_create()
        }
        fn is_remote(&self) -> bool {
            {
                let $this = self;
                $inner
            }
            .is_remote()
        }
    };
}
