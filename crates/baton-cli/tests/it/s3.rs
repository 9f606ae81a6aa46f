//! Repositories on S3, against a real Ceph RADOS Gateway started by the
//! tests (`baton_testing::s3`): concurrent writers into one bucket, the
//! gateway restarted mid-backup, a storm of 503s, a request that never
//! answers, a full bucket. Nothing is lost and nothing is left locked.
//!
//! The faults that radosgw cannot make on demand (503s, silence) come from a
//! small TCP proxy in front of it: it answers 503 to a set number of
//! connections, or swallows them, and passes everything else through.

use crate::common::{Env, Run, run};
use baton_testing::s3::{Gateway, gateway, unique_bucket};
use baton_testing::{CompareOptions, compare_trees, write_file};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A repository in a bucket of its own, with `baton` pointed at `endpoint`
/// (the gateway, or a proxy in front of it).
struct S3Env {
    env: Env,
    gw: &'static Gateway,
    bucket: String,
    location: String,
}

impl S3Env {
    fn new() -> Option<S3Env> {
        let gw = gateway()?;
        let bucket = unique_bucket();
        let env = Env::empty();
        let location = gw.location(&bucket, "repo");
        let e = S3Env {
            env,
            gw,
            bucket,
            location,
        };
        e.run(&["init", "--kdf-memory", "8192", "--kdf-iterations", "1"])
            .ok();
        Some(e)
    }

    /// `baton` in this environment, pointed at `location`.
    fn std_cmd_at(&self, location: &str) -> std::process::Command {
        let mut c = self.env.std_cmd();
        c.env("BATON_REPOSITORY", location).envs(self.gw.env());
        c
    }

    fn cmd_at(&self, location: &str) -> assert_cmd::Command {
        assert_cmd::Command::from_std(self.std_cmd_at(location))
    }

    fn run(&self, args: &[&str]) -> Run {
        run(self.cmd_at(&self.location).args(args))
    }

    fn std_cmd(&self) -> std::process::Command {
        self.std_cmd_at(&self.location)
    }

    fn locks(&self) -> usize {
        crate::common::objects(Path::new(&self.location), "locks").len()
    }

    /// Restores the newest snapshot of `host` (any host: None) and compares
    /// it with `src`.
    fn restores_exactly(&self, src: &Path, host: Option<&str>) {
        let mut args = vec!["snapshots", "--json"];
        if let Some(h) = host {
            args.extend(["--host", h]);
        }
        let list = self.run(&args).ok().json();
        let id = list["snapshots"]
            .as_array()
            .and_then(|a| a.last())
            .and_then(|s| s["id"].as_str())
            .unwrap_or_else(|| panic!("no snapshot: {list}"))
            .to_string();
        let t = self.env.path(&format!("restore-{}", unique_bucket()));
        let ts = t.to_str().unwrap().to_string();
        self.run(&["restore", &id, "--target", &ts, "--verify"])
            .ok();
        let opts = CompareOptions {
            ownership: false,
            ..CompareOptions::default()
        };
        compare_trees(src, &t.join(src.strip_prefix("/").unwrap()), &opts)
            .unwrap_or_else(|d| panic!("{}", d.join("\n")));
    }

    fn check_clean(&self) {
        let r = self.run(&["check", "--read-data", "--json"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    }
}

impl Drop for S3Env {
    fn drop(&mut self) {
        crate::common::remove_s3_repository(Path::new(&self.location));
    }
}

/// Files of `n` × `size` bytes under `dir` (seeded: reproducible).
fn make_files(dir: &Path, n: usize, size: u64, seed: u64) -> PathBuf {
    for i in 0..n {
        write_file(&dir.join(format!("d{}/f{i}", i % 4)), size, seed + i as u64).unwrap();
    }
    dir.to_path_buf()
}

/// Two hosts' worth of paths backed up into one bucket by two processes at
/// once: both snapshots are whole, `check --read-data` is clean, and each
/// restores exactly.
#[test]
fn two_backups_into_one_bucket_at_once() {
    let Some(s) = S3Env::new() else { return };
    let a = make_files(&s.env.path("host-a"), 24, 700_000, 1);
    let b = make_files(&s.env.path("host-b"), 24, 700_000, 100);
    let spawn = |src: &Path, host: &str| {
        s.std_cmd()
            .args(["backup", "--host", host])
            .arg(src)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (pa, pb) = (spawn(&a, "alpha"), spawn(&b, "beta"));
    for p in [pa, pb] {
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    s.check_clean();
    s.restores_exactly(&a, Some("alpha"));
    s.restores_exactly(&b, Some("beta"));
    assert_eq!(s.locks(), 0, "a lock was left behind");
}

/// The gateway is restarted while a backup runs (once packs are being
/// stored): the backup survives through its retries, or fails cleanly and
/// the next run resumes it. Either way the snapshot is whole and no lock is
/// left.
#[test]
fn the_gateway_restarted_mid_backup() {
    let Some(s) = S3Env::new() else { return };
    if !s.gw.controllable() {
        eprintln!("skipped: the gateway was started outside the tests");
        return;
    }
    let src = make_files(&s.env.path("src"), 40, 2_000_000, 7);
    let child = s
        .std_cmd()
        .args(["backup"])
        .arg(&src)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let storage = crate::common::storage(Path::new(&s.location));
    let start = Instant::now();
    while storage
        .list(baton_storage::ObjectKind::Pack)
        .map_or(0, |v| v.len())
        < 2
    {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no packs stored"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s.gw.restart();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        // Failed cleanly: a message, no panic; the next run resumes.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        let r = s.run(&["backup", "--json", &src.to_string_lossy()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    s.check_clean();
    s.restores_exactly(&src, None);
    assert_eq!(s.locks(), 0, "a lock was left behind");
}

/// What the proxy does with the next connections.
#[derive(Default)]
struct Faults {
    /// Answer this many connections' first request with 503 SlowDown
    /// (every other connection, until they are used up).
    slow_down: AtomicU32,
    /// Accept connections and never answer.
    silent: AtomicBool,
    /// Answer 200 where the gateway answers 412 (a server without
    /// conditional writes).
    unconditional: AtomicBool,
    /// Connections answered 503.
    answered_503: AtomicU32,
    /// Requests taken.
    connections: AtomicU32,
}

/// Reads one HTTP/1.1 request (head, and a body of its Content-Length).
fn read_request(c: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut b).ok()? != 1 {
            return None;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8(head).ok()?;
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    c.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// A proxy on loopback in front of the gateway; returns its endpoint. It
/// takes one request per connection (asking the gateway to close after its
/// answer), so the faults apply to requests, not to kept-alive connections.
fn proxy(target: &str, faults: Arc<Faults>) -> String {
    let target = target.trim_start_matches("http://").to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { continue };
            let faults = faults.clone();
            let target = target.clone();
            std::thread::spawn(move || {
                if faults.silent.load(Ordering::SeqCst) {
                    // Hold the connection open, say nothing.
                    std::thread::sleep(Duration::from_secs(600));
                    return;
                }
                let Some((head, body)) = read_request(&mut client) else {
                    return;
                };
                // Every other request while the storm lasts.
                let nth = faults.connections.fetch_add(1, Ordering::SeqCst);
                let storm = nth.is_multiple_of(2)
                    && faults
                        .slow_down
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                if storm {
                    let body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                    let _ = write!(
                        client,
                        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    faults.answered_503.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(Shutdown::Both);
                    return;
                }
                let Ok(mut upstream) = TcpStream::connect(&target) else {
                    return;
                };
                let mut lines: Vec<&str> = head
                    .trim_end_matches("\r\n")
                    .split("\r\n")
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .collect();
                lines.push("Connection: close");
                let head = format!("{}\r\n\r\n", lines.join("\r\n"));
                if upstream.write_all(head.as_bytes()).is_err()
                    || upstream.write_all(&body).is_err()
                {
                    return;
                }
                let mut answer = Vec::new();
                let _ = upstream.read_to_end(&mut answer);
                if faults.unconditional.load(Ordering::SeqCst)
                    && answer.starts_with(b"HTTP/1.1 412")
                {
                    // As a server without conditional writes would: stored.
                    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_vec();
                }
                let _ = client.write_all(&answer);
                let _ = client.shutdown(Shutdown::Both);
            });
        }
    });
    format!("http://{addr}")
}

/// A storm of 503 SlowDown answers is ridden out by retries with back-off;
/// a gateway that accepts and never answers makes the command fail after
/// its timeout and retries, with a message and no panic, and leaves
/// nothing locked; the next run completes.
#[test]
fn a_storm_of_503s_and_a_gateway_that_never_answers() {
    let Some(s) = S3Env::new() else { return };
    let faults = Arc::new(Faults::default());
    let via = proxy(&s.gw.endpoint, faults.clone());
    let location = format!("s3:{via}/{}/repo", s.bucket);
    let src = make_files(&s.env.path("src"), 12, 1_500_000, 3);

    // Every other request is answered 503 until 30 have been.
    faults.slow_down.store(30, Ordering::SeqCst);
    let r = run(s.cmd_at(&location).args(["backup", "--json"]).arg(&src));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        faults.answered_503.load(Ordering::SeqCst) >= 15,
        "the storm did not happen: {} answers 503",
        faults.answered_503.load(Ordering::SeqCst)
    );
    s.check_clean();
    s.restores_exactly(&src, None);

    faults.silent.store(true, Ordering::SeqCst);
    write_file(&src.join("new"), 100_000, 99).unwrap();
    let started = Instant::now();
    let r = run(s
        .cmd_at(&location)
        .env("BATON_S3_TIMEOUT", "1")
        .env("BATON_S3_ATTEMPTS", "2")
        .args(["backup"])
        .arg(&src));
    assert_ne!(r.code, 0);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(
        r.stderr.contains("timed out") || r.stderr.contains("gave up"),
        "{}",
        r.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the timeout did not bound the wait"
    );
    faults.silent.store(false, Ordering::SeqCst);
    assert_eq!(s.locks(), 0, "a lock was left behind");
    let r = run(s.cmd_at(&location).args(["backup"]).arg(&src));
    assert_eq!(r.code, 0, "{}", r.stderr);
    s.check_clean();
    s.restores_exactly(&src, None);
}

/// A bucket whose quota is full: the backup stops with a message naming
/// the cause and leaves no lock; once there is room again, the next backup
/// completes (resuming what was stored) and everything restores.
#[test]
fn a_full_bucket_fails_cleanly_and_the_backup_resumes() {
    let Some(s) = S3Env::new() else { return };
    if !s.gw.controllable() {
        eprintln!("skipped: the gateway was started outside the tests");
        return;
    }
    let src = make_files(&s.env.path("src"), 16, 1_000_000, 11);
    s.gw.quota(&s.bucket, "4000000");
    let r = s.run(&["backup", &src.to_string_lossy()]);
    assert_ne!(r.code, 0, "the backup fit a full bucket");
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(
        r.stderr.contains("quota") || r.stderr.contains("space"),
        "{}",
        r.stderr
    );
    assert_eq!(s.locks(), 0, "a lock was left behind");
    s.gw.quota(&s.bucket, "off");
    let r = s.run(&["backup", "--json", &src.to_string_lossy()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    assert!(
        j["resumed_job"].is_string() || j["summary"]["resumed_job"].is_string(),
        "the backup started over: {j}"
    );
    s.check_clean();
    s.restores_exactly(&src, None);
}

/// The S3 requests one run of `baton` made (BATON_S3_STATS).
fn requests(s: &S3Env, args: &[&str]) -> u64 {
    let r = run(s.cmd_at(&s.location).env("BATON_S3_STATS", "1").args(args));
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.stderr
        .lines()
        .filter_map(|l| l.strip_prefix("s3: "))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// A no-change backup of a repository on S3 costs a few requests, not a
/// download of every tree: index objects, snapshots and tree packs come
/// from the local cache. The cache may be deleted, or damaged, at any time:
/// the next run reads the repository instead and is just as correct.
#[test]
fn a_no_change_backup_costs_a_few_requests() {
    let Some(s) = S3Env::new() else { return };
    let src = s.env.path("src");
    for i in 0..400 {
        write_file(
            &src.join(format!("d{}/e{}/f{i}", i % 40, i % 3)),
            2000 + i as u64,
            i as u64,
        )
        .unwrap();
    }
    let p = src.to_string_lossy().to_string();
    let first = requests(&s, &["backup", &p]);
    let nochange = requests(&s, &["backup", &p]);
    eprintln!("S3 requests: first backup {first}, no-change backup {nochange}");
    assert!(
        nochange <= 25,
        "a no-change backup made {nochange} requests (the first backup {first})"
    );
    // Without the cache it reads what it needs from the bucket, and works.
    let cache = s.env.dir.path().join(".cache/baton");
    assert!(cache.is_dir(), "no cache was kept");
    std::fs::remove_dir_all(&cache).unwrap();
    let uncached = requests(&s, &["backup", &p]);
    assert!(uncached > nochange, "{uncached} vs {nochange}");
    // A damaged entry is refused and replaced, never believed.
    let mut damaged = 0;
    for e in walk_files(&cache) {
        std::fs::write(&e, b"planted").unwrap();
        damaged += 1;
    }
    assert!(damaged > 0);
    requests(&s, &["backup", &p]);
    s.check_clean();
    s.restores_exactly(&src, None);
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    crate::common::walk(dir)
        .into_iter()
        .filter(|p| p.is_file())
        .collect()
}

/// A server that ignores conditional writes (the proxy turns the gateway's
/// 412 into 200): `init` proves the condition on a probe object first,
/// refuses, and says why.
#[test]
fn a_server_without_conditional_writes_is_refused_at_init() {
    let Some(gw) = gateway() else { return };
    let faults = Arc::new(Faults::default());
    faults.unconditional.store(true, Ordering::SeqCst);
    let via = proxy(&gw.endpoint, faults);
    let env = Env::empty();
    let location = format!("s3:{via}/{}/repo", unique_bucket());
    let mut c = env.std_cmd();
    c.env("BATON_REPOSITORY", &location).envs(gw.env());
    let r = run(assert_cmd::Command::from_std(c).args(["init", "--kdf-memory", "8192"]));
    assert_ne!(
        r.code, 0,
        "init accepted a server without conditional writes"
    );
    assert!(
        r.stderr.contains("ignores conditional writes"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// Ctrl-C while a command waits to retry an unreachable gateway: it stops
/// at once (exit 130), not after its retries, and leaves no lock.
#[test]
fn ctrl_c_ends_the_retry_waits() {
    let Some(s) = S3Env::new() else { return };
    let faults = Arc::new(Faults::default());
    let via = proxy(&s.gw.endpoint, faults.clone());
    let location = format!("s3:{via}/{}/repo", s.bucket);
    let src = make_files(&s.env.path("src"), 2, 10_000, 5);
    faults.silent.store(true, Ordering::SeqCst);
    let mut c = s.std_cmd();
    c.env("BATON_REPOSITORY", &location)
        .env("BATON_S3_TIMEOUT", "0.5")
        .env("BATON_S3_ATTEMPTS", "30")
        .args(["backup"])
        .arg(&src)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    // Several timeouts and back-off waits in, well before 30 attempts end.
    std::thread::sleep(Duration::from_secs(4));
    let sent = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "Ctrl-C took {:?}",
        sent.elapsed()
    );
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    faults.silent.store(false, Ordering::SeqCst);
    assert_eq!(s.locks(), 0, "a lock was left behind");
}

/// A TLS endpoint with a private CA: a small TLS-terminating proxy (Python's
/// `ssl`, with a certificate made by `openssl`) in front of the gateway.
/// With `BATON_S3_CA_BUNDLE` naming the CA, everything works over https;
/// without it, the certificate is refused with a clear error at once (no
/// retries: it will not pass by waiting).
#[test]
fn a_private_ca_is_trusted_through_the_ca_bundle() {
    let Some(s) = S3Env::new() else { return };
    let have = |c: &str| {
        std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("openssl") || !have("python3") {
        eprintln!("skipped: needs openssl and python3");
        return;
    }
    let dir = s.env.path("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=baton-test-ca",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let upstream = s.gw.endpoint.trim_start_matches("http://").to_string();
    let (host, port) = upstream.split_once(':').unwrap();
    let script = format!(
        r#"
import socket, ssl, threading, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("{cert}", "{key}")
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(64)
print(srv.getsockname()[1], flush=True)
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d: break
            b.sendall(d)
    except OSError: pass
    for s in (a, b):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
def serve(c):
    try: t = ctx.wrap_socket(c, server_side=True)
    except OSError: return
    u = socket.create_connection(("{host}", {port}))
    threading.Thread(target=pipe, args=(t, u), daemon=True).start()
    pipe(u, t)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#,
        cert = dir.join("cert.pem").display(),
        key = dir.join("key.pem").display(),
    );
    let mut proxy = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(proxy.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let location = format!("s3:https://127.0.0.1:{}/{}/tls", line.trim(), s.bucket);
    let src = make_files(&s.env.path("src"), 3, 200_000, 9);
    let ca = dir.join("cert.pem");
    let with_ca = |args: &[&str]| {
        run(s
            .cmd_at(&location)
            .env("BATON_S3_CA_BUNDLE", &ca)
            .args(args))
    };
    // Without the CA: refused, at once, saying why.
    let started = Instant::now();
    let r =
        run(s
            .cmd_at(&location)
            .env_remove("AWS_CA_BUNDLE")
            .args(["init", "--kdf-memory", "8192"]));
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.to_lowercase().contains("certificate") || r.stderr.contains("UnknownIssuer"),
        "{}",
        r.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "retried a certificate error"
    );
    // With it: the whole round trip over TLS.
    assert_eq!(with_ca(&["init", "--kdf-memory", "8192"]).code, 0);
    let r = with_ca(&["backup", &src.to_string_lossy()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let t = s.env.path("tls-restore");
    let r = with_ca(&[
        "restore",
        "latest",
        "--target",
        &t.to_string_lossy(),
        "--verify",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let opts = CompareOptions {
        ownership: false,
        ..CompareOptions::default()
    };
    compare_trees(&src, &t.join(src.strip_prefix("/").unwrap()), &opts)
        .unwrap_or_else(|d| panic!("{}", d.join("\n")));
    let _ = proxy.kill();
    let _ = proxy.wait();
    crate::common::remove_s3_repository(Path::new(&location.replace(
        &format!("https://127.0.0.1:{}", line.trim()),
        &s.gw.endpoint,
    )));
}
