//! A scratch directory with a repository and helpers to run `baton` in it.

use assert_cmd::Command;
use std::path::{Path, PathBuf};

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
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
        let repo = dir.path().join("repo");
        Env { dir, repo }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin!("baton"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("BATON_REPOSITORY", &self.repo)
            .env("BATON_PASSWORD", PASSWORD);
        c
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
    let out = c.output().expect("running baton");
    // A process killed by a signal reports 128 + the signal, as shells do.
    let code = out.status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + out.status.signal().unwrap_or(0)
    });
    Run {
        code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Total size of the files under a directory (the repository's size).
pub fn du(p: &Path) -> u64 {
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
/// in progress (`.tmp-*`) are not objects yet and are left out.
pub fn objects(repo: &Path, dir: &str) -> Vec<PathBuf> {
    walk(&repo.join(dir))
        .into_iter()
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
        .collect()
}
