//! Inode numbers, assigned lazily as the kernel looks entries up (or lists
//! them) and kept for the mount's life, so a number always names the same
//! entry and the kernel may forget and look up again at will.
//!
//! An entry is keyed by its parent's inode and its name: the same snapshot
//! reached through `/ids`, `/snapshots` and `/hosts` has a distinct inode
//! in each place (a directory must have one parent for the kernel's
//! dentry cache). The exception are hard links: a non-directory whose node
//! records more than one link is keyed by the snapshot directory it was
//! reached through and the device and inode numbers the node recorded, so
//! the paths of one hard-link group share one inode, as in the source.
//!
//! Memory grows with the number of entries looked up or listed (each
//! holds its parent directory's tree); nothing is freed before unmount.

use crate::content::Content;
use baton_types::{Node, NodeKind, Tree};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The root directory's inode number (FUSE's `FUSE_ROOT_ID`).
pub(crate) const ROOT_INO: u64 = 1;

/// What an inode is.
#[derive(Debug)]
pub(crate) enum Kind {
    /// A virtual directory of the layout (index into `Layout::dirs`).
    Virtual(usize),
    /// A `latest` symlink to `target`, snapshot `snapshot`.
    Latest { target: String, snapshot: usize },
    /// A snapshot's directory, holding its root tree (index into
    /// `Layout::snapshots`).
    Root(usize),
    /// An entry of a snapshot's tree: `tree.nodes[index]`, reached
    /// through the snapshot directory with inode `root`.
    Node {
        tree: Arc<Tree>,
        index: usize,
        root: u64,
        /// A regular file's chunk layout, computed on first use.
        content: OnceLock<Arc<Content>>,
    },
}

#[derive(Debug)]
pub(crate) struct Inode {
    /// The parent directory's inode (the root's is itself); for a hard
    /// link, that of the first path it was reached through.
    pub(crate) parent: u64,
    pub(crate) kind: Kind,
}

impl Inode {
    pub(crate) fn node(&self) -> Option<&Node> {
        match &self.kind {
            Kind::Node { tree, index, .. } => tree.nodes.get(*index),
            _ => None,
        }
    }

    /// The snapshot directory below which this entry lies, for its
    /// children's hard-link keys (`None` above the snapshots).
    pub(crate) fn snapshot_dir(&self, own_ino: u64) -> Option<u64> {
        match &self.kind {
            Kind::Root(_) => Some(own_ino),
            Kind::Node { root, .. } => Some(*root),
            _ => None,
        }
    }
}

/// What identifies an entry (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Child(u64, Box<[u8]>),
    HardLink { root: u64, device: u64, inode: u64 },
}

impl Key {
    /// The key of `node`, an entry of directory `parent` below snapshot
    /// directory `root`.
    pub(crate) fn of_node(parent: u64, root: u64, node: &Node) -> Key {
        if node.kind != NodeKind::Dir && node.links > 1 && node.inode != 0 {
            Key::HardLink {
                root,
                device: node.device_id,
                inode: node.inode,
            }
        } else {
            Key::Child(parent, node.name.0.clone().into_boxed_slice())
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// Inode `n` is `inodes[n - 1]`.
    inodes: Vec<Arc<Inode>>,
    by_key: HashMap<Key, u64>,
}

/// The inode table; shared by every FUSE thread.
#[derive(Debug)]
pub(crate) struct Table {
    inner: Mutex<Inner>,
}

impl Table {
    /// A table holding the root, a virtual directory.
    pub(crate) fn new(root_dir: usize) -> Table {
        let root = Arc::new(Inode {
            parent: ROOT_INO,
            kind: Kind::Virtual(root_dir),
        });
        Table {
            inner: Mutex::new(Inner {
                inodes: vec![root],
                by_key: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock left the table consistent (every
        // change is one push and one insert), so a poisoned lock is used.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        let i = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.lock().inodes.get(i).cloned()
    }

    /// The inode of `key`, made by `make` if it has none yet.
    pub(crate) fn child(&self, key: Key, make: impl FnOnce() -> Inode) -> (u64, Arc<Inode>) {
        let mut t = self.lock();
        if let Some(&ino) = t.by_key.get(&key) {
            return (ino, t.inodes[(ino - 1) as usize].clone());
        }
        let inode = Arc::new(make());
        t.inodes.push(inode.clone());
        let ino = t.inodes.len() as u64;
        t.by_key.insert(key, ino);
        (ino, inode)
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().inodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn virt(parent: u64, d: usize) -> Inode {
        Inode {
            parent,
            kind: Kind::Virtual(d),
        }
    }

    #[test]
    fn numbers_are_assigned_once_per_key() {
        let t = Table::new(0);
        assert!(matches!(t.get(ROOT_INO).unwrap().kind, Kind::Virtual(0)));
        assert!(t.get(0).is_none());
        assert!(t.get(2).is_none());
        let k = |p: u64, n: &str| Key::Child(p, n.as_bytes().into());
        let (a, _) = t.child(k(1, "ids"), || virt(1, 1));
        let (b, _) = t.child(k(1, "tags"), || virt(1, 2));
        let (a2, i) = t.child(k(1, "ids"), || panic!("made twice"));
        assert_eq!((a, b, a2), (2, 3, 2));
        assert!(matches!(i.kind, Kind::Virtual(1)));
        let (c, _) = t.child(k(2, "ids"), || virt(2, 3));
        assert_eq!(c, 4);
        assert_eq!(t.len(), 4);
    }
}
