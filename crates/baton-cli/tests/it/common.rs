//! A scratch directory with a repository and helpers to run `baton` in it.

use assert_cmd::Command;
use std::path::{Path, PathBuf};

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Env {
    pub dir: tempfile::TempDir,
    /// A directory, or `s3:http://127.0.0.1:PORT/BUCKET/repo` when the
    /// tests run against S3 (see [`s3_mode`]).
    pub repo: PathBuf,
}

/// Whether this run puts every test's repository on S3: the same tests,
/// parameterised by backend (`BATON_TEST_BACKEND=s3`, as `scripts/test-s3.sh`
/// and CI run them, on a real Ceph RADOS Gateway).
pub fn s3_mode() -> bool {
    std::env::var("BATON_TEST_BACKEND").as_deref() == Ok("s3")
}

/// The gateway of S3 mode (started once per test process).
pub fn gateway() -> &'static baton_testing::s3::Gateway {
    baton_testing::s3::gateway().expect("BATON_TEST_BACKEND=s3 needs a gateway")
}

/// The environment a `baton` process needs for this run's backend (the
/// gateway's credentials in S3 mode).
pub fn backend_env() -> Vec<(&'static str, String)> {
    if s3_mode() {
        gateway().env()
    } else {
        Vec::new()
    }
}

/// Copies every object of the repository at `from` into a new one at `to`
/// (either backend): same keys and chunker seed.
pub fn copy_repository(from: &Path, to: &Path) {
    let (src, dst) = (storage(from), storage(to));
    dst.create().unwrap();
    for kind in baton_storage::ObjectKind::ALL {
        for o in src.list(kind).unwrap() {
            let name = if kind == baton_storage::ObjectKind::Config {
                ""
            } else {
                &o.name
            };
            dst.put(kind, name, &src.get(kind, name).unwrap()).unwrap();
        }
    }
}

/// Deletes every object of a repository on S3 (the gateway keeps its data
/// in memory: tests clean up after themselves).
pub fn remove_s3_repository(repo: &Path) {
    if !is_s3(repo) {
        return;
    }
    let s = storage(repo);
    for kind in baton_storage::ObjectKind::ALL {
        if let Ok(objs) = s.list(kind) {
            let names: Vec<String> = objs
                .into_iter()
                .map(|o| {
                    if kind == baton_storage::ObjectKind::Config {
                        String::new()
                    } else {
                        o.name
                    }
                })
                .collect();
            let _ = s.remove_many(kind, &names);
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        remove_s3_repository(&self.repo);
    }
}

/// Whether a test that works on the repository's files directly (flipping
/// bytes, copying directories, a tmpfs, committed fixtures) must be skipped
/// here: true in S3 mode, with a note saying so.
pub fn local_only(why: &str) -> bool {
    if s3_mode() {
        eprintln!("skipped on S3: {why}");
        return true;
    }
    false
}

/// The storage of a repository location, as the tests see it (to list or
/// measure its objects on either backend).
pub fn storage(repo: &Path) -> std::sync::Arc<dyn baton_storage::Storage> {
    match repo.to_str().and_then(|r| r.strip_prefix("s3:")) {
        Some(url) => {
            let gw = gateway();
            let cfg = baton_s3::S3Config::from_location_with(url, &|k| gw.var(k)).unwrap();
            std::sync::Arc::new(baton_s3::S3Storage::new(cfg).unwrap())
        }
        None => std::sync::Arc::new(baton_storage::LocalStorage::new(repo)),
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The last line of stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| {
                panic!("no output; stderr: {}", self.stderr);
            });
        serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nstderr: {}", self.stderr))
    }

    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "exit code {}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// Fails the test if baton panicked instead of reporting an error.
pub fn no_panic(r: &Run) {
    assert_ne!(r.code, 101, "baton panicked: {}", r.stderr);
    assert!(
        !r.stderr.contains("panicked"),
        "baton panicked: {}",
        r.stderr
    );
}

/// A tmpfs of `size` (like `2m`) mounted at `dir` (created), unmounted when
/// dropped; `None` (with a note) where it cannot be mounted.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status();
        if !st.is_ok_and(|s| s.success()) {
            eprintln!("skipped: cannot mount tmpfs here");
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Env {
    /// A fresh environment with an initialized repository (fast KDF).
    pub fn new() -> Env {
        let e = Env::empty();
        e.run(&["init", "--kdf-memory", "8192", "--kdf-iterations", "1"])
            .ok();
        e
    }

    /// Like [`Env::new`], with packs of `mib` MiB (small packs: a backup
    /// stores, and journals, many of them).
    pub fn with_pack_size(mib: u64) -> Env {
        let e = Env::empty();
        e.run(&[
            "init",
            "--kdf-memory",
            "8192",
            "--kdf-iterations",
            "1",
            "--pack-size",
            &mib.to_string(),
        ])
        .ok();
        e
    }

    /// A fresh environment without a repository.
    pub fn empty() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("baton-e2e-")
            .tempdir()
            .expect("tempdir");
        let repo = if s3_mode() {
            PathBuf::from(gateway().location(&baton_testing::s3::unique_bucket(), "repo"))
        } else {
            dir.path().join("repo")
        };
        Env { dir, repo }
    }

    /// Deletes the local cache of a remote repository (after damaging an
    /// object in the bucket: the cached copy is intact, and is served).
    pub fn drop_cache(&self) {
        let _ = std::fs::remove_dir_all(self.dir.path().join(".cache/baton"));
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn cmd(&self) -> Command {
        Command::from_std(self.std_cmd())
    }

    /// Like [`Env::cmd`], as a `std::process::Command`, for tests that
    /// spawn baton and talk to it while it runs (pipes, signals).
    pub fn std_cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin!("baton"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("BATON_REPOSITORY", &self.repo)
            .env("BATON_PASSWORD", PASSWORD);
        if s3_mode() {
            c.envs(gateway().env());
            if was_damaged(&self.repo) {
                c.env("BATON_NO_CACHE", "1");
            }
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run(self.cmd().args(args))
    }

    pub fn run_os(&self, args: &[&std::ffi::OsStr]) -> Run {
        run(self.cmd().args(args))
    }

    /// `baton backup --json PATHS...`, asserting exit 0; returns the summary.
    pub fn backup(&self, paths: &[&Path], extra: &[&str]) -> serde_json::Value {
        let mut c = self.cmd();
        c.arg("backup").arg("--json").args(extra).args(paths);
        run(&mut c).ok().json()
    }

    pub fn restore(&self, snapshot: &str, target: &Path, extra: &[&str]) -> Run {
        let mut c = self.cmd();
        c.arg("restore")
            .arg(snapshot)
            .arg("--target")
            .arg(target)
            .args(extra);
        run(&mut c)
    }
}

pub fn run(c: &mut Command) -> Run {
    let args: Vec<String> = c
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let out = c.output().expect("running baton");
    // A process killed by a signal reports 128 + the signal, as shells do.
    let code = out.status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + out.status.signal().unwrap_or(0)
    });
    let r = Run {
        code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    crate::schemas::check_run(&args, &r);
    r
}

/// Total size of the files under a directory (the repository's size); of
/// its objects for a repository on S3.
pub fn du(p: &Path) -> u64 {
    if is_s3(p) {
        let s = storage(p);
        return baton_storage::ObjectKind::ALL
            .iter()
            .flat_map(|k| s.list(*k).unwrap())
            .map(|o| o.size)
            .sum();
    }
    let mut n = 0;
    for e in walk(p) {
        if let Ok(m) = std::fs::symlink_metadata(&e)
            && m.is_file()
        {
            n += m.len();
        }
    }
    n
}

pub fn is_s3(p: &Path) -> bool {
    p.to_str().is_some_and(|r| r.starts_with("s3:"))
}

pub fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let path = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(path.clone());
                }
                out.push(path);
            }
        }
    }
    out
}

/// Files of one object kind in the repository. Temporary files of a `put`
/// in progress (`.tmp-*`) are not objects yet and are left out. For a
/// repository on S3: `s3:URL/<dir>/<name>`, which the `obj_*` helpers
/// read, write and remove on either backend.
pub fn objects(repo: &Path, dir: &str) -> Vec<PathBuf> {
    if is_s3(repo) {
        let kind = baton_storage::ObjectKind::ALL
            .into_iter()
            .find(|k| k.dir() == dir)
            .unwrap_or_else(|| panic!("no object kind {dir}"));
        return storage(repo)
            .list(kind)
            .unwrap()
            .into_iter()
            .map(|o| repo.join(dir).join(o.name))
            .collect();
    }
    walk(&repo.join(dir))
        .into_iter()
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
        .collect()
}

/// For an object "path" of a repository on S3 (`s3:URL/<dir>[/<xx>]/<name>`):
/// its storage, kind and name.
fn s3_object(
    p: &Path,
) -> Option<(
    std::sync::Arc<dyn baton_storage::Storage>,
    baton_storage::ObjectKind,
    String,
)> {
    let s = p.to_str()?;
    if !s.starts_with("s3:") {
        return None;
    }
    let name = p.file_name()?.to_string_lossy().into_owned();
    for kind in baton_storage::ObjectKind::ALL {
        if kind == baton_storage::ObjectKind::Config {
            if let Some(repo) = s.strip_suffix("/config") {
                return Some((storage(Path::new(repo)), kind, String::new()));
            }
            continue;
        }
        let marker = format!("/{}/", kind.dir());
        if let Some(i) = s.rfind(&marker) {
            let rest = &s[i + marker.len()..];
            // A journal record is named "<job>/<record>".
            let name = if kind == baton_storage::ObjectKind::Journal {
                rest.to_string()
            } else {
                name.clone()
            };
            if rest.ends_with(&name) {
                return Some((storage(Path::new(&s[..i])), kind, name));
            }
        }
    }
    None
}

/// Repositories on S3 whose objects a test damaged: their commands run
/// without the local cache, which would serve its intact copies.
fn damaged() -> &'static std::sync::Mutex<std::collections::HashSet<String>> {
    static D: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    D.get_or_init(Default::default)
}

fn mark_damaged(p: &Path) {
    if let Some(s) = p.to_str() {
        // The repository is a prefix of the object's "path".
        damaged().lock().unwrap().insert(s.to_string());
    }
}

/// Whether a test damaged an object of the repository at `repo`.
pub fn was_damaged(repo: &Path) -> bool {
    let r = repo.to_string_lossy();
    damaged().lock().unwrap().iter().any(|o| o.starts_with(&*r))
}

/// Reads an object (a file of a local repository, or an object on S3).
pub fn obj_read(p: &Path) -> Vec<u8> {
    match s3_object(p) {
        Some((s, k, n)) => s.get(k, &n).unwrap(),
        None => std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    }
}

/// Replaces an object's bytes (as damage or an attacker would).
pub fn obj_write(p: &Path, bytes: &[u8]) {
    match s3_object(p) {
        Some((s, k, n)) => {
            mark_damaged(p);
            s.remove(k, &n).unwrap();
            s.put(k, &n, bytes).unwrap();
        }
        None => std::fs::write(p, bytes).unwrap(),
    }
}

/// Deletes an object.
pub fn obj_remove(p: &Path) {
    match s3_object(p) {
        Some((s, k, n)) => {
            mark_damaged(p);
            s.remove(k, &n).unwrap()
        }
        None => std::fs::remove_file(p).unwrap(),
    }
}

/// Whether an object exists.
pub fn obj_exists(p: &Path) -> bool {
    match s3_object(p) {
        Some((s, k, n)) => s.size(k, &n).is_ok(),
        None => p.exists(),
    }
}

/// An object's size.
pub fn obj_len(p: &Path) -> u64 {
    match s3_object(p) {
        Some((s, k, n)) => s.size(k, &n).unwrap(),
        None => std::fs::metadata(p).unwrap().len(),
    }
}
