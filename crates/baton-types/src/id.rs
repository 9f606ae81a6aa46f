//! 32-byte identifiers. Blob ids are BLAKE3 keyed hashes of plaintext (the key
//! is a repository secret, so ids leak nothing about content); object ids
//! (packs, index, snapshots, keys) are unkeyed BLAKE3 hashes of the stored bytes,
//! so storage integrity can be checked without the password.

use std::fmt;

/// A 32-byte content identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id([u8; 32]);

/// Error parsing an id from text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("invalid id {0:?}: expected 64 hexadecimal characters")]
    Invalid(String),
}

impl Id {
    pub const LEN: usize = 32;

    pub const fn from_bytes(b: [u8; 32]) -> Self {
        Id(b)
    }

    /// Builds an id from a slice that must be exactly 32 bytes long.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(b).ok().map(Id)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }

    /// The first 8 hex digits, as shown in listings.
    pub fn short(&self) -> String {
        hex_encode(&self.0[..4])
    }

    pub fn from_hex(s: &str) -> Result<Self, IdError> {
        let bytes = hex_decode(s).ok_or_else(|| IdError::Invalid(s.to_string()))?;
        Id::from_slice(&bytes).ok_or_else(|| IdError::Invalid(s.to_string()))
    }
}

/// Lower-case hex encoding.
pub fn hex_encode(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
}

/// Hex decoding; `None` on odd length or a non-hex character.
pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    s.chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Id::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn hex_round_trip(b in proptest::array::uniform32(any::<u8>())) {
            let id = Id::from_bytes(b);
            prop_assert_eq!(Id::from_hex(&id.to_hex()).unwrap(), id);
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<Id>(&json).unwrap(), id);
        }
    }

    #[test]
    fn rejects_bad_hex() {
        assert!(Id::from_hex("zz").is_err());
        assert!(Id::from_hex(&"a".repeat(63)).is_err());
        assert!(Id::from_hex(&"a".repeat(66)).is_err());
    }
}
