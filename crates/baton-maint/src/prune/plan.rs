//! Deciding what prune does with each indexed pack (pure; no I/O).
//!
//! Every used blob gets one *owner*: a copy in a pack that exists, preferring
//! packs of unfinished jobs, then packs with more used bytes. Owned bytes
//! are a pack's used bytes; everything else in it (blobs no snapshot uses,
//! extra copies of duplicated blobs) is unused. Packs of unfinished jobs are
//! kept whole; packs without used bytes are deleted; packs whose unused share
//! exceeds `--max-unused` are repacked; the rest are kept. A repacked pack's
//! used blobs are copied only if no kept pack holds a copy, and once.

use baton_format::pack::PackEntry;
use baton_repo::{RepoError, Result};
use baton_types::Id;
use std::collections::{HashMap, HashSet};

/// How much unused data prune tolerates (`--max-unused`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxUnused {
    /// Repack every pack whose unused bytes exceed this share of its size.
    Percent(f64),
    /// Repack the packs with the largest unused shares until the unused bytes
    /// left in all kept packs are at most this many.
    Bytes(u64),
    /// Never repack.
    Unlimited,
}

impl Default for MaxUnused {
    fn default() -> Self {
        MaxUnused::Percent(5.0)
    }
}

impl MaxUnused {
    /// Parses `N%` (0..=100), a size (`100M`, `2G`, `512k`, `1000`; binary
    /// units), or `unlimited`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            RepoError::Invalid(format!(
                "--max-unused {s:?}: use a percentage (5%), a size (100M) or `unlimited`"
            ))
        };
        let t = s.trim();
        if t.eq_ignore_ascii_case("unlimited") {
            return Ok(MaxUnused::Unlimited);
        }
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad())?;
            return if (0.0..=100.0).contains(&v) {
                Ok(MaxUnused::Percent(v))
            } else {
                Err(bad())
            };
        }
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let n: u64 = t[..digits].parse().map_err(|_| bad())?;
        let unit = t[digits..].trim().to_ascii_lowercase();
        let shift = match unit.trim_end_matches('b').trim_end_matches('i') {
            "" => 0,
            "k" => 10,
            "m" => 20,
            "g" => 30,
            "t" => 40,
            _ => return Err(bad()),
        };
        n.checked_mul(1 << shift)
            .map(MaxUnused::Bytes)
            .ok_or_else(bad)
    }
}

/// One indexed pack as the planner sees it.
#[derive(Debug, Clone)]
pub struct PackInfo {
    pub id: Id,
    /// Size in storage; `None` when the index lists a pack that is gone.
    pub size: Option<u64>,
    pub entries: Vec<PackEntry>,
    /// Referenced by the journal of an unfinished job: kept whole.
    pub protected: bool,
}

/// What happens to a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Keep,
    Delete,
    Repack,
    /// Listed by the index but absent from storage, and nothing used is in
    /// it: dropped from the new index.
    Missing,
}

/// Counts and sizes of a plan (sizes are stored bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PlanStats {
    /// Indexed packs present in storage, and their bytes.
    pub packs: usize,
    pub bytes: u64,
    pub blobs_used: usize,
    pub bytes_used: u64,
    /// Blobs no snapshot uses, and extra copies of duplicated blobs.
    pub bytes_unused: u64,
    pub packs_delete: usize,
    pub bytes_delete: u64,
    pub packs_repack: usize,
    pub bytes_repack: u64,
    /// Used blob bytes copied out of repacked packs.
    pub bytes_rewrite: u64,
    pub packs_keep: usize,
    /// Kept because unfinished jobs use them (indexed ones; see also the
    /// journal-only packs counted by prune).
    pub packs_protected: usize,
    /// Unused bytes left in kept packs afterwards.
    pub bytes_unused_after: u64,
    pub packs_missing: usize,
    /// Packs in storage that no index lists and no unfinished job uses.
    pub packs_unreferenced: usize,
    pub bytes_unreferenced: u64,
}

/// The plan: a fate per pack (same order as the input) and, per repacked
/// pack, the entries to copy (sorted by offset).
#[derive(Debug, Clone)]
pub struct Plan {
    pub fates: Vec<Fate>,
    /// Unused bytes of each pack (read by the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub unused: Vec<u64>,
    pub copy: Vec<(usize, Vec<PackEntry>)>,
    pub stats: PlanStats,
}

/// Plans prune. `used` blobs must each have a copy in an existing pack (else
/// the repository is damaged and this fails); `wanted` blobs (from the
/// catalogs of unfinished jobs) are kept when present.
pub fn plan(
    packs: &[PackInfo],
    used: &HashSet<Id>,
    wanted: &HashSet<Id>,
    max_unused: MaxUnused,
) -> Result<Plan> {
    let needed = |id: &Id| used.contains(id) || wanted.contains(id);
    let present = |i: usize| packs[i].size.is_some();
    let mut score = vec![0u64; packs.len()];
    for (i, p) in packs.iter().enumerate().filter(|(i, _)| present(*i)) {
        score[i] = p
            .entries
            .iter()
            .filter(|e| needed(&e.id))
            .map(|e| u64::from(e.length))
            .sum();
    }
    let rank = |i: usize| (packs[i].protected, score[i]);
    let mut owner: HashMap<Id, (usize, usize)> = HashMap::new();
    for (i, p) in packs.iter().enumerate().filter(|(i, _)| present(*i)) {
        for (j, e) in p.entries.iter().enumerate().filter(|(_, e)| needed(&e.id)) {
            let o = owner.entry(e.id).or_insert((i, j));
            if rank(i) > rank(o.0) {
                *o = (i, j);
            }
        }
    }
    let mut lost: Vec<&Id> = used.iter().filter(|id| !owner.contains_key(id)).collect();
    if !lost.is_empty() {
        lost.sort();
        let some: Vec<String> = lost.iter().take(5).map(|id| id.short()).collect();
        return Err(RepoError::Damaged(format!(
            "{} blob(s) used by snapshots are in no existing pack (e.g. {}); the repository is damaged, prune changed nothing",
            lost.len(),
            some.join(", ")
        )));
    }
    let owned = |i: usize, j: usize| owner.get(&packs[i].entries[j].id) == Some(&(i, j));

    let mut st = PlanStats::default();
    let mut fates = vec![Fate::Keep; packs.len()];
    let mut unused = vec![0u64; packs.len()];
    let mut candidates = Vec::new();
    for (i, p) in packs.iter().enumerate() {
        let Some(size) = p.size else {
            fates[i] = Fate::Missing;
            st.packs_missing += 1;
            continue;
        };
        let (mut used_b, mut used_n) = (0u64, 0usize);
        for (j, e) in p.entries.iter().enumerate() {
            if owned(i, j) {
                used_b += u64::from(e.length);
                used_n += 1;
            } else {
                unused[i] += u64::from(e.length);
            }
        }
        st.packs += 1;
        st.bytes += size;
        st.blobs_used += used_n;
        st.bytes_used += used_b;
        st.bytes_unused += unused[i];
        fates[i] = if p.protected {
            st.packs_protected += 1;
            Fate::Keep
        } else if used_n == 0 {
            Fate::Delete
        } else {
            if unused[i] > 0 {
                candidates.push(i);
            }
            Fate::Keep
        };
    }
    let share = |i: usize| unused[i] as f64 / packs[i].size.unwrap_or(1).max(1) as f64;
    match max_unused {
        MaxUnused::Unlimited => {}
        MaxUnused::Percent(pct) => {
            for &i in &candidates {
                if share(i) * 100.0 > pct {
                    fates[i] = Fate::Repack;
                }
            }
        }
        MaxUnused::Bytes(limit) => {
            let mut left: u64 = (0..packs.len())
                .filter(|&i| fates[i] == Fate::Keep)
                .map(|i| unused[i])
                .sum();
            candidates.sort_by(|&a, &b| {
                share(b)
                    .total_cmp(&share(a))
                    .then(unused[b].cmp(&unused[a]))
                    .then(a.cmp(&b))
            });
            for &i in &candidates {
                if left <= limit {
                    break;
                }
                fates[i] = Fate::Repack;
                left -= unused[i];
            }
        }
    }
    // Blobs a kept pack holds need no copy; the rest are copied once, from their owner.
    let kept: HashSet<Id> = (0..packs.len())
        .filter(|&i| fates[i] == Fate::Keep)
        .flat_map(|i| packs[i].entries.iter().map(|e| e.id))
        .collect();
    let mut copied = HashSet::new();
    let mut copy = Vec::new();
    for (i, p) in packs.iter().enumerate() {
        let size = p.size.unwrap_or(0);
        match fates[i] {
            Fate::Keep => {
                st.packs_keep += 1;
                st.bytes_unused_after += unused[i];
            }
            Fate::Delete => {
                st.packs_delete += 1;
                st.bytes_delete += size;
            }
            Fate::Missing => {}
            Fate::Repack => {
                st.packs_repack += 1;
                st.bytes_repack += size;
                let mut list: Vec<PackEntry> = (0..p.entries.len())
                    .filter(|&j| owned(i, j))
                    .map(|j| p.entries[j])
                    .filter(|e| !kept.contains(&e.id) && copied.insert(e.id))
                    .collect();
                list.sort_by_key(|e| e.offset);
                st.bytes_rewrite += list.iter().map(|e| u64::from(e.length)).sum::<u64>();
                copy.push((i, list));
            }
        }
    }
    Ok(Plan {
        fates,
        unused,
        copy,
        stats: st,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_types::BlobType;
    use proptest::prelude::*;

    fn blob(n: u8) -> Id {
        Id::from_bytes([n; 32])
    }

    /// Packs over a small pool of blob ids (so duplicates happen).
    fn packs() -> impl Strategy<Value = Vec<PackInfo>> {
        let pack = (
            proptest::collection::vec((0u8..30, 41u32..2000), 1..8),
            any::<bool>(),
            0u8..10,
        );
        proptest::collection::vec(pack, 0..10).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(n, (blobs, protected, missing))| {
                    let (entries, offset) = entries(&blobs);
                    PackInfo {
                        id: Id::from_bytes([200 + n as u8; 32]),
                        size: (missing != 0).then_some(u64::from(offset) + 100),
                        entries,
                        protected: protected && n % 3 == 0,
                    }
                })
                .collect()
        })
    }

    fn limits() -> impl Strategy<Value = MaxUnused> {
        prop_oneof![
            (0.0f64..100.0).prop_map(MaxUnused::Percent),
            (0u64..20_000).prop_map(MaxUnused::Bytes),
            Just(MaxUnused::Unlimited),
        ]
    }

    proptest! {
        #[test]
        fn every_used_blob_survives_exactly_once_in_new_packs(
            packs in packs(),
            used in proptest::collection::hash_set(0u8..30, 0..30),
            limit in limits(),
        ) {
            let available: HashSet<Id> = packs.iter().filter(|p| p.size.is_some())
                .flat_map(|p| p.entries.iter().map(|e| e.id)).collect();
            let used: HashSet<Id> = used.into_iter().map(blob).collect();
            let result = plan(&packs, &used, &HashSet::new(), limit);
            if !used.is_subset(&available) {
                prop_assert!(result.is_err(), "a used blob without a copy must stop prune");
                return Ok(());
            }
            let p = result.unwrap();
            let mut after: HashSet<Id> = HashSet::new();
            for (i, pk) in packs.iter().enumerate() {
                if p.fates[i] == Fate::Keep {
                    after.extend(pk.entries.iter().map(|e| e.id));
                }
                if pk.protected && pk.size.is_some() {
                    prop_assert_eq!(p.fates[i], Fate::Keep);
                }
                if pk.size.is_none() {
                    prop_assert_eq!(p.fates[i], Fate::Missing);
                }
            }
            let mut copied = Vec::new();
            for (i, list) in &p.copy {
                prop_assert_eq!(p.fates[*i], Fate::Repack);
                for e in list {
                    prop_assert!(packs[*i].entries.contains(e));
                    prop_assert!(!after.contains(&e.id), "copied although a kept pack holds it");
                    copied.push(e.id);
                }
            }
            let n = copied.len();
            after.extend(copied.iter().copied());
            let unique: HashSet<Id> = copied.into_iter().collect();
            prop_assert_eq!(unique.len(), n, "a blob was copied twice");
            prop_assert!(used.is_subset(&after));
            prop_assert!(unique.is_subset(&used), "only used blobs are copied");
            // Deleted packs hold nothing used that would not survive elsewhere.
            for (i, pk) in packs.iter().enumerate() {
                if p.fates[i] == Fate::Delete {
                    prop_assert!(!pk.protected);
                }
            }
            match limit {
                MaxUnused::Unlimited => prop_assert_eq!(p.stats.packs_repack, 0),
                MaxUnused::Bytes(b) => {
                    let unrepacked = packs.iter().enumerate().any(|(i, pk)| {
                        p.fates[i] == Fate::Keep && !pk.protected && p.unused[i] > 0
                    });
                    prop_assert!(p.stats.bytes_unused_after <= b || !unrepacked);
                }
                MaxUnused::Percent(_) => {}
            }
        }

        #[test]
        fn zero_percent_leaves_no_unused_blob_outside_job_packs(packs in packs(), used in proptest::collection::hash_set(0u8..30, 0..30)) {
            let used: HashSet<Id> = used.into_iter().map(blob).collect();
            let Ok(p) = plan(&packs, &used, &HashSet::new(), MaxUnused::Percent(0.0)) else { return Ok(()); };
            let mut count: HashMap<Id, usize> = HashMap::new();
            for (i, pk) in packs.iter().enumerate() {
                if p.fates[i] == Fate::Keep {
                    for e in &pk.entries {
                        *count.entry(e.id).or_default() += 1;
                    }
                }
            }
            for (i, pk) in packs.iter().enumerate() {
                if p.fates[i] == Fate::Keep && !pk.protected {
                    for e in &pk.entries {
                        prop_assert!(used.contains(&e.id), "unused blob left in a kept pack");
                        prop_assert_eq!(count[&e.id], 1, "duplicate left in kept packs");
                    }
                }
            }
            let q = plan(&packs, &used, &HashSet::new(), MaxUnused::Percent(100.0)).unwrap();
            prop_assert_eq!(q.stats.packs_repack, 0);
        }
    }

    /// Entries for blobs `(blob number, sealed length)` laid out one after
    /// the other, and where the last one ends.
    fn entries(blobs: &[(u8, u32)]) -> (Vec<PackEntry>, u32) {
        let mut offset = 0;
        let entries = blobs
            .iter()
            .map(|&(b, length)| {
                let e = PackEntry {
                    blob_type: BlobType::Data,
                    id: blob(b),
                    offset,
                    length,
                    raw_length: length - 40,
                    compressed: false,
                };
                offset += length;
                e
            })
            .collect();
        (entries, offset)
    }

    fn pack(n: u8, blobs: &[(u8, u32)]) -> PackInfo {
        let (entries, offset) = entries(blobs);
        PackInfo {
            id: Id::from_bytes([100 + n; 32]),
            size: Some(u64::from(offset) + 100),
            entries,
            protected: false,
        }
    }

    /// Blob 1 is owned by the fuller pack A, which is repacked (a third of
    /// it is unused), while pack B, holding a second copy, is kept (its
    /// unused share, that copy, is under 20%): blob 1 must not be copied.
    #[test]
    fn a_blob_a_kept_pack_holds_is_not_copied() {
        let a = pack(0, &[(1, 1000), (2, 9000), (3, 5000)]);
        let b = pack(1, &[(1, 1000), (4, 8000)]);
        let used: HashSet<Id> = [1, 2, 4].into_iter().map(blob).collect();
        let p = plan(&[a, b], &used, &HashSet::new(), MaxUnused::Percent(20.0)).unwrap();
        assert_eq!(p.fates, [Fate::Repack, Fate::Keep]);
        let copied: Vec<Id> = p.copy[0].1.iter().map(|e| e.id).collect();
        assert_eq!(copied, [blob(2)]);
        assert_eq!(p.stats.bytes_rewrite, 9000);
        assert_eq!(p.stats.bytes_unused_after, 1000);
    }

    #[test]
    fn max_unused_parses() {
        assert_eq!(MaxUnused::parse("5%").unwrap(), MaxUnused::Percent(5.0));
        assert_eq!(MaxUnused::parse("0%").unwrap(), MaxUnused::Percent(0.0));
        assert_eq!(
            MaxUnused::parse("100M").unwrap(),
            MaxUnused::Bytes(100 << 20)
        );
        assert_eq!(MaxUnused::parse("2GiB").unwrap(), MaxUnused::Bytes(2 << 30));
        assert_eq!(
            MaxUnused::parse("512k").unwrap(),
            MaxUnused::Bytes(512 << 10)
        );
        assert_eq!(MaxUnused::parse("1000").unwrap(), MaxUnused::Bytes(1000));
        assert_eq!(MaxUnused::parse("unlimited").unwrap(), MaxUnused::Unlimited);
        for bad in ["", "101%", "-1%", "5x", "M", "1.5M"] {
            assert!(MaxUnused::parse(bad).is_err(), "{bad}");
        }
    }
}
