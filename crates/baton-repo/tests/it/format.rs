use crate::faults::fast_init;
use baton_format::compress::Compressor;
use baton_format::object::{seal_object, to_json};
use baton_repo::{RepoError, Repository};
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
    let sealed = seal_object(repo.key(), &mut Compressor::new(0), &to_json(&config));
    std::fs::remove_file(dir.path().join("repo/config")).unwrap();
    storage.put(ObjectKind::Config, "", &sealed).unwrap();
    let err = Repository::open(storage, b"pw").unwrap_err();
    assert!(
        matches!(
            err,
            RepoError::NewerFormat {
                found: 2,
                supported: 1
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
    assert!(matches!(err, RepoError::Invalid(_)), "{err}");
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
    let err = repo.load_index().unwrap_err();
    assert!(err.to_string().contains(&bad.to_hex()), "{err}");
    let replacement = baton_format::index::IndexFile {
        supersedes: vec![bad],
        packs: vec![],
    };
    repo.save_object(ObjectKind::Index, &replacement.encode())
        .unwrap();
    repo.load_index().unwrap();
}
