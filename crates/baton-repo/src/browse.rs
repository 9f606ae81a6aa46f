//! Browsing snapshots: walking trees, finding a path, comparing two trees.

use crate::{RepoError, Repository, Result};
use baton_types::{Id, Node, NodeKind, Tree};
use std::sync::Arc;

/// Joins a snapshot path and a name ("/" + "a" = "/a").
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.ends_with('/') {
        format!("{prefix}{name}")
    } else {
        format!("{prefix}/{name}")
    }
}

/// Calls `f(path, node)` for every node below `tree`, depth first in name
/// order; `prefix` is the snapshot path of `tree`.
pub fn walk_tree(
    repo: &Repository,
    tree: &Id,
    prefix: &str,
    f: &mut dyn FnMut(&str, &Node) -> Result<()>,
) -> Result<()> {
    let t = repo.load_tree(tree)?;
    for n in &t.nodes {
        let p = join(prefix, &n.name.lossy());
        f(&p, n)?;
        if let (NodeKind::Dir, Some(sub)) = (n.kind, n.subtree) {
            walk_tree(repo, &sub, &p, f)?;
        }
    }
    Ok(())
}

/// Finds the node at snapshot path `path` ("/" or "" is the root, returned as
/// `None` with the root tree id).
pub fn find_node(repo: &Repository, root: &Id, path: &str) -> Result<(Option<Node>, Option<Id>)> {
    let mut tree = *root;
    let mut node: Option<Node> = None;
    for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        let current = match &node {
            None => tree,
            Some(n) if n.kind == NodeKind::Dir => n.subtree.unwrap_or(tree),
            Some(_) => {
                return Err(RepoError::NotFound(format!(
                    "{path}: not found in snapshot (a parent is not a directory)"
                )));
            }
        };
        tree = current;
        let t = repo.load_tree(&tree)?;
        node = Some(
            t.find(comp.as_bytes())
                .cloned()
                .ok_or_else(|| RepoError::NotFound(format!("{path}: not found in snapshot")))?,
        );
    }
    let subtree = match &node {
        None => Some(*root),
        Some(n) => n.subtree,
    };
    Ok((node, subtree))
}

/// How an entry differs between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiffChange {
    Added,
    Removed,
    /// Content changed.
    Modified,
    /// Only metadata changed.
    Metadata,
    /// The kind of entry changed.
    Type,
}

impl DiffChange {
    pub fn symbol(self) -> char {
        match self {
            DiffChange::Added => '+',
            DiffChange::Removed => '-',
            DiffChange::Modified => 'M',
            DiffChange::Metadata => 'U',
            DiffChange::Type => 'T',
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DiffEntry {
    pub path: String,
    pub change: DiffChange,
}

fn same_metadata(a: &Node, b: &Node) -> bool {
    a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && a.mtime_ns == b.mtime_ns
        && a.xattrs == b.xattrs
        && a.link_target == b.link_target
        && a.rdev == b.rdev
}

/// Compares two trees; identical subtrees (same id) are skipped without loading.
pub fn diff(repo: &Repository, a: &Id, b: &Id) -> Result<Vec<DiffEntry>> {
    let mut out = Vec::new();
    diff_trees(repo, Some(*a), Some(*b), "/", &mut out)?;
    Ok(out)
}

fn all_below(
    repo: &Repository,
    n: &Node,
    p: &str,
    change: DiffChange,
    out: &mut Vec<DiffEntry>,
) -> Result<()> {
    out.push(DiffEntry {
        path: p.to_string(),
        change,
    });
    if let Some(sub) = n.subtree {
        walk_tree(repo, &sub, p, &mut |path, _| {
            out.push(DiffEntry {
                path: path.to_string(),
                change,
            });
            Ok(())
        })?;
    }
    Ok(())
}

fn diff_trees(
    repo: &Repository,
    a: Option<Id>,
    b: Option<Id>,
    prefix: &str,
    out: &mut Vec<DiffEntry>,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let load = |id: Option<Id>| -> Result<Arc<Tree>> {
        match id {
            Some(id) => repo.load_tree(&id),
            None => Ok(Arc::new(Tree::default())),
        }
    };
    let (ta, tb) = (load(a)?, load(b)?);
    let (mut i, mut j) = (0, 0);
    while i < ta.nodes.len() || j < tb.nodes.len() {
        let na = ta.nodes.get(i);
        let nb = tb.nodes.get(j);
        let ord = match (na, nb) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                let n = na.expect("left side present");
                all_below(
                    repo,
                    n,
                    &join(prefix, &n.name.lossy()),
                    DiffChange::Removed,
                    out,
                )?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let n = nb.expect("right side present");
                all_below(
                    repo,
                    n,
                    &join(prefix, &n.name.lossy()),
                    DiffChange::Added,
                    out,
                )?;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (na.expect("present"), nb.expect("present"));
                let p = join(prefix, &x.name.lossy());
                if x.kind != y.kind {
                    out.push(DiffEntry {
                        path: p.clone(),
                        change: DiffChange::Type,
                    });
                } else if x.kind == NodeKind::File && x.content != y.content {
                    out.push(DiffEntry {
                        path: p.clone(),
                        change: DiffChange::Modified,
                    });
                } else if !same_metadata(x, y) {
                    out.push(DiffEntry {
                        path: p.clone(),
                        change: DiffChange::Metadata,
                    });
                }
                if x.kind == NodeKind::Dir && y.kind == NodeKind::Dir {
                    diff_trees(repo, x.subtree, y.subtree, &p, out)?;
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}
