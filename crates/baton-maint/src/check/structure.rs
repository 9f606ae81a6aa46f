//! The structure pass of `check`: metadata objects, the index against the
//! pack listing, and every tree reachable from a snapshot.

use super::{Checker, ProblemKind, Severity};
use baton_format::index::IndexFile;
use baton_format::object::from_json;
use baton_format::storage_id;
use baton_repo::Result;
use baton_storage::ObjectKind;
use baton_types::{BlobType, Config, Id, JournalRecord, KeyFile, Snapshot, hex_encode};
use std::collections::HashSet;

/// The label of an object kind in problem reports.
fn label(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Config => "config",
        ObjectKind::Key => "key",
        ObjectKind::Pack => "pack",
        ObjectKind::Index => "index",
        ObjectKind::Snapshot => "snapshot",
        ObjectKind::Lock => "lock",
        ObjectKind::Journal => "journal",
    }
}

/// "tree <id>", "blob <id>" or "fixed index <id>".
pub(crate) fn blob_object(t: BlobType, id: &Id) -> String {
    match t {
        BlobType::Tree => format!("tree {id}"),
        BlobType::Data => format!("blob {id}"),
        BlobType::Fixed => format!("fixed index {id}"),
    }
}

/// A problem found reading one object: kind, object, message.
type Finding = (ProblemKind, String, String);

/// Reads a content-addressed object and compares its hash with its name.
fn read_named(
    repo: &baton_repo::Repository,
    kind: ObjectKind,
    name: &str,
) -> (Option<Vec<u8>>, Vec<Finding>) {
    let object = format!("{} {name}", label(kind));
    let bytes =
        match repo
            .storage()
            .get_limited(kind, name, baton_repo::repo::max_object_size(kind))
        {
            Ok(b) => b,
            Err(e) => return (None, vec![(ProblemKind::Unreadable, object, e.to_string())]),
        };
    let problem = match Id::from_hex(name) {
        Err(_) => Some((
            ProblemKind::InvalidName,
            object,
            "the name is not a 64-digit hex id, so it cannot be verified".to_string(),
        )),
        Ok(id) => {
            let actual = storage_id(&bytes);
            (actual != id).then(|| {
                (
                    ProblemKind::HashMismatch,
                    object,
                    format!(
                        "its {} bytes hash to {actual}: the object is damaged, or was renamed",
                        bytes.len()
                    ),
                )
            })
        }
    };
    (Some(bytes), problem.into_iter().collect())
}

/// Smallest sealed pack header: nonce, magic, count, tag.
const MIN_HEADER: u64 = 40 + 12;

impl Checker<'_> {
    /// Reads a content-addressed object and checks that its bytes hash to
    /// its name. Returns the bytes (even on a mismatch, so that decoding can
    /// still say more), or `None` when it cannot be read.
    fn read_named(&mut self, kind: ObjectKind, name: &str) -> Option<Vec<u8>> {
        let (bytes, problems) = read_named(self.repo, kind, name);
        for (kind, object, message) in problems {
            self.error(kind, object, message, vec![]);
        }
        bytes
    }

    /// Key files: plaintext JSON named by their hash. The config must decode.
    pub fn check_keys_and_config(&mut self) -> Result<()> {
        for k in self.repo.storage().list(ObjectKind::Key)? {
            if let Some(bytes) = self.read_named(ObjectKind::Key, &k.name)
                && let Err(e) = from_json::<KeyFile>("key file", &bytes)
            {
                self.error(
                    ProblemKind::Damaged,
                    format!("key {}", k.name),
                    e.to_string(),
                    vec![],
                );
            }
        }
        let config = self
            .repo
            .load_object(ObjectKind::Config, "")
            .map_err(|e| e.to_string())
            .and_then(|p| from_json::<Config>("config", &p).map_err(|e| e.to_string()))
            .and_then(|c| c.validate().map_err(|e| format!("config: {e}")));
        if let Err(e) = config {
            self.error(ProblemKind::Damaged, "config".into(), e, vec![]);
        }
        Ok(())
    }

    pub fn load_snapshots(&mut self) -> Result<()> {
        let listed = self.repo.storage().list(ObjectKind::Snapshot)?;
        self.report.snapshots = listed.len() as u64;
        for o in listed {
            self.cancel.check()?;
            let Some(bytes) = self.read_named(ObjectKind::Snapshot, &o.name) else {
                continue;
            };
            let decoded = self
                .repo
                .open_sealed(ObjectKind::Snapshot, &o.name, &bytes)
                .and_then(|p| {
                    from_json::<Snapshot>("snapshot", &p).map_err(|e| {
                        baton_repo::RepoError::format(format!("snapshot {}", o.name), e)
                    })
                });
            match (decoded, Id::from_hex(&o.name)) {
                (Ok(s), Ok(id)) => self.snapshots.push((id, s)),
                (Ok(_), Err(_)) => {}
                (Err(e), _) => self.error(
                    ProblemKind::Damaged,
                    format!("snapshot {}", o.name),
                    e.to_string(),
                    vec![],
                ),
            }
        }
        self.snapshots
            .sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        // A parent that no longer exists is not reported: forgetting old
        // snapshots (whose children name them) is what forget is for, and
        // the parent only ever served to skip unchanged files.
        Ok(())
    }

    /// Reads every index object; a damaged one is reported and skipped.
    /// Problems of superseded index objects (replaced, awaiting deletion by
    /// an interrupted `repair index`) are only warnings.
    pub fn load_index(&mut self) -> Result<()> {
        let listed = self.repo.storage().list(ObjectKind::Index)?;
        self.report.index_objects = listed.len() as u64;
        let mut files: Vec<(String, IndexFile)> = Vec::new();
        let mut found: Vec<(String, Finding)> = Vec::new();
        for o in listed {
            self.cancel.check()?;
            let (bytes, problems) = read_named(self.repo, ObjectKind::Index, &o.name);
            found.extend(problems.into_iter().map(|p| (o.name.clone(), p)));
            let Some(bytes) = bytes else { continue };
            let decoded = self
                .repo
                .open_sealed(ObjectKind::Index, &o.name, &bytes)
                .and_then(|p| {
                    IndexFile::decode(&p)
                        .map_err(|e| baton_repo::RepoError::format(format!("index {}", o.name), e))
                });
            match decoded {
                Ok(f) => files.push((o.name, f)),
                Err(e) => found.push((
                    o.name.clone(),
                    (
                        ProblemKind::Damaged,
                        format!("index {}", o.name),
                        format!(
                            "{e}; the packs it lists are not indexed (run `baton repair index`)"
                        ),
                    ),
                )),
            }
        }
        let summaries: Vec<baton_repo::IndexSummary> = files
            .iter()
            .map(|(name, f)| baton_repo::IndexSummary::of(name, f))
            .collect();
        let superseded: HashSet<Id> =
            baton_repo::superseded_index_objects(&summaries, || self.repo.stored_packs())?;
        let is_superseded =
            |name: &str| Id::from_hex(name).is_ok_and(|id| superseded.contains(&id));
        for (name, (kind, object, message)) in found {
            if is_superseded(&name) {
                let message = format!(
                    "{message} (superseded, no longer used: `baton repair index` deletes it)"
                );
                self.problem(Severity::Warning, kind, object, message, vec![]);
            } else {
                self.error(kind, object, message, vec![]);
            }
        }
        for (name, f) in files {
            if is_superseded(&name) {
                continue;
            }
            self.index.load_file(&f);
            for p in f.packs {
                match self.indexed_packs.get(&p.id) {
                    None => {
                        self.indexed_packs.insert(p.id, (p.blobs, name.clone()));
                    }
                    Some((entries, first)) if !same_entries(entries, &p.blobs) => {
                        let msg = format!(
                            "index {first} and index {name} list different blobs for this pack"
                        );
                        self.error(
                            ProblemKind::IndexMismatch,
                            format!("pack {}", p.id),
                            msg,
                            vec![],
                        );
                    }
                    Some(_) => {}
                }
            }
        }
        self.index.compact();
        Ok(())
    }

    pub fn list_packs(&mut self) -> Result<()> {
        for o in self.repo.storage().list(ObjectKind::Pack)? {
            match Id::from_hex(&o.name) {
                Ok(id) => {
                    self.stored_packs.insert(id, o.size);
                }
                Err(_) => self.error(
                    ProblemKind::InvalidName,
                    format!("pack {}", o.name),
                    "a file in data/ whose name is not a pack id".into(),
                    vec![],
                ),
            }
        }
        self.report.packs = self.stored_packs.len() as u64;
        Ok(())
    }

    /// Journal records of unfinished jobs: each must decode; the packs they
    /// name belong to a resumable backup and are not garbage.
    pub fn load_journals(&mut self) -> Result<()> {
        for o in self.repo.storage().list(ObjectKind::Journal)? {
            self.cancel.check()?;
            let object = format!("journal {}", o.name);
            let rec = self
                .repo
                .load_object(ObjectKind::Journal, &o.name)
                .map_err(|e| e.to_string())
                .and_then(|p| {
                    from_json::<JournalRecord>("journal record", &p).map_err(|e| e.to_string())
                });
            let rec = match rec {
                Ok(r) => r,
                Err(e) => {
                    let msg = format!(
                        "{e}; the job cannot be resumed, and packs only it names look unreferenced"
                    );
                    self.error(ProblemKind::Damaged, object, msg, vec![]);
                    continue;
                }
            };
            for p in rec.packs {
                let entries = baton_repo::journal::from_journal_pack(&p).blobs;
                if !self.stored_packs.contains_key(&p.id) {
                    self.problem(
                        Severity::Warning,
                        ProblemKind::MissingPack,
                        format!("pack {}", p.id),
                        format!(
                            "named by journal {} of an unfinished backup, but it does not exist",
                            o.name
                        ),
                        vec![],
                    );
                }
                if !self.indexed_packs.contains_key(&p.id) {
                    self.job_packs.insert(p.id, entries);
                }
            }
        }
        Ok(())
    }

    /// Every indexed pack exists, and its entries tile it exactly as a pack
    /// header would (blobs back to back from 0, then the header); packs no
    /// index or journal references are reported.
    pub fn check_packs_against_index(&mut self) {
        let mut found = Vec::new();
        for (id, (entries, index)) in &self.indexed_packs {
            let blobs = || entries.iter().map(|e| e.id).collect::<Vec<_>>();
            let Some(&size) = self.stored_packs.get(id) else {
                found.push((
                    ProblemKind::MissingPack,
                    *id,
                    format!(
                        "listed in index {index} with {} blobs, but it does not exist",
                        entries.len()
                    ),
                    blobs(),
                ));
                continue;
            };
            if let Some(msg) = layout_problem(entries, size) {
                found.push((
                    ProblemKind::IndexMismatch,
                    *id,
                    format!("{msg} (index {index})"),
                    blobs(),
                ));
            }
        }
        for (kind, id, msg, blobs) in found {
            self.bad_packs.insert(id);
            self.error(kind, format!("pack {id}"), msg, blobs);
        }
        let unreferenced: Vec<Id> = self
            .stored_packs
            .keys()
            .filter(|id| !self.indexed_packs.contains_key(id) && !self.job_packs.contains_key(id))
            .copied()
            .collect();
        for id in unreferenced {
            self.problem(
                Severity::Warning,
                ProblemKind::UnreferencedPack,
                format!("pack {id}"),
                "no index and no unfinished backup references it: prune removes it, \
                 `baton repair index` indexes it again"
                    .into(),
                vec![],
            );
        }
    }
}

/// Whether two entry lists describe the same blobs at the same places.
fn same_entries(a: &[baton_format::pack::PackEntry], b: &[baton_format::pack::PackEntry]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by_key(|e| e.offset);
    b.sort_by_key(|e| e.offset);
    a == b
}

/// Whether a blob's index entry reaches past the blobs of a pack of `size`
/// bytes (which end at least a minimal header and its length before the end).
pub(crate) fn blob_beyond_pack(loc: &baton_types::BlobLocation, size: u64) -> bool {
    loc.offset as u64 + loc.length as u64 + MIN_HEADER + 4 > size
}

/// Whether index entries can describe a pack of `size` bytes: blobs back to
/// back from offset 0, each at least a seal long, then a header of exactly
/// the size their count implies, then its 4-byte length.
pub(crate) fn layout_problem(
    entries: &[baton_format::pack::PackEntry],
    size: u64,
) -> Option<String> {
    let mut sorted: Vec<_> = entries.iter().collect();
    sorted.sort_by_key(|e| e.offset);
    let mut end: u64 = 0;
    for e in &sorted {
        let (off, len) = (e.offset as u64, e.length as u64);
        if off + len + MIN_HEADER + 4 > size {
            return Some(format!(
                "blob {} at offset {off}, length {len} lies beyond the end of the pack's \
                 blobs (the pack has {size} bytes: truncated?)",
                hex_encode(&e.id.as_bytes()[..4])
            ));
        }
        if off != end || len < 40 {
            return Some(format!(
                "blob {} at offset {off}, length {len} does not follow the previous blob (ends at {end})",
                hex_encode(&e.id.as_bytes()[..4])
            ));
        }
        end = off + len;
    }
    let expected = end + MIN_HEADER + 42 * sorted.len() as u64 + 4;
    (expected != size).then(|| {
        format!(
            "the pack has {size} bytes, but the {} blobs the index lists imply {expected}",
            sorted.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_format::pack::PackEntry;

    fn e(offset: u32, length: u32) -> PackEntry {
        PackEntry {
            blob_type: BlobType::Data,
            id: Id::from_bytes([offset as u8; 32]),
            offset,
            length,
            raw_length: 10,
            compressed: false,
        }
    }

    #[test]
    fn layout_matches_only_the_exact_pack() {
        let entries = [e(0, 100), e(100, 50)];
        let size = 150 + 52 + 2 * 42 + 4;
        assert_eq!(layout_problem(&entries, size), None);
        assert!(layout_problem(&entries, size - 1).is_some());
        assert!(layout_problem(&entries, size + 1).is_some());
        assert!(
            layout_problem(&entries, 100)
                .unwrap()
                .contains("beyond the end")
        );
        assert!(
            layout_problem(&[e(0, 100), e(120, 50)], size + 20)
                .unwrap()
                .contains("does not follow")
        );
        assert!(
            layout_problem(&[e(0, 10)], 10 + 52 + 42 + 4).is_some(),
            "shorter than a seal"
        );
    }
}
