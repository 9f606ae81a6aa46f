//! `baton repair index` and `baton repair snapshots` bring a damaged
//! repository back to one that checks clean and restores what survived.

use crate::check::{packs_by_type, two_snapshots};
use crate::common::*;
use baton_testing::{CompareOptions, compare_trees};
use serde_json::Value;
use std::path::Path;

fn check_code(env: &Env, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["check", "--json"];
    args.extend_from_slice(extra);
    let r = env.run(&args);
    assert_ne!(r.code, 101, "{}", r.stderr);
    (r.code, r.json())
}

fn same_file(restored_root: &Path, src: &Path, f: &str) {
    let restored = restored_root.join(src.strip_prefix("/").unwrap()).join(f);
    assert_eq!(
        std::fs::read(&restored).unwrap_or_else(|e| panic!("{}: {e}", restored.display())),
        std::fs::read(src.join(f)).unwrap(),
        "{}",
        restored.display()
    );
}

#[test]
fn repair_index_after_losing_every_index_object() {
    let env = Env::new();
    let (src, [first, _]) = two_snapshots(&env);
    let packs = objects(&env.repo, "data").len() as u64;
    for idx in objects(&env.repo, "index") {
        crate::common::obj_remove(&idx);
    }
    let (code, j) = check_code(&env, &[]);
    assert_eq!(code, 1, "{j}");
    let r = env.run(&["repair", "index", "--json"]).ok().json();
    assert_eq!(r["packs_indexed"], packs, "{r}");
    assert!(r["new_index"].is_string());
    assert_eq!(objects(&env.repo, "index").len(), 1);
    let (code, j) = check_code(&env, &["--read-data"]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["warning_count"], 0, "{j}");
    let t = env.path("t");
    env.restore("latest", &t, &["--verify"]).ok();
    let opts = CompareOptions {
        ownership: false,
        ..CompareOptions::default()
    };
    compare_trees(&src, &t.join(src.strip_prefix("/").unwrap()), &opts)
        .unwrap_or_else(|d| panic!("{}", d.join("\n")));
    let t1 = env.path("t1");
    env.restore(&first, &t1, &[]).ok();
    same_file(&t1, &src, "a");
}

/// A damaged index object is superseded by the rebuilt one and deleted;
/// until then readers skip it.
#[test]
fn repair_index_replaces_a_damaged_index_object() {
    let env = Env::new();
    let (src, _) = two_snapshots(&env);
    let victim = objects(&env.repo, "index").pop().unwrap();
    let mut b = crate::common::obj_read(&victim);
    b[50] ^= 1;
    crate::common::obj_write(&victim, &b);
    assert_eq!(env.run(&["ls", "latest"]).code, 1, "the damage is real");
    let r = env.run(&["repair", "index", "--json"]).ok().json();
    assert_eq!(r["removed"].as_array().unwrap().len(), 2, "{r}");
    assert!(!crate::common::obj_exists(&victim));
    // A crash before the old objects were deleted leaves them; put the
    // damaged one back: it is superseded, so it is skipped.
    crate::common::obj_write(&victim, &b);
    env.run(&["ls", "latest"]).ok();
    let (code, j) = check_code(&env, &["--read-data"]);
    assert_eq!(code, 0, "{j}");
    assert!(
        j["problems"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["severity"] == "warning"
                && p["message"].as_str().unwrap().contains("superseded")),
        "{j}"
    );
    // Running it again cleans up.
    env.run(&["repair", "index"]).ok();
    let (code, j) = check_code(&env, &[]);
    assert_eq!((code, j["warning_count"].as_u64()), (0, Some(0)), "{j}");
    let t = env.path("t");
    env.restore("latest", &t, &[]).ok();
    same_file(&t, &src, "b");
}

#[test]
fn repair_snapshots_after_losing_a_data_pack() {
    if crate::common::local_only("needs the packs in backup order (file times)") {
        return;
    }
    let env = Env::new();
    let (src, [first, second]) = two_snapshots(&env);
    let (data, _) = packs_by_type(&env);
    crate::common::obj_remove(&data[1]); // b's content
    let (code, _) = check_code(&env, &[]);
    assert_eq!(code, 1);

    // Without --forget the damaged snapshot stays; its copy lacks b.
    let r = env.run(&["repair", "snapshots", "--json"]).ok().json();
    let repaired = r["repaired"].as_array().unwrap();
    assert_eq!(repaired.len(), 1, "{r}");
    assert_eq!(repaired[0]["original"], second.as_str());
    let b = src.join("b").to_string_lossy().into_owned();
    assert_eq!(repaired[0]["removed"][0]["path"], b.as_str(), "{r}");
    assert_eq!(repaired[0]["removed"].as_array().unwrap().len(), 1);
    let new_id = repaired[0]["repaired"].as_str().unwrap().to_string();
    let snap: Value =
        serde_json::from_str(&env.run(&["cat", "snapshot", &new_id]).ok().stdout).unwrap();
    assert_eq!(snap["original"], second.as_str());
    assert_eq!(snap["tags"], serde_json::json!(["repaired"]));
    assert_eq!(objects(&env.repo, "snapshots").len(), 3);
    // Repairing again reuses that copy.
    let again = env.run(&["repair", "snapshots", "--json"]).ok().json();
    assert_eq!(again["repaired"][0]["repaired"], new_id.as_str());
    assert_eq!(objects(&env.repo, "snapshots").len(), 3);

    // The index still names the lost pack: rebuild it, then drop the original.
    env.run(&["repair", "index"]).ok();
    let r = env
        .run(&["repair", "snapshots", "--forget", "--json"])
        .ok()
        .json();
    assert_eq!(r["repaired"][0]["forgotten"], true, "{r}");
    let (code, j) = check_code(&env, &["--read-data"]);
    assert_eq!(code, 0, "{j}");
    let ids: Vec<String> = objects(&env.repo, "snapshots")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&first) && ids.contains(&new_id), "{ids:?}");

    let t = env.path("t");
    env.restore(&new_id, &t, &["--verify"]).ok();
    same_file(&t, &src, "a");
    same_file(&t, &src, "sub/c");
    assert!(!t.join(src.strip_prefix("/").unwrap()).join("b").exists());
}

/// A lost tree empties its directory; damaged (not missing) content is
/// found with --read-data.
#[test]
fn repair_snapshots_empties_lost_directories_and_reads_data() {
    if crate::common::local_only("needs the packs in backup order (file times)") {
        return;
    }
    let env = Env::new();
    let (src, [_, second]) = two_snapshots(&env);
    let (data, _) = packs_by_type(&env);
    let mut bytes = std::fs::read(&data[1]).unwrap();
    bytes[100] ^= 0x55; // inside b's only chunk
    std::fs::write(&data[1], bytes).unwrap();
    // The index is intact, so without reading data nothing looks lost.
    let r = env.run(&["repair", "snapshots", "--json"]).ok().json();
    assert_eq!(r["repaired"].as_array().unwrap().len(), 0, "{r}");
    let r = env
        .run(&["repair", "snapshots", "--read-data", "--forget", "--json"])
        .ok()
        .json();
    assert_eq!(r["repaired"][0]["original"], second.as_str(), "{r}");
    let b = src.join("b").to_string_lossy().into_owned();
    assert_eq!(r["repaired"][0]["removed"][0]["path"], b.as_str(), "{r}");

    // Lose the first backup's tree pack: the first snapshot's root, and
    // `sub`, which the second snapshot shares.
    let env2 = Env::new();
    let (src2, [first2, second2]) = two_snapshots(&env2);
    let (_, trees2) = packs_by_type(&env2);
    crate::common::obj_remove(&trees2[0]);
    env2.run(&["repair", "index"]).ok();
    let r = env2
        .run(&["repair", "snapshots", "--forget", "--json"])
        .ok()
        .json();
    let repaired = |orig: &str| {
        r["repaired"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["original"] == orig)
            .unwrap_or_else(|| panic!("{orig} not repaired: {r}"))
            .clone()
    };
    let one = repaired(&first2);
    assert_eq!(one["removed"][0]["kind"], "dir", "{r}");
    assert_eq!(one["removed"][0]["path"], "/", "{r}");
    let two = repaired(&second2);
    let sub = src2.join("sub").to_string_lossy().into_owned();
    assert_eq!(two["removed"][0]["kind"], "dir", "{r}");
    assert_eq!(two["removed"][0]["path"], sub.as_str(), "{r}");
    let (code, j) = check_code(&env2, &["--read-data"]);
    assert_eq!(code, 0, "{j}");
    // The second snapshot keeps everything but the contents of `sub`.
    let t = env2.path("t");
    env2.restore(two["repaired"].as_str().unwrap(), &t, &[])
        .ok();
    same_file(&t, &src2, "a");
    same_file(&t, &src2, "b");
    let restored_sub = t.join(src2.strip_prefix("/").unwrap()).join("sub");
    assert!(restored_sub.is_dir());
    assert_eq!(std::fs::read_dir(&restored_sub).unwrap().count(), 0);
}

#[test]
fn repair_snapshots_wants_the_index_repaired_first() {
    let env = Env::new();
    two_snapshots(&env);
    let snaps = objects(&env.repo, "snapshots").len();
    for idx in objects(&env.repo, "index") {
        crate::common::obj_remove(&idx);
    }
    let r = env.run(&["repair", "snapshots"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("repair index"), "{}", r.stderr);
    assert_eq!(
        objects(&env.repo, "snapshots").len(),
        snaps,
        "nothing written"
    );
}
