use super::restore::split_ref;
use crate::baton::{DiffChange, Repository};
use crate::cli::{CatArgs, DiffArgs, DumpArgs, Global, LsArgs, SnapshotsArgs};
use crate::context;
use anyhow::{Context, Result, bail};
use baton_storage::ObjectKind;
use baton_types::{Id, Node, NodeKind, Snapshot};
use std::io::Write;

pub(super) fn short_time(rfc3339: &str) -> String {
    humantime::parse_rfc3339_weak(rfc3339)
        .map(|t| {
            humantime::format_rfc3339_seconds(t)
                .to_string()
                .replace('T', " ")
                .trim_end_matches('Z')
                .to_string()
        })
        .unwrap_or_else(|_| rfc3339.to_string())
}

fn snapshot_json(id: &Id, s: &Snapshot) -> serde_json::Value {
    let mut v = serde_json::to_value(s).expect("snapshots serialize");
    v["id"] = id.to_hex().into();
    v["short_id"] = id.short().into();
    v
}

pub fn snapshots(g: &Global, a: &SnapshotsArgs) -> Result<i32> {
    let repo = context::open(g)?;
    let listing = repo.list_snapshots_all()?;
    let list: Vec<_> = listing
        .snapshots
        .into_iter()
        .filter(|(_, s)| a.filter.matches(s))
        .collect();
    // An unreadable snapshot is named, and the others listed all the same.
    for (name, e) in &listing.unreadable {
        eprintln!(
            "warning: snapshot {name} cannot be read and is skipped: {}; remove it with `baton forget {}` (or `baton repair snapshots --forget`)",
            context::escape(e),
            &name[..8.min(name.len())]
        );
    }
    let code = if listing.unreadable.is_empty() {
        crate::exit::OK
    } else {
        crate::exit::PARTIAL
    };
    // Groups (one, without --group-by), each oldest first, cut to the
    // newest N with --latest.
    let by = crate::baton::GroupBy::parse(a.group_by.as_deref().unwrap_or(""))?;
    let mut groups: Vec<(crate::baton::GroupKey, Vec<(Id, Snapshot)>)> = Vec::new();
    for (id, s) in list {
        let key = crate::baton::GroupKey::of(by, &s);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push((id, s)),
            None => groups.push((key, vec![(id, s)])),
        }
    }
    if let Some(n) = a.latest {
        for (_, v) in &mut groups {
            let skip = v.len().saturating_sub(n);
            v.drain(..skip);
        }
    }
    if g.json {
        if a.group_by.is_some() {
            let v: Vec<_> = groups
                .iter()
                .map(|(k, v)| {
                    serde_json::json!({
                        "group_key": k,
                        "snapshots": v.iter().map(|(id, s)| snapshot_json(id, s)).collect::<Vec<_>>(),
                    })
                })
                .collect();
            super::print_json("snapshot_groups", serde_json::json!({ "groups": v }));
        } else {
            let v: Vec<_> = groups
                .iter()
                .flat_map(|(_, v)| v.iter().map(|(id, s)| snapshot_json(id, s)))
                .collect();
            super::print_json("snapshots", serde_json::json!({ "snapshots": v }));
        }
        return Ok(code);
    }
    let mut total = 0;
    for (k, v) in &groups {
        if a.group_by.is_some() {
            outln!("{}", context::escape(&k.to_string()));
        }
        outln!(
            "{:<8}  {:<19}  {:<16}  {:<16}  Paths",
            "ID",
            "Time (UTC)",
            "Host",
            "Tags"
        );
        for (id, s) in v {
            outln!(
                "{:<8}  {:<19}  {:<16}  {:<16}  {}",
                id.short(),
                short_time(&s.time),
                context::escape(&s.hostname),
                context::escape(&s.tags.join(",")),
                context::escape(&s.paths.join(", "))
            );
        }
        total += v.len();
        if a.group_by.is_some() {
            outln!();
        }
    }
    if !g.quiet {
        outln!("{total} snapshot{}", if total == 1 { "" } else { "s" });
    }
    Ok(code)
}

fn mode_string(n: &Node) -> String {
    let t = match n.kind {
        NodeKind::File => '-',
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Fifo => 'p',
        NodeKind::Chardev => 'c',
        NodeKind::Blockdev => 'b',
        NodeKind::Image => 'i',
    };
    let mut s = String::from(t);
    for shift in [6, 3, 0] {
        let bits = (n.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn node_json(path: &str, n: &Node) -> serde_json::Value {
    serde_json::json!({
        "path": path,
        "name": n.name.lossy(),
        "type": n.kind,
        "mode": n.mode,
        "uid": n.uid,
        "gid": n.gid,
        "user": n.user,
        "group": n.group,
        "size": n.size,
        "mtime_ns": n.mtime_ns,
        "link_target": n.link_target.as_ref().map(|t| t.lossy()),
        "inode": n.inode,
        "links": n.links,
    })
}

/// A time in ns since the epoch as RFC 3339 (seconds).
pub(super) fn ns_rfc3339(ns: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64),
    )
    .to_string()
}

/// `ls -l`'s line for an entry: mode, owner, size, time, path.
pub(super) fn long_line(path: &str, n: &Node) -> String {
    let target = n
        .link_target
        .as_ref()
        .map(|t| format!(" -> {}", context::escape(&t.lossy())))
        .unwrap_or_default();
    format!(
        "{} {:>6} {:>6} {:>12} {} {}{}",
        mode_string(n),
        context::escape(&n.user.clone().unwrap_or_else(|| n.uid.to_string())),
        context::escape(&n.group.clone().unwrap_or_else(|| n.gid.to_string())),
        n.size,
        ns_rfc3339(n.mtime_ns),
        context::escape(path),
        target
    )
}

fn print_node(g: &Global, long: bool, path: &str, n: &Node) {
    if g.json {
        super::print_json("node", node_json(path, n));
    } else if long {
        outln!("{}", long_line(path, n));
    } else {
        outln!("{}", context::escape(path));
    }
}

pub fn ls(g: &Global, a: &LsArgs) -> Result<i32> {
    let (repo, _lock) = context::open_indexed(g)?;
    let (id, snap) =
        super::select::find_for_path(&repo, &a.snapshot, &a.filter, a.path.as_deref())?;
    if g.json {
        // As restic: the snapshot first, then one line per entry.
        super::print_json("snapshot", snapshot_json(&id, &snap));
    }
    let path = a.path.as_deref().unwrap_or("/");
    let (node, subtree) = crate::baton::find_node(&repo, &snap.tree, path)?;
    let prefix = if path.is_empty() { "/" } else { path };
    let prefix = if prefix.len() > 1 {
        prefix.trim_end_matches('/')
    } else {
        prefix
    };
    if let Some(n) = &node {
        print_node(g, a.long, prefix, n);
    }
    let Some(tree) = subtree else {
        return Ok(crate::exit::OK);
    };
    let recursive = a.recursive || a.path.is_none();
    if recursive {
        let mut budget = crate::baton::WalkBudget::for_snapshot(&snap);
        crate::baton::walk_tree(&repo, &tree, prefix, &mut budget, &mut |p, n| {
            if crate::out::closed() {
                // The reader has gone (`| head`): nothing more to list.
                return Err(crate::baton::RepoError::Cancelled);
            }
            print_node(g, a.long, p, n);
            Ok(())
        })?;
    } else {
        for n in &repo.load_tree(&tree)?.nodes {
            let p = if prefix.ends_with('/') {
                format!("{prefix}{}", n.name.lossy())
            } else {
                format!("{prefix}/{}", n.name.lossy())
            };
            print_node(g, a.long, &p, n);
        }
    }
    Ok(crate::exit::OK)
}

pub fn diff(g: &Global, a: &DiffArgs) -> Result<i32> {
    let (repo, _lock) = context::open_indexed(g)?;
    let (id1, s1) = super::select::find(&repo, &a.snapshot1, &a.filter)?;
    let (id2, s2) = super::select::find(&repo, &a.snapshot2, &a.filter)?;
    let changes = crate::baton::diff(&repo, &s1, &s2)?;
    let count = |c: DiffChange| changes.iter().filter(|e| e.change == c).count();
    if g.json {
        super::print_json(
            "diff",
            serde_json::json!({
                "snapshot1": id1.to_hex(),
                "snapshot2": id2.to_hex(),
                "changes": changes,
                "added": count(DiffChange::Added),
                "removed": count(DiffChange::Removed),
                "modified": count(DiffChange::Modified),
                "metadata": count(DiffChange::Metadata),
                "type_changed": count(DiffChange::Type),
            }),
        );
        return Ok(crate::exit::OK);
    }
    outln!("comparing snapshot {} to {}:", id1.short(), id2.short());
    for c in &changes {
        outln!("{}    {}", c.change.symbol(), context::escape(&c.path));
    }
    outln!(
        "\n{} added, {} removed, {} modified, {} metadata changed, {} type changed",
        count(DiffChange::Added),
        count(DiffChange::Removed),
        count(DiffChange::Modified),
        count(DiffChange::Metadata),
        count(DiffChange::Type)
    );
    Ok(crate::exit::OK)
}

pub fn dump(g: &Global, a: &DumpArgs) -> Result<i32> {
    let (repo, _lock) = context::open_indexed(g)?;
    let (_, snap) = super::select::find_for_path(&repo, &a.snapshot, &a.filter, Some(&a.path))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let image = super::block::image_of(&repo, &snap, Some(&a.path))?;
    let written = match image {
        Some(node) => super::block::dump(repo, &node, &mut out),
        None => crate::baton::dump(&repo, &snap, &a.path, &mut out).map_err(anyhow::Error::from),
    }
    .and_then(|()| out.flush().context("writing to stdout"));
    if let Err(e) = &written {
        for c in e.chain() {
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                crate::out::mark(io);
            }
            if let Some(crate::baton::RepoError::Io { cause, .. }) = c.downcast_ref() {
                crate::out::mark(cause);
            }
        }
    }
    written?;
    Ok(crate::exit::OK)
}

fn need_id(a: &CatArgs) -> Result<&str> {
    a.id.as_deref()
        .with_context(|| format!("`baton cat {}` needs an id", a.kind))
}

fn full_name(repo: &Repository, kind: ObjectKind, prefix: &str) -> Result<String> {
    let names: Vec<String> = repo
        .storage()
        .list(kind)?
        .into_iter()
        .map(|o| o.name)
        .filter(|n| n.starts_with(prefix))
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no {} object with id {prefix}", kind.dir()),
        _ => bail!("id prefix {prefix} is ambiguous"),
    }
}

pub fn cat(g: &Global, a: &CatArgs) -> Result<i32> {
    let _ = g.json; // cat always prints JSON (or raw bytes for blobs)
    let mut repo = context::open(g)?;
    let value: serde_json::Value = match a.kind.as_str() {
        "config" => serde_json::to_value(repo.config())?,
        "snapshot" => {
            let (id, s) = repo.find_snapshot(need_id(a)?)?;
            snapshot_json(&id, &s)
        }
        "key" => {
            let name = full_name(&repo, ObjectKind::Key, need_id(a)?)?;
            serde_json::from_slice(&repo.storage().get(ObjectKind::Key, &name)?)?
        }
        "lock" => {
            let name = full_name(&repo, ObjectKind::Lock, need_id(a)?)?;
            serde_json::from_slice(&repo.load_object(ObjectKind::Lock, &name)?)?
        }
        "index" => {
            let name = full_name(&repo, ObjectKind::Index, need_id(a)?)?;
            let f = repo.read_index(&name)?;
            index_json(&f.supersedes, f.packs.iter().map(|p| (p.id, &p.blobs[..])))
        }
        "pack" => {
            let name = full_name(&repo, ObjectKind::Pack, need_id(a)?)?;
            let bytes = repo.storage().get(ObjectKind::Pack, &name)?;
            let entries =
                baton_format_read_header(&repo, &bytes).with_context(|| format!("pack {name}"))?;
            index_json(&[], std::iter::once((Id::from_hex(&name)?, &entries[..])))
        }
        "tree" => {
            repo.load_index()?;
            let arg = need_id(a)?;
            let id = match Id::from_hex(arg) {
                Ok(id) => id,
                Err(_) => {
                    let (snap, path) = split_ref(arg);
                    let (_, s) = repo.find_snapshot(snap)?;
                    let (_, sub) = crate::baton::find_node(&repo, &s.tree, path.unwrap_or("/"))?;
                    sub.with_context(|| format!("{arg} is not a directory"))?
                }
            };
            serde_json::to_value(&*repo.load_tree(&id)?)?
        }
        "blob" => {
            repo.load_index()?;
            let id = Id::from_hex(need_id(a)?)?;
            let kind = repo
                .index()
                .get(&id)
                .map_or(baton_types::BlobType::Data, |l| l.blob_type);
            let data = repo.load_blob_of(kind, &id)?;
            std::io::stdout().write_all(&data)?;
            return Ok(crate::exit::OK);
        }
        other => bail!(
            "unknown object kind {other:?}: use config, snapshot, tree, index, key, pack, blob or lock"
        ),
    };
    outln!("{}", serde_json::to_string_pretty(&value)?);
    Ok(crate::exit::OK)
}

fn baton_format_read_header(
    repo: &Repository,
    pack: &[u8],
) -> Result<Vec<crate::baton::PackEntry>> {
    Ok(crate::baton::read_pack_header(
        repo.key(),
        &repo.config().id,
        pack,
    )?)
}

fn index_json<'a>(
    supersedes: &[Id],
    packs: impl Iterator<Item = (Id, &'a [crate::baton::PackEntry])>,
) -> serde_json::Value {
    let packs: Vec<_> = packs
        .map(|(id, blobs)| {
            serde_json::json!({
                "id": id.to_hex(),
                "blobs": blobs.iter().map(|b| serde_json::json!({
                    "id": b.id.to_hex(),
                    "type": b.blob_type,
                    "offset": b.offset,
                    "length": b.length,
                    "raw_length": b.raw_length,
                    "compressed": b.compressed,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "supersedes": supersedes, "packs": packs })
}
