//! `baton repair index` and `baton repair snapshots`.

use crate::baton::RepairSnapshotsOptions;
use crate::cli::{Global, RepairCommand, RepairPacksArgs, RepairSnapshotsArgs};
use crate::context;
use crate::progress::CliProgress;
use anyhow::Result;

pub fn run(g: &Global, cmd: RepairCommand) -> Result<i32> {
    match cmd {
        RepairCommand::Index => index(g),
        RepairCommand::Snapshots(a) => snapshots(g, &a),
        RepairCommand::Packs(a) => packs(g, &a),
    }
}

fn packs(g: &Global, a: &RepairPacksArgs) -> Result<i32> {
    let ids = a
        .packs
        .iter()
        .map(|p| {
            baton_types::Id::from_hex(p)
                .map_err(|e| crate::Usage(format!("{p:?} is not a pack id: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut repo = context::open(g)?;
    let progress = CliProgress::new(g.verbose, g.quiet, g.json);
    let r = crate::baton::repair_packs(&mut repo, &ids, &progress, context::cancel());
    progress.finish();
    let r = r?;
    if g.json {
        let v = serde_json::to_value(&r)?;
        super::print_json("repair_packs", v);
        return Ok(crate::exit::OK);
    }
    if !g.quiet {
        if r.packs.is_empty() {
            outln!(
                "no damaged packs recorded: nothing to do (run `baton check --read-data` to look for damage)"
            );
        } else {
            outln!(
                "replaced {} pack(s): {} blob(s) salvaged into {} new pack(s), {} lost",
                r.packs.len(),
                r.blobs_salvaged,
                r.packs_written.len(),
                r.blobs_lost
            );
            if r.blobs_lost > 0 {
                outln!(
                    "the lost blobs are stored again by the next backup of the files that held them; `baton repair snapshots --forget` rewrites the snapshots that lost them"
                );
            }
        }
    }
    Ok(crate::exit::OK)
}

fn index(g: &Global) -> Result<i32> {
    let repo = context::open(g)?;
    let progress = CliProgress::new(g.verbose, g.quiet, g.json);
    let r = crate::baton::repair_index(&repo, &progress, context::cancel());
    progress.finish();
    let r = r?;
    if g.json {
        let v = serde_json::to_value(&r)?;
        super::print_json("repair_index", v);
        return Ok(crate::exit::OK);
    }
    for (pack, why) in &r.packs_skipped {
        eprintln!("warning: pack {pack} left out of the index: {why}");
    }
    for pack in &r.packs_from_old_index {
        eprintln!("warning: pack {pack}: header unreadable; kept its entries from the old index");
    }
    if !g.quiet {
        match r.new_index {
            Some(id) => outln!(
                "indexed {} in {} as index {}; replaced {}",
                super::count(r.blobs_indexed, "blob"),
                super::count(r.packs_indexed, "pack"),
                id.short(),
                super::count(r.removed.len(), "index object")
            ),
            None => outln!("no packs and no index objects: nothing to do"),
        }
    }
    Ok(crate::exit::OK)
}

fn snapshots(g: &Global, a: &RepairSnapshotsArgs) -> Result<i32> {
    let mut repo = context::open(g)?;
    let opts = RepairSnapshotsOptions {
        forget: a.forget,
        read_data: a.read_data,
    };
    let progress = CliProgress::new(g.verbose, g.quiet, g.json);
    let r = crate::baton::repair_snapshots(&mut repo, &opts, &progress, context::cancel());
    progress.finish();
    let r = r?;
    if g.json {
        let v = serde_json::to_value(&r)?;
        super::print_json("repair_snapshots", v);
        return Ok(crate::exit::OK);
    }
    for (name, why) in &r.unreadable {
        if r.unreadable_forgotten {
            eprintln!(
                "snapshot {name} could not be read and was removed: {}",
                context::escape(why)
            );
        } else {
            eprintln!(
                "warning: snapshot {name} cannot be read and was left alone (`--forget` removes it): {}",
                context::escape(why)
            );
        }
    }
    for s in &r.repaired {
        outln!(
            "snapshot {} -> {} ({}): removed {}",
            s.original.short(),
            s.repaired.short(),
            if s.forgotten {
                "original deleted"
            } else {
                "original kept"
            },
            super::count(s.removed.len(), "entry")
        );
        for e in &s.removed {
            let what = if e.kind == "dir" {
                "emptied"
            } else {
                "removed"
            };
            outln!(
                "  {what} {}: {}",
                context::escape(&e.path),
                context::escape(&e.reason)
            );
        }
    }
    if !g.quiet {
        outln!(
            "checked {}, repaired {}",
            super::count(r.snapshots_checked, "snapshot"),
            r.repaired.len()
        );
    }
    Ok(crate::exit::OK)
}
