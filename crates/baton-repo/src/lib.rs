//! A Baton repository and the operations on it: init and keys, backup,
//! restore, browsing (ls, diff, dump, find), check and repair, forget and
//! prune, and locks. Storage comes in as a `dyn Storage`; progress goes out
//! through [`Progress`]; long operations take a [`Cancel`] handle. Nothing
//! here parses arguments or draws on a terminal.
//!
//! ```no_run
//! use baton_repo::{Repository, InitOptions, BackupOptions, NoProgress, Cancel};
//! use baton_storage::LocalStorage;
//! use std::sync::Arc;
//! let storage = Arc::new(LocalStorage::new("/tmp/repo"));
//! let mut repo = Repository::init(storage, b"password", &InitOptions::default())?;
//! let opts = BackupOptions { paths: vec!["/etc".into()], ..Default::default() };
//! let result = baton_repo::backup(&mut repo, &opts, None, &NoProgress, &Cancel::new())?;
//! println!("snapshot {:?}", result.snapshot_id);
//! # Ok::<(), baton_repo::RepoError>(())
//! ```

mod backup;
mod browse;
mod check;
mod crashpoint;
mod dump;
mod error;
mod filter;
mod forget;
mod index;
mod journal;
mod lock;
mod meta;
mod progress;
mod prune;
mod repair;
mod repo;
mod restore;

pub use backup::{BackupOptions, BackupResult, ResumeMode, backup};
pub use baton_format::crypto::{default_kdf_params, kdf_params};
pub use baton_format::pack::{PackEntry, read_header as read_pack_header};
pub use baton_format::random_id;
pub use browse::{DiffChange, DiffEntry, MAX_TREE_DEPTH, WalkBudget, diff, find_node, walk_tree};
pub use check::{
    CheckOptions, CheckReport, Problem, ProblemKind, ReadData, Severity, Subset, check,
};
pub use dump::dump;
pub use error::{ErrorClass, RepoError, Result};
pub use filter::PatternSet;
pub use forget::{
    ForgetEntry, ForgetGroup, ForgetOptions, ForgetResult, GroupBy, GroupKey, KeepPolicy,
    KeepReason, PolicyInput, SnapTime, Within, apply_policy, forget, forget_locked, plan_forget,
};
pub use index::Index;
pub use journal::{JobState, JournalWriter, find_job, forget_job, list_jobs, load_job};
pub use lock::{LockGuard, LockInfo};
pub use progress::{Cancel, EntryStatus, NoProgress, Progress};
pub use prune::{
    ForgottenJob, MaxUnused, PlanStats, PruneOptions, PruneResult, prune, prune_locked,
};
pub use repair::{
    RemovedEntry, RepairIndexReport, RepairPacksReport, RepairSnapshotsOptions,
    RepairSnapshotsReport, RepairedSnapshot, repair_index, repair_packs, repair_snapshots,
};
pub use repo::{InitOptions, Repository, SnapshotListing};
pub use restore::{RestoreOptions, RestoreSummary, restore};
