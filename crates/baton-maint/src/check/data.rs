//! The data pass of `check`: read packs whole, one at a time, and verify
//! their hash, their header, the index's entries for them, and every blob.

use super::structure::blob_object;
use super::{Checker, ProblemKind, Subset};
use baton_format::pack::{BlobBuffers, PackEntry, open_blob_into, read_header};
use baton_format::storage_id;
use baton_repo::Repository;
use baton_storage::ObjectKind;
use baton_types::Id;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;

/// Which packs to read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PackSelection {
    All,
    Subset(Subset),
}

/// A small PRNG (SplitMix64) seeded from the OS: good enough to pick packs.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let mut b = [0u8; 8];
        baton_format::random_bytes(&mut b);
        Rng(u64::from_le_bytes(b))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// The packs to read, in id order.
pub(crate) fn select_packs(stored: &BTreeMap<Id, u64>, sel: PackSelection) -> Vec<(Id, u64)> {
    let all: Vec<(Id, u64)> = stored.iter().map(|(id, size)| (*id, *size)).collect();
    let mut picked = match sel {
        PackSelection::All => return all,
        PackSelection::Subset(Subset::Group { k, m }) => {
            return all
                .into_iter()
                .filter(|(id, _)| m > 0 && group_of(id, m) + 1 == k)
                .collect();
        }
        PackSelection::Subset(Subset::Percent(p)) => {
            let mut v = all;
            Rng::new().shuffle(&mut v);
            let n = ((v.len() as f64 * p / 100.0).ceil() as usize).min(v.len());
            v.truncate(n);
            v
        }
        PackSelection::Subset(Subset::Bytes(limit)) => {
            let mut v = all;
            Rng::new().shuffle(&mut v);
            let mut total = 0u64;
            v.retain(|(_, size)| {
                let fits = total + size <= limit;
                if fits {
                    total += size;
                }
                fits
            });
            v
        }
    };
    picked.sort();
    picked
}

/// The group (0-based, of `m`) a pack belongs to: its first 8 id bytes mod `m`.
fn group_of(id: &Id, m: u64) -> u64 {
    let b: [u8; 8] = id.as_bytes()[..8].try_into().expect("8 bytes");
    u64::from_le_bytes(b) % m
}

/// One problem found in a pack: kind, object, message, blobs lost.
pub(crate) type Finding = (ProblemKind, String, String, Vec<Id>);

/// What reading one pack found.
#[derive(Default)]
pub(crate) struct PackVerdict {
    pub bytes_read: u64,
    pub blobs_checked: u64,
    pub findings: Vec<Finding>,
}

impl PackVerdict {
    /// Blobs that cannot be read correctly from this pack.
    pub fn bad_blobs(&self) -> impl Iterator<Item = &Id> {
        self.findings.iter().flat_map(|f| f.3.iter())
    }
}

fn key_of(e: &PackEntry) -> (u8, u32, u32, u32, bool) {
    (
        e.blob_type.as_byte(),
        e.offset,
        e.length,
        e.raw_length,
        e.compressed,
    )
}

/// Reads pack `id` whole and verifies it. `expected` are the entries the
/// index (or a journal) lists for it. Only this one pack is held in memory.
pub(crate) fn verify_pack(
    repo: &Repository,
    id: &Id,
    expected: Option<&[PackEntry]>,
) -> PackVerdict {
    let mut v = PackVerdict::default();
    let object = format!("pack {id}");
    let expected_ids = || expected.unwrap_or(&[]).iter().map(|e| e.id).collect();
    let bytes = match repo.storage().get(ObjectKind::Pack, &id.to_hex()) {
        Ok(b) => b,
        Err(e) => {
            let kind = if e.is_not_found() {
                ProblemKind::MissingPack
            } else {
                ProblemKind::Unreadable
            };
            v.findings
                .push((kind, object, e.to_string(), expected_ids()));
            return v;
        }
    };
    v.bytes_read = bytes.len() as u64;
    let actual = storage_id(&bytes);
    if actual != *id {
        v.findings.push((
            ProblemKind::HashMismatch,
            object.clone(),
            format!(
                "its {} bytes hash to {actual}: the pack is damaged, or was renamed",
                bytes.len()
            ),
            vec![],
        ));
    }
    let header = match read_header(repo.key(), &repo.config().id, &bytes) {
        Ok(h) => Some(h),
        Err(e) => {
            v.findings.push((
                ProblemKind::Damaged,
                object.clone(),
                format!("the pack header cannot be read: {e}"),
                vec![],
            ));
            None
        }
    };
    if let (Some(h), Some(exp)) = (&header, expected) {
        let in_header: HashMap<Id, &PackEntry> = h.iter().map(|e| (e.id, e)).collect();
        let wrong: Vec<&PackEntry> = exp
            .iter()
            .filter(|e| in_header.get(&e.id).is_none_or(|h| key_of(h) != key_of(e)))
            .collect();
        if let Some(first) = wrong.first() {
            v.findings.push((
                ProblemKind::IndexMismatch,
                object.clone(),
                format!(
                    "the index lists {} blob(s) that the pack header does not hold at that place \
                     (first: {} at offset {}, length {})",
                    wrong.len(),
                    blob_object(first.blob_type, &first.id),
                    first.offset,
                    first.length
                ),
                wrong.iter().map(|e| e.id).collect(),
            ));
        }
        let listed: HashMap<Id, ()> = exp.iter().map(|e| (e.id, ())).collect();
        let extra = h.iter().filter(|e| !listed.contains_key(&e.id)).count();
        if extra > 0 {
            v.findings.push((
                ProblemKind::IndexMismatch,
                object.clone(),
                format!(
                    "the pack header lists {extra} blob(s) the index does not (run `baton repair index`)"
                ),
                vec![],
            ));
        }
    }
    // Verify the blobs the header lists; without a readable header, those
    // the index says are there.
    let entries: &[PackEntry] = match (&header, expected) {
        (Some(h), _) => h,
        (None, Some(exp)) => exp,
        (None, None) => &[],
    };
    let mut bufs = BlobBuffers::default();
    for e in entries {
        v.blobs_checked += 1;
        let (start, end) = (e.offset as usize, e.offset as usize + e.length as usize);
        let result = match bytes.get(start..end) {
            Some(sealed) => open_blob_into(
                repo.key(),
                e.blob_type,
                &e.id,
                sealed,
                e.raw_length,
                e.compressed,
                &mut bufs,
            )
            .map(|_| ())
            .map_err(|err| err.to_string()),
            None => Err(format!("lies beyond the end of the {} bytes", bytes.len())),
        };
        if let Err(err) = result {
            v.findings.push((
                ProblemKind::DamagedBlob,
                blob_object(e.blob_type, &e.id),
                format!(
                    "in pack {id} at offset {}, length {}: {err}",
                    e.offset, e.length
                ),
                vec![e.id],
            ));
        }
    }
    v
}

/// Reads and verifies `packs` with one worker per core (each holds one pack
/// in memory at a time), recording what they find in pack order. Stops
/// early when the check is cancelled.
pub(super) fn check_packs(
    c: &mut Checker<'_>,
    packs: &[(Id, u64)],
    indexed: &HashMap<Id, (Vec<PackEntry>, String)>,
    jobs: &HashMap<Id, Vec<PackEntry>>,
) {
    let expected = |id: &Id| {
        indexed
            .get(id)
            .map(|(e, _)| e.as_slice())
            .or_else(|| jobs.get(id).map(|e| e.as_slice()))
    };
    let (repo, cancel) = (c.repo, c.cancel);
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<(usize, PackVerdict)>(workers);
        for _ in 0..workers {
            let (tx, next, expected) = (tx.clone(), &next, &expected);
            std::thread::Builder::new()
                .name("baton-check".into())
                .spawn_scoped(s, move || {
                    while !cancel.is_cancelled() {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((id, _)) = packs.get(i) else { return };
                        if tx.send((i, verify_pack(repo, id, expected(id)))).is_err() {
                            return;
                        }
                    }
                })
                .expect("spawning a thread");
        }
        drop(tx);
        // Results are recorded in pack order, whatever order they come in.
        let mut waiting = BTreeMap::new();
        let mut due = 0;
        for (i, v) in rx {
            waiting.insert(i, v);
            while let Some(v) = waiting.remove(&due) {
                record(c, packs[due].1, v);
                due += 1;
            }
        }
    });
}

/// Records what verifying one pack found.
fn record(c: &mut Checker<'_>, size: u64, v: PackVerdict) {
    c.report.packs_checked += 1;
    c.report.blobs_checked += v.blobs_checked;
    c.report.bytes_read += v.bytes_read;
    c.progress.bytes(size);
    for (kind, object, message, blobs) in v.findings {
        // A tree the tree pass could not load is reported already.
        if kind == ProblemKind::DamagedBlob && blobs.iter().all(|b| c.bad_blobs.contains(b)) {
            continue;
        }
        c.error(kind, object, message, blobs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packs(n: u8) -> BTreeMap<Id, u64> {
        (0..n)
            .map(|i| (Id::from_bytes([i; 32]), 100 + i as u64))
            .collect()
    }

    #[test]
    fn groups_cover_every_pack_once() {
        let all = packs(50);
        let mut seen = Vec::new();
        for k in 1..=7 {
            seen.extend(select_packs(
                &all,
                PackSelection::Subset(Subset::Group { k, m: 7 }),
            ));
        }
        seen.sort();
        assert_eq!(seen, all.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn percent_and_size_subsets() {
        let all = packs(40);
        let ten = select_packs(&all, PackSelection::Subset(Subset::Percent(10.0)));
        assert_eq!(ten.len(), 4);
        assert!(ten.windows(2).all(|w| w[0].0 < w[1].0), "sorted by id");
        let tiny = select_packs(&all, PackSelection::Subset(Subset::Percent(0.1)));
        assert_eq!(tiny.len(), 1, "a positive share reads at least one pack");
        let sized = select_packs(&all, PackSelection::Subset(Subset::Bytes(1000)));
        let total: u64 = sized.iter().map(|(_, s)| s).sum();
        assert!(total <= 1000 && total > 1000 - 140, "{total}");
        assert_eq!(select_packs(&all, PackSelection::All).len(), 40);
    }
}
