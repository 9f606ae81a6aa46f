//! Copying the used blobs of repacked packs into new packs. Blobs move as
//! the sealed bytes they are (no decryption or re-encryption): each run of
//! adjacent blobs is read with one ranged read, and added to a new pack with
//! its type, length, raw length and compression flag. Data and tree blobs go
//! to separate packs, as in a backup. At most one run and the open packs
//! are in memory; each new pack is stored durably as soon as it is full.

use super::plan::PackInfo;
use baton_format::index::IndexPack;
use baton_format::pack::{PackEntry, PackWriter};
use baton_repo::progress::Progress;
use baton_repo::{LockGuard, Repository, Result};
use baton_storage::ObjectKind;
use baton_types::BlobType;

/// Blobs per new pack at most (as in the backup pipeline).
const MAX_BLOBS_PER_PACK: usize = 100_000;
/// Longest single ranged read.
const MAX_RUN: u64 = 16 << 20;

struct Writers<'a> {
    repo: &'a Repository,
    data: PackWriter,
    trees: PackWriter,
    stored: Vec<IndexPack>,
    bytes: u64,
}

impl Writers<'_> {
    fn add(&mut self, e: &PackEntry, sealed: &[u8]) -> Result<()> {
        let w = if e.blob_type.is_metadata() {
            &mut self.trees
        } else {
            &mut self.data
        };
        w.add(e.blob_type, e.id, sealed, e.raw_length, e.compressed);
        if w.size() as u64 >= self.repo.config().pack_size || w.len() >= MAX_BLOBS_PER_PACK {
            let full = std::mem::take(w);
            self.store(full)?;
        }
        Ok(())
    }

    fn flush(&mut self, kind: BlobType) -> Result<()> {
        let w = if kind.is_metadata() {
            &mut self.trees
        } else {
            &mut self.data
        };
        if !w.is_empty() {
            let w = std::mem::take(w);
            self.store(w)?;
        }
        Ok(())
    }

    fn store(&mut self, w: PackWriter) -> Result<()> {
        let (pack, bytes) = self.repo.store_pack(w)?;
        self.bytes += bytes;
        self.stored.push(pack);
        Ok(())
    }
}

/// Splits entries (sorted by offset) into runs of adjacent blobs.
fn runs(entries: &[PackEntry]) -> Vec<&[PackEntry]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=entries.len() {
        let split = i == entries.len() || {
            let (first, prev, next) = (&entries[start], &entries[i - 1], &entries[i]);
            let end = u64::from(prev.offset) + u64::from(prev.length);
            u64::from(next.offset) != end
                || end + u64::from(next.length) - u64::from(first.offset) > MAX_RUN
        };
        if split {
            out.push(&entries[start..i]);
            start = i;
        }
    }
    out
}

/// Copies `work` (per source pack, the entries to copy) into new packs;
/// returns the new packs with their entries, and their stored bytes.
pub(super) fn repack(
    repo: &Repository,
    lock: &LockGuard,
    packs: &[PackInfo],
    work: &[(usize, Vec<PackEntry>)],
    progress: &dyn Progress,
    cancel: &baton_repo::Cancel,
) -> Result<(Vec<IndexPack>, u64)> {
    let mut w = Writers {
        repo,
        data: PackWriter::new(),
        trees: PackWriter::new(),
        stored: Vec::new(),
        bytes: 0,
    };
    // Data packs first, then tree packs: one open pack at a time, normally.
    let is_tree = |list: &[PackEntry]| list.iter().any(|e| e.blob_type == BlobType::Tree);
    let mut order: Vec<&(usize, Vec<PackEntry>)> = work.iter().collect();
    order.sort_by_key(|(i, list)| (is_tree(list), packs[*i].id));
    let mut flushed_data = false;
    for (i, list) in order {
        cancel.check()?;
        lock.ensure_fresh()?;
        if is_tree(list) && !flushed_data {
            w.flush(BlobType::Data)?;
            flushed_data = true;
        }
        let name = packs[*i].id.to_hex();
        for run in runs(list) {
            let start = u64::from(run[0].offset);
            let last = run[run.len() - 1];
            let len = u64::from(last.offset) + u64::from(last.length) - start;
            let bytes = repo
                .storage()
                .get_range(ObjectKind::Pack, &name, start, len)?;
            for e in run {
                let at = (u64::from(e.offset) - start) as usize;
                w.add(e, &bytes[at..at + e.length as usize])?;
                progress.bytes(u64::from(e.length));
            }
        }
    }
    w.flush(BlobType::Data)?;
    w.flush(BlobType::Tree)?;
    Ok((w.stored, w.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_types::Id;

    fn e(offset: u32, length: u32) -> PackEntry {
        PackEntry {
            blob_type: BlobType::Data,
            id: Id::default(),
            offset,
            length,
            raw_length: 0,
            compressed: false,
        }
    }

    #[test]
    fn adjacent_blobs_share_a_read() {
        let list = [e(0, 50), e(50, 50), e(200, 10), e(210, 10), e(300, 40)];
        let r = runs(&list);
        let lens: Vec<usize> = r.iter().map(|r| r.len()).collect();
        assert_eq!(lens, [2, 2, 1]);
        assert!(runs(&[]).is_empty());
        let big = [e(0, 10 << 20), e(10 << 20, 10 << 20)];
        assert_eq!(runs(&big).len(), 2, "runs stay below MAX_RUN");
    }
}
