//! A metadata-only pre-scan that counts files and bytes for progress
//! totals. It runs alongside the archiver whenever there is more than one
//! core, progress or not: walking ahead, it brings directory blocks and
//! inodes into the cache, so on a cold cache the archiver's `lstat`s and
//! listings mostly hit memory instead of each waiting for the disk. It
//! lists directories like the archiver does, without touching their access
//! times.

use super::BackupOptions;
use crate::filter::PatternSet;
use baton_repo::progress::Cancel;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Counts (files, bytes) under the sources; `None` if cancelled first.
pub(super) fn scan(
    sources: &[PathBuf],
    filter: &PatternSet,
    opts: &BackupOptions,
    done: &Cancel,
) -> Option<(u64, u64)> {
    let mut totals = (0, 0);
    for s in sources {
        let m = std::fs::symlink_metadata(s).ok()?;
        walk(s, &m, m.dev(), filter, opts, done, &mut totals)?;
    }
    Some(totals)
}

fn walk(
    path: &Path,
    m: &std::fs::Metadata,
    root_dev: u64,
    filter: &PatternSet,
    opts: &BackupOptions,
    done: &Cancel,
    totals: &mut (u64, u64),
) -> Option<()> {
    if done.is_cancelled() {
        return None;
    }
    if m.is_file() {
        if opts.exclude_larger_than.is_some_and(|l| m.len() > l) {
            return Some(());
        }
        totals.0 += 1;
        totals.1 += m.len();
    } else if m.is_dir() {
        let Ok(names) = super::archiver::read_dir_sorted(path) else {
            return Some(());
        };
        if names.iter().any(|n| {
            opts.exclude_if_present
                .iter()
                .any(|x| n.as_encoded_bytes() == x.as_bytes())
        }) {
            return Some(());
        }
        for n in names {
            let p = path.join(n);
            if filter.matches(&p) {
                continue;
            }
            let Ok(cm) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if cm.is_dir() && opts.one_file_system && cm.dev() != root_dev {
                continue;
            }
            walk(&p, &cm, root_dev, filter, opts, done, totals)?;
        }
    }
    Some(())
}
