//! `baton restore`: recreate a snapshot (or part of it) in a directory with
//! all metadata. The tree walk creates directories and special files and
//! decides what each file needs; the files' contents are then written in
//! batches, in pack order, by one worker per core ([`fetch`]), which also
//! create new files; files left by an interrupted restore are verified in
//! place instead. Writes are
//! positional and skip all-zero blocks, so sparse files stay sparse. A
//! file's metadata is applied once its content is written, a directory's at
//! the very end, children before parents, so nothing disturbs it.

mod fetch;
mod plan;
mod target;

pub use plan::{PlanAction, RestorePlan, plan_restore};

use crate::filter::PatternSet;
use baton_repo::browse::{WalkBudget, find_node, join, preflight};
use baton_repo::progress::{Cancel, EntryStatus, Progress};
use baton_repo::{RepoError, Repository, Result};
use baton_types::{Id, Node, NodeKind, Snapshot};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use target::{EntryStat, Existing, Target};

/// Options of `baton restore`.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore only paths matching these patterns (and what is below them).
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
    /// Re-read every restored file and compare it with the snapshot.
    pub verify: bool,
    /// What to do with an entry that exists in the target.
    pub overwrite: Overwrite,
    /// Remove what the target holds that the snapshot does not (in the
    /// directories the restore writes, among the selected paths).
    pub delete: bool,
    /// This restore runs again after an interrupted one of the same
    /// snapshot into the same target: a file whose size and mtime are the
    /// snapshot's was finished by it (a restore sets the mtime last) and is
    /// trusted unread (`--verify` still reads it); only the others are
    /// verified chunk by chunk.
    pub trust_finished: bool,
}

/// `restore --overwrite`: what happens to an entry already in the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overwrite {
    /// Make it what the snapshot says: an existing file is verified chunk
    /// by chunk and only what differs is rewritten (the default).
    #[default]
    Always,
    /// A file whose size and modification time (to the nanosecond) are the
    /// snapshot's is kept unread (its metadata applied); others as `Always`.
    /// `--verify` still reads it back.
    IfChanged,
    /// Only where the snapshot's file is newer (mtime) than the target's.
    IfNewer,
    /// Never: whatever exists in the target stays as it is.
    Never,
}

/// What a restore did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub other: u64,
    pub bytes: u64,
    pub files_verified: u64,
    /// Bytes loaded from the repository.
    pub bytes_fetched: u64,
    /// Bytes of files left by an earlier, interrupted restore that were
    /// verified intact and kept.
    pub bytes_verified_in_place: u64,
    /// Files found complete and intact from an earlier restore.
    pub files_already_restored: u64,
    /// Existing entries left as they were by `--overwrite`.
    pub skipped: u64,
    /// Entries removed by `--delete` (a directory counts once).
    pub deleted: u64,
    /// Existing files kept unread because size and time matched
    /// (`--overwrite if-changed`).
    pub files_unchanged: u64,
    /// (path, message) of every entry that could not be restored or verified.
    pub errors: Vec<(String, String)>,
}

struct Restorer<'a> {
    repo: &'a Repository,
    target: &'a Target,
    budget: WalkBudget,
    /// Trees read by the preflight walk, taken (once) by the restoring walk.
    prefetched: HashMap<Id, std::sync::Arc<baton_types::Tree>>,
    selection: Selection,
    progress: &'a dyn Progress,
    cancel: &'a Cancel,
    is_root: bool,
    hardlinks: HashMap<(u64, u64), PathBuf>,
    to_verify: Vec<(PathBuf, Vec<Id>)>,
    verify: bool,
    overwrite: Overwrite,
    delete: bool,
    trust_finished: bool,
    summary: RestoreSummary,
    /// Files waiting for their content, with how to start writing them.
    pending: Vec<(PathBuf, Node, Start)>,
    pending_chunks: usize,
    /// Batches go to the writer thread, which writes them while the walk
    /// goes on, and sends back what it did.
    batches: Option<SyncSender<Vec<(PathBuf, Node, Start)>>>,
    done: Receiver<Result<BatchDone>>,
    /// Directories whose metadata is applied last, children first.
    dirs: Vec<(PathBuf, Node)>,
    /// A handle of the directory whose entries the walk is looking at
    /// (kept only in a sealed directory: elsewhere each look resolves the
    /// path again, through the pinned directories).
    stat_dir: Option<(PathBuf, std::os::fd::OwnedFd)>,
    /// Whether the directory the walk is in is sealed.
    here_sealed: bool,
    euid: u32,
}

/// What a restore (and its dry run) selects: `--include`, `--exclude`, and
/// for `--delete` the snapshot's source paths.
pub(crate) struct Selection {
    includes: PatternSet,
    excludes: PatternSet,
    /// `--delete` acts only at or below these (the ancestors above a
    /// source hold just the path to it).
    sources: Vec<String>,
}

impl Selection {
    fn new(opts: &RestoreOptions, snapshot: &Snapshot) -> Result<Selection> {
        Ok(Selection {
            includes: PatternSet::new(&opts.includes)?,
            excludes: PatternSet::new(&opts.excludes)?,
            sources: snapshot.paths.clone(),
        })
    }

    /// Entry `n` of the directory at snapshot path `prefix`: its path and
    /// whether it is selected (`selected`: its directory is), `None` if
    /// excluded; an error for a name that would leave the directory.
    fn pick(
        &self,
        prefix: &str,
        n: &Node,
        selected: bool,
    ) -> Result<Option<(String, bool)>, String> {
        let p = join(prefix, &n.name.lossy());
        if self.excludes.matches(Path::new(&p)) {
            return Ok(None);
        }
        if !safe_name(&n.name.0) {
            return Err(format!(
                "refusing entry with unsafe name {:?} (it would escape the target)",
                n.name.lossy()
            ));
        }
        let sel = selected || self.includes.is_empty() || self.includes.matches(Path::new(&p));
        Ok(Some((p, sel)))
    }

    /// `--delete`: the entries of the target directory `dir` that tree `t`
    /// (at snapshot path `prefix`) lacks and the patterns select; none
    /// outside the snapshot's sources.
    fn extras(
        &self,
        target: &Target,
        t: &baton_types::Tree,
        dir: &Path,
        prefix: &str,
        selected: bool,
    ) -> std::io::Result<Vec<PathBuf>> {
        use std::os::unix::ffi::OsStrExt;
        let here = Path::new(if prefix.is_empty() { "/" } else { prefix });
        if !self.sources.iter().any(|s| here.starts_with(s)) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for name in target.list(dir)? {
            if t.find(name.as_bytes()).is_some() {
                continue;
            }
            let p = join(prefix, &name.to_string_lossy());
            if !self.excludes.matches(Path::new(&p))
                && (selected || self.includes.is_empty() || self.includes.matches(Path::new(&p)))
            {
                out.push(dir.join(&name));
            }
        }
        Ok(out)
    }
}

/// What the walk may assume of a directory of the target. "Others" are
/// users other than this one and root.
#[derive(Debug, Clone, Copy, Default)]
struct Place {
    /// Others can replace neither it nor any directory between it and the
    /// target: each sits in a directory others cannot write to, or that is
    /// sticky, owned by this user or root, and is itself owned by this user
    /// or root. (The target itself is held open.) Where it is not, the
    /// directory is pinned to its inode.
    stable: bool,
    /// Others cannot rename or remove entries in it either: stable, owned
    /// by this user and not writable by group or others (or made `0700` by
    /// this restore).
    sealed: bool,
    /// Sealed, and empty or made by this restore: nothing in it needs to be
    /// checked, kept or replaced.
    fresh: bool,
    /// Others cannot replace its entries (it is owned by this user or root
    /// and not writable by others, or sticky): a stable directory's
    /// subdirectories owned by this user or root are stable.
    guards: bool,
}

impl Place {
    /// The target itself (`stable`: true), or a directory found (not made)
    /// in a stable directory that guards its entries (`stable`).
    fn found(stable: bool, st: Option<target::DirStatus>, euid: u32) -> Place {
        let Some(st) = st else {
            return Place::default();
        };
        let trusted_owner = st.uid == euid || st.uid == 0;
        let stable = stable && trusted_owner;
        let private = st.uid == euid && st.mode & 0o022 == 0;
        Place {
            stable,
            sealed: stable && private,
            fresh: stable && private && st.empty,
            guards: trusted_owner && (st.mode & 0o022 == 0 || st.mode & 0o1000 != 0),
        }
    }
}

/// How a queued file's content is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// It does not exist, and no one else can put anything at its name:
    /// the worker writing its first chunk creates it.
    Create,
    /// It did not exist: the worker writing its first chunk creates it
    /// exclusively (something at the name by then fails the file).
    CreateExclusive,
    /// It exists at its length and reads as zeros.
    Zeroed,
    /// It exists holding this many bytes of an earlier restore (or of
    /// anything else): each chunk there is verified in place and only
    /// those that differ are fetched and written.
    InPlace(u64),
}

/// A batch of files is written when it holds this many chunks or files
/// (bounding the memory of its plan; small enough that writing overlaps
/// with the walk, large enough that each pack is read about once).
const BATCH_CHUNKS: usize = 16 * 1024;
const BATCH_FILES: usize = 4096;

/// A batch written: per file, why its content could not be written, or
/// else why its metadata could not be applied.
struct BatchDone {
    files: Vec<(PathBuf, Node, Start)>,
    content_failed: Vec<Option<String>>,
    metadata_failed: Vec<Option<String>>,
    bytes_fetched: u64,
    bytes_verified_in_place: u64,
    /// Per file: it was verified in place and found complete.
    complete_in_place: Vec<bool>,
}

/// The writer thread: writes each batch's contents, then the files' metadata.
fn write_batches(
    repo: &Repository,
    target: &Target,
    batches: Receiver<Vec<(PathBuf, Node, Start)>>,
    done: SyncSender<Result<BatchDone>>,
    progress: &dyn Progress,
    cancel: &Cancel,
    is_root: bool,
) {
    for files in batches {
        let jobs: Vec<fetch::FileJob> = files
            .iter()
            .map(|(dst, n, start)| fetch::FileJob {
                path: dst.clone(),
                content: n.content.clone(),
                size: n.size,
                create: matches!(start, Start::Create | Start::CreateExclusive),
                exclusive: *start == Start::CreateExclusive,
                in_place: match start {
                    Start::InPlace(old_len) => Some(*old_len),
                    _ => None,
                },
                linked: n.links > 1,
                // A hard-linked file gets its metadata below, once its
                // path is checked to name the inode this restore made.
                meta: (n.links <= 1).then_some(n),
            })
            .collect();
        let outcome = match fetch::write_files(repo, target, &jobs, is_root, progress, cancel) {
            Ok(o) => o,
            Err(e) => {
                let _ = done.send(Err(e));
                return;
            }
        };
        if let Some((path, cause)) = outcome.no_space {
            // The batch's files stay as they are: the next run verifies
            // and completes them.
            let _ = done.send(Err(target_full(&path, cause)));
            return;
        }
        // Applied by the workers after each file's last write, except where
        // nothing was written (found complete in place) and hard links.
        let metadata_failed = files
            .iter()
            .zip(&outcome.failed)
            .zip(outcome.metadata)
            .map(|(((dst, n, _), failed), done)| match (failed, done) {
                (Some(_), _) => None,
                (None, Some(r)) => r.err(),
                (None, None) => target.apply_metadata(dst, n, is_root).err(),
            })
            .collect();
        let d = BatchDone {
            files,
            content_failed: outcome.failed,
            metadata_failed,
            bytes_fetched: outcome.bytes_fetched,
            bytes_verified_in_place: outcome.bytes_verified_in_place,
            complete_in_place: outcome.complete_in_place,
        };
        if done.send(Ok(d)).is_err() {
            return;
        }
    }
}

/// Restores `subpath` (or the whole snapshot) of `snapshot` into `target`.
/// The repository's index must be loaded. A directory's contents go directly
/// into `target`; a single file goes to `target/<name>`.
pub fn restore(
    repo: &Repository,
    snapshot: &Snapshot,
    subpath: Option<&str>,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<RestoreSummary> {
    let lock = repo.lock(false)?;
    lock.abort_on_loss(cancel);
    let sub = subpath.unwrap_or("/");
    let (node, subtree) = find_node(repo, &snapshot.tree, sub)?;
    let budget = WalkBudget::for_snapshot(snapshot);
    // Every tree is read (and bounded) before anything is written; the
    // first quarter million entries' worth are kept for the walk.
    let prefetched = match subtree {
        Some(t) if node.as_ref().is_none_or(|n| n.kind == NodeKind::Dir) => {
            preflight(repo, &t, &budget, 1 << 18)?
        }
        _ => HashMap::new(),
    };
    let handle = Target::open(target).map_err(|e| RepoError::io(target, e))?;
    let handle = &handle;
    // An empty target holds nothing to keep or replace, if no one else can
    // add to it while the workers create its files (they do not use O_EXCL).
    let euid = nix::unistd::geteuid().as_raw();
    let place = Place::found(true, handle.dir_status(target), euid);
    let is_root = nix::unistd::geteuid().is_root();
    let (batch_tx, batch_rx) = sync_channel(1);
    let (done_tx, done_rx) = sync_channel(64);
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("baton-writer".into())
            .spawn_scoped(s, move || {
                write_batches(repo, handle, batch_rx, done_tx, progress, cancel, is_root)
            })
            .expect("spawning a thread");
        let mut r = Restorer {
            repo,
            target: handle,
            budget,
            prefetched,
            selection: Selection::new(opts, snapshot)?,
            progress,
            cancel,
            is_root,
            hardlinks: HashMap::new(),
            to_verify: Vec::new(),
            verify: opts.verify,
            overwrite: opts.overwrite,
            delete: opts.delete,
            trust_finished: opts.trust_finished,
            summary: RestoreSummary::default(),
            pending: Vec::new(),
            pending_chunks: 0,
            batches: Some(batch_tx),
            done: done_rx,
            dirs: Vec::new(),
            stat_dir: None,
            here_sealed: false,
            euid: nix::unistd::geteuid().as_raw(),
        };
        let result = r.run(node, subtree, target, sub, opts.verify, place);
        // Stops the writer thread (after its batch) however the walk ended.
        r.batches = None;
        result.map(|()| r.summary)
    })
}

impl Restorer<'_> {
    fn run(
        &mut self,
        node: Option<Node>,
        subtree: Option<Id>,
        target: &Path,
        sub: &str,
        verify: bool,
        place: Place,
    ) -> Result<()> {
        self.progress.phase("restoring");
        let r = self;
        match (node, subtree) {
            (Some(n), _) if n.kind != NodeKind::Dir => {
                let dst = target.join(n.name.as_os());
                r.leaf(&n, &dst, sub, place)?;
            }
            (_, Some(tree)) => {
                r.tree(&tree, target, sub, false, place)?;
            }
            (_, None) => {}
        }
        r.flush()?;
        r.batches = None;
        while let Ok(d) = r.done.recv() {
            r.batch_done(d?);
        }
        for (dst, n) in std::mem::take(&mut r.dirs) {
            r.cancel.check()?;
            if let Err(e) = r.target.apply_metadata(&dst, &n, r.is_root) {
                r.error(&dst, e);
            }
        }
        if verify {
            r.verify_all()?;
        }
        Ok(())
    }

    /// [`Restorer::tree`] for a subdirectory; the walk is back in the
    /// parent directory after it.
    fn subtree(
        &mut self,
        tree: &Id,
        dir: &Path,
        prefix: &str,
        selected: bool,
        place: Place,
    ) -> Result<bool> {
        let back = self.here_sealed;
        let r = self.tree(tree, dir, prefix, selected, place);
        self.stat_dir = None;
        self.here_sealed = back;
        r
    }

    /// What is at `dst` (not followed), with its status: through a handle
    /// of its directory, kept while the walk stays there.
    fn existing_stat(&mut self, dst: &Path) -> std::io::Result<(Existing, Option<EntryStat>)> {
        let (Some(parent), Some(name)) = (dst.parent(), dst.file_name()) else {
            return self.target.existing_stat(dst);
        };
        if !self.here_sealed {
            return self.target.existing_stat(dst);
        }
        let cached = self.stat_dir.as_ref().filter(|(p, _)| p == parent);
        let fd = match cached {
            Some((_, fd)) => fd,
            None => {
                let fd = self.target.parent_handle(dst)?;
                &self.stat_dir.insert((parent.to_path_buf(), fd)).1
            }
        };
        Target::existing_stat_in(fd, name)
    }

    fn error(&mut self, path: &Path, msg: String) {
        let p = path.display().to_string();
        self.progress.error(&p, &msg);
        self.summary.errors.push((p, msg));
    }

    /// Restores the entries of `tree` into `dir`. Returns whether anything was restored.
    /// `place`: what may be assumed of `dir`.
    fn tree(
        &mut self,
        tree: &Id,
        dir: &Path,
        prefix: &str,
        selected: bool,
        place: Place,
    ) -> Result<bool> {
        let fresh = place.fresh;
        let t = match self.prefetched.remove(tree) {
            Some(t) => t,
            None => self.repo.read_tree(tree)?,
        };
        self.budget.enter(tree, t.nodes.len())?;
        // A directory's handle is kept only while the walk is in it.
        self.stat_dir = None;
        self.here_sealed = place.sealed;
        let mut any = false;
        for n in &t.nodes {
            self.cancel.check()?;
            let (p, sel) = match self.selection.pick(prefix, n, selected) {
                Ok(Some(picked)) => picked,
                Ok(None) => continue,
                Err(e) => {
                    self.error(dir, e);
                    continue;
                }
            };
            let dst = dir.join(n.name.as_os());
            if n.kind == NodeKind::Dir {
                // Something else where the snapshot has a directory is
                // replaced, unless --overwrite keeps it.
                if !fresh
                    && sel
                    && let Ok((e, Some(st))) = self.existing_stat(&dst)
                    && e != Existing::Dir
                    && keeps_in_the_way(self.overwrite, st.mtime_ns, n.mtime_ns)
                {
                    self.summary.skipped += 1;
                    self.progress.entry(&dst, EntryStatus::Unmodified);
                    continue;
                }
                let created = if fresh {
                    self.target.create_dir(&dst).map(|()| true)
                } else {
                    make_dir(self.target, &dst)
                };
                let created = match created {
                    Ok(c) => c,
                    Err(e) if is_no_space(&e) => return Err(target_full(&dst, e)),
                    Err(e) => {
                        self.error(&dst, format!("cannot create directory: {e}"));
                        continue;
                    }
                };
                let held = place.stable && place.guards;
                let inner_place = if created {
                    // Made here, mode 0700: sealed if it cannot be replaced.
                    Place {
                        stable: held,
                        sealed: held,
                        fresh: held,
                        guards: true,
                    }
                } else {
                    // Found (an interrupted restore's, say): private and
                    // empty is as good as made here.
                    Place::found(held, self.target.dir_status(&dst), self.euid)
                };
                // A directory others can replace is pinned; one owned by
                // another user (not root, not the snapshot's owner of it)
                // is not restored into: they could read and swap what goes
                // there, and it would end up chowned to the snapshot's owner.
                let euid = self.euid;
                let owner_ok = |uid: u32| {
                    if created {
                        uid == euid
                    } else {
                        uid == euid || uid == 0 || uid == n.uid
                    }
                };
                if !inner_place.stable
                    && let Err(e) = self.target.pin_dir(&dst, owner_ok)
                {
                    // Others can write here: the directory is pinned, so
                    // nothing goes into one swapped in at its name.
                    self.error(&dst, format!("cannot restore directory: {e}"));
                    continue;
                }
                let inner = match n.subtree {
                    Some(sub) => match self.subtree(&sub, &dst, &p, sel, inner_place) {
                        Ok(b) => b,
                        Err(RepoError::Cancelled) => return Err(RepoError::Cancelled),
                        // A full device or a lost lock stops the whole
                        // restore: it is not one failed directory.
                        Err(e @ (RepoError::TargetFull { .. } | RepoError::LockLost(_))) => {
                            return Err(e);
                        }
                        Err(e) if self.budget.exceeded() => return Err(e),
                        Err(e) => {
                            self.error(&dst, format!("cannot restore directory contents: {e}"));
                            true
                        }
                    },
                    None => false,
                };
                if sel || inner {
                    self.dirs.push((dst, n.clone()));
                    self.summary.dirs += 1;
                    any = true;
                } else if created {
                    // Made only to look below: nothing there was selected.
                    let _ = self.target.remove(&dst, true);
                }
            } else if sel {
                self.leaf(n, &dst, &p, place)?;
                any = true;
            }
        }
        if self.delete && !fresh {
            self.delete_extra(&t, dir, prefix, selected);
        }
        self.budget.leave();
        Ok(any)
    }

    /// `--delete`: removes what the target directory holds that the
    /// snapshot's does not, among the paths the restore selects.
    fn delete_extra(&mut self, t: &baton_types::Tree, dir: &Path, prefix: &str, selected: bool) {
        // Only in directories the backup read whole: at or below a source
        // (above one, the snapshot holds only the path to it, and the
        // target's other entries there are none of its business).
        let extras = match self.selection.extras(self.target, t, dir, prefix, selected) {
            Ok(e) => e,
            Err(e) => {
                self.error(dir, format!("cannot list for --delete: {e}"));
                return;
            }
        };
        for dst in extras {
            match self.target.remove_all(&dst) {
                Ok(()) => self.summary.deleted += 1,
                Err(e) => self.error(&dst, format!("cannot delete (--delete): {e}")),
            }
        }
    }

    fn leaf(&mut self, n: &Node, dst: &Path, snap_path: &str, place: Place) -> Result<()> {
        if n.kind == NodeKind::File {
            return self.file(n, dst, snap_path, place);
        }
        if n.kind == NodeKind::Image {
            self.error(
                dst,
                format!(
                    "{snap_path} is a block image: restore it with `baton restore SNAPSHOT:{} --target FILE`",
                    n.name.lossy()
                ),
            );
            return Ok(());
        }
        let (existing, stat) = match self.existing_stat(dst) {
            Ok(e) => e,
            Err(e) => {
                self.error(dst, format!("cannot restore: {e}"));
                return Ok(());
            }
        };
        if existing != Existing::Nothing && self.keep_existing(n, dst, existing, stat, place) {
            return Ok(());
        }
        if existing != Existing::Nothing
            && let Err(e) = self.target.remove(dst, existing == Existing::Dir)
        {
            self.error(dst, format!("cannot replace existing entry: {e}"));
            return Ok(());
        }
        let created = match n.kind {
            NodeKind::File => unreachable!("files are restored by file()"),
            NodeKind::Symlink => match &n.link_target {
                Some(t) => self.target.symlink(t.as_os(), dst).map(Ok),
                None => Ok(Err("symlink without target in snapshot".to_string())),
            },
            NodeKind::Fifo | NodeKind::Chardev | NodeKind::Blockdev => {
                self.target.mknod(dst, n.kind, n.mode, n.rdev).map(Ok)
            }
            NodeKind::Dir => unreachable!("directories are restored by tree()"),
            NodeKind::Image => unreachable!("images are refused above"),
        };
        let result = match created {
            Ok(r) => r,
            Err(e) if is_no_space(&e) => return Err(target_full(dst, e)),
            Err(e) => Err(format!("cannot create: {e}")),
        };
        match result.and_then(|()| self.target.apply_metadata(dst, n, self.is_root)) {
            Ok(()) => self.summary.other += 1,
            Err(e) => self.error(dst, e),
        }
        self.progress.entry(dst, EntryStatus::Restored);
        Ok(())
    }

    fn file(&mut self, n: &Node, dst: &Path, _snap_path: &str, place: Place) -> Result<()> {
        if place.fresh && n.links <= 1 && !n.content.is_empty() {
            // In a fresh directory: the workers create the file when they
            // write its first chunk, so creating files is spread over the
            // cores instead of serialising the walk.
            self.queue_file(n, dst, Start::Create)?;
            return Ok(());
        }
        // Anything but a regular file in the way is replaced; a regular file
        // is kept and verified in place (an earlier, interrupted restore).
        let (mut existing, stat) = match self.existing_stat(dst) {
            Ok(e) => e,
            Err(e) => {
                self.error(dst, format!("cannot restore: {e}"));
                return Ok(());
            }
        };
        if existing == Existing::File && stat.is_some_and(|st| !self.may_reuse(st.uid, n)) {
            // A file owned by someone else (who may hold it open, or have
            // given it the snapshot's size and mtime) is neither trusted,
            // nor written through, nor given metadata: it is replaced like
            // anything else in the way.
            existing = Existing::Other;
        }
        if existing != Existing::Nothing && self.keep_existing(n, dst, existing, stat, place) {
            return Ok(());
        }
        let replace = match existing {
            Existing::Dir => Some(self.target.remove(dst, true)),
            Existing::Other => Some(self.target.remove(dst, false)),
            // A hard-linked file is always created anew: only a file this
            // restore created is written through while it has other links.
            Existing::File if n.links > 1 => Some(self.target.remove(dst, false)),
            _ => None,
        };
        if let Some(Err(e)) = replace {
            self.error(dst, format!("cannot replace existing entry: {e}"));
            return Ok(());
        }
        if (existing == Existing::Nothing || replace.is_some())
            && n.links <= 1
            && !n.content.is_empty()
        {
            // Created by the workers too: in a directory no one else can
            // add to, as in a fresh one; elsewhere exclusively, so that
            // nothing planted at the name meanwhile is written through.
            let start = if place.sealed {
                Start::Create
            } else {
                Start::CreateExclusive
            };
            self.queue_file(n, dst, start)?;
            return Ok(());
        }
        if n.links > 1 {
            let key = (n.device_id, n.inode);
            if let Some(first) = self.hardlinks.get(&key) {
                match self.target.hard_link(first, dst) {
                    Ok(()) => self.summary.files += 1,
                    Err(e) => self.error(
                        dst,
                        format!("cannot create hard link to {}: {e}", first.display()),
                    ),
                }
                return Ok(());
            }
            self.hardlinks.insert(key, dst.to_path_buf());
        }
        let fresh = existing == Existing::Nothing || replace.is_some();
        if fresh && (!n.content.is_empty() || n.links > 1) {
            // New: created at its length now, its content comes in a batch.
            // Pinned: written and given metadata only while the name
            // reaches this inode.
            let created = self
                .target
                .open_file(dst, true, true, n.links > 1)
                .and_then(|f| {
                    self.target.pin(dst, &f)?;
                    f.set_len(n.size)
                });
            if let Err(e) = created {
                if is_no_space(&e) {
                    return Err(target_full(dst, e));
                }
                self.hardlinks.remove(&(n.device_id, n.inode));
                self.error(dst, format!("cannot create file: {e}"));
                return Ok(());
            }
            if n.content.is_empty() {
                self.finish_file(n, dst);
                if n.links <= 1 {
                    self.target.unpin(dst);
                }
            } else {
                self.queue_file(n, dst, Start::Zeroed)?;
            }
            return Ok(());
        }
        // A regular file of ours is there (an earlier restore's, or an
        // edit): made the snapshot's length now, its chunks verified in
        // place by the writer's workers and only those that differ fetched,
        // in pack order like any other file.
        // (Or an empty file, created here.)
        let sized = self
            .target
            .open_file(dst, fresh, fresh, false)
            .and_then(|f| {
                use std::os::unix::fs::MetadataExt;
                let m = f.metadata()?;
                // What was opened is what the walk looked at (a file this
                // restore just created is new), and owned by someone it
                // may write for.
                if (!fresh && stat.is_some_and(|st| st.id != (m.dev(), m.ino())))
                    || !self.may_reuse(m.uid(), n)
                {
                    return Err(std::io::Error::other(
                        "replaced while the restore ran: not written through (left alone)",
                    ));
                }
                let old_len = m.len();
                if old_len != n.size {
                    f.set_len(n.size)?;
                }
                // Verified, written and given metadata: this inode only.
                self.target.pin(dst, &f)?;
                Ok(old_len.min(n.size))
            });
        match sized {
            Ok(_) if n.content.is_empty() => self.finish_file(n, dst),
            Ok(old_len) => self.queue_file(n, dst, Start::InPlace(old_len))?,
            Err(e) if is_no_space(&e) => return Err(target_full(dst, e)),
            Err(e) => {
                self.hardlinks.remove(&(n.device_id, n.inode));
                self.error(dst, format!("cannot restore file: {e}"));
            }
        }
        Ok(())
    }

    /// Whether a regular file owned by `uid` may be kept, written in place
    /// or given `n`'s metadata: it is this user's, or the snapshot's owner's
    /// when the snapshot gives it no setuid or setgid bit (a user must not
    /// get a set-id program of their own content from a restore).
    fn may_reuse(&self, uid: u32, n: &Node) -> bool {
        uid == self.euid || (uid == n.uid && n.mode & 0o6000 == 0)
    }

    /// Whether `--overwrite` keeps what is at `dst` (and records that).
    fn keep_existing(
        &mut self,
        n: &Node,
        dst: &Path,
        existing: Existing,
        stat: Option<EntryStat>,
        place: Place,
    ) -> bool {
        // A regular file of ours whose size and mtime (to the ns) are the
        // snapshot's: finished by an earlier restore, and untouched since.
        let same_stat = match stat {
            Some(st)
                if existing == Existing::File
                    && n.kind == NodeKind::File
                    && n.links <= 1
                    && st.size == n.size
                    && st.mtime_ns == n.mtime_ns =>
            {
                Some(st)
            }
            _ => None,
        };
        let keep = match self.overwrite {
            Overwrite::Always if self.trust_finished => {
                if let Some(st) = same_stat {
                    self.summary.files_already_restored += 1;
                    // The times are set last even when an owner or xattr
                    // could not be, so they prove nothing about the rest:
                    // what differs is applied again.
                    self.finish_kept_file(n, dst, &st, place);
                    return true;
                }
                false
            }
            Overwrite::Always => false,
            Overwrite::Never => true,
            Overwrite::IfNewer => stat.is_some_and(|st| st.mtime_ns >= n.mtime_ns),
            Overwrite::IfChanged => {
                if let Some(st) = same_stat {
                    // Finished and untouched since: its metadata is applied,
                    // its content trusted (read back with --verify).
                    self.summary.files_unchanged += 1;
                    self.finish_kept_file(n, dst, &st, place);
                    return true;
                }
                false
            }
        };
        if keep {
            self.summary.skipped += 1;
            self.progress.entry(dst, EntryStatus::Unmodified);
        }
        keep
    }

    /// Queues a new file for the writer; `create`: the workers create it
    /// (else it exists at its length already).
    fn queue_file(&mut self, n: &Node, dst: &Path, start: Start) -> Result<()> {
        self.pending_chunks += n.content.len();
        self.pending.push((dst.to_path_buf(), n.clone(), start));
        if self.pending_chunks >= BATCH_CHUNKS || self.pending.len() >= BATCH_FILES {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands the pending new files to the writer thread, and takes in what
    /// it finished meanwhile.
    fn flush(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            self.pending_chunks = 0;
            let sent = self
                .batches
                .as_ref()
                .is_some_and(|b| b.send(pending).is_ok());
            if !sent {
                // The writer stopped: its result says why.
                self.batches = None;
                return match self.done.recv() {
                    Ok(Err(e)) => Err(e),
                    _ => Err(RepoError::Internal("the restore writer stopped".into())),
                };
            }
        }
        while let Ok(d) = self.done.try_recv() {
            self.batch_done(d?);
        }
        Ok(())
    }

    fn batch_done(&mut self, d: BatchDone) {
        self.summary.bytes_fetched += d.bytes_fetched;
        self.summary.bytes_verified_in_place += d.bytes_verified_in_place;
        let results = d.content_failed.into_iter().zip(d.metadata_failed);
        for (((dst, n, start), (content, metadata)), complete) in
            d.files.iter().zip(results).zip(d.complete_in_place)
        {
            if complete && content.is_none() {
                self.summary.files_already_restored += 1;
            }
            if let Some(e) = content {
                // Not left looking restored; but where someone else could
                // have put something at the name, only the inode this
                // restore created or checked is removed.
                let _ = match start {
                    Start::CreateExclusive | Start::InPlace(_) => self.target.remove_if_pinned(dst),
                    Start::Zeroed => self.target.remove_if_pinned(dst),
                    Start::Create => self.target.remove(dst, false),
                };
                self.hardlinks.remove(&(n.device_id, n.inode));
                self.error(dst, format!("cannot restore file: {e}"));
                continue;
            }
            if let Some(e) = metadata {
                self.error(dst, e);
            }
            if n.links <= 1 && !self.verify {
                self.target.unpin(dst);
            }
            self.file_restored(n, dst);
        }
    }

    /// A finished file that was kept: its metadata is applied again unless
    /// the status just read shows all of it there already (owner, mode and
    /// times; a node with xattrs always gets them again), so a re-run does
    /// not open every file an earlier restore finished.
    fn finish_kept_file(&mut self, n: &Node, dst: &Path, st: &EntryStat, place: Place) {
        let in_place = n.xattrs.is_empty()
            && st.mode == n.mode & 0o7777
            && (!self.is_root || (st.uid == n.uid && st.gid == n.gid))
            && st.mtime_ns == n.mtime_ns
            && (n.ctime_ns == 0 || n.atime_ns == 0 || st.atime_ns == n.atime_ns);
        if in_place {
            self.file_restored(n, dst);
        } else if place.sealed {
            self.finish_file(n, dst);
        } else {
            // Given metadata only if the name still reaches what was looked at.
            self.target.pin_id(dst, st.id);
            self.finish_file(n, dst);
            self.target.unpin(dst);
        }
    }

    /// Applies a file's metadata once its content is written.
    fn finish_file(&mut self, n: &Node, dst: &Path) {
        if let Err(e) = self.target.apply_metadata(dst, n, self.is_root) {
            self.error(dst, e);
        }
        self.file_restored(n, dst);
    }

    fn file_restored(&mut self, n: &Node, dst: &Path) {
        self.summary.files += 1;
        self.summary.bytes += n.size;
        if self.verify {
            self.to_verify.push((dst.to_path_buf(), n.content.clone()));
        }
        self.progress.entry(dst, EntryStatus::Restored);
    }

    fn verify_all(&mut self) -> Result<()> {
        if !self.to_verify.is_empty() {
            self.progress.phase("verifying");
        }
        for (path, content) in std::mem::take(&mut self.to_verify) {
            self.cancel.check()?;
            match verify_file(self.repo, self.target, &path, &content) {
                Ok(()) => self.summary.files_verified += 1,
                Err(e) => self.error(&path, format!("verification failed: {e}")),
            }
        }
        Ok(())
    }
}

/// Whether an I/O error says the target's device (or quota) is full: the
/// restore stops there with one message, instead of failing every file after.
pub(crate) fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::ENOSPC) | Some(nix::libc::EDQUOT)
    )
}

fn target_full(path: &Path, cause: std::io::Error) -> RepoError {
    RepoError::TargetFull {
        path: path.display().to_string(),
        cause,
    }
}

/// Granularity of hole detection: the usual filesystem block size.
const HOLE_BLOCK: u64 = 4096;

/// Writes `data` at `offset`, leaving all-zero filesystem blocks unwritten so
/// they stay holes (the file was just truncated, so they read as zeros).
/// Sparse source files therefore restore sparse, even when a chunk mixes
/// data and zeros.
fn write_sparse(f: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    let mut pos = 0usize;
    let mut run_start: Option<usize> = None;
    while pos < data.len() {
        // Blocks are aligned to the file, not the chunk.
        let block_end = (((offset + pos as u64) / HOLE_BLOCK + 1) * HOLE_BLOCK - offset) as usize;
        let end = block_end.min(data.len());
        let zero = data[pos..end].iter().all(|&b| b == 0);
        match (zero, run_start) {
            (false, None) => run_start = Some(pos),
            (true, Some(s)) => {
                f.write_all_at(&data[s..pos], offset + s as u64)?;
                run_start = None;
            }
            _ => {}
        }
        pos = end;
    }
    if let Some(s) = run_start {
        f.write_all_at(&data[s..], offset + s as u64)?;
    }
    Ok(())
}

/// A tree entry name that stays inside its directory: not empty, `.` or
/// `..`, and without `/` or NUL. Trees are validated when decoded, so only a
/// tree that skipped that check could carry one; restore refuses it all the same.
fn safe_name(name: &[u8]) -> bool {
    baton_types::safe_name(name)
}

/// Whether `--overwrite` keeps an entry of another type that is where the
/// snapshot has a directory (`IfChanged` and `Always` replace it: it differs).
fn keeps_in_the_way(policy: Overwrite, ours_mtime_ns: i64, snapshot_mtime_ns: i64) -> bool {
    match policy {
        Overwrite::Never => true,
        Overwrite::IfNewer => ours_mtime_ns >= snapshot_mtime_ns,
        Overwrite::Always | Overwrite::IfChanged => false,
    }
}

/// Makes `dst` a directory; returns whether it was created (it is then empty).
/// Whatever else is there (a symbolic link included) is removed, not followed.
fn make_dir(t: &Target, dst: &Path) -> std::io::Result<bool> {
    match t.existing(dst)? {
        Existing::Dir => Ok(false),
        Existing::Nothing => t.create_dir(dst).map(|()| true),
        _ => {
            t.remove(dst, false)?;
            t.create_dir(dst).map(|()| true)
        }
    }
}

/// Re-reads a restored file and checks every chunk against its id.
fn verify_file(repo: &Repository, t: &Target, path: &Path, content: &[Id]) -> Result<()> {
    let mut f = t.open_read(path).map_err(|e| RepoError::io(path, e))?;
    let mut buf = Vec::new();
    for (i, id) in content.iter().enumerate() {
        let len = repo
            .index()
            .plain_len(id)
            .ok_or_else(|| RepoError::NotFound(format!("blob {id} is not in the index")))?;
        buf.resize(len as usize, 0);
        f.read_exact(&mut buf).map_err(|e| RepoError::io(path, e))?;
        if &repo.key().blob_id(&buf) != id {
            return Err(RepoError::Damaged(format!(
                "chunk {i} differs from the snapshot"
            )));
        }
    }
    let mut extra = [0u8; 1];
    if f.read(&mut extra).map_err(|e| RepoError::io(path, e))? != 0 {
        return Err(RepoError::Damaged(
            "file is longer than in the snapshot".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn unsafe_names_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"../x", b"a\0b"] {
            assert!(!safe_name(bad), "{bad:?}");
        }
        assert!(safe_name(b"..."));
        assert!(safe_name("naïve ☃".as_bytes()));
    }

    #[test]
    fn sparse_writes_leave_zero_blocks_as_holes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let f = File::create(&p).unwrap();
        // A chunk at an unaligned offset: zeros, 10 data bytes, many zeros, data at the end.
        let mut data = vec![0u8; 3 << 20];
        data[100_000..100_010].copy_from_slice(b"0123456789");
        let n = data.len();
        data[n - 5..].copy_from_slice(b"tail!");
        write_sparse(&f, &data, 1234).unwrap();
        f.set_len(1234 + n as u64).unwrap();
        let back = std::fs::read(&p).unwrap();
        assert_eq!(&back[1234..], &data[..]);
        assert!(back[..1234].iter().all(|&b| b == 0));
        let allocated = std::fs::metadata(&p).unwrap().blocks() * 512;
        assert!(allocated <= 4 * HOLE_BLOCK, "{allocated} bytes allocated");
    }
}
