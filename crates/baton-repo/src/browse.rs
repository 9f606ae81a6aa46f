//! Browsing snapshots: walking trees, finding a path, comparing two trees.

use crate::{RepoError, Repository, Result};
use baton_types::{Id, Node, NodeKind, Snapshot, Tree};
use std::collections::HashMap;
use std::sync::Arc;

/// Joins a snapshot path and a name ("/" + "a" = "/a").
pub fn join(prefix: &str, name: &str) -> String {
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
    budget: &mut WalkBudget,
    f: &mut dyn FnMut(&str, &Node) -> Result<()>,
) -> Result<()> {
    let t = repo.load_tree(tree)?;
    budget.enter(tree, t.nodes.len())?;
    for n in &t.nodes {
        let p = join(prefix, &n.name.lossy());
        f(&p, n)?;
        if let (NodeKind::Dir, Some(sub)) = (n.kind, n.subtree) {
            walk_tree(repo, &sub, &p, budget, f)?;
        }
    }
    budget.leave();
    Ok(())
}

/// Deepest directory nesting a walk accepts (a path of that depth is at
/// least 4096 bytes, the longest path Linux resolves).
pub const MAX_TREE_DEPTH: usize = 2048;

/// A walk may visit this many entries whatever its trees look like.
pub const WALK_FLOOR: u64 = 16 << 20;

/// And beyond [`WALK_FLOOR`], this many entries for every distinct entry it
/// read: how often an honest snapshot may repeat its identical directories.
pub const WALK_EXPANSION: u64 = 1024;

/// Bounds a walk of a snapshot's trees. Trees are content-addressed, so one
/// tree can be the subtree of many (identical directories are stored once),
/// and a crafted snapshot of 41 trees, each holding the next twice, expands
/// to 2^41 entries. Two bounds hold at once:
///
/// - one that does not trust the snapshot: at most [`WALK_FLOOR`] entries
///   plus [`WALK_EXPANSION`] for every distinct entry of the distinct trees
///   read so far. Whoever crafts trees must store real, distinct entries to
///   make a walk long; repeating a few trees buys only the floor;
/// - one from the snapshot's own summary (twice the entries it records, plus
///   20,000), tighter for the snapshots Baton writes itself.
///
/// And a walk nests at most [`MAX_TREE_DEPTH`] deep.
#[derive(Debug, Clone)]
pub struct WalkBudget {
    entries_left: u64,
    visited: u64,
    distinct: u64,
    seen: std::collections::HashSet<Id>,
    depth: usize,
    exceeded: bool,
}

impl WalkBudget {
    /// The budget of one walk of `s` (or of part of it). A snapshot without
    /// a summary, or one that resumed an interrupted job (whose completed
    /// subtrees were taken over without being counted), has only the bound
    /// that does not trust it.
    pub fn for_snapshot(s: &Snapshot) -> Self {
        match &s.summary {
            Some(m) if m.resumed_job.is_none() => {
                let recorded = m
                    .files_new
                    .saturating_add(m.files_changed)
                    .saturating_add(m.files_unmodified)
                    .saturating_add(m.dirs)
                    .saturating_add(m.others);
                Self::entries(recorded.saturating_mul(2).saturating_add(20_000))
            }
            _ => Self::entries(u64::MAX),
        }
    }

    /// A budget of at most `n` entries (and the bound on expansion).
    pub fn entries(n: u64) -> Self {
        WalkBudget {
            entries_left: n,
            visited: 0,
            distinct: 0,
            seen: Default::default(),
            depth: 0,
            exceeded: false,
        }
    }

    /// Enters tree `id` of `n` entries.
    pub fn enter(&mut self, id: &Id, n: usize) -> Result<()> {
        if self.depth >= MAX_TREE_DEPTH {
            self.exceeded = true;
            return Err(RepoError::Damaged(format!(
                "the snapshot's directories nest more than {MAX_TREE_DEPTH} deep (a crafted or damaged snapshot); refused"
            )));
        }
        self.count(id, n)?;
        self.depth += 1;
        Ok(())
    }

    /// Enters two trees at once (a comparison of two directories).
    pub fn enter_pair(&mut self, a: (&Id, usize), b: (&Id, usize)) -> Result<()> {
        self.count(a.0, a.1)?;
        self.enter(b.0, b.1)
    }

    fn count(&mut self, id: &Id, n: usize) -> Result<()> {
        let n = n as u64;
        if self.seen.insert(*id) {
            self.distinct = self.distinct.saturating_add(n);
        }
        self.visited = self.visited.saturating_add(n);
        let bound = WALK_FLOOR.saturating_add(self.distinct.saturating_mul(WALK_EXPANSION));
        match self.entries_left.checked_sub(n) {
            Some(left) if self.visited <= bound => {
                self.entries_left = left;
                Ok(())
            }
            _ => {
                self.exceeded = true;
                Err(RepoError::Damaged(
                    "the snapshot's trees expand to far more entries than it records or stores (a crafted or damaged snapshot, whose trees hold each other many times over); refused"
                        .into(),
                ))
            }
        }
    }

    /// Whether a walk ran out of this budget (it must stop, not skip on).
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }

    /// Leaves the tree entered last.
    pub fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }
}

/// Reads every distinct tree below `root` once and checks, before anything
/// is written, that a walk of `root` fits `budget`: the number of entries the
/// walk would visit is computed per distinct tree (a tree repeated anywhere
/// is read once), so a crafted snapshot whose trees expand to 2^41 entries is
/// refused after reading its few trees. Restore calls this first, so that it
/// never creates millions of entries of a snapshot it would then refuse.
///
/// Returns the trees read, up to `keep` entries' worth in walk order, for
/// the walk that follows to take instead of reading them again.
pub fn preflight(
    repo: &Repository,
    root: &Id,
    budget: &WalkBudget,
    keep: usize,
) -> Result<HashMap<Id, Arc<Tree>>> {
    struct Pre<'a> {
        repo: &'a Repository,
        sizes: HashMap<Id, u64>,
        distinct: u64,
        kept: HashMap<Id, Arc<Tree>>,
        keep_left: usize,
    }
    fn size(p: &mut Pre, id: &Id, depth: usize) -> Result<u64> {
        if let Some(s) = p.sizes.get(id) {
            return Ok(*s);
        }
        if depth >= MAX_TREE_DEPTH {
            return Err(RepoError::Damaged(format!(
                "the snapshot's directories nest more than {MAX_TREE_DEPTH} deep (a crafted or damaged snapshot); refused"
            )));
        }
        let t = p.repo.read_tree(id)?;
        let n = t.nodes.len();
        p.distinct = p.distinct.saturating_add(n as u64);
        if n <= p.keep_left {
            p.keep_left -= n;
            p.kept.insert(*id, t.clone());
        }
        let mut total = n as u64;
        for node in &t.nodes {
            if let (NodeKind::Dir, Some(sub)) = (node.kind, node.subtree) {
                total = total.saturating_add(size(p, &sub, depth + 1)?);
            }
        }
        p.sizes.insert(*id, total);
        Ok(total)
    }
    let mut p = Pre {
        repo,
        sizes: HashMap::new(),
        distinct: 0,
        kept: HashMap::new(),
        keep_left: keep,
    };
    let total = size(&mut p, root, 0)?;
    let bound = WALK_FLOOR
        .saturating_add(p.distinct.saturating_mul(WALK_EXPANSION))
        .min(budget.entries_left);
    if total > bound {
        return Err(RepoError::Damaged(format!(
            "the snapshot's trees expand to {total} entries from {} stored ones (a crafted or damaged snapshot, whose trees hold each other many times over); refused",
            p.distinct
        )));
    }
    Ok(p.kept)
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

/// Compares two snapshots' trees; identical subtrees (same id) are skipped
/// without loading.
pub fn diff(repo: &Repository, a: &Snapshot, b: &Snapshot) -> Result<Vec<DiffEntry>> {
    let mut out = Vec::new();
    let mut budget = WalkBudget::for_snapshot(a);
    budget.entries_left = budget
        .entries_left
        .saturating_add(WalkBudget::for_snapshot(b).entries_left);
    diff_trees(repo, Some(a.tree), Some(b.tree), "/", &mut budget, &mut out)?;
    Ok(out)
}

fn all_below(
    repo: &Repository,
    n: &Node,
    p: &str,
    change: DiffChange,
    budget: &mut WalkBudget,
    out: &mut Vec<DiffEntry>,
) -> Result<()> {
    out.push(DiffEntry {
        path: p.to_string(),
        change,
    });
    if let Some(sub) = n.subtree {
        walk_tree(repo, &sub, p, budget, &mut |path, _| {
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
    budget: &mut WalkBudget,
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
    budget.enter_pair(
        (&a.unwrap_or_default(), ta.nodes.len()),
        (&b.unwrap_or_default(), tb.nodes.len()),
    )?;
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
                    budget,
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
                    budget,
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
                    diff_trees(repo, x.subtree, y.subtree, &p, budget, out)?;
                }
                i += 1;
                j += 1;
            }
        }
    }
    budget.leave();
    Ok(())
}

/// Which snapshots a command considers (`--host`, `--path`, `--tag`):
/// every path among the snapshot's paths, its host one of `hosts`, and one
/// tag group (all of its tags) among its tags. Empty lists select all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotSelect {
    pub hosts: Vec<String>,
    /// Absolute, as backup records them.
    pub paths: Vec<String>,
    pub tags: Vec<Vec<String>>,
}

impl SnapshotSelect {
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.paths.is_empty() && self.tags.is_empty()
    }

    pub fn matches(&self, s: &Snapshot) -> bool {
        let tags_ok = self.tags.is_empty()
            || self
                .tags
                .iter()
                .any(|group| group.iter().all(|t| s.tags.contains(t)));
        let host_ok = self.hosts.is_empty() || self.hosts.contains(&s.hostname);
        let path_ok = self.paths.iter().all(|p| s.paths.contains(p));
        tags_ok && host_ok && path_ok
    }
}
