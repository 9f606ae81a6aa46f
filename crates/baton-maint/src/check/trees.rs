//! The tree pass of `check`: every tree reachable from a snapshot, once.

use super::structure::blob_object;
use super::{Checker, ProblemKind};
use baton_format::object::from_json;
use baton_format::pack::open_blob;
use baton_repo::Result;
use baton_storage::ObjectKind;
use baton_types::{BlobType, Id, Node, NodeKind, Tree};
use std::collections::{HashMap, HashSet, VecDeque};

impl Checker<'_> {
    /// Loads one tree blob through the check's own index.
    pub(crate) fn load_tree(&self, id: &Id) -> std::result::Result<Tree, String> {
        let plain = self.load_plain(BlobType::Tree, id)?;
        let tree = from_json::<Tree>("tree", &plain).map_err(|e| e.to_string())?;
        tree.validate()?;
        Ok(tree)
    }

    /// Loads one blob of `blob_type` through the check's own index.
    fn load_plain(&self, blob_type: BlobType, id: &Id) -> std::result::Result<Vec<u8>, String> {
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
        if loc.blob_type != blob_type {
            return Err(format!("it is a {:?} blob", loc.blob_type));
        }
        open_blob(
            self.repo.key(),
            blob_type,
            id,
            &sealed,
            loc.raw_length,
            loc.compressed,
        )
        .map_err(|e| format!("in pack {}: {e}", loc.pack))
    }

    /// Checks an image's fixed index: root and segments readable and where
    /// they belong, every chunk in the index with the length its place needs.
    fn check_image(&mut self, tree: &Id, n: &Node, missing: &mut HashMap<Id, Id>) {
        let Some(root) = n.image else { return };
        if !self.images_seen.insert(root) {
            return;
        }
        let name = n.name.lossy();
        let mut found: Vec<(ProblemKind, String, String, Vec<Id>)> = Vec::new();
        let load = |id: &Id| {
            self.load_plain(BlobType::Fixed, id)
                .map_err(baton_repo::RepoError::Damaged)
        };
        let lost = |id: &Id| {
            if self.index.contains(id) {
                ProblemKind::DamagedBlob
            } else {
                ProblemKind::MissingBlob
            }
        };
        match baton_repo::image::ImageIndex::of_node_with(n, &load) {
            Err(e) => found.push((
                lost(&root),
                blob_object(BlobType::Fixed, &root),
                format!("image {name:?}: {e}"),
                vec![root],
            )),
            Ok(img) => {
                let layout = *img.layout();
                for (s, seg_id) in img.root.segments.iter().enumerate() {
                    let seg = match img.segment_with(s as u64, &load) {
                        Ok(seg) => seg,
                        Err(e) => {
                            found.push((
                                lost(seg_id),
                                blob_object(BlobType::Fixed, seg_id),
                                format!("image {name:?}: {e}"),
                                vec![*seg_id],
                            ));
                            continue;
                        }
                    };
                    for (i, c) in seg.chunks.iter().enumerate() {
                        let Some(c) = c else { continue };
                        let chunk = seg.first_chunk + i as u64;
                        let (_, want) = layout.chunk_range(chunk);
                        match self.index.plain_len(c) {
                            Some(len) if len == want => {}
                            Some(len) => found.push((
                                ProblemKind::Damaged,
                                blob_object(BlobType::Fixed, seg_id),
                                format!(
                                    "image {name:?}: chunk {chunk} holds {len} bytes, its place needs {want}"
                                ),
                                vec![],
                            )),
                            None => {
                                missing.entry(*c).or_insert(*tree);
                            }
                        }
                    }
                }
            }
        }
        for (kind, object, message, blobs) in found {
            self.error(kind, object, message, blobs);
        }
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
                    NodeKind::Image => self.check_image(&tree, n, &mut missing_data),
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
