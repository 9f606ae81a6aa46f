//! A storage that records every completed put and remove, so a test can
//! rebuild the repository as a crash after any acknowledged write leaves it.

use baton_storage::{LocalStorage, ObjectInfo, ObjectKind, Storage, StorageError};
use std::sync::Mutex;

#[derive(Clone)]
pub enum Op {
    Put(ObjectKind, String, Vec<u8>),
    Remove(ObjectKind, String),
}

pub struct Recording {
    pub inner: LocalStorage,
    pub ops: Mutex<Vec<Op>>,
}

impl Storage for Recording {
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
        self.inner.put(kind, name, data)?;
        self.ops
            .lock()
            .unwrap()
            .push(Op::Put(kind, name.to_string(), data.to_vec()));
        Ok(())
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
        self.inner.remove(kind, name)?;
        self.ops
            .lock()
            .unwrap()
            .push(Op::Remove(kind, name.to_string()));
        Ok(())
    }
}

impl Recording {
    pub fn new(inner: LocalStorage) -> Self {
        Recording {
            inner,
            ops: Mutex::new(Vec::new()),
        }
    }
}

/// Applies recorded operations to a storage.
pub fn replay(s: &dyn Storage, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Put(kind, name, data) => s.put(*kind, name, data).unwrap(),
            Op::Remove(kind, name) => s.remove(*kind, name).unwrap(),
        }
    }
}
