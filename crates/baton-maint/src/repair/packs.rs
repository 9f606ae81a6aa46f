//! `baton repair packs`: replaces damaged packs. The intact blobs of each
//! pack are copied (their sealed bytes as they are: a seal is bound to the
//! blob's type and id, not to its pack) into new packs; one index object
//! then lists every other pack, the new ones, and the damage known in packs
//! that stay, superseding every index object; then the old index objects and
//! the damaged packs are deleted. Blobs that could not be read are gone from
//! the index: the next backup of the files that used them stores them again
//! (`check` reports the snapshots that lost them until `repair snapshots`).

use baton_format::index::{IndexFile, IndexPack};
use baton_format::pack::{PackEntry, PackWriter, open_blob};
use baton_repo::progress::{Cancel, Progress};
use baton_repo::{RepoError, Repository, Result};
use baton_storage::ObjectKind;
use baton_types::Id;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// What `repair packs` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RepairPacksReport {
    /// The packs replaced (deleted).
    pub packs: Vec<Id>,
    /// Blobs copied intact into new packs.
    pub blobs_salvaged: u64,
    /// Blobs that could not be read: no longer indexed.
    pub blobs_lost: u64,
    /// New packs written.
    pub packs_written: Vec<Id>,
    /// The index object written.
    pub new_index: Option<Id>,
}

/// Replaces `packs` (all packs with damage recorded by `check`, when empty).
pub fn repair_packs(
    repo: &mut Repository,
    packs: &[Id],
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<RepairPacksReport> {
    repo.require_deletes("repair packs")?;
    let lock = repo.lock(true)?;
    let storage = repo.storage().clone();
    // Every current index object, superseded ones left out.
    let names: Vec<String> = storage
        .list(ObjectKind::Index)?
        .into_iter()
        .map(|o| o.name)
        .collect();
    let mut files = Vec::new();
    for name in &names {
        let f = repo.read_index(name)?;
        files.push((name.clone(), f));
    }
    let summaries: Vec<baton_repo::IndexSummary> = files
        .iter()
        .map(|(name, f)| baton_repo::IndexSummary::of(name, f))
        .collect();
    let superseded = baton_repo::superseded_index_objects(&summaries, || repo.stored_packs())?;
    let live = |name: &str| Id::from_hex(name).is_ok_and(|id| !superseded.contains(&id));
    let mut entries: BTreeMap<Id, Vec<PackEntry>> = BTreeMap::new();
    let mut damaged: BTreeSet<(Id, Id)> = BTreeSet::new();
    for (name, f) in &files {
        if !live(name) {
            continue;
        }
        for p in &f.packs {
            entries.entry(p.id).or_insert_with(|| p.blobs.clone());
        }
        damaged.extend(f.damaged.iter().copied());
    }
    let targets: Vec<Id> = if packs.is_empty() {
        let mut t: Vec<Id> = damaged.iter().map(|(p, _)| *p).collect();
        t.dedup();
        t
    } else {
        packs.to_vec()
    };
    let mut report = RepairPacksReport::default();
    if targets.is_empty() {
        return Ok(report);
    }
    for t in &targets {
        if !entries.contains_key(t) && storage.size(ObjectKind::Pack, &t.to_hex()).is_err() {
            return Err(RepoError::NotFound(format!(
                "pack {t} is neither indexed nor stored"
            )));
        }
    }
    let key = repo.key().clone();
    let mut new_packs: Vec<IndexPack> = Vec::new();
    let mut w = PackWriter::new();
    let mut salvaged: HashSet<Id> = HashSet::new();
    for t in &targets {
        cancel.check()?;
        lock.ensure_fresh()?;
        let listed = entries.get(t).cloned().unwrap_or_default();
        let bytes = match storage.get(ObjectKind::Pack, &t.to_hex()) {
            Ok(b) => Some(b),
            // Missing: nothing to salvage. Any other failure may pass (or
            // needs a person): the pack is not replaced on its account.
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(b) = &bytes {
            progress.bytes(b.len() as u64);
        }
        for e in &listed {
            let sealed = bytes
                .as_ref()
                .and_then(|b| b.get(e.offset as usize..e.offset as usize + e.length as usize));
            // Verified here (decrypted, hash checked): a blob that reads
            // back intact now is kept, whatever was recorded before.
            let intact = sealed.is_some_and(|s| {
                open_blob(&key, e.blob_type, &e.id, s, e.raw_length, e.compressed).is_ok()
            });
            match sealed {
                Some(s) if intact && salvaged.insert(e.id) => {
                    w.add(e.blob_type, e.id, s, e.raw_length, e.compressed);
                    report.blobs_salvaged += 1;
                }
                Some(_) if intact => {}
                _ => report.blobs_lost += 1,
            }
            if w.size() as u64 >= repo.config().pack_size {
                let full = std::mem::take(&mut w);
                let (p, _) = repo.store_pack(full)?;
                report.packs_written.push(p.id);
                new_packs.push(p);
            }
        }
    }
    if !w.is_empty() {
        let (p, _) = repo.store_pack(w)?;
        report.packs_written.push(p.id);
        new_packs.push(p);
    }
    // One index for everything, durable before anything is deleted.
    let replaced: HashSet<Id> = targets.iter().copied().collect();
    let mut index = IndexFile {
        supersedes: names.iter().filter_map(|n| Id::from_hex(n).ok()).collect(),
        packs: entries
            .into_iter()
            .filter(|(id, _)| !replaced.contains(id))
            .map(|(id, blobs)| IndexPack { id, blobs })
            .collect(),
        damaged: damaged
            .into_iter()
            .filter(|(p, _)| !replaced.contains(p))
            .collect(),
    };
    index.packs.extend(new_packs);
    cancel.check()?;
    lock.ensure_fresh()?;
    let (new_id, _) = repo.save_object(ObjectKind::Index, &index.encode())?;
    report.new_index = Some(new_id);
    for name in &names {
        if *name != new_id.to_hex() {
            storage.remove(ObjectKind::Index, name)?;
        }
    }
    for t in &targets {
        lock.ensure_fresh()?;
        storage.remove(ObjectKind::Pack, &t.to_hex())?;
    }
    report.packs = targets;
    drop(lock);
    repo.load_index()?;
    Ok(report)
}
