//! Standard output that a closed pipe does not break.
//!
//! `println!` panics when the reader of a pipe has gone (`baton ls latest |
//! head -1`), and a panic in the middle of `backup -v` would abort the
//! backup. Every line goes through [`line()`] instead: once stdout is found
//! closed, later lines are dropped, the command goes on (a backup finishes
//! and commits its snapshot) or stops early where the output was all it was
//! for ([`closed`]), and the exit code is unaffected.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes one line to stdout, unless stdout was found closed.
pub fn line(args: std::fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        mark(&e);
    }
}

/// Notes an error of writing to stdout: a closed pipe closes the output.
pub fn mark(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Whether the reader of stdout has gone.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// `println!` that survives a closed stdout.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::out::line(format_args!(""))
    };
    ($($t:tt)*) => {
        $crate::out::line(format_args!($($t)*))
    };
}
