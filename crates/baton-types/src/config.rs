//! The repository config: written once at `init`, encrypted with the master key.

use crate::Id;

/// The repository format version this build writes and the newest it reads.
/// Bump it (and keep reading old versions) whenever a byte layout changes.
pub const FORMAT_VERSION: u32 = 2;

/// Parameters of the content-defined chunker (FastCDC 2020, normalization level 1).
/// Stored in the config so every writer of a repository cuts identically; the
/// seed perturbs the gear table so chunk boundaries do not reveal content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    pub seed: u64,
}

impl ChunkerParams {
    /// Defaults as restic: 512 KiB / 1 MiB / 8 MiB.
    pub fn with_seed(seed: u64) -> Self {
        ChunkerParams {
            min_size: 512 * 1024,
            avg_size: 1024 * 1024,
            max_size: 8 * 1024 * 1024,
            seed,
        }
    }

    /// Checks the bounds FastCDC 2020 accepts.
    pub fn validate(&self) -> Result<(), String> {
        let ok = (64..=1 << 20).contains(&self.min_size)
            && (256..=4 << 20).contains(&self.avg_size)
            && (1024..=16 << 20).contains(&self.max_size)
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size
            && self.min_size.is_multiple_of(2)
            && self.avg_size.is_multiple_of(2)
            && self.max_size.is_multiple_of(2);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "chunker sizes {}/{}/{} out of range (min 64..1MiB, avg 256..4MiB, max 1KiB..16MiB, even, min<=avg<=max)",
                self.min_size, self.avg_size, self.max_size
            ))
        }
    }
}

/// The decrypted content of the `config` object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    /// Format version; a reader refuses versions newer than [`FORMAT_VERSION`].
    pub version: u32,
    /// Random id of this repository.
    pub id: Id,
    pub chunker: ChunkerParams,
    /// zstd level for blobs and metadata; 0 disables compression.
    pub compression: i32,
    /// Target size of a pack file in bytes.
    pub pack_size: u64,
    /// Fixed chunk size of block-level (image/device) backups; reserved for
    /// block backups, written now so the format does not change later.
    pub block_size: u32,
}

impl Config {
    /// Checks every field as `init` does. Run on every open: a config is
    /// authenticated, but a reader still refuses values it would never write.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != FORMAT_VERSION {
            return Err(format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                self.version
            ));
        }
        self.chunker.validate()?;
        if !(0..=22).contains(&self.compression) {
            return Err(format!(
                "compression level {} is not in 0..=22",
                self.compression
            ));
        }
        if !(1 << 20..=1 << 30).contains(&self.pack_size) {
            return Err(format!(
                "pack size {} is not between 1 MiB and 1 GiB",
                self.pack_size
            ));
        }
        if !self.block_size.is_power_of_two() || !(4096..=16 << 20).contains(&self.block_size) {
            return Err(format!(
                "block size {} is not a power of two between 4 KiB and 16 MiB",
                self.block_size
            ));
        }
        Ok(())
    }
}
