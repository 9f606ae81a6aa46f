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
        v["message_type"] = "summary".into();
        v["snapshot_id"] = id.to_hex().into();
        super::print_json(&v);
    } else if !g.quiet {
        outln!(
            "restored snapshot {} to {}: {} files, {} dirs, {} other, {}",
            id.short(),
            a.target.display(),
            summary.files,
            summary.dirs,
            summary.other,
            super::bytes(summary.bytes)
        );
        if a.verify {
            outln!("verified {} files", summary.files_verified);
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
