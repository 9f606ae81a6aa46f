//! Key files: the master key wrapped by a key derived from a password.

/// Argon2id parameters of one key file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    /// Always "argon2id" in format version 1.
    pub algorithm: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Hex of a random 16-byte salt.
    pub salt: String,
}

/// The content of a `keys/<id>` object (plaintext JSON: it must be readable
/// before the master key is known).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyFile {
    /// Format version of the key file; absent (1) in format version 1.
    #[serde(default = "version_1")]
    pub version: u32,
    /// Id of the repository the key opens (format version 2). Bound into
    /// the wrap, and the config must carry the same id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<crate::Id>,
    pub created: String,
    pub hostname: String,
    pub username: String,
    pub kdf: KdfParams,
    /// Hex of the encrypted master key (nonce || ciphertext || tag).
    pub data: String,
    /// A key that may add objects but never delete or replace them. Enforced by
    /// the client today and by a server later.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub append_only: bool,
}

fn version_1() -> u32 {
    1
}

/// Every field of a key file but the wrapped key: what the wrap is bound to,
/// so that editing any of them (dropping `append_only`, say) makes the key
/// fail to open.
#[derive(serde::Serialize)]
pub struct KeyFileFields<'a> {
    pub version: u32,
    pub repository: &'a Option<crate::Id>,
    pub created: &'a str,
    pub hostname: &'a str,
    pub username: &'a str,
    pub kdf: &'a KdfParams,
    pub append_only: bool,
}

impl KeyFile {
    /// The fields the wrap is bound to.
    pub fn fields(&self) -> KeyFileFields<'_> {
        KeyFileFields {
            version: self.version,
            repository: &self.repository,
            created: &self.created,
            hostname: &self.hostname,
            username: &self.username,
            kdf: &self.kdf,
            append_only: self.append_only,
        }
    }
}
