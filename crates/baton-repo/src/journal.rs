//! Writing and reading backup journals (see `baton_types::JournalRecord`).
//!
//! Records are sealed objects named `journal/<job>/<seq>` with a zero-padded
//! sequence number, so a job's records list in order. A record is durable
//! (fsynced, atomically created) before the writer moves on; that is the
//! acknowledgement a resume relies on.

use crate::repo::now_rfc3339;
use crate::{RepoError, Repository, Result};
use baton_format::index::IndexPack;
use baton_format::object::{from_json, to_json};
use baton_format::pack::PackEntry;
use baton_storage::ObjectKind;
use baton_types::{
    CatalogEntry, Id, JobManifest, JournalBlob, JournalPack, JournalRecord, JournalSegment, Node,
    NodeKind,
};
use std::collections::BTreeMap;

/// What a record says that may travel in the clear: enough for a
/// coordinator (the director) to follow a job without the repository key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSummary {
    pub job: Id,
    pub seq: u64,
    /// Durable position in the backup stream.
    pub position: u64,
    /// The packs the record makes durable, and their stored bytes.
    pub packs: Vec<Id>,
    pub pack_bytes: u64,
}

impl RecordSummary {
    /// As it travels to the director.
    pub fn wire(&self) -> baton_wire::JournalSummary {
        baton_wire::JournalSummary {
            seq: self.seq,
            position: self.position,
            packs: self.packs.iter().map(|p| p.to_hex()).collect(),
            pack_bytes: self.pack_bytes,
        }
    }

    pub fn of(rec: &JournalRecord) -> RecordSummary {
        RecordSummary {
            job: rec.job,
            seq: rec.seq,
            position: rec.position,
            packs: rec.packs.iter().map(|p| p.id).collect(),
            pack_bytes: rec
                .packs
                .iter()
                .flat_map(|p| &p.blobs)
                .map(|b| u64::from(b.length))
                .sum(),
        }
    }
}

/// Where a job's sealed records go: the repository (standalone), or, under
/// a director, the network (records shipped to the index server before the
/// backup is complete). `store` returns once the record is durable there:
/// that is the acknowledgement a resume (or a takeover) relies on.
pub trait JournalSink: Send + Sync {
    /// Stores the sealed record `name` (`<job>/<seq>`), whose summary is
    /// `summary`, durably.
    fn store(&self, name: &str, sealed: &[u8], summary: &RecordSummary) -> Result<()>;
}

/// The repository's `journal/` objects.
pub struct RepoSink<'a>(pub &'a Repository);

impl JournalSink for RepoSink<'_> {
    fn store(&self, name: &str, sealed: &[u8], _summary: &RecordSummary) -> Result<()> {
        self.0.storage().put(ObjectKind::Journal, name, sealed)?;
        Ok(())
    }
}

/// Appends records of one job.
pub struct JournalWriter {
    job: Id,
    next_seq: u64,
}

fn record_name(job: &Id, seq: u64) -> String {
    format!("{}/{seq:012}", job.to_hex())
}

/// Converts between the index's pack entries and the journal's JSON form.
pub fn to_journal_pack(p: &IndexPack) -> JournalPack {
    JournalPack {
        id: p.id,
        blobs: p
            .blobs
            .iter()
            .map(|e| JournalBlob {
                id: e.id,
                blob_type: e.blob_type,
                offset: e.offset,
                length: e.length,
                raw_length: e.raw_length,
                compressed: e.compressed,
            })
            .collect(),
    }
}

pub fn from_journal_pack(p: &JournalPack) -> IndexPack {
    IndexPack {
        id: p.id,
        blobs: p
            .blobs
            .iter()
            .map(|b| PackEntry {
                blob_type: b.blob_type,
                id: b.id,
                offset: b.offset,
                length: b.length,
                raw_length: b.raw_length,
                compressed: b.compressed,
            })
            .collect(),
    }
}

impl JournalWriter {
    /// Starts a new job: writes its manifest as record 0.
    pub fn create(repo: &Repository, manifest: JobManifest) -> Result<Self> {
        Self::create_with_id(repo, baton_format::random_id(), manifest)
    }

    /// Starts a new job with a chosen id (claimed in the lock first, so no
    /// other process takes it for an abandoned one).
    pub fn create_with_id(repo: &Repository, job: Id, manifest: JobManifest) -> Result<Self> {
        let mut w = JournalWriter { job, next_seq: 0 };
        w.append(repo, Some(manifest), Vec::new(), 0, Vec::new(), Vec::new())?;
        Ok(w)
    }

    /// Continues an existing job after its last record.
    pub fn resume(job: Id, next_seq: u64) -> Self {
        JournalWriter { job, next_seq }
    }

    pub fn job(&self) -> Id {
        self.job
    }

    /// Durably appends one record.
    pub fn append(
        &mut self,
        repo: &Repository,
        manifest: Option<JobManifest>,
        packs: Vec<JournalPack>,
        position: u64,
        catalog: Vec<CatalogEntry>,
        completed_sources: Vec<String>,
    ) -> Result<()> {
        self.write(
            repo,
            JournalRecord {
                job: self.job,
                seq: self.next_seq,
                time: now_rfc3339(),
                manifest,
                packs,
                position,
                catalog,
                completed_sources,
                segments: Vec::new(),
            },
        )
    }

    /// Durably appends one record of a block backup: the packs stored and
    /// the fixed index segments completed since the last one.
    pub fn append_segments(
        &mut self,
        repo: &Repository,
        packs: Vec<JournalPack>,
        position: u64,
        segments: Vec<JournalSegment>,
    ) -> Result<()> {
        self.write(
            repo,
            JournalRecord {
                job: self.job,
                seq: self.next_seq,
                time: now_rfc3339(),
                manifest: None,
                packs,
                position,
                catalog: Vec::new(),
                completed_sources: Vec::new(),
                segments,
            },
        )
    }

    fn write(&mut self, repo: &Repository, rec: JournalRecord) -> Result<()> {
        match repo.journal_sink() {
            Some(sink) => self.write_to(repo, sink.as_ref(), rec),
            None => self.write_to(repo, &RepoSink(repo), rec),
        }
    }

    /// Seals `rec` with the repository's key and hands it to `sink`.
    pub fn write_to(
        &mut self,
        repo: &Repository,
        sink: &dyn JournalSink,
        rec: JournalRecord,
    ) -> Result<()> {
        let name = record_name(&self.job, self.next_seq);
        let sealed = repo.seal(
            ObjectKind::Journal,
            &name,
            repo.config().compression.max(1),
            &to_json(&rec),
        );
        sink.store(&name, &sealed, &RecordSummary::of(&rec))?;
        crate::crashpoint::crashpoint("after-journal");
        self.next_seq += 1;
        Ok(())
    }
}

/// Everything known about one unfinished job.
#[derive(Debug, Clone)]
pub struct JobState {
    pub job: Id,
    pub manifest: JobManifest,
    pub records: u64,
    pub next_seq: u64,
    pub last_time: String,
    /// Durable stream position of the latest run.
    pub position: u64,
    /// All packs the job stored.
    pub packs: Vec<JournalPack>,
    /// Completed entries by snapshot path; a completed directory replaces
    /// the entries below it, so this holds only the frontier.
    pub catalog: BTreeMap<Vec<u8>, Node>,
    pub completed_sources: Vec<String>,
    /// Block backups: the fixed index segments completed, by place (a
    /// later run's record replaces an earlier one's for the same place).
    pub segments: BTreeMap<u64, Id>,
    /// Its progress from its records' summaries: the same fold the
    /// director makes of what reaches it (`baton_wire::fold_summaries`).
    pub progress: baton_wire::JournalProgress,
}

impl JobState {
    /// Bytes of file content covered by the catalog.
    pub fn catalog_bytes(&self) -> u64 {
        self.catalog
            .values()
            .filter(|n| n.kind == NodeKind::File)
            .map(|n| n.size)
            .sum()
    }
}

/// Ids of the jobs that have journal records.
pub fn list_job_ids(repo: &Repository) -> Result<Vec<Id>> {
    let mut ids: Vec<Id> = repo
        .storage()
        .list(ObjectKind::Journal)?
        .into_iter()
        .filter_map(|o| {
            o.name
                .split_once('/')
                .and_then(|(j, _)| Id::from_hex(j).ok())
        })
        .collect();
    // The storage trait does not promise sorted listings.
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Names of a job's records, in order (record 0, the manifest, first).
fn record_names(repo: &Repository, job: &Id) -> Result<Vec<String>> {
    let prefix = format!("{}/", job.to_hex());
    let mut names: Vec<String> = repo
        .storage()
        .list_prefix(ObjectKind::Journal, &prefix)?
        .into_iter()
        .map(|o| o.name)
        .filter(|n| n.starts_with(&prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// Reads all records of a job and folds them into its state.
pub fn load_job(repo: &Repository, job: &Id) -> Result<JobState> {
    let names = record_names(repo, job)?;
    let mut records = Vec::with_capacity(names.len());
    for name in &names {
        let plain = repo.load_object(ObjectKind::Journal, name)?;
        let rec: JournalRecord = from_json("journal record", &plain)
            .map_err(|e| RepoError::format(format!("journal {name}"), e))?;
        if rec.job != *job || record_name(job, rec.seq) != *name {
            return Err(RepoError::Damaged(format!(
                "journal {name} holds record {} of job {}",
                rec.seq, rec.job
            )));
        }
        records.push(rec);
    }
    fold(job, records)
}

/// Folds a job's records, in order, into its state: a pure function, the
/// same wherever the records come from (the repository, or the director's
/// index server handing a job to another media agent).
pub fn fold(job: &Id, records: impl IntoIterator<Item = JournalRecord>) -> Result<JobState> {
    let mut state: Option<JobState> = None;
    let mut summaries = Vec::new();
    for rec in records {
        summaries.push(RecordSummary::of(&rec).wire());
        if rec.job != *job {
            return Err(RepoError::Damaged(format!(
                "record {} of job {} in the journal of job {}",
                rec.seq,
                rec.job.short(),
                job.short()
            )));
        }
        let st = match (&mut state, rec.manifest.clone()) {
            (None, Some(m)) => state.insert(JobState {
                job: *job,
                manifest: m,
                records: 0,
                next_seq: 0,
                last_time: String::new(),
                position: 0,
                packs: Vec::new(),
                catalog: BTreeMap::new(),
                completed_sources: Vec::new(),
                segments: BTreeMap::new(),
                progress: Default::default(),
            }),
            (None, None) => {
                return Err(RepoError::Damaged(format!(
                    "journal of job {} has no manifest record",
                    job.short()
                )));
            }
            (Some(s), _) => s,
        };
        st.records += 1;
        st.next_seq = st.next_seq.max(rec.seq + 1);
        st.last_time = rec.time;
        st.position = rec.position;
        st.packs.extend(rec.packs);
        for e in rec.catalog {
            if e.node.kind == NodeKind::Dir {
                // The directory's subtree covers everything below it.
                let mut below = e.path.0.clone();
                below.push(b'/');
                let keys: Vec<Vec<u8>> = st
                    .catalog
                    .range(below.clone()..)
                    .take_while(|(k, _)| k.starts_with(&below))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    st.catalog.remove(&k);
                }
            }
            st.catalog.insert(e.path.0, e.node);
        }
        st.completed_sources.extend(rec.completed_sources);
        st.segments
            .extend(rec.segments.into_iter().map(|s| (s.index, s.id)));
    }
    let mut state =
        state.ok_or_else(|| RepoError::NotFound(format!("no journal for job {job}")))?;
    state.progress = baton_wire::fold_summaries(&summaries);
    Ok(state)
}

/// All unfinished jobs.
/// All unfinished jobs that can be read (a damaged journal is skipped here;
/// [`load_job`] reports what is wrong with it).
pub fn list_jobs(repo: &Repository) -> Result<Vec<JobState>> {
    Ok(list_job_ids(repo)?
        .iter()
        .filter_map(|j| load_job(repo, j).ok())
        .collect())
}

/// Deletes a job's records (its packs become unreferenced). The newest
/// record goes first and the manifest (record 0) last, so an interrupted
/// deletion leaves a shorter but valid journal, never records without
/// their manifest (which would make every job listing fail).
pub fn forget_job(repo: &Repository, job: &Id) -> Result<usize> {
    let names = record_names(repo, job)?;
    for n in names.iter().rev() {
        repo.storage().remove(ObjectKind::Journal, n)?;
    }
    Ok(names.len())
}

/// Finds a job by a unique id prefix.
pub fn find_job(repo: &Repository, prefix: &str) -> Result<Id> {
    let ids: Vec<Id> = list_job_ids(repo)?
        .into_iter()
        .filter(|i| i.to_hex().starts_with(prefix))
        .collect();
    match ids.as_slice() {
        [one] => Ok(*one),
        [] => Err(RepoError::NotFound(format!(
            "no unfinished job with id {prefix}"
        ))),
        _ => Err(RepoError::Invalid(format!(
            "job id prefix {prefix} is ambiguous"
        ))),
    }
}

/// The newest unfinished job whose manifest `matches` (same host, sources,
/// kind), claimed in `lock` so no other live process resumes it too. Jobs
/// whose snapshot already exists (a crash between sealing and deleting the
/// journal) have their journal deleted here; a damaged journal or one
/// dated in the future is passed over.
pub fn find_resumable(
    repo: &Repository,
    lock: &crate::LockGuard,
    snapshots: &[(Id, baton_types::Snapshot)],
    matches: impl Fn(&JobManifest) -> bool,
) -> Result<Option<JobState>> {
    let mut candidates: Vec<JobState> = Vec::new();
    for job in list_job_ids(repo)? {
        // A damaged journal is not resumed; `baton jobs` shows it.
        let Ok(st) = load_job(repo, &job) else {
            continue;
        };
        if !matches(&st.manifest) {
            continue;
        }
        if snapshots.iter().any(|(_, s)| s.job == Some(job)) {
            forget_job(repo, &job)?;
            continue;
        }
        // A job dated in the future would win every later choice.
        if crate::repo::in_future(&st.last_time) {
            continue;
        }
        candidates.push(st);
    }
    candidates.sort_by(|a, b| b.last_time.cmp(&a.last_time));
    for st in candidates {
        // A job another live process is running is never resumed here
        // (both would write the same data); claiming it tells the others.
        if repo.claim_job(lock, st.job)? {
            return Ok(Some(st));
        }
    }
    Ok(None)
}

/// The packs an interrupted run of `job` stored that are still in storage,
/// added to the loaded index (so this run deduplicates against them) and
/// returned (the final index object lists them).
pub fn reindex_job_packs(
    repo: &mut Repository,
    job: &JobState,
) -> Vec<baton_format::index::IndexPack> {
    let mut out = Vec::new();
    for p in &job.packs {
        if repo
            .storage()
            .size(ObjectKind::Pack, &p.id.to_hex())
            .is_ok()
        {
            let ip = from_journal_pack(p);
            repo.index_mut().add_pack(&ip);
            out.push(ip);
        }
    }
    out
}

/// The journal of this run: `resumed`'s, continued, or a new job with
/// `manifest`, claimed in `lock` before its first record exists.
pub fn start_or_resume(
    repo: &Repository,
    lock: &crate::LockGuard,
    resumed: Option<&JobState>,
    manifest: JobManifest,
) -> Result<JournalWriter> {
    match resumed {
        Some(job) => Ok(JournalWriter::resume(job.job, job.next_seq)),
        None => {
            let job = baton_format::random_id();
            lock.set_job(Some(job))?;
            JournalWriter::create_with_id(repo, job, manifest)
        }
    }
}

/// Folds a backup's packs (the journal's and this run's) into one index
/// object, before the snapshot is written; returns its stored size.
pub fn save_packs_index(
    repo: &mut Repository,
    packs: Vec<baton_format::index::IndexPack>,
) -> Result<u64> {
    if packs.is_empty() {
        return Ok(0);
    }
    let idx = baton_format::index::IndexFile {
        supersedes: Vec::new(),
        packs,
        damaged: Vec::new(),
    };
    let (_, n) = repo.save_object(ObjectKind::Index, &idx.encode())?;
    repo.index_mut().add_file(&idx);
    crate::crashpoint::crashpoint("after-index");
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_types::{FsName, JournalBlob, JournalSegment};

    fn node(name: &str, kind: NodeKind, size: u64) -> Node {
        Node {
            name: FsName::from(name),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            mtime_ns: 1,
            atime_ns: 0,
            ctime_ns: 1,
            inode: 0,
            device_id: 0,
            links: 1,
            size,
            rdev: 0,
            content: Vec::new(),
            subtree: None,
            link_target: None,
            xattrs: Vec::new(),
            image: None,
        }
    }

    fn rec(job: Id, seq: u64, position: u64, catalog: &[(&str, NodeKind)]) -> JournalRecord {
        JournalRecord {
            job,
            seq,
            time: format!("t{seq}"),
            manifest: (seq == 0).then(|| JobManifest {
                hostname: "h".into(),
                paths: vec!["/src".into()],
                tags: Vec::new(),
                parent: None,
                started: "t0".into(),
                image: None,
            }),
            packs: vec![JournalPack {
                id: Id::from_bytes([seq as u8; 32]),
                blobs: vec![JournalBlob {
                    id: Id::from_bytes([9; 32]),
                    blob_type: baton_types::BlobType::Data,
                    offset: 0,
                    length: 100,
                    raw_length: 200,
                    compressed: true,
                }],
            }],
            position,
            catalog: catalog
                .iter()
                .map(|(p, k)| CatalogEntry {
                    path: FsName::from(*p),
                    depth: p.matches('/').count() as u32,
                    offset: position,
                    node: node(p.rsplit('/').next().unwrap(), *k, 10),
                })
                .collect(),
            completed_sources: Vec::new(),
            segments: vec![JournalSegment {
                index: seq % 2,
                id: Id::from_bytes([seq as u8; 32]),
            }],
        }
    }

    /// The fold keeps the frontier (a directory replaces what is below
    /// it), the last position, every pack, the last segment per place;
    /// records need their manifest first and must be the job's.
    #[test]
    fn fold_is_the_jobs_state() {
        let job = Id::from_bytes([1; 32]);
        let records = vec![
            rec(job, 0, 0, &[]),
            rec(
                job,
                1,
                10,
                &[("/src/d/a", NodeKind::File), ("/src/d/b", NodeKind::File)],
            ),
            rec(
                job,
                2,
                30,
                &[("/src/d", NodeKind::Dir), ("/src/e", NodeKind::File)],
            ),
        ];
        let st = fold(&job, records.clone()).unwrap();
        assert_eq!((st.records, st.next_seq, st.position), (3, 3, 30));
        assert_eq!(st.packs.len(), 3);
        let keys: Vec<&[u8]> = st.catalog.keys().map(|k| k.as_slice()).collect();
        assert_eq!(keys, [&b"/src/d"[..], b"/src/e"]);
        assert_eq!(st.segments.len(), 2);
        assert_eq!(st.segments[&0], Id::from_bytes([2; 32]));
        assert_eq!(st.last_time, "t2");
        // Pure: the same records, the same state.
        let again = fold(&job, records.clone()).unwrap();
        assert_eq!(again.catalog, st.catalog);
        assert!(fold(&job, records[1..].to_vec()).is_err());
        assert!(fold(&Id::from_bytes([2; 32]), records.clone()).is_err());
        assert!(matches!(
            fold(&job, Vec::new()),
            Err(RepoError::NotFound(_))
        ));

        let s = RecordSummary::of(&records[2]);
        assert_eq!((s.job, s.seq, s.position), (job, 2, 30));
        assert_eq!(
            (s.packs, s.pack_bytes),
            (vec![Id::from_bytes([2; 32])], 100)
        );
    }
}
