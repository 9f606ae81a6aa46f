use crate::baton::{RepoError, Repository};
use crate::faults::fast_init;
use baton_format::object::to_json;
use baton_storage::{LocalStorage, ObjectKind, Storage};
use std::sync::Arc;

/// A repository written by a newer baton is refused with a clear message.
#[test]
fn newer_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path().join("repo")));
    let repo = Repository::init(storage.clone(), b"pw", &fast_init()).unwrap();
    let mut config = repo.config().clone();
    config.version = baton_types::FORMAT_VERSION + 1;
    let sealed = repo.seal(ObjectKind::Config, "", 0, &to_json(&config));
    std::fs::remove_file(dir.path().join("repo/config")).unwrap();
    storage.put(ObjectKind::Config, "", &sealed).unwrap();
    let err = Repository::open(storage, b"pw").unwrap_err();
    assert!(
        matches!(
            err,
            RepoError::NewerFormat {
                found: 3,
                supported: 2
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade baton"), "{err}");
}

#[test]
fn a_path_that_is_not_a_repository() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    for p in [
        dir.path().join("nothing"),
        dir.path().join("file"),
        dir.path().to_path_buf(),
    ] {
        let err = Repository::open(Arc::new(LocalStorage::new(&p)), b"pw").unwrap_err();
        assert!(
            matches!(err, RepoError::NoRepository { .. }),
            "{}: {err}",
            p.display()
        );
    }
}

/// A key file whose wrapped key was altered is reported as damaged, naming
/// it, not as a wrong password.
#[test]
fn damaged_key_is_not_a_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path().join("repo")));
    let name = Repository::init(storage.clone(), b"pw", &fast_init())
        .unwrap()
        .key_name()
        .to_string();
    assert!(matches!(
        Repository::open(storage.clone(), b"wrong").unwrap_err(),
        RepoError::WrongPassword
    ));
    let path = dir.path().join("repo/keys").join(&name);
    let text = std::fs::read_to_string(&path).unwrap();
    let at = text.find("\"data\": \"").unwrap() + 20;
    let mut b = text.into_bytes();
    b[at] = if b[at] == b'0' { b'1' } else { b'0' }; // still hex
    std::fs::write(&path, b).unwrap();
    let err = Repository::open(storage, b"pw").unwrap_err();
    assert!(matches!(err, RepoError::Damaged(_)), "{err}");
    assert!(err.to_string().contains(&name), "{err}");
    assert!(err.to_string().contains("damaged"), "{err}");
}

/// An index object that cannot be read fails the load, unless another index
/// object supersedes it (`repair index` writes that one before deleting it).
#[test]
fn unreadable_index_objects_are_skipped_once_superseded() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path().join("repo")));
    let mut repo = Repository::init(storage.clone(), b"pw", &fast_init()).unwrap();
    let garbage = b"not an index object".to_vec();
    let bad = baton_format::storage_id(&garbage);
    storage
        .put(ObjectKind::Index, &bad.to_hex(), &garbage)
        .unwrap();
    // Left out and named (one bad index object never stops a backup).
    repo.load_index().unwrap();
    assert_eq!(repo.index_skipped().len(), 1);
    assert_eq!(repo.index_skipped()[0].0, bad.to_hex());
    let replacement = baton_format::index::IndexFile {
        supersedes: vec![bad],
        packs: vec![],
        damaged: Vec::new(),
    };
    repo.save_object(ObjectKind::Index, &replacement.encode())
        .unwrap();
    repo.load_index().unwrap();
    assert!(repo.index_skipped().is_empty());
}

/// An index object put back under another name (a replay of an old one)
/// is refused: content-named objects must hash to their name.
#[test]
fn a_replayed_index_object_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path().join("repo")));
    let mut repo = Repository::init(storage.clone(), b"pw", &fast_init()).unwrap();
    let f = baton_format::index::IndexFile::default();
    let (id, _) = repo.save_object(ObjectKind::Index, &f.encode()).unwrap();
    let bytes = storage.get(ObjectKind::Index, &id.to_hex()).unwrap();
    let other = "ab".repeat(32);
    storage.put(ObjectKind::Index, &other, &bytes).unwrap();
    let err = repo.load_object(ObjectKind::Index, &other).unwrap_err();
    assert!(matches!(err, RepoError::Damaged(_)), "{err}");
    repo.load_index().unwrap();
    assert!(repo.index_skipped().iter().any(|(n, _)| *n == other));
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// Copies a committed fixture repository to a scratch directory.
fn copy_fixture(name: &str, to: &std::path::Path) {
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(fixture(name))
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A repository of format version 1 (committed, written by baton 0.1) is
/// refused with a message that names the version and what to do.
#[test]
fn version_1_repository_is_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    copy_fixture("repo-v1", &repo);
    let err = Repository::open(Arc::new(LocalStorage::new(&repo)), b"fixture").unwrap_err();
    assert!(
        matches!(
            err,
            RepoError::OldFormat {
                found: 1,
                supported: 2,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("version 1"), "{msg}");
    assert!(msg.contains("baton init"), "{msg}");
}

/// The attack of format version 1: a backed-up file whose bytes are a
/// stored object's plaintext (`0x00 || JSON`) becomes a sealed data blob;
/// whoever can write to the repository (no password needed) copies its
/// sealed bytes out of the pack and stores them as a snapshot, an index
/// object, a lock, a journal record, the config. In version 2 every seal is
/// bound to its role, so each planted copy fails to open, and `check` names it.
#[test]
fn planted_blob_opens_as_no_other_kind_of_object() {
    use crate::baton::{BackupOptions, Cancel, CheckOptions, NoProgress};
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path().join("repo")));
    let mut repo = Repository::init(storage.clone(), b"pw", &fast_init()).unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("innocent"), b"hello").unwrap();
    let first = crate::baton::backup(
        &mut repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
        None,
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    // The forged snapshot: the real tree, dated 2099, as a raw object.
    let mut forged = first.snapshot.clone();
    forged.time = "2099-01-01T00:00:00Z".into();
    let mut payload = vec![0u8];
    payload.extend_from_slice(&to_json(&forged));
    std::fs::write(src.join("planted"), &payload).unwrap();
    crate::baton::backup(
        &mut repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
        None,
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    repo.load_index().unwrap();
    // The attacker's copy of the sealed blob (located here with the key;
    // the copy itself needs none).
    let id = repo.key().blob_id(&payload);
    let loc = repo.index().get(&id).expect("the planted file is one blob");
    let sealed = storage
        .get_range(
            ObjectKind::Pack,
            &loc.pack.to_hex(),
            loc.offset as u64,
            loc.length as u64,
        )
        .unwrap();
    let name = baton_format::storage_id(&sealed).to_hex();
    let before = repo.list_snapshots().unwrap().len();
    storage.put(ObjectKind::Snapshot, &name, &sealed).unwrap();
    storage.put(ObjectKind::Index, &name, &sealed).unwrap();
    storage.put(ObjectKind::Lock, &name, &sealed).unwrap();
    let job = format!("{}/000000000000", "ab".repeat(32));
    storage.put(ObjectKind::Journal, &job, &sealed).unwrap();

    for kind in [ObjectKind::Snapshot, ObjectKind::Index, ObjectKind::Lock] {
        let err = repo.load_object(kind, &name).unwrap_err();
        assert!(matches!(err, RepoError::Format { .. }), "{kind:?}: {err}");
    }
    assert!(repo.load_object(ObjectKind::Journal, &job).is_err());
    // Not believed as a snapshot: skipped by listings, never the latest.
    let listed = repo.list_snapshots().unwrap();
    assert_eq!(listed.len(), before);
    assert!(listed.iter().all(|(_, s)| !s.time.starts_with("2099")));
    // Nor as an index object (left out and named).
    repo.load_index().unwrap();
    assert!(repo.index_skipped().iter().any(|(n, _)| *n == name));
    storage.remove(ObjectKind::Index, &name).unwrap();
    // A lock that cannot be opened protects nothing: it does not block.
    drop(repo.lock(true).unwrap());
    let report =
        crate::baton::check(&repo, &CheckOptions::default(), &NoProgress, &Cancel::new()).unwrap();
    let named = |what: &str| {
        report
            .problems
            .iter()
            .any(|p| p.object.contains(what) && p.object.contains(&name[..8]))
    };
    assert!(named("snapshot"), "{:?}", report.problems);

    // As the config: the repository no longer opens, and says why.
    std::fs::remove_file(dir.path().join("repo/config")).unwrap();
    storage.put(ObjectKind::Config, "", &sealed).unwrap();
    let err = Repository::open(storage.clone(), b"pw").unwrap_err();
    assert!(err.to_string().contains("config"), "{err}");
}

/// Removing `append_only` from a key file (and renaming it to its new hash)
/// does not give full rights: the wrap is bound to every field.
#[test]
fn editing_a_key_files_rights_makes_it_unusable() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path().join("repo")));
    let repo = Repository::init(storage.clone(), b"pw", &fast_init()).unwrap();
    let name = repo
        .add_key_with(b"ao", &crate::baton::kdf_params(8192, 1), true)
        .unwrap();
    let ao = Repository::open(storage.clone(), b"ao").unwrap();
    assert!(ao.is_append_only());
    let text = String::from_utf8(storage.get(ObjectKind::Key, &name).unwrap()).unwrap();
    let mut kf: serde_json::Value = serde_json::from_str(&text).unwrap();
    kf.as_object_mut().unwrap().remove("append_only");
    let edited = serde_json::to_vec_pretty(&kf).unwrap();
    let new_name = baton_format::storage_id(&edited).to_hex();
    storage.remove(ObjectKind::Key, &name).unwrap();
    storage.put(ObjectKind::Key, &new_name, &edited).unwrap();
    // The edited key opens nothing (it reads as a wrong password: the
    // password and the fields are checked by one authentication tag).
    let err = Repository::open(storage.clone(), b"ao").unwrap_err();
    assert!(matches!(err, RepoError::WrongPassword), "{err}");
    // The full key is unaffected.
    assert!(!Repository::open(storage, b"pw").unwrap().is_append_only());
}

/// Key files planted by someone who can write the repository cost a bounded
/// amount of work: the cheapest are tried first, the search stops after a
/// fixed amount of work, and a key too large for this machine's memory is
/// never run. The hinted key is tried first.
#[test]
fn planted_key_files_cost_bounded_work() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path().join("repo")));
    let repo = Repository::init(storage.clone(), b"pw", &fast_init()).unwrap();
    let real = repo.key_name().to_string();
    let text = String::from_utf8(storage.get(ObjectKind::Key, &real).unwrap()).unwrap();
    let plant = |memory_kib: u64, passes: u64, salt: usize| {
        let mut kf: serde_json::Value = serde_json::from_str(&text).unwrap();
        kf["kdf"]["memory_kib"] = memory_kib.into();
        kf["kdf"]["iterations"] = passes.into();
        kf["kdf"]["salt"] = format!("{salt:032x}").into();
        let bytes = serde_json::to_vec_pretty(&kf).unwrap();
        let name = baton_format::storage_id(&bytes).to_hex();
        storage.put(ObjectKind::Key, &name, &bytes).unwrap();
    };
    // 4 GiB and 64 passes: minutes and all the memory of a small machine.
    plant(4 << 20, 64, 1);
    for i in 0..30 {
        plant(8192, 1, 100 + i);
    }
    // The right password opens (the expensive key is never reached).
    Repository::open(storage.clone(), b"pw").unwrap();
    // A wrong one tries the cheap keys and then stops, saying why.
    let err = Repository::open(storage.clone(), b"wrong").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("not tried") || msg.contains("more than this machine allows"),
        "{msg}"
    );
    // The hinted key is tried first, whatever the others cost.
    let hinted = Repository::open_with_hint(storage.clone(), b"pw", Some(&real[..8])).unwrap();
    assert_eq!(hinted.key_name(), real);
}

/// Objects are read with a bound: a huge (sparse) key or lock file is
/// refused, not read into memory.
#[test]
fn oversized_key_and_lock_files_are_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path().join("repo")));
    let repo = Repository::init(storage.clone(), b"pw", &fast_init()).unwrap();
    for sub in ["keys", "locks"] {
        let f =
            std::fs::File::create(dir.path().join("repo").join(sub).join("f".repeat(64))).unwrap();
        f.set_len(200 << 30).unwrap();
    }
    // Opens with the good key, the huge one reported as damaged if needed.
    let repo2 = Repository::open(storage.clone(), b"pw").unwrap();
    let keys = repo2.list_keys().unwrap();
    assert!(keys.iter().any(|(_, k)| k.is_err()));
    // The huge lock reads as unreadable (stale) and does not block.
    drop(repo.lock(true).unwrap());
    let err = storage
        .get_limited(ObjectKind::Lock, &"f".repeat(64), 1 << 16)
        .unwrap_err();
    assert!(err.to_string().contains("more than"), "{err}");
}

/// Files and directories of a repository are the owner's alone.
#[test]
fn repository_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let storage = Arc::new(LocalStorage::new(&root));
    let repo = Repository::init(storage, b"pw", &fast_init()).unwrap();
    repo.save_object(ObjectKind::Snapshot, b"{}").unwrap();
    let mut n = 0;
    for e in walk(&root) {
        let mode = std::fs::symlink_metadata(&e).unwrap().permissions().mode() & 0o777;
        let want = if e.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{}", e.display());
        n += 1;
    }
    assert!(n > 5);
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            out.extend(walk(&e.unwrap().path()));
        }
    }
    out
}
