//! Tree walking that never follows symlinks and does not disturb access
//! times: directories and files are opened with `O_NOATIME` where the kernel
//! allows it (root, or the owner), so walking or comparing a tree leaves the
//! atimes of its files and directories untouched. (Reading a symlink's target
//! can still update that symlink's atime; the kernel offers no way around it.)

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::fcntl::OFlag;

/// Opens `path` read-only with `O_NOATIME | O_NOFOLLOW | extra`, falling back
/// to an open without `O_NOATIME` when the kernel refuses it (`EPERM`: not
/// the owner and not privileged).
pub(crate) fn open_noatime(path: &Path, extra: OFlag) -> io::Result<File> {
    let base = OFlag::O_NOFOLLOW | extra;
    let open = |flags: OFlag| {
        OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits())
            .open(path)
    };
    match open(base | OFlag::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => open(base),
        other => other,
    }
}

/// The names in directory `dir` (without `.` and `..`), sorted bytewise.
pub(crate) fn list_dir(dir: &Path) -> io::Result<Vec<OsString>> {
    let file = open_noatime(dir, OFlag::O_DIRECTORY)?;
    let mut d = Dir::from_fd(OwnedFd::from(file)).map_err(io::Error::from)?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(io::Error::from)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Every entry below `root` (not `root` itself) as (relative path, lstat
/// metadata), in sorted path order. A directory's metadata is taken before
/// the directory is read. Symlinks are never followed.
pub(crate) fn scan(root: &Path) -> io::Result<Vec<(PathBuf, Metadata)>> {
    let meta = std::fs::symlink_metadata(root)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", root.display()),
        ));
    }
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = root.join(&rel);
        let names = list_dir(&abs)
            .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", abs.display())))?;
        for name in names {
            let child_rel = rel.join(&name);
            let m = std::fs::symlink_metadata(root.join(&child_rel))?;
            if m.file_type().is_dir() {
                stack.push(child_rel.clone());
            }
            out.push((child_rel, m));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A printable form of a relative path: valid UTF-8 is kept (so "naïve ☃"
/// reads naturally), control characters and backslashes are escaped like in
/// Rust string literals, and bytes that are not UTF-8 become `\xNN`. Every
/// difference reported by [`compare_trees`](crate::compare_trees) names its
/// path in this form.
pub fn escape_path(path: &Path) -> String {
    escape_bytes(path.as_os_str().as_bytes())
}

/// [`escape_path`] for raw bytes (e.g. a symlink target).
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                s.extend(c.escape_default());
            } else {
                s.push(c);
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(escape_bytes(b"a/b"), "a/b");
        assert_eq!(escape_bytes("naïve ☃".as_bytes()), "naïve ☃");
        assert_eq!(escape_bytes(b"line\nbreak"), "line\\nbreak");
        assert_eq!(escape_bytes(b"x\xffy\\"), "x\\xffy\\\\");
    }
}
