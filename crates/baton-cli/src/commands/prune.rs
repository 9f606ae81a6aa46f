use crate::baton::{MaxUnused, PruneOptions, PruneResult};
use crate::cli::{Global, PruneArgs, PruneTuning};
use crate::context;
use crate::progress::CliProgress;
use anyhow::{Context, Result};

/// Prune options from the command line.
pub fn options(t: &PruneTuning, dry_run: bool) -> Result<PruneOptions> {
    Ok(PruneOptions {
        dry_run,
        max_unused: MaxUnused::parse(&t.max_unused)?,
        max_job_age: humantime::parse_duration(&t.max_job_age)
            .with_context(|| format!("--max-job-age {:?} is not a duration", t.max_job_age))?,
        ignore_snapshots: Vec::new(),
        cancel: crate::context::cancel().clone(),
    })
}

pub fn run(g: &Global, a: &PruneArgs) -> Result<i32> {
    let opts = options(&a.tuning, a.dry_run)?;
    let mut repo = context::open(g)?;
    let progress = CliProgress::new(g.verbose, g.quiet, g.json);
    let r = crate::baton::prune(&mut repo, &opts, &progress);
    progress.finish();
    report(g, &r?);
    Ok(crate::exit::OK)
}

/// Prints what prune found and did (or would do).
pub fn report(g: &Global, r: &PruneResult) {
    use super::bytes;
    if g.json {
        let mut v = serde_json::json!({
            "dry_run": r.dry_run,
            "snapshots": r.snapshots,
            "jobs_kept": r.jobs_kept.iter().map(|j| j.to_hex()).collect::<Vec<_>>(),
            "jobs_stale": r.jobs_stale.iter().map(|j| serde_json::json!({
                "id": j.id.to_hex(), "last_record": j.last_record, "packs": j.packs,
            })).collect::<Vec<_>>(),
            "jobs_finished": r.jobs_finished.iter().map(|j| j.to_hex()).collect::<Vec<_>>(),
            "job_packs": r.job_packs,
            "index_objects": r.index_objects,
            "index_written": r.index_written,
            "packs_written": r.packs_written,
            "bytes_written": r.bytes_written,
            "bytes_freed": r.bytes_freed,
            "bytes_deleted": r.bytes_deleted,
        });
        if let (Some(obj), Ok(serde_json::Value::Object(stats))) =
            (v.as_object_mut(), serde_json::to_value(&r.stats))
        {
            obj.extend(stats);
        }
        super::print_json("prune", v);
        return;
    }
    if g.quiet {
        return;
    }
    let s = &r.stats;
    let would = |done: &'static str, planned: &'static str| if r.dry_run { planned } else { done };
    outln!(
        "{} in use; {} keep their data ({} only their journals list)",
        super::count(r.snapshots, "snapshot"),
        super::count(r.jobs_kept.len(), "unfinished job"),
        super::count(r.job_packs, "pack")
    );
    for j in &r.jobs_stale {
        outln!(
            "{} stale job {} (last record {}, {})",
            would("forgot", "would forget"),
            j.id.short(),
            super::browse::short_time(&j.last_record),
            super::count(j.packs, "pack")
        );
    }
    for j in &r.jobs_finished {
        outln!(
            "{} the leftover journal of finished job {}",
            would("removed", "would remove"),
            j.short()
        );
    }
    outln!(
        "indexed:  {}, {}: {} used in {}, {} unused",
        super::count(s.packs, "pack"),
        bytes(s.bytes),
        bytes(s.bytes_used),
        super::count(s.blobs_used, "blob"),
        bytes(s.bytes_unused)
    );
    outln!(
        "delete:   {} without used data ({}), {} ({})",
        super::count(s.packs_delete, "pack"),
        bytes(s.bytes_delete),
        super::count(s.packs_unreferenced, "unreferenced pack"),
        bytes(s.bytes_unreferenced)
    );
    outln!(
        "repack:   {} ({}), rewriting {}",
        super::count(s.packs_repack, "pack"),
        bytes(s.bytes_repack),
        bytes(s.bytes_rewrite)
    );
    if s.packs_missing > 0 {
        outln!(
            "warning:  the index lists {} that are gone (nothing used was in them); {} from the index",
            super::count(s.packs_missing, "pack"),
            would("dropped", "would be dropped")
        );
    }
    outln!(
        "keep:     {}, {} unused left in them",
        super::count(s.packs_keep, "pack"),
        bytes(s.bytes_unused_after)
    );
    if r.dry_run {
        outln!(
            "dry run: would free about {}; nothing was changed",
            bytes(r.bytes_freed)
        );
    } else {
        outln!(
            "deleted {}, freed {}; wrote {} and {} ({})",
            bytes(r.bytes_deleted),
            bytes(r.bytes_freed),
            super::count(r.packs_written, "new pack"),
            if r.index_written {
                format!("1 index object replacing {}", r.index_objects)
            } else {
                "no index object".to_string()
            },
            bytes(r.bytes_written)
        );
    }
}
