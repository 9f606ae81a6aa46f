//! Resolving global options: where the repository is, and the password.

use crate::cli::{Global, KdfArgs};
use anyhow::{Context, Result, bail};
use baton_repo::{LockGuard, RepoError, Repository};
use baton_storage::{LocalStorage, Storage};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

/// The repository location, and whether it is the implicit default.
pub fn repo_location(g: &Global) -> (PathBuf, bool) {
    if let Some(r) = &g.repo {
        return (r.clone(), false);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    (base.join("baton/repo"), true)
}

pub fn storage(g: &Global) -> Arc<dyn Storage> {
    Arc::new(LocalStorage::new(repo_location(g).0))
}

fn strip_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

/// The password from BATON_PASSWORD, --password-file, --password-command, or
/// the terminal (asked once, or twice with confirmation for a new one).
pub fn password(g: &Global, new: bool) -> Result<String> {
    if let Ok(p) = std::env::var("BATON_PASSWORD") {
        return Ok(p);
    }
    if let Some(f) = &g.password_file {
        let p = std::fs::read_to_string(f)
            .with_context(|| format!("reading password file {}", f.display()))?;
        return Ok(strip_newline(p));
    }
    if let Some(cmd) = &g.password_command {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running password command {cmd:?}"))?;
        if !out.status.success() {
            bail!("password command {cmd:?} failed with {}", out.status);
        }
        return Ok(strip_newline(
            String::from_utf8(out.stdout).context("password command printed non-UTF-8")?,
        ));
    }
    ask(
        if new {
            "enter password for new repository: "
        } else {
            "enter password for repository: "
        },
        new,
    )
}

fn ask(prompt: &str, confirm: bool) -> Result<String> {
    if !std::io::stdin().is_terminal() && !std::io::stderr().is_terminal() {
        bail!("no password given: set BATON_PASSWORD, BATON_PASSWORD_FILE or --password-command");
    }
    let p = rpassword::prompt_password(prompt).context("reading password from the terminal")?;
    if confirm {
        let again = rpassword::prompt_password("enter password again: ")
            .context("reading password from the terminal")?;
        if again != p {
            bail!("passwords do not match");
        }
    }
    Ok(p)
}

/// A new password for `key add`/`key passwd`.
pub fn new_password(file: Option<&PathBuf>) -> Result<String> {
    let p = if let Some(f) = file {
        strip_newline(
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        )
    } else if let Ok(p) = std::env::var("BATON_NEW_PASSWORD") {
        p
    } else {
        ask("enter new password: ", true)?
    };
    if p.is_empty() {
        bail!("an empty password is not allowed");
    }
    Ok(p)
}

pub fn kdf(a: &KdfArgs) -> baton_types::KdfParams {
    baton_repo::kdf_params(a.kdf_memory, a.kdf_iterations)
}

/// Opens the repository (checking that it exists before asking a password).
pub fn open(g: &Global) -> Result<Repository> {
    let s = storage(g);
    if !s.exists()? {
        return Err(RepoError::NoRepository {
            location: s.location(),
        }
        .into());
    }
    let pw = password(g, false)?;
    Ok(Repository::open(s, pw.as_bytes())?)
}

/// Opens the repository, takes a shared lock (so prune cannot delete what
/// is being read), then loads the index.
pub fn open_indexed(g: &Global) -> Result<(Repository, LockGuard)> {
    let mut r = open(g)?;
    let lock = r.lock(false)?;
    r.load_index().context("loading the index")?;
    Ok((r, lock))
}

/// Text for a terminal: control characters (a file name can hold terminal
/// escape sequences) are shown escaped, `\x1b` and the like, never sent.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}
