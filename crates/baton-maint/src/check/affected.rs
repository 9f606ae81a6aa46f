//! Naming what a damaged or missing blob costs: the snapshots and paths
//! that reference it. Runs only when something was found, and walks the
//! snapshots again for just those blobs; subtrees found clean are skipped in
//! later snapshots.

use super::Checker;
use baton_repo::Result;
use baton_repo::browse::join;
use baton_types::{Id, NodeKind};
use std::collections::{BTreeSet, HashMap, HashSet};

#[derive(Default)]
struct Hit {
    snapshots: BTreeSet<Id>,
    paths: BTreeSet<String>,
}

struct Walk<'c, 'a> {
    c: &'c Checker<'a>,
    clean: HashSet<Id>,
    hits: HashMap<Id, Hit>,
    /// Trees still to visit: trees are content-addressed, so a crafted
    /// snapshot can hold one damaged tree 2^41 times over; naming what is
    /// affected stops at this bound (the problems themselves are reported).
    visits_left: u64,
}

/// Most trees the attribution pass visits, over all snapshots.
const MAX_VISITS: u64 = 200_000;
/// Most paths named per lost blob.
const MAX_PATHS: usize = 100_000;

impl Walk<'_, '_> {
    fn hit(&mut self, blob: Id, snapshot: Id, path: &str) {
        let h = self.hits.entry(blob).or_default();
        h.snapshots.insert(snapshot);
        if h.paths.len() < MAX_PATHS {
            h.paths.insert(path.to_string());
        }
    }

    /// Returns whether anything below `tree` is damaged.
    fn visit(&mut self, snapshot: Id, tree: Id, path: &str, depth: usize) -> Result<bool> {
        if self.clean.contains(&tree) {
            return Ok(false);
        }
        self.c.cancel.check()?;
        if self.visits_left == 0 || depth > baton_repo::MAX_TREE_DEPTH {
            return Ok(false);
        }
        self.visits_left -= 1;
        if self.c.bad_blobs.contains(&tree) {
            self.hit(tree, snapshot, path);
            return Ok(true);
        }
        let Ok(t) = self.c.load_tree(&tree) else {
            self.hit(tree, snapshot, path);
            return Ok(true);
        };
        let mut any = false;
        for n in &t.nodes {
            let p = join(path, &n.name.lossy());
            match (n.kind, n.subtree) {
                (NodeKind::File, _) => {
                    for b in &n.content {
                        if self.c.bad_blobs.contains(b) {
                            self.hit(*b, snapshot, &p);
                            any = true;
                        }
                    }
                }
                (NodeKind::Dir, Some(sub)) => any |= self.visit(snapshot, sub, &p, depth + 1)?,
                _ => {}
            }
        }
        if !any {
            self.clean.insert(tree);
        }
        Ok(any)
    }
}

/// Fills in `snapshots` and `paths` of every problem that lost blobs.
pub(super) fn attribute(c: &mut Checker<'_>) -> Result<()> {
    let hits = {
        let mut w = Walk {
            c,
            clean: HashSet::new(),
            hits: HashMap::new(),
            visits_left: MAX_VISITS,
        };
        for (id, s) in &c.snapshots {
            w.visit(*id, s.tree, "/", 0)?;
        }
        w.hits
    };
    for p in &mut c.report.problems {
        let mut snaps = BTreeSet::new();
        let mut paths = BTreeSet::new();
        for b in &p.blobs {
            if let Some(h) = hits.get(b) {
                snaps.extend(h.snapshots.iter().copied());
                paths.extend(h.paths.iter().cloned());
            }
        }
        p.snapshots = snaps.into_iter().collect();
        p.paths = paths.into_iter().collect();
    }
    Ok(())
}
