//! One module per command; each turns resolved arguments into a library call
//! and prints the result for people or as JSON.

mod backup;
mod block;
mod browse;
mod check;
mod copy;
mod dataset;
mod director;
mod drill;
mod find;
mod forget;
mod init;
mod key;
mod prune;
mod repair;
mod restore;
mod select;
mod volume;

// Hidden developer commands (`baton debug ...`), used by bench/run.sh.
mod debug;

use crate::cli::{Cli, Command};
use anyhow::Result;

/// Runs the command; returns the exit code on success paths.
pub fn run(cli: Cli) -> Result<i32> {
    let g = &cli.global;
    match cli.command {
        Command::Debug(c) => debug::run(g, c),
        Command::Init(a) => init::run(g, &a),
        Command::Backup(a) => backup::run(g, &a),
        Command::Restore(a) => restore::run(g, &a),
        Command::Snapshots(a) => browse::snapshots(g, &a),
        Command::Ls(a) => browse::ls(g, &a),
        Command::Diff(a) => browse::diff(g, &a),
        Command::Dump(a) => browse::dump(g, &a),
        Command::ServeNbd(a) => block::serve_nbd(g, &a),
        Command::Find(a) => find::find(g, &a),
        Command::Stats(a) => find::stats(g, &a),
        Command::List(a) => find::list(g, &a),
        Command::Rewrite(a) => find::rewrite(g, &a),
        Command::Tag(a) => find::tag(g, &a),
        Command::Copy(a) => copy::run(g, &a),
        Command::Replicate(a) => volume::replicate(g, &a),
        Command::Drill(a) => drill::run(g, &a),
        Command::Mount(a) => find::mount(g, &a),
        Command::Completion(a) => {
            use clap::CommandFactory;
            let mut cmd = crate::cli::Cli::command();
            // Into a buffer: the generator panics on a closed output.
            let mut script = Vec::new();
            clap_complete::generate(a.shell, &mut cmd, "baton", &mut script);
            if let Err(e) = std::io::Write::write_all(&mut std::io::stdout(), &script) {
                crate::out::mark(&e);
                return Err(e.into());
            }
            Ok(crate::exit::OK)
        }
        Command::Man(a) => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&a.dir)?;
            clap_mangen::generate_to(crate::cli::Cli::command(), &a.dir)?;
            Ok(crate::exit::OK)
        }
        Command::Cat(a) => browse::cat(g, &a),
        Command::Key(k) => key::run(g, k),
        Command::Director(a) => director::serve(g, &a),
        Command::Ctl(c) => director::ctl(g, c),
        Command::Agent(c) => director::agent(g, c),
        Command::MediaAgent(a) => director::media_agent(g, &a),
        Command::Unlock(a) => key::unlock(g, &a),
        Command::Jobs(a) => key::jobs(g, a),
        Command::Check(a) => check::run(g, &a),
        Command::Repair(c) => repair::run(g, c),
        Command::Forget(a) => forget::run(g, &a),
        Command::Prune(a) => prune::run(g, &a),
    }
}

/// Prints one `--json` message on a line of stdout: an object whose
/// `message_type` names its schema (`docs/json/COMMAND.schema.json`).
pub fn print_json(message_type: &str, mut v: serde_json::Value) {
    if let Some(o) = v.as_object_mut() {
        o.insert("message_type".into(), message_type.into());
    }
    outln!(
        "{}",
        serde_json::to_string(&v).expect("JSON values serialize")
    );
}

/// `(path, message)` pairs as the `errors` list of `--json` summaries, in
/// the shape a snapshot stores (`[{"path", "message"}]`).
pub fn error_list(errors: &[(String, String)]) -> serde_json::Value {
    errors
        .iter()
        .map(|(p, m)| serde_json::json!({ "path": p, "message": m }))
        .collect()
}

/// Human-readable byte counts (binary units).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.3} {}", UNITS[u])
    }
}

/// The lines every backup prints after its own: what a resumed job saved,
/// what was read and stored.
pub fn print_read_and_stored(s: &baton_types::SnapshotSummary) {
    if let Some(job) = s.resumed_job {
        outln!(
            "Resumed interrupted job {}: {} not read again",
            job.short(),
            bytes(s.bytes_resumed)
        );
    }
    outln!(
        "Read {} of {}, added {} to the repository",
        bytes(s.bytes_read),
        bytes(s.bytes_total),
        bytes(s.bytes_stored)
    );
}

/// "1 pack", "2 packs", "0 entries": a count with its noun.
pub fn count(n: impl TryInto<u64>, noun: &str) -> String {
    let n: u64 = n.try_into().unwrap_or(u64::MAX);
    if n == 1 {
        return format!("1 {noun}");
    }
    let plural = match noun.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'o', 'u']) => format!("{stem}ies"),
        _ => format!("{noun}s"),
    };
    format!("{n} {plural}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_read_as_english() {
        assert_eq!(super::count(1u64, "pack"), "1 pack");
        assert_eq!(super::count(2u64, "pack"), "2 packs");
        assert_eq!(super::count(0usize, "entry"), "0 entries");
        assert_eq!(super::count(3u64, "key"), "3 keys");
    }
}
