//! Test support for Baton's end-to-end tests.
//!
//! * [`generate_tree`] builds a deterministic source tree (from a seed) with
//!   every kind of entry a backup must carry: small, medium, empty and
//!   sparse files, odd names (unicode, newlines, non-UTF-8, 255 bytes), deep
//!   nesting, empty directories, symlinks of every flavour, hard-link groups,
//!   FIFOs and device nodes, unusual permission bits, odd owners, `user.*`
//!   xattrs, and explicit nanosecond atimes/mtimes.
//! * [`compare_trees`] compares a source and a restored tree entry by entry
//!   and lists every difference, naming the relative path.
//! * [`tree_listing`], [`write_file`] and [`dir_size`] are small helpers.
//!
//! Running as root gives the full tree. Without root, device nodes and
//! ownership changes are skipped and [`Manifest::notes`] says so; the same
//! goes for `user.*` xattrs on a filesystem that refuses them.
//!
//! ```no_run
//! use baton_testing::{compare_trees, generate_tree, CompareOptions, GenOptions};
//! use std::path::Path;
//!
//! let src = Path::new("/tmp/baton-e2e/src");
//! let manifest = generate_tree(
//!     src,
//!     &GenOptions { seed: 42, sparse_file_size: 1 << 30, ..GenOptions::default() },
//! )
//! .unwrap();
//! for note in &manifest.notes {
//!     eprintln!("note: {note}");
//! }
//! // ... `baton backup` src, then `baton restore` into /tmp/baton-e2e/dst ...
//! match compare_trees(src, Path::new("/tmp/baton-e2e/dst"), &CompareOptions::default()) {
//!     Ok(n) => assert_eq!(n, manifest.entries),
//!     Err(diffs) => panic!("restore differs:\n{}", diffs.join("\n")),
//! }
//! ```
//!
//! The trees contain a directory with mode 0500 holding files: remove them
//! with [`remove_tree`] when not root.

mod compare;
mod content;
#[path = "gen.rs"]
mod generate;
mod layout;
mod rng;
pub mod s3;
mod walk;

#[cfg(test)]
mod tests;

pub use compare::{CompareOptions, compare_trees, tree_listing};
pub use content::{dir_size, write_file};
pub use generate::{GenOptions, Manifest, generate_tree};
pub use rng::Rng;
pub use walk::{escape_bytes, escape_path};

use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Removes a tree, first giving its owner `rwx` on every directory so that
/// read-only directories (like the generated `perms/dir-0500`) do not stop
/// a non-root user. A missing `root` is not an error.
pub fn remove_tree(root: &Path) -> io::Result<()> {
    match fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => return fs::remove_file(root),
        Ok(_) => {}
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mode = fs::symlink_metadata(&d)?.permissions().mode();
        if mode & 0o700 != 0o700 {
            fs::set_permissions(&d, Permissions::from_mode(mode | 0o700))?;
        }
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    fs::remove_dir_all(root)
}
