//! The tree pass of `check`: every tree reachable from a snapshot, once.

use super::structure::blob_object;
use super::{Checker, ProblemKind};
use baton_format::object::from_json;
use baton_format::pack::open_blob;
use baton_repo::Result;
use baton_storage::ObjectKind;
use baton_types::{BlobType, Id, NodeKind, Tree};
use std::collections::{HashMap, HashSet, VecDeque};

impl Checker<'_> {
    /// Loads one tree blob through the check's own index.
    pub(crate) fn load_tree(&self, id: &Id) -> std::result::Result<Tree, String> {
        let loc = self
            .index
            .get(id)
            .ok_or_else(|| "it is not in the index".to_string())?;
        let sealed = self
            .repo
            .storage()
            .get_range(
                ObjectKind::Pack,
                &loc.pack.to_hex(),
                loc.offset as u64,
                loc.length as u64,
            )
            .map_err(|e| e.to_string())?;
        let plain = open_blob(
            self.repo.key(),
            BlobType::Tree,
            id,
            &sealed,
            loc.raw_length,
            loc.compressed,
        )
        .map_err(|e| format!("in pack {}: {e}", loc.pack))?;
        let tree =
            from_json::<Tree>("tree", &plain).map_err(|e| format!("in pack {}: {e}", loc.pack))?;
        tree.validate()?;
        Ok(tree)
    }

    /// Walks every tree reachable from a snapshot, each once.
    pub fn check_trees(&mut self) -> Result<()> {
        let mut queue: VecDeque<Id> = self.snapshots.iter().map(|(_, s)| s.tree).collect();
        let mut seen: HashSet<Id> = HashSet::new();
        let mut missing_data: HashMap<Id, Id> = HashMap::new();
        while let Some(tree) = queue.pop_front() {
            if !seen.insert(tree) {
                continue;
            }
            self.cancel.check()?;
            let in_bad_pack = self
                .index
                .get(&tree)
                .is_some_and(|l| self.bad_packs.contains(&l.pack));
            if in_bad_pack {
                // Reported with its pack; nothing below it can be reached.
                self.bad_blobs.insert(tree);
                continue;
            }
            let t = match self.load_tree(&tree) {
                Ok(t) => t,
                Err(e) => {
                    let kind = if self.index.contains(&tree) {
                        ProblemKind::DamagedBlob
                    } else {
                        ProblemKind::MissingBlob
                    };
                    let object = blob_object(BlobType::Tree, &tree);
                    self.error(kind, object, format!("cannot load tree: {e}"), vec![tree]);
                    continue;
                }
            };
            self.report.trees_checked += 1;
            for n in &t.nodes {
                match n.kind {
                    NodeKind::Dir => match n.subtree {
                        Some(sub) => queue.push_back(sub),
                        None => self.error(
                            ProblemKind::Damaged,
                            blob_object(BlobType::Tree, &tree),
                            format!("directory {:?} has no subtree", n.name),
                            vec![],
                        ),
                    },
                    NodeKind::File => {
                        let mut held = Some(0u64);
                        for c in &n.content {
                            match self.index.plain_len(c) {
                                Some(len) => held = held.map(|h| h + len),
                                None => {
                                    held = None;
                                    missing_data.entry(*c).or_insert(tree);
                                }
                            }
                        }
                        // A file whose chunks do not add up to its size
                        // cannot be restored as recorded.
                        if let Some(h) = held
                            && h != n.size
                        {
                            self.error(
                                ProblemKind::Damaged,
                                blob_object(BlobType::Tree, &tree),
                                format!(
                                    "file {:?} records {} bytes but its chunks hold {h}",
                                    n.name.lossy(),
                                    n.size
                                ),
                                vec![],
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut missing: Vec<(Id, Id)> = missing_data.into_iter().collect();
        missing.sort();
        for (blob, tree) in missing {
            self.error(
                ProblemKind::MissingBlob,
                blob_object(BlobType::Data, &blob),
                format!(
                    "file content referenced by tree {} is not in the index",
                    tree.short()
                ),
                vec![blob],
            );
        }
        Ok(())
    }
}
