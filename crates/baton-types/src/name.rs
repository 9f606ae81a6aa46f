//! File names and link targets are bytes on Unix, not text. [`FsName`] keeps the
//! exact bytes and serializes as a JSON string when they are valid UTF-8 (the
//! common case, readable in `baton cat`) and as `{"hex": "..."}` otherwise.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// Exact bytes of a file name or symlink target.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FsName(pub Vec<u8>);

impl FsName {
    pub fn from_os(s: &OsStr) -> Self {
        FsName(s.as_bytes().to_vec())
    }

    pub fn as_os(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }

    pub fn into_os(self) -> OsString {
        OsString::from_vec(self.0)
    }

    /// Text for display; invalid UTF-8 is shown with replacement characters.
    pub fn lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl std::fmt::Debug for FsName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.lossy())
    }
}

impl From<&str> for FsName {
    fn from(s: &str) -> Self {
        FsName(s.as_bytes().to_vec())
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Repr {
    Text(String),
    Raw { hex: String },
}

impl serde::Serialize for FsName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(t) => s.serialize_str(t),
            Err(_) => Repr::Raw {
                hex: crate::id::hex_encode(&self.0),
            }
            .serialize(s),
        }
    }
}

impl<'de> serde::Deserialize<'de> for FsName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(FsName(t.into_bytes())),
            Repr::Raw { hex } => crate::id::hex_decode(&hex)
                .map(FsName)
                .ok_or_else(|| serde::de::Error::custom("invalid hex in file name")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn json_round_trip(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let n = FsName(b);
            let j = serde_json::to_string(&n).unwrap();
            prop_assert_eq!(serde_json::from_str::<FsName>(&j).unwrap(), n);
        }
    }
}
