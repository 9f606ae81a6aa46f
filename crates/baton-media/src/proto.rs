//! The storage protocol between agents and media agents (HTTPS, mutual
//! TLS, wire version header on every request):
//!
//! | request | meaning |
//! |---|---|
//! | `GET /v1/repo/{pool}` | `{"exists": bool}`: whether the repository has a config |
//! | `POST /v1/repo/{pool}` | prepares an empty location (create) |
//! | `GET /v1/repo/{pool}/{kind}?prefix=P` | `[{"name","size"}]` |
//! | `GET /v1/repo/{pool}/{kind}/{name}` | the object; `?offset=&len=` a range, `?max=` a bound, `?stat` `{"size"}` |
//! | `PUT /v1/repo/{pool}/{kind}/{name}` | creates it (201), 409 if the name is taken with other bytes |
//! | `DELETE /v1/repo/{pool}/{kind}/{name}` | `locks` and `journal` only; 403 otherwise |
//!
//! Kinds are the repository's directories (`config`, `keys`, `data`,
//! `index`, `snapshots`, `locks`, `journal`). Errors are
//! `baton_wire::ApiError` with the storage error's kind in its code.

use baton_storage::{ErrorKind, ObjectKind};

/// The path segment of an object kind.
pub fn kind_name(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Config => "config",
        k => k.dir(),
    }
}

pub fn parse_kind(s: &str) -> Option<ObjectKind> {
    ObjectKind::ALL.into_iter().find(|k| kind_name(*k) == s)
}

/// Whether a client may delete objects of this kind: only what its own
/// operations make and end (its lock; its job's journal when the snapshot
/// is sealed). Data, indexes, snapshots, keys and the config are append-only.
pub fn client_may_delete(kind: ObjectKind) -> bool {
    matches!(kind, ObjectKind::Lock | ObjectKind::Journal)
}

/// The HTTP status a storage error is answered with.
pub fn status_of(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::NotFound => 404,
        ErrorKind::AlreadyExists => 409,
        ErrorKind::NoSpace => 507,
        ErrorKind::PermissionDenied => 403,
        ErrorKind::Transient | ErrorKind::Cancelled => 503,
        ErrorKind::Permanent => 500,
    }
}

/// The storage error kind of an HTTP status from a media agent.
pub fn kind_of(status: u16) -> ErrorKind {
    match status {
        404 => ErrorKind::NotFound,
        409 => ErrorKind::AlreadyExists,
        507 => ErrorKind::NoSpace,
        401 | 403 => ErrorKind::PermissionDenied,
        502..=504 | 429 | 408 => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Exists {
    pub exists: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Size {
    pub size: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Listed {
    pub name: String,
    pub size: u64,
}

/// The largest object a media agent takes in one request (the largest
/// pack a repository may be configured with, and its header).
pub const MAX_OBJECT: usize = (1 << 30) + (1 << 20);

pub use baton_wire::MAX_JOURNAL_RECORD;
