//! The vocabulary of a Baton repository: typed ids, the structures stored in it
//! (config, keys, snapshots, trees, index entries) and the magic numbers of its
//! byte formats. This crate does no I/O; `baton-format` encodes and decodes these
//! structures, `baton-repo` reads and writes them.
//!
//! ```
//! use baton_types::Id;
//! let id = Id::from_bytes([7; 32]);
//! assert_eq!(id.to_hex().len(), 64);
//! assert_eq!(Id::from_hex(&id.to_hex()).unwrap(), id);
//! assert_eq!(id.short(), "07070707");
//! ```

mod config;
mod id;
mod journal;
mod key;
mod name;
mod snapshot;
mod tree;

pub use config::{ChunkerParams, Config, FORMAT_VERSION};
pub use id::{Id, IdError, hex_decode, hex_encode};
pub use journal::{
    CatalogEntry, ImageManifest, JobManifest, JournalBlob, JournalPack, JournalRecord,
    JournalSegment,
};
pub use key::{KdfParams, KeyFile};
pub use name::FsName;
pub use snapshot::{BackupErrorEntry, Snapshot, SnapshotSummary};
pub use tree::{Node, NodeKind, Tree, Xattr, safe_name};

/// Which kind of blob a pack entry holds. The numeric values are part of the pack
/// header format and must never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobType {
    /// A chunk of file (or block device) content.
    Data = 0,
    /// A serialized [`Tree`].
    Tree = 1,
    /// A part of the fixed index of a block image (its root or one of its
    /// segments; binary, see `baton_format::fixed`).
    Fixed = 2,
}

impl BlobType {
    /// The byte stored in pack headers and index objects.
    pub fn as_byte(self) -> u8 {
        self as u8
    }

    /// Whether blobs of this type are metadata (trees and fixed indexes go
    /// to metadata packs, which browsing and the cache read; data chunks
    /// to data packs).
    pub fn is_metadata(self) -> bool {
        !matches!(self, BlobType::Data)
    }

    /// Parses the byte stored in pack headers and index objects.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(BlobType::Data),
            1 => Some(BlobType::Tree),
            2 => Some(BlobType::Fixed),
            _ => None,
        }
    }
}

/// Where one blob lives: the pack it is in and its byte range there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: Id,
    pub blob_type: BlobType,
    /// Offset of the encrypted blob inside the pack.
    pub offset: u32,
    /// Length of the encrypted blob (nonce + ciphertext + tag).
    pub length: u32,
    /// Length of the plaintext after decompression; equal to the decrypted
    /// length when the blob is stored uncompressed.
    pub raw_length: u32,
    /// Whether the decrypted bytes are zstd-compressed.
    pub compressed: bool,
}
