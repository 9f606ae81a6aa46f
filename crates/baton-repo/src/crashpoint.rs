//! Crash injection for tests: with `BATON_CRASHPOINT=NAME[:N]` set, the
//! process aborts (no cleanup, like `kill -9`) the N-th time (default 1) it
//! reaches the crash point NAME. Points: `after-pack` (a pack is stored, its
//! journal record not yet written), `after-journal` (a record is stored),
//! `after-index` (the final index is stored, the snapshot not yet),
//! `after-snapshot` (the snapshot is stored, the journal not yet deleted).
//! Unset, a crash point costs one relaxed atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

fn spec() -> &'static Option<(String, u64)> {
    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let v = std::env::var("BATON_CRASHPOINT").ok()?;
        Some(match v.split_once(':') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
            None => (v, 1),
        })
    })
}

/// Aborts the process here if this crash point is armed.
pub fn crashpoint(name: &str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    if let Some((want, n)) = spec()
        && want == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        eprintln!("baton: crash point {name} reached, aborting (BATON_CRASHPOINT)");
        std::process::abort();
    }
}
