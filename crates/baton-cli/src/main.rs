//! The `baton` binary: parses arguments, opens the repository, runs one
//! command, prints its result, and maps errors to documented exit codes.

/// The library crates under one name: commands use the repository core,
/// the file-system source and target, and maintenance together.
mod baton {
    pub use baton_block::{BlockBackupOptions, BlockSource, ImageReader, ReaderConfig};
    pub use baton_fs::*;
    pub use baton_maint::*;
    pub use baton_repo::*;
}

#[macro_use]
mod out;
mod cli;
mod commands;
mod context;
mod progress;

use baton::RepoError;
use clap::Parser;

/// Exit codes (documented in the README and `baton --help`).
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const PARTIAL: i32 = 3;
    pub const NO_REPOSITORY: i32 = 10;
    pub const LOCKED: i32 = 11;
    pub const WRONG_PASSWORD: i32 = 12;
    pub const DENIED: i32 = 13;
    pub const UNREACHABLE: i32 = 14;
}

/// A usage error found after argument parsing (exit code 2, like clap's).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn stopped_by_closed_output(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        matches!(c.downcast_ref::<RepoError>(), Some(RepoError::Cancelled))
            || c.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || matches!(c.downcast_ref::<RepoError>(), Some(RepoError::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

pub(crate) fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if cause.is::<Usage>() {
            return exit::USAGE;
        }
        if let Some(c) = cause.downcast_ref::<baton_director::client::ClientError>() {
            use baton_wire::ErrorCode;
            return match c.code() {
                Some(ErrorCode::Unauthenticated | ErrorCode::Forbidden) => exit::DENIED,
                Some(ErrorCode::Invalid | ErrorCode::NotFound | ErrorCode::Conflict) => exit::USAGE,
                _ if c.retry_later() => exit::UNREACHABLE,
                _ => exit::FAILED,
            };
        }
        if let Some(r) = cause.downcast_ref::<RepoError>() {
            return match r {
                RepoError::NoRepository { .. } => exit::NO_REPOSITORY,
                RepoError::Locked { .. } => exit::LOCKED,
                RepoError::WrongPassword => exit::WRONG_PASSWORD,
                RepoError::Invalid(_) => exit::USAGE,
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

/// A process holding repository keys writes no core dump: it would put the
/// master key on disk, readable by whoever reads the dumps.
fn no_core_dumps() {
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
}

fn main() {
    context::started();
    tune_allocator();
    no_core_dumps();
    let cli = cli::Cli::parse();
    let json = cli.global.json;
    context::handle_signals();
    let result = commands::run(cli);
    if let Some(sig) = context::interrupted_by() {
        if let Err(e) = &result
            && !matches!(e.downcast_ref::<RepoError>(), Some(RepoError::Cancelled))
        {
            eprintln!("error: {}", context::escape(&format!("{e:#}")));
        }
        eprintln!(
            "interrupted: stopped cleanly and released the repository lock. Run the same command again to continue: an interrupted backup resumes where it stopped (`baton jobs` lists it), an interrupted restore keeps what it verified"
        );
        std::process::exit(128 + sig);
    }
    let code = match result {
        Ok(code) => code,
        // The reader of stdout went away (`| head`): the output was all the
        // command was for, so this is no failure.
        Err(e) if out::closed() && stopped_by_closed_output(&e) => exit::OK,
        Err(e) if json => {
            // A program reading --json output reads the failure as JSON too
            // (restic's shape; JSON escapes control characters itself).
            let code = exit_code(&e);
            eprintln!(
                "{}",
                serde_json::json!({ "message_type": "exit_error", "code": code, "message": format!("{e:#}") })
            );
            code
        }
        Err(e) => {
            // Names in messages may carry terminal escape sequences.
            let text = format!("{e:#}");
            let lines: Vec<_> = text.split('\n').map(context::escape).collect();
            eprintln!("error: {}", lines.join("\n"));
            exit_code(&e)
        }
    };
    std::process::exit(code);
}
