//! Restore never writes outside its target: crafted trees (written with the
//! key by a test helper) and a local user racing the restore.

use crate::baton::{
    BackupOptions, Cancel, EntryStatus, NoProgress, Progress, RepoError, Repository, RestoreOptions,
};
use crate::faults::fast_init;
use baton_format::object::to_json;
use baton_storage::LocalStorage;
use baton_types::{BlobType, FsName, Id, Node, NodeKind, Snapshot, Tree};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn node(name: &str, kind: NodeKind) -> Node {
    Node {
        name: FsName::from(name),
        kind,
        mode: 0o777,
        uid: 0,
        gid: 0,
        user: None,
        group: None,
        mtime_ns: 1,
        atime_ns: 0,
        ctime_ns: 1,
        inode: 0,
        device_id: 0,
        links: 1,
        size: 0,
        rdev: 0,
        content: Vec::new(),
        subtree: None,
        link_target: None,
        xattrs: Vec::new(),
        image: None,
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    repo: Repository,
    snapshot: Snapshot,
}

/// A repository with one real snapshot (whose metadata the crafted ones copy).
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let storage = Arc::new(LocalStorage::new(root.join("repo")));
    let mut repo = Repository::init(storage, b"pw", &fast_init()).unwrap();
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let r = crate::baton::backup(
        &mut repo,
        &BackupOptions {
            paths: vec![src],
            ..Default::default()
        },
        None,
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    repo.load_index().unwrap();
    Setup {
        _dir: dir,
        root,
        repo,
        snapshot: r.snapshot,
    }
}

fn file_node(repo: &mut Repository, name: &str, data: &[u8]) -> Node {
    let id = repo
        .store_raw_blobs(&[(BlobType::Data, data.to_vec())])
        .unwrap()[0];
    let mut n = node(name, NodeKind::File);
    n.mode = 0o644;
    n.size = data.len() as u64;
    n.content = vec![id];
    n
}

/// File nodes whose contents are stored in one pack, in this order.
fn file_nodes<const N: usize>(repo: &mut Repository, files: [(&str, &[u8]); N]) -> [Node; N] {
    let blobs: Vec<_> = files
        .iter()
        .map(|(_, d)| (BlobType::Data, d.to_vec()))
        .collect();
    let ids = repo.store_raw_blobs(&blobs).unwrap();
    std::array::from_fn(|i| {
        let mut n = node(files[i].0, NodeKind::File);
        n.mode = 0o644;
        n.size = files[i].1.len() as u64;
        n.content = vec![ids[i]];
        n
    })
}

/// Stores `nodes` as a tree blob as given (unsorted, duplicated: anything).
fn raw_tree(repo: &mut Repository, nodes: Vec<Node>) -> Id {
    repo.store_raw_blobs(&[(BlobType::Tree, to_json(&Tree { nodes }))])
        .unwrap()[0]
}

fn restore(
    s: &Setup,
    snap: &Snapshot,
    target: &Path,
    progress: &dyn Progress,
) -> crate::baton::Result<crate::baton::RestoreSummary> {
    restore_from(&s.repo, snap, target, progress)
}

fn restore_from(
    repo: &Repository,
    snap: &Snapshot,
    target: &Path,
    progress: &dyn Progress,
) -> crate::baton::Result<crate::baton::RestoreSummary> {
    crate::baton::restore(
        repo,
        snap,
        None,
        target,
        &RestoreOptions::default(),
        progress,
        &Cancel::new(),
    )
}

/// A directory `x` holding `f`, then a symbolic link `x` to a directory
/// outside: restore of version 1 wrote `f` through the link and chmodded the
/// outside directory 0777. The tree is refused when decoded; nothing outside
/// changes, and `check` names the tree.
#[test]
fn a_tree_with_a_name_twice_is_refused() {
    let mut s = setup();
    let outside = s.root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o700)).unwrap();
    let f = file_node(&mut s.repo, "f", b"planted");
    let inner = raw_tree(&mut s.repo, vec![f]);
    let mut dir = node("x", NodeKind::Dir);
    dir.subtree = Some(inner);
    let mut link = node("x", NodeKind::Symlink);
    link.link_target = Some(FsName::from(outside.to_str().unwrap()));
    for nodes in [vec![dir.clone(), link.clone()], vec![link, dir]] {
        let root = raw_tree(&mut s.repo, nodes);
        let mut snap = s.snapshot.clone();
        snap.tree = root;
        let target = s.root.join(format!("t-{}", root.short()));
        let r = restore(&s, &snap, &target, &NoProgress);
        let refused = match r {
            Err(e) => e.to_string(),
            Ok(sum) => format!("{:?}", sum.errors),
        };
        assert!(refused.contains("twice"), "{refused}");
        assert!(!outside.join("f").exists());
        let mode = std::fs::metadata(&outside).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // check reports the tree.
        s.repo.save_snapshot(&snap).unwrap();
        let report = crate::baton::check(
            &s.repo,
            &crate::baton::CheckOptions::default(),
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
        assert!(
            report.problems.iter().any(|p| p.message.contains("twice")),
            "{:?}",
            report.problems
        );
    }
}

/// Unsorted names, `..` and names with `/` are refused the same way.
#[test]
fn unsafe_or_unsorted_names_are_refused() {
    let mut s = setup();
    for nodes in [
        vec![node("b", NodeKind::Fifo), node("a", NodeKind::Fifo)],
        vec![node("..", NodeKind::Fifo)],
        vec![node("a/b", NodeKind::Fifo)],
    ] {
        let root = raw_tree(&mut s.repo, nodes);
        let mut snap = s.snapshot.clone();
        snap.tree = root;
        let target = s.root.join(format!("t-{}", root.short()));
        assert!(restore(&s, &snap, &target, &NoProgress).is_err());
        assert!(s.repo.read_tree(&root).is_err());
    }
}

/// 41 trees, each holding the next twice: 2^41 entries from 41 objects. A
/// walk of it (restore, ls, dump, diff) stops at the snapshot's recorded size.
#[test]
fn an_exponential_tree_is_not_walked() {
    let mut s = setup();
    let mut t = raw_tree(&mut s.repo, vec![]);
    for _ in 0..41 {
        let mut a = node("a", NodeKind::Dir);
        a.subtree = Some(t);
        let mut b = node("b", NodeKind::Dir);
        b.subtree = Some(t);
        t = raw_tree(&mut s.repo, vec![a, b]);
    }
    let mut snap = s.snapshot.clone();
    snap.tree = t;
    let target = s.root.join("t");
    let err = restore(&s, &snap, &target, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("expand"), "{err}");
    let mut budget = crate::baton::WalkBudget::for_snapshot(&snap);
    let mut n = 0u64;
    let err = crate::baton::walk_tree(&s.repo, &t, "/", &mut budget, &mut |_, _| {
        n += 1;
        Ok(())
    })
    .unwrap_err();
    assert!(matches!(err, RepoError::Damaged(_)), "{err}");
    assert!(n < 3_000_000, "{n}");
    let err = crate::baton::diff(&s.repo, &s.snapshot, &snap).unwrap_err();
    assert!(err.to_string().contains("expand"), "{err}");
}

/// The same tree under a snapshot whose summary was lifted by whoever wrote
/// it (or that has none): the bound that does not trust the snapshot holds.
/// Restore refuses before it creates anything; a walk stops after at most
/// the floor plus the expansion allowed for the entries actually stored.
#[test]
fn an_exponential_tree_is_refused_whatever_its_summary_says() {
    let mut s = setup();
    let mut t = raw_tree(&mut s.repo, vec![]);
    for _ in 0..41 {
        let mut a = node("a", NodeKind::Dir);
        a.subtree = Some(t);
        let mut b = node("b", NodeKind::Dir);
        b.subtree = Some(t);
        t = raw_tree(&mut s.repo, vec![a, b]);
    }
    for lifted in [true, false] {
        let mut snap = s.snapshot.clone();
        snap.tree = t;
        match (&mut snap.summary, lifted) {
            (Some(m), true) => m.dirs = u64::MAX,
            (m, _) => *m = None,
        }
        let target = s.root.join(format!("t{lifted}"));
        let err = restore(&s, &snap, &target, &NoProgress).unwrap_err();
        assert!(err.to_string().contains("expand"), "{err}");
        let created = std::fs::read_dir(&target).map_or(0, |d| d.count());
        assert_eq!(created, 0, "restore created entries before refusing");
        if lifted {
            let mut budget = crate::baton::WalkBudget::for_snapshot(&snap);
            let mut n = 0u64;
            let err = crate::baton::walk_tree(&s.repo, &t, "/", &mut budget, &mut |_, _| {
                n += 1;
                Ok(())
            })
            .unwrap_err();
            assert!(matches!(err, RepoError::Damaged(_)), "{err}");
            let bound = crate::baton::WALK_FLOOR + 82 * crate::baton::WALK_EXPANSION;
            assert!(n <= bound, "{n} > {bound}");
        }
    }
}

/// Directories nested deeper than any path Linux resolves are refused.
#[test]
fn a_deep_tree_is_refused() {
    let mut s = setup();
    let mut t = raw_tree(&mut s.repo, vec![]);
    let mut trees = Vec::new();
    for _ in 0..crate::baton::MAX_TREE_DEPTH + 5 {
        let mut d = node("d", NodeKind::Dir);
        d.subtree = Some(t);
        let json = to_json(&Tree { nodes: vec![d] });
        t = s.repo.key().blob_id(&json);
        trees.push((BlobType::Tree, json));
    }
    s.repo.store_raw_blobs(&trees).unwrap();
    let mut snap = s.snapshot.clone();
    snap.tree = t;
    let err = restore(&s, &snap, &s.root.join("t"), &NoProgress).unwrap_err();
    assert!(err.to_string().contains("nest"), "{err}");
}

/// Symbolic links already in a (non-empty) target, where the snapshot has a
/// directory or a file: replaced, never followed.
#[test]
fn links_in_the_target_are_replaced_not_followed() {
    let mut s = setup();
    let outside = s.root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"keep").unwrap();
    let f = file_node(&mut s.repo, "f", b"new content");
    let victim = file_node(&mut s.repo, "victim", b"overwritten?");
    let inner = raw_tree(&mut s.repo, vec![f]);
    let mut x = node("x", NodeKind::Dir);
    x.subtree = Some(inner);
    let root = raw_tree(&mut s.repo, vec![victim, x]);
    let mut snap = s.snapshot.clone();
    snap.tree = root;
    let target = s.root.join("t");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("x")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), target.join("victim")).unwrap();
    let sum = restore(&s, &snap, &target, &NoProgress).unwrap();
    assert!(sum.errors.is_empty(), "{:?}", sum.errors);
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
    assert!(!outside.join("f").exists());
    assert!(target.join("x").symlink_metadata().unwrap().is_dir());
    assert_eq!(std::fs::read(target.join("x/f")).unwrap(), b"new content");
    assert_eq!(
        std::fs::read(target.join("victim")).unwrap(),
        b"overwritten?"
    );
}

/// Runs `act` once, when the operation reports `after`: the attacker's
/// move, made at a deterministic moment.
struct OnceAt {
    /// The entry reported; `None`: the first bytes written.
    after: Option<PathBuf>,
    act: Box<dyn Fn() + Send + Sync>,
    done: Mutex<bool>,
}

impl OnceAt {
    fn new(after: PathBuf, act: impl Fn() + Send + Sync + 'static) -> Self {
        OnceAt {
            after: Some(after),
            act: Box::new(act),
            done: Mutex::new(false),
        }
    }

    /// Runs `act` when the operation reports its first bytes written.
    fn at_first_write(act: impl Fn() + Send + Sync + 'static) -> Self {
        OnceAt {
            after: None,
            act: Box::new(act),
            done: Mutex::new(false),
        }
    }

    fn fire(&self) {
        let mut done = self.done.lock().unwrap();
        if !*done {
            (self.act)();
            *done = true;
        }
    }

    fn ran(&self) -> bool {
        *self.done.lock().unwrap()
    }
}

impl Progress for OnceAt {
    fn entry(&self, path: &Path, _status: EntryStatus) {
        if self.after.as_deref() == Some(path) {
            self.fire();
        }
    }
    fn bytes(&self, n: u64) {
        if self.after.is_none() && n > 0 {
            self.fire();
        }
    }
}

/// The attacker's move: `dir` becomes a symbolic link to `to`.
fn swap_dir_for_link(dir: PathBuf, to: PathBuf) -> impl Fn() + Send + Sync + 'static {
    move || {
        std::fs::rename(&dir, dir.with_extension("moved")).unwrap();
        std::os::unix::fs::symlink(&to, &dir).unwrap();
    }
}

/// A local user swaps a directory inside a non-empty target for a symbolic
/// link while the restore runs (made deterministic: at the moment restore
/// writes its first chunk, with two more files to write in that directory). Nothing is written, created or
/// chmodded outside; the entries behind the swap fail, naming the link.
#[test]
fn a_directory_swapped_for_a_link_mid_restore_is_not_followed() {
    let mut s = setup();
    let outside = s.root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(outside.join("b"), b"victim").unwrap();
    let a = file_node(&mut s.repo, "a", b"first");
    let b = file_node(&mut s.repo, "b", b"second");
    let c = file_node(&mut s.repo, "c", b"third");
    let inner = raw_tree(&mut s.repo, vec![a, b, c]);
    let mut sub = node("sub", NodeKind::Dir);
    sub.subtree = Some(inner);
    sub.mode = 0o777;
    let root = raw_tree(&mut s.repo, vec![sub]);
    let mut snap = s.snapshot.clone();
    snap.tree = root;
    let target = s.root.join("t");
    // Non-empty target: `sub` exists with an older `a` and `b`, so the walk
    // handles them itself, one by one.
    std::fs::create_dir_all(target.join("sub")).unwrap();
    std::fs::write(target.join("sub/a"), b"old").unwrap();
    std::fs::write(target.join("sub/b"), b"old").unwrap();
    let racer = OnceAt::at_first_write(swap_dir_for_link(target.join("sub"), outside.clone()));
    let sum = restore(&s, &snap, &target, &racer).unwrap();
    assert!(racer.ran(), "the race never ran");
    assert_eq!(std::fs::read(outside.join("b")).unwrap(), b"victim");
    assert!(!outside.join("c").exists());
    let mode = std::fs::metadata(&outside).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the outside directory was chmodded");
    assert!(
        sum.errors
            .iter()
            .any(|(_, e)| e.contains("symbolic link") || e.contains("replaced")),
        "{:?}",
        sum.errors
    );
}

/// A file swapped for a symbolic link between listing and opening: the
/// link's target is never stored under the file's name. A file swapped for a
/// FIFO: the backup does not hang. Both are recorded as errors. Made
/// deterministic: the swap happens when the backup reports the directory's
/// first file, and 200 files come before the swapped ones (beyond the
/// read-ahead, which opens at most 128 files ahead).
#[test]
fn files_swapped_during_backup_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path().join("repo")));
    let mut repo = Repository::init(storage, b"pw", &fast_init()).unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..200 {
        std::fs::write(src.join(format!("f{i:03}")), format!("file {i}")).unwrap();
    }
    std::fs::write(src.join("x-fifo"), b"original fifo").unwrap();
    std::fs::write(src.join("x-link"), b"original link").unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"SECRET").unwrap();
    // At the first file: one listed file becomes a symbolic link to the
    // secret, another a FIFO.
    let (link, fifo, to) = (src.join("x-link"), src.join("x-fifo"), secret.clone());
    let swapper = Arc::new(OnceAt::new(src.join("f000"), move || {
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&to, &link).unwrap();
        std::fs::remove_file(&fifo).unwrap();
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    }));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (swapper, src) = (swapper.clone(), src.clone());
        // A thread of its own: a FIFO opened for reading would block it
        // forever, and the test must fail instead of hanging.
        std::thread::spawn(move || {
            let r = crate::baton::backup(
                &mut repo,
                &BackupOptions {
                    paths: vec![src],
                    ..Default::default()
                },
                None,
                &*swapper,
                &Cancel::new(),
            );
            let _ = tx.send((repo, r.map(|_| ())));
        });
    }
    let (mut repo, result) = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the backup hung on the FIFO");
    result.unwrap();
    assert!(swapper.ran(), "the swap never ran");
    repo.load_index().unwrap();
    let (_, snap) = repo.find_snapshot("latest").unwrap();
    let errors = &snap.summary.as_ref().unwrap().errors;
    let named = |n: &str| errors.iter().any(|e| e.path.ends_with(n));
    assert!(named("x-link"), "{errors:?}");
    assert!(named("x-fifo"), "{errors:?}");
    let sub = src.to_str().unwrap();
    let (_, tree) = crate::baton::find_node(&repo, &snap.tree, sub).unwrap();
    let t = repo.read_tree(&tree.unwrap()).unwrap();
    for n in &t.nodes {
        for c in &n.content {
            assert_ne!(repo.load_blob(c).unwrap(), b"SECRET", "{:?}", n.name);
        }
    }
    assert!(t.find(b"x-link").is_none());
    assert!(t.find(b"x-fifo").is_none());
}

/// Runs a second backup of the same paths from inside the first one (at its
/// first file), through another handle of the repository.
struct Nested {
    after: PathBuf,
    storage: Arc<LocalStorage>,
    src: PathBuf,
    second: Mutex<Option<crate::baton::BackupResult>>,
}

impl Progress for Nested {
    fn entry(&self, path: &Path, _status: EntryStatus) {
        let mut second = self.second.lock().unwrap();
        if second.is_none() && path == self.after {
            let mut repo = Repository::open(self.storage.clone(), b"pw").unwrap();
            let r = crate::baton::backup(
                &mut repo,
                &BackupOptions {
                    paths: vec![self.src.clone()],
                    ..Default::default()
                },
                None,
                &NoProgress,
                &Cancel::new(),
            )
            .unwrap();
            *second = Some(r);
        }
    }
}

/// A second backup of the same paths while the first still runs does not
/// "resume" the first one's job (both would write the same data): the live
/// job is claimed in its lock. Both finish, neither resumed anything.
#[test]
fn a_live_job_is_never_resumed_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path().join("repo")));
    let mut repo = Repository::init(storage.clone(), b"pw", &fast_init()).unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..20 {
        std::fs::write(src.join(format!("f{i:02}")), format!("file {i}")).unwrap();
    }
    let nested = Nested {
        after: src.join("f00"),
        storage: storage.clone(),
        src: src.clone(),
        second: Mutex::new(None),
    };
    let first = crate::baton::backup(
        &mut repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
        None,
        &nested,
        &Cancel::new(),
    )
    .unwrap();
    let second = nested
        .second
        .lock()
        .unwrap()
        .take()
        .expect("the second backup ran");
    assert!(first.summary().resumed_job.is_none());
    assert!(
        second.summary().resumed_job.is_none(),
        "the second backup resumed the live job {:?}",
        second.summary().resumed_job
    );
    assert_ne!(first.snapshot.job, second.snapshot.job);
    assert_eq!(repo.list_snapshots().unwrap().len(), 2);
}

/// A lock dated in the future (planted, or from a clock far ahead) goes
/// stale like any other: it does not block an exclusive operation forever.
#[test]
fn a_lock_dated_in_the_future_is_stale() {
    let info = crate::baton::LockInfo {
        time: "2999-01-01T00:00:00Z".into(),
        exclusive: true,
        hostname: "elsewhere".into(),
        username: "u".into(),
        pid: 1,
        job: None,
        boot_id: None,
        machine: None,
        pid_ns: None,
    };
    assert!(info.is_stale());
    let garbage = crate::baton::LockInfo {
        time: "not a time".into(),
        ..info.clone()
    };
    assert!(garbage.is_stale());
    let now = crate::baton::LockInfo {
        time: humantime::format_rfc3339(std::time::SystemTime::now()).to_string(),
        ..info
    };
    assert!(!now.is_stale());
}

/// `check` reports a file whose chunks do not add up to its recorded size.
#[test]
fn check_reports_a_file_whose_chunks_do_not_add_up() {
    let mut s = setup();
    let mut f = file_node(&mut s.repo, "f", b"four");
    f.size = 1 << 20;
    let root = raw_tree(&mut s.repo, vec![f]);
    let mut snap = s.snapshot.clone();
    snap.tree = root;
    s.repo.save_snapshot(&snap).unwrap();
    let report = crate::baton::check(
        &s.repo,
        &crate::baton::CheckOptions::default(),
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.message.contains("chunks hold 4")),
        "{:?}",
        report.problems
    );
}

/// Aborts `cancel` the way the lock watcher does, at the first entry.
struct LoseLock {
    cancel: Cancel,
}

impl Progress for LoseLock {
    fn entry(&self, _path: &Path, _status: EntryStatus) {
        self.cancel
            .abort("lost the repository lock: it could not be refreshed");
    }
}

/// A lost lock stops a restore as a whole (typed, so a director can tell it
/// from a failed file), instead of being reported as one failed entry.
#[test]
fn a_lost_lock_stops_a_restore() {
    let mut s = setup();
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let mut f = node(name, NodeKind::Fifo);
        f.mode = 0o644;
        nodes.push(f);
    }
    let root = raw_tree(&mut s.repo, nodes);
    let mut snap = s.snapshot.clone();
    snap.tree = root;
    let cancel = Cancel::new();
    let progress = LoseLock {
        cancel: cancel.clone(),
    };
    let target = s.root.join("t");
    let err = crate::baton::restore(
        &s.repo,
        &snap,
        None,
        &target,
        &RestoreOptions::default(),
        &progress,
        &cancel,
    )
    .unwrap_err();
    assert!(matches!(err, RepoError::LockLost(_)), "{err:?}");
    assert_eq!(err.class(), crate::baton::ErrorClass::AlertHuman);
    assert_eq!(
        RepoError::Locked { holder: "x".into() }.class(),
        crate::baton::ErrorClass::RetryLater
    );
    assert_eq!(
        RepoError::Invalid("bad".into()).class(),
        crate::baton::ErrorClass::UserError
    );
    assert_eq!(
        RepoError::Cancelled.class(),
        crate::baton::ErrorClass::Cancelled
    );
}

/// A hard link planted in a non-empty target (to a file outside it) is
/// never written through, chowned or chmodded: the name is replaced.
#[test]
fn a_hard_link_planted_in_the_target_is_replaced_not_written_through() {
    let mut s = setup();
    let outside = s.root.join("outside-file");
    std::fs::write(&outside, b"precious").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    let f = file_node(&mut s.repo, "notes.txt", b"attacker's content");
    let root = raw_tree(&mut s.repo, vec![f]);
    let mut snap = s.snapshot.clone();
    snap.tree = root;
    let target = s.root.join("t");
    std::fs::create_dir(&target).unwrap();
    std::fs::hard_link(&outside, target.join("notes.txt")).unwrap();
    let sum = restore(&s, &snap, &target, &NoProgress).unwrap();
    assert!(sum.errors.is_empty(), "{:?}", sum.errors);
    assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
    let mode = std::fs::metadata(&outside).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::read(target.join("notes.txt")).unwrap(),
        b"attacker's content"
    );
}

/// Files the snapshot itself hard-links may have other links, so the link
/// count cannot tell a planted link from the snapshot's own. A local user
/// swaps the first name of a hard-linked pair for a link to a file outside
/// the target after restore created it (made deterministic: when restore
/// reports the file between the pair's two names). Neither the content nor
/// the mode of the outside file changes, and the second name is not left
/// linked to it.
#[test]
fn a_hard_linked_file_swapped_mid_restore_is_not_written_through() {
    let mut s = setup();
    let outside = s.root.join("outside-file");
    std::fs::write(&outside, b"precious").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut h1 = file_node(&mut s.repo, "h1", b"attacker's content");
    (h1.links, h1.device_id, h1.inode, h1.mode) = (2, 7, 42, 0o4777);
    let mut h2 = h1.clone();
    h2.name = FsName::from("z2");
    let m = node("m", NodeKind::File);
    let root = raw_tree(&mut s.repo, vec![h1, m, h2]);
    let mut snap = s.snapshot.clone();
    snap.tree = root;
    let target = s.root.join("t");
    // Non-empty target: the walk handles each entry itself.
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("m"), b"old").unwrap();
    let (name, to) = (target.join("h1"), outside.clone());
    let racer = OnceAt::new(target.join("m"), move || {
        std::fs::remove_file(&name).unwrap();
        std::fs::hard_link(&to, &name).unwrap();
    });
    let sum = restore(&s, &snap, &target, &racer).unwrap();
    assert!(racer.ran(), "the race never ran");
    assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
    let mode = std::fs::metadata(&outside).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "the outside file was chmodded");
    assert!(
        !target.join("z2").exists() || std::fs::read(target.join("z2")).unwrap() != b"precious",
        "the second name was linked to the outside file"
    );
    assert!(
        sum.errors
            .iter()
            .any(|(_, e)| e.contains("no longer the one")),
        "{:?}",
        sum.errors
    );
}

/// A hard-linked pair restored without interference: both names are one
/// inode with the content and mode of the snapshot, also when an earlier,
/// interrupted restore left the first name behind.
#[test]
fn hard_linked_files_are_restored_as_one_inode() {
    use std::os::unix::fs::MetadataExt;
    let mut s = setup();
    let mut h1 = file_node(&mut s.repo, "h1", b"shared content");
    (h1.links, h1.device_id, h1.inode, h1.mode) = (2, 7, 42, 0o640);
    let mut h2 = h1.clone();
    h2.name = FsName::from("h2");
    let root = raw_tree(&mut s.repo, vec![h1, h2]);
    let mut snap = s.snapshot.clone();
    snap.tree = root;
    for pre in [false, true] {
        let target = s.root.join(format!("t{pre}"));
        if pre {
            std::fs::create_dir(&target).unwrap();
            std::fs::write(target.join("h1"), b"shared").unwrap();
        }
        let sum = restore(&s, &snap, &target, &NoProgress).unwrap();
        assert!(sum.errors.is_empty(), "{:?}", sum.errors);
        let (a, b) = (
            std::fs::metadata(target.join("h1")).unwrap(),
            std::fs::metadata(target.join("h2")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.nlink(), 2);
        assert_eq!(a.mode() & 0o7777, 0o640);
        assert_eq!(std::fs::read(target.join("h2")).unwrap(), b"shared content");
    }
}

/// A subdirectory swapped for a symbolic link to another directory after
/// it was listed (files are read before subdirectories are entered): the
/// other directory's contents are never stored under its name.
#[test]
fn a_directory_swapped_during_backup_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path().join("repo")));
    let mut repo = Repository::init(storage, b"pw", &fast_init()).unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("zzz")).unwrap();
    std::fs::write(src.join("a"), b"first").unwrap();
    std::fs::write(src.join("zzz/own"), b"mine").unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("key"), b"SECRET").unwrap();
    let swapper = OnceAt::new(
        src.join("a"),
        swap_dir_for_link(src.join("zzz"), secret.clone()),
    );
    let r = crate::baton::backup(
        &mut repo,
        &BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        },
        None,
        &swapper,
        &Cancel::new(),
    )
    .unwrap();
    assert!(swapper.ran(), "the swap never ran");
    repo.load_index().unwrap();
    let sub = format!("{}/zzz", src.display());
    let (_, tree) = crate::baton::find_node(&repo, &r.snapshot.tree, &sub).unwrap();
    if let Some(t) = tree {
        let t = repo.read_tree(&t).unwrap();
        assert!(t.find(b"key").is_none(), "the other directory was stored");
    }
    let errors = &r.snapshot.summary.as_ref().unwrap().errors;
    assert!(errors.iter().any(|e| e.path.ends_with("zzz")), "{errors:?}");
}

/// The exponential tree with a lost chunk at its bottom: `check` still
/// finishes (naming what is affected stops at a bound) and `repair
/// snapshots` refuses instead of walking 2^41 trees.
#[test]
fn check_and_repair_stop_on_an_exponential_tree() {
    let mut s = setup();
    let mut f = node("f", NodeKind::File);
    f.size = 1;
    f.content = vec![Id::from_bytes([9; 32])]; // in no pack
    let mut t = raw_tree(&mut s.repo, vec![f]);
    for _ in 0..41 {
        let mut a = node("a", NodeKind::Dir);
        a.subtree = Some(t);
        let mut b = node("b", NodeKind::Dir);
        b.subtree = Some(t);
        t = raw_tree(&mut s.repo, vec![a, b]);
    }
    let mut snap = s.snapshot.clone();
    snap.tree = t;
    s.repo.save_snapshot(&snap).unwrap();
    let report = crate::baton::check(
        &s.repo,
        &crate::baton::CheckOptions::default(),
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    assert!(report.errors > 0);
    let err = crate::baton::repair_snapshots(
        &mut s.repo,
        &crate::baton::RepairSnapshotsOptions::default(),
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap_err();
    assert!(matches!(err, RepoError::Damaged(_)), "{err}");
}

/// An append-only key may add objects, never remove data. An index object
/// it writes claiming to supersede every real one (listing no packs) would
/// hide all data from restore and from prune; the claim is ignored because
/// the packs it would hide still exist. It also marks every copy damaged:
/// backups then store fresh copies, but reads still try the only copy
/// (authenticated, so a really damaged one fails). A full key's restore and
/// prune then work as before.
#[test]
fn an_append_only_key_cannot_hide_data_by_superseding_the_index() {
    let s = setup();
    let all: Vec<(Id, Id)> = s.repo.index().iter().map(|(id, l)| (l.pack, *id)).collect();
    let storage = s.repo.storage().clone();
    s.repo
        .add_key_with(b"ao", &crate::baton::kdf_params(8192, 1), true)
        .unwrap();
    let ao = Repository::open(storage.clone(), b"ao").unwrap();
    assert!(ao.is_append_only());
    let real: Vec<Id> = storage
        .list(baton_storage::ObjectKind::Index)
        .unwrap()
        .iter()
        .map(|o| Id::from_hex(&o.name).unwrap())
        .collect();
    assert!(!real.is_empty());
    let claim = baton_format::index::IndexFile {
        supersedes: real,
        packs: Vec::new(),
        damaged: all,
    };
    ao.save_object(baton_storage::ObjectKind::Index, &claim.encode())
        .unwrap();
    let mut repo = Repository::open(storage, b"pw").unwrap();
    repo.load_index().unwrap();
    let sum = restore_from(&repo, &s.snapshot, &s.root.join("t"), &NoProgress).unwrap();
    assert!(sum.errors.is_empty(), "{:?}", sum.errors);
    let opts = crate::baton::PruneOptions {
        max_unused: crate::baton::MaxUnused::Percent(0.0),
        ..Default::default()
    };
    crate::baton::prune(&mut repo, &opts, &NoProgress).unwrap();
    repo.load_index().unwrap();
    let again = s.root.join("t2");
    let sum = restore_from(&repo, &s.snapshot, &again, &NoProgress).unwrap();
    assert!(sum.errors.is_empty(), "{:?}", sum.errors);
    let file = std::fs::read_dir(&again).unwrap().count();
    assert!(file > 0);
}

/// A target others may write to (mode 0777, no sticky bit): a local user
/// plants a file of their own where the restore is about to create one
/// (made deterministic: when the restore writes its first chunk, into the
/// file before it). The restore never writes into the planted file (whose
/// owner could read what a root restore puts there): that file fails,
/// and the planted file keeps its content.
#[test]
fn a_file_planted_where_restore_creates_one_is_not_written_through() {
    let mut s = setup();
    // One pack, `a` first: one worker writes `a`, then `b`.
    let [a, b] = file_nodes(
        &mut s.repo,
        [("a", b"first"), ("b", b"secret of the snapshot")],
    );
    let root = raw_tree(&mut s.repo, vec![a, b]);
    let mut snap = s.snapshot.clone();
    snap.tree = root;
    let target = s.root.join("t");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777)).unwrap();
    let planted = target.join("b");
    let at = planted.clone();
    let racer = OnceAt::at_first_write(move || std::fs::write(&at, b"planted").unwrap());
    let sum = restore(&s, &snap, &target, &racer).unwrap();
    assert!(racer.ran(), "the race never ran");
    assert_eq!(std::fs::read(&planted).unwrap(), b"planted");
    assert_eq!(std::fs::read(target.join("a")).unwrap(), b"first");
    assert!(
        sum.errors
            .iter()
            .any(|(p, e)| p.ends_with("/b") && e.contains("appeared")),
        "{:?}",
        sum.errors
    );
}

/// A directory the restore made inside a target others may write to is
/// not trusted to stay the restore's own: a local user moves it away and
/// puts their own, empty directory at its name (at the restore's first
/// write, into the directory's first file). Nothing the restore writes
/// afterwards goes into that directory, and the directory is not given the
/// snapshot's owner or mode.
#[test]
fn a_directory_replaced_after_restore_made_it_is_not_written_into() {
    let mut s = setup();
    let [x, y] = file_nodes(
        &mut s.repo,
        [("x", b"first"), ("y", b"secret of the snapshot")],
    );
    let inner = raw_tree(&mut s.repo, vec![x, y]);
    let mut d = node("d", NodeKind::Dir);
    d.subtree = Some(inner);
    d.mode = 0o700;
    let root = raw_tree(&mut s.repo, vec![d]);
    let mut snap = s.snapshot.clone();
    snap.tree = root;
    let target = s.root.join("t");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = target.join("d");
    let at = dir.clone();
    let racer = OnceAt::at_first_write(move || {
        std::fs::rename(&at, at.with_extension("moved")).unwrap();
        std::fs::create_dir(&at).unwrap();
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o777)).unwrap();
    });
    let sum = restore(&s, &snap, &target, &racer).unwrap();
    assert!(racer.ran(), "the race never ran");
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "the restore wrote into the swapped-in directory"
    );
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o777, "the swapped-in directory was chmodded");
    assert!(
        sum.errors
            .iter()
            .any(|(_, e)| e.contains("no longer the one")),
        "{:?}",
        sum.errors
    );
}

/// Where others can write, a file of another user's found where the
/// snapshot has a file (the user holds it open, and for `if-changed` gave it
/// the snapshot's size and mtime, to be trusted and given a setuid mode) is
/// replaced: the inode they hold gets neither the content nor the owner or
/// mode of the snapshot's file.
#[test]
fn a_file_of_another_user_in_the_target_is_replaced_not_reused() {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (to own a file as another user)");
        return;
    }
    let mut s = setup();
    let [b, c] = file_nodes(
        &mut s.repo,
        [("b", b"secret of the snapshot"), ("c", b"setuid program")],
    );
    let mut c = c;
    c.mode = 0o4755;
    c.mtime_ns = 1_000_000_000;
    let root = raw_tree(&mut s.repo, vec![b, c]);
    let mut snap = s.snapshot.clone();
    snap.tree = root;
    for policy in [
        crate::baton::Overwrite::Always,
        crate::baton::Overwrite::IfChanged,
    ] {
        let target = s.root.join(format!("t-{policy:?}"));
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut held = Vec::new();
        for (name, content) in [
            ("b", &b"planted, as long as the secret"[..]),
            ("c", b"attacker's tool"),
        ] {
            let p = target.join(name);
            std::fs::write(&p, content).unwrap();
            // `c` looks finished: the snapshot's size and mtime.
            if name == "c" {
                std::fs::File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(14)
                    .unwrap();
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1);
                std::fs::File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(t)
                    .unwrap();
            }
            std::os::unix::fs::chown(&p, Some(4321), Some(4321)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
            held.push(std::fs::File::open(&p).unwrap());
        }
        let sum = crate::baton::restore(
            &s.repo,
            &snap,
            None,
            &target,
            &RestoreOptions {
                overwrite: policy,
                ..Default::default()
            },
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
        assert!(sum.errors.is_empty(), "{policy:?}: {:?}", sum.errors);
        for f in &held {
            let m = f.metadata().unwrap();
            assert_eq!((m.uid(), m.mode() & 0o7777), (4321, 0o666), "{policy:?}");
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut &*f, &mut got).unwrap();
            assert!(
                !got.starts_with(b"secret") && !got.starts_with(b"setuid"),
                "{policy:?}"
            );
        }
        assert_eq!(
            std::fs::read(target.join("b")).unwrap(),
            b"secret of the snapshot"
        );
        assert_eq!(std::fs::read(target.join("c")).unwrap(), b"setuid program");
    }
}

/// A file found in the target (an interrupted restore's) is verified in
/// place, then written: a local user swaps it for a file of their own in
/// between (at the restore's first write, into the file before it). The
/// swapped-in file is neither written nor chmodded; that file fails.
#[test]
fn a_file_swapped_between_verify_and_write_is_not_written_through() {
    let mut s = setup();
    // One pack, `a` first: one worker writes `a`, then `b`.
    let [a, b] = file_nodes(
        &mut s.repo,
        [("a", b"first"), ("b", b"secret of the snapshot")],
    );
    let root = raw_tree(&mut s.repo, vec![a, b]);
    let mut snap = s.snapshot.clone();
    snap.tree = root;
    let target = s.root.join("t");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(target.join("a"), b"old a").unwrap();
    std::fs::write(target.join("b"), b"old b, as long as the snapshot's").unwrap();
    let name = target.join("b");
    let at = name.clone();
    let racer = OnceAt::at_first_write(move || {
        std::fs::rename(&at, at.with_extension("moved")).unwrap();
        std::fs::write(&at, b"the attacker's own file").unwrap();
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o666)).unwrap();
    });
    let sum = restore(&s, &snap, &target, &racer).unwrap();
    assert!(racer.ran(), "the race never ran");
    assert_eq!(std::fs::read(&name).unwrap(), b"the attacker's own file");
    let mode = std::fs::metadata(&name).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666, "the swapped-in file was chmodded");
    assert_eq!(std::fs::read(target.join("a")).unwrap(), b"first");
    assert!(
        sum.errors
            .iter()
            .any(|(p, e)| p.ends_with("/b") && e.contains("no longer the one")),
        "{:?}",
        sum.errors
    );
}

/// A directory another user made in advance where the snapshot has one
/// (in a target others can write to) is not restored into, nor given the
/// snapshot's owner and mode at the end: they could read and swap what the
/// restore puts there.
#[test]
fn a_directory_of_another_user_is_not_restored_into() {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (to own a directory as another user)");
        return;
    }
    let mut s = setup();
    let [x] = file_nodes(&mut s.repo, [("x", b"secret of the snapshot")]);
    let inner = raw_tree(&mut s.repo, vec![x]);
    let mut d = node("d", NodeKind::Dir);
    d.subtree = Some(inner);
    d.mode = 0o700;
    let root = raw_tree(&mut s.repo, vec![d]);
    let mut snap = s.snapshot.clone();
    snap.tree = root;
    let target = s.root.join("t");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = target.join("d");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(4321), Some(4321)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sum = restore(&s, &snap, &target, &NoProgress).unwrap();
    assert!(
        !dir.join("x").exists(),
        "restored into another user's directory"
    );
    let m = std::fs::metadata(&dir).unwrap();
    assert_eq!(
        (m.uid(), m.mode() & 0o7777),
        (4321, 0o777),
        "chowned or chmodded"
    );
    assert!(
        sum.errors
            .iter()
            .any(|(_, e)| e.contains("owned by another user")),
        "{:?}",
        sum.errors
    );
}

/// An empty file where the target has something else (a symbolic link, a
/// directory) replaces it, as any file does.
#[test]
fn an_empty_file_replaces_what_is_in_its_way() {
    let mut s = setup();
    let mut e1 = node("e1", NodeKind::File);
    e1.mode = 0o640;
    let mut e2 = e1.clone();
    e2.name = FsName::from("e2");
    let root = raw_tree(&mut s.repo, vec![e1, e2]);
    let mut snap = s.snapshot.clone();
    snap.tree = root;
    let target = s.root.join("t");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", target.join("e1")).unwrap();
    std::fs::create_dir(target.join("e2")).unwrap();
    let sum = restore(&s, &snap, &target, &NoProgress).unwrap();
    assert!(sum.errors.is_empty(), "{:?}", sum.errors);
    for n in ["e1", "e2"] {
        let m = std::fs::symlink_metadata(target.join(n)).unwrap();
        assert!(m.is_file() && m.len() == 0, "{n}");
        assert_eq!(m.permissions().mode() & 0o777, 0o640, "{n}");
    }
}
