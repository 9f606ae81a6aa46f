//! The README's tour, run top to bottom as one shell script, its printed
//! outputs compared with what the README shows.
//!
//! The tour is every ```` ```console ```` block between `<!-- tour:start -->`
//! and `<!-- tour:end -->`. A line starting with `$ ` is a command (a
//! trailing `\` continues it); the lines after it are its expected output
//! (stdout and stderr together), where `[..]` stands for any text within a
//! line (ids, times, sizes, the scratch directory) and a line `...` for any
//! number of lines. Every command must exit 0. The script runs in one
//! `bash`, so `cd` and `export` carry over, with `baton` on `PATH`, in an
//! empty scratch home.

use std::path::{Path, PathBuf};

struct Step {
    command: String,
    expected: Vec<String>,
}

fn tour() -> Vec<Step> {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let start = readme.find("<!-- tour:start -->").expect("tour start");
    let end = readme.find("<!-- tour:end -->").expect("tour end");
    let mut steps: Vec<Step> = Vec::new();
    let mut in_block = false;
    let mut continued = false;
    for line in readme[start..end].lines() {
        if !in_block {
            in_block = line.trim_start() == "```console";
            continue;
        }
        if line.trim_start().starts_with("```") {
            in_block = false;
            continue;
        }
        if continued {
            let s = steps.last_mut().unwrap();
            s.command.push('\n');
            s.command.push_str(line);
            continued = line.ends_with('\\');
        } else if let Some(cmd) = line.strip_prefix("$ ") {
            steps.push(Step {
                command: cmd.to_string(),
                expected: Vec::new(),
            });
            continued = cmd.ends_with('\\');
        } else {
            steps
                .last_mut()
                .expect("output before the first command")
                .expected
                .push(line.trim_end().to_string());
        }
    }
    steps
}

/// Whether `line` matches `pattern`, `[..]` matching any text.
fn line_matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split("[..]").collect();
    if parts.len() == 1 {
        return pattern == line;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !line.starts_with(first) || !line[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &line[first.len()..line.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// Whether `lines` match `patterns` (`...` any number of lines).
fn lines_match(patterns: &[String], lines: &[&str]) -> bool {
    match patterns.split_first() {
        None => lines.is_empty(),
        Some((p, rest)) if p == "..." => {
            (0..=lines.len()).any(|skip| lines_match(rest, &lines[skip..]))
        }
        Some((p, rest)) => {
            !lines.is_empty() && line_matches(p, lines[0]) && lines_match(rest, &lines[1..])
        }
    }
}

#[test]
fn the_patterns_match_what_they_say() {
    assert!(line_matches(
        "snapshot [..] saved in [..]s",
        "snapshot 1a2b saved in 0.1s"
    ));
    assert!(!line_matches("snapshot [..] saved", "snapshot 1a2b saved!"));
    assert!(line_matches("[..]", ""));
    let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(lines_match(&p(&["a", "...", "z"]), &["a", "b", "c", "z"]));
    assert!(lines_match(&p(&["a", "...", "z"]), &["a", "z"]));
    assert!(!lines_match(&p(&["a", "z"]), &["a", "b", "z"]));
    assert!(!lines_match(&p(&["a"]), &["a", "b"]));
}

#[test]
fn the_readme_tour_runs_as_shown() {
    if crate::common::local_only("the tour makes its own local repository") {
        return;
    }
    let steps = tour();
    assert!(
        steps.len() >= 15,
        "the tour has only {} commands",
        steps.len()
    );
    let home = tempfile::tempdir().unwrap();
    let mut script = String::from("set -u\n");
    for (i, s) in steps.iter().enumerate() {
        script.push_str(&format!(
            "printf '\\n@@@step {i}\\n'\n{{\n{}\n}} 2>&1\nprintf '\\n@@@exit %d\\n' $?\n",
            s.command
        ));
    }
    let baton = Path::new(assert_cmd::cargo::cargo_bin!("baton"));
    let path = format!(
        "{}:{}",
        baton.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env_clear()
        .env("PATH", path)
        .env("HOME", home.path())
        .env("TMPDIR", home.path())
        .env("LC_ALL", "C.UTF-8")
        .current_dir(home.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Split the transcript at the markers.
    let mut outputs: Vec<(Vec<&str>, Option<i32>)> = Vec::new();
    for line in text.lines() {
        if line.starts_with("@@@step ") {
            outputs.push((Vec::new(), None));
        } else if let Some(code) = line.strip_prefix("@@@exit ") {
            outputs.last_mut().unwrap().1 = code.parse().ok();
        } else if let Some(o) = outputs.last_mut()
            && o.1.is_none()
        {
            o.0.push(line);
        }
    }
    assert_eq!(
        outputs.len(),
        steps.len(),
        "the tour stopped early\n{text}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (s, (lines, code)) in steps.iter().zip(&outputs) {
        // The marker's own newline leaves an empty last line.
        let mut lines: Vec<&str> = lines.iter().map(|l| l.trim_end()).collect();
        while lines.last() == Some(&"") {
            lines.pop();
        }
        let mut want = s.expected.clone();
        while want.last().is_some_and(|l| l.is_empty()) {
            want.pop();
        }
        assert_eq!(
            *code,
            Some(0),
            "$ {}\nexited {code:?}:\n{}",
            s.command,
            lines.join("\n")
        );
        assert!(
            lines_match(&want, &lines),
            "$ {}\nthe README shows:\n{}\nthe command printed:\n{}",
            s.command,
            want.join("\n"),
            lines.join("\n")
        );
    }
}
