//! Errors of repository operations.
//!
//! Policy: every error names the object, path or snapshot it concerns and says
//! what the user can do. The CLI maps the variants below to documented exit
//! codes; callers branch on [`RepoError::kind`]-like matches, never on text.

use baton_format::FormatError;
use baton_storage::StorageError;

/// What a caller (a director scheduling jobs, a person at a terminal) should
/// do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// It may pass: try the same operation again later (a storage fault
    /// that may be transient, a lock held by another operation).
    RetryLater,
    /// Something is wrong that needs a person: damage, a lost lock, a full
    /// device, an internal failure.
    AlertHuman,
    /// The request itself is wrong (bad arguments, wrong password, refused
    /// by an append-only key): retrying it unchanged fails again.
    UserError,
    /// The operation was cancelled on purpose.
    Cancelled,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    #[error("no repository at {location} (create one with `baton init`)")]
    NoRepository { location: String },
    #[error("a repository already exists at {location}")]
    AlreadyExists { location: String },
    #[error("wrong password: no key in the repository opens with it")]
    WrongPassword,
    #[error("repository is locked: {holder}; if that process is gone, run `baton unlock`")]
    Locked { holder: String },
    #[error(
        "repository format version {found} is newer than this baton supports ({supported}); upgrade baton"
    )]
    NewerFormat { found: u32, supported: u32 },
    #[error(
        "the repository at {location} has format version {found}, which this baton no longer opens (it reads version {supported}, which binds every sealed object to its role). \
         Read it with the baton release that wrote it (0.1), restore what you need, and back it up again into a new repository made with `baton init`"
    )]
    OldFormat {
        location: String,
        found: u32,
        supported: u32,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    // The cause is part of the message and deliberately not a `source()`:
    // the CLI prints error chains, and it would appear twice.
    #[error("{what}: {cause}")]
    Format { what: String, cause: FormatError },
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("{0}")]
    NotFound(String),
    /// Invalid input: arguments or options that cannot work.
    #[error("{0}")]
    Invalid(String),
    /// Repository content that is damaged or inconsistent (or crafted).
    #[error("{0}")]
    Damaged(String),
    /// Refused because the key in use is append-only.
    #[error("{0}")]
    AppendOnly(String),
    /// The repository lock could not be kept: the operation stopped before
    /// others could take the lock for stale.
    #[error("{0}")]
    LockLost(String),
    /// A failure of Baton itself (a worker thread panicked).
    #[error("internal error: {0}")]
    Internal(String),
    #[error("operation cancelled")]
    Cancelled,
    #[error(
        "{path}: no space left on the restore target's device ({cause}); free space and run the same restore again: it keeps what is already restored and verified"
    )]
    TargetFull { path: String, cause: std::io::Error },
}

impl RepoError {
    /// What to do about this error (see [`ErrorClass`]).
    pub fn class(&self) -> ErrorClass {
        use baton_storage::ErrorKind as K;
        match self {
            RepoError::Locked { .. } => ErrorClass::RetryLater,
            RepoError::Storage(e) => match e.kind {
                K::Transient => ErrorClass::RetryLater,
                K::Cancelled => ErrorClass::Cancelled,
                K::NotFound | K::AlreadyExists => ErrorClass::UserError,
                K::NoSpace | K::PermissionDenied | K::Permanent => ErrorClass::AlertHuman,
            },
            RepoError::Cancelled => ErrorClass::Cancelled,
            RepoError::NoRepository { .. }
            | RepoError::AlreadyExists { .. }
            | RepoError::WrongPassword
            | RepoError::NotFound(_)
            | RepoError::Invalid(_)
            | RepoError::AppendOnly(_)
            | RepoError::NewerFormat { .. }
            | RepoError::OldFormat { .. } => ErrorClass::UserError,
            RepoError::Format { .. }
            | RepoError::Damaged(_)
            | RepoError::LockLost(_)
            | RepoError::Internal(_)
            | RepoError::TargetFull { .. } => ErrorClass::AlertHuman,
            RepoError::Io { cause, .. } => match cause.kind() {
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut => {
                    ErrorClass::RetryLater
                }
                _ => ErrorClass::AlertHuman,
            },
        }
    }

    pub fn format(what: impl Into<String>, cause: FormatError) -> Self {
        RepoError::Format {
            what: what.into(),
            cause,
        }
    }

    pub fn io(path: impl AsRef<std::path::Path>, cause: std::io::Error) -> Self {
        RepoError::Io {
            path: path.as_ref().display().to_string(),
            cause,
        }
    }
}

pub type Result<T, E = RepoError> = std::result::Result<T, E>;
