//! `baton dump`: a file's content, or a directory as a tar stream.

use baton_repo::browse::{find_node, walk_tree};
use baton_repo::{RepoError, Repository, Result};
use baton_types::{Id, Node, NodeKind, Snapshot};
use std::io::{Read, Write};

/// Reads a file's content chunk by chunk from the repository.
struct ContentReader<'a> {
    repo: &'a Repository,
    ids: &'a [Id],
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ContentReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some((id, rest)) = self.ids.split_first() else {
                return Ok(0);
            };
            self.buf = self.repo.load_blob(id).map_err(std::io::Error::other)?;
            self.pos = 0;
            self.ids = rest;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn reader<'a>(repo: &'a Repository, n: &'a Node) -> ContentReader<'a> {
    ContentReader {
        repo,
        ids: &n.content,
        buf: Vec::new(),
        pos: 0,
    }
}

/// Writes `path` of `snapshot` to `out`: a file as its bytes, a directory
/// (or the root) as a tar archive with paths relative to it.
pub fn dump(repo: &Repository, snapshot: &Snapshot, path: &str, out: &mut dyn Write) -> Result<()> {
    let (node, subtree) = find_node(repo, &snapshot.tree, path)?;
    let io = |e: std::io::Error| RepoError::io("output", e);
    match (&node, subtree) {
        (Some(n), _) if n.kind == NodeKind::File => {
            std::io::copy(&mut reader(repo, n), out).map_err(io)?;
            Ok(())
        }
        (_, Some(tree)) => {
            let mut tar = tar::Builder::new(out);
            let mut budget = baton_repo::browse::WalkBudget::for_snapshot(snapshot);
            walk_tree(repo, &tree, "", &mut budget, &mut |p, n| {
                append(&mut tar, repo, p.trim_start_matches('/'), n).map_err(io)
            })?;
            tar.finish().map_err(io)
        }
        _ => Err(RepoError::Invalid(format!(
            "{path} is not a file or directory"
        ))),
    }
}

fn append(
    tar: &mut tar::Builder<&mut dyn Write>,
    repo: &Repository,
    path: &str,
    n: &Node,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_mode(n.mode);
    h.set_uid(n.uid as u64);
    h.set_gid(n.gid as u64);
    h.set_mtime(n.mtime_ns.div_euclid(1_000_000_000).max(0) as u64);
    if let Some(u) = &n.user {
        let _ = h.set_username(u);
    }
    if let Some(g) = &n.group {
        let _ = h.set_groupname(g);
    }
    match n.kind {
        NodeKind::File => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(n.size);
            tar.append_data(&mut h, path, reader(repo, n))
        }
        NodeKind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            tar.append_data(&mut h, path, std::io::empty())
        }
        NodeKind::Symlink => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            let target = n
                .link_target
                .as_ref()
                .map(|t| t.as_os().to_owned())
                .unwrap_or_default();
            tar.append_link(&mut h, path, target)
        }
        NodeKind::Fifo | NodeKind::Chardev | NodeKind::Blockdev => {
            h.set_entry_type(match n.kind {
                NodeKind::Fifo => tar::EntryType::Fifo,
                NodeKind::Chardev => tar::EntryType::Char,
                _ => tar::EntryType::Block,
            });
            h.set_size(0);
            let (major, minor) = (
                nix::sys::stat::major(n.rdev as _),
                nix::sys::stat::minor(n.rdev as _),
            );
            h.set_device_major(major as u32)?;
            h.set_device_minor(minor as u32)?;
            tar.append_data(&mut h, path, std::io::empty())
        }
        NodeKind::Image => Err(std::io::Error::other(format!(
            "{path} is a block image: dump it alone (`baton dump SNAPSHOT {path}`)"
        ))),
    }
}
