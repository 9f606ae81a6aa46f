//! The archiver walks the sources in the journal's order (a directory's files
//! before its subdirectories, depth first, names in byte order), turns each
//! entry into a [`Node`], reuses the parent snapshot's content for unchanged
//! files, chunks and queues the rest, and writes one tree per directory.
//!
//! When a job is resumed, the job's catalog comes first: a file it holds is
//! reused exactly like an unchanged file of the parent snapshot (same size,
//! mtime, ctime and inode, else it is read again), and a directory it holds
//! as complete lends its stored subtree as the "parent" of everything below,
//! so a completed subtree costs one catalog look-up and metadata reads only.

use super::BackupOptions;
use super::checkpoint::Checkpointer;
use super::prefetch::{Prefetcher, ReadAhead};
use crate::filter::PatternSet;
use crate::meta::{NameCache, kind_of, node_from_metadata, ns as meta_ns, read_xattrs};
use baton_format::chunker::{ChunkStream, StreamError};
use baton_format::object::to_json;
use baton_repo::pipeline::{Job, Pipeline};
use baton_repo::progress::{Cancel, EntryStatus, Progress};
use baton_repo::{RepoError, Repository, Result};
use baton_types::{BackupErrorEntry, BlobType, FsName, Id, Node, NodeKind, SnapshotSummary, Tree};
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Marks a directory whose contents `--exclude-caches` skips.
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

pub(super) struct Archiver<'a, 'p> {
    repo: &'a Repository,
    pipe: &'a Pipeline<'p>,
    filter: &'a PatternSet,
    opts: &'a BackupOptions,
    progress: &'a dyn Progress,
    cancel: &'a Cancel,
    /// Blobs queued by this run (for deduplication).
    queued: HashSet<Id>,
    /// Blobs queued but not yet in a stored pack.
    unstored: HashSet<Id>,
    names: NameCache,
    summary: SnapshotSummary,
    /// File content bytes walked so far (the journal's stream position).
    stream_pos: u64,
    checkpoint: Option<Checkpointer>,
    /// Completed entries of the job being resumed, by snapshot path.
    resume: Option<BTreeMap<Vec<u8>, Node>>,
    /// The chunker and its buffer, reused for every file.
    chunker: Option<ChunkStream>,
    /// Files about to be read, hinted to the kernel.
    prefetch: Prefetcher,
}

/// A tree to compare against: from the parent snapshot, or from the
/// catalog of the job being resumed.
#[derive(Clone)]
pub(super) struct Prev {
    pub tree: Arc<Tree>,
    pub resumed: bool,
    /// The stored tree's id (`None` for the root of the parent snapshot).
    pub id: Option<Id>,
}

/// A node to compare against, and where it came from.
#[derive(Clone)]
struct PrevNode {
    node: Node,
    resumed: bool,
}

/// Opens a listed file for reading without updating its access time when
/// allowed. Never follows a symbolic link (the entry was listed as a regular
/// file: a link there now was swapped in) and never blocks (a FIFO swapped
/// in would otherwise hang the backup); the caller checks that the handle is
/// the entry that was listed.
pub(super) fn open_noatime(path: &Path) -> std::io::Result<File> {
    let flags = nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC;
    let open = |extra: i32| {
        OpenOptions::new()
            .read(true)
            .custom_flags(flags | extra)
            .open(path)
    };
    match open(nix::libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => open(0),
        r => r,
    }
    .map_err(|e| {
        if e.raw_os_error() == Some(nix::libc::ELOOP) {
            std::io::Error::other(
                "it was replaced by a symbolic link after it was listed (not followed, not stored)",
            )
        } else {
            e
        }
    })
}

/// Lists a directory (without touching its access time when allowed), sorted by name.
pub(super) fn read_dir_sorted(path: &Path) -> std::io::Result<Vec<OsString>> {
    read_dir_checked(path, None).map(|(names, _)| names)
}

/// The path through which the entry `name` of the directory open as `dir`
/// is reached: `/proc/self/fd/N/name` names an entry of exactly that
/// directory, whatever its path leads to by now.
fn beneath_handle(dir: &std::os::fd::OwnedFd, name: &std::ffi::OsStr) -> PathBuf {
    use std::os::fd::AsRawFd;
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(name);
    p
}

/// Like [`read_dir_sorted`], never following a symbolic link in place of the
/// directory, and (with `expect`) only if the opened directory is the
/// (device, inode) that was listed: a directory swapped for a link to
/// another one after it was listed is not read under its name.
pub(super) fn read_dir_checked(
    path: &Path,
    expect: Option<(u64, u64)>,
) -> std::io::Result<(Vec<OsString>, std::os::fd::OwnedFd)> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let handle = match nix::fcntl::open(
        path,
        flags | OFlag::O_NOATIME,
        nix::sys::stat::Mode::empty(),
    ) {
        Err(nix::errno::Errno::EPERM) => {
            nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty())
        }
        r => r,
    }
    .map_err(|e| {
        if e == nix::errno::Errno::ELOOP || e == nix::errno::Errno::ENOTDIR {
            std::io::Error::other(
                "it was replaced by another entry after it was listed (not followed)",
            )
        } else {
            std::io::Error::from(e)
        }
    })?;
    if let Some((dev, ino)) = expect {
        let st = nix::sys::stat::fstat(&handle).map_err(std::io::Error::from)?;
        if st.st_dev as u64 != dev || st.st_ino as u64 != ino {
            return Err(std::io::Error::other(
                "it was replaced by another directory after it was listed (not read)",
            ));
        }
    }
    // The listing is of exactly the directory checked above.
    let dir = nix::dir::Dir::openat(
        &handle,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(std::io::Error::from)?;
    let mut names = Vec::new();
    for e in dir {
        let e = e.map_err(std::io::Error::from)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsString::from(std::ffi::OsStr::from_bytes(n)));
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok((names, handle))
}

fn is_cache_dir(path: &Path) -> bool {
    let mut buf = [0u8; CACHEDIR_SIGNATURE.len()];
    // Not followed, and never blocking: a FIFO named CACHEDIR.TAG must not
    // hang the backup.
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path.join("CACHEDIR.TAG"))
        .and_then(|f| {
            if f.metadata()?.is_file() {
                Ok(f)
            } else {
                Err(std::io::Error::other("not a regular file"))
            }
        })
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok()
        && buf == CACHEDIR_SIGNATURE
}

impl<'a, 'p> Archiver<'a, 'p> {
    pub fn new(
        repo: &'a Repository,
        pipe: &'a Pipeline<'p>,
        filter: &'a PatternSet,
        opts: &'a BackupOptions,
        progress: &'a dyn Progress,
        cancel: &'a Cancel,
    ) -> Self {
        Archiver {
            repo,
            pipe,
            filter,
            opts,
            progress,
            cancel,
            queued: HashSet::new(),
            unstored: HashSet::new(),
            names: NameCache::default(),
            summary: SnapshotSummary::default(),
            stream_pos: 0,
            checkpoint: None,
            resume: None,
            chunker: None,
            prefetch: Prefetcher::default(),
        }
    }

    /// Journals progress through `checkpoint`, and reuses `resume`'s entries.
    pub fn with_journal(
        mut self,
        checkpoint: Option<Checkpointer>,
        resume: Option<BTreeMap<Vec<u8>, Node>>,
    ) -> Self {
        self.checkpoint = checkpoint;
        self.resume = resume;
        self
    }

    /// Handles stored packs and writes a journal record when one is due.
    fn pump(&mut self, force: bool) -> Result<()> {
        let stored = self.pipe.stored_packs();
        match &mut self.checkpoint {
            Some(c) => c.pump(self.repo, stored, &mut self.unstored, force),
            None => {
                for p in stored {
                    for b in p.blobs {
                        self.unstored.remove(&b.id);
                    }
                }
                Ok(())
            }
        }
    }

    /// Chunks a stream into new blobs, appending their ids to `content`.
    fn chunk_stream(
        &mut self,
        reader: impl Read,
        content: &mut Vec<Id>,
    ) -> std::result::Result<u64, StreamError<RepoError>> {
        let mut cs = self
            .chunker
            .take()
            .unwrap_or_else(|| ChunkStream::new(&self.repo.config().chunker));
        let r = cs.run(reader, |chunk| {
            self.cancel.check()?;
            self.progress.bytes(chunk.len() as u64);
            let id = self.save_chunk(chunk)?;
            content.push(id);
            self.pump(false)
        });
        self.chunker = Some(cs);
        r
    }

    /// Records a finished entry for the journal.
    fn finished(&mut self, path: &Path, node: &Node) -> Result<()> {
        if node.kind == NodeKind::File {
            self.stream_pos += node.size;
        }
        if let Some(c) = &mut self.checkpoint {
            let blobs = node.content.iter().chain(node.subtree.iter());
            let deps: Vec<Id> = blobs
                .filter(|b| self.unstored.contains(b))
                .copied()
                .collect();
            c.finished(path.as_os_str().as_bytes(), self.stream_pos, node, deps);
        }
        self.pump(false)
    }

    fn resumed_node(&self, path: &Path) -> Option<PrevNode> {
        let node = self
            .resume
            .as_ref()?
            .get(path.as_os_str().as_bytes())?
            .clone();
        Some(PrevNode {
            node,
            resumed: true,
        })
    }

    /// After the walk failed or was cancelled: lets the pipeline store what
    /// it holds and journals it, so that the next run resumes from there
    /// instead of reading it again. Best effort: the walk's error is what
    /// gets reported.
    pub fn salvage(&mut self) {
        let stored = self.pipe.drain();
        if let Some(c) = &mut self.checkpoint {
            let _ = c.pump(self.repo, stored, &mut self.unstored, true);
        }
    }

    pub fn into_summary(self) -> SnapshotSummary {
        self.summary
    }

    fn record_error(&mut self, path: &Path, message: String) {
        let path = path.to_string_lossy().into_owned();
        self.progress.error(&path, &message);
        self.summary.errors.push(BackupErrorEntry { path, message });
    }

    /// Stores a chunk of file data unless it is known; copies it only then.
    fn save_chunk(&mut self, chunk: &[u8]) -> Result<Id> {
        let id = self.repo.key().blob_id(chunk);
        if self.is_new(id) {
            let mut data = self.pipe.buffer();
            data.extend_from_slice(chunk);
            self.queue(BlobType::Data, id, data)?;
        }
        Ok(id)
    }

    /// Whether a blob is neither stored nor queued; if so, it counts as queued.
    fn is_new(&mut self, id: Id) -> bool {
        !self.repo.index().contains(&id) && self.queued.insert(id)
    }

    fn queue(&mut self, blob_type: BlobType, id: Id, data: Vec<u8>) -> Result<()> {
        self.unstored.insert(id);
        self.summary.blobs_new += 1;
        if self.pipe.send(Job {
            blob_type,
            id,
            data,
        }) {
            Ok(())
        } else {
            Err(RepoError::Internal("storing data failed".into()))
        }
    }

    fn save_blob(&mut self, blob_type: BlobType, data: Vec<u8>) -> Result<Id> {
        let id = self.repo.key().blob_id(&data);
        if self.is_new(id) {
            self.queue(blob_type, id, data)?;
        }
        Ok(id)
    }

    fn save_tree(&mut self, mut tree: Tree) -> Result<Id> {
        tree.sort();
        self.save_blob(BlobType::Tree, to_json(&tree))
    }

    /// Backs up the sources; returns the root tree id.
    pub fn run(&mut self, sources: &[PathBuf], parent: Option<Arc<Tree>>) -> Result<Id> {
        let parent = parent.map(|tree| Prev {
            tree,
            resumed: false,
            id: None,
        });
        let root = if sources.len() == 1 && sources[0] == Path::new("/") {
            let m = std::fs::symlink_metadata("/").map_err(|e| RepoError::io("/", e))?;
            let node = self.dir_node(
                Path::new("/"),
                Path::new("/"),
                FsName::from("/"),
                &m,
                parent,
                m.dev(),
            )?;
            node.subtree.expect("directories have subtrees")
        } else {
            let tree = self.virtual_level(Path::new("/"), sources, parent.as_ref())?;
            self.save_tree(tree)?
        };
        self.pump(true)?;
        Ok(root)
    }

    /// The tree of `prefix`, holding only the ancestors of the sources and the
    /// sources themselves, so a snapshot keeps each source at its full path.
    fn virtual_level(
        &mut self,
        prefix: &Path,
        sources: &[PathBuf],
        parent: Option<&Prev>,
    ) -> Result<Tree> {
        let mut groups: BTreeMap<Vec<u8>, Vec<PathBuf>> = BTreeMap::new();
        for s in sources {
            let rest = s
                .strip_prefix(prefix)
                .expect("sources lie under their prefix");
            if let Some(first) = rest.components().next() {
                groups
                    .entry(first.as_os_str().as_bytes().to_vec())
                    .or_default()
                    .push(s.clone());
            }
        }
        let mut nodes = Vec::new();
        for (name, group) in groups {
            self.cancel.check()?;
            let name = FsName(name);
            let child = prefix.join(name.as_os());
            let meta = match std::fs::symlink_metadata(&child) {
                Ok(m) => m,
                Err(e) => {
                    self.record_error(&child, format!("cannot read: {e}"));
                    continue;
                }
            };
            let prev = self
                .resumed_node(&child)
                .or_else(|| Self::prev_node(parent, &name));
            if group.iter().any(|s| s == &child) {
                if let Some(n) = self.entry_node(&child, &child, name, &meta, prev, meta.dev())? {
                    nodes.push(n);
                }
            } else {
                let mut node = self.node(name, NodeKind::Dir, &meta);
                node.xattrs = self.xattrs(&child, &child);
                // An ancestor of the sources keeps its owner and mode, but not
                // what changes whenever anything else happens in it (times,
                // link count): those would make snapshots of unchanged data
                // differ. A zero ctime marks it; restore leaves its times alone.
                (node.mtime_ns, node.atime_ns, node.ctime_ns, node.links) = (0, 0, 0, 0);
                let sub_parent = self.prev_subtree(prev.as_ref());
                let tree = self.virtual_level(&child, &group, sub_parent.as_ref())?;
                node.subtree = Some(self.save_tree(tree)?);
                self.summary.dirs += 1;
                nodes.push(node);
            }
        }
        Ok(Tree { nodes })
    }

    fn prev_node(parent: Option<&Prev>, name: &FsName) -> Option<PrevNode> {
        let p = parent?;
        p.tree.find(&name.0).map(|n| PrevNode {
            node: n.clone(),
            resumed: p.resumed,
        })
    }

    /// The xattrs of the entry reached as `sys` (`path` names it in errors).
    fn xattrs(&mut self, path: &Path, sys: &Path) -> Vec<baton_types::Xattr> {
        match read_xattrs(sys) {
            Ok(x) => x,
            // A vanished entry is reported once, by the step that needs it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                self.record_error(path, format!("cannot read extended attributes: {e}"));
                Vec::new()
            }
        }
    }

    fn prev_subtree(&self, prev: Option<&PrevNode>) -> Option<Prev> {
        let p = prev?;
        let id = if p.node.kind == NodeKind::Dir {
            p.node.subtree?
        } else {
            return None;
        };
        // A tree that cannot be loaded only costs re-reading files.
        let tree = self.repo.read_tree(&id).ok()?;
        Some(Prev {
            tree,
            resumed: p.resumed,
            id: Some(id),
        })
    }

    /// Any kind of entry; `None` when it is skipped (socket, unreadable file).
    /// `path` names the entry for people (progress, errors, the catalog);
    /// `sys` is how it is reached: below its directory's handle.
    fn entry_node(
        &mut self,
        path: &Path,
        sys: &Path,
        name: FsName,
        meta: &Metadata,
        prev: Option<PrevNode>,
        root_dev: u64,
    ) -> Result<Option<Node>> {
        let Some(kind) = kind_of(meta) else {
            return Ok(None);
        };
        let node = match kind {
            NodeKind::File => self.file_node(path, sys, name, meta, prev)?,
            NodeKind::Dir => {
                let sub_parent = self.prev_subtree(prev.as_ref());
                return self
                    .dir_node(path, sys, name, meta, sub_parent, root_dev)
                    .map(Some);
            }
            NodeKind::Symlink => {
                let mut node = self.node(name, kind, meta);
                match std::fs::read_link(sys) {
                    Ok(t) => {
                        node.link_target = Some(FsName::from_os(t.as_os_str()));
                        Some(node)
                    }
                    Err(e) => {
                        self.record_error(path, format!("cannot read symlink: {e}"));
                        None
                    }
                }
            }
            NodeKind::Fifo | NodeKind::Chardev | NodeKind::Blockdev => {
                let mut node = self.node(name, kind, meta);
                node.xattrs = self.xattrs(path, sys);
                Some(node)
            }
            // kind_of never reads a file system entry as an image.
            NodeKind::Image => None,
        };
        if let Some(n) = &node {
            if n.kind != NodeKind::File {
                self.summary.others += 1;
            }
            self.finished(path, n)?;
        }
        Ok(node)
    }

    fn dir_node(
        &mut self,
        path: &Path,
        sys: &Path,
        name: FsName,
        meta: &Metadata,
        parent: Option<Prev>,
        root_dev: u64,
    ) -> Result<Node> {
        self.cancel.check()?;
        let mut node = self.node(name, NodeKind::Dir, meta);
        node.xattrs = self.xattrs(path, sys);
        // Reported once its tree is known (new, modified or unchanged).
        let before = parent.as_ref().map(|p| p.id);
        // Every entry below is reached through this directory's handle, so
        // a directory swapped for a link after it was checked is never
        // read through.
        let (mut names, handle) = match read_dir_checked(sys, Some((meta.dev(), meta.ino()))) {
            Ok((n, h)) => (n, Some(h)),
            Err(e) => {
                self.record_error(path, format!("cannot list directory: {e}"));
                (Vec::new(), None)
            }
        };
        if self.opts.exclude_caches && is_cache_dir(sys) {
            names.retain(|n| n.as_bytes() == b"CACHEDIR.TAG");
        }
        if names.iter().any(|n| {
            self.opts
                .exclude_if_present
                .iter()
                .any(|m| n.as_bytes() == m.as_bytes())
        }) {
            names.clear();
        }
        let mut entries = Vec::with_capacity(names.len());
        for n in names {
            let child = path.join(&n);
            if self.filter.matches(&child) {
                continue;
            }
            let Some(h) = &handle else { continue };
            let child_sys = beneath_handle(h, &n);
            match std::fs::symlink_metadata(&child_sys) {
                Ok(m)
                    if m.is_file()
                        && self.opts.exclude_larger_than.is_some_and(|l| m.len() > l) => {}
                Ok(m) => entries.push((n, (child, child_sys), m)),
                Err(e) => self.record_error(&child, format!("cannot read: {e}")),
            }
        }
        let mut nodes = Vec::with_capacity(entries.len());
        // A directory's files first, then its subdirectories (the journal's order).
        let (dirs, others): (Vec<_>, Vec<_>) =
            entries.into_iter().partition(|(_, _, m)| m.is_dir());
        let entries: Vec<_> = others
            .into_iter()
            .chain(dirs)
            .filter(|(_, _, m)| !(m.is_dir() && self.opts.one_file_system && m.dev() != root_dev))
            .map(|(n, child, m)| {
                let fname = FsName::from_os(&n);
                let prev = match parent.as_ref() {
                    // Below a resumed directory the catalog holds nothing more.
                    Some(p) if p.resumed => Self::prev_node(Some(p), &fname),
                    _ => self
                        .resumed_node(&child.0)
                        .or_else(|| Self::prev_node(parent.as_ref(), &fname)),
                };
                (fname, child, m, prev)
            })
            .collect();
        for (_, (_, child_sys), m, prev) in &entries {
            if m.is_file() && !prev.as_ref().is_some_and(|p| self.unchanged(p, m)) {
                self.prefetch.push(child_sys.clone(), m.len());
            }
        }
        for (fname, (child, child_sys), m, prev) in entries {
            self.cancel.check()?;
            if let Some(c) = self.entry_node(&child, &child_sys, fname, &m, prev, root_dev)? {
                nodes.push(c);
            }
        }
        // Nothing queued here may be opened once the handle is closed (its
        // number may then name another directory).
        self.prefetch.clear();
        drop(handle);
        let mut tree = Tree { nodes };
        tree.sort();
        // Unchanged since the parent: its stored tree is this one (no need
        // to encode and hash it again).
        let same = parent.as_ref().and_then(|p| {
            p.id.filter(|id| {
                *p.tree == tree && (self.repo.index().contains(id) || self.queued.contains(id))
            })
        });
        node.subtree = Some(match same {
            Some(id) => id,
            // Sorted above already.
            None => self.save_blob(BlobType::Tree, to_json(&tree))?,
        });
        let status = match before {
            None => EntryStatus::New,
            Some(old) if old == node.subtree => EntryStatus::Unmodified,
            Some(_) => EntryStatus::Changed,
        };
        self.progress.entry(path, status);
        self.summary.dirs += 1;
        self.finished(path, &node)?;
        Ok(node)
    }

    /// Whether a file's metadata says it is the same as `p` (size, mtime,
    /// ctime, inode). `--force` distrusts the parent snapshot, not the job's
    /// own journal.
    fn unchanged(&self, p: &PrevNode, meta: &Metadata) -> bool {
        let n = &p.node;
        (!self.opts.force || p.resumed)
            && n.kind == NodeKind::File
            && n.size == meta.size()
            && n.mtime_ns == meta_ns(meta.mtime(), meta.mtime_nsec())
            && n.ctime_ns == meta_ns(meta.ctime(), meta.ctime_nsec())
            && n.inode == meta.ino()
    }

    /// A node from `lstat` data; the access time only with `--with-atime`
    /// (anything that reads a file changes it, so storing it would make
    /// every snapshot of unchanged data differ).
    fn node(&mut self, name: FsName, kind: NodeKind, meta: &Metadata) -> Node {
        let mut n = node_from_metadata(name, kind, meta, &mut self.names);
        if !self.opts.with_atime {
            n.atime_ns = 0;
        }
        n
    }

    fn file_node(
        &mut self,
        path: &Path,
        sys: &Path,
        name: FsName,
        meta: &Metadata,
        prev: Option<PrevNode>,
    ) -> Result<Option<Node>> {
        let mut node = self.node(name, NodeKind::File, meta);
        if let Some(p) = &prev
            && self.unchanged(p, meta)
            && p.node
                .content
                .iter()
                .all(|c| self.repo.index().contains(c) || self.queued.contains(c))
        {
            node.content = p.node.content.clone();
            // Setting an extended attribute changes the ctime: with the ctime
            // unchanged, so are they.
            node.xattrs = p.node.xattrs.clone();
            self.summary.files_unmodified += 1;
            self.summary.bytes_total += node.size;
            if p.resumed {
                // Already counted in the progress when the resume started.
                self.summary.bytes_resumed += node.size;
            } else {
                self.progress.bytes(node.size);
            }
            self.progress.entry(path, EntryStatus::Unmodified);
            return Ok(Some(node));
        }
        node.xattrs = self.xattrs(path, sys);
        let (file, hinted) = match self.prefetch.take(sys) {
            Some(f) => f,
            None => match open_noatime(sys) {
                Ok(f) => (f, 0),
                Err(e) => {
                    self.record_error(path, format!("cannot open: {e}"));
                    return Ok(None);
                }
            },
        };
        // The handle must be the entry that was listed: what is read is
        // stored under its name.
        match file.metadata() {
            // Opened ahead, then deleted before its turn: it vanished.
            Ok(m) if m.nlink() == 0 => {
                self.record_error(path, "cannot open: the file was deleted".into());
                return Ok(None);
            }
            Ok(m) if !m.is_file() || m.dev() != meta.dev() || m.ino() != meta.ino() => {
                self.record_error(
                    path,
                    "it was replaced by another entry after it was listed (not stored)".into(),
                );
                return Ok(None);
            }
            Ok(_) => {}
            Err(e) => {
                self.record_error(path, format!("cannot open: {e}"));
                return Ok(None);
            }
        }
        let mut content = Vec::new();
        let read = match self.chunk_stream(ReadAhead::new(&file, hinted, meta.len()), &mut content)
        {
            Ok(n) => n,
            Err(StreamError::Sink(e)) => return Err(e),
            Err(StreamError::Io { error, read }) => {
                self.summary.bytes_read += read;
                self.record_error(path, format!("read failed after {read} bytes: {error}"));
                return Ok(None);
            }
        };
        node.content = content;
        self.summary.bytes_read += read;
        if let Ok(after) = file.metadata()
            && (after.len() != meta.len()
                || after.mtime() != meta.mtime()
                || after.mtime_nsec() != meta.mtime_nsec()
                || read != meta.len())
        {
            // Keep what was read, with the metadata from before the read:
            // the next backup sees a different mtime/size and reads it again.
            self.record_error(
                path,
                format!("file changed while it was read ({read} bytes stored)"),
            );
        }
        node.size = read;
        self.summary.bytes_total += read;
        let status = if prev.is_some() {
            self.summary.files_changed += 1;
            EntryStatus::Changed
        } else {
            self.summary.files_new += 1;
            EntryStatus::New
        };
        self.progress.entry(path, status);
        Ok(Some(node))
    }

    /// The tree of a `--stdin` backup: one file read from `reader`.
    pub fn stdin_tree(
        &mut self,
        name: &str,
        reader: &mut (dyn Read + Send),
        parent: Option<&Tree>,
    ) -> Result<Id> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let (uid, gid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let mut node = Node {
            name: FsName::from(name),
            kind: NodeKind::File,
            mode: 0o644,
            uid,
            gid,
            user: self.names.user(uid),
            group: self.names.group(gid),
            mtime_ns: now,
            atime_ns: now,
            ctime_ns: now,
            inode: 0,
            device_id: 0,
            links: 1,
            size: 0,
            rdev: 0,
            content: Vec::new(),
            subtree: None,
            link_target: None,
            xattrs: Vec::new(),
            image: None,
        };
        let mut content = Vec::new();
        node.size = match self.chunk_stream(reader, &mut content) {
            Ok(n) => n,
            Err(StreamError::Sink(e)) => return Err(e),
            Err(StreamError::Io { error, .. }) => {
                return Err(RepoError::io("standard input", error));
            }
        };
        node.content = content;
        self.summary.bytes_read += node.size;
        self.summary.bytes_total += node.size;
        if parent.and_then(|t| t.find(name.as_bytes())).is_some() {
            self.summary.files_changed += 1;
        } else {
            self.summary.files_new += 1;
        }
        self.save_tree(Tree { nodes: vec![node] })
    }
}
