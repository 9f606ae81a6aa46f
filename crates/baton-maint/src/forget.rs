//! `baton forget`: remove snapshots by id, or by a retention policy (as
//! restic's): keep the last N snapshots, the newest snapshot of each of the
//! last N hours, days, ISO weeks, months and years that have snapshots,
//! every snapshot within a duration of the newest one, and every snapshot
//! with given tags. The policy applies to each group of snapshots (by host,
//! paths and/or tags) on its own. Time buckets use the snapshot time in UTC.
//!
//! [`plan_forget`] and [`apply_policy`] are pure; [`forget`] takes the
//! exclusive lock and deletes the snapshot objects. The data only those
//! snapshots used stays until `prune`.

mod calendar;
#[cfg(test)]
mod tests;

use baton_repo::{Cancel, LockGuard, RepoError, Repository, Result};
use baton_storage::ObjectKind;
use baton_types::{Id, Snapshot};
pub use calendar::{SnapTime, Within};
use calendar::{civil_from_days, iso_week};
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// What to keep. A rule with count 0 is off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    /// Keep everything at most this much older than the group's newest snapshot.
    pub within: Option<Within>,
    /// Keep snapshots that carry every tag of any of these lists.
    pub tags: Vec<Vec<String>>,
}

impl KeepPolicy {
    /// Whether no rule is set (such a policy would remove everything).
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none()
            && self.tags.iter().all(|t| t.is_empty())
    }
}

/// Why a snapshot is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepReason {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    Within(Within),
    Tag(Vec<String>),
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::Last => f.write_str("last snapshot"),
            KeepReason::Hourly => f.write_str("hourly snapshot"),
            KeepReason::Daily => f.write_str("daily snapshot"),
            KeepReason::Weekly => f.write_str("weekly snapshot"),
            KeepReason::Monthly => f.write_str("monthly snapshot"),
            KeepReason::Yearly => f.write_str("yearly snapshot"),
            KeepReason::Within(w) => write!(f, "within {w}"),
            KeepReason::Tag(t) => write!(f, "tag {}", t.join(",")),
        }
    }
}

/// A snapshot as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInput {
    pub id: Id,
    pub time: SnapTime,
    pub tags: Vec<String>,
}

/// The calendar period of a time for each bucket rule (UTC).
fn bucket(reason: &KeepReason, t: SnapTime, index: usize) -> i64 {
    match reason {
        KeepReason::Hourly => t.hour(),
        KeepReason::Daily => t.day(),
        KeepReason::Weekly => {
            let (y, w) = iso_week(t.day());
            y * 100 + i64::from(w)
        }
        KeepReason::Monthly => {
            let (y, m, _) = civil_from_days(t.day());
            y * 12 + i64::from(m)
        }
        KeepReason::Yearly => civil_from_days(t.day()).0,
        _ => index as i64,
    }
}

/// Applies `policy` to the snapshots of one group and returns, for each
/// input (in input order), the reasons to keep it; no reason means remove.
///
/// Snapshots are visited newest first (ties by id). A bucket rule with count
/// N keeps the first (newest) snapshot of each new period it meets until it
/// has kept N: so the newest snapshot of each of the N newest periods that
/// have snapshots. `within` and `tags` keep every snapshot they match.
pub fn apply_policy(policy: &KeepPolicy, snaps: &[PolicyInput]) -> Vec<Vec<KeepReason>> {
    let mut order: Vec<usize> = (0..snaps.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse((snaps[i].time, snaps[i].id)));
    let mut reasons = vec![Vec::new(); snaps.len()];
    let Some(&newest) = order.first() else {
        return reasons;
    };
    let threshold = policy.within.map(|w| w.before(snaps[newest].time));
    let mut rules: Vec<(KeepReason, u32, Option<i64>)> = [
        (KeepReason::Last, policy.last),
        (KeepReason::Hourly, policy.hourly),
        (KeepReason::Daily, policy.daily),
        (KeepReason::Weekly, policy.weekly),
        (KeepReason::Monthly, policy.monthly),
        (KeepReason::Yearly, policy.yearly),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(r, n)| (r, n, None))
    .collect();
    for (rank, &i) in order.iter().enumerate() {
        let s = &snaps[i];
        for (reason, left, last) in rules.iter_mut() {
            let b = bucket(reason, s.time, rank);
            if *left > 0 && *last != Some(b) {
                *left -= 1;
                *last = Some(b);
                reasons[i].push(reason.clone());
            }
        }
        if let (Some(t), Some(w)) = (threshold, policy.within)
            && s.time >= t
        {
            reasons[i].push(KeepReason::Within(w));
        }
        for set in &policy.tags {
            if !set.is_empty() && set.iter().all(|t| s.tags.contains(t)) {
                reasons[i].push(KeepReason::Tag(set.clone()));
            }
        }
    }
    reasons
}

/// Which snapshot fields form a group (`--group-by host,paths,tags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

impl GroupBy {
    /// Parses a comma-separated subset of `host`, `paths`, `tags`; the empty
    /// string means one group for everything.
    pub fn parse(s: &str) -> Result<Self> {
        let mut g = GroupBy {
            host: false,
            paths: false,
            tags: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "paths" => g.paths = true,
                "tags" => g.tags = true,
                other => {
                    return Err(RepoError::Invalid(format!(
                        "cannot group by {other:?}: use host, paths and/or tags, or \"\" for no grouping"
                    )));
                }
            }
        }
        Ok(g)
    }
}

/// The values a group shares (only the fields grouped by are set).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct GroupKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

impl GroupKey {
    /// The group of `s` under `by`.
    pub fn of(by: GroupBy, s: &Snapshot) -> Self {
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v.dedup();
            v
        };
        GroupKey {
            hostname: by.host.then(|| s.hostname.clone()),
            paths: by.paths.then(|| sorted(&s.paths)),
            tags: by.tags.then(|| sorted(&s.tags)),
        }
    }
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(h) = &self.hostname {
            parts.push(format!("host {h}"));
        }
        if let Some(p) = &self.paths {
            parts.push(format!("paths [{}]", p.join(", ")));
        }
        if let Some(t) = &self.tags {
            parts.push(format!("tags [{}]", t.join(",")));
        }
        if parts.is_empty() {
            f.write_str("all snapshots")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// One snapshot in a forget plan, with the reasons it is kept (none when removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgetEntry {
    pub id: Id,
    pub time: String,
    pub reasons: Vec<KeepReason>,
}

/// The decision for one group; both lists newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgetGroup {
    pub key: GroupKey,
    pub keep: Vec<ForgetEntry>,
    pub remove: Vec<ForgetEntry>,
}

/// Decides which snapshots to keep and which to remove. With `ids`, exactly
/// those are removed (and listed by group); otherwise `policy` is applied to
/// each group. Refuses an empty policy without ids, and ids with a policy.
pub fn plan_forget(
    snapshots: &[(Id, Snapshot)],
    policy: &KeepPolicy,
    group_by: GroupBy,
    ids: &[Id],
) -> Result<Vec<ForgetGroup>> {
    if !ids.is_empty() && !policy.is_empty() {
        return Err(RepoError::Invalid(
            "give snapshot ids or --keep-* rules, not both".into(),
        ));
    }
    if ids.is_empty() && policy.is_empty() {
        return Err(RepoError::Invalid(
            "refusing to delete all snapshots: give at least one --keep-* rule, or the ids of the snapshots to forget".into(),
        ));
    }
    let wanted: HashSet<Id> = ids.iter().copied().collect();
    for id in &wanted {
        if !snapshots.iter().any(|(s, _)| s == id) {
            return Err(RepoError::NotFound(format!("no snapshot with id {id}")));
        }
    }
    let mut groups: BTreeMap<GroupKey, Vec<(PolicyInput, &Snapshot)>> = BTreeMap::new();
    for (id, s) in snapshots {
        if !wanted.is_empty() && !wanted.contains(id) {
            continue;
        }
        let time = SnapTime::parse(&s.time)
            .map_err(|e| RepoError::Damaged(format!("snapshot {}: {e}", id.short())))?;
        let input = PolicyInput {
            id: *id,
            time,
            tags: s.tags.clone(),
        };
        groups
            .entry(GroupKey::of(group_by, s))
            .or_default()
            .push((input, s));
    }
    let mut out = Vec::new();
    for (key, mut members) in groups {
        members.sort_by_key(|m| std::cmp::Reverse((m.0.time, m.0.id)));
        let inputs: Vec<PolicyInput> = members.iter().map(|(i, _)| i.clone()).collect();
        let reasons = if wanted.is_empty() {
            apply_policy(policy, &inputs)
        } else {
            vec![Vec::new(); inputs.len()]
        };
        let mut group = ForgetGroup {
            key,
            keep: Vec::new(),
            remove: Vec::new(),
        };
        for ((input, s), reasons) in members.iter().zip(reasons) {
            let entry = ForgetEntry {
                id: input.id,
                time: s.time.clone(),
                reasons,
            };
            if entry.reasons.is_empty() {
                group.remove.push(entry);
            } else {
                group.keep.push(entry);
            }
        }
        out.push(group);
    }
    Ok(out)
}

/// Options of `baton forget`.
#[derive(Debug, Clone, Default)]
pub struct ForgetOptions {
    pub policy: KeepPolicy,
    pub group_by: GroupBy,
    /// Snapshots to forget (`latest`, ids or unique prefixes) instead of a policy.
    pub snapshots: Vec<String>,
    /// Decide and report, but delete nothing.
    pub dry_run: bool,
    /// A policy considers only these snapshots (`--host`, `--path`,
    /// `--tag`); the others are neither kept nor removed by it.
    pub select: baton_repo::SnapshotSelect,
    /// Stops between deletions (each snapshot is deleted whole or not).
    pub cancel: Cancel,
}

/// What `forget` decided (and, unless a dry run, did).
#[derive(Debug, Clone)]
pub struct ForgetResult {
    pub groups: Vec<ForgetGroup>,
    /// Snapshots removed (or, in a dry run, to remove).
    pub removed: Vec<Id>,
    /// Snapshots left out of the policy, with why: unreadable ones, those
    /// dated in the future, those whose root tree is missing. None of them
    /// takes the place of a kept snapshot, and none is removed by a policy
    /// (forget them by id).
    pub skipped: Vec<(String, String)>,
}

pub(crate) fn require_exclusive(lock: &LockGuard, what: &str) -> Result<()> {
    if lock.is_exclusive() {
        Ok(())
    } else {
        Err(RepoError::Invalid(format!(
            "{what} needs an exclusive lock"
        )))
    }
}

/// Takes the exclusive lock and runs [`forget_locked`].
pub fn forget(repo: &Repository, opts: &ForgetOptions) -> Result<ForgetResult> {
    let lock = repo.lock(true)?;
    forget_locked(repo, &lock, opts)
}

/// Plans and (unless `dry_run`) deletes the snapshot objects; `lock` must
/// be an exclusive lock of this repository.
pub fn forget_locked(
    repo: &Repository,
    lock: &LockGuard,
    opts: &ForgetOptions,
) -> Result<ForgetResult> {
    require_exclusive(lock, "forget")?;
    if !opts.dry_run {
        repo.require_deletes("forget")?;
    }
    let listing = repo.list_snapshots_all()?;
    let mut skipped = listing.unreadable.clone();
    let mut ids = Vec::new();
    // Unreadable snapshots named by id are removed without being read.
    let mut unreadable_ids = Vec::new();
    for r in &opts.snapshots {
        let id = if r == "latest" {
            repo.find_snapshot(r)?.0
        } else {
            let name = repo.resolve_snapshot_name(r)?;
            Id::from_hex(&name).map_err(|e| RepoError::Damaged(e.to_string()))?
        };
        if listing.snapshots.iter().any(|(s, _)| *s == id) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        } else if !unreadable_ids.contains(&id) {
            unreadable_ids.push(id);
        }
    }
    skipped.retain(|(name, _)| !unreadable_ids.iter().any(|id| id.to_hex() == *name));
    // A policy keeps only snapshots that can stand for their time: one
    // dated in the future would win every "keep last" and "keep daily"
    // slot, and one whose root tree is gone keeps nothing restorable.
    let mut snapshots = Vec::new();
    for (id, s) in listing.snapshots {
        if ids.contains(&id) {
            snapshots.push((id, s));
        } else if !opts.select.matches(&s) {
            continue;
        } else if baton_repo::repo::in_future(&s.time) {
            skipped.push((
                id.to_hex(),
                format!(
                    "dated {} in the future; kept, never counted by a policy",
                    s.time
                ),
            ));
        } else if !repo.index().is_empty() && !repo.index().contains(&s.tree) {
            skipped.push((
                id.to_hex(),
                "its root tree is missing; kept, never counted by a policy (see `baton check`)"
                    .into(),
            ));
        } else {
            snapshots.push((id, s));
        }
    }
    let groups = if ids.is_empty() && !unreadable_ids.is_empty() && opts.policy.is_empty() {
        Vec::new()
    } else {
        plan_forget(&snapshots, &opts.policy, opts.group_by, &ids)?
    };
    let mut removed: Vec<Id> = groups
        .iter()
        .flat_map(|g| g.remove.iter().map(|e| e.id))
        .collect();
    removed.extend(unreadable_ids);
    if !opts.dry_run {
        for id in &removed {
            opts.cancel.check()?;
            lock.ensure_fresh()?;
            repo.storage().remove(ObjectKind::Snapshot, &id.to_hex())?;
        }
    }
    Ok(ForgetResult {
        groups,
        removed,
        skipped,
    })
}
