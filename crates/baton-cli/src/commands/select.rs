//! Snapshot selection shared by every command that takes a snapshot:
//! `latest` (the newest matching `--host`, `--path`, `--tag`), `latest~N`
//! (the Nth before it), an id or a unique id prefix.

use crate::baton::Repository;
use crate::cli::SnapshotFilter;
use anyhow::Result;
use baton_types::{Id, Snapshot};
use std::path::{Component, Path};

/// A `--path` as backup records it: absolute, its parent's symlinks and
/// `..` resolved, the last component kept.
pub fn absolute_path(p: &str) -> String {
    let abs = match std::path::absolute(p) {
        Ok(a) => a,
        Err(_) => return p.trim_end_matches('/').to_string(),
    };
    let resolved = match abs.components().next_back() {
        Some(Component::Normal(name)) => {
            let parent = abs.parent().unwrap_or(Path::new("/"));
            std::fs::canonicalize(parent)
                .map(|c| c.join(name))
                .unwrap_or_else(|_| abs.clone())
        }
        _ => std::fs::canonicalize(&abs).unwrap_or_else(|_| abs.clone()),
    };
    let s = resolved.to_string_lossy().into_owned();
    if s.len() > 1 {
        s.trim_end_matches('/').to_string()
    } else {
        s
    }
}

impl SnapshotFilter {
    pub fn is_empty(&self) -> bool {
        self.tag.is_empty() && self.host.is_empty() && self.path.is_empty()
    }

    /// The selection: relative paths made absolute as backup does, `a,b`
    /// a tag group (both).
    pub fn select(&self) -> crate::baton::SnapshotSelect {
        crate::baton::SnapshotSelect {
            hosts: self.host.clone(),
            paths: self.path.iter().map(|p| absolute_path(p)).collect(),
            tags: self
                .tag
                .iter()
                .map(|g| {
                    g.split(',')
                        .filter(|t| !t.is_empty())
                        .map(String::from)
                        .collect::<Vec<_>>()
                })
                .filter(|g| !g.is_empty())
                .collect(),
        }
    }

    /// Whether `s` passes the filters.
    pub fn matches(&self, s: &Snapshot) -> bool {
        self.select().matches(s)
    }
}

/// Finds `reference` (`latest`, an id or a prefix); `latest` is the newest
/// snapshot passing `filter` (not dated in the future). An id must pass the
/// filter too, so a filter never silently means another snapshot.
pub fn find(repo: &Repository, reference: &str, filter: &SnapshotFilter) -> Result<(Id, Snapshot)> {
    if let Some(n) = reference.strip_prefix("latest~") {
        // The Nth before the newest (`latest~0` is `latest`), as in git.
        let n: usize = n.parse().map_err(|_| {
            crate::Usage(format!(
                "{reference:?}: write latest~N with N a number (latest~1 is the one before latest)"
            ))
        })?;
        let matching: Vec<(Id, Snapshot)> = repo
            .list_snapshots()?
            .into_iter()
            .rev()
            .filter(|(_, s)| !baton_repo::repo::in_future(&s.time) && filter.matches(s))
            .collect();
        let count = matching.len();
        return matching.into_iter().nth(n).ok_or_else(|| {
            crate::baton::RepoError::NotFound(format!(
                "{reference}: only {} match{}",
                super::count(count, "snapshot"),
                if filter.is_empty() {
                    ""
                } else {
                    " --host, --path and --tag"
                }
            ))
            .into()
        });
    }
    if reference == "latest" && !filter.is_empty() {
        return repo
            .list_snapshots()?
            .into_iter()
            .rev()
            .filter(|(_, s)| !baton_repo::repo::in_future(&s.time))
            .find(|(_, s)| filter.matches(s))
            .ok_or_else(|| {
                crate::baton::RepoError::NotFound(
                    "no snapshot matches --host, --path and --tag".into(),
                )
                .into()
            });
    }
    let (id, s) = repo.find_snapshot(reference)?;
    if !filter.matches(&s) {
        anyhow::bail!(crate::baton::RepoError::NotFound(format!(
            "snapshot {} does not match --host, --path and --tag",
            id.short()
        )));
    }
    Ok((id, s))
}

/// Whether `path` (absolute, in a snapshot) is inside one of `s`'s paths or
/// leads to one.
fn covers(s: &Snapshot, path: &str) -> bool {
    let path = Path::new(path);
    s.paths
        .iter()
        .any(|p| path.starts_with(p) || Path::new(p).starts_with(path))
}

/// Like [`find`], for a command that reads `path` of the snapshot: `latest`
/// (without `--path`) is the newest snapshot that holds `path`, so that
/// `ls latest /etc` after a `--stdin` backup still lists `/etc`; if none
/// does, the newest of all.
pub fn find_for_path(
    repo: &Repository,
    reference: &str,
    filter: &SnapshotFilter,
    path: Option<&str>,
) -> Result<(Id, Snapshot)> {
    let Some(path) = path.filter(|p| p.starts_with('/') && *p != "/") else {
        return find(repo, reference, filter);
    };
    if reference != "latest" || !filter.path.is_empty() {
        return find(repo, reference, filter);
    }
    let holding = repo
        .list_snapshots()?
        .into_iter()
        .rev()
        .filter(|(_, s)| !baton_repo::repo::in_future(&s.time))
        .find(|(_, s)| filter.matches(s) && covers(s, path.trim_end_matches('/')));
    match holding {
        Some(found) => Ok(found),
        None => find(repo, reference, filter),
    }
}

/// Every snapshot passing `filter`, oldest first.
pub fn all(repo: &Repository, filter: &SnapshotFilter) -> Result<Vec<(Id, Snapshot)>> {
    Ok(repo
        .list_snapshots()?
        .into_iter()
        .filter(|(_, s)| filter.matches(s))
        .collect())
}

/// The snapshots named by `refs`, or, with none, every snapshot passing
/// `filter`.
pub fn many(
    repo: &Repository,
    refs: &[String],
    filter: &SnapshotFilter,
) -> Result<Vec<(Id, Snapshot)>> {
    if refs.is_empty() {
        return all(repo, filter);
    }
    refs.iter().map(|r| find(repo, r, filter)).collect()
}
