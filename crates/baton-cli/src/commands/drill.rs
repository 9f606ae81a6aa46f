//! `baton drill`: a fire drill at the second site. The snapshot's
//! PostgreSQL data directory is restored into a scratch directory, a
//! server is started on it (on a private socket, no TCP, archiving off),
//! it must reach a consistent state without errors and answer the check
//! query with what is expected; then it is stopped and everything removed.
//! The result carries the recovery time (RTO: from the drill's start to
//! the check passing) and the data age (RPO: how old the snapshot's data
//! was when the drill began).

use crate::cli::{DrillArgs, Global};
use crate::context;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

/// The result of one drill.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DrillResult {
    /// The drill (`--name`, else the tag it watches).
    pub name: String,
    pub snapshot: String,
    pub snapshot_time: String,
    pub tags: Vec<String>,
    pub passed: bool,
    /// Why it failed (empty when it passed).
    pub reason: String,
    pub started_at: String,
    pub finished_at: String,
    /// From the drill's start to the check passing (restore + start +
    /// recovery + check); when it failed, to the failure.
    pub rto_s: f64,
    /// The data's age when the drill began: drill start − snapshot time.
    pub rpo_s: f64,
    pub restore_s: f64,
    pub recovery_s: f64,
    pub bytes_restored: u64,
    /// What the check query printed.
    pub check_output: String,
}

pub fn run(g: &Global, a: &DrillArgs) -> Result<i32> {
    if !a.watch {
        let (repo, lock) = context::open_indexed(g)?;
        let (id, snapshot) = match &a.snapshot {
            Some(r) => super::select::find(&repo, r, &a.filter)?,
            None => super::select::find(&repo, "latest", &a.filter)?,
        };
        let r = drill(&repo, id, &snapshot, a);
        drop(lock);
        return finish(g, a, r?);
    }
    // The drill policy: watch the tag (a new newest snapshot is the tag set
    // or updated) and, with --every, a schedule. The last snapshot drilled
    // and when come from this machine's history, so a restart does not
    // drill again what was drilled.
    let name = drill_name(a);
    let mut last: Option<(String, SystemTime)> = history()
        .into_iter()
        .rev()
        .find(|r| r.0 == name)
        .map(|r| (r.1, r.2));
    let mut code = crate::exit::OK;
    loop {
        context::cancel().check()?;
        let (repo, lock) = context::open_indexed(g)?;
        let newest = match &a.snapshot {
            Some(r) => super::select::find(&repo, r, &a.filter),
            None => super::select::find(&repo, "latest", &a.filter),
        };
        match newest {
            Ok((id, snapshot)) => {
                let changed = last.as_ref().is_none_or(|(l, _)| *l != id.to_hex());
                let due = a.every.is_some_and(|every| {
                    last.as_ref()
                        .is_none_or(|(_, at)| at.elapsed().unwrap_or_default() >= every)
                });
                if changed || due {
                    let r = drill(&repo, id, &snapshot, a);
                    drop(lock);
                    // A drill that could not run at all (not one that
                    // failed) is said, and tried again at the next poll.
                    match r {
                        Ok(result) => {
                            code = finish(g, a, result)?;
                            last = Some((id.to_hex(), SystemTime::now()));
                        }
                        Err(e) if context::cancel().is_cancelled() => return Err(e),
                        Err(e) => eprintln!("drill {name}: could not run: {e:#}"),
                    }
                } else {
                    drop(lock);
                }
            }
            Err(e) => {
                drop(lock);
                if !g.quiet {
                    eprintln!("drill {name}: no snapshot to drill yet ({e:#})");
                }
            }
        }
        let until = std::time::Instant::now() + a.poll;
        while std::time::Instant::now() < until {
            if context::cancel().is_cancelled() {
                return Ok(code);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

fn drill_name(a: &DrillArgs) -> String {
    a.name
        .clone()
        .or_else(|| a.filter.tag.first().cloned())
        .unwrap_or_else(|| "drill".into())
}

/// The drills this machine ran: (name, snapshot, when it finished).
fn history() -> Vec<(String, String, SystemTime)> {
    let Ok(text) = std::fs::read_to_string(state_dir().join("drills.jsonl")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<DrillResult>(l).ok())
        .filter_map(|r| {
            let at = humantime::parse_rfc3339_weak(&r.finished_at)
                .or_else(|_| humantime::parse_rfc3339(&r.finished_at))
                .ok()?;
            Some((r.name, r.snapshot, at))
        })
        .collect()
}

fn state_dir() -> PathBuf {
    context::state_dir()
}

/// Records, reports and prints one drill's result; notifies a failure.
fn finish(g: &Global, a: &DrillArgs, mut result: DrillResult) -> Result<i32> {
    result.name = drill_name(a);
    record(&result);
    if let Some(c) = context::node_client() {
        let rec = baton_wire::DrillRecord {
            agent: String::new(),
            at: 0,
            name: result.name.clone(),
            snapshot: result.snapshot.clone(),
            snapshot_time: result.snapshot_time.clone(),
            passed: result.passed,
            reason: result.reason.clone(),
            started_at: result.started_at.clone(),
            finished_at: result.finished_at.clone(),
            rto_s: result.rto_s,
            rpo_s: result.rpo_s,
            restore_s: result.restore_s,
            recovery_s: result.recovery_s,
            bytes_restored: result.bytes_restored,
        };
        if let Err(e) = c.report_drill(&rec) {
            eprintln!("warning: the drill's result did not reach the director: {e}");
        }
    }
    if g.json {
        super::print_json("drill", serde_json::to_value(&result)?);
    } else if !g.quiet {
        if result.passed {
            outln!(
                "drill of snapshot {} passed: recovered in {:.1} s (restore {:.1} s, start and recovery {:.1} s), data age {:.0} s; check printed {:?}",
                &result.snapshot[..8],
                result.rto_s,
                result.restore_s,
                result.recovery_s,
                result.rpo_s,
                result.check_output
            );
        } else {
            outln!(
                "drill of snapshot {} FAILED after {:.1} s: {}",
                &result.snapshot[..8],
                result.rto_s,
                result.reason
            );
        }
    }
    if !result.passed {
        if let Some(cmd) = &a.notify_command {
            let status = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .env("BATON_DRILL", serde_json::to_string(&result)?)
                .status();
            if !status.is_ok_and(|s| s.success()) {
                eprintln!("warning: the drill's notify command failed");
            }
        }
        return Ok(crate::exit::FAILED);
    }
    Ok(crate::exit::OK)
}

/// Appends the result to `$XDG_STATE_HOME/baton/drills.jsonl` (this
/// machine's drill history; the director keeps the fleet's).
fn record(r: &DrillResult) {
    let dir = state_dir();
    let _ = std::fs::create_dir_all(&dir);
    if let (Ok(mut f), Ok(line)) = (
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("drills.jsonl")),
        serde_json::to_string(r),
    ) {
        use std::io::Write;
        let _ = writeln!(f, "{line}");
    }
}

fn pg_bin(a: &DrillArgs) -> Result<PathBuf> {
    if let Some(b) = &a.pg_bin {
        return Ok(b.clone());
    }
    if let Some(p) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|d| d.join("pg_ctl").is_file() && d.join("psql").is_file())
    {
        return Ok(p);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("pg_ctl").is_file())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .context("no PostgreSQL found (give --pg-bin)")
}

/// A command run as the data directory's owner (PostgreSQL refuses root),
/// with a clean environment (no passwords of ours reach it).
fn as_owner(program: &Path, owner: (u32, u32)) -> Command {
    let mut c = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", owner.0))
            .arg(format!("--regid={}", owner.1))
            .arg("--clear-groups")
            .arg(program);
        c
    } else {
        Command::new(program)
    };
    c.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LC_ALL", "C")
        .env("PGCONNECT_TIMEOUT", "30")
        .env("PGOPTIONS", "-c statement_timeout=600s");
    c
}

/// What a snapshot may not bring into a drill: device nodes, FIFOs and
/// sockets are removed, setuid and setgid bits cleared, and everything
/// made the server's owner's (the restore keeps owners as stored).
fn tame(dir: &Path, owner: (u32, u32)) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let md = std::fs::symlink_metadata(&p)?;
        let ft = md.file_type();
        if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
            std::fs::remove_file(&p)?;
            continue;
        }
        if md.uid() != owner.0 || md.gid() != owner.1 {
            std::os::unix::fs::lchown(&p, Some(owner.0), Some(owner.1))?;
        }
        if !ft.is_symlink() && md.mode() & 0o6000 != 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(md.mode() & 0o1777))?;
        }
        if ft.is_dir() {
            tame(&p, owner)?;
        }
    }
    Ok(())
}

/// Stops the server and removes the scratch directory, whatever happened.
struct Teardown {
    ctl: Option<(PathBuf, PathBuf, (u32, u32))>,
    dir: PathBuf,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some((bin, data, owner)) = &self.ctl {
            let _ = as_owner(&bin.join("pg_ctl"), *owner)
                .arg("-D")
                .arg(data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn drill(
    repo: &crate::baton::Repository,
    id: baton_types::Id,
    snapshot: &baton_types::Snapshot,
    a: &DrillArgs,
) -> Result<DrillResult> {
    let bin = pg_bin(a)?;
    let started = SystemTime::now();
    let t0 = Instant::now();
    let snap_time = humantime::parse_rfc3339_weak(&snapshot.time)
        .or_else(|_| humantime::parse_rfc3339(&snapshot.time))
        .ok();
    let mut result = DrillResult {
        name: drill_name(a),
        snapshot: id.to_hex(),
        snapshot_time: snapshot.time.clone(),
        tags: snapshot.tags.clone(),
        passed: false,
        reason: String::new(),
        started_at: humantime::format_rfc3339_millis(started).to_string(),
        finished_at: String::new(),
        rto_s: 0.0,
        rpo_s: snap_time
            .and_then(|t| started.duration_since(t).ok())
            .map_or(0.0, |d| d.as_secs_f64()),
        restore_s: 0.0,
        recovery_s: 0.0,
        bytes_restored: 0,
        check_output: String::new(),
    };
    let base = match &a.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let dir = base.join(format!(
        "baton-drill-{}",
        &crate::baton::random_id().to_hex()[..12]
    ));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut teardown = Teardown {
        ctl: None,
        dir: dir.clone(),
    };
    let outcome = (|| -> Result<(), String> {
        let data = dir.join("data");
        let summary = crate::baton::restore(
            repo,
            snapshot,
            Some(&a.postgres),
            &data,
            &crate::baton::RestoreOptions::default(),
            &crate::baton::NoProgress,
            context::cancel(),
        )
        .map_err(|e| format!("restoring {}: {e}", a.postgres))?;
        if !summary.errors.is_empty() {
            return Err(format!(
                "the restore could not write {} entries, the first {}: {}",
                summary.errors.len(),
                summary.errors[0].0,
                summary.errors[0].1
            ));
        }
        result.bytes_restored = summary.bytes;
        result.restore_s = t0.elapsed().as_secs_f64();
        if !data.join("PG_VERSION").is_file() {
            return Err(format!(
                "{} in the snapshot is not a PostgreSQL data directory",
                a.postgres
            ));
        }
        // The server runs as the owner of its files (as restored).
        let owner = {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(data.join("PG_VERSION")).map_err(|e| e.to_string())?;
            (m.uid(), m.gid())
        };
        if owner.0 == 0 || owner.1 == 0 {
            return Err(
                "the restored data directory belongs to root (user or group), which a drill does not run as"
                    .into(),
            );
        }
        let _ = nix::unistd::chown(
            &data,
            Some(nix::unistd::Uid::from_raw(owner.0)),
            Some(nix::unistd::Gid::from_raw(owner.1)),
        );
        tame(&data, owner).map_err(|e| format!("preparing the restored copy: {e}"))?;
        // A data directory kept as Debian does has no configuration file.
        let conf = data.join("postgresql.conf");
        if std::fs::symlink_metadata(&conf).is_err() {
            std::fs::write(&conf, b"").map_err(|e| e.to_string())?;
            let _ = std::os::unix::fs::lchown(&conf, Some(owner.0), Some(owner.1));
        }
        // The owner may pass through the scratch directory, not list it.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711));
            let _ = std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700));
        }
        if sock_unsafe(&dir) {
            return Err(format!(
                "the work directory {} has a quote or space in its path",
                dir.display()
            ));
        }
        let sock = dir.join("sock");
        std::fs::create_dir(&sock).map_err(|e| e.to_string())?;
        let _ = nix::unistd::chown(
            &sock,
            Some(nix::unistd::Uid::from_raw(owner.0)),
            Some(nix::unistd::Gid::from_raw(owner.1)),
        );
        let log = dir.join("server.log");
        let _ = std::fs::File::create(&log);
        let _ = nix::unistd::chown(
            &log,
            Some(nix::unistd::Uid::from_raw(owner.0)),
            Some(nix::unistd::Gid::from_raw(owner.1)),
        );
        let port = 20000 + (std::process::id() % 20000) as u16;
        let t_start = Instant::now();
        teardown.ctl = Some((bin.clone(), data.clone(), owner));
        let out = as_owner(&bin.join("pg_ctl"), owner)
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t"])
            .arg(a.timeout.to_string())
            .arg("-o")
            // Whatever the copy's configuration says: no TCP, no archiving,
            // no connection to a primary, no preloaded libraries.
            .arg(format!(
                "-p {port} -k '{}' -c listen_addresses='' -c archive_mode=off -c primary_conninfo='' -c restore_command='' -c shared_preload_libraries='' -c ssl=off -c logging_collector=off",
                sock.display()
            ))
            .arg("start")
            .output()
            .map_err(|e| format!("running pg_ctl: {e}"))?;
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        if !out.status.success() {
            return Err(format!(
                "the server did not start on the restored copy: {}",
                last_lines(&log_text, &String::from_utf8_lossy(&out.stderr))
            ));
        }
        // Consistency: the server says so (or, for a copy of a primary,
        // it ran crash recovery to the end and accepts connections).
        let bad: Vec<&str> = log_text
            .lines()
            .filter(|l| l.contains("FATAL:") || l.contains("PANIC:") || l.contains("ERROR:"))
            .collect();
        if !bad.is_empty() {
            return Err(format!("recovery reported errors: {}", bad.join(" | ")));
        }
        let out = as_owner(&bin.join("psql"), owner)
            .arg("-X")
            .arg("-h")
            .arg(&sock)
            .arg("-p")
            .arg(port.to_string())
            .arg("-U")
            .arg(&a.db_user)
            .arg("-d")
            .arg(&a.database)
            .args(["-w", "-v", "ON_ERROR_STOP=1", "-At", "-c"])
            .arg(&a.check_sql)
            .output()
            .map_err(|e| format!("running psql: {e}"))?;
        result.recovery_s = t_start.elapsed().as_secs_f64();
        let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
        result.check_output = printed.clone();
        if !out.status.success() {
            return Err(format!(
                "the check query failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        if let Some(want) = &a.expect
            && printed != want.trim()
        {
            return Err(format!(
                "the check query printed {printed:?}, expected {:?}",
                want.trim()
            ));
        }
        Ok(())
    })();
    result.rto_s = t0.elapsed().as_secs_f64();
    match outcome {
        Ok(()) => result.passed = true,
        Err(e) => result.reason = e,
    }
    drop(teardown);
    result.finished_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    if context::cancel().is_cancelled() {
        bail!(crate::baton::RepoError::Cancelled);
    }
    Ok(result)
}

fn last_lines(log: &str, stderr: &str) -> String {
    let lines: Vec<&str> = log.lines().chain(stderr.lines()).collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}

/// Whether a path cannot be passed to pg_ctl's `-o` (run by a shell) as is.
fn sock_unsafe(p: &Path) -> bool {
    p.to_string_lossy()
        .chars()
        .any(|c| c == '\'' || c == '\\' || c.is_whitespace() || c.is_control())
}
