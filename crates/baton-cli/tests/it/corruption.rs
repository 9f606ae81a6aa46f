//! The corruption detection matrix: for every kind of object and every kind
//! of damage, a fresh repository with two snapshots is damaged and
//! `check --read-data` must notice and name the damaged object.
//!
//! "Names" means the report (stdout and stderr) contains the object's id,
//! or, where the id is gone with the object, what identifies the loss:
//! a deleted index object is named through the packs it indexed (now
//! unreferenced, their blobs missing); a deleted key through "no keys".
//! Deleting a snapshot cannot be told apart from forgetting it: nothing
//! else must exist for a snapshot, so that case is detected only through
//! the next snapshot's `parent` and is a warning (exit 0), not an error.

use crate::check::{packs_by_type, two_snapshots};
use crate::common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    DataPack,
    TreePack,
    Index,
    Snapshot,
    Key,
    Config,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Damage {
    FlipByte,
    Truncate,
    Delete,
    /// Exchange two objects of the same kind (by renaming); for the config,
    /// of which there is one, put another repository's config in its place.
    Swap,
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn flip(p: &Path) {
    let mut b = obj_read(p);
    let i = b.len() / 2;
    b[i] ^= 0x55;
    obj_write(p, &b);
}

/// Exchanges the contents of two objects (as renaming them would).
fn swap(a: &Path, b: &Path) {
    let (ba, bb) = (obj_read(a), obj_read(b));
    obj_write(a, &bb);
    obj_write(b, &ba);
}

/// Objects of a kind, the first being the one damaged (the second is the
/// partner of a swap).
fn victims(env: &Env, kind: Kind, snapshots: &[String; 2]) -> Vec<PathBuf> {
    let by_time = |dir: &str| {
        let mut v = objects(&env.repo, dir);
        // Oldest first; on S3, which keeps no such order for us, by name
        // (any order serves: the damage is named from the victim itself).
        if s3_mode() {
            v.sort();
        } else {
            v.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
        }
        v
    };
    match kind {
        Kind::DataPack => packs_by_type(env).0,
        Kind::TreePack => packs_by_type(env).1,
        Kind::Index => by_time("index"),
        Kind::Snapshot => snapshots
            .iter()
            .map(|s| env.repo.join("snapshots").join(s))
            .collect(),
        Kind::Key => by_time("keys"),
        Kind::Config => vec![env.repo.join("config")],
    }
}

/// Damages one object; returns what the report must name, and whether the
/// check must fail.
fn damage(env: &Env, kind: Kind, how: Damage, snapshots: &[String; 2]) -> (Vec<String>, bool) {
    if kind == Kind::Key && how == Damage::Swap {
        run(env
            .cmd()
            .env("BATON_NEW_PASSWORD", "another password")
            .args([
                "key",
                "add",
                "--kdf-memory",
                "8192",
                "--kdf-iterations",
                "1",
            ]))
        .ok();
    }
    let objs = victims(env, kind, snapshots);
    let victim = &objs[0];
    let label = |p: &Path| match kind {
        Kind::Config => "config:".to_string(),
        _ => name(p),
    };
    let mut names = vec![label(victim)];
    let mut must_fail = true;
    match how {
        Damage::FlipByte => flip(victim),
        Damage::Truncate => {
            let b = obj_read(victim);
            obj_write(victim, &b[..b.len() / 2]);
        }
        Damage::Delete => {
            match kind {
                Kind::Index => {
                    let j: Value = serde_json::from_str(
                        &env.run(&["cat", "index", &name(victim)]).ok().stdout,
                    )
                    .unwrap();
                    names = j["packs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p["id"].as_str().unwrap().to_string())
                        .collect();
                }
                Kind::Key => names = vec!["no keys".into()],
                // A deleted snapshot is a forgotten one (design §0: rolling
                // back is possible); its child's parent link is no problem.
                Kind::Snapshot => {
                    must_fail = false;
                    names = Vec::new();
                }
                _ => {}
            }
            obj_remove(victim);
        }
        Damage::Swap => match kind {
            Kind::Config => {
                let other = Env::new();
                obj_write(victim, &obj_read(&other.repo.join("config")));
            }
            _ => {
                swap(victim, &objs[1]);
                names.push(label(&objs[1]));
            }
        },
    }
    (names, must_fail)
}

/// Runs one case; `Err` says what was missed.
fn case(kind: Kind, how: Damage) -> Result<(), String> {
    let env = Env::new();
    let (_, snapshots) = two_snapshots(&env);
    let (names, must_fail) = damage(&env, kind, how, &snapshots);
    // A remote repository's cache holds intact copies: check the bucket.
    env.drop_cache();
    let r = env.run(&["check", "--read-data"]);
    assert_ne!(
        r.code, 101,
        "{kind:?}/{how:?}: baton panicked: {}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("panicked"),
        "{kind:?}/{how:?}: {}",
        r.stderr
    );
    let text = format!("{}\n{}", r.stdout, r.stderr);
    let failed = r.code != 0;
    if failed != must_fail {
        return Err(format!(
            "exit code {} (expected {}):\n{text}",
            r.code,
            if must_fail { "non-zero" } else { "0" }
        ));
    }
    if failed && r.code == 1 && !text.contains("check found") && !text.contains("error: ") {
        return Err(format!("no clear message:\n{text}"));
    }
    let unnamed: Vec<&String> = names.iter().filter(|n| !text.contains(*n)).collect();
    if !unnamed.is_empty() {
        return Err(format!("the report does not name {unnamed:?}:\n{text}"));
    }
    Ok(())
}

#[test]
fn corruption_detection_matrix() {
    let kinds = [
        Kind::DataPack,
        Kind::TreePack,
        Kind::Index,
        Kind::Snapshot,
        Kind::Key,
        Kind::Config,
    ];
    let damages = [
        Damage::FlipByte,
        Damage::Truncate,
        Damage::Delete,
        Damage::Swap,
    ];
    let cases: Vec<(Kind, Damage)> = kinds
        .iter()
        .flat_map(|k| damages.iter().map(move |d| (*k, *d)))
        .collect();
    // Two workers: each case builds its own repository.
    let results: Vec<((Kind, Damage), Result<(), String>)> = std::thread::scope(|s| {
        let halves: Vec<_> = cases
            .chunks(cases.len().div_ceil(2))
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&(k, d)| ((k, d), case(k, d)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let detected = results.iter().filter(|(_, r)| r.is_ok()).count();
    eprintln!("corruption detection: {detected}/{}", results.len());
    let missed: Vec<String> = results
        .iter()
        .filter_map(|((k, d), r)| r.as_ref().err().map(|e| format!("{k:?}/{d:?}: {e}")))
        .collect();
    assert!(missed.is_empty(), "missed:\n{}", missed.join("\n\n"));
    assert_eq!(detected, 24);
}
