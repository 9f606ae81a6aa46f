//! Progress reporting and cancellation for long operations. Library code calls
//! these; the CLI draws progress bars from them.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Receives progress of a backup or restore. All methods have empty defaults.
pub trait Progress: Send + Sync {
    /// Whether the caller wants totals (a metadata-only pre-scan runs for them).
    fn wants_totals(&self) -> bool {
        false
    }
    /// Totals from the pre-scan, when it finishes.
    fn set_total(&self, _files: u64, _bytes: u64) {}
    /// A file or directory is being processed (for verbose listings).
    fn entry(&self, _path: &Path, _status: EntryStatus) {}
    /// `n` more bytes of file content were processed (read, or skipped as unchanged).
    fn bytes(&self, _n: u64) {}
    /// A path could not be processed; the operation goes on.
    fn error(&self, _path: &str, _message: &str) {}
    /// The operation entered a phase (backup: "reading", "uploading",
    /// "finishing"; restore: "restoring", "verifying").
    fn phase(&self, _phase: &str) {}
}

/// What happened to one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryStatus {
    New,
    Changed,
    Unmodified,
    Restored,
}

/// A progress sink that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// A cancellation handle: cheap to clone, checked between files and chunks.
/// It can carry a reason (e.g. "the repository lock was lost"), which then
/// becomes the operation's error instead of a plain cancellation.
#[derive(Clone, Default, Debug)]
pub struct Cancel(Arc<CancelInner>);

#[derive(Default, Debug)]
struct CancelInner {
    flag: Arc<AtomicBool>,
    reason: Mutex<Option<String>>,
}

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.flag.store(true, Ordering::SeqCst)
    }
    /// Cancels with a reason that the operation reports as its error.
    pub fn abort(&self, reason: impl Into<String>) {
        *self.0.reason.lock().expect("cancel reason") = Some(reason.into());
        self.cancel();
    }
    /// The flag itself, for layers below that know no `Cancel` (the
    /// storage's retry waits: `RetryStorage::with_stop`).
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.flag.clone()
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.flag.load(Ordering::Relaxed)
    }
    /// Returns an error once cancelled.
    pub fn check(&self) -> crate::Result<()> {
        if !self.is_cancelled() {
            return Ok(());
        }
        match self.0.reason.lock().expect("cancel reason").clone() {
            Some(r) => Err(crate::RepoError::LockLost(r)),
            None => Err(crate::RepoError::Cancelled),
        }
    }
}
