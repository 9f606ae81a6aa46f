//! `baton check`: print the report of a repository check; exit 1 when it
//! found errors (warnings alone exit 0).

use crate::baton::{CheckOptions, CheckReport, ProblemKind, ReadData, Severity};
use crate::cli::{CheckArgs, Global};
use crate::context;
use crate::progress::CliProgress;
use anyhow::{Result, bail};
use baton_storage::ObjectKind;

/// Paths listed per problem in the human report (`--json` lists all).
const MAX_PATHS: usize = 20;

pub fn run(g: &Global, a: &CheckArgs) -> Result<i32> {
    let storage = context::storage(g)?;
    if !storage.exists()? {
        // Keys but no config: a damaged repository, not a missing one.
        if let Ok(keys) = storage.list(ObjectKind::Key)
            && !keys.is_empty()
        {
            bail!(
                "config: the config object of the repository at {} is missing \
                 ({} key file(s) exist): the repository is damaged, or its `init` was interrupted",
                storage.location(),
                keys.len()
            );
        }
    }
    let repo = context::open(g)?;
    let opts = CheckOptions {
        read_data: match (a.read_data, a.read_data_subset) {
            (true, _) => ReadData::All,
            (false, Some(s)) => ReadData::Subset(s),
            (false, None) => ReadData::None,
        },
    };
    let progress = CliProgress::new(g.verbose, g.quiet, g.json);
    let report = crate::baton::check(&repo, &opts, &progress, context::cancel());
    progress.finish();
    let report = report?;
    if g.json {
        super::print_json("check", serde_json::to_value(&report)?);
    } else {
        print_report(g, &report, opts.read_data != ReadData::None);
    }
    if report.errors > 0 {
        let n = report.errors;
        bail!("check found {n} problem{}", if n == 1 { "" } else { "s" });
    }
    Ok(crate::exit::OK)
}

fn print_report(g: &Global, r: &CheckReport, read_data: bool) {
    for p in &r.problems {
        let sev = match p.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        outln!(
            "{sev}: {}: {}",
            context::escape(&p.object),
            context::escape(&p.message)
        );
        if !p.snapshots.is_empty() {
            let ids: Vec<String> = p.snapshots.iter().map(|s| s.short()).collect();
            outln!("  affects snapshot(s) {}:", ids.join(", "));
            for path in p.paths.iter().take(MAX_PATHS) {
                outln!("    {}", context::escape(path));
            }
            if p.paths.len() > MAX_PATHS {
                outln!(
                    "    ... and {} more (--json lists all)",
                    p.paths.len() - MAX_PATHS
                );
            }
        }
    }
    if r.errors > 0 {
        outln!("hint: {}", hint(r));
    }
    if r.damage_recorded > 0 {
        outln!(
            "recorded {} damaged blob copies: the next `baton backup` of the affected files stores fresh copies; `baton repair packs` replaces the damaged packs",
            r.damage_recorded
        );
    }
    if g.quiet {
        return;
    }
    use super::count;
    outln!(
        "checked {}, {}, {}, {}",
        count(r.snapshots, "snapshot"),
        count(r.trees_checked, "tree"),
        count(r.index_objects, "index object"),
        count(r.packs, "pack")
    );
    if read_data {
        outln!(
            "read {} ({}), verified {}",
            count(r.packs_checked, "pack"),
            super::bytes(r.bytes_read),
            count(r.blobs_checked, "blob")
        );
    }
    match (r.errors, r.warnings) {
        (0, 0) => outln!("no problems found"),
        (0, w) => outln!("no errors found, {}", super::count(w, "warning")),
        (e, w) => outln!(
            "{}, {}",
            super::count(e, "error"),
            super::count(w, "warning")
        ),
    }
}

/// What to do about the errors of a report.
fn hint(r: &CheckReport) -> &'static str {
    let has = |k: ProblemKind| r.problems.iter().any(|p| p.kind == k);
    let index_damaged = r
        .problems
        .iter()
        .any(|p| p.severity == Severity::Error && p.object.starts_with("index "));
    if index_damaged || has(ProblemKind::MissingBlob) && has(ProblemKind::UnreferencedPack) {
        "`baton repair index` rebuilds the index from the packs; run it, then check again"
    } else if has(ProblemKind::DamagedBlob) {
        "run `baton backup` of the affected paths again (it stores fresh copies of what is \
         damaged), then `baton repair packs` (replaces the damaged packs) and `baton repair \
         snapshots --forget` (rewrites the snapshots whose files stay lost)"
    } else if has(ProblemKind::MissingPack) || has(ProblemKind::IndexMismatch) {
        "`baton repair index` makes the index match the packs; then `baton repair snapshots \
         --forget` removes what is lost from the snapshots"
    } else if r.problems.iter().any(|p| !p.snapshots.is_empty()) {
        "`baton repair snapshots --read-data --forget` writes copies of the affected snapshots \
         without the damaged files"
    } else {
        "`baton repair index`, then `baton check` again; `baton help repair` lists the repairs"
    }
}
