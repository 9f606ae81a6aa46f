//! The NBD export and instant restore against real clients (libnbd's
//! nbdinfo/nbdcopy, qemu-img, qemu-io), never a mock: content is compared
//! with a reference model, writes must survive a kill of the server, and a
//! damaged chunk or a client sending garbage must not take the others down.

use crate::block::{MIB, block_backup, make_image};
use crate::common::{Env, is_s3, no_panic};
use baton_testing::Rng;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `tool` is installed; without it the test is skipped, unless
/// `BATON_TEST_REQUIRE_NBD=1` (CI), where that is a failure.
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .env("PATH", client_path())
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("BATON_TEST_REQUIRE_NBD").as_deref() != Ok("1"),
            "{tool} is not installed (apt-get install libnbd-bin nbdfuse qemu-utils)"
        );
        eprintln!("skipped: {tool} is not installed");
    }
    found
}

/// /usr/bin first: a pyenv python would shadow nbdsh's.
fn client_path() -> String {
    format!(
        "/usr/bin:/usr/sbin:/bin:/sbin:{}",
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs a client; returns (success, stdout + stderr).
pub fn client(args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .env("PATH", client_path())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", args[0]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A running `baton serve-nbd` or `restore --instant`, killed when dropped.
pub struct Baton {
    pub child: Child,
    pub uri: String,
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<serde_json::Value>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Baton {
    /// Starts `baton ARGS --json` and waits for its export to be ready.
    pub fn start(env: &Env, args: &[&str]) -> Baton {
        let mut c = env.std_cmd();
        c.args(args)
            .arg("--json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (err, sink) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        let mut b = Baton {
            child,
            uri: String::new(),
            lines,
            seen: Vec::new(),
            stderr,
        };
        let ready = b.wait_for(
            |v| v["message_type"] == "nbd_ready",
            Duration::from_secs(30),
        );
        b.uri = ready["uri"].as_str().unwrap().to_string();
        b
    }

    /// Waits for a JSON line matching `f` (panics with stderr on timeout
    /// or exit).
    pub fn wait_for(
        &mut self,
        f: impl Fn(&serde_json::Value) -> bool,
        limit: Duration,
    ) -> serde_json::Value {
        let t = Instant::now();
        loop {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let v: serde_json::Value =
                        serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
                    self.seen.push(v.clone());
                    if f(&v) {
                        return v;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.child.wait();
                    panic!(
                        "baton ended before the expected line; seen {:?}\nstderr: {}",
                        self.seen,
                        self.stderr()
                    );
                }
            }
            assert!(
                t.elapsed() < limit,
                "timed out; seen {:?}\nstderr: {}",
                self.seen,
                self.stderr()
            );
        }
    }

    /// Takes every line printed so far, without waiting.
    pub fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            if let Ok(v) = serde_json::from_str(&l) {
                self.seen.push(v);
            }
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the process to exit; returns its code.
    pub fn wait(&mut self, limit: Duration) -> i32 {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the reader threads drain.
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    if let Ok(v) = serde_json::from_str(&l) {
                        self.seen.push(v);
                    }
                }
                return st.code().unwrap_or(-1);
            }
            assert!(
                t.elapsed() < limit,
                "baton did not finish; stderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn interrupt(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A repository holding one block backup of a generated image; the image's
/// path and bytes.
fn backed_up_image(
    name: &str,
    size: u64,
    regions: &[(u64, u64)],
    seed: u64,
) -> (Env, PathBuf, Vec<u8>) {
    let env = Env::new();
    let img = env.path(name);
    let bytes = make_image(&img, size, regions, seed);
    block_backup(&env, &img, &[]);
    (env, img, bytes)
}

fn sock(env: &Env, name: &str) -> String {
    format!("unix:{}", env.path(name).display())
}

fn have_clients() -> bool {
    ["nbdinfo", "nbdcopy", "qemu-img", "qemu-io"]
        .iter()
        .all(|t| have(t))
}

/// Applies seeded random writes through one qemu-io run (flushed), and the
/// same writes to `model`; then checks seeded reads of written ranges.
fn random_io(uri: &str, model: &mut [u8], seed: u64, n: usize) {
    let mut rng = Rng::new(seed);
    let size = model.len() as u64;
    let mut cmds: Vec<String> = Vec::new();
    let mut regions = Vec::new();
    for i in 0..n {
        let len = rng.range(1, 300_000).min(size);
        let off = rng.below(size - len + 1);
        let pat = (i as u8).wrapping_mul(37).wrapping_add(1) | 1;
        cmds.push(format!("write -P {pat} {off} {len}"));
        model[off as usize..(off + len) as usize].fill(pat);
        regions.push((off, len, pat));
    }
    cmds.push("flush".into());
    // Reads of regions no later write touched must see their pattern.
    for (i, &(off, len, pat)) in regions.iter().enumerate() {
        let later = regions[i + 1..]
            .iter()
            .any(|&(o, l, _)| o < off + len && off < o + l);
        if !later {
            cmds.push(format!("read -P {pat} {off} {len}"));
        }
    }
    let mut args: Vec<String> = vec!["qemu-io".into(), "-f".into(), "raw".into()];
    for c in &cmds {
        args.push("-c".into());
        args.push(c.clone());
    }
    args.push(uri.into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = client(&argv);
    assert!(ok, "qemu-io failed: {out}");
    assert!(
        !out.contains("Pattern verification failed") && !out.contains("failed"),
        "qemu-io read back something else: {out}"
    );
}

/// The whole export read by nbdcopy (several connections).
fn copy_out(uri: &str, to: &Path) -> Vec<u8> {
    let (ok, out) = client(&["nbdcopy", uri, to.to_str().unwrap()]);
    assert!(ok, "nbdcopy: {out}");
    std::fs::read(to).unwrap()
}

#[test]
fn real_clients_read_and_write_the_export_and_writes_survive_a_kill() {
    if !have_clients() {
        return;
    }
    let env = Env::new();
    let img = env.path("disk.img");
    let size = 24 * MIB + 4096;
    let mut model = make_image(
        &img,
        size,
        &[(MIB, 3 * MIB), (10 * MIB + 7, 5000), (20 * MIB, MIB)],
        11,
    );
    block_backup(&env, &img, &[]);
    let ov = env.path("overlay");
    let args = [
        "serve-nbd",
        "latest",
        "--listen",
        &sock(&env, "s.sock"),
        "--overlay",
        ov.to_str().unwrap(),
    ];
    let mut srv = Baton::start(&env, &args);
    let uri = srv.uri.clone();

    let (ok, info) = client(&["nbdinfo", "--json", &uri]);
    assert!(ok, "{info}");
    assert!(info.contains(&format!("\"export-size\": {size}")), "{info}");
    let (ok, map) = client(&["nbdinfo", "--map", &uri]);
    assert!(ok, "{map}");
    // Chunk 0 is a hole, chunks 1-3 data.
    let first: Vec<&str> = map.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(&first[..2], &["0", "1048576"], "{map}");
    assert!(map.contains("hole") && map.contains("data"), "{map}");

    let (ok, cmp) = client(&[
        "qemu-img",
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        img.to_str().unwrap(),
        &uri,
    ]);
    assert!(ok && cmp.contains("identical"), "{cmp}");
    assert!(
        copy_out(&uri, &env.path("c1.raw")) == model,
        "nbdcopy differs"
    );
    let conv = env.path("conv.raw");
    let (ok, out) = client(&[
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &uri,
        conv.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(
        std::fs::read(&conv).unwrap() == model,
        "qemu-img convert differs"
    );

    random_io(&uri, &mut model, 99, 60);
    assert!(
        copy_out(&uri, &env.path("c2.raw")) == model,
        "export differs from the model after writes"
    );
    // Zeroing and trimming read back as zeros.
    let (ok, out) = client(&[
        "qemu-io",
        "-f",
        "raw",
        "-c",
        "write -z 100000 70000",
        "-c",
        "discard 2097152 1048576",
        "-c",
        "flush",
        &uri,
    ]);
    assert!(ok, "{out}");
    model[100_000..170_000].fill(0);
    model[2 * MIB as usize..3 * MIB as usize].fill(0);
    assert!(
        copy_out(&uri, &env.path("c3.raw")) == model,
        "zeroes differ"
    );
    // The image in the repository is untouched.
    assert!(
        env.cmd()
            .args(["dump", "latest", "disk.img"])
            .output()
            .unwrap()
            .stdout
            == std::fs::read(&img).unwrap()
    );

    // kill -9, restart on the same overlay: every flushed write is there.
    srv.kill9();
    let mut srv2 = Baton::start(&env, &args);
    assert!(
        copy_out(&srv2.uri, &env.path("c4.raw")) == model,
        "flushed writes lost across a kill"
    );
    // Ctrl-C stops it cleanly (130) and releases the lock.
    srv2.interrupt();
    assert_eq!(srv2.wait(Duration::from_secs(60)), 130, "{}", srv2.stderr());
    assert!(env.run(&["check"]).ok().stdout.contains("no problems"));
    // Another snapshot's overlay is refused.
    let other = env.path("other.img");
    make_image(&other, MIB, &[(0, 100)], 12);
    block_backup(&env, &other, &[]);
    let r = env.run(&[
        "serve-nbd",
        "latest",
        "--listen",
        &sock(&env, "t.sock"),
        "--overlay",
        ov.to_str().unwrap(),
    ]);
    no_panic(&r);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("belongs to another"), "{}", r.stderr);
}

#[test]
fn a_garbage_client_is_dropped_and_others_are_served() {
    if !have_clients() {
        return;
    }
    let (env, _, model) = backed_up_image("g.img", 4 * MIB, &[(0, 4 * MIB)], 13);
    let path = env.path("g.sock");
    let srv = Baton::start(
        &env,
        &[
            "serve-nbd",
            "latest",
            "--listen",
            &format!("unix:{}", path.display()),
        ],
    );
    // A client mid-negotiation, one sending garbage at once, and random junk.
    let mut idle = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let mut bad = std::os::unix::net::UnixStream::connect(&path).unwrap();
    bad.write_all(&[0xff; 4096]).unwrap();
    let mut rng = Rng::new(5);
    for _ in 0..20 {
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let mut junk = vec![0u8; rng.range(1, 2000) as usize];
        rng.fill(&mut junk);
        let _ = s.write_all(&junk);
    }
    assert!(
        copy_out(&srv.uri, &env.path("c.raw")) == model,
        "a good client was not served"
    );
    let _ = idle.write_all(b"NBDMAGIC");
    assert!(copy_out(&srv.uri, &env.path("d.raw")) == model);
}

#[test]
fn a_damaged_chunk_fails_only_its_range() {
    if !have_clients() || is_s3(&Env::empty().repo) {
        return;
    }
    let env = Env::with_pack_size(1);
    let img = env.path("d.img");
    make_image(&img, 4 * MIB, &[(0, MIB), (2 * MIB, MIB)], 14);
    block_backup(&env, &img, &[]);
    // Each random 1 MiB chunk fills a pack of its own: damage one.
    let mut packs = crate::common::objects(&env.repo, "data");
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let victim = packs.last().unwrap();
    let mut b = std::fs::read(victim).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    std::fs::write(victim, &b).unwrap();
    let srv = Baton::start(
        &env,
        &["serve-nbd", "latest", "--listen", &sock(&env, "d.sock")],
    );
    let read = |off: u64| {
        client(&[
            "qemu-io",
            "-f",
            "raw",
            "-c",
            &format!("read {off} 1M"),
            &srv.uri,
        ])
    };
    let (a, b) = (read(0), read(2 * MIB));
    let failures = [&a, &b]
        .iter()
        .filter(|(_, o)| o.contains("Input/output error") || o.contains("failed"))
        .count();
    assert_eq!(
        failures, 1,
        "exactly one chunk is damaged:\n{}\n{}",
        a.1, b.1
    );
    // The holes and the intact chunk still read, in one connection after the error.
    let (ok, out) = client(&[
        "qemu-io",
        "-f",
        "raw",
        "-c",
        "read -P 0 1M 1M",
        "-c",
        "read -P 0 3M 1M",
        &srv.uri,
    ]);
    assert!(ok && !out.contains("failed"), "{out}");
    std::thread::sleep(Duration::from_millis(200));
    let log = srv.stderr();
    assert!(
        log.contains("read of") && log.contains("failed"),
        "no clear log line: {log}"
    );
}

fn instant_args<'a>(env: &Env, target: &'a str, sock_name: &str, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "restore",
        "--instant",
        "latest",
        "--target",
        target,
        "--listen",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(sock(env, sock_name));
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn instant_restore_serves_at_once_and_merges_the_clients_writes() {
    if !have_clients() {
        return;
    }
    let size = 16 * MIB;
    let (env, img, mut model) = backed_up_image("vm.img", size, &[(0, 12 * MIB)], 21);
    let dest = env.path("dest.img");
    let args = instant_args(
        &env,
        dest.to_str().unwrap(),
        "i.sock",
        &["--copy-limit", "3MiB"],
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut b = Baton::start(&env, &argv);
    // Read the last data chunk first: the copy jumps ahead to it.
    let (ok, out) = client(&["qemu-io", "-f", "raw", "-c", "read 11M 1M", &b.uri]);
    assert!(ok, "{out}");
    random_io(&b.uri, &mut model, 7, 30);
    let (ok, cmp) = client(&[
        "qemu-img",
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        img.to_str().unwrap(),
        &b.uri,
    ]);
    assert!(
        !ok || !cmp.contains("identical"),
        "writes are not visible: {cmp}"
    );
    let code = b.wait(Duration::from_secs(60));
    assert_eq!(code, 0, "{}", b.stderr());
    let summary = b
        .seen
        .iter()
        .find(|v| v["message_type"] == "summary")
        .cloned()
        .expect("summary");
    assert!(
        summary["time_to_first_byte_ms"].as_f64().is_some(),
        "{summary}"
    );
    assert!(summary["jumped_ahead"].as_u64().unwrap() >= 1, "{summary}");
    assert_eq!(
        summary["verified"]["mismatches"].as_array().unwrap().len(),
        0
    );
    assert!(summary["merged_bytes"].as_u64().unwrap() > 0);
    assert!(
        std::fs::read(&dest).unwrap() == model,
        "merged target differs from snapshot + writes"
    );
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("baton-overlay"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        b.seen.iter().any(|v| v["phase"] == "copying"),
        "no progress reported"
    );
}

#[test]
fn instant_restore_killed_resumes_with_every_flushed_write() {
    if !have_clients() {
        return;
    }
    let (env, _, mut model) = backed_up_image("vm.img", 12 * MIB, &[(0, 12 * MIB)], 31);
    let dest = env.path("dest.img");
    let args = instant_args(
        &env,
        dest.to_str().unwrap(),
        "k.sock",
        &["--copy-limit", "2MiB"],
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut b = Baton::start(&env, &argv);
    random_io(&b.uri, &mut model, 8, 20);
    b.wait_for(
        |v| v["phase"] == "copying" && v["copied"].as_u64().unwrap_or(0) >= 2,
        Duration::from_secs(30),
    );
    b.kill9();
    let state = PathBuf::from(format!("{}.baton-overlay.state", dest.display()));
    assert!(state.exists(), "no durable state after the kill");
    // Again: it resumes; the writes are served from the overlay.
    let mut b = Baton::start(&env, &argv);
    let resumed = b.wait_for(|v| v["phase"] == "resumed", Duration::from_secs(10));
    assert!(resumed["copied"].as_u64().unwrap() >= 2, "{resumed}");
    assert!(resumed["overlay_blocks"].as_u64().unwrap() > 0, "{resumed}");
    assert!(
        copy_out(&b.uri, &env.path("now.raw")) == model,
        "writes lost across the kill"
    );
    assert_eq!(b.wait(Duration::from_secs(60)), 0, "{}", b.stderr());
    assert!(
        std::fs::read(&dest).unwrap() == model,
        "merged target differs"
    );
}

#[test]
fn instant_restore_runs_the_stop_and_start_commands() {
    if !have_clients() {
        return;
    }
    let (env, _, mut model) = backed_up_image("a.img", 4 * MIB, &[(0, 2 * MIB)], 41);
    let dest = env.path("dest.img");
    let flag = env.path("stop-now");
    let started = env.path("started");
    // The "application" stays connected until the stop command tells the
    // test to disconnect it; the start command records the target.
    let stop = format!(
        "touch {} && while [ -e {} ]; do sleep 0.05; done",
        flag.display(),
        flag.display()
    );
    let start = format!("echo \"$BATON_TARGET\" > {}", started.display());
    let args = instant_args(
        &env,
        dest.to_str().unwrap(),
        "c.sock",
        &["--stop-command", &stop, "--start-command", &start],
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut b = Baton::start(&env, &argv);
    random_io(&b.uri, &mut model, 3, 10);
    let t = Instant::now();
    while !flag.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "stop command never ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // While the stop command runs the export still serves (the application
    // flushes through it).
    random_io(&b.uri, &mut model, 4, 5);
    std::fs::remove_file(&flag).unwrap();
    assert_eq!(b.wait(Duration::from_secs(60)), 0, "{}", b.stderr());
    assert_eq!(
        std::fs::read_to_string(&started).unwrap().trim(),
        dest.to_str().unwrap()
    );
    assert!(std::fs::read(&dest).unwrap() == model);
}

/// A restore killed after it verified, or while merging, never empties its
/// target on the next run (the state file decides, and a missing copy
/// record while merging is an error, not a fresh start).
#[test]
fn a_rerun_after_the_merge_never_empties_the_target() {
    if !have_clients() {
        return;
    }
    let (env, _, want) = backed_up_image("m.img", 4 * MIB, &[(0, 3 * MIB)], 51);
    let dest = env.path("dest.img");
    let args = instant_args(&env, dest.to_str().unwrap(), "m.sock", &[]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut b = Baton::start(&env, &argv);
    assert_eq!(b.wait(Duration::from_secs(60)), 0, "{}", b.stderr());
    assert!(std::fs::read(&dest).unwrap() == want);
    let snap = b
        .seen
        .iter()
        .find(|v| v["message_type"] == "summary")
        .unwrap()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let state = PathBuf::from(format!("{}.baton-overlay.state", dest.display()));
    let write_state = |phase: &str| {
        let json = serde_json::json!({
            "identity": format!("{snap}:m.img"),
            "target": dest.to_str().unwrap(),
            "phase": phase,
        });
        std::fs::write(&state, json.to_string()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    // Killed after "verified": the rerun only cleans up.
    write_state("verified");
    let r = env.run(&argv);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        std::fs::read(&dest).unwrap() == want,
        "a verified target was touched"
    );
    assert!(!state.exists());
    // Killed while merging, its copy record gone: refused, target kept.
    write_state("merging");
    let r = env.run(&argv);
    no_panic(&r);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("left as it is"), "{}", r.stderr);
    assert!(
        std::fs::read(&dest).unwrap() == want,
        "a merging target was emptied"
    );
    // Another user's (or a world-writable) state file is not believed.
    write_state("verified");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = env.run(&argv);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("not a private file"), "{}", r.stderr);
}

#[test]
fn an_overlay_that_is_the_target_or_a_device_default_is_refused() {
    let env = Env::new();
    let img = env.path("o.img");
    make_image(&img, MIB, &[(0, 1000)], 52);
    block_backup(&env, &img, &[]);
    let dest = env.path("dest.img");
    std::fs::write(&dest, b"keep me").unwrap();
    let r = env.run(&[
        "restore",
        "--instant",
        "latest",
        "--target",
        dest.to_str().unwrap(),
        "--overlay",
        dest.to_str().unwrap(),
        "--listen",
        &sock(&env, "x.sock"),
    ]);
    no_panic(&r);
    assert_ne!(r.code, 0);
    assert_eq!(std::fs::read(&dest).unwrap(), b"keep me", "{}", r.stderr);
    if crate::common::is_root() && std::path::Path::new("/dev/loop-control").exists() {
        let r = env.run(&["restore", "--instant", "latest", "--target", "/dev/loop0"]);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains("--overlay"), "{}", r.stderr);
    }
}
