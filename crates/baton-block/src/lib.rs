//! Block-level backup and restore: a device, an image file or a stream cut
//! into fixed-size chunks and stored in a Baton repository with a fixed
//! index (`baton_format::fixed`); a random-access reader of such images;
//! restore and dump; and the pseudo-volume of instant restore (a write
//! overlay over the destination and the repository), which the NBD server
//! (`baton-nbd`) exports. Everything here is synchronous; the server calls
//! it on blocking threads.

pub mod backup;
pub mod files;
pub mod instant;
pub mod overlay;
pub mod reader;
pub mod restore;

pub use backup::{BlockBackupOptions, BlockBackupResult, BlockSource, backup_block, find_image};
pub use instant::{Destination, Phase, PseudoVolume};
pub use overlay::Overlay;
pub use reader::{ImageReader, ReaderConfig};
pub use restore::{ImageRestoreStats, dump_image, restore_image};
