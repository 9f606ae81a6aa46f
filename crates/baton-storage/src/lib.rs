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

pub use error::{ErrorKind, StorageError};
pub use fault::{FaultPlan, FaultyStorage, WriteLimits};
pub use local::LocalStorage;
pub use retry::{RetryPolicy, RetryStorage};
pub use slow::SlowStorage;

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
}
