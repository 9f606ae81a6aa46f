//! Entry-by-entry comparison of two trees.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::{major, minor};

use crate::walk::{self, escape_bytes, escape_path};

/// What [`compare_trees`] checks beyond type, mode, mtime, content, symlink
/// targets, device numbers, `user.*` xattrs and hard-link structure (always
/// checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompareOptions {
    /// Compare access times (seconds and nanoseconds) of everything but
    /// symlinks. Default false: reading a tree (e.g. backing it up) moves
    /// atimes unless the reader opens files and directories with
    /// `O_NOATIME`. Symlink atimes are never compared: the kernel updates
    /// them on every `readlink`, which cannot be avoided.
    pub atime: bool,
    /// Compare uid and gid. Default true.
    pub ownership: bool,
    /// For a sparse regular file in `expected` (fewer bytes allocated than
    /// its size), require the copy to have at most 1 MiB more allocated.
    /// Default true.
    pub sparse: bool,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            atime: false,
            ownership: true,
            sparse: true,
        }
    }
}

/// Slack allowed for the allocation of a copy of a sparse file.
const SPARSE_SLACK: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Char,
    Block,
    Socket,
}

impl Kind {
    fn of(m: &Metadata) -> Kind {
        let ft = m.file_type();
        if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_char_device() {
            Kind::Char
        } else if ft.is_block_device() {
            Kind::Block
        } else {
            Kind::Socket
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Dir => "dir",
            Kind::File => "file",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Char => "chardev",
            Kind::Block => "blockdev",
            Kind::Socket => "socket",
        }
    }
}

struct Entry {
    meta: Metadata,
    kind: Kind,
    target: Option<Vec<u8>>,
    /// `user.*` xattrs; empty if unsupported.
    xattrs: BTreeMap<OsString, Vec<u8>>,
}

fn user_xattrs(path: &Path) -> io::Result<BTreeMap<OsString, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(e),
    };
    for n in names {
        if n.as_bytes().starts_with(b"user.")
            && let Some(v) = xattr::get(path, &n)?
        {
            out.insert(n, v);
        }
    }
    Ok(out)
}

/// Metadata (lstat) of every entry, nothing else read yet.
fn scan(root: &Path) -> io::Result<BTreeMap<PathBuf, Entry>> {
    let mut out = BTreeMap::new();
    for (rel, meta) in walk::scan(root)? {
        let kind = Kind::of(&meta);
        out.insert(
            rel,
            Entry {
                meta,
                kind,
                target: None,
                xattrs: BTreeMap::new(),
            },
        );
    }
    Ok(out)
}

/// Symlink targets and xattrs, read once both trees' metadata is recorded
/// (so nothing read here can move a recorded atime).
fn fill_details(root: &Path, tree: &mut BTreeMap<PathBuf, Entry>) -> io::Result<()> {
    for (rel, e) in tree.iter_mut() {
        let abs = root.join(rel);
        if e.kind == Kind::Symlink {
            e.target = Some(std::fs::read_link(&abs)?.as_os_str().as_bytes().to_vec());
        }
        e.xattrs = user_xattrs(&abs)?;
    }
    Ok(())
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Offset of the first differing byte, if any (streams 1 MiB at a time).
fn first_difference(a: &Path, b: &Path) -> io::Result<Option<u64>> {
    let mut fa = walk::open_noatime(a, OFlag::empty())?;
    let mut fb = walk::open_noatime(b, OFlag::empty())?;
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if ba[..na] != bb[..nb] {
            let i = ba[..na].iter().zip(&bb[..nb]).position(|(x, y)| x != y);
            return Ok(Some(off + i.unwrap_or(na.min(nb)) as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        off += na as u64;
    }
}

fn time(sec: i64, nsec: i64) -> String {
    format!("{sec}.{nsec:09}")
}

fn compare_entry(
    p: &str,
    e: &Entry,
    a: &Entry,
    paths: (&Path, &Path),
    opts: &CompareOptions,
    diffs: &mut Vec<String>,
) {
    let (em, am) = (&e.meta, &a.meta);
    if e.kind != a.kind {
        diffs.push(format!("{p}: type {} != {}", e.kind.name(), a.kind.name()));
        return;
    }
    if em.mode() & 0o7777 != am.mode() & 0o7777 {
        diffs.push(format!(
            "{p}: mode {:04o} != {:04o}",
            em.mode() & 0o7777,
            am.mode() & 0o7777
        ));
    }
    if opts.ownership && em.uid() != am.uid() {
        diffs.push(format!("{p}: uid {} != {}", em.uid(), am.uid()));
    }
    if opts.ownership && em.gid() != am.gid() {
        diffs.push(format!("{p}: gid {} != {}", em.gid(), am.gid()));
    }
    if (em.mtime(), em.mtime_nsec()) != (am.mtime(), am.mtime_nsec()) {
        let (x, y) = (
            time(em.mtime(), em.mtime_nsec()),
            time(am.mtime(), am.mtime_nsec()),
        );
        diffs.push(format!("{p}: mtime {x} != {y}"));
    }
    let atime_differs = (em.atime(), em.atime_nsec()) != (am.atime(), am.atime_nsec());
    if opts.atime && e.kind != Kind::Symlink && atime_differs {
        let (x, y) = (
            time(em.atime(), em.atime_nsec()),
            time(am.atime(), am.atime_nsec()),
        );
        diffs.push(format!("{p}: atime {x} != {y}"));
    }
    match e.kind {
        Kind::File => {
            if em.len() != am.len() {
                diffs.push(format!("{p}: size {} != {}", em.len(), am.len()));
            } else {
                match first_difference(paths.0, paths.1) {
                    Ok(None) => {}
                    Ok(Some(off)) => diffs.push(format!("{p}: content differs at byte {off}")),
                    Err(err) => diffs.push(format!("{p}: cannot compare content: {err}")),
                }
            }
            let (ealloc, aalloc) = (em.blocks() * 512, am.blocks() * 512);
            if opts.sparse && ealloc < em.len() && aalloc > ealloc + SPARSE_SLACK {
                diffs.push(format!(
                    "{p}: not sparse: {aalloc} bytes allocated, expected at most {} \
                     (source has {ealloc} allocated for {} bytes)",
                    ealloc + SPARSE_SLACK,
                    em.len()
                ));
            }
        }
        Kind::Symlink => {
            if e.target != a.target {
                let show = |t: &Option<Vec<u8>>| escape_bytes(t.as_deref().unwrap_or_default());
                diffs.push(format!(
                    "{p}: symlink target {} != {}",
                    show(&e.target),
                    show(&a.target)
                ));
            }
        }
        Kind::Char | Kind::Block => {
            if em.rdev() != am.rdev() {
                let (x, y) = (em.rdev(), am.rdev());
                diffs.push(format!(
                    "{p}: rdev {}:{} != {}:{}",
                    major(x),
                    minor(x),
                    major(y),
                    minor(y)
                ));
            }
        }
        Kind::Dir | Kind::Fifo | Kind::Socket => {}
    }
    for (k, v) in &e.xattrs {
        let k_s = escape_bytes(k.as_bytes());
        match a.xattrs.get(k) {
            None => diffs.push(format!("{p}: xattr {k_s} missing in actual")),
            Some(w) if w != v => diffs.push(format!(
                "{p}: xattr {k_s} value differs ({} bytes != {} bytes)",
                v.len(),
                w.len()
            )),
            Some(_) => {}
        }
    }
    for k in a.xattrs.keys().filter(|k| !e.xattrs.contains_key(*k)) {
        diffs.push(format!(
            "{p}: unexpected xattr {} in actual",
            escape_bytes(k.as_bytes())
        ));
    }
}

/// For each non-directory path, the sorted paths sharing its inode.
fn link_groups(tree: &BTreeMap<PathBuf, Entry>) -> HashMap<&Path, Vec<&Path>> {
    let mut by_inode: HashMap<(u64, u64), Vec<&Path>> = HashMap::new();
    for (p, e) in tree.iter().filter(|(_, e)| e.kind != Kind::Dir) {
        by_inode
            .entry((e.meta.dev(), e.meta.ino()))
            .or_default()
            .push(p);
    }
    let mut out = HashMap::new();
    for group in by_inode.into_values() {
        for p in &group {
            out.insert(*p, group.clone());
        }
    }
    out
}

fn list(paths: &[&Path]) -> String {
    let v: Vec<String> = paths.iter().map(|p| escape_path(p)).collect();
    format!("[{}]", v.join(", "))
}

/// Compares the trees below `expected` and `actual` entry by entry (lstat,
/// never following symlinks; the two roots themselves are not compared).
///
/// Checks presence, file type, `mode & 0o7777`, uid/gid (if
/// `opts.ownership`), mtime to the nanosecond (symlinks and directories
/// included), atime (if `opts.atime`; not for symlinks), size and content of regular files,
/// symlink targets, device numbers, `user.*` xattrs, the partition of paths
/// into hard-link groups, and sparseness (if `opts.sparse`).
///
/// Returns the number of entries compared, or every difference found, each
/// starting with the relative path in [`escape_path`] form, e.g.
/// `"a/b: mode 0644 != 0600"` (expected value first).
pub fn compare_trees(
    expected: &Path,
    actual: &Path,
    opts: &CompareOptions,
) -> Result<usize, Vec<String>> {
    let exp_err = |e| {
        vec![format!(
            "cannot read expected tree {}: {e}",
            expected.display()
        )]
    };
    let act_err = |e| vec![format!("cannot read actual tree {}: {e}", actual.display())];
    let mut exp = scan(expected).map_err(exp_err)?;
    let mut act = scan(actual).map_err(act_err)?;
    fill_details(expected, &mut exp).map_err(exp_err)?;
    fill_details(actual, &mut act).map_err(act_err)?;
    let mut diffs = Vec::new();
    for (rel, e) in &exp {
        let p = escape_path(rel);
        match act.get(rel) {
            None => diffs.push(format!("{p}: missing in actual ({})", e.kind.name())),
            Some(a) => {
                let paths = (expected.join(rel), actual.join(rel));
                compare_entry(&p, e, a, (&paths.0, &paths.1), opts, &mut diffs);
            }
        }
    }
    for (rel, a) in act.iter().filter(|(rel, _)| !exp.contains_key(*rel)) {
        diffs.push(format!(
            "{}: unexpected extra {} in actual",
            escape_path(rel),
            a.kind.name()
        ));
    }

    // Hard links: restricted to paths present in both trees with the same
    // kind, each path's group must name the same paths on both sides.
    let (ge, ga) = (link_groups(&exp), link_groups(&act));
    let common = |p: &&Path| match (exp.get(*p), act.get(*p)) {
        (Some(x), Some(y)) => x.kind == y.kind,
        _ => false,
    };
    let mut seen: BTreeSet<(Vec<&Path>, Vec<&Path>)> = BTreeSet::new();
    for (p, e) in &exp {
        if e.kind == Kind::Dir || !common(&p.as_path()) {
            continue;
        }
        let x: Vec<&Path> = ge[p.as_path()].iter().copied().filter(common).collect();
        let y: Vec<&Path> = ga[p.as_path()].iter().copied().filter(common).collect();
        if x != y && seen.insert((x.clone(), y.clone())) {
            diffs.push(format!(
                "{}: hard links differ: expected {} to be one inode, actual has {}",
                escape_path(p),
                list(&x),
                list(&y)
            ));
        }
    }

    if diffs.is_empty() {
        Ok(exp.len())
    } else {
        Err(diffs)
    }
}

/// A sorted listing of the tree below `root`, one `"relpath kind size"` line
/// per entry (size 0 for directories; symlinks also show `-> target`), for
/// debugging failed comparisons. A read error becomes a `"<error: …>"` line.
pub fn tree_listing(root: &Path) -> Vec<String> {
    let entries = match walk::scan(root) {
        Ok(v) => v,
        Err(e) => return vec![format!("<error: {e}>")],
    };
    let mut out: Vec<String> = entries
        .iter()
        .map(|(rel, m)| {
            let kind = Kind::of(m);
            let size = if kind == Kind::Dir { 0 } else { m.len() };
            let mut line = format!("{} {} {size}", escape_path(rel), kind.name());
            if kind == Kind::Symlink
                && let Ok(t) = std::fs::read_link(root.join(rel))
            {
                line.push_str(&format!(" -> {}", escape_path(&t)));
            }
            line
        })
        .collect();
    out.sort();
    out
}
