//! Trust: one bad object never stops the next backup, and nothing dated in
//! the future or planted wins.

use crate::common::{Env, no_panic, objects};
use baton_testing::write_file;

fn snapshot_ids(env: &Env) -> Vec<String> {
    let v = env.run(&["snapshots", "--json"]).json();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// One byte flipped in one snapshot file: `snapshots` names it and lists
/// the rest, `ls`, `backup` and `forget` go on, and `forget ID` removes it.
#[test]
fn a_damaged_snapshot_never_stops_the_next_backup() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("a"), 10_000, 1).unwrap();
    env.backup(&[&src], &[]);
    write_file(&src.join("b"), 10_000, 2).unwrap();
    env.backup(&[&src], &[]);
    let ids = snapshot_ids(&env);
    assert_eq!(ids.len(), 2);
    let damaged = objects(&env.repo, "snapshots")
        .into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy() == ids[1])
        .unwrap();
    let mut b = std::fs::read(&damaged).unwrap();
    b[40] ^= 0x01;
    std::fs::write(&damaged, b).unwrap();

    let r = env.run(&["snapshots"]);
    no_panic(&r);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains(&ids[1]), "{}", r.stderr);
    assert!(r.stdout.contains(&ids[0][..8]), "{}", r.stdout);
    env.run(&["ls", "latest"]).ok();
    // The next backup works (its parent is the readable snapshot).
    write_file(&src.join("c"), 10_000, 3).unwrap();
    env.backup(&[&src], &[]);
    let r = env.run(&["forget", "--keep-last", "5"]);
    no_panic(&r);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Prune refuses while a snapshot cannot be read, saying what to do.
    let r = env.run(&["prune"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("baton forget"), "{}", r.stderr);
    // Forgotten by id without being read.
    env.run(&["forget", &ids[1][..8]]).ok();
    let r = env.run(&["snapshots"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!damaged.exists());
    env.run(&["prune"]).ok();
    env.run(&["check", "--read-data"]).ok();
}

/// A snapshot dated in the future is never `latest`, never a parent, and
/// never takes a policy's place: `forget --keep-last 1` keeps the real
/// newest snapshot.
#[test]
fn a_snapshot_dated_in_the_future_never_wins() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("a"), 10_000, 1).unwrap();
    let first = env.backup(&[&src], &[]);
    let future = env.backup(&[&src], &["--time", "2099-01-01T00:00:00Z"]);
    write_file(&src.join("b"), 10_000, 2).unwrap();
    let third = env.backup(&[&src], &[]);
    // Its parent is the first, not the future one.
    assert_eq!(third["parent"], first["snapshot_id"], "{third}");
    let latest: serde_json::Value =
        serde_json::from_str(&env.run(&["cat", "snapshot", "latest"]).ok().stdout).unwrap();
    assert_eq!(latest["tree"], third["tree_id"]);
    let r = env.run(&["forget", "--keep-last", "1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("future"), "{}", r.stderr);
    let left = snapshot_ids(&env);
    let id = |v: &serde_json::Value| v["snapshot_id"].as_str().unwrap().to_string();
    assert!(left.contains(&id(&third)), "{left:?}");
    assert!(left.contains(&id(&future)), "{left:?}");
    assert!(!left.contains(&id(&first)), "{left:?}");
}
