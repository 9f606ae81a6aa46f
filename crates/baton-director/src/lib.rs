//! `baton director`: the control plane of Baton across many machines. This
//! first part is its security backbone: a certificate authority that
//! enrols agents and media agents with one-time tokens, mutual TLS for
//! every node connection (revocation checked at each handshake), API tokens
//! for people and `baton ctl`, and state in SQLite or PostgreSQL.
//!
//! The server runs on the caller's tokio runtime ([`Director::run`]);
//! [`client`] is blocking (for the CLI and the synchronous core).

pub mod client;
pub mod pki;
pub mod server;
pub mod store;
pub mod tls;
pub mod webhooks;

pub use server::{Config, Director, DirectorError};
