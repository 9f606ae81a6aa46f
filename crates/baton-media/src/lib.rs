//! `baton media-agent`: the data plane between client agents and a pool's
//! repository, and [`client::MediaStorage`], the agents' side of it.
//!
//! A media agent serves the repository's storage seam over HTTPS with
//! mutual TLS ([`proto`]): objects are created, read and listed; nothing
//! is replaced, and nothing is deleted except locks and journal records
//! (append-only for clients). Each request is allowed only if the agent's
//! current certificate has a job in that pool, as the director says in its
//! answer to the media agent's heartbeat. The media agent sees sealed bytes
//! only: agents hold the repository keys.
//!
//! Journal records an agent sends are forwarded to the director, which
//! stores them durably before the media agent answers: every acknowledged
//! record is on the index server. When an agent moves a running job to
//! another media agent, that media agent takes the job's journal from the
//! director and checks it against its in-memory index of the pool
//! ([`index`]) before the job goes on.

pub mod client;
pub mod index;
pub mod proto;
pub mod server;

pub use server::{Config, MediaAgent, MediaError};
