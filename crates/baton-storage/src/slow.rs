//! A storage wrapper that adds latency to every call, for tests: a remote
//! store's round trips, or a disk under load. Operations stay correct, only
//! slower; pipelines must not deadlock or time out because of it.

use crate::Storage;
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
    crate::forward_storage!(|this| &this.inner, |s, op| {
        s.wait();
        #[allow(clippy::redundant_closure_call)]
        op()
    });
}

#[cfg(test)]
mod tests {
    use crate::{
        ObjectInfo, ObjectKind, RetryPolicy, RetryStorage, SlowStorage, Storage, StorageError,
    };
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    /// Counts the calls that have a default a wrapper could silently fall
    /// back to.
    #[derive(Default)]
    struct Counting {
        scratch: AtomicU32,
        into: AtomicU32,
        prefix: AtomicU32,
        many: AtomicU32,
    }

    impl Storage for Counting {
        fn location(&self) -> String {
            "counting".into()
        }
        fn exists(&self) -> Result<bool, StorageError> {
            Ok(true)
        }
        fn create(&self) -> Result<(), StorageError> {
            Ok(())
        }
        fn put(&self, _: ObjectKind, _: &str, _: &[u8]) -> Result<(), StorageError> {
            Ok(())
        }
        fn get(&self, _: ObjectKind, _: &str) -> Result<Vec<u8>, StorageError> {
            Ok(vec![0; 16])
        }
        fn get_range(
            &self,
            _: ObjectKind,
            _: &str,
            _: u64,
            len: u64,
        ) -> Result<Vec<u8>, StorageError> {
            Ok(vec![0; len as usize])
        }
        fn read_range_scratch(
            &self,
            _: ObjectKind,
            _: &str,
            _: u64,
            len: usize,
            scratch: &mut Vec<u8>,
        ) -> Result<std::ops::Range<usize>, StorageError> {
            self.scratch.fetch_add(1, Ordering::SeqCst);
            scratch.resize(len, 0);
            Ok(0..len)
        }
        fn read_range_into(
            &self,
            _: ObjectKind,
            _: &str,
            _: u64,
            _: &mut [u8],
        ) -> Result<(), StorageError> {
            self.into.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn size(&self, _: ObjectKind, _: &str) -> Result<u64, StorageError> {
            Ok(16)
        }
        fn list(&self, _: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError> {
            Ok(Vec::new())
        }
        fn list_prefix(&self, _: ObjectKind, _: &str) -> Result<Vec<ObjectInfo>, StorageError> {
            self.prefix.fetch_add(1, Ordering::SeqCst);
            Ok(Vec::new())
        }
        fn remove(&self, _: ObjectKind, _: &str) -> Result<(), StorageError> {
            Ok(())
        }
        fn remove_many(&self, _: ObjectKind, _: &[String]) -> Result<(), StorageError> {
            self.many.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn atomic_create(&self) -> bool {
            false
        }
        fn is_remote(&self) -> bool {
            true
        }
    }

    /// Every wrapper, stacked and behind `Arc<dyn Storage>`, reaches the
    /// backend's own fast paths, never a trait default.
    #[test]
    fn wrappers_forward_every_method() {
        let inner = Arc::new(Counting::default());
        let stack: Arc<dyn Storage> = Arc::new(RetryStorage::new(
            SlowStorage::new(inner.clone(), Duration::ZERO),
            RetryPolicy::default(),
        ));
        let mut scratch = Vec::new();
        stack
            .read_range_scratch(ObjectKind::Pack, "a", 0, 4, &mut scratch)
            .unwrap();
        stack
            .read_range_into(ObjectKind::Pack, "a", 0, &mut [0; 4])
            .unwrap();
        stack.list_prefix(ObjectKind::Journal, "x/").unwrap();
        stack.remove_many(ObjectKind::Pack, &["a".into()]).unwrap();
        assert!(!stack.atomic_create());
        assert!(stack.is_remote());
        for (n, what) in [
            (&inner.scratch, "read_range_scratch"),
            (&inner.into, "read_range_into"),
            (&inner.prefix, "list_prefix"),
            (&inner.many, "remove_many"),
        ] {
            assert_eq!(n.load(Ordering::SeqCst), 1, "{what} was not forwarded");
        }
    }
}
