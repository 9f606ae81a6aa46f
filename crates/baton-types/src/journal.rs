//! Backup journal records: the durable progress of an unfinished backup.
//!
//! While a backup runs, each time a pack is durably stored (and at least
//! every checkpoint interval when progress was made without new packs), the
//! writer appends one record: the packs stored since the previous record
//! (with every blob's location, so the index can be rebuilt without reading
//! them), the durable position in the backup stream, and the catalog entries
//! completed up to that position. A standalone backup stores records in the
//! repository as `journal/<job>/<seq>`; under a director the same records are
//! shipped over the network. When the snapshot is sealed, the packs are
//! folded into an index object and the records are deleted.

use crate::{BlobType, FsName, Id, Node};

/// What a job is, written in its first record (seq 0).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobManifest {
    pub hostname: String,
    /// The source paths ("volumes"), absolute.
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Parent snapshot the job compares against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    pub started: String,
    /// Set for a block image backup (`backup --block`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageManifest>,
}

/// The image a block backup job reads: a resumed run must find it the same
/// size and cut the same way.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageManifest {
    /// Name of the image in the snapshot's tree.
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    pub segment_chunks: u32,
}

/// One blob of a journaled pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JournalBlob {
    pub id: Id,
    #[serde(rename = "type")]
    pub blob_type: BlobType,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
    pub compressed: bool,
}

/// A pack stored by the job, with its blobs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JournalPack {
    pub id: Id,
    pub blobs: Vec<JournalBlob>,
}

/// A completed entry of the backup stream (the seed's "temporary catalog").
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CatalogEntry {
    /// Full snapshot path ("/home/ann/a.txt").
    pub path: FsName,
    /// Number of path components.
    pub depth: u32,
    /// Stream offset at the end of this entry (file content bytes so far).
    pub offset: u64,
    /// The entry as it goes into its tree: kind, size, metadata, content
    /// chunk ids (files) or subtree id (directories, complete with all below).
    pub node: Node,
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JournalRecord {
    pub job: Id,
    /// 0, 1, 2, ... across all runs of the job.
    pub seq: u64,
    pub time: String,
    /// Present in the first record of a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<JobManifest>,
    /// Packs durably stored since the previous record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packs: Vec<JournalPack>,
    /// Durable position in the backup stream of this run: every file whose
    /// content ends at or before it is complete and stored.
    pub position: u64,
    /// Catalog entries that became durable since the previous record, in
    /// stream order. A directory entry covers everything below it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub catalog: Vec<CatalogEntry>,
    /// Source paths completed entirely.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub completed_sources: Vec<String>,
    /// Block backups: fixed index segments (blobs of type `fixed`) that
    /// became durable since the previous record, each with its place.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<JournalSegment>,
}

/// A durable fixed index segment of a block backup: segment `index` covers
/// the image's chunks from `index * segment_chunks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JournalSegment {
    pub index: u64,
    pub id: Id,
}
