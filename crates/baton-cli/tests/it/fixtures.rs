//! The committed repositories of format version 2 (`tests/fixtures/make-v2.sh`):
//! the tests open these exact bytes, so any change to the format (a seal's
//! role, an encoding, a name) fails here first. One intact, one per kind of
//! damage.

use crate::common::{Env, Run, no_panic, run};

/// A scratch copy of fixture `name` (the password is `fixture`).
fn fixture(name: &str) -> Env {
    let env = Env::empty();
    let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    if crate::common::s3_mode() {
        // Object by object into the bucket: the same bytes.
        crate::common::copy_repository(&from, &env.repo);
        return env;
    }
    let st = std::process::Command::new("cp")
        .arg("-r")
        .arg(&from)
        .arg(&env.repo)
        .status()
        .unwrap();
    assert!(st.success(), "copying {}", from.display());
    env
}

fn fx(env: &Env, args: &[&str]) -> Run {
    let r = run(env.cmd().env("BATON_PASSWORD", "fixture").args(args));
    no_panic(&r);
    r
}

fn problems(env: &Env, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["check", "--json"];
    a.extend_from_slice(args);
    let r = fx(env, &a);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", r.stdout, r.stderr);
    });
    v["problems"].as_array().unwrap().clone()
}

fn has(problems: &[serde_json::Value], kind: &str, object: &str) -> bool {
    problems
        .iter()
        .any(|p| p["kind"] == kind && p["object"].as_str().unwrap().starts_with(object))
}

/// The intact repository opens, checks clean reading every byte, and
/// restores exactly what was backed up, metadata included.
#[test]
fn intact_version_2_repository_restores_exactly() {
    use std::os::unix::fs::MetadataExt;
    let env = fixture("repo-v2");
    let snaps = fx(&env, &["snapshots", "--json"]).ok().json();
    let snaps = snaps["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[0]["time"], "2026-01-02T03:04:05.000000000Z");
    let src = snaps[1]["paths"][0].as_str().unwrap().to_string();
    let r = fx(&env, &["check", "--read-data"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("no problems found"), "{}", r.stdout);
    let t = env.path("t");
    let r = fx(
        &env,
        &[
            "restore",
            "latest",
            "--target",
            t.to_str().unwrap(),
            "--verify",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let root = t.join(src.trim_start_matches('/'));
    assert_eq!(std::fs::read(root.join("hello.txt")).unwrap(), b"hello\n");
    assert_eq!(std::fs::read(root.join("second.txt")).unwrap(), b"second\n");
    assert_eq!(
        std::fs::read(root.join("dir/inner.txt")).unwrap(),
        b"inner file\n"
    );
    assert_eq!(
        std::fs::read(root.join("dir/sub/zeds.bin")).unwrap(),
        vec![b'z'; 70_000]
    );
    assert_eq!(
        std::fs::read_link(root.join("link")).unwrap(),
        std::path::Path::new("hello.txt")
    );
    let m = std::fs::metadata(root.join("hello.txt")).unwrap();
    assert_eq!(m.mtime(), 1_767_323_045);
    // The older snapshot has no second.txt.
    let t1 = env.path("t1");
    let first = snaps[0]["id"].as_str().unwrap();
    fx(&env, &["restore", first, "--target", t1.to_str().unwrap()]).ok();
    assert!(
        !t1.join(src.trim_start_matches('/'))
            .join("second.txt")
            .exists()
    );
}

#[test]
fn damaged_snapshot_fixture() {
    let env = fixture("repo-v2-damaged-snapshot");
    let r = fx(&env, &["snapshots"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let p = problems(&env, &[]);
    assert!(
        has(&p, "hash_mismatch", "snapshot") || has(&p, "damaged", "snapshot"),
        "{p:?}"
    );
    // The next backup goes on.
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    assert_eq!(fx(&env, &["backup", src.to_str().unwrap()]).code, 0);
}

#[test]
fn damaged_pack_fixture() {
    let env = fixture("repo-v2-damaged-pack");
    let p = problems(&env, &["--read-data"]);
    assert!(
        has(&p, "damaged_blob", "pack") || has(&p, "hash_mismatch", "pack"),
        "{p:?}"
    );
}

#[test]
fn missing_pack_fixture() {
    let env = fixture("repo-v2-missing-pack");
    let p = problems(&env, &[]);
    assert!(has(&p, "missing_pack", "pack"), "{p:?}");
}

#[test]
fn damaged_index_fixture() {
    let env = fixture("repo-v2-damaged-index");
    let p = problems(&env, &[]);
    assert!(
        has(&p, "hash_mismatch", "index") || has(&p, "damaged", "index"),
        "{p:?}"
    );
}

/// A damaged key that is not the one in use: the repository opens with the
/// other, the damaged one is listed as such and can be removed; its own
/// password is told it is damaged, not that it is wrong.
#[test]
fn damaged_key_fixture() {
    let env = fixture("repo-v2-damaged-key");
    let r = run(env.cmd().env("BATON_PASSWORD", "second").arg("snapshots"));
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("damaged"), "{}", r.stderr);
    let list = fx(&env, &["key", "list"]).ok().stdout;
    assert!(list.contains("damaged"), "{list}");
    let keys = fx(&env, &["key", "list", "--json"]).ok().json();
    let keys = keys["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let bad = keys.iter().find(|k| k.get("damaged").is_some()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    fx(&env, &["key", "remove", &bad]).ok();
    let keys = fx(&env, &["key", "list", "--json"]).ok().json();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1);
    fx(&env, &["check"]).ok();
}
