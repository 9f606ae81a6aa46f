//! Library-level tests of the repository: faults injected through the
//! storage seam, files that change under the archiver, format versions.

/// The three library crates under one name: the tests use them together.
mod baton {
    pub use baton_fs::*;
    pub use baton_maint::*;
    pub use baton_repo::*;
}

mod attacks;
mod check;
mod crashpoints;
mod faults;
mod format;
mod powerloss;
mod prune;
mod recording;
