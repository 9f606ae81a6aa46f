use crate::baton::RestoreOptions;
use crate::cli::{Global, RestoreArgs};
use crate::context;
use crate::progress::CliProgress;
use anyhow::Result;

/// Splits `SNAPSHOT[:PATH]`.
pub fn split_ref(s: &str) -> (&str, Option<&str>) {
    match s.split_once(':') {
        Some((snap, path)) => (snap, Some(path)),
        None => (s, None),
    }
}

pub fn run(g: &Global, a: &RestoreArgs) -> Result<i32> {
    let (repo, _lock) = context::open_indexed(g)?;
    let (snap, path) = split_ref(&a.snapshot);
    let (id, snapshot) = super::select::find_for_path(&repo, snap, &a.filter, path)?;
    if let Some(node) = super::block::image_of(&repo, &snapshot, path)? {
        if a.dry_run {
            // An image is written whole (its holes skipped) over the target.
            let size = node.size;
            let exists = a.target.symlink_metadata().is_ok();
            if g.json {
                super::print_json(
                    "summary",
                    serde_json::json!({
                        "dry_run": true, "snapshot_id": id.to_hex(), "image": node.name.lossy(),
                        "restore": u64::from(!exists), "update": u64::from(exists),
                        "unchanged": 0, "skip": 0, "delete": 0,
                        "bytes_to_write": size, "bytes_to_fetch": size, "errors": [], "error_count": 0,
                    }),
                );
            } else if !g.quiet {
                outln!(
                    "dry run: would write image {} of snapshot {} ({}) to {}{}",
                    context::escape(&node.name.lossy()),
                    id.short(),
                    super::bytes(size),
                    a.target.display(),
                    if exists { ", over what is there" } else { "" }
                );
            }
            return Ok(crate::exit::OK);
        }
        return super::block::restore(g, a, repo, id, &node);
    }
    if a.instant {
        anyhow::bail!(crate::Usage(
            "--instant restores a block image; this snapshot (or path) is not one".into()
        ));
    }
    let opts = RestoreOptions {
        includes: a.include.clone(),
        excludes: a.exclude.clone(),
        verify: a.verify,
        overwrite: match a.overwrite {
            crate::cli::OverwriteArg::Always => crate::baton::Overwrite::Always,
            crate::cli::OverwriteArg::IfChanged => crate::baton::Overwrite::IfChanged,
            crate::cli::OverwriteArg::IfNewer => crate::baton::Overwrite::IfNewer,
            crate::cli::OverwriteArg::Never => crate::baton::Overwrite::Never,
        },
        delete: a.delete,
        trust_finished: false,
    };
    if a.dry_run {
        return dry_run(g, a, &repo, &id, &snapshot, path, opts);
    }
    // A marker (in the cache directory, not the target) says a restore of
    // this snapshot into this target started; found again, the run resumes
    // it and trusts the files it finished.
    let marker = restore_marker(&a.target, &id);
    let mut opts = opts;
    if let Some(m) = &marker {
        opts.trust_finished = m.exists();
        if let Some(dir) = m.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(m, a.target.to_string_lossy().as_bytes());
    }
    let progress = CliProgress::new(g.verbose, g.quiet, g.json).streaming(g.json);
    if let Some(s) = &snapshot.summary {
        crate::baton::Progress::set_total(&progress, 0, s.bytes_total);
    }
    let summary = crate::baton::restore(
        &repo,
        &snapshot,
        path,
        &a.target,
        &opts,
        &progress,
        context::cancel(),
    );
    progress.finish();
    let summary = summary?;
    if summary.errors.is_empty()
        && let Some(m) = &marker
    {
        let _ = std::fs::remove_file(m);
    }
    if g.json {
        let mut v = serde_json::to_value(&summary)?;
        v["snapshot_id"] = id.to_hex().into();
        v["errors"] = super::error_list(&summary.errors);
        v["error_count"] = summary.errors.len().into();
        super::print_json("summary", v);
    } else if !g.quiet {
        outln!(
            "restored snapshot {} to {}: {}, {}, {} other, {}",
            id.short(),
            a.target.display(),
            super::count(summary.files, "file"),
            super::count(summary.dirs, "dir"),
            summary.other,
            super::bytes(summary.bytes)
        );
        if a.verify {
            outln!("verified {}", super::count(summary.files_verified, "file"));
        }
    }
    if !summary.errors.is_empty() {
        anyhow::bail!(
            "{} entries could not be restored or verified (see above)",
            summary.errors.len()
        );
    }
    Ok(crate::exit::OK)
}

/// `restore --dry-run`: what the restore would do, entry by entry (changes;
/// with -v also what is unchanged) and in total; the target is not touched.
fn dry_run(
    g: &Global,
    a: &RestoreArgs,
    repo: &crate::baton::Repository,
    id: &baton_types::Id,
    snapshot: &baton_types::Snapshot,
    path: Option<&str>,
    mut opts: RestoreOptions,
) -> Result<i32> {
    use crate::baton::PlanAction;
    // A restore run again would trust what the unfinished one finished.
    opts.trust_finished = restore_marker(&a.target, id).is_some_and(|m| m.exists());
    let mut report = |action: PlanAction, p: &std::path::Path, size: u64| {
        if action == PlanAction::Unchanged && g.verbose == 0 {
            return;
        }
        if g.json {
            super::print_json(
                "verbose_status",
                serde_json::json!({ "action": action.as_str(), "item": p.display().to_string(), "size": size }),
            );
        } else if !g.quiet || action != PlanAction::Unchanged {
            let label = match action {
                PlanAction::Unchanged => "unchanged".to_string(),
                a => format!("would {}", a.as_str()),
            };
            outln!("{label:<13} {}", context::escape(&p.display().to_string()));
        }
    };
    let plan = crate::baton::plan_restore(
        repo,
        snapshot,
        path,
        &a.target,
        &opts,
        &mut report,
        context::cancel(),
    )?;
    let progress = CliProgress::new(g.verbose, g.quiet, g.json);
    for (p, m) in &plan.errors {
        crate::baton::Progress::error(&progress, p, m);
    }
    if g.json {
        let mut v = serde_json::to_value(&plan)?;
        v["dry_run"] = true.into();
        v["snapshot_id"] = id.to_hex().into();
        v["errors"] = super::error_list(&plan.errors);
        v["error_count"] = plan.errors.len().into();
        super::print_json("summary", v);
    } else if !g.quiet {
        outln!(
            "dry run of restoring snapshot {} to {}: {} to restore, {} to update, {} unchanged, {} skipped, {} to delete; {} to write, {} to fetch",
            id.short(),
            a.target.display(),
            plan.restore,
            plan.update,
            plan.unchanged,
            plan.skip,
            plan.delete,
            super::bytes(plan.bytes_to_write),
            super::bytes(plan.bytes_to_fetch)
        );
    }
    Ok(if plan.errors.is_empty() {
        crate::exit::OK
    } else {
        crate::exit::PARTIAL
    })
}

/// Where the marker of an unfinished restore of `snapshot` into `target`
/// lives (`None` without a cache directory).
fn restore_marker(
    target: &std::path::Path,
    snapshot: &baton_types::Id,
) -> Option<std::path::PathBuf> {
    let abs = std::path::absolute(target).ok()?;
    let mut key = abs.as_os_str().as_encoded_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(snapshot.as_bytes());
    let name = baton_format::storage_id(&key).to_hex();
    Some(baton_repo::cache::base_dir()?.join("restores").join(name))
}
