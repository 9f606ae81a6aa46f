//! Block images: `backup --block`, restore and dump of an image,
//! `serve-nbd`, and `restore --instant`.

use crate::baton::{BlockBackupOptions, BlockSource, ImageReader, ReaderConfig, Repository};
use crate::cli::{BackupArgs, Global, NbdArgs, RestoreArgs, ServeNbdArgs};
use crate::context;
use crate::progress::CliProgress;
use anyhow::{Context, Result, bail};
use baton_block::instant::{self, InstantState, Phase};
use baton_block::{Destination, Overlay, PseudoVolume};
use baton_repo::RepoError;
use baton_types::{Id, Node, Snapshot};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub fn backup(g: &Global, a: &BackupArgs, repo: &mut Repository, source: &Path) -> Result<i32> {
    let size = a.block_size.unwrap_or(u64::from(repo.config().block_size));
    let chunk_size = u32::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two() && (4096..=16 << 20).contains(s))
        .ok_or_else(|| {
            crate::Usage(format!(
                "--block-size {size} is not a power of two from 4KiB to 16MiB"
            ))
        })?;
    let opts = BlockBackupOptions {
        name: a.image_name.clone(),
        chunk_size,
        tags: a.tag.iter().filter(|t| !t.is_empty()).cloned().collect(),
        host: a.host.clone(),
        time: a.time.clone(),
        resume: a.resume == crate::cli::ResumeArg::Auto,
        force: a.force,
        checkpoint_interval: Duration::from_secs_f64(a.checkpoint_interval.max(0.0)),
    };
    let progress = CliProgress::new(g.verbose, g.quiet, g.json).streaming(g.json);
    let mut stdin = std::io::stdin();
    let src = if source == Path::new("-") {
        BlockSource::Stream(&mut stdin)
    } else {
        BlockSource::Path(source.to_path_buf())
    };
    let r = baton_block::backup_block(repo, src, &opts, &progress, context::cancel());
    progress.finish();
    let r = r?;
    for w in &r.warnings {
        eprintln!("warning: {}", context::escape(w));
    }
    let s = r.snapshot.summary.clone().unwrap_or_default();
    if g.json {
        super::print_json(
            "summary",
            serde_json::json!({
                "snapshot_id": r.snapshot_id.to_hex(),
                "tree_id": r.snapshot.tree.to_hex(),
                "parent": r.snapshot.parent.map(|i| i.to_hex()),
                "image_size": s.bytes_total,
                "chunk_size": chunk_size,
                "chunks": r.chunks,
                "holes": r.holes,
                "chunks_new": r.chunks_new,
                "chunks_changed": r.chunks_changed,
                "bytes_read": s.bytes_read,
                "bytes_stored": s.bytes_stored,
                "blobs_new": s.blobs_new,
                "resumed": s.resumed_job.is_some(),
                "resumed_job": s.resumed_job.map(|i| i.to_hex()),
                "bytes_resumed": s.bytes_resumed,
                "errors": s.errors,
                "error_count": s.errors.len(),
                "duration_s": s.duration_s,
            }),
        );
    } else if !g.quiet {
        outln!(
            "Image:  {} in {} of {}: {}, {} changed, {} new",
            super::bytes(s.bytes_total),
            super::count(r.chunks, "chunk"),
            super::bytes(u64::from(chunk_size)),
            super::count(r.holes, "hole"),
            r.chunks_changed,
            r.chunks_new
        );
        super::print_read_and_stored(&s);
        outln!(
            "snapshot {} saved in {:.1}s",
            r.snapshot_id.short(),
            s.duration_s
        );
    }
    Ok(crate::exit::OK)
}

/// The image a `SNAPSHOT[:IMAGE]` reference names, if the snapshot holds
/// images (None: a file snapshot, or a path that is not an image).
pub fn image_of(
    repo: &Repository,
    snapshot: &Snapshot,
    path: Option<&str>,
) -> Result<Option<Node>> {
    let tree = repo.load_tree(&snapshot.tree)?;
    let has_images = tree
        .nodes
        .iter()
        .any(|n| n.kind == baton_types::NodeKind::Image);
    if !has_images {
        return Ok(None);
    }
    let name = path
        .map(|p| p.trim_start_matches('/'))
        .filter(|p| !p.is_empty());
    match baton_block::find_image(repo, snapshot, name) {
        Ok(n) => Ok(Some(n)),
        Err(e)
            if name.is_some()
                && tree
                    .nodes
                    .iter()
                    .all(|n| n.kind == baton_types::NodeKind::Image) =>
        {
            Err(e.into())
        }
        Err(_) if name.is_some() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn reader(repo: Repository, node: &Node) -> Result<Arc<ImageReader>> {
    Ok(Arc::new(ImageReader::open(
        Arc::new(repo),
        node,
        ReaderConfig::default(),
    )?))
}

/// `baton restore SNAPSHOT[:IMAGE] --target FILE` of an image.
pub fn restore(g: &Global, a: &RestoreArgs, repo: Repository, id: Id, node: &Node) -> Result<i32> {
    if !a.include.is_empty() || !a.exclude.is_empty() {
        bail!(crate::Usage(
            "--include and --exclude select files; an image is restored whole".into()
        ));
    }
    if a.instant {
        return instant(g, a, repo, id, node);
    }
    let r = reader(repo, node)?;
    let progress = CliProgress::new(g.verbose, g.quiet, g.json).streaming(g.json);
    crate::baton::Progress::set_total(&progress, 0, r.size());
    let st = baton_block::restore_image(&r, &a.target, &progress, context::cancel());
    progress.finish();
    let st = st?;
    if g.json {
        let mut v = serde_json::to_value(&st)?;
        v["snapshot_id"] = id.to_hex().into();
        v["image"] = node.name.lossy().into();
        super::print_json("summary", v);
    } else if !g.quiet {
        outln!(
            "restored image {} of snapshot {} to {}: {} ({}, {})",
            node.name.lossy(),
            id.short(),
            a.target.display(),
            super::bytes(st.size),
            super::count(st.chunks, "chunk"),
            super::count(st.holes, "hole")
        );
    }
    Ok(crate::exit::OK)
}

/// `baton dump SNAPSHOT IMAGE`: the image's bytes to stdout.
pub fn dump(repo: Repository, node: &Node, out: &mut dyn std::io::Write) -> Result<()> {
    let r = reader(repo, node)?;
    baton_block::dump_image(&r, out, context::cancel())?;
    Ok(())
}

/// Adapts a pseudo-volume to the NBD server, mapping errors to errnos and
/// logging every failed read or write once, with its range.
struct NbdVolume(Arc<PseudoVolume>);

fn errno_of(e: &RepoError, what: &str, offset: u64, len: u64) -> baton_nbd::VolumeError {
    use nix::libc::{EDQUOT, EFBIG, ENOSPC};
    let errno = match e {
        RepoError::Invalid(_) => 22,
        RepoError::Io { cause, .. }
            if matches!(cause.raw_os_error(), Some(ENOSPC | EDQUOT | EFBIG)) =>
        {
            28
        }
        _ => 5,
    };
    let msg = format!("{what} of {len} bytes at offset {offset} failed: {e}");
    // Logged, but a client retrying a damaged range must not flood the log:
    // the first 20, then every 1000th.
    static LOGGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = LOGGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if n < 20 || n.is_multiple_of(1000) {
        eprintln!(
            "error: {} ({} failed requests so far)",
            context::escape(&msg),
            n + 1
        );
    }
    baton_nbd::VolumeError::new(errno, msg).at(offset)
}

impl baton_nbd::Volume for NbdVolume {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), baton_nbd::VolumeError> {
        self.0
            .read(offset, buf)
            .map_err(|e| errno_of(&e, "read", offset, buf.len() as u64))
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), baton_nbd::VolumeError> {
        self.0
            .write(offset, data, fua)
            .map_err(|e| errno_of(&e, "write", offset, data.len() as u64))
    }
    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        _may_trim: bool,
        fua: bool,
    ) -> Result<(), baton_nbd::VolumeError> {
        self.0
            .zero(offset, length, fua)
            .map_err(|e| errno_of(&e, "write zeroes", offset, length))
    }
    fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<(), baton_nbd::VolumeError> {
        self.0
            .zero(offset, length, fua)
            .map_err(|e| errno_of(&e, "trim", offset, length))
    }
    fn flush(&self) -> Result<(), baton_nbd::VolumeError> {
        self.0.flush().map_err(|e| errno_of(&e, "flush", 0, 0))
    }
    fn extents(
        &self,
        offset: u64,
        length: u64,
    ) -> Result<Vec<baton_nbd::Extent>, baton_nbd::VolumeError> {
        let runs = self
            .0
            .extents(offset, length)
            .map_err(|e| errno_of(&e, "block status", offset, length))?;
        Ok(runs
            .into_iter()
            .map(|(length, hole)| baton_nbd::Extent {
                length,
                hole,
                zero: hole,
            })
            .collect())
    }
    fn cache(&self, offset: u64, length: u64) -> Result<(), baton_nbd::VolumeError> {
        let l = *self.0.reader().layout();
        let end = offset.saturating_add(length).min(self.0.size());
        if offset < end {
            // A hint: at most 64 chunks per request.
            let first = l.chunk_of(offset);
            for i in first..=l.chunk_of(end - 1).min(first + 63) {
                self.0.reader().prefetch(i);
            }
        }
        Ok(())
    }
}

/// A running NBD export of a pseudo-volume.
struct Export {
    rt: tokio::runtime::Runtime,
    server: Arc<baton_nbd::Server>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    address: String,
    uri: String,
}

fn start_export(nbd: &NbdArgs, vol: Arc<PseudoVolume>, name: &str, g: &Global) -> Result<Export> {
    let listen: baton_nbd::Listen = nbd
        .listen
        .parse()
        .map_err(|e: baton_nbd::ParseListenError| crate::Usage(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the NBD server's runtime")?;
    let export_name = nbd.export_name.clone().unwrap_or_else(|| name.to_string());
    let chunk = vol.reader().layout().chunk_size;
    let cfg = baton_nbd::ServerConfig {
        export_name: export_name.clone(),
        description: format!("baton image {name}"),
        preferred_block: 4096,
        max_request: 32 << 20,
    };
    let verbose = g.verbose > 0;
    let server = Arc::new(
        baton_nbd::Server::new(Arc::new(NbdVolume(vol)), cfg).on_event(move |e| match e {
            baton_nbd::Event::ProtocolError { id, message } => eprintln!(
                "warning: NBD client {id} broke the protocol and was disconnected: {}",
                context::escape(&message)
            ),
            baton_nbd::Event::Connected { id } if verbose => eprintln!("NBD client {id} connected"),
            baton_nbd::Event::Disconnected { id } if verbose => {
                eprintln!("NBD client {id} disconnected")
            }
            _ => {}
        }),
    );
    let _ = chunk;
    // A Unix socket is created 0600 (umask 077 around the bind): only this
    // user connects, as the export authenticates nobody.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let bound = rt.block_on(server.bind(&listen));
    nix::sys::stat::umask(old);
    let bound = bound.with_context(|| format!("listening on {}", nbd.listen))?;
    let address = bound.local_addr_string();
    let uri = match &listen {
        baton_nbd::Listen::Unix(p) => format!("nbd+unix:///{export_name}?socket={}", p.display()),
        baton_nbd::Listen::Tcp(_) => format!("nbd://{address}/{export_name}"),
    };
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let s = server.clone();
    let task = rt.spawn(async move {
        s.serve(bound, async move {
            let _ = stopped.wait_for(|v| *v).await;
        })
        .await
    });
    // The runtime is current-thread: it serves while `run_until` drives it.
    Ok(Export {
        rt,
        server,
        stop,
        task,
        address,
        uri,
    })
}

impl Export {
    /// Serves until `until` returns true (polled every 100 ms) or the
    /// process is interrupted; then stops the server.
    fn run_until(&self, mut until: impl FnMut(&baton_nbd::Server) -> bool) {
        self.rt.block_on(async {
            loop {
                if context::cancel().is_cancelled()
                    || until(&self.server)
                    || self.task.is_finished()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        let r = self.rt.block_on(self.task);
        match r {
            Ok(r) => r.context("the NBD server failed"),
            Err(e) => bail!("the NBD server stopped: {e}"),
        }
    }
}

fn announce(g: &Global, what: &str, ex: &Export, size: u64, ready: Duration) {
    if g.json {
        super::print_json(
            "nbd_ready",
            serde_json::json!({
                "what": what,
                "address": ex.address,
                "uri": ex.uri,
                "size": size,
                "ready_ms": ready.as_secs_f64() * 1000.0,
            }),
        );
    } else if !g.quiet {
        outln!(
            "serving {what} ({}) at {} after {} ms",
            super::bytes(size),
            ex.uri,
            ready.as_millis()
        );
    }
}

/// A new overlay in the temporary directory: an unpredictable name,
/// created exclusively (by `Overlay::open`), so nobody can plant it.
fn temp_overlay(id: &Id) -> PathBuf {
    std::env::temp_dir().join(format!(
        "baton-overlay-{}-{}",
        id.short(),
        &baton_format::random_id().to_hex()[..20]
    ))
}

/// `baton serve-nbd SNAPSHOT[:IMAGE]`.
pub fn serve_nbd(g: &Global, a: &ServeNbdArgs) -> Result<i32> {
    let t0 = context::started();
    let (repo, _lock) = context::open_indexed(g)?;
    let (snap, path) = super::restore::split_ref(&a.snapshot);
    let (id, snapshot) = super::select::find(&repo, snap, &a.filter)?;
    let node = image_of(&repo, &snapshot, path)?.ok_or_else(|| {
        crate::Usage(format!(
            "snapshot {} holds no block image{}",
            id.short(),
            path.map(|p| format!(" named {p:?}")).unwrap_or_default()
        ))
    })?;
    let name = node.name.lossy().to_string();
    let r = reader(repo, &node)?;
    let (overlay_path, temporary) = match &a.nbd.overlay {
        Some(p) => (p.clone(), false),
        None => (temp_overlay(&id), true),
    };
    let overlay = Overlay::open(&overlay_path, r.size(), &format!("{}:{name}", id.to_hex()))?;
    if temporary && !g.quiet {
        eprintln!(
            "writes go to a temporary overlay, discarded at exit (give --overlay FILE to keep them across restarts)"
        );
    }
    let vol = Arc::new(PseudoVolume::new(r.clone(), overlay, None).started_at(t0));
    let ex = start_export(&a.nbd, vol.clone(), &name, g)?;
    announce(
        g,
        &format!("{}:{name}", id.short()),
        &ex,
        r.size(),
        t0.elapsed(),
    );
    ex.run_until(|_| false);
    let served = ex.stop();
    let flushed = vol.flush();
    if temporary {
        let _ = std::fs::remove_file(&overlay_path);
        let _ = std::fs::remove_file(baton_block::overlay::map_path(&overlay_path));
    }
    served?;
    flushed?;
    Ok(crate::exit::OK)
}

fn spawn_command(what: &str, cmd: &str, target: &Path) -> Result<std::process::Child> {
    std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("BATON_TARGET", target)
        .spawn()
        .with_context(|| format!("running the {what} command"))
}

fn run_command(what: &str, cmd: &str, target: &Path) -> Result<()> {
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("BATON_TARGET", target)
        .status()
        .with_context(|| format!("running the {what} command"))?;
    if !status.success() {
        bail!("the {what} command {cmd:?} failed ({status})");
    }
    Ok(())
}

fn default_overlay(target: &Path) -> PathBuf {
    let mut p = target.as_os_str().to_owned();
    p.push(".baton-overlay");
    PathBuf::from(p)
}

/// `baton restore --instant SNAPSHOT[:IMAGE] --target DEST`.
fn instant(g: &Global, a: &RestoreArgs, repo: Repository, id: Id, node: &Node) -> Result<i32> {
    let t0 = context::started();
    let name = node.name.lossy().to_string();
    let identity = format!("{}:{name}", id.to_hex());
    let target = std::path::absolute(&a.target).context("the target path")?;
    let device = std::fs::metadata(&target).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_block_device()
    });
    if device && a.nbd.overlay.is_none() {
        // Beside /dev/sdb would be /dev: memory, lost with a reboot.
        bail!(crate::Usage(format!(
            "{} is a block device: give --overlay FILE on a persistent file system (it keeps the client's writes and the restore's state)",
            target.display()
        )));
    }
    let overlay_path = a
        .nbd
        .overlay
        .clone()
        .unwrap_or_else(|| default_overlay(&target));
    let prior = instant::load_state(&overlay_path)?;
    if let Some(st) = &prior
        && (st.identity != identity || Path::new(&st.target) != target)
    {
        bail!(crate::Usage(format!(
            "{} belongs to an instant restore of {} to {}: finish that one, or remove {} and its .map, .restored and .state files",
            overlay_path.display(),
            st.identity,
            st.target,
            overlay_path.display()
        )));
    }
    let phase = prior.as_ref().map(|s| s.phase);
    let state = |phase: Phase| InstantState {
        identity: identity.clone(),
        target: target.to_string_lossy().into_owned(),
        phase,
    };
    let save = |phase: Phase| instant::save_state(&overlay_path, &state(phase));
    if matches!(phase, Some(Phase::Verified | Phase::Done)) {
        // Merged and verified by an earlier run: the target is never
        // opened again; what is left is the start command and cleanup.
        if phase == Some(Phase::Verified)
            && let Some(cmd) = &a.start_command
        {
            run_command("start", cmd, &target)?;
        }
        instant::remove_files(&overlay_path, &state(Phase::Done))?;
        if !g.quiet {
            eprintln!(
                "the instant restore to {} was already merged and verified",
                target.display()
            );
        }
        return Ok(crate::exit::OK);
    }
    let r = reader(repo, node)?;
    let l = *r.layout();
    // The overlay first: a foreign one is refused before the target is
    // touched.
    let overlay = Overlay::open(&overlay_path, l.image_size, &identity)?;
    if let (Ok(o), Ok(t)) = (std::fs::metadata(&overlay_path), std::fs::metadata(&target)) {
        use std::os::unix::fs::MetadataExt;
        let map = std::fs::metadata(baton_block::overlay::map_path(&overlay_path));
        if (o.dev(), o.ino()) == (t.dev(), t.ino())
            || map.is_ok_and(|m| (m.dev(), m.ino()) == (t.dev(), t.ino()))
        {
            bail!(crate::Usage(
                "the overlay cannot be the target itself".into()
            ));
        }
    }
    let mode = match phase {
        None => instant::OpenMode::Fresh,
        Some(Phase::Copying) => instant::OpenMode::Continue,
        _ => instant::OpenMode::Strict,
    };
    let dest = Arc::new(Destination::open(
        &target,
        &overlay_path,
        l.image_size,
        l.chunk_count(),
        &identity,
        mode,
    )?);
    let vol = Arc::new(PseudoVolume::new(r.clone(), overlay, Some(dest.clone())).started_at(t0));
    let status = |phase: &str, extra: serde_json::Value| {
        if g.json {
            let mut v = serde_json::json!({"phase": phase});
            if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            super::print_json("status", v);
        } else if !g.quiet {
            eprintln!("{phase}: {extra}");
        }
    };
    let mut copy = instant::CopyProgress::default();
    let mut ready_ms = None;
    if matches!(phase, None | Some(Phase::Copying)) {
        save(Phase::Copying)?;
        let ex = start_export(&a.nbd, vol.clone(), &name, g)?;
        ready_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
        announce(
            g,
            &format!("{}:{name}", id.short()),
            &ex,
            l.image_size,
            t0.elapsed(),
        );
        if let Some(before) = dest.copied().checked_sub(0)
            && prior.is_some()
        {
            status(
                "resumed",
                serde_json::json!({"copied": before, "chunks": l.chunk_count(), "overlay_blocks": vol.overlay().written_blocks()}),
            );
        }
        let (vol2, dest2) = (vol.clone(), dest.clone());
        let last = Arc::new(std::sync::Mutex::new(instant::CopyProgress::default()));
        let last2 = last.clone();
        let json = g.json;
        let quiet = g.quiet;
        let limit = a.copy_limit;
        let copier = std::thread::spawn(move || {
            let report = |p: &instant::CopyProgress, err: Option<&str>| {
                *last2.lock().expect("progress") = *p;
                if let Some(e) = err {
                    if json {
                        eprintln!(
                            "{}",
                            serde_json::json!({"message_type": "error", "item": "", "message": e, "during": "copying"})
                        );
                    } else {
                        eprintln!("error: {}", context::escape(e));
                    }
                } else if json {
                    super::print_json(
                        "status",
                        serde_json::json!({
                            "phase": "copying",
                            "copied": p.copied, "chunks": p.chunks,
                            "bytes_copied": p.bytes_copied, "jumped": p.jumped,
                        }),
                    );
                } else if !quiet {
                    eprint!("\rcopying: {}/{} chunks", p.copied, p.chunks);
                }
            };
            instant::copy_to_destination(&vol2, &dest2, 64, limit, &report, context::cancel())
        });
        // Serve while copying.
        ex.run_until(|_| copier.is_finished());
        let copied = copier
            .join()
            .map_err(|_| anyhow::anyhow!("the background restore panicked"))?;
        copy = *last.lock().expect("progress");
        if !g.json && !g.quiet {
            eprintln!();
        }
        let failed = match copied {
            Ok(f) => f,
            Err(e) if matches!(e, RepoError::Cancelled) || context::cancel().is_cancelled() => {
                let _ = ex.stop();
                vol.flush()?;
                return Err(e.into());
            }
            Err(e) => {
                // The target failed (full, I/O error): the application keeps
                // its volume (overlay and repository) until it lets go.
                eprintln!(
                    "error: the background restore stopped: {}; the export keeps serving until every NBD client disconnects, then the restore stops unfinished (run it again once the target is fixed)",
                    context::escape(&e.to_string())
                );
                ex.run_until(|s| s.connections() == 0);
                let _ = ex.stop();
                vol.flush()?;
                return Err(e.into());
            }
        };
        if !failed.is_empty() {
            eprintln!(
                "error: {} chunks could not be read from the repository; the export keeps serving (reads of them fail with EIO) until every client disconnects, then the restore stops unfinished (run it again after `baton check`)",
                failed.len()
            );
            ex.run_until(|s| s.connections() == 0);
            let _ = ex.stop();
            vol.flush()?;
            bail!(RepoError::Damaged(format!(
                "{} chunks of the image could not be restored",
                failed.len()
            )));
        }
        status(
            "copied",
            serde_json::json!({"chunks": l.chunk_count(), "bytes_copied": copy.bytes_copied, "jumped": copy.jumped}),
        );
        // Stop the application, then the export.
        match &a.stop_command {
            Some(cmd) => {
                status("stopping", serde_json::json!({"command": cmd}));
                // The export keeps serving while the application stops (it
                // flushes through it).
                let mut child = spawn_command("stop", cmd, &target)?;
                let mut exited = None;
                ex.run_until(|_| {
                    exited = child.try_wait().ok().flatten();
                    exited.is_some()
                });
                match exited {
                    Some(st) if st.success() => {}
                    Some(st) => {
                        let _ = ex.stop();
                        vol.flush()?;
                        bail!(
                            "the stop command {cmd:?} failed ({st}); the restore stays in instant mode (run it again)"
                        );
                    }
                    None => {
                        let _ = child.kill();
                    }
                }
            }
            None => {
                status(
                    "waiting",
                    serde_json::json!({"for": "every NBD client to disconnect", "clients": ex.server.connections()}),
                );
                ex.run_until(|s| s.connections() == 0);
            }
        }
        if context::cancel().is_cancelled() {
            let _ = ex.stop();
            vol.flush()?;
            return Err(RepoError::Cancelled.into());
        }
        ex.stop()?;
    }
    let ttfb = vol.time_to_first_byte();
    if (0..l.chunk_count()).any(|i| !dest.has(i)) {
        bail!(RepoError::Damaged(
            "the state says the copy is complete, but chunks are missing from the target".into()
        ));
    }
    save(Phase::Merging)?;
    status(
        "merging",
        serde_json::json!({"overlay_blocks": vol.overlay().written_blocks()}),
    );
    let merged = instant::merge(vol.overlay(), &dest)?;
    let report = instant::verify(&vol, &dest, context::cancel())?;
    if !report.mismatches.is_empty() {
        bail!(RepoError::Damaged(format!(
            "the merged target differs from the snapshot plus the client's writes in {} chunks (first at byte {}); the overlay is kept",
            report.mismatches.len(),
            report.mismatches[0].0
        )));
    }
    save(Phase::Verified)?;
    if let Some(cmd) = &a.start_command {
        status("starting", serde_json::json!({"command": cmd}));
        run_command("start", cmd, &target)?;
    }
    let (reads, writes) = (
        vol.stats.reads.load(std::sync::atomic::Ordering::Relaxed),
        vol.stats.writes.load(std::sync::atomic::Ordering::Relaxed),
    );
    // Closes (and unlocks) the overlay before its files go.
    drop(vol);
    instant::remove_files(&overlay_path, &state(Phase::Done))?;
    let summary = serde_json::json!({
        "snapshot_id": id.to_hex(),
        "image": name,
        "target": target,
        "size": l.image_size,
        "chunks": l.chunk_count(),
        "ready_ms": ready_ms,
        "time_to_first_byte_ms": ttfb.map(|d| d.as_secs_f64() * 1000.0),
        "chunks_copied": copy.copied,
        "bytes_copied": copy.bytes_copied,
        "jumped_ahead": copy.jumped,
        "merged_bytes": merged,
        "verified": report,
        "reads": reads,
        "writes": writes,
        "duration_s": t0.elapsed().as_secs_f64(),
    });
    if g.json {
        super::print_json("summary", summary);
    } else if !g.quiet {
        outln!(
            "instant restore of {}:{name} to {} complete: {} merged from the overlay, verified{}",
            id.short(),
            target.display(),
            super::bytes(merged),
            ttfb.map(|d| format!("; first byte served after {} ms", d.as_millis()))
                .unwrap_or_default()
        );
    }
    Ok(crate::exit::OK)
}
