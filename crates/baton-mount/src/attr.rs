//! File attributes as the kernel sees them, from tree nodes and for the
//! virtual entries.

use baton_types::{Node, NodeKind};
use fuser::{FileAttr, FileType, INodeNo};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Block size reported by `stat` and `statfs`.
pub(crate) const BLOCK_SIZE: u32 = 4096;

pub(crate) fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File | NodeKind::Image => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Chardev => FileType::CharDevice,
        NodeKind::Blockdev => FileType::BlockDevice,
    }
}

/// Nanoseconds since the epoch (negative before it) as a time.
pub(crate) fn time(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH.checked_sub(d).unwrap_or(UNIX_EPOCH)
    }
}

/// A device number as `stat` gives it (glibc's 64-bit encoding) in the
/// kernel's 32-bit encoding that FUSE carries (`new_encode_dev`).
pub(crate) fn kernel_rdev(rdev: u64) -> u32 {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)) as u32
}

/// A virtual entry (directory or `latest` link): owned by root, read-only.
pub(crate) fn virtual_attr(
    ino: u64,
    kind: FileType,
    size: u64,
    nlink: u32,
    t: SystemTime,
) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: 0,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind,
        perm: if kind == FileType::Symlink {
            0o777
        } else {
            0o555
        },
        nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// The attributes of `node`, `size` bytes long. A directory has two links
/// (its subdirectories are not counted, which would mean reading its
/// tree); other entries the links their node records.
pub(crate) fn node_attr(ino: u64, node: &Node, size: u64) -> FileAttr {
    let mtime = time(node.mtime_ns);
    let atime = if node.atime_ns == 0 {
        mtime
    } else {
        time(node.atime_ns)
    };
    let nlink = if node.kind == NodeKind::Dir {
        2
    } else {
        u32::try_from(node.links).unwrap_or(u32::MAX).max(1)
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime,
        mtime,
        ctime: time(node.ctime_ns),
        crtime: mtime,
        kind: file_type(node.kind),
        perm: (node.mode & 0o7777) as u16,
        nlink,
        uid: node.uid,
        gid: node.gid,
        rdev: match node.kind {
            NodeKind::Chardev | NodeKind::Blockdev => kernel_rdev(node.rdev),
            _ => 0,
        },
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_and_after_the_epoch() {
        assert_eq!(
            time(1_500_000_000),
            UNIX_EPOCH + Duration::new(1, 500_000_000)
        );
        assert_eq!(
            time(-1_500_000_000),
            UNIX_EPOCH - Duration::new(1, 500_000_000)
        );
        assert_eq!(time(0), UNIX_EPOCH);
    }

    #[test]
    fn device_numbers() {
        // glibc makedev(major, minor)
        let makedev = |ma: u64, mi: u64| {
            (mi & 0xff) | ((ma & 0xfff) << 8) | ((mi & !0xff) << 12) | ((ma & !0xfff) << 32)
        };
        // The kernel's new_decode_dev
        let decode = |d: u32| ((d & 0xfff00) >> 8, (d & 0xff) | ((d >> 12) & 0xfff00));
        for (ma, mi) in [(1, 3), (7, 200), (259, 65_537), (4095, 1 << 19), (8, 0)] {
            assert_eq!(decode(kernel_rdev(makedev(ma, mi))), (ma as u32, mi as u32));
        }
    }
}
