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

/// Opens a restore target: an existing block device as it is, else a
/// regular file, created or truncated, never through a symlink.
pub fn open_target(path: &Path) -> Result<(File, bool)> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_block_device() => {
            let f = OpenOptions::new()
                .write(true)
                .read(true)
                .open(path)
                .map_err(|e| RepoError::io(path, e))?;
            Ok((f, true))
        }
        Ok(m) if !m.is_file() => Err(RepoError::Invalid(format!(
            "restore target {} exists and is not a regular file or block device",
            path.display()
        ))),
        _ => {
            let f = OpenOptions::new()
                .write(true)
                .read(true)
                .create(true)
                .truncate(false)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .mode(0o600)
                .open(path)
                .map_err(|e| RepoError::io(path, e))?;
            Ok((f, false))
        }
    }
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
