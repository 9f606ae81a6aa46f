//! Errors of repository operations.
//!
//! Policy: every error names the object, path or snapshot it concerns and says
//! what the user can do. The CLI maps the variants below to documented exit
//! codes; callers branch on [`RepoError::kind`]-like matches, never on text.

use baton_format::FormatError;
use baton_storage::StorageError;

#[derive(Debug, thiserror::Error)]
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
    #[error("{0}")]
    Invalid(String),
    #[error("operation cancelled")]
    Cancelled,
    #[error(
        "{path}: no space left on the restore target's device ({cause}); free space and run the same restore again: it keeps what is already restored and verified"
    )]
    TargetFull { path: String, cause: std::io::Error },
}

impl RepoError {
    pub(crate) fn format(what: impl Into<String>, cause: FormatError) -> Self {
        RepoError::Format {
            what: what.into(),
            cause,
        }
    }

    pub(crate) fn io(path: impl AsRef<std::path::Path>, cause: std::io::Error) -> Self {
        RepoError::Io {
            path: path.as_ref().display().to_string(),
            cause,
        }
    }
}

pub type Result<T, E = RepoError> = std::result::Result<T, E>;
