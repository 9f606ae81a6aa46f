//! Snapshots: the commit record of one backup, written last.

use crate::Id;

/// One entry of the snapshot's error list: a path that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupErrorEntry {
    pub path: String,
    pub message: String,
}

/// Statistics of the backup that made a snapshot.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotSummary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs: u64,
    /// Symbolic links, FIFOs and device nodes.
    #[serde(default)]
    pub others: u64,
    /// Sum of the sizes of all files in the snapshot.
    pub bytes_total: u64,
    /// Bytes actually read from the source.
    pub bytes_read: u64,
    /// Bytes added to the repository (packs and index; in a dry run, what
    /// would have been added).
    pub bytes_stored: u64,
    pub blobs_new: u64,
    /// Source bytes not read again because an interrupted run of the same
    /// job had already stored them.
    #[serde(default)]
    pub bytes_resumed: u64,
    /// The interrupted job this backup resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_job: Option<crate::Id>,
    pub backup_start: String,
    pub backup_end: String,
    pub duration_s: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<BackupErrorEntry>,
}

/// The decrypted content of a `snapshots/<id>` object.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// RFC 3339 time in UTC, nanosecond precision.
    pub time: String,
    pub tree: Id,
    pub paths: Vec<String>,
    pub hostname: String,
    pub username: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    pub program_version: String,
    /// The backup job that made this snapshot (its journal is folded in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Id>,
    /// For a snapshot written by `repair snapshots`: the snapshot it replaces
    /// (the first one, when a repaired snapshot is repaired again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<SnapshotSummary>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(duration_s: f64) -> SnapshotSummary {
        SnapshotSummary {
            duration_s,
            ..SnapshotSummary::default()
        }
    }

    /// A duration whose shortest decimal has 17 digits reads back as written
    /// (serde_json's default float parser was one ulp off for ~10% of them).
    #[test]
    fn duration_reads_back_as_written() {
        for d in [
            198.62006851766338,
            986.2150090529369,
            1093.9149878886885,
            5.25,
        ] {
            let j = serde_json::to_string(&summary(d)).unwrap();
            let back: SnapshotSummary = serde_json::from_str(&j).unwrap();
            assert_eq!(back.duration_s.to_bits(), d.to_bits(), "{j}");
        }
    }

    /// Found by the `snapshot` fuzz target (fuzz/regressions/snapshot/): a
    /// decoded snapshot must re-encode to JSON that decodes to the same value.
    #[test]
    fn fuzz_snapshot_float_round_trip() {
        let input = concat!(
            r#"{"time":"","tree":"0000000000000000000000000000000000000000000000000000000000000000","#,
            r#""paths":[],"hostname":"","username":"","program_version":"","summary":{"#,
            r#""files_new":0,"files_changed":0,"files_unmodified":0,"dirs":0,"bytes_total":0,"#,
            r#""bytes_read":0,"bytes_stored":0,"blobs_new":0,"backup_start":"","backup_end":"","#,
            r#""duration_s":-92233720368847758085.25}}"#
        );
        let s: Snapshot = serde_json::from_str(input).unwrap();
        let again: Snapshot = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(again, s);
    }
}
