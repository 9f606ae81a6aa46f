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

fn main() {
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
