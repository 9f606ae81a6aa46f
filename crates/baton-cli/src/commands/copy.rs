//! `baton copy`: snapshots of `--from-repo` into the repository.

use crate::cli::{CopyArgs, Global};
use crate::context;
use anyhow::{Context, Result};

pub fn run(g: &Global, a: &CopyArgs) -> Result<i32> {
    let mut src = context::open_from(g, &a.from)?;
    let src_lock = src.lock(false)?;
    src_lock.abort_on_loss(context::cancel());
    src.load_index()
        .context("loading the index of --from-repo")?;
    let snaps = super::select::many(&src, &a.snapshots, &a.filter)?;
    let mut dst = context::open(g)?;
    let opts = crate::baton::CopyOptions { dry_run: a.dry_run };
    let r = crate::baton::copy(
        &src,
        &mut dst,
        &snaps,
        &opts,
        &crate::baton::NoProgress,
        context::cancel(),
    )?;
    drop(src_lock);
    if g.json {
        let mut v = serde_json::to_value(&r)?;
        v["dry_run"] = a.dry_run.into();
        super::print_json("copy", v);
        return Ok(crate::exit::OK);
    }
    if g.quiet {
        return Ok(crate::exit::OK);
    }
    for c in &r.already_copied {
        outln!(
            "snapshot {} already copied as {}",
            c.source.short(),
            c.copy.short()
        );
    }
    for c in &r.copied {
        match c.copy {
            Some(id) => outln!(
                "snapshot {} copied as {}: {} sent ({})",
                c.source.short(),
                id.short(),
                super::count(c.blobs_sent, "blob"),
                super::bytes(c.bytes_sent)
            ),
            None => outln!(
                "snapshot {} would be copied: {} to send ({})",
                c.source.short(),
                super::count(c.blobs_sent, "blob"),
                super::bytes(c.bytes_sent)
            ),
        }
    }
    outln!(
        "{} copied, {} already there; {} sent in {} ({} stored), {} already present{}",
        super::count(r.copied.len(), "snapshot"),
        r.already_copied.len(),
        super::count(r.blobs_sent, "blob"),
        super::bytes(r.bytes_sent),
        super::count(r.packs_stored, "pack"),
        r.blobs_present,
        if r.packs_adopted > 0 {
            format!(
                "; {} an interrupted run stored indexed now",
                super::count(r.packs_adopted, "pack")
            )
        } else {
            String::new()
        }
    );
    if !r.same_ids && !r.copied.is_empty() && g.verbose > 0 {
        outln!(
            "the repositories name blobs differently, so every blob of a new snapshot was read from --from-repo ({} read); `init --from-repo ... --copy-chunker-params` makes a destination that does not need to",
            r.blobs_read
        );
    }
    Ok(crate::exit::OK)
}
