//! A storage wrapper that injects faults, for tests: it fails every write after
//! the first N (as a full disk does) or fails a chosen operation once.

use crate::{ErrorKind, ObjectInfo, ObjectKind, Storage, StorageError};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Which operations fail.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// After this many successful `put`s, every further `put` fails.
    pub fail_puts_after: Option<usize>,
    /// The error kind of injected failures (default: NoSpace).
    pub error: Option<ErrorKind>,
}

/// Wraps another storage and injects the faults of a [`FaultPlan`].
pub struct FaultyStorage<S> {
    inner: S,
    plan: Mutex<FaultPlan>,
    puts: AtomicUsize,
}

impl<S: Storage> FaultyStorage<S> {
    pub fn new(inner: S, plan: FaultPlan) -> Self {
        FaultyStorage {
            inner,
            plan: Mutex::new(plan),
            puts: AtomicUsize::new(0),
        }
    }

    /// Replaces the plan (e.g. to "free disk space" again).
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.plan.lock().expect("fault plan lock") = plan;
        self.puts.store(0, Ordering::SeqCst);
    }

    /// Number of `put` calls seen since the plan was set.
    pub fn puts(&self) -> usize {
        self.puts.load(Ordering::SeqCst)
    }
}

impl<S: Storage> Storage for FaultyStorage<S> {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn exists(&self) -> Result<bool, StorageError> {
        self.inner.exists()
    }
    fn create(&self) -> Result<(), StorageError> {
        self.inner.create()
    }
    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StorageError> {
        let n = self.puts.fetch_add(1, Ordering::SeqCst);
        let plan = self.plan.lock().expect("fault plan lock").clone();
        if plan.fail_puts_after.is_some_and(|limit| n >= limit) {
            let k = plan.error.unwrap_or(ErrorKind::NoSpace);
            return Err(StorageError::new(
                k,
                format!("{} {name}", kind.dir()),
                "injected fault: no space left on device",
            ));
        }
        self.inner.put(kind, name, data)
    }
    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StorageError> {
        self.inner.get(kind, name)
    }
    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StorageError> {
        self.inner.get_range(kind, name, offset, len)
    }
    fn size(&self, kind: ObjectKind, name: &str) -> Result<u64, StorageError> {
        self.inner.size(kind, name)
    }
    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError> {
        self.inner.list(kind)
    }
    fn remove(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError> {
        self.inner.remove(kind, name)
    }
}

impl<S: Storage + ?Sized> Storage for std::sync::Arc<S> {
    fn location(&self) -> String {
        (**self).location()
    }
    fn exists(&self) -> Result<bool, StorageError> {
        (**self).exists()
    }
    fn create(&self) -> Result<(), StorageError> {
        (**self).create()
    }
    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StorageError> {
        (**self).put(kind, name, data)
    }
    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StorageError> {
        (**self).get(kind, name)
    }
    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StorageError> {
        (**self).get_range(kind, name, offset, len)
    }
    fn size(&self, kind: ObjectKind, name: &str) -> Result<u64, StorageError> {
        (**self).size(kind, name)
    }
    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError> {
        (**self).list(kind)
    }
    fn remove(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError> {
        (**self).remove(kind, name)
    }
}
