use crate::ObjectKind;

/// What went wrong, and whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    /// The device or quota is full.
    NoSpace,
    PermissionDenied,
    /// A fault that may pass (network, timeout, EIO on a flaky device).
    Transient,
    /// Any other failure that will not pass by retrying.
    Permanent,
    Cancelled,
}

/// A storage failure naming the object it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct StorageError {
    pub kind: ErrorKind,
    pub what: String,
    pub message: String,
}

impl StorageError {
    pub fn new(kind: ErrorKind, what: impl Into<String>, message: impl Into<String>) -> Self {
        StorageError {
            kind,
            what: what.into(),
            message: message.into(),
        }
    }

    /// Classifies an I/O error about object `kind/name`.
    pub fn from_io(e: &std::io::Error, kind: ObjectKind, name: &str, action: &str) -> Self {
        use std::io::ErrorKind as K;
        let k = match e.kind() {
            K::NotFound => ErrorKind::NotFound,
            K::AlreadyExists => ErrorKind::AlreadyExists,
            K::PermissionDenied => ErrorKind::PermissionDenied,
            K::StorageFull | K::QuotaExceeded => ErrorKind::NoSpace,
            K::Interrupted | K::TimedOut | K::WouldBlock => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        };
        let what = match kind {
            ObjectKind::Config => "config".to_string(),
            _ => format!("{} {}", kind.dir(), name),
        };
        let message = if k == ErrorKind::NoSpace {
            format!("{action} failed: no space left on the repository's device ({e})")
        } else {
            format!("{action} failed: {e}")
        };
        StorageError::new(k, what, message)
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    pub fn is_already_exists(&self) -> bool {
        self.kind == ErrorKind::AlreadyExists
    }

    /// Whether retrying the same call may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}
