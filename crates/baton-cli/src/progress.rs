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
    /// `--json` on backup and restore: a status line on stdout at most once
    /// a second, and `-v` entries as `verbose_status` lines.
    json: bool,
    /// `--json`: errors go to stderr as `error` messages.
    json_errors: bool,
    started: std::time::Instant,
    last_status_ms: AtomicU64,
    bytes_done: AtomicU64,
    total_bytes: AtomicU64,
    total_files: AtomicU64,
    errors: AtomicU64,
    current: std::sync::Mutex<(String, String)>,
}

impl CliProgress {
    /// A bar is drawn only when stderr is a terminal and output is for people.
    pub fn new(verbose: u8, quiet: bool, json: bool) -> Self {
        let show = !quiet && !json && std::io::stderr().is_terminal();
        let bar = show.then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("valid template"),
            );
            b
        });
        CliProgress {
            bar,
            files: AtomicU64::new(0),
            // With --json, -v lists entries only where status lines are
            // streamed (see `streaming`).
            verbose,
            json_errors: json,
            // Status lines only where asked for (backup, restore), so
            // other commands' --json stays one document.
            json: false,
            started: std::time::Instant::now(),
            // Never yet: the first entry prints one at once.
            last_status_ms: AtomicU64::new(u64::MAX),
            bytes_done: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            total_files: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            current: std::sync::Mutex::new((String::new(), String::new())),
        }
    }

    /// With `--json`, a `status` line (restic's shape: phase, entries and
    /// bytes done, totals when known, the current path) once a second.
    fn maybe_status(&self) {
        if !self.json {
            return;
        }
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_status_ms.load(Ordering::Relaxed);
        if (last != u64::MAX && now < last.saturating_add(1000))
            || self
                .last_status_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (phase, file) = self.current.lock().expect("progress").clone();
        let (done, total) = (
            self.bytes_done.load(Ordering::Relaxed),
            self.total_bytes.load(Ordering::Relaxed),
        );
        let mut v = serde_json::json!({
            "phase": phase,
            "seconds_elapsed": now / 1000,
            "files_done": self.files.load(Ordering::Relaxed),
            "bytes_done": done,
            "error_count": self.errors.load(Ordering::Relaxed),
            "current_files": if file.is_empty() { vec![] } else { vec![file] },
        });
        if total > 0 {
            v["total_bytes"] = total.into();
            v["total_files"] = self.total_files.load(Ordering::Relaxed).into();
            v["percent_done"] = (done as f64 / total as f64).min(1.0).into();
        }
        crate::commands::print_json("status", v);
    }

    /// With `--json`, stream `status` lines (backup and restore).
    pub fn streaming(mut self, json: bool) -> Self {
        self.json = json;
        self
    }

    /// Whether `-v` entry lines are printed (JSON ones only when streaming).
    fn lists_entries(&self) -> bool {
        self.verbose > 0 && (self.json || !self.json_errors)
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
        self.bar.is_some() || self.json
    }
    fn set_total(&self, files: u64, bytes: u64) {
        self.total_files.store(files, Ordering::Relaxed);
        self.total_bytes.store(bytes, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_length(bytes);
        }
    }
    fn phase(&self, phase: &str) {
        self.current.lock().expect("progress").0 = phase.to_string();
        if let Some(b) = &self.bar {
            b.set_prefix(phase.to_string());
        }
    }
    fn entry(&self, path: &Path, status: EntryStatus) {
        let n = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        if self.json || self.bar.is_some() {
            self.current.lock().expect("progress").1 = path.display().to_string();
        }
        if let Some(b) = &self.bar {
            let name = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            b.set_message(format!("{n} entries, {}", crate::context::escape(&name)));
        }
        self.maybe_status();
        if self.lists_entries() && (status != EntryStatus::Unmodified || self.verbose > 1) {
            let s = match status {
                EntryStatus::New => "new",
                EntryStatus::Changed => "modified",
                EntryStatus::Unmodified => "unmodified",
                EntryStatus::Restored => "restored",
            };
            if self.json {
                crate::commands::print_json(
                    "verbose_status",
                    serde_json::json!({ "action": s, "item": path.display().to_string() }),
                );
                return;
            }
            self.println(format!(
                "{s:<10} {}",
                crate::context::escape(&path.display().to_string())
            ));
        }
    }
    fn bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(n);
        }
        self.maybe_status();
    }
    fn error(&self, path: &str, message: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        // Errors are printed even with --quiet.
        if self.json_errors {
            let phase = self.current.lock().expect("progress").0.clone();
            eprintln!(
                "{}",
                serde_json::json!({
                    "message_type": "error", "item": path, "message": message, "during": phase,
                })
            );
            return;
        }
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
