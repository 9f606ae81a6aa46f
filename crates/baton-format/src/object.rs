//! Metadata objects (config, snapshots, index, locks, journal records) and tree
//! blobs are JSON or binary payloads sealed with the master key. A stored
//! object's plaintext starts with one byte saying how the payload is encoded:
//! `0` raw, `1` zstd. (Blobs inside packs carry that flag in the pack header.)
//! Every object is sealed bound to its role ([`crate::role::object`]).

use crate::FormatError;
use crate::compress::{Compressor, decompress_unknown};
use crate::crypto::MasterKey;

const RAW: u8 = 0;
const ZSTD: u8 = 1;
/// Largest decoded metadata object accepted (guards against zip bombs).
pub const MAX_OBJECT: usize = 1 << 30;

/// Seals a payload as a stored object, compressing it when that pays.
pub fn seal_object(
    key: &MasterKey,
    ad: &[u8],
    compressor: &mut Compressor,
    payload: &[u8],
) -> Vec<u8> {
    let mut plain = Vec::with_capacity(payload.len() + 1);
    match compressor.compress(payload) {
        Some(z) => {
            plain.push(ZSTD);
            plain.extend_from_slice(&z);
        }
        None => {
            plain.push(RAW);
            plain.extend_from_slice(payload);
        }
    }
    key.encrypt(ad, &plain)
}

/// Opens a stored object sealed by [`seal_object`] with the same `ad`.
pub fn open_object(key: &MasterKey, ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, FormatError> {
    let plain = key.decrypt(ad, sealed)?;
    match plain.split_first() {
        Some((&RAW, rest)) => Ok(rest.to_vec()),
        Some((&ZSTD, rest)) => decompress_unknown(rest, MAX_OBJECT),
        Some((b, _)) => Err(FormatError::malformed(
            "object",
            format!("unknown encoding byte {b}"),
        )),
        None => Err(FormatError::malformed("object", "empty")),
    }
}

/// Serializes a value as the canonical JSON of this format (serde field order,
/// no whitespace). Tree ids depend on this being deterministic.
pub fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("format structs always serialize")
}

/// Parses JSON from untrusted bytes.
pub fn from_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    b: &[u8],
) -> Result<T, FormatError> {
    serde_json::from_slice(b).map_err(|source| FormatError::Json { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn object_round_trip(data in proptest::collection::vec(0u8..3, 0..5000), level in 0i32..4) {
            let k = MasterKey::generate();
            let mut c = Compressor::new(level);
            let s = seal_object(&k, b"snapshot", &mut c, &data);
            prop_assert_eq!(open_object(&k, b"snapshot", &s).unwrap(), data);
            prop_assert!(open_object(&k, b"lock", &s).is_err());
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let k = MasterKey::generate();
        assert!(open_object(&k, b"", b"garbage").is_err());
        assert!(open_object(&k, b"", &k.encrypt(b"", &[])).is_err());
        assert!(open_object(&k, b"", &k.encrypt(b"", &[7, 1, 2])).is_err());
        assert!(open_object(&k, b"", &k.encrypt(b"", &[1, 1, 2])).is_err());
    }
}
