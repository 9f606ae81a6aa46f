//! Restoring an image to a file or block device, and dumping it to a stream.

use crate::reader::ImageReader;
use baton_repo::progress::{Cancel, Progress};
use baton_repo::{RepoError, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What a restore wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImageRestoreStats {
    pub size: u64,
    pub chunks: u64,
    /// Chunks left as holes (not written to a file; zeroed on a device).
    pub holes: u64,
    pub bytes_written: u64,
}

/// Opens a restore target: an existing block device as it is (`O_EXCL`:
/// refused while mounted; the handle must be a block device, whatever the
/// path was swapped for), else a regular file, created if absent, never
/// through a symlink, the handle checked to be a regular file. Returns the
/// file and whether it is a device.
pub fn open_target(path: &Path) -> Result<(File, bool)> {
    let is_device = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
    let f = if is_device {
        OpenOptions::new()
            .write(true)
            .read(true)
            .custom_flags(nix::libc::O_EXCL)
            .open(path)
    } else {
        OpenOptions::new()
            .write(true)
            .read(true)
            .create(true)
            .truncate(false)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(0o600)
            .open(path)
    }
    .map_err(|e| match e.raw_os_error() {
        Some(nix::libc::EBUSY) => RepoError::Invalid(format!(
            "block device {} is in use (mounted?): unmount it first",
            path.display()
        )),
        Some(nix::libc::ELOOP) => RepoError::Invalid(format!(
            "restore target {} is a symbolic link: give the path it points to",
            path.display()
        )),
        _ => RepoError::io(path, e),
    })?;
    let m = f.metadata().map_err(|e| RepoError::io(path, e))?;
    let ok = if is_device {
        m.file_type().is_block_device()
    } else {
        m.is_file()
    };
    if !ok {
        return Err(RepoError::Invalid(format!(
            "restore target {} is not a regular file or block device (or was replaced while it was opened)",
            path.display()
        )));
    }
    Ok((f, is_device))
}

pub(crate) fn device_size(f: &File, path: &Path) -> Result<u64> {
    use std::io::Seek;
    let mut f = f;
    f.seek(std::io::SeekFrom::End(0))
        .map_err(|e| RepoError::io(path, e))
}

/// Writes the image to `target`: a regular file becomes exactly the
/// image, sparse where the image has holes; a block device at least as
/// large gets every byte (holes written as zeros).
pub fn restore_image(
    reader: &ImageReader,
    target: &Path,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<ImageRestoreStats> {
    progress.phase("restoring");
    let (f, device) = open_target(target)?;
    let size = reader.size();
    if device {
        let have = device_size(&f, target)?;
        if have < size {
            return Err(RepoError::Invalid(format!(
                "block device {} holds {have} bytes, the image {size}",
                target.display()
            )));
        }
    } else {
        // Old content must not show through the holes.
        f.set_len(0).map_err(|e| RepoError::io(target, e))?;
        f.set_len(size).map_err(|e| RepoError::io(target, e))?;
    }
    let l = *reader.layout();
    let mut st = ImageRestoreStats {
        size,
        chunks: l.chunk_count(),
        ..Default::default()
    };
    let zeros = vec![0u8; l.chunk_size as usize];
    for i in 0..l.chunk_count() {
        cancel.check()?;
        let (start, len) = l.chunk_range(i);
        match reader.chunk(i)? {
            Some(c) => {
                f.write_all_at(&c, start)
                    .map_err(|e| RepoError::io(target, e))?;
                st.bytes_written += len;
            }
            None => {
                st.holes += 1;
                if device {
                    f.write_all_at(&zeros[..len as usize], start)
                        .map_err(|e| RepoError::io(target, e))?;
                    st.bytes_written += len;
                }
            }
        }
        progress.bytes(len);
    }
    f.sync_all().map_err(|e| RepoError::io(target, e))?;
    Ok(st)
}

/// Writes the image's bytes to `out` in order.
pub fn dump_image(reader: &ImageReader, out: &mut dyn Write, cancel: &Cancel) -> Result<()> {
    let l = *reader.layout();
    let zeros = vec![0u8; l.chunk_size as usize];
    for i in 0..l.chunk_count() {
        cancel.check()?;
        let (_, len) = l.chunk_range(i);
        let r = match reader.chunk(i)? {
            Some(c) => out.write_all(&c),
            None => out.write_all(&zeros[..len as usize]),
        };
        r.map_err(|e| RepoError::io("output", e))?;
    }
    out.flush().map_err(|e| RepoError::io("output", e))
}
