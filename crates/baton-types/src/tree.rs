//! Trees: the metadata of one directory, stored as a blob whose id is the keyed
//! hash of its canonical JSON. Two identical directories have the same tree id,
//! so unchanged subtrees deduplicate and identical snapshots share a root.

use crate::{FsName, Id};

/// The kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Chardev,
    Blockdev,
    /// A block image backed up with `backup --block`: its content is the
    /// fixed index whose root is `image`, `size` bytes long.
    Image,
}

/// One extended attribute; the value is hex.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Xattr {
    pub name: FsName,
    pub value: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One directory entry with all its metadata.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub name: FsName,
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub atime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub device_id: u64,
    pub links: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Device number of character and block device nodes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    /// Chunk ids of a regular file's content, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    /// Tree id of a directory's entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<FsName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// Root blob (type `fixed`) of an image's fixed index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Id>,
}

/// A directory's entries, sorted by name bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Finds an entry by exact name (binary search: nodes are sorted).
    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.0.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }

    /// Sorts nodes by name, the canonical order every writer must use.
    pub fn sort(&mut self) {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// Checks what every reader relies on: each name is safe (stays inside
    /// its directory) and names are strictly sorted, hence unique. A tree
    /// with a name twice (a directory `x`, then a symlink `x`) could make a
    /// restore write through the symlink; it is refused when decoded.
    pub fn validate(&self) -> Result<(), String> {
        for n in &self.nodes {
            if !safe_name(&n.name.0) {
                return Err(format!(
                    "unsafe entry name {:?} (empty, `.`, `..`, or with `/` or NUL)",
                    n.name.lossy()
                ));
            }
            let ok = match n.kind {
                NodeKind::Dir => n.content.is_empty() && n.link_target.is_none(),
                NodeKind::File => n.subtree.is_none() && n.link_target.is_none(),
                NodeKind::Symlink => n.subtree.is_none() && n.content.is_empty(),
                NodeKind::Image => {
                    n.subtree.is_none() && n.content.is_empty() && n.link_target.is_none()
                }
                _ => n.subtree.is_none() && n.content.is_empty() && n.link_target.is_none(),
            } && (n.image.is_some() == (n.kind == NodeKind::Image));
            if !ok {
                return Err(format!(
                    "entry {:?} of type {:?} carries fields of another type",
                    n.name.lossy(),
                    n.kind
                ));
            }
        }
        for w in self.nodes.windows(2) {
            if w[0].name >= w[1].name {
                return Err(if w[0].name == w[1].name {
                    format!("entry name {:?} appears twice", w[1].name.lossy())
                } else {
                    format!(
                        "entries not sorted by name ({:?} before {:?})",
                        w[0].name.lossy(),
                        w[1].name.lossy()
                    )
                });
            }
        }
        Ok(())
    }
}

/// A tree entry name that stays inside its directory: not empty, `.` or
/// `..`, and without `/` or NUL.
pub fn safe_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}
