//! The file-system source and target of Baton: backup (the archiver that
//! walks a tree in the journal's order, the chunk/compress/seal pipeline,
//! checkpoints, read-ahead), restore (through one handle of the target
//! directory, in pack order on every core), file metadata, and dump (a file
//! or a tar stream). Built on the repository core (`baton-repo`); nothing
//! here parses arguments or draws on a terminal.
//!
//! ```no_run
//! use baton_repo::{Repository, InitOptions, NoProgress, Cancel};
//! use baton_fs::BackupOptions;
//! use baton_storage::LocalStorage;
//! use std::sync::Arc;
//! let storage = Arc::new(LocalStorage::new("/tmp/repo"));
//! let mut repo = Repository::init(storage, b"password", &InitOptions::default())?;
//! let opts = BackupOptions { paths: vec!["/etc".into()], ..Default::default() };
//! let result = baton_fs::backup(&mut repo, &opts, None, &NoProgress, &Cancel::new())?;
//! println!("snapshot {:?}", result.snapshot_id);
//! # Ok::<(), baton_repo::RepoError>(())
//! ```

mod backup;
mod dump;
mod filter;
mod meta;
mod restore;

pub use backup::{BackupOptions, BackupResult, ResumeMode, backup};
pub use dump::dump;
pub use filter::PatternSet;
pub use restore::{
    Overwrite, PlanAction, RestoreOptions, RestorePlan, RestoreSummary, plan_restore, restore,
};
