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
