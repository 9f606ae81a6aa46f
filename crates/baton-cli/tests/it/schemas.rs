//! Every `--json` output of every test run is checked against its
//! documented schema (`docs/json/COMMAND.schema.json`, one `$defs` entry per
//! `message_type`): a line that is not JSON, lacks `message_type`, names a
//! message the command's schema does not document, or breaks its schema
//! fails the test that ran it. Errors on stderr are checked against
//! `docs/json/errors.schema.json`.

use crate::common::Run;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;

/// Commands whose output is not messages: the repository's own objects
/// (`cat`), file contents (`dump`), generated files (`completion`, `man`),
/// and `mount`, which prints nothing on stdout.
const NOT_MESSAGES: &[&str] = &["cat", "dump", "completion", "man", "mount", "help"];

const COMMANDS: &[&str] = &[
    "director",
    "media-agent",
    "ctl",
    "agent",
    "init",
    "backup",
    "restore",
    "snapshots",
    "ls",
    "diff",
    "dump",
    "serve-nbd",
    "find",
    "stats",
    "list",
    "rewrite",
    "tag",
    "copy",
    "replicate",
    "drill",
    "mount",
    "completion",
    "man",
    "cat",
    "key",
    "unlock",
    "jobs",
    "check",
    "repair",
    "forget",
    "prune",
    "debug",
    "help",
];

struct Compiled {
    schemas: boon::Schemas,
    compiler: boon::Compiler,
    /// `file#/$defs/type` → compiled schema (`None`: no such message).
    by_message: HashMap<String, Option<boon::SchemaIndex>>,
    loaded: HashMap<String, serde_json::Value>,
}

thread_local! {
    // Per test thread: boon's compiler is not Send.
    static COMPILED: RefCell<Compiled> = RefCell::new(Compiled {
        schemas: boon::Schemas::new(),
        compiler: boon::Compiler::new(),
        by_message: HashMap::new(),
        loaded: HashMap::new(),
    });
}

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/json")
}

/// Validates `v` as the message `v.message_type` of `file`
/// (`backup.schema.json`, ...).
pub fn validate(file: &str, v: &serde_json::Value) -> Result<(), String> {
    let Some(mt) = v.get("message_type").and_then(|m| m.as_str()) else {
        return Err(format!("no message_type in {v}"));
    };
    if mt.starts_with('_') || mt.contains('/') || mt.contains('~') {
        return Err(format!("bad message_type {mt:?}"));
    }
    COMPILED.with(|c| validate_in(&mut c.borrow_mut(), file, mt, v))
}

fn validate_in(
    c: &mut Compiled,
    file: &str,
    mt: &str,
    v: &serde_json::Value,
) -> Result<(), String> {
    if !c.loaded.contains_key(file) {
        let path = schema_dir().join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("no schema {}: {e}", path.display()))?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{file} is not JSON: {e}"))?;
        let id = doc["$id"].as_str().ok_or(format!("{file} has no $id"))?;
        c.compiler
            .add_resource(id, doc.clone())
            .map_err(|e| format!("{file}: {e}"))?;
        c.loaded.insert(file.to_string(), doc);
    }
    let key = format!("{file}#{mt}");
    if !c.by_message.contains_key(&key) {
        let doc = &c.loaded[file];
        let idx = if doc["$defs"].get(mt).is_some() {
            let loc = format!("{}#/$defs/{mt}", doc["$id"].as_str().unwrap());
            Some(
                c.compiler
                    .compile(&loc, &mut c.schemas)
                    .map_err(|e| format!("{file} {mt}: {e:#}"))?,
            )
        } else {
            None
        };
        c.by_message.insert(key.clone(), idx);
    }
    let Some(idx) = c.by_message[&key] else {
        return Err(format!("message_type {mt:?} is not documented in {file}"));
    };
    c.schemas
        .validate(v, idx)
        .map_err(|e| format!("{file}: {mt} breaks its schema: {e:#}\n{v}"))
}

/// Checks the output of one run of `baton ARGS` (see the module doc).
pub fn check_run(args: &[String], r: &Run) {
    if !args.iter().any(|a| a == "--json") {
        return;
    }
    let Some(cmd) = args.iter().find(|a| COMMANDS.contains(&a.as_str())) else {
        return;
    };
    if NOT_MESSAGES.contains(&cmd.as_str()) {
        return;
    }
    let file = format!("{cmd}.schema.json");
    for line in r.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("baton {args:?} --json printed a line that is not JSON ({e}): {line}")
        });
        if let Err(e) = validate(&file, &v) {
            panic!("baton {args:?}: {e}");
        }
    }
    for line in r.stderr.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("baton {args:?}: stderr line not JSON ({e}): {line}"));
        if let Err(e) = validate("errors.schema.json", &v) {
            panic!("baton {args:?}: {e}");
        }
    }
}

/// Every schema is valid JSON Schema, names itself, and documents each of
/// its messages with a `message_type` constant equal to its name.
#[test]
fn schemas_are_well_formed() {
    let mut n = 0;
    for e in std::fs::read_dir(schema_dir()).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.ends_with(".schema.json"), "{name}");
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            doc["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        let defs = doc["$defs"].as_object().unwrap();
        for (mt, def) in defs.iter().filter(|(k, _)| !k.starts_with('_')) {
            assert!(
                def["description"].is_string(),
                "{name} {mt}: no description"
            );
            // A message is one object or a choice of objects, each with
            // message_type fixed to the message's name.
            let variants: Vec<&serde_json::Value> = match def["oneOf"].as_array() {
                Some(v) => v
                    .iter()
                    .map(|r| {
                        let p = r["$ref"].as_str().unwrap().trim_start_matches("#/$defs/");
                        &defs[p]
                    })
                    .collect(),
                None => vec![def],
            };
            for v in variants {
                assert_eq!(v["properties"]["message_type"]["const"], *mt, "{name} {mt}");
                assert!(
                    v["required"]
                        .as_array()
                        .unwrap()
                        .contains(&"message_type".into()),
                    "{name} {mt}"
                );
            }
            n += 1;
            // Compiles, and refuses an object of another message type.
            let other = serde_json::json!({"message_type": mt, "unexpected": {"x": 1}});
            assert!(
                validate(&name, &other).is_err(),
                "{name} {mt} accepts anything"
            );
        }
    }
    assert!(n >= 30, "only {n} messages documented");
}

/// A wrong output is caught: the checker itself can fail.
#[test]
fn the_checker_refuses_what_the_schema_does_not_say() {
    let ok = serde_json::json!({"message_type": "unlocked", "removed": 2});
    validate("unlock.schema.json", &ok).unwrap();
    for bad in [
        serde_json::json!({"removed": 2}),
        serde_json::json!({"message_type": "unlocked", "removed": -1}),
        serde_json::json!({"message_type": "unlocked", "removed": 2, "extra": 1}),
        serde_json::json!({"message_type": "locked", "removed": 2}),
    ] {
        assert!(validate("unlock.schema.json", &bad).is_err(), "{bad}");
    }
}
