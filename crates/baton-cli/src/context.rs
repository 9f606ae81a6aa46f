//! Resolving global options: where the repository is, and the password.

use crate::baton::{LockGuard, RepoError, Repository};
use crate::cli::{Global, KdfArgs};
use anyhow::{Context, Result, bail};
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

/// The repository's storage: `s3:https://host/bucket[/prefix]` for S3
/// (each request retried with back-off on transient errors, each wait ended
/// by Ctrl-C),
/// anything else a local directory.
pub fn storage(g: &Global) -> Result<Arc<dyn Storage>> {
    let (location, _) = repo_location(g);
    storage_at(g, &location)
}

/// The storage at `location` (see [`storage`]), under the bandwidth limits
/// of `--limit-upload` and `--limit-download`.
pub fn storage_at(g: &Global, location: &std::path::Path) -> Result<Arc<dyn Storage>> {
    let s = storage_unlimited(location)?;
    if g.limit_upload.is_none() && g.limit_download.is_none() {
        return Ok(s);
    }
    let kib = |v: Option<u64>| v.map(|k| k.saturating_mul(1024));
    Ok(Arc::new(
        baton_storage::ThrottledStorage::new(s, kib(g.limit_upload), kib(g.limit_download))
            .with_stop(cancel().flag()),
    ))
}

fn storage_unlimited(location: &std::path::Path) -> Result<Arc<dyn Storage>> {
    let location = location.to_path_buf();
    if let Some(pool) = location.to_str().and_then(|l| l.strip_prefix("media:")) {
        let (director, state) = media_node()?;
        let m = Arc::new(baton_media::client::MediaStorage::new(
            &director, &state, pool,
        )?);
        *MEDIA.lock().expect("media storage") = Some(m.clone());
        return Ok(m);
    }
    if let Some(url) = location.to_str().and_then(|l| l.strip_prefix("s3:")) {
        let attempts = std::env::var("BATON_S3_ATTEMPTS")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|n| *n >= 1)
            .unwrap_or(8);
        // Retried per request inside (a multipart upload is many requests:
        // one of them failing must not repeat the others).
        let s3 = baton_s3::S3Storage::new(baton_s3::S3Config::from_location(url)?)?
            .with_retry(baton_storage::RetryPolicy {
                attempts,
                initial_delay: std::time::Duration::from_millis(200),
                max_delay: std::time::Duration::from_secs(10),
            })
            .with_stop(cancel().flag());
        return Ok(Arc::new(s3));
    }
    Ok(Arc::new(LocalStorage::new(location)))
}

/// The node (director URL, state directory) a `media:POOL` repository is
/// reached as: set by `baton agent`, else `BATON_DIRECTOR` and
/// `BATON_AGENT_STATE`.
static MEDIA_NODE: std::sync::OnceLock<(String, PathBuf)> = std::sync::OnceLock::new();

/// The last `media:` storage opened (its journal sink is set on the
/// repository opened from it).
static MEDIA: std::sync::Mutex<Option<Arc<baton_media::client::MediaStorage>>> =
    std::sync::Mutex::new(None);

/// Where Baton keeps this machine's state (volume snapshots waiting for
/// their copy, drill history): `$XDG_STATE_HOME/baton`, else
/// `~/.local/state/baton`, else (no home, as under systemd)
/// `/var/lib/baton`.
pub fn state_dir() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })
        .map_or_else(|| PathBuf::from("/var/lib/baton"), |d| d.join("baton"))
}

/// A client of the director as this enrolled node (`baton agent`, or
/// `BATON_DIRECTOR` and `BATON_AGENT_STATE`), for reports; `None` when
/// this machine is not one.
pub fn node_client() -> Option<baton_director::client::Client> {
    let (director, state) = media_node().ok()?;
    match baton_director::client::Client::for_node(&director, &state) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("warning: cannot report to the director at {director}: {e}");
            None
        }
    }
}

/// The director and state directory of this enrolled node, if it is one.
pub fn node() -> Option<(String, PathBuf)> {
    media_node().ok()
}

pub fn set_media_node(director: &str, state: &std::path::Path) {
    let _ = MEDIA_NODE.set((director.to_string(), state.to_path_buf()));
}

fn media_node() -> Result<(String, PathBuf)> {
    if let Some(n) = MEDIA_NODE.get() {
        return Ok(n.clone());
    }
    match (env_nonempty("BATON_DIRECTOR"), env_nonempty("BATON_AGENT_STATE")) {
        (Some(d), Some(s)) => Ok((d, PathBuf::from(s))),
        _ => Err(crate::Usage(
            "a media:POOL repository is reached as an enrolled agent: set BATON_DIRECTOR and BATON_AGENT_STATE"
                .into(),
        )
        .into()),
    }
}

/// The snapshot the last backup of this process wrote (an agent reports it).
static LAST_SNAPSHOT: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

pub fn set_last_snapshot(id: String) {
    *LAST_SNAPSHOT.lock().expect("last snapshot") = Some(id);
}

pub fn take_last_snapshot() -> Option<String> {
    LAST_SNAPSHOT.lock().expect("last snapshot").take()
}

/// The `media:` storage this process opened, if any.
pub fn media() -> Option<Arc<baton_media::client::MediaStorage>> {
    MEDIA.lock().expect("media storage").clone()
}

/// Whether the repository is a local directory (whose files can be checked
/// for their modes).
pub fn is_local(g: &Global) -> bool {
    !repo_location(g)
        .0
        .to_str()
        .is_some_and(|l| l.starts_with("s3:") || l.starts_with("media:"))
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

/// Where the password comes from.
enum PasswordSource {
    Value(String),
    File(PathBuf),
    Command(String),
}

/// An environment variable, an empty one counting as unset.
fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The one source of the password: an explicit flag (`--password-file`,
/// `--password-command`) wins over the environment; two flags, or two of
/// `BATON_PASSWORD`, `BATON_PASSWORD_FILE`, `BATON_PASSWORD_COMMAND`, are a
/// usage error (which one was meant is a guess); an empty variable counts as
/// unset. None: ask on the terminal.
fn password_source(g: &Global) -> Result<Option<PasswordSource>> {
    password_source_of(
        g.password_file.as_ref(),
        g.password_command.as_deref(),
        "--",
        "BATON_",
    )
}

/// [`password_source`] of a repository whose flags start with `flag`
/// (`--`, `--from-`) and whose variables with `env` (`BATON_`,
/// `BATON_FROM_`).
fn password_source_of(
    file: Option<&PathBuf>,
    command: Option<&str>,
    flag: &str,
    env: &str,
) -> Result<Option<PasswordSource>> {
    let flags: Vec<(String, PasswordSource)> = [
        file.map(|f| {
            (
                format!("{flag}password-file"),
                PasswordSource::File(f.clone()),
            )
        }),
        command.map(|c| {
            (
                format!("{flag}password-command"),
                PasswordSource::Command(c.to_string()),
            )
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    let var = |n: &str| format!("{env}{n}");
    let env: Vec<(String, PasswordSource)> = [
        env_nonempty(&var("PASSWORD")).map(|p| (var("PASSWORD"), PasswordSource::Value(p))),
        env_nonempty(&var("PASSWORD_FILE"))
            .map(|f| (var("PASSWORD_FILE"), PasswordSource::File(f.into()))),
        env_nonempty(&var("PASSWORD_COMMAND"))
            .map(|c| (var("PASSWORD_COMMAND"), PasswordSource::Command(c))),
    ]
    .into_iter()
    .flatten()
    .collect();
    let chosen = if flags.is_empty() { env } else { flags };
    if chosen.len() > 1 {
        let names: Vec<&str> = chosen.iter().map(|(n, _)| n.as_str()).collect();
        return Err(crate::Usage(format!(
            "the password is given twice ({}): give one source",
            names.join(" and ")
        ))
        .into());
    }
    Ok(chosen.into_iter().next().map(|(_, s)| s))
}

/// The password from its one source (see [`password_source`]), or the
/// terminal (asked once, or twice with confirmation for a new one).
pub fn password(g: &Global, new: bool) -> Result<String> {
    password_from(password_source(g)?, new, "repository")
}

fn password_from(source: Option<PasswordSource>, new: bool, what: &str) -> Result<String> {
    match source {
        Some(PasswordSource::Value(p)) => Ok(p),
        Some(PasswordSource::File(f)) => {
            let p = std::fs::read_to_string(&f)
                .with_context(|| format!("reading password file {}", f.display()))?;
            Ok(strip_newline(p))
        }
        Some(PasswordSource::Command(cmd)) => run_password_command(&cmd),
        None => ask(
            &if new {
                format!("enter password for new {what}: ")
            } else {
                format!("enter password for {what}: ")
            },
            new,
        ),
    }
}

/// Opens the other repository of `copy` and `init --copy-chunker-params`
/// (its password from `--from-password-file`, `--from-password-command`,
/// `BATON_FROM_PASSWORD`, `BATON_FROM_PASSWORD_FILE` or
/// `BATON_FROM_PASSWORD_COMMAND`, else the terminal).
pub fn open_from(g: &Global, from: &crate::cli::FromRepo) -> Result<Repository> {
    let Some(location) = &from.repo else {
        return Err(crate::Usage(
            "give the other repository with --from-repo (or BATON_FROM_REPOSITORY)".into(),
        )
        .into());
    };
    let source = password_source_of(
        from.password_file.as_ref(),
        from.password_command.as_deref(),
        "--from-",
        "BATON_FROM_",
    )?;
    open_other(g, location, source, from.key_hint.as_deref(), "--from-repo")
}

/// Opens the second site's repository of `replicate` (its password from
/// `--replica-password-file`, `--replica-password-command` or
/// `BATON_REPLICA_PASSWORD[_FILE|_COMMAND]`).
pub fn open_replica(
    g: &Global,
    location: &std::path::Path,
    r: &crate::cli::Replica,
) -> Result<Repository> {
    let source = password_source_of(
        r.password_file.as_ref(),
        r.password_command.as_deref(),
        "--replica-",
        "BATON_REPLICA_",
    )?;
    open_other(g, location, source, None, "the second site")
}

fn open_other(
    g: &Global,
    location: &std::path::Path,
    source: Option<PasswordSource>,
    key_hint: Option<&str>,
    what: &str,
) -> Result<Repository> {
    if location.to_str().is_some_and(|l| l.starts_with("media:")) {
        return Err(crate::Usage(format!(
            "{what} cannot be a media agent pool: give the pool's storage"
        ))
        .into());
    }
    let s = storage_at(g, location)?;
    if !s.exists()? {
        return Err(RepoError::NoRepository {
            location: s.location(),
        }
        .into());
    }
    let pw = zeroize::Zeroizing::new(password_from(source, false, what)?);
    let mut repo = Repository::open_with_hint(s, pw.as_bytes(), key_hint)?;
    if let Some(wait) = g.retry_lock {
        repo.set_lock_retry(wait, Some(cancel().flag()));
    }
    Ok(repo)
}

fn run_password_command(cmd: &str) -> Result<String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running password command {cmd:?}"))?;
    if !out.status.success() {
        bail!("password command {cmd:?} failed with {}", out.status);
    }
    Ok(strip_newline(
        String::from_utf8(out.stdout).context("password command printed non-UTF-8")?,
    ))
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
    crate::baton::kdf_params(a.kdf_memory, a.kdf_iterations)
}

/// Opens the repository (checking that it exists before asking a password).
pub fn open(g: &Global) -> Result<Repository> {
    let s = storage(g)?;
    if !s.exists()? {
        return Err(RepoError::NoRepository {
            location: s.location(),
        }
        .into());
    }
    let pw = zeroize::Zeroizing::new(password(g, false)?);
    let mut repo = Repository::open_with_hint(s, pw.as_bytes(), g.key_hint.as_deref())?;
    if let Some(wait) = g.retry_lock {
        repo.set_lock_retry(wait, Some(cancel().flag()));
    }
    if let Some(m) = media() {
        // Journal records travel with their summary, for the director.
        repo.set_journal_sink(Arc::new(baton_media::client::MediaSink(m)));
    }
    if is_local(g) {
        warn_if_readable_by_others(&repo_location(g).0.join("keys").join(repo.key_name()));
    }
    Ok(repo)
}

/// A key file is a password-protected copy of the master key: anyone who
/// can read it can try passwords offline. Warn when others can.
fn warn_if_readable_by_others(key_file: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(key_file) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: key file {} can be read by others (mode {mode:04o}); run `chmod 600` on it and `chmod 700` on the repository's directories",
                key_file.display()
            );
        }
    }
}

/// Opens the repository, takes a shared lock (so prune cannot delete what
/// is being read), then loads the index.
pub fn open_indexed(g: &Global) -> Result<(Repository, LockGuard)> {
    let mut r = open(g)?;
    let lock = r.lock(false)?;
    r.load_index().context("loading the index")?;
    for (name, why) in r.index_skipped() {
        eprintln!(
            "warning: index {} left out: {}; its packs are not used (`baton check` names it, `baton repair index` rebuilds the index)",
            &name[..8.min(name.len())],
            escape(why)
        );
    }
    Ok((r, lock))
}

/// When this process started (first call, from `main`): time to first byte
/// of an NBD export counts from here.
pub fn started() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

/// The cancellation handle of this process's operation: SIGINT and SIGTERM
/// trigger it (see [`handle_signals`]).
pub fn cancel() -> &'static crate::baton::Cancel {
    static CANCEL: std::sync::OnceLock<crate::baton::Cancel> = std::sync::OnceLock::new();
    CANCEL.get_or_init(crate::baton::Cancel::new)
}

static SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Treats an interrupt as the normal end of the command (a mount).
pub fn forget_interrupt() {
    SIGNAL.store(0, std::sync::atomic::Ordering::SeqCst);
}

/// The signal (SIGINT, SIGTERM) that interrupted this process, if any.
pub fn interrupted_by() -> Option<i32> {
    match SIGNAL.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The first SIGINT or SIGTERM cancels the running operation: it stops at
/// its next safe point, writes its last journal record, releases its lock,
/// and `main` exits with 128 + the signal. A second one exits at once (what
/// is durable stays durable; the lock goes stale).
pub fn handle_signals() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                if SIGNAL.swap(sig, std::sync::atomic::Ordering::SeqCst) != 0 {
                    eprintln!("\n{name} again: stopping at once");
                    std::process::exit(128 + sig);
                }
                eprintln!(
                    "\n{name}: stopping cleanly (what is stored stays stored; press Ctrl-C again to stop at once)"
                );
                cancel().cancel();
            }
        });
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
