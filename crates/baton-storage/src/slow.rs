//! A storage wrapper that adds latency to every call, for tests: a remote
//! store's round trips, or a disk under load. Operations stay correct, only
//! slower; pipelines must not deadlock or time out because of it.

use crate::{ObjectInfo, ObjectKind, Storage, StorageError};
use std::time::Duration;

/// Sleeps `delay` before each call of the wrapped storage.
pub struct SlowStorage<S> {
    inner: S,
    delay: Duration,
}

impl<S: Storage> SlowStorage<S> {
    pub fn new(inner: S, delay: Duration) -> Self {
        SlowStorage { inner, delay }
    }
    fn wait(&self) {
        std::thread::sleep(self.delay);
    }
}

impl<S: Storage> Storage for SlowStorage<S> {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn exists(&self) -> Result<bool, StorageError> {
        self.wait();
        self.inner.exists()
    }
    fn create(&self) -> Result<(), StorageError> {
        self.wait();
        self.inner.create()
    }
    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StorageError> {
        self.wait();
        self.inner.put(kind, name, data)
    }
    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StorageError> {
        self.wait();
        self.inner.get(kind, name)
    }
    fn get_limited(&self, kind: ObjectKind, name: &str, max: u64) -> Result<Vec<u8>, StorageError> {
        self.wait();
        self.inner.get_limited(kind, name, max)
    }
    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StorageError> {
        self.wait();
        self.inner.get_range(kind, name, offset, len)
    }
    fn size(&self, kind: ObjectKind, name: &str) -> Result<u64, StorageError> {
        self.wait();
        self.inner.size(kind, name)
    }
    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError> {
        self.wait();
        self.inner.list(kind)
    }
    fn remove(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError> {
        self.wait();
        self.inner.remove(kind, name)
    }
}
