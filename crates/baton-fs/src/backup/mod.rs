//! `baton backup`: walk sources, store new content, commit a snapshot.
//!
//! Commit protocol (see docs/design.md): packs are stored (each durably) as
//! they fill; then one index object listing them; then the snapshot object,
//! which is the commit point. A crash before the snapshot leaves only packs
//! and maybe an index that nothing references yet: the repository stays valid.

mod archiver;
mod checkpoint;
mod prefetch;
mod scan;

use crate::filter::PatternSet;
use archiver::Archiver;
use baton_repo::journal::{self, JobState};
use baton_repo::pipeline::{Pipeline, PipelineConfig};
use baton_repo::progress::{Cancel, Progress};
use baton_repo::repo::{hostname, now_rfc3339, username};
use baton_repo::{RepoError, Repository, Result};
use baton_types::{Id, JobManifest, Snapshot, SnapshotSummary, Tree};
use checkpoint::Checkpointer;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Options of `baton backup`.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    /// Back up a stream (passed to [`backup`]) as one file of this name.
    pub stdin_filename: Option<String>,
    pub excludes: Vec<String>,
    /// Exclude patterns matched without regard to case.
    pub iexcludes: Vec<String>,
    pub exclude_files: Vec<PathBuf>,
    pub exclude_caches: bool,
    /// Leave out regular files larger than this many bytes.
    pub exclude_larger_than: Option<u64>,
    /// Leave out the contents of directories holding an entry of one of
    /// these names (the directory itself is kept, empty).
    pub exclude_if_present: Vec<String>,
    pub one_file_system: bool,
    /// Read every file again, ignoring the parent snapshot.
    pub force: bool,
    /// Snapshot to compare against (default: latest with the same host and paths).
    pub parent: Option<String>,
    pub tags: Vec<String>,
    pub host: Option<String>,
    /// Read and chunk everything but store nothing.
    pub dry_run: bool,
    /// Whether to resume an unfinished job of the same host and paths.
    pub resume: ResumeMode,
    /// Longest time between journal records while progress is made without
    /// new packs (default 5 s). A record is also written after every pack.
    pub checkpoint_interval: Option<std::time::Duration>,
    /// The snapshot's time (RFC 3339 in UTC) instead of the backup's start,
    /// e.g. to import old backups, or for tests of retention policies.
    pub time: Option<String>,
    /// Store access times (off by default, as restic and Borg: reading a
    /// file changes its atime, so snapshots of unchanged data would differ).
    pub with_atime: bool,
}

/// `--resume=auto|never`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResumeMode {
    /// Continue the newest unfinished job of the same host and paths.
    #[default]
    Auto,
    /// Always start a new job.
    Never,
}

/// What a backup produced.
#[derive(Debug, Clone)]
pub struct BackupResult {
    /// `None` for a dry run.
    pub snapshot_id: Option<Id>,
    pub snapshot: Snapshot,
    /// What the caller should tell the user (e.g. a parent passed over).
    pub warnings: Vec<String>,
}

impl BackupResult {
    pub fn summary(&self) -> &SnapshotSummary {
        self.snapshot
            .summary
            .as_ref()
            .expect("backups always record a summary")
    }
}

/// Makes a source path absolute, resolving symlinks in its ancestors (so
/// they are recorded as the directories they lead to) but not in its last
/// component (a symlink given as a source is backed up as a symlink).
fn normalize(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| RepoError::io(p, e))?;
    let name = match abs.components().next_back() {
        Some(Component::Normal(n)) => n.to_owned(),
        _ => return std::fs::canonicalize(&abs).map_err(|e| RepoError::io(p, e)),
    };
    let parent = abs.parent().unwrap_or(Path::new("/"));
    let parent = std::fs::canonicalize(parent).map_err(|e| RepoError::io(p, e))?;
    Ok(parent.join(name))
}

fn resolve_sources(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if paths.is_empty() {
        return Err(RepoError::Invalid(
            "nothing to back up: give at least one path".into(),
        ));
    }
    let mut out = Vec::new();
    for p in paths {
        let n = normalize(p)?;
        if let Err(e) = std::fs::symlink_metadata(&n) {
            return Err(RepoError::NotFound(format!(
                "source path {} cannot be read: {e}",
                p.display()
            )));
        }
        out.push(n);
    }
    out.sort();
    out.dedup();
    // A source inside another source is already covered.
    let all = out.clone();
    out.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q)));
    Ok(out)
}

fn same_paths(a: &[String], b: &[String]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    a == b
}

fn find_parent(
    repo: &Repository,
    opts: &BackupOptions,
    snapshots: &[(Id, Snapshot)],
    resumed: Option<&JobState>,
    host: &str,
    paths: &[String],
) -> Result<Option<(Id, Snapshot)>> {
    if opts.force {
        return Ok(None);
    }
    if let Some(p) = &opts.parent {
        return repo.find_snapshot(p).map(Some);
    }
    // A resumed job keeps the parent it started with.
    if let Some(job) = resumed
        && let Some(pid) = job.manifest.parent
        && let Some(found) = snapshots.iter().find(|(id, _)| *id == pid)
    {
        return Ok(Some(found.clone()));
    }
    // Never a snapshot dated in the future (it would be the parent of every
    // later backup) nor one whose root tree is gone (nothing to compare
    // with): such a one is passed over, and the backup reads every file.
    Ok(snapshots
        .iter()
        .rev()
        .filter(|(_, s)| s.hostname == host && same_paths(&s.paths, paths))
        .find(|(_, s)| !baton_repo::repo::in_future(&s.time) && repo.index().contains(&s.tree))
        .cloned())
}

/// Runs a backup. `stdin` is read when `opts.stdin_filename` is set.
pub fn backup(
    repo: &mut Repository,
    opts: &BackupOptions,
    stdin: Option<&mut (dyn Read + Send)>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<BackupResult> {
    let start = Instant::now();
    let start_time = now_rfc3339();
    let snapshot_time = baton_repo::repo::snapshot_time(opts.time.as_deref(), &start_time)?;
    let lock = repo.lock(false)?;
    lock.abort_on_loss(cancel);
    repo.load_index()?;

    let sources = match &opts.stdin_filename {
        Some(name) => {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(RepoError::Invalid(format!(
                    "--stdin-filename {name:?} must be a plain file name"
                )));
            }
            Vec::new()
        }
        None => resolve_sources(&opts.paths)?,
    };
    let paths: Vec<String> = match &opts.stdin_filename {
        Some(n) => vec![format!("/{n}")],
        None => sources
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
    };
    let mut patterns = opts.excludes.clone();
    patterns.extend(PatternSet::read_files(&opts.exclude_files)?);
    let filter = PatternSet::with_case(&patterns, &opts.iexcludes)?;
    for name in &opts.exclude_if_present {
        if !baton_types::safe_name(name.as_bytes()) {
            return Err(RepoError::Invalid(format!(
                "--exclude-if-present {name:?} must be a plain file name"
            )));
        }
    }
    let host = opts.host.clone().unwrap_or_else(hostname);
    let snapshots = repo.list_snapshots()?;
    let journaled = !opts.dry_run && opts.stdin_filename.is_none();
    let resumed = match (journaled, opts.resume) {
        (true, ResumeMode::Auto) => journal::find_resumable(repo, &lock, &snapshots, |m| {
            // A block backup of the same path is another kind of job.
            m.hostname == host && same_paths(&m.paths, &paths) && m.image.is_none()
        })?,
        _ => None,
    };
    let mut warnings = Vec::new();
    let parent = find_parent(repo, opts, &snapshots, resumed.as_ref(), &host, &paths)?;
    if parent.is_none() && !opts.force && opts.parent.is_none() {
        // The newest snapshot of these paths could not serve as the parent.
        if let Some((id, s)) = snapshots
            .iter()
            .rev()
            .find(|(_, s)| s.hostname == host && same_paths(&s.paths, &paths))
        {
            let why = if baton_repo::repo::in_future(&s.time) {
                format!("it is dated in the future ({})", s.time)
            } else {
                "its root tree is missing".to_string()
            };
            warnings.push(format!(
                "snapshot {} was not used as the parent: {why}; every file is read",
                id.short()
            ));
        }
    }
    // The packs an interrupted run stored are known from its journal.
    let earlier_packs = match &resumed {
        Some(job) => journal::reindex_job_packs(repo, job),
        None => Vec::new(),
    };
    let checkpoint_interval = opts
        .checkpoint_interval
        .unwrap_or(std::time::Duration::from_secs(5));
    let checkpoint = if journaled {
        let writer = journal::start_or_resume(
            repo,
            &lock,
            resumed.as_ref(),
            JobManifest {
                hostname: host.clone(),
                paths: paths.clone(),
                tags: opts.tags.clone(),
                parent: parent.as_ref().map(|(id, _)| *id),
                started: start_time.clone(),
                image: None,
            },
        )?;
        let interval = checkpoint_interval;
        let source_bytes = sources
            .iter()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .collect();
        Some(Checkpointer::new(writer, interval, source_bytes))
    } else {
        None
    };
    let job_id = checkpoint.as_ref().map(|c| c.job());
    if let Some(job) = &resumed {
        progress.bytes(job.catalog_bytes());
    }
    let resume_catalog = resumed.as_ref().map(|j| j.catalog.clone());
    let parent_root: Option<Arc<Tree>> = match &parent {
        Some((_, s)) => Some(repo.load_tree(&s.tree)?),
        None => None,
    };

    let repo_ref: &Repository = repo;
    let cfg = PipelineConfig {
        storage: &**repo_ref.storage(),
        key: repo_ref.key(),
        repository: repo_ref.config().id,
        compression: repo_ref.config().compression,
        pack_size: repo_ref.config().pack_size,
        dry_run: opts.dry_run,
        workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        flush_age: checkpoint_interval.max(std::time::Duration::from_secs(1)),
    };
    let scan_done = Cancel::new();
    let (walk, packed) = std::thread::scope(|s| {
        // The scan counts totals for the progress and, on a spare core,
        // warms the metadata caches ahead of the archiver (see scan.rs).
        let warm = cfg.workers > 1;
        if (progress.wants_totals() || warm) && opts.stdin_filename.is_none() {
            let (sources, filter, done) = (&sources, &filter, &scan_done);
            s.spawn(move || {
                if let Some((files, bytes)) = scan::scan(sources, filter, opts, done)
                    && progress.wants_totals()
                {
                    progress.set_total(files, bytes);
                }
            });
        }
        // Files are read, chunked and packed, packs uploaded as they fill.
        progress.phase("reading");
        let pipe = Pipeline::start(s, cfg);
        let mut a = Archiver::new(repo_ref, &pipe, &filter, opts, progress, cancel)
            .with_journal(checkpoint, resume_catalog);
        let walk = match stdin {
            Some(r) if opts.stdin_filename.is_some() => a.stdin_tree(
                opts.stdin_filename.as_deref().unwrap_or("stdin"),
                r,
                parent_root.as_deref(),
            ),
            _ => a.run(&sources, parent_root),
        };
        if walk.is_err() {
            a.salvage();
        }
        let walk = walk.map(|id| (id, a.into_summary()));
        scan_done.cancel();
        // Everything is read: the last packs are written.
        progress.phase("uploading");
        (walk, pipe.finish())
    });
    progress.phase("finishing");
    // The packer's error is the root cause when both failed (e.g. a full disk).
    let packed = packed?;
    let (tree, mut summary) = walk?;

    summary.bytes_stored = packed.bytes_stored;
    summary.resumed_job = resumed.as_ref().map(|j| j.job);
    let mut packs = earlier_packs;
    packs.extend(packed.packs);
    if !opts.dry_run {
        // The journal's packs are folded into the index here.
        summary.bytes_stored += journal::save_packs_index(repo, packs)?;
    }
    summary.backup_start = start_time;
    summary.backup_end = now_rfc3339();
    summary.duration_s = start.elapsed().as_secs_f64();
    let mut tags = opts.tags.clone();
    tags.sort();
    tags.dedup();
    let snapshot = Snapshot {
        time: snapshot_time,
        tree,
        paths,
        hostname: host,
        username: username(),
        tags,
        parent: parent.map(|(id, _)| id),
        program_version: concat!("baton ", env!("CARGO_PKG_VERSION")).to_string(),
        job: job_id,
        original: None,
        summary: Some(summary),
    };
    let snapshot_id = if opts.dry_run {
        None
    } else {
        Some(repo.save_snapshot(&snapshot)?.0)
    };
    baton_repo::crashpoint::crashpoint("after-snapshot");
    if let Some(job) = job_id {
        // The snapshot is the commit point; a journal left by a crash here is
        // recognised by the snapshot's job id and deleted by the next backup.
        journal::forget_job(repo, &job)?;
    }
    Ok(BackupResult {
        snapshot_id,
        snapshot,
        warnings,
    })
}
