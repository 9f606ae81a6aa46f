//! `baton forget`: each keep rule on snapshots at chosen times (hidden
//! `backup --time`), grouping, explicit ids, refusals, dry runs, `--prune`.

use crate::common::*;
use crate::prune::{assert_restores, listing};
use baton_testing::write_file;
use std::collections::BTreeMap;
use std::path::Path;

/// Snapshot times (UTC). 2024-01-07 is a Sunday (ISO week 1) and 2024-01-08
/// a Monday (week 2); 2025-06-01 holds three snapshots in two hours.
const TIMES: [&str; 10] = [
    "2024-01-01T10:00:00Z",
    "2024-01-01T15:00:00Z",
    "2024-01-02T09:00:00Z",
    "2024-01-07T12:00:00Z",
    "2024-01-08T12:00:00Z",
    "2024-02-10T12:00:00Z",
    "2024-03-05T12:00:00Z",
    "2025-06-01T12:00:00Z",
    "2025-06-01T12:30:00Z",
    "2025-06-01T13:10:00Z",
];

fn snap_at(env: &Env, src: &Path, time: &str, extra: &[&str]) -> String {
    let mut args = vec!["--time", time];
    args.extend_from_slice(extra);
    env.backup(&[src], &args)["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `forget --json ARGS`: the plan, asserting exit 0.
fn forget_json(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["forget", "--json"];
    all.extend_from_slice(args);
    let r = env.run(&all).ok();
    let v: serde_json::Value = serde_json::from_str(r.stdout.lines().next().unwrap()).unwrap();
    v["groups"].clone()
}

/// Kept snapshots of host `h1`: time (to the second) -> reasons.
fn kept(plan: &serde_json::Value) -> Kept {
    let mut out = BTreeMap::new();
    for g in plan.as_array().unwrap() {
        if g["group"]["hostname"] != "h1" {
            continue;
        }
        for k in g["keep"].as_array().unwrap() {
            let reasons = k["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect();
            out.insert(k["time"].as_str().unwrap()[..19].to_string(), reasons);
        }
    }
    out
}

/// Kept snapshots: time -> reasons.
type Kept = BTreeMap<String, Vec<String>>;

fn expect(entries: &[(&str, &[&str])]) -> Kept {
    entries
        .iter()
        .map(|(t, r)| (t.to_string(), r.iter().map(|s| s.to_string()).collect()))
        .collect()
}

fn snapshot_count(env: &Env) -> usize {
    env.run(&["snapshots", "--json"]).ok().json()["snapshots"]
        .clone()
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn each_keep_rule_on_snapshots_at_chosen_times() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("f"), 10_000, 1).unwrap();
    for t in TIMES {
        let tag: &[&str] = if t.starts_with("2024-01-02") {
            &["--tag", "keepme"]
        } else {
            &[]
        };
        let mut extra = vec!["--host", "h1"];
        extra.extend_from_slice(tag);
        snap_at(&env, &src, t, &extra);
    }
    let before = listing(&env.repo);
    let d = "--dry-run";
    let last = &["last snapshot"][..];
    let cases: Vec<(Vec<&str>, Kept)> = vec![
        (
            vec!["--keep-last", "3"],
            expect(&[
                ("2025-06-01T12:00:00", last),
                ("2025-06-01T12:30:00", last),
                ("2025-06-01T13:10:00", last),
            ]),
        ),
        (
            vec!["--keep-hourly", "2"],
            expect(&[
                ("2025-06-01T12:30:00", &["hourly snapshot"]),
                ("2025-06-01T13:10:00", &["hourly snapshot"]),
            ]),
        ),
        (
            vec!["--keep-daily", "3"],
            expect(&[
                ("2024-02-10T12:00:00", &["daily snapshot"]),
                ("2024-03-05T12:00:00", &["daily snapshot"]),
                ("2025-06-01T13:10:00", &["daily snapshot"]),
            ]),
        ),
        (
            // A Sunday and the next Monday are in different ISO weeks.
            vec!["--keep-weekly", "5"],
            expect(&[
                ("2024-01-07T12:00:00", &["weekly snapshot"]),
                ("2024-01-08T12:00:00", &["weekly snapshot"]),
                ("2024-02-10T12:00:00", &["weekly snapshot"]),
                ("2024-03-05T12:00:00", &["weekly snapshot"]),
                ("2025-06-01T13:10:00", &["weekly snapshot"]),
            ]),
        ),
        (
            vec!["--keep-monthly", "4"],
            expect(&[
                ("2024-01-08T12:00:00", &["monthly snapshot"]),
                ("2024-02-10T12:00:00", &["monthly snapshot"]),
                ("2024-03-05T12:00:00", &["monthly snapshot"]),
                ("2025-06-01T13:10:00", &["monthly snapshot"]),
            ]),
        ),
        (
            vec!["--keep-yearly", "5"],
            expect(&[
                ("2024-03-05T12:00:00", &["yearly snapshot"]),
                ("2025-06-01T13:10:00", &["yearly snapshot"]),
            ]),
        ),
        (
            vec!["--keep-within", "1h"],
            expect(&[
                ("2025-06-01T12:30:00", &["within 1h"]),
                ("2025-06-01T13:10:00", &["within 1h"]),
            ]),
        ),
        (
            // 1 year 4 months before 2025-06-01T13:10 is 2024-02-01T13:10.
            vec!["--keep-within", "1y4m"],
            expect(&[
                ("2024-02-10T12:00:00", &["within 1y4m"]),
                ("2024-03-05T12:00:00", &["within 1y4m"]),
                ("2025-06-01T12:00:00", &["within 1y4m"]),
                ("2025-06-01T12:30:00", &["within 1y4m"]),
                ("2025-06-01T13:10:00", &["within 1y4m"]),
            ]),
        ),
        (
            vec!["--keep-tag", "keepme"],
            expect(&[("2024-01-02T09:00:00", &["tag keepme"])]),
        ),
        (
            vec![
                "--keep-last",
                "1",
                "--keep-daily",
                "2",
                "--keep-tag",
                "keepme",
            ],
            expect(&[
                ("2024-01-02T09:00:00", &["tag keepme"]),
                ("2024-03-05T12:00:00", &["daily snapshot"]),
                ("2025-06-01T13:10:00", &["last snapshot", "daily snapshot"]),
            ]),
        ),
    ];
    for (args, want) in cases {
        let mut a = args.clone();
        a.push(d);
        let plan = forget_json(&env, &a);
        assert_eq!(kept(&plan), want, "{args:?}");
        let g = &plan.as_array().unwrap()[0];
        let n = g["keep"].as_array().unwrap().len() + g["remove"].as_array().unwrap().len();
        assert_eq!(n, TIMES.len(), "{args:?}: every snapshot is listed once");
    }
    // The human output names the reasons and the removals.
    let human = env
        .run(&["forget", "--keep-last", "1", "--keep-daily", "2", d])
        .ok()
        .stdout;
    assert!(human.contains("last snapshot, daily snapshot"), "{human}");
    assert!(human.contains("remove 8 snapshots"), "{human}");
    assert!(human.contains("dry run: would remove 8"), "{human}");
    assert_eq!(
        listing(&env.repo),
        before,
        "dry runs changed the repository"
    );
    assert_eq!(snapshot_count(&env), TIMES.len());

    // Groups: another host is a group of its own, unless grouping is off.
    snap_at(&env, &src, "2024-06-01T00:00:00Z", &["--host", "h2"]);
    snap_at(&env, &src, "2024-06-02T00:00:00Z", &["--host", "h2"]);
    let plan = forget_json(&env, &["--keep-last", "1", d]);
    let groups = plan.as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert!(groups[0]["group"].get("paths").is_some());
    assert!(groups[0]["group"].get("tags").is_none());
    let plan = forget_json(&env, &["--keep-last", "1", "--group-by", "", d]);
    let groups = plan.as_array().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["group"], serde_json::json!({}));
    assert_eq!(groups[0]["keep"].as_array().unwrap().len(), 1);
    let plan = forget_json(&env, &["--keep-last", "1", "--group-by", "host", d]);
    assert_eq!(plan[1]["group"], serde_json::json!({"hostname": "h2"}));

    // For real: two per group stay.
    let plan = forget_json(&env, &["--keep-last", "2"]);
    let removed: usize = plan
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["remove"].as_array().unwrap().len())
        .sum();
    assert_eq!(removed, TIMES.len() - 2);
    assert_eq!(snapshot_count(&env), 4);
    assert!(objects(&env.repo, "locks").is_empty());
}

#[test]
fn refusals_ids_and_forget_with_prune() {
    let env = Env::new();
    let v1 = env.path("v1");
    let v2 = env.path("v2");
    write_file(&v1.join("a"), 4 << 20, 1).unwrap();
    write_file(&v2.join("b"), 4 << 20, 2).unwrap();
    let s1 = snap_at(&env, &v1, "2024-01-01T00:00:00Z", &[]);
    let s2 = snap_at(&env, &v2, "2024-01-02T00:00:00Z", &[]);
    let s3 = snap_at(&env, &v2, "2024-01-03T00:00:00Z", &[]);

    let r = env.run(&["forget"]);
    assert_eq!(r.code, 2, "a usage error: {}", r.stderr);
    assert!(
        r.stderr.contains("refusing to delete all snapshots"),
        "{}",
        r.stderr
    );
    let r = env.run(&["forget", "--keep-last", "1", &s1[..8]]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not both"), "{}", r.stderr);
    for bad in [
        &["forget", "--keep-within", "2x"][..],
        &["forget", "--keep-last", "1", "--group-by", "user"],
        &[
            "forget",
            "--keep-last",
            "1",
            "--prune",
            "--max-unused",
            "5 parsecs",
        ],
    ] {
        let r = env.run(bad);
        assert_eq!(r.code, 2, "usage errors exit 2: {bad:?}: {}", r.stderr);
    }
    assert_eq!(snapshot_count(&env), 3, "refusals removed nothing");

    // Explicit ids (prefixes) remove exactly those.
    let plan = forget_json(&env, &[&s3[..10]]);
    assert_eq!(plan[0]["remove"][0]["id"], s3.as_str());
    assert_eq!(snapshot_count(&env), 2);

    // --prune: v1's data goes; the rest restores.
    let before = du(&env.repo);
    let r = env
        .run(&[
            "forget",
            "--keep-last",
            "1",
            "--group-by",
            "",
            "--prune",
            "--json",
        ])
        .ok();
    let forget: serde_json::Value = serde_json::from_str(r.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(forget["groups"][0]["remove"][0]["id"], s1.as_str());
    let prune = r.json();
    assert_eq!(prune["message_type"], "prune");
    assert_eq!(prune["snapshots"], 1);
    let freed = before - du(&env.repo);
    assert!(
        (4 << 20..5 << 20).contains(&freed),
        "freed {freed} bytes; v1 held 4 MiB: {prune}"
    );
    assert_restores(&env, &s2, &v2);
    assert!(objects(&env.repo, "locks").is_empty());
}

#[test]
fn help_lists_forget_and_prune() {
    let env = Env::empty();
    let top = env.run(&["--help"]).ok().stdout;
    assert!(top.contains("forget") && top.contains("prune"), "{top}");
    let h = env.run(&["forget", "--help"]).ok().stdout;
    for o in [
        "--keep-last",
        "--keep-hourly",
        "--keep-daily",
        "--keep-weekly",
        "--keep-monthly",
        "--keep-yearly",
        "--keep-within",
        "--keep-tag",
        "--group-by",
        "--dry-run",
        "--prune",
        "--max-unused",
    ] {
        assert!(h.contains(o), "forget --help lacks {o}:\n{h}");
    }
    let h = env.run(&["prune", "--help"]).ok().stdout;
    for o in ["--dry-run", "--max-unused", "--max-job-age"] {
        assert!(h.contains(o), "prune --help lacks {o}:\n{h}");
    }
    let b = env.run(&["backup", "--help"]).ok().stdout;
    assert!(b.contains("--time"), "--time is documented");
    assert!(b.contains("--with-atime"), "{b}");
}
