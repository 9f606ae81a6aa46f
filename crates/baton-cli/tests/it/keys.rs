//! Keys: several passwords open one repository.

use crate::common::*;

#[test]
fn add_list_remove_passwd() {
    let env = Env::new();
    let kdf = ["--kdf-memory", "8192", "--kdf-iterations", "1"];
    let added = run(env
        .cmd()
        .env("BATON_NEW_PASSWORD", "second")
        .args(["key", "add", "--json"])
        .args(kdf))
    .ok()
    .json();
    let second_id = added["id"].as_str().unwrap().to_string();
    let list: serde_json::Value =
        serde_json::from_str(&env.run(&["key", "list", "--json"]).ok().stdout).unwrap();
    assert_eq!(list["keys"].as_array().unwrap().len(), 2);
    let first_id = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The new password opens the repository.
    run(env.cmd().env("BATON_PASSWORD", "second").arg("snapshots")).ok();
    // The key in use cannot be removed; the other one can.
    let r = env.run(&["key", "remove", &first_id[..8]]);
    assert_eq!(r.code, 2, "a usage error: {}", r.stderr);
    run(env
        .cmd()
        .env("BATON_PASSWORD", "second")
        .args(["key", "remove", &first_id[..8]]))
    .ok();
    assert_eq!(
        env.run(&["snapshots"]).code,
        12,
        "the removed password no longer works"
    );
    // passwd replaces the key in use.
    run(env
        .cmd()
        .env("BATON_PASSWORD", "second")
        .env("BATON_NEW_PASSWORD", "third")
        .args(["key", "passwd"])
        .args(kdf))
    .ok();
    assert_eq!(
        run(env.cmd().env("BATON_PASSWORD", "second").arg("snapshots")).code,
        12
    );
    run(env.cmd().env("BATON_PASSWORD", "third").arg("snapshots")).ok();
    let list: serde_json::Value = serde_json::from_str(
        &run(env
            .cmd()
            .env("BATON_PASSWORD", "third")
            .args(["key", "list", "--json"]))
        .ok()
        .stdout,
    )
    .unwrap();
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);
    assert_ne!(list["keys"][0]["id"].as_str().unwrap(), second_id);
}

/// An append-only key backs up and restores, but cannot delete anything or
/// hand out a full key.
#[test]
fn append_only_key() {
    let env = Env::new();
    let kdf = ["--kdf-memory", "8192", "--kdf-iterations", "1"];
    run(env
        .cmd()
        .env("BATON_NEW_PASSWORD", "ao")
        .args(["key", "add", "--append-only"])
        .args(kdf))
    .ok();
    let src = env.path("src");
    baton_testing::write_file(&src.join("f"), 100_000, 1).unwrap();
    let ao = |args: &[&str]| run(env.cmd().env("BATON_PASSWORD", "ao").args(args));
    let b = ao(&["backup", "--json", src.to_str().unwrap()]).ok().json();
    assert_eq!(b["files_new"], 1);
    let list: serde_json::Value =
        serde_json::from_str(&ao(&["key", "list", "--json"]).ok().stdout).unwrap();
    assert!(
        list["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["current"] == true && k["append_only"] == true)
    );
    for args in [
        &["forget", "latest"][..],
        &["prune"],
        &["unlock"],
        &["repair", "index"],
        &["key", "passwd"],
        &["tag", "latest", "--add", "x"],
    ] {
        let r = ao(args);
        assert_eq!(r.code, 1, "{args:?} must be refused: {}", r.stderr);
        assert!(r.stderr.contains("append-only"), "{args:?}: {}", r.stderr);
    }
    let full_id = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = ao(&["key", "remove", &full_id[..8]]);
    assert!(
        r.code == 1 && r.stderr.contains("append-only"),
        "{}",
        r.stderr
    );
    // A key it adds is append-only too.
    run(env
        .cmd()
        .env("BATON_PASSWORD", "ao")
        .env("BATON_NEW_PASSWORD", "ao2")
        .args(["key", "add"])
        .args(kdf))
    .ok();
    assert_eq!(
        run(env
            .cmd()
            .env("BATON_PASSWORD", "ao2")
            .args(["forget", "latest"]))
        .code,
        1
    );
    // Nothing was deleted: the snapshot restores; the full key still works and can forget.
    let t = env.path("t");
    run(env.cmd().env("BATON_PASSWORD", "ao").args([
        "restore",
        "latest",
        "--target",
        t.to_str().unwrap(),
    ]))
    .ok();
    env.run(&["forget", "latest"]).ok();
}
