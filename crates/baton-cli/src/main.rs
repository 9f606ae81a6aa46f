//! The `baton` binary: parses arguments, opens the repository, runs one
//! command, prints its result, and maps errors to documented exit codes.

mod cli;
mod commands;
mod context;
mod progress;

use baton_repo::RepoError;
use clap::Parser;

/// Exit codes (documented in the README and `baton --help`).
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const PARTIAL: i32 = 3;
    pub const NO_REPOSITORY: i32 = 10;
    pub const LOCKED: i32 = 11;
    pub const WRONG_PASSWORD: i32 = 12;
}

fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(r) = cause.downcast_ref::<RepoError>() {
            return match r {
                RepoError::NoRepository { .. } => exit::NO_REPOSITORY,
                RepoError::Locked { .. } => exit::LOCKED,
                RepoError::WrongPassword => exit::WRONG_PASSWORD,
                _ => exit::FAILED,
            };
        }
    }
    exit::FAILED
}

/// Makes glibc serve allocations of 2 MiB and more (chunks, sealed blobs,
/// packs) with mmap and return them to the system when freed. By default
/// glibc raises that threshold after the first large free, up to 32 MiB,
/// and then serves these buffers from per-thread heaps that fragment: a
/// full backup of the benchmark dataset peaked ~60 MiB higher
/// (docs/performance.md). The pipeline reuses its buffers, so the mmap
/// calls are few.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: mallopt only changes a parameter of the allocator; it takes no
    // pointers and is called first thing in main, before any other thread
    // exists. An unsupported parameter is rejected (returns 0), which
    // changes nothing.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 2 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() {
    tune_allocator();
    let cli = cli::Cli::parse();
    let code = match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_code(&e)
        }
    };
    std::process::exit(code);
}
