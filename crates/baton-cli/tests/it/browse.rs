//! snapshots, ls, diff, cat.

use crate::common::*;
use baton_testing::write_file;

#[test]
fn snapshots_filters_ls_diff_cat() {
    let env = Env::new();
    let src = env.path("src");
    write_file(&src.join("keep"), 1000, 1).unwrap();
    write_file(&src.join("change"), 1000, 2).unwrap();
    write_file(&src.join("gone"), 1000, 3).unwrap();
    let s1 = env.backup(&[&src], &["--tag", "daily,db", "--host", "alpha"]);
    write_file(&src.join("change"), 1000, 22).unwrap();
    std::fs::remove_file(src.join("gone")).unwrap();
    write_file(&src.join("sub/new"), 10, 4).unwrap();
    std::fs::set_permissions(
        src.join("keep"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let s2 = env.backup(&[&src], &["--tag", "weekly", "--host", "beta"]);

    let all: serde_json::Value =
        serde_json::from_str(&env.run(&["snapshots", "--json"]).ok().stdout).unwrap();
    assert_eq!(all["snapshots"].as_array().unwrap().len(), 2);
    let count = |args: &[&str]| -> usize {
        let mut a = vec!["snapshots", "--json"];
        a.extend_from_slice(args);
        serde_json::from_str::<serde_json::Value>(&env.run(&a).ok().stdout).unwrap()["snapshots"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count(&["--tag", "daily"]), 1);
    assert_eq!(count(&["--tag", "daily,db"]), 1);
    assert_eq!(count(&["--tag", "daily,weekly"]), 0);
    assert_eq!(count(&["--tag", "daily", "--tag", "weekly"]), 2);
    assert_eq!(count(&["--host", "beta"]), 1);
    assert_eq!(count(&["--path", src.to_str().unwrap()]), 2);
    assert_eq!(count(&["--path", "/elsewhere"]), 0);
    let table = env.run(&["snapshots"]).ok().stdout;
    assert!(table.contains(&s1["snapshot_id"].as_str().unwrap()[..8]) && table.contains("alpha"));

    // ls
    let id1 = s1["snapshot_id"].as_str().unwrap();
    let ls = env.run(&["ls", &id1[..6]]).ok().stdout;
    let base = src.display().to_string();
    assert!(ls.lines().any(|l| l == format!("{base}/gone")));
    let ls2 = env.run(&["ls", "latest", &base]).ok().stdout;
    assert!(ls2.lines().any(|l| l == format!("{base}/sub")));
    assert!(
        !ls2.lines().any(|l| l == format!("{base}/sub/new")),
        "not recursive without --recursive"
    );
    let ls3 = env
        .run(&["ls", "latest", &base, "--recursive", "-l"])
        .ok()
        .stdout;
    assert!(
        ls3.lines()
            .any(|l| l.ends_with(&format!("{base}/sub/new")) && l.starts_with("-rw")),
        "{ls3}"
    );

    // diff
    let d = env
        .run(&["diff", id1, s2["snapshot_id"].as_str().unwrap(), "--json"])
        .ok()
        .json();
    let changes: Vec<(String, String)> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["change"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let has = |p: &str, c: &str| changes.contains(&(format!("{base}/{p}"), c.to_string()));
    assert!(has("change", "modified"), "{changes:?}");
    assert!(has("gone", "removed"), "{changes:?}");
    assert!(
        has("sub", "added") && has("sub/new", "added"),
        "{changes:?}"
    );
    assert!(has("keep", "metadata"), "{changes:?}");
    let text = env.run(&["diff", id1, "latest"]).ok().stdout;
    assert!(text.contains(&format!("M    {base}/change")), "{text}");

    // cat
    let cfg: serde_json::Value =
        serde_json::from_str(&env.run(&["cat", "config"]).ok().stdout).unwrap();
    assert_eq!(cfg["version"], 2);
    let snap: serde_json::Value =
        serde_json::from_str(&env.run(&["cat", "snapshot", id1]).ok().stdout).unwrap();
    assert_eq!(snap["tree"], s1["tree_id"]);
    let tree: serde_json::Value = serde_json::from_str(
        &env.run(&["cat", "tree", &format!("latest:{base}")])
            .ok()
            .stdout,
    )
    .unwrap();
    let names: Vec<&str> = tree["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["change", "keep", "sub"]);
    let idx = objects(&env.repo, "index").pop().unwrap();
    let idx_json = env
        .run(&[
            "cat",
            "index",
            &idx.file_name().unwrap().to_string_lossy()[..12],
        ])
        .ok()
        .stdout;
    assert!(idx_json.contains("\"packs\""));
    assert_ne!(env.run(&["cat", "nonsense"]).code, 0);
}
