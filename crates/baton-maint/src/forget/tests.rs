//! Properties of the retention policy.

use super::*;
use proptest::prelude::*;
use std::time::{Duration, UNIX_EPOCH};

/// 2020-01-01T00:00:00Z.
const BASE: i64 = 1_577_836_800;

fn snapshot(secs: i64, host: u8, tags: &[&str]) -> Snapshot {
    let t = UNIX_EPOCH + Duration::from_secs(secs as u64);
    Snapshot {
        time: humantime::format_rfc3339_nanos(t).to_string(),
        tree: Id::default(),
        paths: vec![format!("/data{}", host % 2)],
        hostname: format!("host{host}"),
        username: "u".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        parent: None,
        program_version: "test".into(),
        job: None,
        original: None,
        summary: None,
    }
}

/// (offset seconds, host, tag bits) -> snapshots with distinct ids.
fn build(spec: &[(i64, u8, u8)]) -> Vec<(Id, Snapshot)> {
    spec.iter()
        .enumerate()
        .map(|(i, &(off, host, bits))| {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let tags: Vec<&str> = [(1, "a"), (2, "b")]
                .iter()
                .filter(|(bit, _)| bits & bit != 0)
                .map(|(_, t)| *t)
                .collect();
            (Id::from_bytes(b), snapshot(BASE + off, host, &tags))
        })
        .collect()
}

/// Times dense within a week (minutes apart) or spread over five years.
fn specs() -> impl Strategy<Value = Vec<(i64, u8, u8)>> {
    let dense = (0i64..7 * 24 * 60).prop_map(|m| m * 60);
    let sparse = (0i64..5 * 365 * 24).prop_map(|h| h * 3600 + 17);
    let time = prop_oneof![dense, sparse];
    proptest::collection::vec((time, 0u8..3, 0u8..4), 0..40)
}

fn policy() -> impl Strategy<Value = KeepPolicy> {
    (
        (0u32..4, 0u32..4, 0u32..4, 0u32..4, 0u32..4, 0u32..4),
        proptest::option::of((0u32..10, 0u32..48)),
        any::<bool>(),
    )
        .prop_map(
            |((last, hourly, daily, weekly, monthly, yearly), within, tag)| KeepPolicy {
                last,
                hourly,
                daily,
                weekly,
                monthly,
                yearly,
                within: within
                    .filter(|(d, h)| d + h > 0)
                    .map(|(days, hours)| Within {
                        days,
                        hours,
                        ..Within::default()
                    }),
                tags: if tag { vec![vec!["a".into()]] } else { vec![] },
            },
        )
}

fn key(e: &ForgetEntry, snaps: &[(Id, Snapshot)]) -> (SnapTime, Id) {
    let s = &snaps.iter().find(|(id, _)| *id == e.id).unwrap().1;
    (SnapTime::parse(&s.time).unwrap(), e.id)
}

/// The period of a time as text (an oracle independent of the calendar code).
fn period(reason: &KeepReason, time: &str) -> String {
    match reason {
        KeepReason::Hourly => time[..13].to_string(),
        KeepReason::Daily => time[..10].to_string(),
        KeepReason::Monthly => time[..7].to_string(),
        KeepReason::Yearly => time[..4].to_string(),
        KeepReason::Weekly => {
            // The Monday of the week, found by stepping back day by day.
            let mut t = humantime::parse_rfc3339(time).unwrap();
            loop {
                let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
                if calendar::weekday(secs.div_euclid(86_400)) == 0 {
                    return humantime::format_rfc3339_seconds(t).to_string()[..10].to_string();
                }
                t -= Duration::from_secs(86_400);
            }
        }
        _ => unreachable!(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn keep_last_keeps_the_newest_n_of_each_group(spec in specs(), n in 1u32..6) {
        let snaps = build(&spec);
        let p = KeepPolicy { last: n, ..KeepPolicy::default() };
        let groups = plan_forget(&snaps, &p, GroupBy::default(), &[]).unwrap();
        for g in &groups {
            let size = g.keep.len() + g.remove.len();
            prop_assert_eq!(g.keep.len(), (n as usize).min(size));
            for k in &g.keep {
                prop_assert_eq!(&k.reasons, &vec![KeepReason::Last]);
                for r in &g.remove {
                    prop_assert!(key(k, &snaps) > key(r, &snaps));
                }
            }
        }
    }

    #[test]
    fn every_snapshot_is_decided_once_and_kept_ones_have_reasons(spec in specs(), p in policy(), by in 0u8..8) {
        prop_assume!(!p.is_empty());
        let snaps = build(&spec);
        let group_by = GroupBy { host: by & 1 != 0, paths: by & 2 != 0, tags: by & 4 != 0 };
        let groups = plan_forget(&snaps, &p, group_by, &[]).unwrap();
        let mut seen = Vec::new();
        let only_tags = KeepPolicy { tags: vec![], ..p.clone() }.is_empty();
        for g in &groups {
            // Any rule but keep-tag keeps at least the newest snapshot of a group.
            prop_assert!(only_tags || !g.keep.is_empty());
            for k in &g.keep {
                prop_assert!(!k.reasons.is_empty());
                seen.push(k.id);
            }
            for r in &g.remove {
                prop_assert!(r.reasons.is_empty());
                seen.push(r.id);
            }
            // Every member shares the group's key.
            for e in g.keep.iter().chain(&g.remove) {
                let s = &snaps.iter().find(|(id, _)| *id == e.id).unwrap().1;
                prop_assert_eq!(&GroupKey::of(group_by, s), &g.key);
            }
        }
        seen.sort();
        let mut all: Vec<Id> = snaps.iter().map(|(id, _)| *id).collect();
        all.sort();
        prop_assert_eq!(seen, all);
    }

    #[test]
    fn bucket_rules_keep_the_newest_snapshot_of_the_newest_periods(spec in specs(), n in 1u32..5, which in 0usize..5) {
        let snaps = build(&spec);
        let reason = [KeepReason::Hourly, KeepReason::Daily, KeepReason::Weekly, KeepReason::Monthly, KeepReason::Yearly][which].clone();
        let mut p = KeepPolicy::default();
        *[&mut p.hourly, &mut p.daily, &mut p.weekly, &mut p.monthly, &mut p.yearly][which] = n;
        for g in plan_forget(&snaps, &p, GroupBy::default(), &[]).unwrap() {
            let members: Vec<&ForgetEntry> = g.keep.iter().chain(&g.remove).collect();
            let mut periods: Vec<String> = members.iter().map(|e| period(&reason, &e.time)).collect();
            periods.sort();
            periods.dedup();
            let newest_periods: Vec<&String> = periods.iter().rev().take(n as usize).collect();
            prop_assert_eq!(g.keep.len(), newest_periods.len());
            for k in &g.keep {
                prop_assert_eq!(&k.reasons, &vec![reason.clone()]);
                let kp = period(&reason, &k.time);
                prop_assert!(newest_periods.contains(&&kp));
                // Newest of its period in the group.
                for e in &members {
                    if period(&reason, &e.time) == kp {
                        prop_assert!(key(k, &snaps) >= key(e, &snaps));
                    }
                }
            }
        }
    }

    #[test]
    fn keep_within_keeps_exactly_the_recent_snapshots(spec in specs(), days in 0u32..20, hours in 0u32..30) {
        prop_assume!(days + hours > 0);
        let snaps = build(&spec);
        let w = Within { days, hours, ..Within::default() };
        let p = KeepPolicy { within: Some(w), ..KeepPolicy::default() };
        for g in plan_forget(&snaps, &p, GroupBy::default(), &[]).unwrap() {
            let newest = g.keep.iter().chain(&g.remove).map(|e| key(e, &snaps).0).max().unwrap();
            let limit = newest.secs - i64::from(days) * 86_400 - i64::from(hours) * 3600;
            for k in &g.keep {
                prop_assert!(key(k, &snaps).0.secs >= limit);
                prop_assert_eq!(&k.reasons, &vec![KeepReason::Within(w)]);
            }
            for r in &g.remove {
                prop_assert!(key(r, &snaps).0.secs < limit);
            }
        }
    }

    #[test]
    fn keep_tag_keeps_exactly_the_tagged(spec in specs()) {
        let snaps = build(&spec);
        let p = KeepPolicy { tags: vec![vec!["a".into(), "b".into()]], ..KeepPolicy::default() };
        for g in plan_forget(&snaps, &p, GroupBy::default(), &[]).unwrap() {
            for e in g.keep.iter().chain(&g.remove) {
                let s = &snaps.iter().find(|(id, _)| *id == e.id).unwrap().1;
                let tagged = s.tags.contains(&"a".into()) && s.tags.contains(&"b".into());
                prop_assert_eq!(!e.reasons.is_empty(), tagged);
            }
        }
    }

    #[test]
    fn larger_counts_never_keep_less(spec in specs(), p in policy(), which in 0usize..6, extra in 1u32..4) {
        prop_assume!(!p.is_empty());
        let snaps = build(&spec);
        let mut q = p.clone();
        *[&mut q.last, &mut q.hourly, &mut q.daily, &mut q.weekly, &mut q.monthly, &mut q.yearly][which] += extra;
        let kept = |p: &KeepPolicy| -> HashSet<Id> {
            plan_forget(&snaps, p, GroupBy::default(), &[]).unwrap()
                .iter().flat_map(|g| g.keep.iter().map(|e| e.id)).collect()
        };
        prop_assert!(kept(&p).is_subset(&kept(&q)));
    }

    #[test]
    fn without_rules_or_ids_it_refuses(spec in specs(), by in 0u8..8) {
        let snaps = build(&spec);
        let group_by = GroupBy { host: by & 1 != 0, paths: by & 2 != 0, tags: by & 4 != 0 };
        let err = plan_forget(&snaps, &KeepPolicy::default(), group_by, &[]).unwrap_err();
        prop_assert!(err.to_string().contains("refusing to delete all snapshots"), "{}", err);
        // An empty tag list is no rule either.
        let p = KeepPolicy { tags: vec![vec![]], ..KeepPolicy::default() };
        prop_assert!(plan_forget(&snaps, &p, group_by, &[]).is_err());
    }

    #[test]
    fn explicit_ids_remove_exactly_those(spec in specs(), pick in proptest::collection::vec(any::<bool>(), 40)) {
        let snaps = build(&spec);
        let ids: Vec<Id> = snaps.iter().zip(&pick).filter(|(_, p)| **p).map(|((id, _), _)| *id).collect();
        prop_assume!(!ids.is_empty());
        let groups = plan_forget(&snaps, &KeepPolicy::default(), GroupBy::default(), &ids).unwrap();
        let mut removed: Vec<Id> = groups.iter().flat_map(|g| g.remove.iter().map(|e| e.id)).collect();
        prop_assert!(groups.iter().all(|g| g.keep.is_empty()));
        removed.sort();
        let mut want = ids.clone();
        want.sort();
        prop_assert_eq!(removed, want);
        let p = KeepPolicy { last: 1, ..KeepPolicy::default() };
        prop_assert!(plan_forget(&snaps, &p, GroupBy::default(), &ids).is_err(), "ids and rules together are refused");
    }
}

#[test]
fn reasons_read_well_and_group_by_parses() {
    let w = Within::parse("1w3d").unwrap();
    assert_eq!(KeepReason::Within(w).to_string(), "within 1w3d");
    assert_eq!(KeepReason::Daily.to_string(), "daily snapshot");
    assert_eq!(KeepReason::Tag(vec!["x".into()]).to_string(), "tag x");
    assert_eq!(GroupBy::parse("host,paths").unwrap(), GroupBy::default());
    let none = GroupBy::parse("").unwrap();
    assert!(!none.host && !none.paths && !none.tags);
    assert!(GroupBy::parse("tags").unwrap().tags);
    assert!(GroupBy::parse("hosts").is_err());
}

#[test]
fn several_rules_give_several_reasons() {
    // One snapshot per day at noon for ten days.
    let spec: Vec<(i64, u8, u8)> = (0..10).map(|d| (d * 86_400 + 43_200, 0, 0)).collect();
    let snaps = build(&spec);
    let p = KeepPolicy {
        last: 2,
        daily: 3,
        within: Some(Within::parse("4d").unwrap()),
        ..KeepPolicy::default()
    };
    let groups = plan_forget(&snaps, &p, GroupBy::default(), &[]).unwrap();
    assert_eq!(groups.len(), 1);
    let g = &groups[0];
    let reasons: Vec<String> = g
        .keep
        .iter()
        .map(|e| {
            e.reasons
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "last snapshot, daily snapshot, within 4d",
            "last snapshot, daily snapshot, within 4d",
            "daily snapshot, within 4d",
            "within 4d",
            "within 4d",
        ]
    );
    assert_eq!(g.remove.len(), 5);
}
