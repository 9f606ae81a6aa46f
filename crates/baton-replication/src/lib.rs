//! Replication-aware sources: which node a replicated data set is backed
//! up from ([`policy`]), and PostgreSQL's side of it ([`postgres`]): its
//! replication state as a node sees it, and a consistent backup taken on
//! a standby (or a primary) with the non-exclusive backup API; and
//! application-consistent volume snapshots ([`volume`]).

pub mod policy;
pub mod postgres;
pub mod volume;
