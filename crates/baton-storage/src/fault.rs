//! A storage wrapper that injects faults, for tests: it fails every `put` after
//! the first N (as a full disk does), every `remove` after the first N, or
//! every write of either kind after the first N (a crash, as far as the
//! repository can tell: nothing after that point reaches storage).

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

/// Limits on deletes, and on writes of any kind. Kept apart from
/// [`FaultPlan`] so that plans written as struct literals keep compiling.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteLimits {
    /// After this many `remove`s, every further `remove` fails.
    pub fail_removes_after: Option<usize>,
    /// After this many writes (`put`s and `remove`s counted together), every
    /// further write fails: a crash at that write, as far as storage can tell.
    pub fail_writes_after: Option<usize>,
}

/// Wraps another storage and injects the faults of a [`FaultPlan`] and of
/// [`WriteLimits`].
pub struct FaultyStorage<S> {
    inner: S,
    plan: Mutex<FaultPlan>,
    limits: Mutex<WriteLimits>,
    puts: AtomicUsize,
    removes: AtomicUsize,
    writes: AtomicUsize,
}

impl<S: Storage> FaultyStorage<S> {
    pub fn new(inner: S, plan: FaultPlan) -> Self {
        FaultyStorage {
            inner,
            plan: Mutex::new(plan),
            limits: Mutex::new(WriteLimits::default()),
            puts: AtomicUsize::new(0),
            removes: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
        }
    }

    /// Replaces the plan (e.g. to "free disk space" again); resets all counters.
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.plan.lock().expect("fault plan lock") = plan;
        self.reset_counters();
    }

    /// Replaces the write limits; resets all counters.
    pub fn set_limits(&self, limits: WriteLimits) {
        *self.limits.lock().expect("fault limits lock") = limits;
        self.reset_counters();
    }

    fn reset_counters(&self) {
        self.puts.store(0, Ordering::SeqCst);
        self.removes.store(0, Ordering::SeqCst);
        self.writes.store(0, Ordering::SeqCst);
    }

    /// Number of `put` calls seen since the plan or limits were set.
    pub fn puts(&self) -> usize {
        self.puts.load(Ordering::SeqCst)
    }

    /// Number of `remove` calls seen since the plan or limits were set.
    pub fn removes(&self) -> usize {
        self.removes.load(Ordering::SeqCst)
    }

    /// Number of `put` and `remove` calls seen since the plan or limits were set.
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }

    fn injected(&self, kind: ObjectKind, name: &str, error: ErrorKind) -> StorageError {
        let message = match error {
            ErrorKind::NoSpace => "injected fault: no space left on device",
            _ => "injected fault",
        };
        StorageError::new(error, format!("{} {name}", kind.dir()), message)
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
        let w = self.writes.fetch_add(1, Ordering::SeqCst);
        let plan = self.plan.lock().expect("fault plan lock").clone();
        let limits = *self.limits.lock().expect("fault limits lock");
        let k = plan.error.unwrap_or(ErrorKind::NoSpace);
        if plan.fail_puts_after.is_some_and(|limit| n >= limit)
            || limits.fail_writes_after.is_some_and(|limit| w >= limit)
        {
            return Err(self.injected(kind, name, k));
        }
        self.inner.put(kind, name, data)
    }
    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StorageError> {
        self.inner.get(kind, name)
    }
    fn get_limited(&self, kind: ObjectKind, name: &str, max: u64) -> Result<Vec<u8>, StorageError> {
        self.inner.get_limited(kind, name, max)
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
    fn list_prefix(&self, kind: ObjectKind, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        self.inner.list_prefix(kind, prefix)
    }
    fn read_range_scratch(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: usize,
        scratch: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>, StorageError> {
        self.inner
            .read_range_scratch(kind, name, offset, len, scratch)
    }
    fn read_range_into(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), StorageError> {
        self.inner.read_range_into(kind, name, offset, buf)
    }
    fn atomic_create(&self) -> bool {
        self.inner.atomic_create()
    }
    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }
    // remove_many: the default, one `remove` at a time, so that every
    // deletion passes the fault plan.
    fn remove(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError> {
        let n = self.removes.fetch_add(1, Ordering::SeqCst);
        let w = self.writes.fetch_add(1, Ordering::SeqCst);
        let limits = *self.limits.lock().expect("fault limits lock");
        if limits.fail_removes_after.is_some_and(|limit| n >= limit)
            || limits.fail_writes_after.is_some_and(|limit| w >= limit)
        {
            let k = self.plan.lock().expect("fault plan lock").error;
            return Err(self.injected(kind, name, k.unwrap_or(ErrorKind::Permanent)));
        }
        self.inner.remove(kind, name)
    }
}

impl<S: Storage + ?Sized> Storage for std::sync::Arc<S> {
    crate::forward_storage!(|this| &**this, |_s, op| {
        #[allow(clippy::redundant_closure_call)]
        op()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalStorage;

    #[test]
    fn write_limits_count_puts_and_removes_together() {
        let d = tempfile::tempdir().unwrap();
        let local = LocalStorage::new(d.path().join("r"));
        local.create().unwrap();
        let s = FaultyStorage::new(local, FaultPlan::default());
        s.set_limits(WriteLimits {
            fail_writes_after: Some(2),
            ..WriteLimits::default()
        });
        s.put(ObjectKind::Snapshot, "a", b"1").unwrap();
        s.remove(ObjectKind::Snapshot, "a").unwrap();
        assert!(s.put(ObjectKind::Snapshot, "b", b"2").is_err());
        assert!(s.remove(ObjectKind::Snapshot, "a").is_err());
        assert_eq!((s.puts(), s.removes(), s.writes()), (2, 2, 4));
        assert!(s.list(ObjectKind::Snapshot).unwrap().is_empty());
        s.set_limits(WriteLimits {
            fail_removes_after: Some(0),
            ..WriteLimits::default()
        });
        s.put(ObjectKind::Snapshot, "c", b"3").unwrap();
        let e = s.remove(ObjectKind::Snapshot, "c").unwrap_err();
        assert!(e.to_string().contains("injected"), "{e}");
        assert_eq!(s.list(ObjectKind::Snapshot).unwrap().len(), 1);
        s.set_limits(WriteLimits::default());
        s.remove(ObjectKind::Snapshot, "c").unwrap();
    }
}
