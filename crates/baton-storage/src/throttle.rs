//! A bandwidth limit: `--limit-upload` and `--limit-download`.

use crate::{ErrorKind, ObjectInfo, ObjectKind, Storage, StorageError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A rate in bytes per second, shared by every thread that uses the
/// storage: each transfer books its bytes' time, after what was booked
/// before it, and waits for its turn; so over any stretch longer than one
/// object the average stays at or below the rate. No burst allowance: the
/// time a link was idle is not saved up.
struct Bucket {
    rate: u64,
    next: Mutex<Instant>,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        Bucket {
            rate: rate.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Books `n` bytes; returns when their transfer may start.
    fn book(&self, n: u64) -> Instant {
        let mut next = self.next.lock().expect("bandwidth limit");
        let start = (*next).max(Instant::now());
        *next = start + Duration::from_secs_f64(n as f64 / self.rate as f64);
        start
    }
}

/// Limits the bytes written (`put`) and read (whole and ranged reads) per
/// second. Waits end early, with [`ErrorKind::Cancelled`], once `stop` is
/// set.
pub struct ThrottledStorage {
    inner: Arc<dyn Storage>,
    up: Option<Bucket>,
    down: Option<Bucket>,
    stop: Option<Arc<AtomicBool>>,
}

impl ThrottledStorage {
    /// `upload` and `download` in bytes per second; `None` is no limit.
    pub fn new(inner: Arc<dyn Storage>, upload: Option<u64>, download: Option<u64>) -> Self {
        ThrottledStorage {
            inner,
            up: upload.map(Bucket::new),
            down: download.map(Bucket::new),
            stop: None,
        }
    }

    pub fn with_stop(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    fn wait(&self, bucket: &Option<Bucket>, n: u64, what: &str) -> Result<(), StorageError> {
        let Some(b) = bucket else { return Ok(()) };
        let start = b.book(n);
        loop {
            if self
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
            {
                return Err(StorageError::new(
                    ErrorKind::Cancelled,
                    what,
                    "interrupted while waiting for the bandwidth limit",
                ));
            }
            let now = Instant::now();
            if now >= start {
                return Ok(());
            }
            std::thread::sleep((start - now).min(Duration::from_millis(50)));
        }
    }
}

impl Storage for ThrottledStorage {
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
        self.wait(&self.up, data.len() as u64, name)?;
        self.inner.put(kind, name, data)
    }
    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StorageError> {
        let data = self.inner.get(kind, name)?;
        self.wait(&self.down, data.len() as u64, name)?;
        Ok(data)
    }
    fn get_limited(&self, kind: ObjectKind, name: &str, max: u64) -> Result<Vec<u8>, StorageError> {
        let data = self.inner.get_limited(kind, name, max)?;
        self.wait(&self.down, data.len() as u64, name)?;
        Ok(data)
    }
    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StorageError> {
        self.wait(&self.down, len, name)?;
        self.inner.get_range(kind, name, offset, len)
    }
    fn read_range_scratch(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: usize,
        scratch: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>, StorageError> {
        self.wait(&self.down, len as u64, name)?;
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
        self.wait(&self.down, buf.len() as u64, name)?;
        self.inner.read_range_into(kind, name, offset, buf)
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
    fn list_prefix(&self, kind: ObjectKind, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        self.inner.list_prefix(kind, prefix)
    }
    fn remove_many(&self, kind: ObjectKind, names: &[String]) -> Result<(), StorageError> {
        self.inner.remove_many(kind, names)
    }
    fn atomic_create(&self) -> bool {
        self.inner.atomic_create()
    }
    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalStorage;

    /// 4 MiB through a 2 MiB/s limit take at least 1.5 s (the first put
    /// starts at once, the others wait for the bytes before them).
    #[test]
    fn the_average_rate_stays_under_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(LocalStorage::new(dir.path().join("r")));
        local.create().unwrap();
        let s = ThrottledStorage::new(local, Some(2 << 20), None);
        let t = Instant::now();
        for i in 0..4u8 {
            s.put(ObjectKind::Snapshot, &format!("{i:02x}"), &vec![i; 1 << 20])
                .unwrap();
        }
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(1450), "{took:?}");
        // Downloads book nothing on the upload limit.
        for i in 0..4u8 {
            assert_eq!(
                s.get(ObjectKind::Snapshot, &format!("{i:02x}"))
                    .unwrap()
                    .len(),
                1 << 20
            );
        }
        assert!(s.down.is_none());
    }

    #[test]
    fn a_stop_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(LocalStorage::new(dir.path().join("r")));
        local.create().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = ThrottledStorage::new(local, Some(1024), None).with_stop(stop.clone());
        s.put(ObjectKind::Snapshot, "aa", &[0; 100 << 10]).unwrap();
        stop.store(true, Ordering::Relaxed);
        let e = s.put(ObjectKind::Snapshot, "bb", &[0; 10]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Cancelled);
    }
}
