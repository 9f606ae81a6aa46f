//! Why a connection ended other than by the client's `NBD_CMD_DISC`,
//! `NBD_OPT_ABORT` or a clean close between requests.

/// The end of one connection. [`ProtocolError::Io`] is the network (the
/// client went away); the other cases are the client's fault and are
/// reported as [`crate::Event::ProtocolError`].
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol (bad magic, unknown client flags, an
    /// impossible length); the connection was closed.
    #[error("client broke the NBD protocol: {0}")]
    Violation(String),
    /// `NBD_OPT_EXPORT_NAME` named an export this server does not have (the
    /// protocol has no error reply for it: the server must close).
    #[error("client asked for unknown export {0:?}")]
    UnknownExport(String),
}

impl ProtocolError {
    pub(crate) fn violation(msg: impl Into<String>) -> Self {
        ProtocolError::Violation(msg.into())
    }

    /// True when the client, not the network, ended the connection.
    pub fn is_client_fault(&self) -> bool {
        !matches!(self, ProtocolError::Io(_))
    }
}
