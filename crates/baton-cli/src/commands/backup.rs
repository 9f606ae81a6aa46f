use crate::baton::{BackupOptions, InitOptions};
use crate::cli::{BackupArgs, Global};
use crate::context;
use crate::progress::CliProgress;
use anyhow::{Context, Result};
use std::io::Read;

pub fn run(g: &Global, a: &BackupArgs) -> Result<i32> {
    run_with_input(g, a, None)
}

/// [`run`], with `--stdin` reading `input` (when given) instead of the
/// process's standard input.
pub fn run_with_input(
    g: &Global,
    a: &BackupArgs,
    input: Option<&mut (dyn Read + Send)>,
) -> Result<i32> {
    let (location, is_default) = context::repo_location(g);
    let storage = context::storage(g)?;
    let mut repo = if (is_default || a.init) && !storage.exists()? {
        let r = super::init::create(g, storage, &InitOptions::default())?;
        if !g.quiet {
            eprintln!("created new repository at {}", location.display());
        }
        r
    } else {
        context::open(g)?
    };
    if let Some(source) = &a.block {
        if a.dry_run || a.parent.is_some() || !a.exclude.is_empty() {
            anyhow::bail!(crate::Usage(
                "--dry-run, --parent and --exclude apply to file backups, not to --block".into()
            ));
        }
        return super::block::backup(g, a, &mut repo, source);
    }
    let mut paths = a.paths.clone();
    paths.extend(files_from(a)?);
    if paths.is_empty() && !a.stdin {
        anyhow::bail!(crate::Usage(
            "nothing to back up: the --files-from lists are empty".into()
        ));
    }
    let volume = if a.volume_snapshot {
        Some(super::volume::prepare(g, a, &paths)?)
    } else {
        if a.keep_volume_snapshot
            || a.quiesce_postgres.is_some()
            || a.quiesce_command.is_some()
            || a.quiesce_fsfreeze.is_some()
        {
            anyhow::bail!(crate::Usage(
                "quiescing and keeping apply to --volume-snapshot".into()
            ));
        }
        None
    };
    let mut excludes = a.exclude.clone();
    if let Some(v) = &volume {
        // Snapshots kept for replication are not part of the data.
        excludes.push(
            v.taken
                .subvolume
                .join(baton_replication::volume::SNAPSHOT_DIR)
                .display()
                .to_string(),
        );
    }
    let opts = BackupOptions {
        paths,
        stdin_filename: a.stdin.then(|| a.stdin_filename.clone()),
        excludes,
        exclude_files: a.exclude_file.clone(),
        exclude_caches: a.exclude_caches,
        iexcludes: a.iexclude.clone(),
        exclude_larger_than: a.exclude_larger_than,
        exclude_if_present: a.exclude_if_present.clone(),
        one_file_system: a.one_file_system,
        force: a.force,
        parent: a.parent.clone(),
        tags: a.tag.iter().filter(|t| !t.is_empty()).cloned().collect(),
        host: a.host.clone(),
        dry_run: a.dry_run,
        resume: match a.resume {
            crate::cli::ResumeArg::Auto => crate::baton::ResumeMode::Auto,
            crate::cli::ResumeArg::Never => crate::baton::ResumeMode::Never,
        },
        checkpoint_interval: Some(std::time::Duration::from_secs_f64(
            a.checkpoint_interval.max(0.0),
        )),
        time: a.time.clone(),
        with_atime: a.with_atime,
    };
    let progress = CliProgress::new(g.verbose, g.quiet, g.json).streaming(g.json);
    let mut stdin = std::io::stdin();
    let input: Option<&mut (dyn Read + Send)> = match (a.stdin, input) {
        (true, Some(i)) => Some(i),
        (true, None) => Some(&mut stdin),
        (false, _) => None,
    };
    let result = match &volume {
        Some(v) => super::volume::in_snapshot(v, || {
            crate::baton::backup(&mut repo, &opts, input, &progress, context::cancel())
        }),
        None => Ok(crate::baton::backup(
            &mut repo,
            &opts,
            input,
            &progress,
            context::cancel(),
        )),
    };
    progress.finish();
    let result = match (result, volume) {
        (Ok(Ok(r)), Some(v)) => {
            let kept = super::volume::finish(g, a, v, r.snapshot_id.map(|i| i.to_hex()))?;
            if g.json {
                super::print_json("volume_snapshot", kept);
            }
            r
        }
        (r, None) => {
            let r = r??;
            if let (Some(to), Some(id)) = (&a.replicate_to, r.snapshot_id) {
                let log = super::volume::spawn_replicate(g, to, &id.to_hex())?;
                if !g.quiet && !g.json {
                    eprintln!(
                        "replicating to {} in the background (log: {})",
                        to.display(),
                        log.display()
                    );
                }
            }
            r
        }
        (r, Some(v)) => {
            // No backup to replicate: the snapshot goes.
            super::volume::discard(v);
            r??
        }
    };
    for w in &result.warnings {
        eprintln!("warning: {}", context::escape(w));
    }
    let s = result.summary();
    if let Some(id) = result.snapshot_id {
        context::set_last_snapshot(id.to_hex());
    }
    if g.json {
        super::print_json(
            "summary",
            serde_json::json!({
                "snapshot_id": result.snapshot_id.map(|i| i.to_hex()),
                "tree_id": result.snapshot.tree.to_hex(),
                "parent": result.snapshot.parent.map(|i| i.to_hex()),
                "files_new": s.files_new,
                "files_changed": s.files_changed,
                "files_unmodified": s.files_unmodified,
                "dirs": s.dirs,
                "bytes_total": s.bytes_total,
                "bytes_read": s.bytes_read,
                "bytes_stored": s.bytes_stored,
                "blobs_new": s.blobs_new,
                "resumed": s.resumed_job.is_some(),
                "resumed_job": s.resumed_job.map(|i| i.to_hex()),
                "bytes_resumed": s.bytes_resumed,
                // The same name and shape as in the stored snapshot's summary.
                "errors": s.errors,
                "error_count": s.errors.len(),
                "duration_s": s.duration_s,
                "dry_run": a.dry_run,
            }),
        );
    } else if !g.quiet {
        outln!(
            "Files:  {} new, {} changed, {} unmodified",
            s.files_new,
            s.files_changed,
            s.files_unmodified
        );
        outln!("Dirs:   {}", s.dirs);
        super::print_read_and_stored(s);
        match result.snapshot_id {
            Some(id) => outln!("snapshot {} saved in {:.1}s", id.short(), s.duration_s),
            None => outln!("dry run: nothing was written"),
        }
    }
    if !s.errors.is_empty() {
        if !g.json {
            eprintln!(
                "warning: {} could not be read; they are listed in the snapshot summary",
                super::count(s.errors.len(), "path")
            );
        }
        return Ok(crate::exit::PARTIAL);
    }
    Ok(crate::exit::OK)
}

/// The paths listed by `--files-from` (lines; `#` comments and blank lines
/// skipped), `--files-from-verbatim` (every line as it is) and
/// `--files-from-raw` (NUL-separated).
fn files_from(a: &BackupArgs) -> Result<Vec<std::path::PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let read = |f: &std::path::Path| -> Result<Vec<u8>> {
        if f == std::path::Path::new("-") {
            let mut b = Vec::new();
            std::io::stdin().read_to_end(&mut b)?;
            Ok(b)
        } else {
            std::fs::read(f).with_context(|| format!("reading {}", f.display()))
        }
    };
    let path = |b: &[u8]| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b));
    let mut out = Vec::new();
    for f in &a.files_from {
        for line in read(f)?.split(|&c| c == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let t = line.trim_ascii();
            if !t.is_empty() && !t.starts_with(b"#") {
                out.push(path(t));
            }
        }
    }
    for f in &a.files_from_verbatim {
        out.extend(
            read(f)?
                .split(|&c| c == b'\n')
                .filter(|l| !l.is_empty())
                .map(path),
        );
    }
    for f in &a.files_from_raw {
        out.extend(
            read(f)?
                .split(|&c| c == 0)
                .filter(|l| !l.is_empty())
                .map(path),
        );
    }
    Ok(out)
}
