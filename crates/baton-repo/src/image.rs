//! Reading the fixed index of a block image (see `baton_format::fixed`):
//! shared by the block reader, check and prune.

use crate::{RepoError, Repository, Result};
use baton_format::fixed::{FixedRoot, FixedSegment, Layout};
use baton_types::{BlobType, Id, Node, NodeKind};

/// The root of an image's fixed index, loaded and checked.
#[derive(Debug, Clone)]
pub struct ImageIndex {
    pub root_id: Id,
    pub root: FixedRoot,
}

impl ImageIndex {
    /// Loads the fixed index of an image node; its size must be the node's.
    pub fn of_node(repo: &Repository, n: &Node) -> Result<Self> {
        Self::of_node_with(n, &|id| repo.load_blob_of(BlobType::Fixed, id))
    }

    /// [`ImageIndex::of_node`] with blobs read by `load` (check reads
    /// through its own index).
    pub fn of_node_with(n: &Node, load: &dyn Fn(&Id) -> Result<Vec<u8>>) -> Result<Self> {
        let (NodeKind::Image, Some(root)) = (n.kind, n.image) else {
            return Err(RepoError::Invalid(format!(
                "{} is not a block image",
                n.name.lossy()
            )));
        };
        let idx = Self::load_with(&root, load)?;
        if idx.root.layout.image_size != n.size {
            return Err(RepoError::Damaged(format!(
                "image {}: its fixed index covers {} bytes, the snapshot says {}",
                n.name.lossy(),
                idx.root.layout.image_size,
                n.size
            )));
        }
        Ok(idx)
    }

    /// Loads and decodes a root blob (authenticated by its keyed id).
    pub fn load(repo: &Repository, root_id: &Id) -> Result<Self> {
        Self::load_with(root_id, &|id| repo.load_blob_of(BlobType::Fixed, id))
    }

    fn load_with(root_id: &Id, load: &dyn Fn(&Id) -> Result<Vec<u8>>) -> Result<Self> {
        let bytes = load(root_id)?;
        let root = FixedRoot::decode(&bytes)
            .map_err(|e| RepoError::format(format!("fixed index {}", root_id.short()), e))?;
        Ok(ImageIndex {
            root_id: *root_id,
            root,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.root.layout
    }

    /// Loads segment `s` (checked to sit where the root places it).
    pub fn segment(&self, repo: &Repository, s: u64) -> Result<FixedSegment> {
        self.segment_with(s, &|id| repo.load_blob_of(BlobType::Fixed, id))
    }

    /// [`ImageIndex::segment`] with blobs read by `load`.
    pub fn segment_with(
        &self,
        s: u64,
        load: &dyn Fn(&Id) -> Result<Vec<u8>>,
    ) -> Result<FixedSegment> {
        let id = self.root.segments.get(s as usize).ok_or_else(|| {
            RepoError::Invalid(format!("segment {s} is past the end of the image"))
        })?;
        let bytes = load(id)?;
        FixedSegment::decode(&bytes, &self.root.layout, s)
            .map_err(|e| RepoError::format(format!("fixed index segment {}", id.short()), e))
    }

    /// Every blob the image references: root, segments and chunks. A
    /// segment that cannot be read is an error.
    pub fn referenced(&self, repo: &Repository, out: &mut impl Extend<Id>) -> Result<()> {
        out.extend([self.root_id]);
        for (s, id) in self.root.segments.iter().enumerate() {
            out.extend([*id]);
            let seg = self.segment(repo, s as u64)?;
            out.extend(seg.chunks.into_iter().flatten());
        }
        Ok(())
    }
}
