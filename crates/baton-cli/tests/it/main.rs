//! End-to-end tests: they run the built `baton` binary on generated trees
//! and check properties of the result (restored == source, bytes read,
//! exit codes), never just that a command ran.

mod block;
mod browse;
mod check;
mod cli;
mod common;
mod copy;
mod corruption;
mod director;
mod drill;
mod errors;
mod fixtures;
mod forget;
mod instant_pg;
mod keys;
mod media;
pub mod nbd;
mod parity;
mod prune;
mod readme;
mod repair;
mod replication;
mod resume;
mod roundtrip;
mod s3;
mod schemas;
mod trust;
