//! The FUSE file system: looks entries up in the layout and the snapshots'
//! trees, answers `stat`, lists directories, reads files, symlinks and
//! xattrs, and refuses every change with `EROFS`.
//!
//! The callbacks run on fuser's threads, several at once; everything here
//! is behind `&self` (the inode table, the chunk cache and the open images
//! each have their own lock, never held across storage reads).

use crate::attr::{self, BLOCK_SIZE};
use crate::content::{CHUNK_CACHE_BYTES, ChunkCache, Content};
use crate::inodes::{Inode, Key, Kind, Table};
use crate::layout::{Layout, VEntry};
use baton_block::{ImageReader, ReaderConfig};
use baton_repo::Repository;
use baton_types::{Node, NodeKind, Tree};
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// How long the kernel may cache entries and attributes: nothing in a
/// snapshot changes.
const TTL: Duration = Duration::from_secs(3600);

/// Cache of an open image's reader (each open image has its own).
const IMAGE_CACHE_BYTES: u64 = 16 << 20;

/// Reports a failure the kernel only sees as an errno.
fn log(msg: &str) {
    eprintln!("baton mount: {msg}");
}

pub(crate) struct BatonFs {
    repo: Arc<Repository>,
    layout: Layout,
    inodes: Table,
    chunks: ChunkCache,
    /// Readers of open images, by file handle.
    images: Mutex<HashMap<u64, Arc<ImageReader>>>,
    next_fh: AtomicU64,
    /// The time of virtual directories.
    mounted: SystemTime,
}

impl BatonFs {
    pub(crate) fn new(repo: Arc<Repository>, layout: Layout) -> BatonFs {
        BatonFs {
            repo,
            layout,
            inodes: Table::new(crate::layout::ROOT),
            chunks: ChunkCache::new(CHUNK_CACHE_BYTES),
            images: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            mounted: SystemTime::now(),
        }
    }

    fn inode(&self, ino: INodeNo) -> Result<Arc<Inode>, Errno> {
        self.inodes.get(ino.0).ok_or(Errno::ENOENT)
    }

    fn snapshot_time(&self, i: usize) -> SystemTime {
        self.layout.times[i].unwrap_or(self.mounted)
    }

    /// The chunk layout of a regular file (computed once).
    fn content(&self, inode: &Inode, node: &Node) -> Arc<Content> {
        let Kind::Node { content, .. } = &inode.kind else {
            return Arc::new(Content::new(std::iter::empty(), 0));
        };
        content
            .get_or_init(|| {
                let index = self.repo.index();
                let c = Content::new(
                    node.content.iter().map(|id| index.plain_len_any(id)),
                    node.size,
                );
                if !c.complete() {
                    log(&format!(
                        "{:?}: a chunk is not in the index (missing data); shown at its recorded size, reads past the last known chunk fail",
                        node.name
                    ));
                } else if c.size != node.size {
                    log(&format!(
                        "{:?}: its chunks hold {} bytes, its entry says {}; shown as {}",
                        node.name, c.size, node.size, c.size
                    ));
                }
                Arc::new(c)
            })
            .clone()
    }

    fn attr(&self, ino: u64, inode: &Inode) -> FileAttr {
        match &inode.kind {
            Kind::Virtual(d) => {
                let subdirs = self.layout.dirs[*d].subdirs();
                let nlink = u32::try_from(subdirs + 2).unwrap_or(u32::MAX);
                attr::virtual_attr(ino, FileType::Directory, 0, nlink, self.mounted)
            }
            Kind::Latest { target, snapshot } => attr::virtual_attr(
                ino,
                FileType::Symlink,
                target.len() as u64,
                1,
                self.snapshot_time(*snapshot),
            ),
            Kind::Root(i) => {
                attr::virtual_attr(ino, FileType::Directory, 0, 2, self.snapshot_time(*i))
            }
            Kind::Node { .. } => {
                let node = inode.node().expect("a node inode has a node");
                let size = match node.kind {
                    NodeKind::File => self.content(inode, node).size,
                    NodeKind::Symlink => node.link_target.as_ref().map_or(0, |t| t.0.len() as u64),
                    NodeKind::Image => node.size,
                    _ => 0,
                };
                attr::node_attr(ino, node, size)
            }
        }
    }

    /// The tree a directory inode holds (`None`: not a tree directory).
    fn tree_of(&self, inode: &Inode) -> Result<Option<Arc<Tree>>, Errno> {
        let id = match &inode.kind {
            Kind::Root(i) => self.layout.snapshots[*i].1.tree,
            Kind::Node { .. } => {
                let node = inode.node().expect("a node inode has a node");
                if node.kind != NodeKind::Dir {
                    return Err(Errno::ENOTDIR);
                }
                match node.subtree {
                    Some(id) => id,
                    None => return Ok(Some(Arc::new(Tree::default()))),
                }
            }
            _ => return Ok(None),
        };
        self.repo.load_tree(&id).map(Some).map_err(|e| {
            log(&format!("cannot read tree {}: {e}", id.short()));
            Errno::EIO
        })
    }

    /// The inode of entry `index` of `tree`, a child of `parent`.
    fn node_child(
        &self,
        parent: u64,
        parent_inode: &Inode,
        tree: &Arc<Tree>,
        index: usize,
    ) -> (u64, Arc<Inode>) {
        let root = parent_inode.snapshot_dir(parent).unwrap_or(parent);
        let key = Key::of_node(parent, root, &tree.nodes[index]);
        self.inodes.child(key, || Inode {
            parent,
            kind: Kind::Node {
                tree: tree.clone(),
                index,
                root,
                content: Default::default(),
            },
        })
    }

    /// The inode of a virtual directory's entry `name`.
    fn virtual_child(&self, parent: u64, name: &str, e: &VEntry) -> (u64, Arc<Inode>) {
        let key = Key::Child(parent, name.as_bytes().into());
        self.inodes.child(key, || Inode {
            parent,
            kind: match e {
                VEntry::Dir(d) => Kind::Virtual(*d),
                VEntry::Snapshot(i) => Kind::Root(*i),
                VEntry::Latest { target, snapshot } => Kind::Latest {
                    target: target.clone(),
                    snapshot: *snapshot,
                },
            },
        })
    }

    fn lookup_child(&self, parent: u64, name: &[u8]) -> Result<(u64, Arc<Inode>), Errno> {
        let p = self.inodes.get(parent).ok_or(Errno::ENOENT)?;
        if let Kind::Virtual(d) = &p.kind {
            let (n, e) = self.layout.dirs[*d].find(name).ok_or(Errno::ENOENT)?;
            return Ok(self.virtual_child(parent, n, e));
        }
        let tree = self.tree_of(&p)?.ok_or(Errno::ENOTDIR)?;
        let index = tree
            .nodes
            .binary_search_by(|n| n.name.0.as_slice().cmp(name))
            .map_err(|_| Errno::ENOENT)?;
        Ok(self.node_child(parent, &p, &tree, index))
    }

    /// The entries of directory `ino` from position `from` (`.` and `..`
    /// are positions 0 and 1), each with its position + 1 as the offset
    /// the kernel resumes from; `add` returns true when the reply is full.
    fn list(
        &self,
        ino: u64,
        from: u64,
        add: &mut dyn FnMut(u64, u64, FileType, &OsStr) -> bool,
    ) -> Result<(), Errno> {
        let inode = self.inodes.get(ino).ok_or(Errno::ENOENT)?;
        let mut pos = from;
        for (i, name) in [".", ".."].iter().enumerate().skip(from as usize) {
            let target = if i == 0 { ino } else { inode.parent };
            pos += 1;
            if add(target, pos, FileType::Directory, OsStr::new(name)) {
                return Ok(());
            }
        }
        let skip = usize::try_from(from.saturating_sub(2)).unwrap_or(usize::MAX);
        if let Kind::Virtual(d) = &inode.kind {
            for (n, e) in self.layout.dirs[*d].entries.iter().skip(skip) {
                let (child, _) = self.virtual_child(ino, n, e);
                let kind = match e {
                    VEntry::Latest { .. } => FileType::Symlink,
                    _ => FileType::Directory,
                };
                pos += 1;
                if add(child, pos, kind, OsStr::new(n)) {
                    break;
                }
            }
            return Ok(());
        }
        let tree = self.tree_of(&inode)?.ok_or(Errno::ENOTDIR)?;
        for (i, n) in tree.nodes.iter().enumerate().skip(skip) {
            let (child, _) = self.node_child(ino, &inode, &tree, i);
            pos += 1;
            if add(
                child,
                pos,
                attr::file_type(n.kind),
                OsStr::from_bytes(&n.name.0),
            ) {
                break;
            }
        }
        Ok(())
    }

    fn read_file(
        &self,
        inode: &Inode,
        node: &Node,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        let content = self.content(inode, node);
        let load = |i: usize, len: u64| {
            let id = &node.content[i];
            if let Some(c) = self.chunks.get(id) {
                return Ok(c);
            }
            let data = self
                .repo
                .load_blob(id)
                .map_err(|e| format!("chunk {}: {e}", id.short()))?;
            if data.len() as u64 != len {
                return Err(format!(
                    "chunk {} holds {} bytes, the index says {len}",
                    id.short(),
                    data.len()
                ));
            }
            let data = Arc::new(data);
            self.chunks.put(*id, data.clone());
            Ok(data)
        };
        content.read(offset, size, &load).map_err(|e| {
            log(&format!("cannot read {:?} at {offset}: {e}", node.name));
            Errno::EIO
        })
    }

    fn read_image(&self, fh: u64, node: &Node, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let reader = self
            .images
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&fh)
            .cloned()
            .ok_or(Errno::EBADF)?;
        let end = offset
            .saturating_add(u64::from(size))
            .min(node.size)
            .min(reader.size());
        let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
        reader.read_at(offset, &mut buf).map_err(|e| {
            log(&format!(
                "cannot read image {:?} at {offset}: {e}",
                node.name
            ));
            Errno::EIO
        })?;
        Ok(buf)
    }

    fn xattrs(&self, ino: INodeNo) -> Result<Vec<(Vec<u8>, String)>, Errno> {
        let inode = self.inode(ino)?;
        Ok(inode
            .node()
            .map(|n| {
                n.xattrs
                    .iter()
                    .map(|x| (x.name.0.clone(), x.value.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Replies to a `getxattr`/`listxattr` with `data`: its size when asked
/// for the size (`size` 0), else the bytes if they fit.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    let Ok(len) = u32::try_from(data.len()) else {
        return reply.error(Errno::E2BIG);
    };
    if size == 0 {
        reply.size(len)
    } else if len > size {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(data)
    }
}

impl Filesystem for BatonFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_child(parent.0, name.as_bytes()) {
            Ok((ino, inode)) => reply.entry(&TTL, &self.attr(ino, &inode), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.inode(ino) {
            Ok(inode) => reply.attr(&TTL, &self.attr(ino.0, &inode)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let inode = match self.inode(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        match &inode.kind {
            Kind::Latest { target, .. } => reply.data(target.as_bytes()),
            Kind::Node { .. } => match inode.node().and_then(|n| n.link_target.as_ref()) {
                Some(t) => reply.data(&t.0),
                None => reply.error(Errno::EINVAL),
            },
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let inode = match self.inode(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let Some(node) = inode.node() else {
            return reply.error(Errno::EISDIR);
        };
        match node.kind {
            NodeKind::File => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            NodeKind::Image => {
                let cfg = ReaderConfig {
                    cache_bytes: IMAGE_CACHE_BYTES,
                    read_ahead: 4,
                    threads: 1,
                };
                match ImageReader::open(self.repo.clone(), node, cfg) {
                    Ok(r) => {
                        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                        self.images
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(fh, Arc::new(r));
                        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
                    }
                    Err(e) => {
                        log(&format!("cannot open image {:?}: {e}", node.name));
                        reply.error(Errno::EIO)
                    }
                }
            }
            NodeKind::Dir => reply.error(Errno::EISDIR),
            _ => reply.error(Errno::ENXIO),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let inode = match self.inode(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let Some(node) = inode.node() else {
            return reply.error(Errno::EISDIR);
        };
        let r = match node.kind {
            NodeKind::File => self.read_file(&inode, node, offset, size),
            NodeKind::Image => self.read_image(fh.0, node, offset, size),
            _ => Err(Errno::EINVAL),
        };
        match r {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if fh.0 != 0 {
            self.images
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&fh.0);
        }
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut add = |child: u64, next: u64, kind: FileType, name: &OsStr| {
            reply.add(INodeNo(child), next, kind, name)
        };
        match self.list(ino.0, offset, &mut add) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.inodes.len() as u64;
        reply.statfs(0, 0, 0, files, 0, BLOCK_SIZE, 255, BLOCK_SIZE);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let xattrs = match self.xattrs(ino) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let Some((_, hex)) = xattrs.iter().find(|(n, _)| n.as_slice() == name.as_bytes()) else {
            return reply.error(Errno::NO_XATTR);
        };
        match baton_types::hex_decode(hex) {
            Some(value) => reply_xattr(reply, size, &value),
            None => {
                log(&format!("xattr {name:?} of inode {ino} is not hex"));
                reply.error(Errno::EIO)
            }
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let xattrs = match self.xattrs(ino) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let mut list = Vec::new();
        for (name, _) in &xattrs {
            list.extend_from_slice(name);
            list.push(0);
        }
        reply_xattr(reply, size, &list);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if let Err(e) = self.inode(ino) {
            reply.error(e)
        } else if mask.contains(AccessFlags::W_OK) {
            reply.error(Errno::EROFS)
        } else {
            reply.ok()
        }
    }

    // Every change is refused; the mount is read-only, so the kernel
    // normally refuses them before they get here.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS)
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS)
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS)
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS)
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS)
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS)
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(Errno::EROFS)
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EROFS)
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS)
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }
}
