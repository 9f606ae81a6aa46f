//! File metadata: reading it into a [`Node`] at backup (restore applies it
//! through its target handle, `restore/target.rs`).

use baton_types::{FsName, Node, NodeKind, Xattr, hex_encode};
use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

pub(crate) fn ns(sec: i64, nsec: i64) -> i64 {
    sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// Caches uid -> user name and gid -> group name look-ups.
#[derive(Default)]
pub struct NameCache {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl NameCache {
    pub fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }
    pub fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .clone()
    }
}

/// The node kind of a file type; `None` for sockets (not backed up).
pub fn kind_of(m: &Metadata) -> Option<NodeKind> {
    let t = m.file_type();
    Some(if t.is_file() {
        NodeKind::File
    } else if t.is_dir() {
        NodeKind::Dir
    } else if t.is_symlink() {
        NodeKind::Symlink
    } else if t.is_fifo() {
        NodeKind::Fifo
    } else if t.is_char_device() {
        NodeKind::Chardev
    } else if t.is_block_device() {
        NodeKind::Blockdev
    } else {
        return None;
    })
}

/// Builds a node (without content, subtree or link target) from `lstat` data.
pub fn node_from_metadata(
    name: FsName,
    kind: NodeKind,
    m: &Metadata,
    names: &mut NameCache,
) -> Node {
    Node {
        name,
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        user: names.user(m.uid()),
        group: names.group(m.gid()),
        mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        // Reading a symlink (readlink) updates its atime, so a symlink's atime
        // only says when the last backup ran; recording it would make every
        // snapshot's trees differ. It is left out (0) for symlinks.
        atime_ns: if kind == NodeKind::Symlink {
            0
        } else {
            ns(m.atime(), m.atime_nsec())
        },
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        inode: m.ino(),
        device_id: m.dev(),
        links: m.nlink(),
        size: if kind == NodeKind::File { m.size() } else { 0 },
        rdev: if matches!(kind, NodeKind::Chardev | NodeKind::Blockdev) {
            m.rdev()
        } else {
            0
        },
        content: Vec::new(),
        subtree: None,
        link_target: None,
        xattrs: Vec::new(),
        image: None,
    }
}

/// Reads the extended attributes of a path (without following symlinks),
/// sorted by name. Unsupported filesystems give an empty list.
pub fn read_xattrs(path: &Path) -> std::io::Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for n in names {
        if let Some(v) = xattr::get(path, &n)? {
            out.push(Xattr {
                name: FsName::from_os(&n),
                value: hex_encode(&v),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
