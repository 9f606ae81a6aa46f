//! Tests of the generator and of the comparison, including that the
//! comparison notices each kind of change (it must be able to fail).

use std::ffi::OsString;
use std::fs::{self, OpenOptions, Permissions};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;

use super::*;

/// A temporary directory removed with [`remove_tree`] (read-only dirs inside).
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Scratch {
        Scratch(
            tempfile::Builder::new()
                .prefix("baton-testing-")
                .tempdir()
                .unwrap(),
        )
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = remove_tree(self.0.path());
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn cp_a(src: &Path, dst: &Path, extra: &[&str]) {
    let out = Command::new("cp")
        .arg("-a")
        .args(extra)
        .arg(src)
        .arg(dst)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn small_opts(seed: u64) -> GenOptions {
    GenOptions {
        seed,
        small_files: 60,
        medium_files: 4,
        sparse_file_size: 32 << 20,
        ..GenOptions::default()
    }
}

fn times_of(p: &Path) -> (TimeSpec, TimeSpec) {
    let m = fs::symlink_metadata(p).unwrap();
    (
        TimeSpec::new(m.atime(), m.atime_nsec()),
        TimeSpec::new(m.mtime(), m.mtime_nsec()),
    )
}

fn set_times(p: &Path, (atime, mtime): (TimeSpec, TimeSpec)) {
    utimensat(AT_FDCWD, p, &atime, &mtime, UtimensatFlags::NoFollowSymlink).unwrap();
}

fn raw(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.to_vec()))
}

#[test]
fn generated_tree_has_every_kind_of_entry() {
    let s = Scratch::new();
    let root = s.path("src");
    let m = generate_tree(&root, &GenOptions::default()).unwrap();
    assert!(m.files >= 300 && m.dirs > 40 && m.symlinks >= 12, "{m:?}");
    assert_eq!(m.bytes, dir_size(&root));
    assert!(m.bytes < 40 << 20, "tree too large: {}", m.bytes);
    if is_root() {
        assert!(m.notes.is_empty(), "{:?}", m.notes);
    }

    let lmeta = |rel: &Path| fs::symlink_metadata(root.join(rel)).unwrap();
    let meta = |rel: &str| lmeta(Path::new(rel));
    // Odd names.
    for n in [
        b"names/line\nbreak".as_slice(),
        "names/naïve ☃ file".as_bytes(),
        b"names/-rf",
        b"names/\xff\xfe raw bytes",
    ] {
        assert!(lmeta(&raw(n)).is_file());
    }
    let long = fs::read_dir(root.join("names"))
        .unwrap()
        .map(|e| e.unwrap().file_name());
    assert_eq!(long.filter(|n| n.len() == 255).count(), 2);
    // Deep nesting.
    let deep: PathBuf = (1..=12).map(|l| format!("level-{l:02}")).collect();
    assert!(
        meta("deep").is_dir() && lmeta(&Path::new("deep").join(deep).join("bottom.txt")).is_file()
    );
    // Hard links and symlinks.
    assert_eq!(meta("hardlinks/c/three").nlink(), 3);
    assert_eq!(
        meta("hardlinks/a/one").ino(),
        meta("hardlinks/c/three").ino()
    );
    assert_eq!(
        meta("hardlinks/pair-1").ino(),
        meta("hardlinks/pair-2").ino()
    );
    assert!(meta("links/dir-link").file_type().is_symlink());
    assert_eq!(
        fs::read_link(root.join("links/rel-file")).unwrap(),
        Path::new("target.txt")
    );
    // Permissions (applied after chown, so setuid survives).
    assert_eq!(meta("perms/dir-0500").mode() & 0o7777, 0o500);
    assert!(meta("perms/dir-0500/inside-1").is_file());
    assert_eq!(meta("perms/setuid").mode() & 0o7777, 0o4755);
    assert_eq!(meta("perms/sticky-dir").mode() & 0o7777, 0o1777);
    assert_eq!(meta("owners/setuid-1234").mode() & 0o7777, 0o4750);
    assert!(meta("special/fifo").file_type().is_fifo());
    if is_root() {
        assert_eq!(meta("owners/uid-1234").uid(), 1234);
        assert_eq!(meta("owners/uid-1234").gid(), 5678);
        assert_eq!(meta("owners/setuid-1234").uid(), 1234);
        assert_eq!(meta("owners/link-4321").uid(), 4321);
        assert_eq!(meta("special/null").rdev(), makedev(1, 3));
        assert_eq!(meta("special/loop200").rdev(), makedev(7, 200));
    }
    if !m.notes.iter().any(|n| n.contains("xattr")) {
        let get = |rel: &str, k: &str| xattr::get(root.join(rel), k).unwrap();
        assert_eq!(get("xattrs/plain", "user.comment").unwrap(), b"hello world");
        assert_eq!(
            get("xattrs/dir", "user.dir").unwrap(),
            b"directory attribute"
        );
        assert_eq!(
            get("hardlinks/b/two", "user.link").unwrap(),
            b"group of three"
        );
    }
    // Explicit times with non-zero nanoseconds everywhere, dirs included.
    assert_eq!(meta("times/pre-epoch").mtime(), -999_999_000);
    for (rel, md) in walk::scan(&root).unwrap() {
        assert_ne!(md.mtime_nsec(), 0, "{}", rel.display());
        assert_ne!(md.atime_nsec(), 0, "{}", rel.display());
    }
    assert_eq!(
        compare_trees(
            &root,
            &root,
            &CompareOptions {
                atime: true,
                ..Default::default()
            }
        ),
        Ok(m.entries)
    );
    assert_eq!(tree_listing(&root).len(), m.entries);
    assert!(tree_listing(&root).contains(&"links/rel-file symlink 10 -> target.txt".to_string()));
}

#[test]
fn same_seed_gives_same_tree_and_atime_is_optional() {
    let s = Scratch::new();
    let (a, b, c) = (s.path("a"), s.path("b"), s.path("c"));
    let m = generate_tree(&a, &small_opts(7)).unwrap();
    assert_eq!(generate_tree(&b, &small_opts(7)).unwrap(), m);
    generate_tree(&c, &small_opts(8)).unwrap();
    let with_atime = CompareOptions {
        atime: true,
        ..Default::default()
    };
    assert_eq!(compare_trees(&a, &b, &with_atime), Ok(m.entries));
    assert!(compare_trees(&a, &c, &CompareOptions::default()).is_err());
    assert!(
        generate_tree(&a, &small_opts(7)).is_err(),
        "non-empty root must be refused"
    );

    let p = b.join("xattrs/plain");
    let (atime, mtime) = times_of(&p);
    set_times(
        &p,
        (TimeSpec::new(atime.tv_sec() + 1, atime.tv_nsec()), mtime),
    );
    assert_eq!(
        compare_trees(&a, &b, &CompareOptions::default()),
        Ok(m.entries)
    );
    let diffs = compare_trees(&a, &b, &with_atime).unwrap_err();
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert!(diffs[0].starts_with("xattrs/plain: atime "), "{diffs:?}");
}

#[test]
fn cp_copies_compare_equal_and_unsparse_copy_is_caught() {
    let s = Scratch::new();
    let src = s.path("src");
    let m = generate_tree(&src, &small_opts(3)).unwrap();
    for (name, extra) in [("plain", &[][..]), ("sparse", &["--sparse=always"][..])] {
        let dst = s.path(name);
        cp_a(&src, &dst, extra);
        assert_eq!(
            compare_trees(&src, &dst, &CompareOptions::default()),
            Ok(m.entries),
            "{name}"
        );
    }
    let dst = s.path("dense");
    cp_a(&src, &dst, &["--sparse=never"]);
    let diffs = compare_trees(&src, &dst, &CompareOptions::default()).unwrap_err();
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert!(
        diffs[0].starts_with("sparse/sparse.img: not sparse"),
        "{diffs:?}"
    );
    let lax = CompareOptions {
        sparse: false,
        ..Default::default()
    };
    assert_eq!(compare_trees(&src, &dst, &lax), Ok(m.entries));
}

/// Applies `f` to `rel` in `root`, then puts back the times of `rel` (if it
/// still exists) and of its parent directory, so only the intended change
/// remains.
fn keeping_times(root: &Path, rel: &Path, f: impl FnOnce(&Path)) {
    let (p, parent) = (
        root.join(rel),
        root.join(rel).parent().unwrap().to_path_buf(),
    );
    let (pt, parent_t) = (
        fs::symlink_metadata(&p).ok().map(|_| times_of(&p)),
        times_of(&parent),
    );
    f(&p);
    if let Some(t) = pt.filter(|_| fs::symlink_metadata(&p).is_ok()) {
        set_times(&p, t);
    }
    set_times(&parent, parent_t);
}

type Mutation = Box<dyn Fn(&Path)>;

#[test]
fn each_mutation_is_reported_naming_its_path() {
    let s = Scratch::new();
    let src = s.path("src");
    let opts = GenOptions {
        small_files: 40,
        medium_files: 3,
        ..GenOptions::default()
    };
    let m = generate_tree(&src, &opts).unwrap();
    let xattrs = !m.notes.iter().any(|n| n.contains("xattr"));

    let mut cases: Vec<(&str, PathBuf, &str, Mutation)> = vec![
        (
            "medium-1-random.bin",
            "medium/medium-1-random.bin".into(),
            "content differs at byte 70000",
            Box::new(|p| {
                let f = OpenOptions::new().read(true).write(true).open(p).unwrap();
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, 70000).unwrap();
                f.write_all_at(&[b[0] ^ 1], 70000).unwrap();
            }),
        ),
        (
            "grow a file",
            "names/naïve ☃ file".into(),
            "size ",
            Box::new(|p| {
                let f = OpenOptions::new().write(true).open(p).unwrap();
                f.set_len(f.metadata().unwrap().len() + 1).unwrap();
            }),
        ),
        (
            "chmod",
            "perms/mode-0600".into(),
            "mode 0600 != 0644",
            Box::new(|p| fs::set_permissions(p, Permissions::from_mode(0o644)).unwrap()),
        ),
        (
            "chmod non-UTF-8 name",
            raw(b"names/\xff\xfe raw bytes"),
            "mode 0644 != 0600",
            Box::new(|p| fs::set_permissions(p, Permissions::from_mode(0o600)).unwrap()),
        ),
        (
            "chmod newline name",
            raw(b"names/line\nbreak"),
            "mode 0644 != 0640",
            Box::new(|p| fs::set_permissions(p, Permissions::from_mode(0o640)).unwrap()),
        ),
        (
            "drop setuid",
            "perms/setuid".into(),
            "mode 4755 != 0755",
            Box::new(|p| fs::set_permissions(p, Permissions::from_mode(0o755)).unwrap()),
        ),
        (
            "remove file",
            "empty/empty-file".into(),
            "missing in actual",
            Box::new(|p| fs::remove_file(p).unwrap()),
        ),
        (
            "extra file",
            "empty/empty-dir/new".into(),
            "unexpected extra file",
            Box::new(|p| fs::write(p, b"").unwrap()),
        ),
        (
            "fifo becomes file",
            "special/fifo".into(),
            "type fifo != file",
            Box::new(|p| {
                fs::remove_file(p).unwrap();
                fs::write(p, b"").unwrap();
                fs::set_permissions(p, Permissions::from_mode(0o644)).unwrap();
            }),
        ),
        (
            "break hard link",
            "hardlinks/c/three".into(),
            "hard links differ",
            Box::new(|p| {
                let tmp = p.with_file_name("three.tmp");
                cp_a(p, &tmp, &[]);
                fs::rename(&tmp, p).unwrap();
            }),
        ),
        (
            "retarget symlink",
            "links/rel-file".into(),
            "symlink target target.txt != target.txt2",
            Box::new(|p| {
                fs::remove_file(p).unwrap();
                symlink("target.txt2", p).unwrap();
            }),
        ),
    ];
    if xattrs {
        cases.push((
            "remove xattr",
            "xattrs/plain".into(),
            "xattr user.comment missing",
            Box::new(|p| xattr::remove(p, "user.comment").unwrap()),
        ));
        cases.push((
            "change xattr",
            "xattrs/dir".into(),
            "xattr user.dir value differs",
            Box::new(|p| xattr::set(p, "user.dir", b"changed").unwrap()),
        ));
        cases.push((
            "add xattr",
            "xattrs/binary".into(),
            "unexpected xattr user.extra",
            Box::new(|p| xattr::set(p, "user.extra", b"x").unwrap()),
        ));
    }
    if is_root() {
        cases.push((
            "chown",
            "owners/uid-1234".into(),
            "gid 5678 != 5679",
            Box::new(|p| lchown(p, Some(1234), Some(5679)).unwrap()),
        ));
        cases.push((
            "chown symlink",
            "owners/link-4321".into(),
            "uid 4321 != 0",
            Box::new(|p| lchown(p, Some(0), None).unwrap()),
        ));
        cases.push((
            "rdev",
            "special/null".into(),
            "rdev 1:3 != 1:5",
            Box::new(|p| {
                let (mode, uid, gid) = fs::symlink_metadata(p)
                    .map(|m| (m.mode(), m.uid(), m.gid()))
                    .unwrap();
                fs::remove_file(p).unwrap();
                mknod(
                    p,
                    SFlag::S_IFCHR,
                    Mode::from_bits_truncate(0o600),
                    makedev(1, 5),
                )
                .unwrap();
                lchown(p, Some(uid), Some(gid)).unwrap();
                fs::set_permissions(p, Permissions::from_mode(mode & 0o7777)).unwrap();
            }),
        ));
    }
    // Time changes are applied without `keeping_times`.
    let bump = |p: &Path| {
        let (a, m) = times_of(p);
        set_times(
            p,
            (
                a,
                TimeSpec::new(m.tv_sec(), (m.tv_nsec() + 1) % 1_000_000_000),
            ),
        );
    };
    let time_cases: [(&str, &str); 3] = [
        ("mtime of a file", "xattrs/plain"),
        ("mtime of a dir", "empty/empty-dir"),
        ("mtime of a symlink", "links/dangling"),
    ];

    for (i, (what, rel, expect, f)) in cases.into_iter().enumerate() {
        let dst = s.path(&format!("copy-{i}"));
        cp_a(&src, &dst, &[]);
        keeping_times(&dst, &rel, f);
        check(&src, &dst, &rel, what, expect);
        remove_tree(&dst).unwrap();
    }
    for (i, (what, rel)) in time_cases.into_iter().enumerate() {
        let dst = s.path(&format!("time-{i}"));
        cp_a(&src, &dst, &[]);
        bump(&dst.join(rel));
        check(&src, &dst, Path::new(rel), what, "mtime ");
        remove_tree(&dst).unwrap();
    }
}

/// The copy differs, and every reported difference names `rel`.
fn check(src: &Path, dst: &Path, rel: &Path, what: &str, expect: &str) {
    let shown = escape_path(rel);
    match compare_trees(src, dst, &CompareOptions::default()) {
        Ok(n) => panic!("{what}: change to {shown} not detected ({n} entries compared)"),
        Err(diffs) => {
            assert!(
                diffs.iter().all(|d| d.contains(&shown)),
                "{what}: {diffs:#?}"
            );
            assert!(
                diffs.iter().any(|d| d.contains(expect)),
                "{what}: want {expect:?} in {diffs:#?}"
            );
        }
    }
}

#[test]
fn write_file_is_deterministic_and_missing_trees_are_errors() {
    let s = Scratch::new();
    let (a, b) = (s.path("x/y/a"), s.path("b"));
    write_file(&a, 100_000, 5).unwrap();
    write_file(&b, 100_000, 5).unwrap();
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    assert_eq!(dir_size(&s.path("x")), 100_000);
    write_file(&b, 100_000, 6).unwrap();
    assert_ne!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    let diffs =
        compare_trees(&s.path("x"), &s.path("nope"), &CompareOptions::default()).unwrap_err();
    assert!(diffs[0].contains("cannot read actual tree"), "{diffs:?}");
}

#[test]
fn minimal_options_still_give_a_comparable_tree() {
    let s = Scratch::new();
    let root = s.path("min");
    let opts = GenOptions {
        seed: 1,
        small_files: 0,
        max_depth: 0,
        medium_files: 0,
        sparse_file_size: 100,
        special_files: false,
        xattrs: false,
        ownership: false,
    };
    let m = generate_tree(&root, &opts).unwrap();
    assert!(m.notes.is_empty(), "{:?}", m.notes);
    assert_eq!(m.specials, 0);
    assert!(
        fs::symlink_metadata(root.join("deep/bottom.txt"))
            .unwrap()
            .is_file()
    );
    assert_eq!(
        fs::metadata(root.join("sparse/sparse.img")).unwrap().len(),
        100
    );
    let names = xattr::list(root.join("xattrs/plain")).unwrap();
    assert!(
        !names
            .into_iter()
            .any(|n| n.to_string_lossy().starts_with("user."))
    );
    assert_eq!(
        compare_trees(&root, &root, &CompareOptions::default()),
        Ok(m.entries)
    );
}
