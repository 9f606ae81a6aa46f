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
