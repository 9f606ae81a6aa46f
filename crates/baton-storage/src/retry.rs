//! Retrying transient storage errors: one wrapper, one policy, for every
//! backend (a local disk rarely needs it; S3 and network stores do).

use crate::{ErrorKind, Storage, StorageError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often and how long to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in total, including the first.
    pub attempts: u32,
    /// Delay before the first retry; doubled for each further retry.
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Runs `op` until it succeeds, fails permanently, or attempts run out.
    pub fn run<T>(&self, op: impl FnMut() -> Result<T, StorageError>) -> Result<T, StorageError> {
        self.run_until(None, op)
    }

    /// Like [`RetryPolicy::run`]; a wait between attempts ends early, with
    /// [`ErrorKind::Cancelled`], as soon as `stop` is set (Ctrl-C must not
    /// wait out a back-off of minutes).
    pub fn run_until<T>(
        &self,
        stop: Option<&AtomicBool>,
        mut op: impl FnMut() -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut delay = self.initial_delay;
        let mut attempt = 1;
        loop {
            match op() {
                Err(e) if e.kind == ErrorKind::Transient && attempt < self.attempts => {
                    if !wait(jitter(delay), stop) {
                        return Err(StorageError::new(
                            ErrorKind::Cancelled,
                            e.what,
                            format!("cancelled while waiting to retry after: {}", e.message),
                        ));
                    }
                    delay = (delay * 2).min(self.max_delay);
                    attempt += 1;
                }
                Err(mut e) if e.kind == ErrorKind::Transient => {
                    e.message = format!("{} (gave up after {attempt} attempts)", e.message);
                    return Err(e);
                }
                other => return other,
            }
        }
    }
}

/// A random delay between half of `delay` and all of it: many clients that
/// failed together (a gateway restart) do not all retry at one instant.
fn jitter(delay: Duration) -> Duration {
    let mut b = [0u8; 4];
    let r = match getrandom::fill(&mut b) {
        Ok(()) => u32::from_le_bytes(b),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    };
    delay / 2 + (delay / 2).mul_f64(f64::from(r) / f64::from(u32::MAX))
}

/// Sleeps `delay`, in slices, unless `stop` is set; false when stopped.
fn wait(delay: Duration, stop: Option<&AtomicBool>) -> bool {
    let Some(stop) = stop else {
        std::thread::sleep(delay);
        return true;
    };
    let end = Instant::now() + delay;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

/// Wraps a storage and retries its transient errors, per operation. A put
/// that succeeded but whose answer was lost fails with `AlreadyExists` when
/// retried: callers of content-addressed objects treat that as success, but
/// for other names (locks, journal records, the config) it is an error; a
/// backend that can tell its own write (S3 reads the object back) should
/// retry inside, per request, instead.
pub struct RetryStorage<S> {
    inner: S,
    policy: RetryPolicy,
    stop: Option<Arc<AtomicBool>>,
}

impl<S: Storage> RetryStorage<S> {
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        RetryStorage {
            inner,
            policy,
            stop: None,
        }
    }

    /// Waits between attempts end as soon as `stop` is set (a
    /// cancellation flag, e.g. `baton_repo::Cancel::flag`).
    pub fn with_stop(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    fn run<T>(&self, op: impl FnMut() -> Result<T, StorageError>) -> Result<T, StorageError> {
        self.policy.run_until(self.stop.as_deref(), op)
    }
}

impl<S: Storage> Storage for RetryStorage<S> {
    crate::forward_storage!(|this| &this.inner, |s, op| s.run(op));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ObjectKind;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        }
    }

    /// A stop flag ends a back-off at once: an operation that keeps failing
    /// with a transient error, under a policy that would wait an hour, is
    /// tried once and then reported cancelled.
    #[test]
    fn a_stop_flag_interrupts_the_wait() {
        let policy = RetryPolicy {
            attempts: 10,
            initial_delay: Duration::from_secs(3600),
            max_delay: Duration::from_secs(3600),
        };
        let stop = AtomicBool::new(true);
        let mut calls = 0;
        let r: Result<(), _> = policy.run_until(Some(&stop), || {
            calls += 1;
            Err(StorageError::new(
                ErrorKind::Transient,
                "x",
                "connection reset",
            ))
        });
        let e = r.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Cancelled);
        assert_eq!(calls, 1);
    }

    #[test]
    fn transient_errors_are_retried_then_given_up() {
        let calls = AtomicU32::new(0);
        let flaky = |fail: u32| {
            calls.store(0, Ordering::SeqCst);
            let r = fast().run(|| {
                if calls.fetch_add(1, Ordering::SeqCst) < fail {
                    Err(StorageError::new(ErrorKind::Transient, "x", "timed out"))
                } else {
                    Ok(7)
                }
            });
            (r, calls.load(Ordering::SeqCst))
        };
        assert_eq!(flaky(0).0.unwrap(), 7);
        let (r, n) = flaky(3);
        assert_eq!((r.unwrap(), n), (7, 4));
        let (r, n) = flaky(4);
        let e = r.unwrap_err();
        assert_eq!(n, 4);
        assert!(e.message.contains("gave up after 4 attempts"), "{e}");
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = fast().run(|| {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(StorageError::new(ErrorKind::NoSpace, "x", "full"))
        });
        assert_eq!(r.unwrap_err().kind, ErrorKind::NoSpace);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn retried_put_over_a_real_store() {
        let d = tempfile::tempdir().unwrap();
        let local = crate::LocalStorage::new(d.path().join("r"));
        local.create().unwrap();
        let s = RetryStorage::new(local, fast());
        s.put(ObjectKind::Index, "abc", b"1").unwrap();
        // A retry of a put that had landed reports AlreadyExists (treated as success by callers).
        assert!(
            s.put(ObjectKind::Index, "abc", b"1")
                .unwrap_err()
                .is_already_exists()
        );
        assert_eq!(s.get(ObjectKind::Index, "abc").unwrap(), b"1");
    }
}
