//! The agent's side of replicated data sets: what it reports of its
//! copies (and of its machine's load) before each poll, and the backup of
//! a PostgreSQL copy when the director chooses this node for a run.

use crate::cli::Global;
use anyhow::{Context, Result};
use baton_replication::postgres;
use baton_wire::{AgentJob, DatasetStatus, NodeStatus};
use std::io::{Read, Write};

/// The machine's CPU use since the last call (percent of all cores); the
/// first call measures a quarter of a second.
pub fn cpu_percent() -> f64 {
    use std::sync::Mutex;
    static LAST: Mutex<Option<(u64, u64)>> = Mutex::new(None);
    fn sample() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let total: u64 = cpu.iter().take(8).sum();
        // idle and iowait
        let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
        Some((total, total.saturating_sub(idle)))
    }
    let mut last = LAST.lock().expect("cpu");
    let before = match *last {
        Some(b) => b,
        None => {
            let b = sample().unwrap_or((0, 0));
            std::thread::sleep(std::time::Duration::from_millis(250));
            b
        }
    };
    let now = sample().unwrap_or(before);
    *last = Some(now);
    let (dt, db) = (
        now.0.saturating_sub(before.0),
        now.1.saturating_sub(before.1),
    );
    if dt == 0 {
        return 0.0;
    }
    100.0 * db as f64 / dt as f64
}

/// What this node reports: its load, and the state of its copy of each
/// data set its jobs name.
pub fn node_status(jobs: &[AgentJob], every_s: u64) -> NodeStatus {
    let mut seen = std::collections::BTreeSet::new();
    let mut datasets: Vec<DatasetStatus> = Vec::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    for j in jobs {
        let (Some(name), Some(url)) = (&j.job.dataset, &j.job.dataset_connect) else {
            continue;
        };
        if !seen.insert(name.clone()) {
            continue;
        }
        let st = match &rt {
            Ok(rt) => rt.block_on(async {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    postgres::probe(url, name),
                )
                .await
                {
                    Ok(st) => st,
                    Err(_) => unavailable(name, "its server did not answer within 10 s"),
                }
            }),
            Err(e) => unavailable(name, &e.to_string()),
        };
        datasets.push(st);
    }
    NodeStatus {
        cpu_percent: cpu_percent(),
        every_s,
        datasets,
    }
}

fn unavailable(name: &str, why: &str) -> DatasetStatus {
    DatasetStatus {
        dataset: name.to_string(),
        kind: "postgres".into(),
        available: false,
        role: baton_wire::DatasetRole::Unknown,
        replicated: false,
        lag_bytes: None,
        lag_s: None,
        position: None,
        error: Some(why.to_string()),
    }
}

/// A reader of what another thread writes: its error, not an early end,
/// if that thread fails (a truncated stream must never pass for a whole
/// one).
struct Channel {
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    at: usize,
    done: bool,
}

impl Read for Channel {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(b)) if b.is_empty() => self.done = true,
                Ok(Ok(b)) => {
                    self.buf = b;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(std::io::Error::other(
                        "the data set's stream ended without finishing",
                    ));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The writing end: chunks of 1 MiB, four in flight at most.
struct Sender {
    tx: std::sync::mpsc::SyncSender<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl Write for Sender {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let b = std::mem::take(&mut self.buf);
        self.tx
            .send(Ok(b))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the backup stopped"))
    }
}

/// Backs up the PostgreSQL copy of data set `name` at `url` into the
/// job's pool: one snapshot of host `name`, tagged `dataset:NAME`, holding
/// `NAME.tar` (a data directory: `baton dump SNAPSHOT NAME.tar | tar -x`).
/// The backup API's session stays open while the data directory is read;
/// the control file is read after every other file, then the backup is
/// stopped and its label and the WAL it needs are added.
pub fn backup_postgres(
    g: &Global,
    job: &baton_wire::JobSpec,
    name: &str,
    url: &str,
    decision: &str,
) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let label = format!("baton {} {decision}", job.name);
    let mut session = rt
        .block_on(postgres::BackupSession::start(url, &label))
        .with_context(|| format!("starting the backup of data set {name}"))?;
    if !g.quiet {
        eprintln!(
            "agent: data set {name}: backing up {} (a {}), from WAL position {:X}/{:X}",
            session.data_dir.display(),
            if session.in_recovery {
                "standby"
            } else {
                "primary"
            },
            session.start_lsn >> 32,
            session.start_lsn & 0xffff_ffff
        );
    }
    let slot_held = session.slot_held;
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    let writer = std::thread::Builder::new()
        .name("baton-dataset-tar".into())
        .spawn(move || {
            let errs = tx.clone();
            let r = (|| -> Result<postgres::TarCounts, postgres::PgError> {
                let mut counts = postgres::TarCounts::default();
                let mut tar = tar::Builder::new(Sender {
                    tx: tx.clone(),
                    buf: Vec::new(),
                });
                let dir = session.data_dir.clone();
                let seg = session.segment_size;
                // The complete WAL segments from the start up to now go
                // first (before a restartpoint can recycle them); the rest
                // after the stop.
                let first = session.start_lsn / seg;
                let now = rt.block_on(session.position())? / seg;
                let mut next = first;
                if now > first {
                    postgres::append_wal(
                        &mut tar,
                        &dir,
                        (first, now - 1),
                        seg,
                        false,
                        &mut counts,
                    )?;
                    next = now;
                }
                postgres::write_data_dir(&mut tar, &dir, &mut counts)?;
                let owner = {
                    use std::os::unix::fs::MetadataExt;
                    let m = std::fs::metadata(&dir)
                        .map_err(|e| postgres::PgError::Io(dir.display().to_string(), e))?;
                    (u64::from(m.uid()), u64::from(m.gid()))
                };
                // After every other file: on a standby, its minimum
                // recovery point covers all that was copied.
                let control_path = dir.join("global/pg_control");
                let control = std::fs::read(&control_path)
                    .map_err(|e| postgres::PgError::Io(control_path.display().to_string(), e))?;
                let stopped = rt.block_on(session.stop())?;
                postgres::append_bytes(
                    &mut tar,
                    "backup_label",
                    0o600,
                    owner,
                    stopped.label.as_bytes(),
                )?;
                if !stopped.tablespace_map.is_empty() {
                    postgres::append_bytes(
                        &mut tar,
                        "tablespace_map",
                        0o600,
                        owner,
                        stopped.tablespace_map.as_bytes(),
                    )?;
                }
                postgres::append_bytes(&mut tar, "global/pg_control", 0o600, owner, &control)?;
                let last = postgres::segment_before(stopped.stop_lsn, seg).max(first);
                postgres::append_wal(
                    &mut tar,
                    &dir,
                    (next.min(last), last),
                    seg,
                    true,
                    &mut counts,
                )?;
                let mut w = tar
                    .into_inner()
                    .map_err(|e| postgres::PgError::Io("the tar stream".into(), e))?;
                w.flush()
                    .map_err(|e| postgres::PgError::Io("the tar stream".into(), e))?;
                Ok(counts)
            })();
            match &r {
                Ok(_) => {
                    let _ = errs.send(Ok(Vec::new()));
                }
                Err(e) => {
                    let _ = errs.send(Err(std::io::Error::other(e.to_string())));
                }
            }
            r
        })?;
    let mut reader = Channel {
        rx,
        buf: Vec::new(),
        at: 0,
        done: false,
    };
    let mut argv: Vec<String> = [
        "baton",
        "backup",
        "--stdin",
        "--stdin-filename",
        &format!("{name}.tar"),
        "--host",
        name,
        "--tag",
        &format!("dataset:{name}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for t in &job.tags {
        argv.push("--tag".into());
        argv.push(t.clone());
    }
    let (g2, args) = super::director::backup_of(g, job, &argv)?;
    let code = super::backup::run_with_input(&g2, &args, Some(&mut reader));
    drop(reader);
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the data set's stream failed"));
    // The backup's own error first: the stream's is then only that the
    // backup stopped reading.
    let code = code?;
    let counts = written?.with_context(|| format!("backing up data set {name}"))?;
    if !g.quiet {
        eprintln!(
            "agent: data set {name}: {} files, {} WAL segments, {} bytes{}",
            counts.files,
            counts.wal_segments,
            counts.bytes,
            if slot_held {
                ""
            } else {
                " (no replication slot could hold the WAL: it relied on wal_keep_size)"
            }
        );
    }
    Ok(code)
}
