//! Real NBD clients against the server: `nbdinfo`, `nbdcopy`, `nbdsh`
//! (libnbd), `qemu-img` and `qemu-io` (QEMU's own client), over a Unix
//! socket and over TCP, each run as a subprocess against an in-memory volume
//! whose bytes the test then checks.
//!
//! A missing tool skips its test with a line on stderr, or fails it when
//! `BATON_TEST_REQUIRE_NBD=1`.

use baton_nbd::{Event, Extent, Listen, Server, ServerConfig, Volume, VolumeError};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const GRAIN: usize = 4096;
const DESCRIPTION: &str = "baton test volume";

/// A RAM disk. Its hole map is its zero blocks: every 4 KiB block of zeroes
/// is reported as a hole that reads as zeroes, so what clients see of the
/// allocation follows from the bytes alone.
struct TestVolume {
    data: Mutex<Vec<u8>>,
    read_only: bool,
    flushes: AtomicUsize,
    fua_writes: AtomicUsize,
    trims: AtomicUsize,
    zeroes: AtomicUsize,
}

impl TestVolume {
    fn new(data: Vec<u8>) -> Arc<Self> {
        Arc::new(TestVolume {
            data: Mutex::new(data),
            read_only: false,
            flushes: AtomicUsize::new(0),
            fua_writes: AtomicUsize::new(0),
            trims: AtomicUsize::new(0),
            zeroes: AtomicUsize::new(0),
        })
    }

    fn bytes(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }
}

impl Volume for TestVolume {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        let d = self.data.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..][..buf.len()]);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), VolumeError> {
        if fua {
            self.fua_writes.fetch_add(1, Ordering::SeqCst);
        }
        self.data.lock().unwrap()[offset as usize..][..data.len()].copy_from_slice(data);
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _: bool, _: bool) -> Result<(), VolumeError> {
        self.zeroes.fetch_add(1, Ordering::SeqCst);
        self.data.lock().unwrap()[offset as usize..][..len as usize].fill(0);
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64, _: bool) -> Result<(), VolumeError> {
        // Trimmed bytes are undefined by the protocol; here they become zeroes.
        self.trims.fetch_add(1, Ordering::SeqCst);
        self.data.lock().unwrap()[offset as usize..][..len as usize].fill(0);
        Ok(())
    }
    fn flush(&self) -> Result<(), VolumeError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, VolumeError> {
        let d = self.data.lock().unwrap();
        Ok(zero_map(&d, offset as usize, (offset + len) as usize))
    }
}

/// Extents of `d[start..end]` at 4 KiB grain: runs of zero blocks are holes.
fn zero_map(d: &[u8], start: usize, end: usize) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    let mut at = start;
    while at < end.min(d.len()) {
        let next = ((at / GRAIN + 1) * GRAIN).min(end).min(d.len());
        let zero = d[at..next].iter().all(|&b| b == 0);
        match out.last_mut() {
            Some(e) if e.hole == zero => e.length += (next - at) as u64,
            _ => out.push(Extent {
                length: (next - at) as u64,
                hole: zero,
                zero,
            }),
        }
        at = next;
    }
    out
}

/// xorshift64*: reproducible data and operations from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `size` bytes in 64 KiB blocks: every third block a hole, the others
/// random, plus a few stray bytes inside holes.
fn reference(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut d = vec![0u8; size];
    for (i, block) in d.chunks_mut(64 << 10).enumerate() {
        if i % 3 != 0 {
            block.iter_mut().for_each(|b| *b = rng.next() as u8);
        }
    }
    for i in (0..size / (192 << 10)).step_by(5) {
        d[i * (192 << 10) + 12345] = 0x42;
    }
    d
}

/// A server on a Unix socket and on TCP 127.0.0.1:0, in a runtime of its own.
struct Served {
    vol: Arc<TestVolume>,
    server: Arc<Server>,
    dir: tempfile::TempDir,
    unix_uri: String,
    tcp_uri: String,
    events: Arc<Mutex<Vec<Event>>>,
    /// Most connections open at once.
    peak: Arc<AtomicUsize>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    fn start(vol: Arc<TestVolume>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nbd.sock");
        let events = Arc::new(Mutex::new(Vec::new()));
        let peak = Arc::new(AtomicUsize::new(0));
        let open = AtomicUsize::new(0);
        let (ev, pk) = (events.clone(), peak.clone());
        let cfg = ServerConfig {
            export_name: "baton".into(),
            description: DESCRIPTION.into(),
            ..ServerConfig::default()
        };
        let server = Arc::new(Server::new(vol.clone(), cfg).on_event(move |e| {
            match e {
                Event::Connected { .. } => {
                    let n = open.fetch_add(1, Ordering::SeqCst) + 1;
                    pk.fetch_max(n, Ordering::SeqCst);
                }
                Event::Disconnected { .. } => {
                    open.fetch_sub(1, Ordering::SeqCst);
                }
                _ => {}
            }
            ev.lock().unwrap().push(e);
        }));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let srv = server.clone();
        let unix = Listen::Unix(sock.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let u = srv.bind(&unix).await.unwrap();
                let t = srv.bind(&"127.0.0.1:0".parse().unwrap()).await.unwrap();
                addr_tx.send(t.local_addr_string()).unwrap();
                let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                let (a, b) = tokio::join!(
                    srv.serve(u, until(stopped.clone())),
                    srv.serve(t, until(stopped))
                );
                a.unwrap();
                b.unwrap();
            });
        });
        let tcp = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Served {
            vol,
            server,
            unix_uri: format!("nbd+unix:///?socket={}", sock.display()),
            tcp_uri: format!("nbd://{tcp}"),
            dir,
            events,
            peak,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn uris(&self) -> [&str; 2] {
        [&self.unix_uri, &self.tcp_uri]
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn socket(&self) -> PathBuf {
        self.path("nbd.sock")
    }

    fn tcp_addr(&self) -> &str {
        self.tcp_uri.trim_start_matches("nbd://")
    }

    fn protocol_errors(&self) -> Vec<String> {
        let ev = self.events.lock().unwrap();
        ev.iter()
            .filter_map(|e| match e {
                Event::ProtocolError { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    /// Waits until every connection is closed (clients exit before the
    /// server has noticed).
    fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.server.connections() > 0 {
            assert!(Instant::now() < deadline, "connections stay open");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
            && !std::thread::panicking()
        {
            panic!("the server thread panicked");
        }
    }
}

/// True if `tool` runs; otherwise prints a skip line, or fails when
/// `BATON_TEST_REQUIRE_NBD=1`.
fn have(tools: &[&str]) -> bool {
    for tool in tools {
        // nbdsh needs the Python bindings, not just the script.
        let probe = if *tool == "nbdsh" {
            ["-c", "pass"]
        } else {
            ["--version", ""]
        };
        let probe = probe.into_iter().filter(|a| !a.is_empty());
        let ok = cmd(tool)
            .args(probe)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            if std::env::var("BATON_TEST_REQUIRE_NBD").as_deref() == Ok("1") {
                panic!("{tool} is missing and BATON_TEST_REQUIRE_NBD=1");
            }
            eprintln!(
                "SKIP: {tool} is not installed (apt-get install libnbd-bin python3-libnbd qemu-utils)"
            );
            return false;
        }
    }
    true
}

/// A command with /usr/bin first on PATH (a pyenv python would otherwise
/// shadow the one nbdsh's bindings are installed for).
fn cmd(tool: &str) -> Command {
    let mut c = Command::new(tool);
    let path = std::env::var("PATH").unwrap_or_default();
    c.env("PATH", format!("/usr/bin:{path}"));
    c
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs with a deadline of two minutes; kills and fails after it.
fn run(c: &mut Command) -> Output {
    let what = format!("{c:?}");
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        ok: status.success(),
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

/// Runs and requires success; returns stdout.
fn ok(c: &mut Command) -> String {
    let what = format!("{c:?}");
    let o = run(c);
    assert!(o.ok, "{what} failed:\n{}\n{}", o.stdout, o.stderr);
    o.stdout
}

/// The lines of `nbdinfo --map`: (offset, length, type).
fn parse_map(out: &str) -> Vec<(u64, u64, u32)> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn nbdinfo_shows_size_description_and_holes() {
    if !have(&["nbdinfo"]) {
        return;
    }
    let data = reference(16 * MIB, 1);
    let s = Served::start(TestVolume::new(data.clone()));
    let mut want = Vec::new();
    let mut at = 0;
    for e in zero_map(&data, 0, data.len()) {
        want.push((at, e.length, if e.hole { 3 } else { 0 }));
        at += e.length;
    }
    assert!(
        want.iter().filter(|w| w.2 == 3).count() > 10,
        "the image has holes"
    );
    for uri in s.uris() {
        let info = ok(cmd("nbdinfo").arg(uri));
        for line in [
            "export-size: 16777216",
            &format!("description: {DESCRIPTION}"),
            "base:allocation",
            "is_read_only: false",
            "can_multi_conn: true",
            "can_df: true",
            "can_fast_zero: true",
            "can_cache: true",
            "using structured packets",
        ] {
            assert!(info.contains(line), "no {line:?} in\n{info}");
        }
        assert_eq!(ok(cmd("nbdinfo").args(["--size", uri])).trim(), "16777216");
        assert_eq!(parse_map(&ok(cmd("nbdinfo").args(["--map", uri]))), want);
        let list = ok(cmd("nbdinfo").args(["--list", uri]));
        assert!(list.contains("export=\"baton\""), "{list}");
    }
    s.wait_idle();
    assert!(s.protocol_errors().is_empty(), "{:?}", s.protocol_errors());
}

#[test]
fn read_only_volumes_are_advertised_and_readable() {
    if !have(&["nbdinfo", "qemu-io"]) {
        return;
    }
    let vol = Arc::new(TestVolume {
        read_only: true,
        ..Arc::into_inner(TestVolume::new(vec![0x5c; MIB])).unwrap()
    });
    let s = Served::start(vol);
    let info = ok(cmd("nbdinfo").arg(&s.unix_uri));
    assert!(info.contains("is_read_only: true"), "{info}");
    ok(cmd("qemu-io").args(["-r", "-f", "raw", "-c", "read -P 0x5c 0 1M", &s.tcp_uri]));
    let w = run(cmd("qemu-io").args(["-f", "raw", "-c", "write -P 1 0 4k", &s.tcp_uri]));
    assert!(
        !w.ok || !w.stdout.contains("wrote"),
        "{}{}",
        w.stdout,
        w.stderr
    );
    assert!(s.vol.bytes().iter().all(|&b| b == 0x5c));
}

#[test]
fn nbdcopy_copies_every_byte_both_ways() {
    if !have(&["nbdcopy"]) {
        return;
    }
    let data = reference(24 * MIB, 2);
    let s = Served::start(TestVolume::new(data.clone()));
    for (i, uri) in s.uris().into_iter().enumerate() {
        let out = s.path(&format!("out{i}.raw"));
        ok(cmd("nbdcopy").arg(uri).arg(&out));
        assert!(std::fs::read(&out).unwrap() == data, "{uri}: copy differs");
    }
    // Several connections with many requests each (nbdcopy multi-conn).
    let out = s.path("multi.raw");
    ok(cmd("nbdcopy")
        .args(["--connections=4", "--requests=32"])
        .arg(&s.unix_uri)
        .arg(&out));
    assert!(
        std::fs::read(&out).unwrap() == data,
        "multi-conn copy differs"
    );
    s.wait_idle();
    assert!(
        s.peak.load(Ordering::SeqCst) >= 2,
        "connections were not concurrent"
    );

    // Into the export: data as writes, holes as zeroing.
    let src = reference(24 * MIB, 3);
    let file = s.path("src.raw");
    std::fs::write(&file, &src).unwrap();
    ok(cmd("nbdcopy").arg("--flush").arg(&file).arg(&s.tcp_uri));
    assert!(s.vol.bytes() == src, "export differs from the copied file");
    assert!(
        s.vol.flushes.load(Ordering::SeqCst) >= 1,
        "nbdcopy --flush flushes"
    );
    s.wait_idle();
    assert!(s.protocol_errors().is_empty(), "{:?}", s.protocol_errors());
}

#[test]
fn qemu_img_compares_and_converts() {
    if !have(&["qemu-img"]) {
        return;
    }
    let data = reference(8 * MIB, 4);
    let s = Served::start(TestVolume::new(data.clone()));
    let img = s.path("ref.img");
    std::fs::write(&img, &data).unwrap();
    for uri in s.uris() {
        let out = ok(cmd("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&img)
            .arg(uri));
        assert!(out.contains("Images are identical"), "{out}");
    }
    // The comparison can fail: one byte changed in the file.
    let mut bad = data.clone();
    bad[5 * MIB + 77] ^= 1;
    std::fs::write(&img, &bad).unwrap();
    let o = run(cmd("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&img)
        .arg(&s.unix_uri));
    assert!(!o.ok, "a difference went unnoticed");
    assert!(
        o.stdout.contains("Content mismatch"),
        "{}{}",
        o.stdout,
        o.stderr
    );

    for (i, uri) in s.uris().into_iter().enumerate() {
        let out = s.path(&format!("conv{i}.raw"));
        ok(cmd("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", uri])
            .arg(&out));
        assert!(
            std::fs::read(&out).unwrap() == data,
            "{uri}: converted image differs"
        );
    }
}

#[test]
fn qemu_io_writes_a_pattern() {
    if !have(&["qemu-io"]) {
        return;
    }
    let data = reference(4 * MIB, 5);
    let s = Served::start(TestVolume::new(data.clone()));
    let out = ok(cmd("qemu-io").args(["-f", "raw", "-c", "write -P 0xab 0 1M", &s.unix_uri]));
    assert!(
        out.contains("wrote 1048576/1048576 bytes at offset 0"),
        "{out}"
    );
    let got = s.vol.bytes();
    assert!(got[..MIB].iter().all(|&b| b == 0xab));
    assert!(got[MIB..] == data[MIB..], "bytes past the write changed");
    let out = ok(cmd("qemu-io").args(["-f", "raw", "-c", "write -P 0xcd 1536 4096", &s.tcp_uri]));
    assert!(out.contains("wrote 4096/4096"), "{out}");
    let got = s.vol.bytes();
    assert!(got[1536..5632].iter().all(|&b| b == 0xcd));
    assert!(
        got[..1536]
            .iter()
            .chain(&got[5632..MIB])
            .all(|&b| b == 0xab)
    );
}

/// One qemu-io run of seeded random writes, zeroing, discards, flushes and
/// pattern-checked reads at 512-byte cells, against a model of the bytes.
#[test]
fn qemu_io_random_operations_match_a_model() {
    if !have(&["qemu-io"]) {
        return;
    }
    const CELL: usize = 512;
    const CELLS: usize = 8192; // 4 MiB
    let seed = 0x5eed_0001;
    let mut rng = Rng(seed);
    // The model: the byte every cell is filled with.
    let mut model = vec![0u8; CELLS];
    let s = Served::start(TestVolume::new(vec![0; CELLS * CELL]));
    let (mut args, mut reads, mut writes) = (Vec::new(), 0, 0);
    for _ in 0..300 {
        let start = rng.below(CELLS);
        let len = (1 + rng.below(64)).min(CELLS - start);
        let (off, bytes) = (start * CELL, len * CELL);
        match rng.below(10) {
            0..=3 => {
                let v = 1 + rng.below(255) as u8;
                model[start..start + len].fill(v);
                args.push(format!("write -P {v} {off} {bytes}"));
                writes += 1;
            }
            4 => {
                model[start..start + len].fill(0);
                args.push(format!("write -z {off} {bytes}"));
                writes += 1;
            }
            5 => {
                model[start..start + len].fill(0);
                args.push(format!("discard {off} {bytes}"));
            }
            6 => args.push("flush".into()),
            _ => {
                // The longest run of equal cells from `start`.
                let v = model[start];
                let n = model[start..]
                    .iter()
                    .take(len)
                    .take_while(|&&c| c == v)
                    .count();
                args.push(format!("read -P {v} {off} {}", n * CELL));
                reads += 1;
            }
        }
    }
    let mut c = cmd("qemu-io");
    c.args(["-f", "raw"]);
    for a in &args {
        c.args(["-c", a]);
    }
    let out = ok(c.arg(&s.unix_uri));
    assert!(
        !out.contains("verification failed"),
        "seed {seed:#x}:\n{out}"
    );
    assert_eq!(
        out.matches("\nread ").count() + out.starts_with("read ") as usize,
        reads,
        "{out}"
    );
    assert_eq!(out.matches("wrote ").count(), writes, "{out}");
    let got = s.vol.bytes();
    for (i, &v) in model.iter().enumerate() {
        let cell = &got[i * CELL..(i + 1) * CELL];
        assert!(
            cell.iter().all(|&b| b == v),
            "seed {seed:#x}: cell {i} is not {v}"
        );
    }
    assert!(
        s.vol.zeroes.load(Ordering::SeqCst) > 0,
        "write -z became NBD_CMD_WRITE_ZEROES"
    );
    assert!(
        s.vol.trims.load(Ordering::SeqCst) > 0,
        "discard became NBD_CMD_TRIM"
    );
    assert!(s.vol.flushes.load(Ordering::SeqCst) > 0);
}

#[test]
fn nbdsh_drives_every_command() {
    if !have(&["nbdsh"]) {
        return;
    }
    let s = Served::start(TestVolume::new(reference(4 * MIB, 6)));
    let script = format!(
        r#"
import nbd
h.add_meta_context("base:allocation")
h.connect_uri("{uri}")
assert h.get_size() == 4 * 1048576
assert h.can_meta_context("base:allocation")
for f in ("can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_cache", "can_df", "can_multi_conn"):
    assert getattr(h, f)(), f
assert not h.is_read_only()
h.pwrite(b"\x11" * 65536, 1048576, nbd.CMD_FLAG_FUA)
h.flush()
h.zero(131072, 2 * 1048576, nbd.CMD_FLAG_NO_HOLE)
h.zero(65536, 2 * 1048576 + 131072, nbd.CMD_FLAG_FAST_ZERO)
h.trim(65536, 3 * 1048576)
h.cache(65536, 0)
chunks = []
def chunk(buf, offset, status, err):
    chunks.append((bytes(buf), offset, status))
    return 0
h.pread_structured(65536, 1048576, chunk, nbd.CMD_FLAG_DF)
assert len(chunks) == 1, len(chunks)
assert chunks[0] == (b"\x11" * 65536, 1048576, nbd.READ_DATA), chunks[0][1:]
assert h.pread(512, 1048576 + 65536 - 256)[:256] == b"\x11" * 256
entries = []
def cb(meta, offset, e, err):
    entries.append((meta, offset, list(e)))
    return 0
h.block_status(1048576 - 65536, 1048576 + 65536, cb)
one = []
h.block_status(2 * 1048576, 1048576, lambda m, o, e, err: one.append(list(e)) or 0, nbd.CMD_FLAG_REQ_ONE)
print("BS", entries)
print("ONE", one)
h.shutdown()
"#,
        uri = s.tcp_uri
    );
    let out = ok(cmd("nbdsh").args(["-c", &script]));
    let got = s.vol.bytes();
    assert!(got[MIB..MIB + 65536].iter().all(|&b| b == 0x11));
    assert!(got[2 * MIB..2 * MIB + 196608].iter().all(|&b| b == 0));
    assert!(got[3 * MIB..3 * MIB + 65536].iter().all(|&b| b == 0));
    assert_eq!(s.vol.fua_writes.load(Ordering::SeqCst), 1);
    assert!(s.vol.flushes.load(Ordering::SeqCst) >= 1);
    assert_eq!(s.vol.trims.load(Ordering::SeqCst), 1);
    assert_eq!(s.vol.zeroes.load(Ordering::SeqCst), 2);
    // From 1 MiB + 64 KiB: the reference's data up to 2 MiB, then the
    // zeroed (hole) range, merged by the server with the following extents
    // only if equal.
    let want: Vec<String> = {
        let mut v = Vec::new();
        for e in zero_map(&got, MIB + 65536, 2 * MIB) {
            v.push(e.length.to_string());
            v.push(if e.hole { "3" } else { "0" }.to_string());
        }
        v
    };
    let bs = out.lines().find(|l| l.starts_with("BS ")).unwrap();
    assert!(
        bs.contains(&format!(
            "'base:allocation', {}, [{}]",
            MIB + 65536,
            want.join(", ")
        )),
        "{bs} vs {want:?}"
    );
    let first = zero_map(&got, MIB, 3 * MIB)[0];
    let one = out.lines().find(|l| l.starts_with("ONE ")).unwrap();
    let flags = if first.hole { 3 } else { 0 };
    assert_eq!(one, format!("ONE [[{}, {flags}]]", first.length), "{out}");
}

#[test]
fn two_connections_write_concurrently() {
    if !have(&["qemu-io"]) {
        return;
    }
    let s = Served::start(TestVolume::new(vec![0; 8 * MIB]));
    let half = 4 * MIB;
    let spawn = |uri: &str, v: u8, off: usize| {
        let mut c = cmd("qemu-io");
        c.args(["-f", "raw"]);
        for i in 0..8 {
            let o = off + i * (half / 8);
            c.args(["-c", &format!("aio_write -P {v} {o} {}", half / 8)]);
        }
        c.args([
            "-c",
            "aio_flush",
            "-c",
            &format!("read -P {v} {off} {half}"),
            uri,
        ]);
        std::thread::spawn(move || ok(&mut c))
    };
    let a = spawn(&s.unix_uri, 0x61, 0);
    let b = spawn(&s.tcp_uri, 0x62, half);
    for (t, name) in [(a, "unix"), (b, "tcp")] {
        let out = t.join().unwrap();
        assert!(!out.contains("verification failed"), "{name}: {out}");
        assert_eq!(out.matches("wrote ").count(), 8, "{name}: {out}");
    }
    let got = s.vol.bytes();
    assert!(got[..half].iter().all(|&b| b == 0x61));
    assert!(got[half..].iter().all(|&b| b == 0x62));
}

/// Raw clients that break the protocol in different ways.
fn garbage_clients(s: &Served, round: usize) {
    fn stream(s: &Served, tcp: bool) -> Box<dyn ReadWrite> {
        if tcp {
            let t = std::net::TcpStream::connect(s.tcp_addr()).unwrap();
            t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            Box::new(t)
        } else {
            let u = std::os::unix::net::UnixStream::connect(s.socket()).unwrap();
            u.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            Box::new(u)
        }
    }
    /// Reads until the server closes; panics on a timeout.
    fn closed(c: &mut dyn ReadWrite) {
        let mut sink = Vec::new();
        match c.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
    let tcp = round % 2 == 1;
    let mut rng = Rng(round as u64 + 99);
    let junk: Vec<u8> = (0..300).map(|_| rng.next() as u8).collect();

    // Junk instead of client flags.
    let mut c = stream(s, tcp);
    let mut greeting = [0u8; 18];
    c.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    let _ = c.write_all(&junk);
    closed(&mut *c);

    // A valid handshake, then a request with bad magic.
    let mut c = stream(s, tcp);
    c.read_exact(&mut greeting).unwrap();
    let mut hello = 3u32.to_be_bytes().to_vec();
    hello.extend_from_slice(b"IHAVEOPT");
    hello.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
    hello.extend_from_slice(&6u32.to_be_bytes());
    hello.extend_from_slice(&[0; 6]);
    c.write_all(&hello).unwrap();
    // Option replies up to the ACK.
    loop {
        let mut h = [0u8; 20];
        c.read_exact(&mut h).unwrap();
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut d = vec![0; len];
        c.read_exact(&mut d).unwrap();
        if u32::from_be_bytes(h[12..16].try_into().unwrap()) == 1 {
            break;
        }
    }
    let _ = c.write_all(&junk[..28]);
    closed(&mut *c);

    // A write request announcing a payload too large to skip.
    let mut c = stream(s, tcp);
    c.read_exact(&mut greeting).unwrap();
    hello[..4].copy_from_slice(&3u32.to_be_bytes());
    c.write_all(&hello).unwrap();
    let mut huge = vec![0x25, 0x60, 0x95, 0x13, 0, 0, 0, 1];
    huge.extend_from_slice(&[0; 16]);
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    let _ = c.write_all(&huge);
    closed(&mut *c);
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[test]
fn garbage_clients_do_not_disturb_others() {
    if !have(&["nbdcopy"]) {
        return;
    }
    let data = reference(32 * MIB, 7);
    let s = Served::start(TestVolume::new(data.clone()));
    std::thread::scope(|scope| {
        let copier = scope.spawn(|| {
            for i in 0..3 {
                let out = s.path(&format!("copy{i}.raw"));
                ok(cmd("nbdcopy")
                    .args(["--requests=8"])
                    .arg(&s.unix_uri)
                    .arg(&out));
                assert!(std::fs::read(&out).unwrap() == data, "copy {i} differs");
            }
        });
        let mut round = 0;
        while !copier.is_finished() {
            garbage_clients(&s, round);
            round += 1;
        }
        copier.join().unwrap();
        assert!(round > 0);
        s.wait_idle();
        let errors = s.protocol_errors();
        assert_eq!(errors.len(), 3 * round, "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("magic")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("payload")), "{errors:?}");
    });
    // Still serving.
    if have(&["nbdinfo"]) {
        assert_eq!(
            ok(cmd("nbdinfo").args(["--size", &s.tcp_uri])).trim(),
            "33554432"
        );
    }
    assert_eq!(s.vol.bytes(), data);
}
