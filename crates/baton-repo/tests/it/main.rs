//! Library-level tests of the repository: faults injected through the
//! storage seam, files that change under the archiver, format versions.

mod attacks;
mod check;
mod crashpoints;
mod faults;
mod format;
mod powerloss;
mod prune;
mod recording;
