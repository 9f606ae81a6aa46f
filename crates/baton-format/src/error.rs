/// Why bytes read from a repository could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Authentication failed: wrong key, or the bytes were altered.
    #[error("decryption failed (wrong key, or the data was damaged)")]
    Decrypt,
    /// The bytes are too short or inconsistent for the format.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("invalid JSON in {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

impl FormatError {
    pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        FormatError::Malformed {
            what,
            detail: detail.into(),
        }
    }
}
