//! The Baton repository core: creating and opening a repository, keys and
//! the config, the index, locks, the backup journal, and reading and
//! writing sealed objects, blobs and packs; walking the trees of a snapshot
//! (bounded). The file-system source and target (`baton-fs`) and
//! maintenance (`baton-maint`) are built on it. Storage comes in as a
//! `dyn Storage`; progress goes out through [`Progress`]; long operations
//! take a [`Cancel`] handle. Nothing here parses arguments or draws on a
//! terminal.
//!
//! ```no_run
//! use baton_repo::{Repository, InitOptions};
//! use baton_storage::LocalStorage;
//! use std::sync::Arc;
//! let storage = Arc::new(LocalStorage::new("/tmp/repo"));
//! let repo = Repository::init(storage, b"password", &InitOptions::default())?;
//! println!("repository {}", repo.config().id);
//! # Ok::<(), baton_repo::RepoError>(())
//! ```

pub mod browse;
pub mod cache;
pub mod crashpoint;
mod error;
pub mod image;
pub mod index;
pub mod journal;
pub mod lock;
pub mod pipeline;
pub mod progress;
pub mod repo;

pub use baton_format::crypto::{default_kdf_params, kdf_params};
pub use baton_format::pack::{PackEntry, read_header as read_pack_header};
pub use baton_format::random_id;
pub use browse::{
    DiffChange, DiffEntry, MAX_TREE_DEPTH, SnapshotSelect, WALK_EXPANSION, WALK_FLOOR, WalkBudget,
    diff, find_node, preflight, walk_tree,
};
pub use error::{ErrorClass, RepoError, Result};
pub use index::Index;
pub use journal::{JobState, JournalWriter, find_job, forget_job, list_jobs, load_job};
pub use lock::{LockGuard, LockInfo};
pub use progress::{Cancel, EntryStatus, NoProgress, Progress};
pub use repo::{IndexSummary, InitOptions, Repository, SnapshotListing, superseded_index_objects};
