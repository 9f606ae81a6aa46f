//! The virtual directories above the snapshots' trees, built once from the
//! snapshot list when the file system is mounted:
//!
//! ```text
//! /ids/<short id>/              a snapshot's root tree
//! /snapshots/<time>/            time in seconds, UTC: 2026-01-31T14:00:00Z
//! /snapshots/latest -> <time>
//! /hosts/<host>/<time>/         and /hosts/<host>/latest
//! /tags/<tag>/<time>/           and /tags/<tag>/latest
//! ```
//!
//! Snapshots that share a second are all named `<time>-<short id>`, so a
//! name does not depend on which other snapshots are listed with it; a short
//! id that two snapshots share is replaced by the full id for both. Host
//! names, tags and times come from snapshot objects, which are not trusted:
//! each becomes one safe path component (see [`component`]).
//! `latest` is the newest snapshot not dated in the future, as everywhere
//! else in Baton ([`baton_repo::repo::in_future`]).

use baton_types::{Id, Snapshot};
use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

/// The name of the symlink to the newest snapshot in a directory.
pub(crate) const LATEST: &str = "latest";

/// One entry of a virtual directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VEntry {
    /// Another virtual directory (an index into [`Layout::dirs`]).
    Dir(usize),
    /// A snapshot's root tree (an index into [`Layout::snapshots`]).
    Snapshot(usize),
    /// `latest`: a symlink to the sibling named `target`, snapshot `snapshot`.
    Latest { target: String, snapshot: usize },
}

/// A virtual directory: its entries, sorted by name.
#[derive(Debug, Default)]
pub(crate) struct VDir {
    pub(crate) entries: Vec<(String, VEntry)>,
}

impl VDir {
    pub(crate) fn find(&self, name: &[u8]) -> Option<(&str, &VEntry)> {
        self.entries
            .binary_search_by(|(n, _)| n.as_bytes().cmp(name))
            .ok()
            .map(|i| (self.entries[i].0.as_str(), &self.entries[i].1))
    }

    /// Subdirectories (for the directory's link count).
    pub(crate) fn subdirs(&self) -> usize {
        self.entries
            .iter()
            .filter(|(_, e)| !matches!(e, VEntry::Latest { .. }))
            .count()
    }
}

/// The whole virtual layout. `dirs[ROOT]` is the mount's root.
#[derive(Debug)]
pub(crate) struct Layout {
    pub(crate) dirs: Vec<VDir>,
    /// Sorted oldest first (by time, then id).
    pub(crate) snapshots: Vec<(Id, Snapshot)>,
    /// Each snapshot's time, when it parses.
    pub(crate) times: Vec<Option<SystemTime>>,
}

pub(crate) const ROOT: usize = 0;

impl Layout {
    pub(crate) fn new(snapshots: Vec<(Id, Snapshot)>) -> Layout {
        let mut snaps: Vec<(Option<SystemTime>, (Id, Snapshot))> = snapshots
            .into_iter()
            .map(|s| (humantime::parse_rfc3339_weak(&s.1.time).ok(), s))
            .collect();
        // Unparseable times sort first (`None` < `Some`), then by time, id.
        snaps.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.0.cmp(&b.1.0)));
        let (times, snapshots): (Vec<_>, Vec<_>) = snaps.into_iter().unzip();
        let names = time_names(&snapshots, &times);
        let ids = id_names(&snapshots);
        let mut l = Layout {
            dirs: vec![VDir::default()],
            snapshots,
            times,
        };
        let all: Vec<usize> = (0..l.snapshots.len()).collect();

        let by_id = all
            .iter()
            .map(|&i| (ids[i].clone(), VEntry::Snapshot(i)))
            .collect();
        let ids_dir = l.add(by_id);
        let snaps_dir = l.add(l.snapshot_entries(&all, &names));

        let mut hosts: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut tags: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in &all {
            let s = &l.snapshots[i].1;
            hosts.entry(component(&s.hostname)).or_default().push(i);
            for t in &s.tags {
                let v = tags.entry(component(t)).or_default();
                if v.last() != Some(&i) {
                    v.push(i);
                }
            }
        }
        let hosts_dir = l.group_dir(hosts, &names);
        let tags_dir = l.group_dir(tags, &names);
        l.dirs[ROOT] = sorted(vec![
            ("hosts".into(), VEntry::Dir(hosts_dir)),
            ("ids".into(), VEntry::Dir(ids_dir)),
            ("snapshots".into(), VEntry::Dir(snaps_dir)),
            ("tags".into(), VEntry::Dir(tags_dir)),
        ]);
        l
    }

    fn add(&mut self, entries: Vec<(String, VEntry)>) -> usize {
        self.dirs.push(sorted(entries));
        self.dirs.len() - 1
    }

    /// A directory per group (host or tag), each holding its snapshots.
    fn group_dir(&mut self, groups: BTreeMap<String, Vec<usize>>, names: &[String]) -> usize {
        let mut entries = Vec::new();
        for (group, members) in groups {
            let d = self.add(self.snapshot_entries(&members, names));
            entries.push((group, VEntry::Dir(d)));
        }
        self.add(entries)
    }

    /// `members` by time name, and `latest`.
    fn snapshot_entries(&self, members: &[usize], names: &[String]) -> Vec<(String, VEntry)> {
        let mut v: Vec<(String, VEntry)> = members
            .iter()
            .map(|&i| (names[i].clone(), VEntry::Snapshot(i)))
            .collect();
        let newest = members
            .iter()
            .rev()
            .find(|&&i| !baton_repo::repo::in_future(&self.snapshots[i].1.time));
        if let Some(&i) = newest {
            v.push((
                LATEST.into(),
                VEntry::Latest {
                    target: names[i].clone(),
                    snapshot: i,
                },
            ));
        }
        v
    }
}

fn sorted(mut entries: Vec<(String, VEntry)>) -> VDir {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    VDir { entries }
}

/// One safe path component from untrusted text: `/` and NUL become `_`; an
/// empty name, `.` and `..` get a leading `_`.
pub(crate) fn component(s: &str) -> String {
    let c: String = s
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    if c.is_empty() || c == "." || c == ".." {
        format!("_{c}")
    } else {
        c
    }
}

/// Each snapshot's time name: seconds in UTC, `-<short id>` appended to all
/// that share a second; a time that does not parse is shown as it is (made
/// a safe component) with its short id. No name is `latest`.
fn time_names(snaps: &[(Id, Snapshot)], times: &[Option<SystemTime>]) -> Vec<String> {
    let base: Vec<String> = snaps
        .iter()
        .zip(times)
        .map(|((id, s), t)| match t {
            Some(t) => humantime::format_rfc3339_seconds(*t).to_string(),
            None => format!("{}-{}", component(&s.time), id.short()),
        })
        .collect();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for b in &base {
        *count.entry(b).or_default() += 1;
    }
    let ids = id_names(snaps);
    base.iter()
        .enumerate()
        .map(|(i, b)| {
            if count[b.as_str()] > 1 || b == LATEST {
                format!("{b}-{}", ids[i])
            } else {
                b.clone()
            }
        })
        .collect()
}

/// Each snapshot's short id; the full id where two share a short one.
fn id_names(snaps: &[(Id, Snapshot)]) -> Vec<String> {
    let mut count: HashMap<String, usize> = HashMap::new();
    for (id, _) in snaps {
        *count.entry(id.short()).or_default() += 1;
    }
    snaps
        .iter()
        .map(|(id, _)| {
            let s = id.short();
            if count[&s] > 1 { id.to_hex() } else { s }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: u8, time: &str, host: &str, tags: &[&str]) -> (Id, Snapshot) {
        let mut b = [0u8; 32];
        b[0] = id;
        let s = Snapshot {
            time: time.into(),
            tree: Id::default(),
            paths: vec!["/src".into()],
            hostname: host.into(),
            username: "u".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            parent: None,
            program_version: "test".into(),
            job: None,
            original: None,
            summary: None,
        };
        (Id::from_bytes(b), s)
    }

    fn dir<'a>(l: &'a Layout, path: &[&str]) -> &'a VDir {
        let mut d = &l.dirs[ROOT];
        for p in path {
            match d.find(p.as_bytes()).map(|(_, e)| e) {
                Some(VEntry::Dir(i)) => d = &l.dirs[*i],
                other => panic!("{p}: {other:?}"),
            }
        }
        d
    }

    fn names(d: &VDir) -> Vec<&str> {
        d.entries.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn layout_names_groups_and_latest() {
        let l = Layout::new(vec![
            snap(3, "2026-01-31T15:00:00.500000000Z", "beta", &[]),
            snap(
                1,
                "2026-01-31T14:00:00.000000000Z",
                "alpha",
                &["daily", "x", "x"],
            ),
            snap(
                2,
                "2026-01-31T15:00:00.000000000Z",
                "beta",
                &["weekly", "x"],
            ),
            snap(4, "2999-01-01T00:00:00Z", "a/b", &[".."]),
        ]);
        assert_eq!(names(&l.dirs[ROOT]), ["hosts", "ids", "snapshots", "tags"]);
        assert_eq!(
            names(dir(&l, &["ids"])),
            ["01000000", "02000000", "03000000", "04000000"]
        );
        let t2 = "2026-01-31T15:00:00Z-02000000";
        let t3 = "2026-01-31T15:00:00Z-03000000";
        assert_eq!(
            names(dir(&l, &["snapshots"])),
            [
                "2026-01-31T14:00:00Z",
                t2,
                t3,
                "2999-01-01T00:00:00Z",
                "latest"
            ]
        );
        // The future snapshot is listed, but is not `latest`.
        let latest = |d: &VDir| match d.find(b"latest").map(|(_, e)| e) {
            Some(VEntry::Latest { target, .. }) => target.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(latest(dir(&l, &["snapshots"])), t3);
        assert_eq!(names(dir(&l, &["hosts"])), ["a_b", "alpha", "beta"]);
        assert_eq!(names(dir(&l, &["hosts", "beta"])), [t2, t3, "latest"]);
        assert_eq!(latest(dir(&l, &["hosts", "alpha"])), "2026-01-31T14:00:00Z");
        assert!(dir(&l, &["hosts", "a_b"]).find(b"latest").is_none());
        assert_eq!(names(dir(&l, &["tags"])), ["_..", "daily", "weekly", "x"]);
        assert_eq!(
            names(dir(&l, &["tags", "x"])),
            ["2026-01-31T14:00:00Z", t2, "latest"]
        );
        assert_eq!(latest(dir(&l, &["tags", "x"])), t2);
    }

    #[test]
    fn unparseable_time_and_empty_host_are_safe_names() {
        let l = Layout::new(vec![snap(9, "../../etc", "", &[""])]);
        assert_eq!(names(dir(&l, &["snapshots"])), [".._.._etc-09000000"]);
        assert_eq!(names(dir(&l, &["hosts"])), ["_"]);
        assert_eq!(names(dir(&l, &["tags"])), ["_"]);
    }

    #[test]
    fn shared_short_ids_use_full_ids() {
        let mut a = snap(1, "2026-01-01T00:00:00Z", "h", &[]);
        let mut b = snap(1, "2026-01-02T00:00:00Z", "h", &[]);
        a.0 = Id::from_bytes([1; 32]);
        let mut x = [1u8; 32];
        x[31] = 2;
        b.0 = Id::from_bytes(x);
        let l = Layout::new(vec![a.clone(), b.clone()]);
        assert_eq!(names(dir(&l, &["ids"])), [a.0.to_hex(), b.0.to_hex()]);
    }
}
