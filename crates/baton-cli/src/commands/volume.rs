//! `backup --volume-snapshot` (an application-consistent btrfs snapshot the
//! backup reads) and `baton replicate` (the copy at the second site, after
//! whose acknowledgement the volume snapshot is deleted).
//!
//! The backup reads the snapshot at the original paths: it runs on a
//! thread of its own in a private mount namespace where each backup path's
//! copy in the snapshot is bind-mounted over the path, so the snapshot
//! records the paths the user named and the next backup finds its parent
//! as usual. Snapshots waiting for their copy are listed in
//! `STATE/volume-snapshots/SNAPSHOT_ID.json` (STATE: `context::state_dir`).

use crate::cli::{BackupArgs, Global, ReplicateArgs};
use crate::context;
use anyhow::{Context, Result, bail};
use baton_replication::volume::{self, Quiesce, Taken};
use std::path::{Path, PathBuf};

/// A volume snapshot waiting for its copy at the second site.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    /// The Baton snapshot read from it.
    pub snapshot_id: String,
    /// The repository it is in.
    pub repository: String,
    pub volume: Taken,
    /// Where it is replicated to (`--replicate-to`), if said.
    pub replica: Option<String>,
}

fn state_dir() -> PathBuf {
    context::state_dir().join("volume-snapshots")
}

/// A snapshot being taken or read by a running backup
/// (`taking-NAME.json`): if that process is gone, nothing else will delete
/// the snapshot.
#[derive(serde::Serialize, serde::Deserialize)]
struct Taking {
    pid: u32,
    snapshot: PathBuf,
}

fn taking_path(name: &str) -> PathBuf {
    state_dir().join(format!("taking-{name}.json"))
}

/// Deletes the snapshots of backups that were killed between taking them
/// and recording or deleting them.
fn sweep_orphans() {
    let Ok(rd) = std::fs::read_dir(state_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("taking-") || !name.ends_with(".json") {
            continue;
        }
        let Some(t) = std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<Taking>(&b).ok())
        else {
            continue;
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(t.pid as i32), None).is_ok();
        if alive {
            continue;
        }
        match volume::delete(&t.snapshot) {
            Ok(()) => {
                eprintln!(
                    "deleted volume snapshot {} left by a backup that was killed",
                    t.snapshot.display()
                );
                let _ = std::fs::remove_file(e.path());
            }
            Err(err) => eprintln!(
                "warning: volume snapshot {} left by a killed backup stays: {err}",
                t.snapshot.display()
            ),
        }
    }
}

/// The volume snapshot of a backup's paths, taken before it reads them.
pub struct Prepared {
    pub taken: Taken,
    /// Each backup path, and its place in the snapshot.
    binds: Vec<(PathBuf, PathBuf)>,
}

/// Takes the snapshot of the subvolume holding every one of `paths`, with
/// the application quiesced as `a` says.
pub fn prepare(g: &Global, a: &BackupArgs, paths: &[PathBuf]) -> Result<Prepared> {
    if !nix::unistd::geteuid().is_root() {
        bail!(crate::Usage(
            "--volume-snapshot needs root (btrfs snapshots and a private mount namespace)".into()
        ));
    }
    let mut subvolume: Option<PathBuf> = None;
    let mut sources = Vec::new();
    for p in paths {
        let abs = std::fs::canonicalize(p).with_context(|| format!("{}", p.display()))?;
        sources.push(abs);
        let s = volume::subvolume_of(p)?;
        match &subvolume {
            Some(prev) if *prev != s => bail!(crate::Usage(format!(
                "the paths are in two subvolumes ({} and {}): one --volume-snapshot backup covers one",
                prev.display(),
                s.display()
            ))),
            _ => subvolume = Some(s),
        }
    }
    let Some(subvolume) = subvolume else {
        bail!(crate::Usage("--volume-snapshot needs paths".into()));
    };
    let quiesce = match (&a.quiesce_postgres, &a.quiesce_command, &a.quiesce_fsfreeze) {
        (Some(url), _, _) => Quiesce::Postgres { url: url.clone() },
        (None, Some(cmd), _) => Quiesce::Command {
            quiesce: cmd.clone(),
            release: a.release_command.clone(),
        },
        (None, None, Some(mount)) => Quiesce::Fsfreeze {
            mount: mount.clone(),
        },
        (None, None, None) => Quiesce::None,
    };
    let name = format!(
        "{}-{}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace(':', ""),
        &crate::baton::random_id().to_hex()[..8]
    );
    sweep_orphans();
    // Recorded before it exists: a kill from here on leaves a record the
    // next backup or replicate finds.
    std::fs::create_dir_all(state_dir())
        .with_context(|| format!("creating {}", state_dir().display()))?;
    std::fs::write(
        taking_path(&name),
        serde_json::to_vec(&Taking {
            pid: std::process::id(),
            snapshot: subvolume.join(volume::SNAPSHOT_DIR).join(&name),
        })?,
    )
    .with_context(|| format!("writing {}", taking_path(&name).display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let taken = rt
        .block_on(volume::take(&subvolume, &name, &quiesce))
        .with_context(|| format!("taking a snapshot of {}", subvolume.display()));
    let taken = match taken {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(taking_path(&name));
            return Err(e);
        }
    };
    if !g.quiet && !g.json {
        eprintln!(
            "volume snapshot {} of {} (quiesce: {}, held {} ms)",
            taken.snapshot.display(),
            subvolume.display(),
            taken.quiesce,
            taken.held_ms
        );
    }
    let binds = sources
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&subvolume)
                .unwrap_or(Path::new(""))
                .to_path_buf();
            (taken.snapshot.join(rel), p)
        })
        .collect();
    Ok(Prepared { taken, binds })
}

/// Runs `f` on a thread whose mount namespace shows each backup path's
/// copy in the snapshot at its place (nothing else is covered).
pub fn in_snapshot<T: Send>(p: &Prepared, f: impl FnOnce() -> T + Send) -> Result<T> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            nix::sched::unshare(
                nix::sched::CloneFlags::CLONE_NEWNS | nix::sched::CloneFlags::CLONE_FS,
            )
            .context("a private mount namespace for the backup")?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .context("making the backup's mounts private")?;
            for (snap, at) in &p.binds {
                mount(
                    Some(snap.as_path()),
                    at.as_path(),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .with_context(|| format!("mounting {} at {}", snap.display(), at.display()))?;
            }
            let r = f();
            for (_, at) in p.binds.iter().rev() {
                let _ = umount2(at.as_path(), MntFlags::MNT_DETACH);
            }
            Ok(r)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the backup thread panicked"))?
    })
}

/// After a backup that failed: the snapshot goes (there is nothing to
/// replicate), and its record.
pub fn discard(p: Prepared) {
    let _ = volume::delete(&p.taken.snapshot);
    if let Some(n) = p.taken.snapshot.file_name() {
        let _ = std::fs::remove_file(taking_path(&n.to_string_lossy()));
    }
}

/// After the backup: keeps the snapshot for its copy (recorded as
/// pending, and with `--replicate-to` a `baton replicate` started in the
/// background), or deletes it.
pub fn finish(
    g: &Global,
    a: &BackupArgs,
    p: Prepared,
    snapshot: Option<String>,
) -> Result<serde_json::Value> {
    let keep = (a.keep_volume_snapshot || a.replicate_to.is_some()) && snapshot.is_some();
    let mut v = serde_json::to_value(&p.taken)?;
    v["kept"] = keep.into();
    let taking = p
        .taken
        .snapshot
        .file_name()
        .map(|n| taking_path(&n.to_string_lossy()));
    if !keep {
        volume::delete(&p.taken.snapshot)?;
        if let Some(t) = &taking {
            let _ = std::fs::remove_file(t);
        }
        return Ok(v);
    }
    let id = snapshot.expect("checked above");
    let pending = Pending {
        snapshot_id: id.clone(),
        repository: context::repo_location(g).0.display().to_string(),
        volume: p.taken,
        replica: a.replicate_to.as_ref().map(|r| r.display().to_string()),
    };
    let dir = state_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{id}.json"));
    let tmp = dir.join(format!(".{id}.json.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&pending)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    // Waiting for its copy now, not orphaned.
    if let Some(t) = &taking {
        let _ = std::fs::remove_file(t);
    }
    if let Some(to) = &a.replicate_to {
        v["replicating"] = spawn_replicate(g, to, &id)?.display().to_string().into();
    }
    Ok(v)
}

/// Starts `baton replicate --to TO ID` in the background (the backup is
/// done; the copy follows), with this run's repository, password source
/// and bandwidth limits; returns its log.
pub fn spawn_replicate(g: &Global, to: &Path, id: &str) -> Result<PathBuf> {
    let dir = state_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join(format!("{id}.log"));
    let out = std::fs::File::create(&log)?;
    let mut c = std::process::Command::new(std::env::current_exe()?);
    c.arg("replicate").arg("--to").arg(to).arg(id);
    if let Some(f) = &g.password_file {
        c.arg("--password-file").arg(f);
    }
    if let Some(cmd) = &g.password_command {
        c.arg("--password-command").arg(cmd);
    }
    if let Some(k) = g.limit_upload {
        c.arg("--limit-upload").arg(k.to_string());
    }
    if let Some(k) = g.limit_download {
        c.arg("--limit-download").arg(k.to_string());
    }
    // An agent's pool is reached as the agent.
    if let Some((director, state)) = context::node() {
        c.env("BATON_DIRECTOR", director)
            .env("BATON_AGENT_STATE", state);
    }
    c.env("BATON_REPOSITORY", context::repo_location(g).0)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    c.spawn()
        .context("starting `baton replicate` in the background")?;
    Ok(log)
}

/// `baton replicate`: for each snapshot (by default each whose volume
/// snapshot waits), copy it to the second site, wait until the copy there
/// is complete (every blob of its tree indexed: the second site's
/// acknowledgement), then delete the volume snapshot.
pub fn replicate(g: &Global, a: &ReplicateArgs) -> Result<i32> {
    sweep_orphans();
    let here = context::repo_location(g).0.display().to_string();
    let dir = state_dir();
    let mut pending: Vec<Pending> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") || name.starts_with('.') {
                continue;
            }
            // Only this user's own state files, naming a snapshot id.
            let mine = {
                use std::os::unix::fs::MetadataExt;
                std::fs::symlink_metadata(e.path()).is_ok_and(|m| {
                    m.is_file()
                        && m.uid() == nix::unistd::geteuid().as_raw()
                        && m.mode() & 0o022 == 0
                })
            };
            match std::fs::read(e.path())
                .ok()
                .filter(|_| mine)
                .and_then(|b| serde_json::from_slice::<Pending>(&b).ok())
                .filter(|p| {
                    p.snapshot_id.len() == 64
                        && p.snapshot_id.bytes().all(|b| b.is_ascii_hexdigit())
                        && name == format!("{}.json", p.snapshot_id)
                }) {
                Some(p) if p.repository == here => pending.push(p),
                Some(_) => {}
                None => eprintln!("warning: {} cannot be read; left alone", e.path().display()),
            }
        }
    }
    let mut src = context::open(g)?;
    let lock = src.lock(false)?;
    lock.abort_on_loss(context::cancel());
    src.load_index().context("loading the index")?;
    // What to replicate: the snapshots named, or those waiting.
    let mut todo: Vec<(String, Option<Pending>)> = Vec::new();
    if a.snapshots.is_empty() {
        todo.extend(
            pending
                .iter()
                .map(|p| (p.snapshot_id.clone(), Some(p.clone()))),
        );
    } else {
        for r in &a.snapshots {
            let (id, _) = src.find_snapshot(r)?;
            let id = id.to_hex();
            let p = pending.iter().find(|p| p.snapshot_id == id).cloned();
            todo.push((id, p));
        }
    }
    let mut results = Vec::new();
    let mut failed = 0;
    for (id, p) in todo {
        let to = a.replica.repo.clone().or_else(|| {
            p.as_ref()
                .and_then(|p| p.replica.clone())
                .map(PathBuf::from)
        });
        let Some(to) = to else {
            bail!(crate::Usage(format!(
                "snapshot {}: give the second site with --to (or BATON_REPLICA_REPOSITORY)",
                &id[..8]
            )));
        };
        let outcome = replicate_one(g, a, &src, &id, &to, p.as_ref());
        report(&id, &to, &outcome);
        match outcome {
            Ok(v) => results.push(v),
            Err(e) => {
                failed += 1;
                if g.json {
                    results.push(serde_json::json!({
                        "snapshot": id, "replica": to.display().to_string(),
                        "state": "failed", "error": format!("{e:#}"),
                        "volume_snapshot_deleted": false,
                    }));
                } else {
                    eprintln!(
                        "error: snapshot {}: {e:#} (its volume snapshot stays; run `baton replicate` again)",
                        &id[..8]
                    );
                }
                if context::cancel().is_cancelled() {
                    break;
                }
            }
        }
    }
    drop(lock);
    if g.json {
        super::print_json("replicate", serde_json::json!({ "replicated": results }));
    }
    Ok(if failed > 0 {
        crate::exit::FAILED
    } else {
        crate::exit::OK
    })
}

fn replicate_one(
    g: &Global,
    a: &ReplicateArgs,
    src: &crate::baton::Repository,
    id: &str,
    to: &Path,
    pending: Option<&Pending>,
) -> Result<serde_json::Value> {
    let started = std::time::Instant::now();
    let (sid, snap) = src.find_snapshot(id)?;
    let mut dst = context::open_replica(g, to, &a.replica)?;
    let report = crate::baton::copy(
        src,
        &mut dst,
        &[(sid, snap.clone())],
        &crate::baton::CopyOptions::default(),
        &crate::baton::NoProgress,
        context::cancel(),
    )?;
    let made = report.copied.first().and_then(|c| c.copy);
    let found_before = report.already_copied.first().map(|c| c.copy);
    // The source polls until the second site holds the whole snapshot:
    // its own snapshot naming this one, and every blob of its tree.
    let mut ack = None;
    let mut last_err = None;
    for attempt in 0..10 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        context::cancel().check()?;
        // The index read again from the second site's storage (a reload
        // starts from nothing), without opening its key again.
        let fresh = &mut dst;
        let _lock = fresh.lock(false)?;
        fresh.load_index()?;
        // The copy this run made or found; a copy changed since (repaired
        // without lost files, rewritten) does not count.
        let found = fresh.list_snapshots()?.into_iter().find(|(id, s)| {
            s.original == Some(sid)
                && (made == Some(*id)
                    || (found_before == Some(*id) && same_content(&snap, s, report.same_ids)))
        });
        let Some((copy_id, copy)) = found else {
            last_err = Some("no complete copy of it is there yet".to_string());
            continue;
        };
        match crate::baton::verify_complete(fresh, copy.tree, context::cancel()) {
            Ok(blobs) => {
                ack = Some((copy_id, blobs));
                break;
            }
            Err(e) => last_err = Some(e.to_string()),
        }
    }
    let Some((copy_id, blobs)) = ack else {
        bail!(
            "the second site has not acknowledged the copy: {}",
            last_err.unwrap_or_default()
        );
    };
    let mut deleted = false;
    if let Some(p) = pending {
        volume::delete(&p.volume.snapshot)?;
        let _ = std::fs::remove_file(state_dir().join(format!("{}.json", p.snapshot_id)));
        deleted = true;
    }
    let lag_s = humantime::parse_rfc3339_weak(&snap.time)
        .ok()
        .or_else(|| humantime::parse_rfc3339(&snap.time).ok())
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    if !g.json && !g.quiet {
        outln!(
            "snapshot {} is at {} as {} ({} sent, {} blobs acknowledged){}",
            &id[..8],
            dst.storage().location(),
            copy_id.short(),
            super::bytes(report.bytes_sent),
            blobs,
            if deleted {
                format!(
                    "; volume snapshot {} deleted",
                    pending.expect("deleted").volume.snapshot.display()
                )
            } else {
                String::new()
            }
        );
    }
    let applied_seq = next_seq(&src.storage().location(), &dst.storage().location());
    Ok(serde_json::json!({
        "snapshot": id,
        "replica": dst.storage().location(),
        "state": "acknowledged",
        "applied_seq": applied_seq,
        "replica_snapshot": copy_id.to_hex(),
        "blobs_sent": report.blobs_sent,
        "bytes_sent": report.bytes_sent,
        "blobs_acknowledged": blobs,
        "volume_snapshot": pending.map(|p| p.volume.snapshot.display().to_string()),
        "volume_snapshot_deleted": deleted,
        "lag_s": lag_s,
        "duration_s": started.elapsed().as_secs_f64(),
    }))
}

/// Counts acknowledged snapshots per (repository, second site) on this
/// machine: the replication's applied sequence.
fn next_seq(repository: &str, replica: &str) -> u64 {
    // FNV-1a of the pair: a stable file name (not a secret).
    let key = format!("{repository}\n{replica}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let path = state_dir().join(format!("seq-{key:016x}"));
    let n = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    let _ = std::fs::create_dir_all(state_dir());
    let _ = std::fs::write(&path, n.to_string());
    n
}

/// Tells the director (when this machine is an enrolled agent) where the
/// replication of `id` stands.
fn report(id: &str, to: &Path, outcome: &Result<serde_json::Value>) {
    let Some(c) = context::node_client() else {
        return;
    };
    let rec = match outcome {
        Ok(v) => baton_wire::ReplicationRecord {
            agent: String::new(),
            at: 0,
            snapshot: id.to_string(),
            replica: v["replica"].as_str().unwrap_or_default().to_string(),
            state: "acknowledged".into(),
            replica_snapshot: v["replica_snapshot"].as_str().map(str::to_string),
            applied_seq: v["applied_seq"].as_u64().unwrap_or(0),
            lag_s: v["lag_s"].as_f64().unwrap_or(0.0),
            bytes_sent: v["bytes_sent"].as_u64().unwrap_or(0),
            error: None,
        },
        Err(e) => baton_wire::ReplicationRecord {
            agent: String::new(),
            at: 0,
            snapshot: id.to_string(),
            replica: to.display().to_string(),
            state: "failed".into(),
            replica_snapshot: None,
            applied_seq: 0,
            lag_s: 0.0,
            bytes_sent: 0,
            error: Some(format!("{e:#}")),
        },
    };
    if let Err(e) = c.report_replication(&rec) {
        eprintln!("warning: the replication's state did not reach the director: {e}");
    }
}

/// Whether `copy` (found at the second site) still is a whole copy of
/// `source`: with shared blob ids the same tree; else the same time and
/// paths, and not a repaired copy.
fn same_content(
    source: &baton_types::Snapshot,
    copy: &baton_types::Snapshot,
    same_ids: bool,
) -> bool {
    if same_ids {
        return copy.tree == source.tree;
    }
    copy.time == source.time
        && copy.paths == source.paths
        && !copy.tags.iter().any(|t| t == "repaired")
}
