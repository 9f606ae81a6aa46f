//! `baton find`, `baton stats` and `baton list`.

use crate::cli::{FindArgs, Global, ListArgs, MountArgs, RewriteArgs, StatsArgs};
use crate::context;
use anyhow::{Context, Result, bail};
use baton_storage::ObjectKind;
use baton_types::{Id, Node, Snapshot};

/// The object kinds `list` knows, by the names restic uses (and ours).
fn kind_of(name: &str) -> Option<ObjectKind> {
    Some(match name {
        "snapshots" | "snapshot" => ObjectKind::Snapshot,
        "index" => ObjectKind::Index,
        "packs" | "pack" | "data" => ObjectKind::Pack,
        "keys" | "key" => ObjectKind::Key,
        "locks" | "lock" => ObjectKind::Lock,
        "journal" | "jobs" => ObjectKind::Journal,
        _ => return None,
    })
}

/// `baton list KIND`: the names of the objects of a kind, one per line.
pub fn list(g: &Global, a: &ListArgs) -> Result<i32> {
    let Some(kind) = kind_of(&a.kind) else {
        bail!(crate::Usage(format!(
            "unknown kind {:?}: use snapshots, index, packs, keys, locks or journal",
            a.kind
        )));
    };
    let repo = context::open(g)?;
    let mut names: Vec<String> = repo
        .storage()
        .list(kind)?
        .into_iter()
        .map(|o| o.name)
        .collect();
    names.sort();
    if g.json {
        super::print_json(
            "list",
            serde_json::json!({
                "kind": a.kind,
                "ids": names,
            }),
        );
    } else {
        for n in names {
            outln!("{}", context::escape(&n));
        }
    }
    Ok(crate::exit::OK)
}

/// `baton stats [SNAPSHOT...]`.
pub fn stats(g: &Global, a: &StatsArgs) -> Result<i32> {
    let (repo, _lock) = context::open_indexed(g)?;
    let snaps: Vec<(Id, Snapshot)> = super::select::many(&repo, &a.snapshots, &a.filter)?;
    let st = crate::baton::stats(&repo, &snaps, context::cancel())?;
    // The repository as stored: every pack (used or not) and index object.
    let mut stored = 0u64;
    for kind in [ObjectKind::Pack, ObjectKind::Index] {
        stored += repo
            .storage()
            .list(kind)?
            .iter()
            .map(|o| o.size)
            .sum::<u64>();
    }
    if g.json {
        let mut v = serde_json::to_value(&st)?;
        v["repository_size"] = stored.into();
        v["snapshot_ids"] = snaps
            .iter()
            .map(|(id, _)| id.to_hex())
            .collect::<Vec<_>>()
            .into();
        super::print_json("stats", v);
        return Ok(crate::exit::OK);
    }
    outln!("Snapshots:          {}", st.snapshots);
    outln!(
        "Restore size:       {} in {}, {}",
        super::bytes(st.restore_size),
        super::count(st.files, "file"),
        super::count(st.dirs, "directory")
    );
    outln!(
        "Unique data:        {} in {} (deduplication {:.2}x)",
        super::bytes(st.unique_size),
        super::count(st.blobs, "blob"),
        st.dedup_ratio
    );
    outln!(
        "Stored:             {} (compression {:.2}x)",
        super::bytes(st.stored_size),
        st.compression_ratio
    );
    outln!(
        "Repository size:    {} (packs and index)",
        super::bytes(stored)
    );
    if st.missing_blobs > 0 {
        eprintln!(
            "warning: {} referenced blobs are not in the index (run `baton check`)",
            st.missing_blobs
        );
        return Ok(crate::exit::PARTIAL);
    }
    Ok(crate::exit::OK)
}

/// Parses `--newest`/`--oldest`: RFC 3339, or a date `YYYY-MM-DD` (UTC
/// midnight), or `YYYY-MM-DD HH:MM[:SS]`; as nanoseconds since the epoch.
fn parse_time(s: &str) -> Result<i64> {
    let t = s.trim();
    let full = if t.len() == 10 {
        format!("{t}T00:00:00Z")
    } else if t.contains(' ') && !t.ends_with('Z') {
        format!("{}Z", t.replacen(' ', "T", 1))
    } else {
        t.to_string()
    };
    let time = humantime::parse_rfc3339_weak(full.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(&full))
        .map_err(|e| {
            crate::Usage(format!(
                "{s:?} is not a time (like 2026-01-31 or 2026-01-31T14:00:00Z): {e}"
            ))
        })?;
    let d = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| crate::Usage(format!("{s:?} is before 1970")))?;
    Ok(d.as_nanos().min(i64::MAX as u128) as i64)
}

/// `baton find PATTERN...`: entries whose name (or, for a pattern with a
/// `/`, whose path) matches, in every selected snapshot.
pub fn find(g: &Global, a: &FindArgs) -> Result<i32> {
    let (repo, _lock) = context::open_indexed(g)?;
    let mut set = globset::GlobSetBuilder::new();
    let mut by_path = Vec::new();
    for p in &a.patterns {
        let glob = globset::GlobBuilder::new(p)
            .case_insensitive(a.ignore_case)
            .literal_separator(true)
            .build()
            .with_context(|| format!("pattern {p:?}"))
            .map_err(|e| crate::Usage(format!("{e:#}")))?;
        by_path.push(p.contains('/'));
        set.add(glob);
    }
    let set = set
        .build()
        .map_err(|e| crate::Usage(format!("patterns: {e}")))?;
    let newest = a.newest.as_deref().map(parse_time).transpose()?;
    let oldest = a.oldest.as_deref().map(parse_time).transpose()?;
    let snaps: Vec<(Id, Snapshot)> = super::select::many(&repo, &a.snapshot, &a.filter)?;
    let mut total = 0u64;
    let mut out = Vec::new();
    for (id, snap) in &snaps {
        let mut hits: Vec<(String, Node)> = Vec::new();
        let mut budget = crate::baton::WalkBudget::for_snapshot(snap);
        crate::baton::walk_tree(&repo, &snap.tree, "", &mut budget, &mut |path, n| {
            use std::os::unix::ffi::OsStrExt;
            let name = std::ffi::OsStr::from_bytes(&n.name.0);
            let hit = set.matches(name).into_iter().any(|i| !by_path[i])
                || set.matches(path).into_iter().any(|i| by_path[i]);
            let in_time =
                newest.is_none_or(|t| n.mtime_ns <= t) && oldest.is_none_or(|t| n.mtime_ns >= t);
            if hit && in_time {
                hits.push((path.to_string(), n.clone()));
            }
            Ok(())
        })?;
        total += hits.len() as u64;
        if hits.is_empty() {
            continue;
        }
        if g.json {
            out.push(serde_json::json!({
                "snapshot": id.to_hex(),
                "time": snap.time,
                "hits": hits.len(),
                "matches": hits.iter().map(|(p, n)| serde_json::json!({
                    "path": p,
                    "type": n.kind,
                    "size": n.size,
                    "mtime": super::browse::ns_rfc3339(n.mtime_ns),
                })).collect::<Vec<_>>(),
            }));
        } else {
            outln!(
                "Found matching entries in snapshot {} from {}",
                id.short(),
                super::browse::short_time(&snap.time)
            );
            for (p, n) in &hits {
                if a.long {
                    outln!("{}", super::browse::long_line(p, n));
                } else {
                    outln!("{}", context::escape(p));
                }
            }
            outln!();
        }
    }
    if g.json {
        super::print_json(
            "find",
            serde_json::json!({
                "snapshots": out,
                "total": total,
            }),
        );
    } else if total == 0 && !g.quiet {
        eprintln!(
            "no entry matches in {}",
            super::count(snaps.len(), "snapshot")
        );
    }
    Ok(crate::exit::OK)
}

/// `baton rewrite`: copies of snapshots without what `--exclude` names.
pub fn rewrite(g: &Global, a: &RewriteArgs) -> Result<i32> {
    let mut patterns = a.exclude.clone();
    patterns.extend(crate::baton::PatternSet::read_files(&a.exclude_file)?);
    if patterns.is_empty() && a.iexclude.is_empty() {
        bail!(crate::Usage(
            "nothing to remove: give --exclude, --iexclude or --exclude-file".into()
        ));
    }
    let set = crate::baton::PatternSet::with_case(&patterns, &a.iexclude)?;
    let mut repo = context::open(g)?;
    let snaps: Vec<(Id, Snapshot)> = {
        let _lock = repo.lock(false)?;
        super::select::many(&repo, &a.snapshots, &a.filter)?
    };
    let opts = crate::baton::RewriteOptions {
        forget: a.forget,
        dry_run: a.dry_run,
    };
    let exclude = |path: &str, _: &Node| set.matches(std::path::Path::new(path));
    let r = crate::baton::rewrite(&mut repo, &snaps, &exclude, &opts, context::cancel())?;
    if g.json {
        let mut v = serde_json::to_value(&r)?;
        v["dry_run"] = a.dry_run.into();
        super::print_json("rewrite", v);
        return Ok(crate::exit::OK);
    }
    for w in &r.rewritten {
        match w.new {
            Some(n) => outln!(
                "snapshot {} rewritten as {}{}: {} removed",
                w.original.short(),
                n.short(),
                if w.forgotten {
                    " (original forgotten)"
                } else {
                    ""
                },
                super::count(w.removed.len(), "entry")
            ),
            None => outln!(
                "snapshot {} would lose {}",
                w.original.short(),
                super::count(w.removed.len(), "entry")
            ),
        }
        if g.verbose > 0 || a.dry_run {
            for p in &w.removed {
                outln!("  - {}", context::escape(p));
            }
        }
    }
    outln!("{} rewritten, {} unchanged", r.rewritten.len(), r.unchanged);
    Ok(crate::exit::OK)
}

/// `baton tag`: changes the tags of the selected snapshots.
pub fn tag(g: &Global, a: &crate::cli::TagArgs) -> Result<i32> {
    let mut repo = context::open(g)?;
    let snaps: Vec<(Id, Snapshot)> = {
        let _lock = repo.lock(false)?;
        super::select::many(&repo, &a.snapshots, &a.filter)?
    };
    let change = crate::baton::TagChange {
        set: a
            .set
            .as_ref()
            .map(|s| s.iter().filter(|t| !t.is_empty()).cloned().collect()),
        add: a.add.iter().filter(|t| !t.is_empty()).cloned().collect(),
        remove: a.remove.clone(),
    };
    let r = crate::baton::tag(&mut repo, &snaps, &change, context::cancel())?;
    if g.json {
        super::print_json("tag", serde_json::to_value(&r)?);
        return Ok(crate::exit::OK);
    }
    for c in &r.changed {
        outln!(
            "snapshot {} is now {} [{}]",
            c.original.short(),
            c.new.short(),
            context::escape(&c.tags.join(","))
        );
    }
    outln!("{} changed, {} unchanged", r.changed.len(), r.unchanged);
    Ok(crate::exit::OK)
}

/// `baton mount DIR`: snapshots as a read-only file system until Ctrl-C
/// (a normal end: exit 0) or `fusermount3 -u DIR`.
pub fn mount(g: &Global, a: &MountArgs) -> Result<i32> {
    let (repo, lock) = context::open_indexed(g)?;
    lock.abort_on_loss(context::cancel());
    let snapshots = super::select::all(&repo, &a.filter)?;
    if !g.quiet {
        eprintln!(
            "serving {} at {}; Ctrl-C or `fusermount3 -u {}` unmounts",
            super::count(snapshots.len(), "snapshot"),
            a.mountpoint.display(),
            a.mountpoint.display()
        );
    }
    baton_mount::mount(
        std::sync::Arc::new(repo),
        snapshots,
        &a.mountpoint,
        &baton_mount::MountOptions {
            allow_other: a.allow_other,
        },
        context::cancel(),
    )
    .with_context(|| format!("mounting at {}", a.mountpoint.display()))?;
    drop(lock);
    // Ctrl-C is how a mount is meant to end.
    context::forget_interrupt();
    Ok(crate::exit::OK)
}
