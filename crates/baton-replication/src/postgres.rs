//! PostgreSQL's side: the replication state of a server as its node sees
//! it ([`probe`]), and a consistent backup of its data directory taken
//! with the non-exclusive backup API ([`BackupSession`]), on a standby as
//! well as on a primary.
//!
//! The backup is one tar stream, the form `pg_basebackup -Ft` gives: the
//! data directory (without what PostgreSQL rebuilds: `pg_wal`'s contents,
//! `postmaster.pid`, temporary and runtime directories, the recovery
//! signal files), then `backup_label` and `tablespace_map` as
//! `pg_backup_stop` returned them, the control file read after every
//! other file (on a standby its minimum recovery point is where the
//! restored copy becomes consistent), and the WAL segments from the
//! backup's start to its end. `tar -x` of it into an empty directory is a
//! data directory that starts as a primary, replays that WAL, and holds
//! the data as of the end of the backup.
//!
//! The async functions run on the caller's runtime (this crate starts
//! none); the tar stream is written on the caller's thread.

use baton_wire::{DatasetRole, DatasetStatus};
use sqlx::{Connection, PgConnection, Row};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}")]
    Refused(String),
}

/// Formats an LSN as PostgreSQL does (`X/Y`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parses an LSN (`X/Y`).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The replication state of the server at `url`, for data set `dataset`.
/// A server that does not answer is reported as unavailable, with why.
pub async fn probe(url: &str, dataset: &str) -> DatasetStatus {
    let mut st = DatasetStatus {
        dataset: dataset.to_string(),
        kind: "postgres".into(),
        available: false,
        role: DatasetRole::Unknown,
        replicated: false,
        lag_bytes: None,
        lag_s: None,
        position: None,
        error: None,
    };
    match probe_inner(url, &mut st).await {
        Ok(()) => st.available = true,
        Err(e) => st.error = Some(e.to_string()),
    }
    st
}

async fn probe_inner(url: &str, st: &mut DatasetStatus) -> Result<(), sqlx::Error> {
    let mut c = PgConnection::connect(url).await?;
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut c)
        .await?;
    if in_recovery {
        st.role = DatasetRole::Secondary;
        let r = sqlx::query(
            "SELECT (SELECT status FROM pg_stat_wal_receiver LIMIT 1), \
             pg_last_wal_replay_lsn()::text, \
             greatest(0, COALESCE(pg_wal_lsn_diff( \
               (SELECT latest_end_lsn FROM pg_stat_wal_receiver LIMIT 1), \
               pg_last_wal_replay_lsn()), 0))::float8, \
             CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
               ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) \
             END::float8",
        )
        .fetch_one(&mut c)
        .await?;
        let status: Option<String> = r.try_get(0)?;
        st.replicated = status.as_deref() == Some("streaming");
        st.position = r.try_get(1)?;
        st.lag_bytes = Some(r.try_get::<f64, _>(2)?.max(0.0) as u64);
        st.lag_s = Some(r.try_get::<f64, _>(3)?.max(0.0));
    } else {
        st.role = DatasetRole::Primary;
        let r = sqlx::query(
            "SELECT count(*) FILTER (WHERE state = 'streaming'), \
             COALESCE(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)) \
               FILTER (WHERE state = 'streaming'), 0)::float8, \
             COALESCE(max(EXTRACT(EPOCH FROM replay_lag)) \
               FILTER (WHERE state = 'streaming'), 0)::float8, \
             pg_current_wal_lsn()::text \
             FROM pg_stat_replication",
        )
        .fetch_one(&mut c)
        .await?;
        st.replicated = r.try_get::<i64, _>(0)? > 0;
        st.lag_bytes = Some(r.try_get::<f64, _>(1)?.max(0.0) as u64);
        st.lag_s = Some(r.try_get::<f64, _>(2)?.max(0.0));
        st.position = r.try_get(3)?;
    }
    c.close().await?;
    Ok(())
}

/// A backup in progress on one server (`pg_backup_start` done; the
/// session must stay open until [`BackupSession::stop`]: closing it
/// aborts the backup).
pub struct BackupSession {
    conn: PgConnection,
    pub data_dir: PathBuf,
    pub in_recovery: bool,
    pub start_lsn: u64,
    pub segment_size: u64,
    /// Whether a temporary replication slot holds the WAL from the start.
    pub slot_held: bool,
}

/// What `pg_backup_stop` returned.
pub struct Stopped {
    pub stop_lsn: u64,
    pub label: String,
    pub tablespace_map: String,
}

impl BackupSession {
    /// Connects to `url` and starts a backup (a fast checkpoint, or on a
    /// standby a restartpoint). Refused for a server with tablespaces
    /// outside its data directory (not backed up yet).
    pub async fn start(url: &str, label: &str) -> Result<BackupSession, PgError> {
        let mut conn = PgConnection::connect(url).await?;
        let tablespaces: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')",
        )
        .fetch_one(&mut conn)
        .await?;
        if tablespaces > 0 {
            return Err(PgError::Refused(
                "the server has tablespaces outside its data directory, which this backup does not take yet".into(),
            ));
        }
        let data_dir: String = sqlx::query_scalar("SELECT current_setting('data_directory')")
            .fetch_one(&mut conn)
            .await?;
        let segment_size: i64 = sqlx::query_scalar(
            "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'",
        )
        .fetch_one(&mut conn)
        .await?;
        let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await?;
        // A long copy must not be cut off by the server's timeouts.
        for set in [
            "SET statement_timeout = 0",
            "SET idle_in_transaction_session_timeout = 0",
            "SET idle_session_timeout = 0",
        ] {
            sqlx::query(set).execute(&mut conn).await?;
        }
        // A temporary slot holds the WAL from here on while the data
        // directory is copied (restartpoints would recycle it); it goes
        // with the session. Without the privilege or a free slot, the WAL
        // older than the copy's end is copied first instead, and what
        // `wal_keep_size` keeps must cover the rest.
        let slot = format!(
            "baton_backup_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let slot_held = sqlx::query("SELECT pg_create_physical_replication_slot($1, true, true)")
            .bind(&slot)
            .execute(&mut conn)
            .await
            .is_ok();
        let start: String = sqlx::query_scalar("SELECT pg_backup_start($1, true)::text")
            .bind(label)
            .fetch_one(&mut conn)
            .await?;
        let start_lsn = parse_lsn(&start)
            .ok_or_else(|| PgError::Refused(format!("pg_backup_start answered {start:?}")))?;
        Ok(BackupSession {
            conn,
            data_dir: PathBuf::from(data_dir),
            in_recovery,
            start_lsn,
            segment_size: segment_size.max(1 << 20) as u64,
            slot_held,
        })
    }

    /// [`BackupSession::start`] after a `CHECKPOINT`: the server's dirty
    /// buffers are flushed first (a volume snapshot then needs little
    /// recovery). Needs superuser or the `pg_checkpoint` role.
    pub async fn start_after_checkpoint(url: &str, label: &str) -> Result<BackupSession, PgError> {
        let mut conn = PgConnection::connect(url).await?;
        sqlx::query("CHECKPOINT").execute(&mut conn).await?;
        conn.close().await?;
        Self::start(url, label).await
    }

    /// The server's WAL position now: replayed (a standby) or written.
    pub async fn position(&mut self) -> Result<u64, PgError> {
        let q = if self.in_recovery {
            "SELECT pg_last_wal_replay_lsn()::text"
        } else {
            "SELECT pg_current_wal_lsn()::text"
        };
        let lsn: String = sqlx::query_scalar(q).fetch_one(&mut self.conn).await?;
        parse_lsn(&lsn).ok_or_else(|| PgError::Refused(format!("a WAL position {lsn:?}")))
    }

    /// Ends the backup (without waiting for WAL archiving: the WAL the
    /// backup needs travels in it).
    pub async fn stop(&mut self) -> Result<Stopped, PgError> {
        let r = sqlx::query("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)")
            .fetch_one(&mut self.conn)
            .await?;
        let lsn: String = r.try_get(0)?;
        let stop_lsn = parse_lsn(&lsn)
            .ok_or_else(|| PgError::Refused(format!("pg_backup_stop answered {lsn:?}")))?;
        Ok(Stopped {
            stop_lsn,
            label: r.try_get(1)?,
            tablespace_map: r.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
        })
    }
}

/// Entries of the data directory a backup leaves out (their contents, for
/// directories): rebuilt or meaningless in a restored copy.
fn skipped(rel: &Path) -> Skip {
    let s = rel.to_string_lossy();
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    const EMPTY_DIRS: [&str; 8] = [
        "pg_wal",
        "pg_replslot",
        "pg_dynshmem",
        "pg_notify",
        "pg_serial",
        "pg_snapshots",
        "pg_stat_tmp",
        "pg_subtrans",
    ];
    if EMPTY_DIRS.contains(&s.as_ref()) {
        return Skip::Contents;
    }
    if [
        "postmaster.pid",
        "postmaster.opts",
        "backup_label",
        "backup_label.old",
        "tablespace_map",
        "tablespace_map.old",
        "standby.signal",
        "recovery.signal",
        // Added last, read after everything else.
        "global/pg_control",
    ]
    .contains(&s.as_ref())
        || name.starts_with("pgsql_tmp")
        || name.starts_with("pg_internal.init")
    {
        return Skip::Whole;
    }
    Skip::No
}

#[derive(PartialEq)]
enum Skip {
    No,
    Whole,
    Contents,
}

/// A file's first `len` bytes as they are read now, padded with zeros if
/// it shrank meanwhile (PostgreSQL rewrites files during a backup; the
/// WAL replayed after a restore repairs what a copy caught mid-write).
struct Exactly<R> {
    inner: R,
    left: u64,
    eof: bool,
}

impl<R: Read> Read for Exactly<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = if self.eof {
            buf[..want].fill(0);
            want
        } else {
            match self.inner.read(&mut buf[..want])? {
                0 => {
                    self.eof = true;
                    buf[..want].fill(0);
                    want
                }
                n => n,
            }
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// A tar header with a file's mode, owner and time.
fn header_of(md: &std::fs::Metadata) -> tar::Header {
    use std::os::unix::fs::MetadataExt;
    let mut h = tar::Header::new_gnu();
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(u64::from(md.uid()));
    h.set_gid(u64::from(md.gid()));
    h.set_mtime(md.mtime().max(0) as u64);
    h
}

/// Appends the regular file `f` (as `md` describes it when it was
/// opened) under `name`: exactly `md.len()` bytes.
fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &Path,
    f: std::fs::File,
    md: &std::fs::Metadata,
    what: &Path,
) -> Result<(), PgError> {
    let mut h = header_of(md);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(md.len());
    let body = Exactly {
        inner: f,
        left: md.len(),
        eof: false,
    };
    tar.append_data(&mut h, name, body).map_err(io_err(what))
}

fn io_err(what: &Path) -> impl Fn(std::io::Error) -> PgError + '_ {
    move |e| PgError::Io(what.display().to_string(), e)
}

/// Counts what a tar stream holds.
#[derive(Debug, Default, Clone, Copy)]
pub struct TarCounts {
    pub files: u64,
    pub bytes: u64,
    pub wal_segments: u64,
}

/// Writes the data directory `dir` into `tar` (all but what `skipped`
/// leaves out and the control file), walking it in name order.
pub fn write_data_dir<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    counts: &mut TarCounts,
) -> Result<(), PgError> {
    fn walk<W: Write>(
        tar: &mut tar::Builder<W>,
        root: &Path,
        rel: &Path,
        counts: &mut TarCounts,
    ) -> Result<(), PgError> {
        let path = root.join(rel);
        let mut names: Vec<_> = match std::fs::read_dir(&path) {
            Ok(d) => d.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            // A directory dropped during the backup: the WAL says so.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        names.sort();
        for n in names {
            let r = rel.join(&n);
            let skip = skipped(&r);
            if skip == Skip::Whole {
                continue;
            }
            let p = root.join(&r);
            let md = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&p)(e)),
            };
            // pg_wal may be a link to another disk: it is a directory here.
            let is_dir = md.is_dir() || (skip == Skip::Contents && p.is_dir());
            // A linked directory (pg_wal on another disk) as the directory
            // it is, not the link's own mode and owner.
            let md = if is_dir && !md.is_dir() {
                std::fs::metadata(&p).map_err(io_err(&p))?
            } else {
                md
            };
            let mut h = header_of(&md);
            if is_dir {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, &r, std::io::empty())
                    .map_err(io_err(&p))?;
                if skip == Skip::Contents {
                    if r == Path::new("pg_wal") {
                        let mut a = h.clone();
                        tar.append_data(&mut a, r.join("archive_status"), std::io::empty())
                            .map_err(io_err(&p))?;
                    }
                    continue;
                }
                walk(tar, root, &r, counts)?;
            } else if md.is_file() {
                let f = match std::fs::File::open(&p) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&p)(e)),
                };
                append_file(tar, &r, f, &md, &p)?;
                counts.files += 1;
                counts.bytes += md.len();
            } else if md.file_type().is_symlink() {
                return Err(PgError::Refused(format!(
                    "{} is a symbolic link (a tablespace or a linked directory), which this backup does not take yet",
                    p.display()
                )));
            }
        }
        Ok(())
    }
    walk(tar, dir, Path::new(""), counts)
}

/// Appends a file made in memory.
pub fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    mode: u32,
    owner: (u64, u64),
    bytes: &[u8],
) -> Result<(), PgError> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_uid(owner.0);
    h.set_gid(owner.1);
    h.set_size(bytes.len() as u64);
    h.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    tar.append_data(&mut h, name, bytes)
        .map_err(|e| PgError::Io(name.to_string(), e))
}

/// A WAL segment file's name: timeline and segment number, for
/// `segment_size`.
fn segment_of(name: &str, segment_size: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    let per_log = 0x1_0000_0000 / segment_size;
    Some((tli, log * per_log + seg))
}

/// The segment holding the last byte before `lsn` (a backup that stops
/// on a segment boundary needs nothing of the next one).
pub fn segment_before(lsn: u64, segment_size: u64) -> u64 {
    lsn.saturating_sub(1) / segment_size
}

/// Copies WAL segments `first..=last` from `data_dir/pg_wal` into
/// `into/pg_wal` (replacing older copies there), with the timeline history
/// files; each checked as [`append_wal`] checks them.
pub fn copy_wal(
    data_dir: &Path,
    into: &Path,
    range: (u64, u64),
    segment_size: u64,
) -> Result<(), PgError> {
    let dest = into.join("pg_wal");
    // A pg_wal elsewhere (a symbolic link) would be written through.
    if !std::fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
        return Err(PgError::Refused(format!(
            "{} is not a directory (WAL on another disk is not taken yet)",
            dest.display()
        )));
    }
    for (name, mut f, md) in wal_files(data_dir, range, segment_size, true)? {
        let to = dest.join(&name);
        let tmp = dest.join(format!(".{name}.baton"));
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&tmp)(e)),
            _ => {}
        }
        let mut out = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err(&tmp))?
        };
        std::io::copy(&mut f, &mut out).map_err(io_err(&tmp))?;
        out.sync_all().map_err(io_err(&tmp))?;
        {
            use std::os::unix::fs::MetadataExt;
            std::os::unix::fs::fchown(&out, Some(md.uid()), Some(md.gid()))
                .map_err(io_err(&tmp))?;
            out.set_permissions(md.permissions())
                .map_err(io_err(&tmp))?;
        }
        std::fs::rename(&tmp, &to).map_err(io_err(&to))?;
    }
    Ok(())
}

/// Appends WAL segments `first..=last` from `data_dir/pg_wal` (every
/// timeline's copy of each), and with `history` the timeline history
/// files. Each must be there and be that segment (its first page says so:
/// a recycled file reused under another name is not); else the copy
/// would not reach consistency, and the backup fails saying so.
pub fn append_wal<W: Write>(
    tar: &mut tar::Builder<W>,
    data_dir: &Path,
    range: (u64, u64),
    segment_size: u64,
    history: bool,
    counts: &mut TarCounts,
) -> Result<(), PgError> {
    for (name, f, md) in wal_files(data_dir, range, segment_size, history)? {
        if segment_of(&name, segment_size).is_some() {
            counts.wal_segments += 1;
        }
        let p = data_dir.join("pg_wal").join(&name);
        append_file(tar, &Path::new("pg_wal").join(&name), f, &md, &p)?;
        counts.bytes += md.len();
    }
    Ok(())
}

/// The WAL files [`append_wal`] takes, opened and checked.
fn wal_files(
    data_dir: &Path,
    (first, last): (u64, u64),
    segment_size: u64,
    history: bool,
) -> Result<Vec<(String, std::fs::File, std::fs::Metadata)>, PgError> {
    let wal = data_dir.join("pg_wal");
    let mut names: Vec<String> = std::fs::read_dir(&wal)
        .map_err(io_err(&wal))?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .collect();
    names.sort();
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for n in names {
        let seg = match segment_of(&n, segment_size) {
            Some((_, seg)) if (first..=last).contains(&seg) => Some(seg),
            Some(_) => continue,
            None if history && n.ends_with(".history") => None,
            None => continue,
        };
        let p = wal.join(&n);
        let f = std::fs::File::open(&p).map_err(io_err(&p))?;
        let md = f.metadata().map_err(io_err(&p))?;
        if let Some(seg) = seg {
            // The long page header: magic, info, timeline, then the page's
            // own WAL address.
            use std::os::unix::fs::FileExt;
            let mut head = [0u8; 16];
            f.read_exact_at(&mut head, 0).map_err(io_err(&p))?;
            let addr = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
            if addr != seg * segment_size {
                return Err(PgError::Refused(format!(
                    "{} does not hold WAL segment {seg} (it was recycled before it was copied): keep more WAL (wal_keep_size), or let the backup use a replication slot",
                    p.display()
                )));
            }
            seen.insert(seg);
        }
        out.push((n, f, md));
    }
    if let Some(missing) = (first..=last).find(|s| !seen.contains(s)) {
        return Err(PgError::Refused(format!(
            "WAL segment {missing} (of {first} to {last}) the backup needs is no longer in {}: keep more WAL (wal_keep_size), or let the backup use a replication slot (max_replication_slots, the REPLICATION privilege)",
            wal.display()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_and_segment_names() {
        assert_eq!(parse_lsn("0/3000028"), Some(0x3000028));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(parse_lsn("nope"), None);
        let seg = 16 << 20;
        assert_eq!(segment_of("000000010000000000000003", seg), Some((1, 3)));
        assert_eq!(
            segment_of("000000020000000100000002", seg),
            Some((2, 256 + 2))
        );
        assert_eq!(segment_of("00000002.history", seg), None);
        // A backup stopping on a boundary needs nothing of the next one.
        assert_eq!(segment_before(3 * seg, seg), 2);
        assert_eq!(segment_before(3 * seg + 40, seg), 3);
    }

    #[test]
    fn what_a_backup_leaves_out() {
        for (p, want) in [
            ("postmaster.pid", Skip::Whole),
            ("global/pg_control", Skip::Whole),
            ("standby.signal", Skip::Whole),
            ("base/1/pgsql_tmp123", Skip::Whole),
            ("pg_wal", Skip::Contents),
            ("pg_replslot", Skip::Contents),
            ("base/1/1259", Skip::No),
            ("postgresql.auto.conf", Skip::No),
        ] {
            assert!(skipped(Path::new(p)) == want, "{p}");
        }
    }

    #[test]
    fn a_file_that_shrinks_while_read_keeps_its_size() {
        let mut r = Exactly {
            inner: &b"abc"[..],
            left: 6,
            eof: false,
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc\0\0\0");
    }
}
