//! Maintenance of a Baton repository: `check` (structure, and with
//! `--read-data` every byte), `repair` (index, snapshots, packs), `forget`
//! (retention policies), `prune` (garbage collection), `stats`, and `copy`
//! (snapshots into another repository). Built on the
//! repository core (`baton-repo`); nothing here parses arguments or draws on
//! a terminal. Every operation takes a cancellation handle.

mod check;
mod copy;
mod forget;
mod prune;
mod repair;
mod rewrite;
mod stats;
mod tag;

pub use check::{
    CheckOptions, CheckReport, Problem, ProblemKind, ReadData, Severity, Subset, check,
};
pub use copy::{AlreadyCopied, CopiedSnapshot, CopyOptions, CopyReport, copy, verify_complete};
pub use forget::{
    ForgetEntry, ForgetGroup, ForgetOptions, ForgetResult, GroupBy, GroupKey, KeepPolicy,
    KeepReason, PolicyInput, SnapTime, Within, apply_policy, forget, forget_locked, plan_forget,
};
pub use prune::{
    ForgottenJob, MaxUnused, PlanStats, PruneOptions, PruneResult, prune, prune_locked,
};
pub use repair::{
    RemovedEntry, RepairIndexReport, RepairPacksReport, RepairSnapshotsOptions,
    RepairSnapshotsReport, RepairedSnapshot, repair_index, repair_packs, repair_snapshots,
};
pub use rewrite::{RewriteOptions, RewriteReport, Rewritten, rewrite};
pub use stats::{Stats, stats};
pub use tag::{Retagged, TagChange, TagReport, tag};
