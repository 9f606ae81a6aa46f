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
