use crate::baton::{ForgetEntry, ForgetOptions, ForgetResult, GroupBy, KeepPolicy, Within};
use crate::cli::{ForgetArgs, Global};
use crate::context;
use crate::progress::CliProgress;
use anyhow::Result;

fn policy(a: &ForgetArgs) -> Result<KeepPolicy> {
    Ok(KeepPolicy {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within: a.keep_within.as_deref().map(Within::parse).transpose()?,
        tags: a
            .keep_tag
            .iter()
            .map(|t| {
                t.split(',')
                    .filter(|t| !t.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|t| !t.is_empty())
            .collect(),
    })
}

pub fn run(g: &Global, a: &ForgetArgs) -> Result<i32> {
    let opts = ForgetOptions {
        policy: policy(a)?,
        group_by: GroupBy::parse(&a.group_by)?,
        snapshots: a.snapshots.clone(),
        dry_run: a.dry_run,
        select: a.filter.select(),
        cancel: context::cancel().clone(),
    };
    let prune = if a.prune {
        Some(super::prune::options(&a.tuning, a.dry_run)?)
    } else {
        None
    };
    let mut repo = context::open(g)?;
    let lock = repo.lock(true)?;
    if !opts.policy.is_empty() {
        // A policy passes over snapshots whose root tree is missing.
        repo.load_index()?;
    }
    let r = crate::baton::forget_locked(&repo, &lock, &opts)?;
    for (name, why) in &r.skipped {
        eprintln!(
            "warning: snapshot {}: {}",
            &name[..8.min(name.len())],
            context::escape(why)
        );
    }
    report(g, &r, a.dry_run, a.prune);
    if let Some(mut p) = prune {
        // A dry run deleted nothing: let prune see the snapshots as gone.
        if a.dry_run {
            p.ignore_snapshots = r.removed.clone();
        }
        let progress = CliProgress::new(g.verbose, g.quiet, g.json);
        let pr = crate::baton::prune_locked(&mut repo, &lock, &p, &progress);
        progress.finish();
        super::prune::report(g, &pr?);
    }
    Ok(crate::exit::OK)
}

fn entry_json(e: &ForgetEntry, reasons: bool) -> serde_json::Value {
    let mut v =
        serde_json::json!({ "id": e.id.to_hex(), "short_id": e.id.short(), "time": e.time });
    if reasons {
        v["reasons"] = e.reasons.iter().map(|r| r.to_string()).collect();
    }
    v
}

fn report(g: &Global, r: &ForgetResult, dry_run: bool, prune: bool) {
    if g.json {
        let v: Vec<serde_json::Value> = r
            .groups
            .iter()
            .map(|grp| {
                serde_json::json!({
                    "group": grp.key,
                    "keep": grp.keep.iter().map(|e| entry_json(e, true)).collect::<Vec<_>>(),
                    "remove": grp.remove.iter().map(|e| entry_json(e, false)).collect::<Vec<_>>(),
                })
            })
            .collect();
        super::print_json(
            "forget",
            serde_json::json!({ "dry_run": dry_run, "groups": v }),
        );
        return;
    }
    if g.quiet {
        return;
    }
    let short = super::browse::short_time;
    for grp in &r.groups {
        outln!("{}:", grp.key);
        if !grp.keep.is_empty() {
            outln!("  keep {}:", super::count(grp.keep.len(), "snapshot"));
            for e in &grp.keep {
                let why: Vec<String> = e.reasons.iter().map(|r| r.to_string()).collect();
                outln!(
                    "    {}  {}  {}",
                    e.id.short(),
                    short(&e.time),
                    why.join(", ")
                );
            }
        }
        if !grp.remove.is_empty() {
            outln!("  remove {}:", super::count(grp.remove.len(), "snapshot"));
            for e in &grp.remove {
                outln!("    {}  {}", e.id.short(), short(&e.time));
            }
        }
    }
    let n = r.removed.len();
    if dry_run {
        outln!(
            "dry run: would remove {}; nothing was changed",
            super::count(n, "snapshot")
        );
    } else {
        outln!("removed {}", super::count(n, "snapshot"));
        if n > 0 && !prune {
            outln!("run `baton prune` to delete the data only they used");
        }
    }
}
