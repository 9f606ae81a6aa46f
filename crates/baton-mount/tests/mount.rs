//! `baton mount` through the kernel: snapshots of a generated tree (every
//! kind of entry, hard links, xattrs, odd names, a sparse file, a
//! multi-chunk file) read back through the mount equal their sources entry
//! by entry; the virtual directories name and group the snapshots; writes
//! are refused; a lost pack fails reads of its files only; stop and an
//! outside unmount end the mount.
//!
//! Needs `/dev/fuse`, `fusermount3` and the right to mount (root): skipped
//! with a message otherwise, unless `BATON_TEST_REQUIRE_NBD=1` (or
//! `BATON_TEST_REQUIRE_FUSE=1`), which makes a missing facility a failure.

use baton_fs::BackupOptions;
use baton_mount::{MountOptions, mount};
use baton_repo::{Cancel, InitOptions, LockGuard, NoProgress, Repository};
use baton_storage::LocalStorage;
use baton_testing::{CompareOptions, GenOptions, Rng, compare_trees, generate_tree, write_file};
use baton_types::{Id, NodeKind, Snapshot};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const EROFS: i32 = 30;
const EACCES: i32 = 13;
const EIO: i32 = 5;

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            fs::metadata(d.join(program)).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
    })
}

/// Whether FUSE can be used here; see the module docs.
fn fuse_available() -> bool {
    let required = ["BATON_TEST_REQUIRE_NBD", "BATON_TEST_REQUIRE_FUSE"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|x| x == "1"));
    let missing = if !Path::new("/dev/fuse").exists() {
        Some("/dev/fuse is missing".to_string())
    } else if !on_path("fusermount3") {
        Some("fusermount3 is not on PATH".to_string())
    } else if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        Some(format!("/dev/fuse cannot be opened: {e}"))
    } else if !nix_is_root() {
        Some("not root: mounting in tests needs root".to_string())
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if required => panic!("FUSE required (BATON_TEST_REQUIRE_NBD=1): {why}"),
        Some(why) => {
            eprintln!("skipped: {why}");
            false
        }
    }
}

fn nix_is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn init_repo(dir: &Path) -> Repository {
    let opts = InitOptions {
        pack_size: 4 << 20,
        kdf: baton_repo::kdf_params(8192, 1),
        ..InitOptions::default()
    };
    Repository::init(Arc::new(LocalStorage::new(dir.join("repo"))), b"pw", &opts).unwrap()
}

fn backup(repo: &mut Repository, src: &Path, host: &str, tags: &[&str], time: &str) -> Id {
    let opts = BackupOptions {
        paths: vec![src.to_path_buf()],
        host: Some(host.into()),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        time: Some(time.into()),
        ..BackupOptions::default()
    };
    let r = baton_fs::backup(repo, &opts, None, &NoProgress, &Cancel::new()).unwrap();
    assert!(r.summary().errors.is_empty(), "{:?}", r.summary().errors);
    r.snapshot_id.unwrap()
}

/// The repository as `baton mount` gets it: opened, locked, indexed.
fn open_repo(dir: &Path) -> (Arc<Repository>, LockGuard, Vec<(Id, Snapshot)>) {
    let mut repo = Repository::open(Arc::new(LocalStorage::new(dir.join("repo"))), b"pw").unwrap();
    let lock = repo.lock(false).unwrap();
    repo.load_index().unwrap();
    let snaps = repo.list_snapshots().unwrap();
    (Arc::new(repo), lock, snaps)
}

fn is_mounted(dir: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let dir = dir.to_str().unwrap();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(dir))
}

/// A mount served by a background thread; unmounted when dropped.
struct Mounted {
    dir: PathBuf,
    stop: Cancel,
    thread: Option<JoinHandle<baton_repo::Result<()>>>,
}

impl Mounted {
    fn start(repo: Arc<Repository>, snaps: Vec<(Id, Snapshot)>, dir: &Path) -> Mounted {
        fs::create_dir_all(dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        let stop = Cancel::new();
        let (d, s) = (dir.clone(), stop.clone());
        let thread =
            std::thread::spawn(move || mount(repo, snaps, &d, &MountOptions::default(), &s));
        let t0 = Instant::now();
        while !is_mounted(&dir) {
            if thread.is_finished() {
                panic!("mount ended at once: {:?}", thread.join().unwrap());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no mount after 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mounted {
            dir,
            stop,
            thread: Some(thread),
        }
    }

    /// Sets `stop` and waits for `mount` to return.
    fn stop(mut self) -> baton_repo::Result<()> {
        self.stop.cancel();
        self.thread.take().unwrap().join().unwrap()
    }

    /// Waits (up to 10 s) for `mount` to return by itself.
    fn wait(mut self) -> baton_repo::Result<()> {
        let t = self.thread.take().unwrap();
        let t0 = Instant::now();
        while !t.is_finished() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "mount did not return"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        t.join().unwrap()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.cancel();
            let _ = t.join();
        }
    }
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn assert_refused(what: &str, r: io::Result<impl std::fmt::Debug>) {
    match r {
        Err(e) if matches!(e.raw_os_error(), Some(EROFS | EACCES)) => {}
        other => panic!("{what}: expected EROFS or EACCES, got {other:?}"),
    }
}

/// The source path inside a snapshot's root tree.
fn rel(src: &Path) -> &Path {
    src.strip_prefix("/").unwrap()
}

fn compare_opts() -> CompareOptions {
    CompareOptions {
        // The mount reports every block of a file as allocated.
        sparse: false,
        ..CompareOptions::default()
    }
}

fn assert_same(src: &Path, mounted: &Path) -> usize {
    match compare_trees(src, mounted, &compare_opts()) {
        Ok(n) => n,
        Err(d) => panic!(
            "{} differs from the source:\n{}",
            mounted.display(),
            d.join("\n")
        ),
    }
}

#[test]
fn snapshots_through_the_kernel_equal_their_sources() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let manifest = generate_tree(
        &src,
        &GenOptions {
            seed: 11,
            small_files: 150,
            sparse_file_size: 24 << 20,
            ..GenOptions::default()
        },
    )
    .unwrap();
    // Many chunks (the chunker's maximum is 8 MiB), and a directory that
    // takes several readdir replies (of up to 32 KiB, glibc's buffer).
    let big = src.join("big/multi-chunk.bin");
    write_file(&big, (9 << 20) + 12_345, 5).unwrap();
    for i in 0..1500 {
        fs::write(
            src.join(format!(
                "big/an-entry-with-a-name-long-enough-to-fill-pages-{i:04}"
            )),
            i.to_string(),
        )
        .unwrap();
    }

    let mut repo = init_repo(dir.path());
    let first = backup(
        &mut repo,
        &src,
        "alpha",
        &["daily", "x"],
        "2026-01-31T14:00:00Z",
    );
    fs::write(src.join("added-later.txt"), b"in the later snapshots only").unwrap();
    let second = backup(
        &mut repo,
        &src,
        "beta",
        &["weekly", "x"],
        "2026-01-31T15:00:00Z",
    );
    let third = backup(&mut repo, &src, "beta", &[], "2026-01-31T15:00:00.5Z");
    drop(repo);

    let (repo, _lock, snaps) = open_repo(dir.path());
    assert_eq!(snaps.len(), 3);
    let m = Mounted::start(repo, snaps, &dir.path().join("mnt"));
    let mnt = m.dir.clone();

    assert_eq!(names(&mnt), set(&["hosts", "ids", "snapshots", "tags"]));
    assert_eq!(fs::metadata(&mnt).unwrap().nlink(), 6);
    let short = |id: &Id| id.short();
    assert_eq!(
        names(&mnt.join("ids")),
        set(&[&short(&first), &short(&second), &short(&third)])
    );

    // The newest snapshot: every entry equals the source.
    let n = assert_same(&src, &mnt.join("ids").join(short(&third)).join(rel(&src)));
    assert_eq!(n, manifest.entries + 1501 + 1 + 1, "entries compared");
    // The first lacks exactly the file added after it.
    let d = compare_trees(
        &src,
        &mnt.join("ids").join(short(&first)).join(rel(&src)),
        &compare_opts(),
    )
    .unwrap_err();
    assert_eq!(d, ["added-later.txt: missing in actual (file)"]);

    // Names by time; the two of one second carry their ids.
    let t1 = "2026-01-31T14:00:00Z".to_string();
    let t2 = format!("2026-01-31T15:00:00Z-{}", short(&second));
    let t3 = format!("2026-01-31T15:00:00Z-{}", short(&third));
    let snapdir = mnt.join("snapshots");
    assert_eq!(names(&snapdir), set(&[&t1, &t2, &t3, "latest"]));
    assert_eq!(
        fs::read_link(snapdir.join("latest")).unwrap(),
        Path::new(&t3)
    );
    assert_eq!(
        fs::read(
            snapdir
                .join("latest")
                .join(rel(&src))
                .join("added-later.txt")
        )
        .unwrap(),
        b"in the later snapshots only"
    );
    assert_same(&src, &snapdir.join(&t2).join(rel(&src)));

    let hosts = mnt.join("hosts");
    assert_eq!(names(&hosts), set(&["alpha", "beta"]));
    assert_eq!(names(&hosts.join("alpha")), set(&[&t1, "latest"]));
    assert_eq!(names(&hosts.join("beta")), set(&[&t2, &t3, "latest"]));
    assert_eq!(
        fs::read_link(hosts.join("alpha/latest")).unwrap(),
        Path::new(&t1)
    );
    assert_eq!(
        fs::read_link(hosts.join("beta/latest")).unwrap(),
        Path::new(&t3)
    );
    let tags = mnt.join("tags");
    assert_eq!(names(&tags), set(&["daily", "weekly", "x"]));
    assert_eq!(names(&tags.join("x")), set(&[&t1, &t2, "latest"]));
    assert_eq!(
        fs::read_link(tags.join("x/latest")).unwrap(),
        Path::new(&t2)
    );
    assert_eq!(
        fs::read_link(tags.join("daily/latest")).unwrap(),
        Path::new(&t1)
    );
    assert_eq!(
        fs::read_link(tags.join("weekly/latest")).unwrap(),
        Path::new(&t2)
    );
    // Snapshot directories are dated by their snapshot.
    let m1 = fs::metadata(snapdir.join(&t1)).unwrap();
    assert_eq!(
        (m1.mtime(), m1.mode() & 0o7777, m1.uid()),
        (1_769_868_000, 0o555, 0)
    );

    // Random reads of the multi-chunk file, across chunk boundaries.
    let via_mount = snapdir.join(&t3).join(rel(&big));
    let (want, got) = (File::open(&big).unwrap(), File::open(&via_mount).unwrap());
    let len = want.metadata().unwrap().len();
    assert_eq!(got.metadata().unwrap().len(), len);
    let mut rng = Rng::new(3);
    for _ in 0..200 {
        let off = rng.below(len + 100);
        let n = rng.range(1, 3 << 20) as usize;
        let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
        let (ra, rb) = (read_full(&want, &mut a, off), read_full(&got, &mut b, off));
        assert_eq!(ra, rb, "read of {n} at {off}: lengths");
        assert!(a[..ra] == b[..rb], "read of {n} at {off}: bytes differ");
    }

    // Nothing can be changed.
    let inside = snapdir.join(&t3).join(rel(&src));
    assert_refused("create", File::create(inside.join("new-file")));
    assert_refused(
        "open for writing",
        OpenOptions::new()
            .write(true)
            .open(inside.join("added-later.txt")),
    );
    assert_refused("mkdir", fs::create_dir(inside.join("new-dir")));
    assert_refused("mkdir at the root", fs::create_dir(mnt.join("new-dir")));
    assert_refused("unlink", fs::remove_file(inside.join("added-later.txt")));
    assert_refused(
        "chmod",
        fs::set_permissions(
            inside.join("added-later.txt"),
            fs::Permissions::from_mode(0o777),
        ),
    );
    assert_refused(
        "rename",
        fs::rename(inside.join("added-later.txt"), inside.join("renamed")),
    );
    assert_refused(
        "symlink",
        std::os::unix::fs::symlink("x", inside.join("new-link")),
    );

    m.stop().unwrap();
    assert!(!is_mounted(&mnt), "still mounted after stop");
    assert!(names(&mnt).is_empty(), "mountpoint not empty after stop");
}

/// Reads up to `buf.len()` bytes at `off` (fewer only at the end).
fn read_full(f: &File, buf: &mut [u8], off: u64) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64).unwrap() {
            0 => break,
            n => done += n,
        }
    }
    done
}

#[test]
fn a_lost_pack_fails_reads_of_its_files_only() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for i in 0..8u64 {
        write_file(&src.join(format!("file-{i}")), 2 << 20, 100 + i).unwrap();
    }
    let mut repo = init_repo(dir.path());
    let id = backup(&mut repo, &src, "h", &[], "2026-02-01T00:00:00Z");
    drop(repo);

    let (repo, _lock, snaps) = open_repo(dir.path());
    let tree = snaps[0].1.tree;
    let packs_of = |name: &str| -> BTreeSet<Id> {
        let path = format!("{}/{name}", src.display());
        let (node, _) = baton_repo::find_node(&repo, &tree, &path).unwrap();
        let node = node.unwrap();
        assert_eq!(node.kind, NodeKind::File);
        node.content
            .iter()
            .map(|c| repo.index().get(c).unwrap().pack)
            .collect()
    };
    let lost = *packs_of("file-0").iter().next().unwrap();
    let pack_file = dir
        .path()
        .join("repo/data")
        .join(&lost.to_hex()[..2])
        .join(lost.to_hex());
    fs::remove_file(&pack_file).unwrap_or_else(|e| panic!("{}: {e}", pack_file.display()));

    let (mut broken, mut intact) = (0, 0);
    let files: Vec<(String, bool)> = (0..8)
        .map(|i| {
            let name = format!("file-{i}");
            let hit = packs_of(&name).contains(&lost);
            (name, hit)
        })
        .collect();
    let m = Mounted::start(repo, snaps, &dir.path().join("mnt"));
    let base = m.dir.join("ids").join(id.short()).join(rel(&src));
    for (name, hit) in &files {
        let r = fs::read(base.join(name));
        if *hit {
            broken += 1;
            let e = r.expect_err(&format!("{name} read despite its lost pack"));
            assert_eq!(e.raw_os_error(), Some(EIO), "{name}: {e}");
        } else {
            intact += 1;
            assert!(
                r.unwrap() == fs::read(src.join(name)).unwrap(),
                "{name} differs"
            );
        }
    }
    assert!(
        broken >= 1 && intact >= 1,
        "{broken} broken, {intact} intact"
    );
    // The failure is not sticky: a second attempt fails again, the others
    // still read.
    assert!(fs::read(base.join("file-0")).is_err());
    m.stop().unwrap();
}

#[test]
fn stop_while_in_use_and_unmount_from_outside() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_file(&src.join("f"), 1000, 1).unwrap();
    let mut repo = init_repo(dir.path());
    let id = backup(&mut repo, &src, "h", &["t"], "2026-02-01T00:00:00Z");
    drop(repo);

    // A file open in the mount: stopping detaches it lazily.
    let (repo, lock, snaps) = open_repo(dir.path());
    let m = Mounted::start(repo.clone(), snaps.clone(), &dir.path().join("mnt"));
    let mnt = m.dir.clone();
    let f = mnt.join("ids").join(id.short()).join(rel(&src)).join("f");
    let open = File::open(&f).unwrap();
    m.stop().unwrap();
    assert!(!is_mounted(&mnt), "still mounted after stop");
    let mut buf = [0u8; 10];
    // The open file still reads until it is closed.
    assert_eq!(open.read_at(&mut buf, 0).unwrap(), 10);
    drop(open);

    // Unmounted from outside: `mount` returns by itself.
    let m = Mounted::start(repo, snaps, &mnt);
    assert_eq!(fs::read(&f).unwrap(), fs::read(src.join("f")).unwrap());
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.wait().unwrap();
    assert!(!is_mounted(&mnt));

    // A stop with a reason (a lost lock) unmounts, then is the error.
    let (repo, _, snaps) = open_repo(dir.path());
    let mut m = Mounted::start(repo, snaps, &mnt);
    m.stop.abort("the repository lock was lost");
    let e = m.thread.take().unwrap().join().unwrap().unwrap_err();
    assert!(matches!(e, baton_repo::RepoError::LockLost(_)), "{e}");
    assert!(!is_mounted(&mnt));
    drop(lock);

    // A mountpoint that is not an empty directory is refused.
    let (repo, _lock, snaps) = open_repo(dir.path());
    let stop = Cancel::new();
    for bad in [src.join("f"), src.clone(), dir.path().join("missing")] {
        let e = mount(
            repo.clone(),
            snaps.clone(),
            &bad,
            &MountOptions::default(),
            &stop,
        )
        .unwrap_err();
        assert!(
            matches!(e, baton_repo::RepoError::Invalid(_)),
            "{}: {e}",
            bad.display()
        );
    }
}

#[test]
fn block_images_read_as_regular_files() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Random runs and holes, not a multiple of the chunk size.
    let size = (5 << 20) + 1234;
    let mut bytes = vec![0u8; size];
    let mut rng = Rng::new(9);
    let mut pos = 0;
    while pos < size {
        let len = (rng.range(1, 300_000) as usize).min(size - pos);
        if rng.chance(50) {
            rng.fill(&mut bytes[pos..pos + len]);
        }
        pos += len + rng.below(200_000) as usize;
    }
    let img = dir.path().join("disk.img");
    fs::write(&img, &bytes).unwrap();
    let mut repo = init_repo(dir.path());
    let opts = baton_block::BlockBackupOptions {
        chunk_size: 64 << 10,
        ..Default::default()
    };
    let r = baton_block::backup_block(
        &mut repo,
        baton_block::BlockSource::Path(img),
        &opts,
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    let id = r.snapshot_id;
    drop(repo);

    let (repo, _lock, snaps) = open_repo(dir.path());
    let m = Mounted::start(repo, snaps, &dir.path().join("mnt"));
    let path = m.dir.join("ids").join(id.short()).join("disk.img");
    let md = fs::metadata(&path).unwrap();
    assert!(md.is_file());
    assert_eq!(md.len(), size as u64);
    assert!(fs::read(&path).unwrap() == bytes, "image bytes differ");
    let f = File::open(&path).unwrap();
    for _ in 0..100 {
        let off = rng.below(size as u64 + 10);
        let mut buf = vec![0u8; rng.range(1, 1 << 20) as usize];
        let n = read_full(&f, &mut buf, off);
        let lo = (off as usize).min(size);
        assert!(
            buf[..n] == bytes[lo..(lo + buf.len()).min(size)],
            "read at {off}"
        );
    }
    drop(f);
    m.stop().unwrap();
}
