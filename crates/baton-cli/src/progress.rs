//! Progress bars on stderr (only when it is a terminal) and verbose listings.

use crate::baton::{EntryStatus, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct CliProgress {
    bar: Option<ProgressBar>,
    files: AtomicU64,
    verbose: u8,
}

impl CliProgress {
    /// A bar is drawn only when stderr is a terminal and output is for people.
    pub fn new(verbose: u8, quiet: bool, json: bool) -> Self {
        let show = !quiet && !json && std::io::stderr().is_terminal();
        let bar = show.then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("valid template"),
            );
            b
        });
        CliProgress {
            bar,
            files: AtomicU64::new(0),
            verbose: if json { 0 } else { verbose },
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(b) => b.println(line),
            None => outln!("{line}"),
        }
    }
}

impl Progress for CliProgress {
    fn wants_totals(&self) -> bool {
        self.bar.is_some()
    }
    fn set_total(&self, _files: u64, bytes: u64) {
        if let Some(b) = &self.bar {
            b.set_length(bytes);
        }
    }
    fn entry(&self, path: &Path, status: EntryStatus) {
        let n = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(b) = &self.bar {
            b.set_message(format!("{n} entries"));
        }
        if self.verbose > 0 && (status != EntryStatus::Unmodified || self.verbose > 1) {
            let s = match status {
                EntryStatus::New => "new",
                EntryStatus::Changed => "modified",
                EntryStatus::Unmodified => "unmodified",
                EntryStatus::Restored => "restored",
            };
            self.println(format!(
                "{s:<10} {}",
                crate::context::escape(&path.display().to_string())
            ));
        }
    }
    fn bytes(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
    fn error(&self, path: &str, message: &str) {
        // Errors are printed even with --quiet.
        let line = format!(
            "error: {}: {}",
            crate::context::escape(path),
            crate::context::escape(message)
        );
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
}
