//! `baton repair index` and `baton repair snapshots`.
//!
//! Both take an exclusive lock and only ever add objects before deleting
//! any, so a crash at any point leaves a readable repository.

mod packs;
mod snapshots;

pub use packs::{RepairPacksReport, repair_packs};

pub use snapshots::{
    RemovedEntry, RepairSnapshotsOptions, RepairSnapshotsReport, RepairedSnapshot, repair_snapshots,
};

use crate::check::layout_problem;
use baton_format::index::{IndexFile, IndexPack};
use baton_format::pack::{PackEntry, header_length, parse_header};
use baton_repo::progress::{Cancel, Progress};
use baton_repo::{Repository, Result};
use baton_storage::ObjectKind;
use baton_types::Id;
use std::collections::HashMap;

/// What `repair index` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RepairIndexReport {
    /// Packs in the new index.
    pub packs_indexed: u64,
    pub blobs_indexed: u64,
    /// Packs indexed from the old index because their header is unreadable
    /// (the old entries still fit the pack exactly).
    pub packs_from_old_index: Vec<Id>,
    /// Packs left out, with the reason: their blobs are no longer indexed.
    pub packs_skipped: Vec<(String, String)>,
    /// The index object written (none when there was nothing to index or replace).
    pub new_index: Option<Id>,
    /// Index objects replaced and deleted.
    pub removed: Vec<String>,
}

/// Reads a pack's header with two ranged reads (its length, then the header).
pub(crate) fn read_pack_header(
    repo: &Repository,
    name: &str,
    size: u64,
) -> Result<Vec<PackEntry>, String> {
    if size < 4 {
        return Err(format!("only {size} bytes long"));
    }
    let storage = repo.storage();
    let tail = storage
        .get_range(ObjectKind::Pack, name, size - 4, 4)
        .map_err(|e| e.to_string())?;
    let n = header_length(size, &tail).map_err(|e| e.to_string())? as u64;
    let sealed = storage
        .get_range(ObjectKind::Pack, name, size - 4 - n, n)
        .map_err(|e| e.to_string())?;
    parse_header(repo.key(), &repo.config().id, &sealed, size).map_err(|e| e.to_string())
}

/// Rebuilds the index from the pack headers: writes one index object that
/// lists every readable pack and supersedes every existing index object,
/// then deletes those. Packs of unfinished backups are indexed too.
pub fn repair_index(
    repo: &Repository,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<RepairIndexReport> {
    repo.require_deletes("repair index")?;
    let _lock = repo.lock(true)?;
    let storage = repo.storage();
    let mut report = RepairIndexReport::default();
    // Old entries, for packs whose header cannot be read any more.
    let old_names: Vec<String> = storage
        .list(ObjectKind::Index)?
        .into_iter()
        .map(|o| o.name)
        .collect();
    let mut old: HashMap<Id, Vec<PackEntry>> = HashMap::new();
    let mut damaged: Vec<(Id, Id)> = Vec::new();
    for name in &old_names {
        if let Ok(f) = repo.read_index(name) {
            damaged.extend(f.damaged.iter().copied());
            for p in f.packs {
                old.entry(p.id).or_insert(p.blobs);
            }
        }
    }
    let packs = storage.list(ObjectKind::Pack)?;
    // Progress counts the packs' sizes, though only their headers are read.
    progress.set_total(packs.len() as u64, packs.iter().map(|o| o.size).sum());
    let mut index = IndexFile {
        supersedes: old_names
            .iter()
            .filter_map(|n| Id::from_hex(n).ok())
            .collect(),
        packs: Vec::new(),
        damaged: Vec::new(),
    };
    for o in packs {
        cancel.check()?;
        progress.bytes(o.size);
        let Ok(id) = Id::from_hex(&o.name) else {
            report
                .packs_skipped
                .push((o.name, "not a pack id".to_string()));
            continue;
        };
        let entries = match read_pack_header(repo, &o.name, o.size) {
            Ok(e) => e,
            Err(e) => match old.remove(&id) {
                Some(entries) if layout_problem(&entries, o.size).is_none() => {
                    report.packs_from_old_index.push(id);
                    entries
                }
                _ => {
                    report
                        .packs_skipped
                        .push((o.name, format!("the pack header cannot be read: {e}")));
                    continue;
                }
            },
        };
        report.blobs_indexed += entries.len() as u64;
        index.packs.push(IndexPack { id, blobs: entries });
    }
    report.packs_indexed = index.packs.len() as u64;
    // Damage found by check stays known while its pack exists (rebuilding
    // from pack headers does not read the blobs).
    let present: std::collections::HashSet<Id> = index.packs.iter().map(|p| p.id).collect();
    damaged.sort();
    damaged.dedup();
    index.damaged = damaged
        .into_iter()
        .filter(|(p, _)| present.contains(p))
        .collect();
    if index.packs.is_empty() && index.supersedes.is_empty() {
        return Ok(report);
    }
    // Durable before anything is deleted: a reader that still sees an old
    // object skips it, since the new one names it in `supersedes`.
    let (new_id, _) = repo.save_object(ObjectKind::Index, &index.encode())?;
    report.new_index = Some(new_id);
    for name in old_names {
        if name != new_id.to_hex() {
            storage.remove(ObjectKind::Index, &name)?;
            report.removed.push(name);
        }
    }
    Ok(report)
}
