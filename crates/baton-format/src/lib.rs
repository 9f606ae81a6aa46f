//! Pure byte-level codecs of the Baton repository format: the content-defined
//! chunker, keyed chunk ids, authenticated encryption, compression, and the
//! encoders/decoders of packs, index objects and JSON objects (config, trees,
//! snapshots). Nothing here touches storage; every decoder takes untrusted bytes
//! and returns an error instead of panicking.
//!
//! ```
//! use baton_format::crypto::MasterKey;
//! let key = MasterKey::generate();
//! let sealed = key.encrypt(b"role", b"hello");
//! assert_eq!(key.decrypt(b"role", &sealed).unwrap(), b"hello");
//! assert!(key.decrypt(b"another role", &sealed).is_err());
//! let id = key.blob_id(b"hello");
//! assert_eq!(id, key.blob_id(b"hello"));
//! ```

pub mod chunker;
pub mod compress;
pub mod crypto;
mod error;
pub mod fixed;
pub mod index;
pub mod object;
pub mod pack;
pub mod role;

pub use error::FormatError;

/// Fills `buf` with random bytes from the operating system.
pub fn random_bytes(buf: &mut [u8]) {
    // getrandom only fails when the OS has no entropy source at all, which
    // is not a state a backup tool can continue from safely.
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

/// A random 32-byte id (repository ids, lock names, job ids).
pub fn random_id() -> baton_types::Id {
    let mut b = [0u8; 32];
    random_bytes(&mut b);
    baton_types::Id::from_bytes(b)
}

/// The unkeyed BLAKE3 hash of stored bytes: the name of a stored object.
pub fn storage_id(bytes: &[u8]) -> baton_types::Id {
    baton_types::Id::from_bytes(*blake3::hash(bytes).as_bytes())
}
