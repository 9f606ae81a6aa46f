//! Whole sessions over an in-memory pipe and a Unix socket, with a client
//! written from the spec here (the real clients run in tests/clients.rs).

use crate::proto::*;
use crate::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

const SIZE: usize = 1 << 20;
/// Reads touching this range fail with EIO at its start.
const BAD: std::ops::Range<u64> = 0xF_0000..0xF_1000;

/// A RAM disk; 4 KiB blocks of zeroes are holes.
#[derive(Default)]
struct Ram {
    data: Mutex<Vec<u8>>,
    read_only: bool,
    flushes: AtomicUsize,
    /// Slows reads down (for the shutdown test).
    read_delay: Option<Duration>,
}

impl Ram {
    fn new() -> Arc<Self> {
        Arc::new(Ram {
            data: Mutex::new(vec![0; SIZE]),
            ..Ram::default()
        })
    }
}

impl Volume for Ram {
    fn size(&self) -> u64 {
        SIZE as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        if let Some(d) = self.read_delay {
            std::thread::sleep(d);
        }
        let end = offset + buf.len() as u64;
        if offset < BAD.end && end > BAD.start {
            return Err(VolumeError::io("bad sector").at(BAD.start.max(offset)));
        }
        let d = self.data.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..end as usize]);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), VolumeError> {
        self.data.lock().unwrap()[offset as usize..][..data.len()].copy_from_slice(data);
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _: bool, _: bool) -> Result<(), VolumeError> {
        self.data.lock().unwrap()[offset as usize..][..len as usize].fill(0);
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), VolumeError> {
        self.write_zeroes(offset, len, true, fua)
    }
    fn flush(&self) -> Result<(), VolumeError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, VolumeError> {
        let d = self.data.lock().unwrap();
        let end = (offset + len).min(SIZE as u64);
        let mut out = Vec::new();
        let mut at = offset;
        while at < end {
            let next = ((at / 4096 + 1) * 4096).min(end);
            let zero = d[at as usize..next as usize].iter().all(|&b| b == 0);
            out.push(Extent {
                length: next - at,
                hole: zero,
                zero,
            });
            at = next;
        }
        Ok(out)
    }
}

/// The client side of a session.
struct Client<S> {
    s: S,
}

/// One option reply: type and data.
type OptReply = (u32, Vec<u8>);

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Reads the greeting and sends the client flags.
    async fn greet(&mut self, flags: u32) {
        assert_eq!(self.s.read_u64().await.unwrap(), NBD_MAGIC);
        assert_eq!(self.s.read_u64().await.unwrap(), IHAVEOPT);
        let f = self.s.read_u16().await.unwrap();
        assert_eq!(f, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        self.s.write_u32(flags).await.unwrap();
    }

    async fn send_option(&mut self, option: u32, data: &[u8]) {
        self.s.write_u64(IHAVEOPT).await.unwrap();
        self.s.write_u32(option).await.unwrap();
        self.s.write_u32(data.len() as u32).await.unwrap();
        self.s.write_all(data).await.unwrap();
    }

    /// Sends an option and reads its replies up to the final one.
    async fn option(&mut self, option: u32, data: &[u8]) -> Vec<OptReply> {
        self.send_option(option, data).await;
        let mut out = Vec::new();
        loop {
            assert_eq!(self.s.read_u64().await.unwrap(), OPT_REPLY_MAGIC);
            assert_eq!(self.s.read_u32().await.unwrap(), option);
            let kind = self.s.read_u32().await.unwrap();
            let mut d = vec![0; self.s.read_u32().await.unwrap() as usize];
            self.s.read_exact(&mut d).await.unwrap();
            out.push((kind, d));
            if kind == REP_ACK || kind & (1 << 31) != 0 {
                return out;
            }
        }
    }

    async fn request(
        &mut self,
        command: Command,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
    ) {
        let r = Request {
            command,
            flags,
            cookie,
            offset,
            length,
        };
        self.s.write_all(&r.encode()).await.unwrap();
    }

    /// A simple reply: (errno, cookie), and `data` bytes if errno is 0.
    async fn simple(&mut self, data: usize) -> (u32, u64, Vec<u8>) {
        assert_eq!(self.s.read_u32().await.unwrap(), SIMPLE_REPLY_MAGIC);
        let errno = self.s.read_u32().await.unwrap();
        let cookie = self.s.read_u64().await.unwrap();
        let mut d = vec![0; if errno == 0 { data } else { 0 }];
        self.s.read_exact(&mut d).await.unwrap();
        (errno, cookie, d)
    }

    /// Any reply with structured replies negotiated: (flags, type, cookie,
    /// payload); a simple reply comes back as type `u16::MAX` with the
    /// errno as payload.
    async fn reply(&mut self) -> (u16, u16, u64, Vec<u8>) {
        let magic = self.s.read_u32().await.unwrap();
        if magic == SIMPLE_REPLY_MAGIC {
            let errno = self.s.read_u32().await.unwrap();
            let cookie = self.s.read_u64().await.unwrap();
            return (
                REPLY_FLAG_DONE,
                u16::MAX,
                cookie,
                errno.to_be_bytes().to_vec(),
            );
        }
        assert_eq!(magic, STRUCTURED_REPLY_MAGIC);
        let flags = self.s.read_u16().await.unwrap();
        let kind = self.s.read_u16().await.unwrap();
        let cookie = self.s.read_u64().await.unwrap();
        let mut d = vec![0; self.s.read_u32().await.unwrap() as usize];
        self.s.read_exact(&mut d).await.unwrap();
        (flags, kind, cookie, d)
    }

    /// True when the server closed the connection.
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b).await, Ok(0) | Err(_))
    }
}

fn meta(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut p = (name.len() as u32).to_be_bytes().to_vec();
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        p.extend_from_slice(&(q.len() as u32).to_be_bytes());
        p.extend_from_slice(q.as_bytes());
    }
    p
}

fn go(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut p = (name.len() as u32).to_be_bytes().to_vec();
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        p.extend_from_slice(&i.to_be_bytes());
    }
    p
}

fn cfg() -> ServerConfig {
    ServerConfig {
        description: "unit test disk".into(),
        ..ServerConfig::default()
    }
}

fn start(
    vol: Arc<Ram>,
) -> (
    Client<DuplexStream>,
    tokio::task::JoinHandle<Result<(), ProtocolError>>,
) {
    let (c, s) = tokio::io::duplex(1 << 20);
    let server = tokio::spawn(async move { serve_connection(s, vol, &cfg()).await });
    (Client { s: c }, server)
}

/// Negotiates structured replies and base:allocation, then GO.
async fn structured(c: &mut Client<impl AsyncRead + AsyncWrite + Unpin>) -> u16 {
    c.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
    assert_eq!(
        c.option(OPT_STRUCTURED_REPLY, &[]).await,
        vec![(REP_ACK, vec![])]
    );
    let r = c
        .option(OPT_SET_META_CONTEXT, &meta("baton", &[BASE_ALLOCATION]))
        .await;
    let mut ctx = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
    ctx.extend_from_slice(BASE_ALLOCATION.as_bytes());
    assert_eq!(r, vec![(REP_META_CONTEXT, ctx), (REP_ACK, vec![])]);
    let r = c
        .option(OPT_GO, &go("", &[INFO_BLOCK_SIZE, INFO_DESCRIPTION]))
        .await;
    assert_eq!(r.last(), Some(&(REP_ACK, vec![])));
    let export = r
        .iter()
        .find(|(k, d)| *k == REP_INFO && d[..2] == [0, 0])
        .unwrap();
    assert_eq!(be_u64(&export.1, 2), Some(SIZE as u64));
    let bs = r
        .iter()
        .find(|(k, d)| *k == REP_INFO && d[..2] == [0, 3])
        .unwrap();
    assert_eq!(&bs.1[2..], &[0, 0, 0, 1, 0, 0, 0x10, 0, 2, 0, 0, 0]);
    let desc = r
        .iter()
        .find(|(k, d)| *k == REP_INFO && d[..2] == [0, 2])
        .unwrap();
    assert_eq!(&desc.1[2..], b"unit test disk");
    be_u16(&export.1, 10).unwrap()
}

/// (length, flags) of a block status chunk.
fn descriptors(d: &[u8]) -> Vec<(u32, u32)> {
    assert_eq!(be_u32(d, 0), Some(BASE_ALLOCATION_ID));
    d[4..]
        .chunks(8)
        .map(|c| (be_u32(c, 0).unwrap(), be_u32(c, 4).unwrap()))
        .collect()
}

#[tokio::test]
async fn structured_session_reads_writes_reports_allocation_and_closes_on_garbage() {
    let vol = Ram::new();
    let (mut c, server) = start(vol.clone());
    let flags = structured(&mut c).await;
    for f in [
        FLAG_SEND_DF,
        FLAG_CAN_MULTI_CONN,
        FLAG_SEND_FLUSH,
        FLAG_SEND_FAST_ZERO,
    ] {
        assert_ne!(flags & f, 0, "flag {f:#x} in {flags:#x}");
    }
    assert_eq!(flags & FLAG_READ_ONLY, 0);

    // Write with FUA, then read it back as one data chunk.
    c.request(Command::Write, CMD_FLAG_FUA, 1, 4096, 8192).await;
    c.s.write_all(&[0x5a; 8192]).await.unwrap();
    assert_eq!(c.reply().await, (REPLY_FLAG_DONE, u16::MAX, 1, vec![0; 4]));
    c.request(Command::Read, CMD_FLAG_DF, 2, 2048, 4096).await;
    let (f, kind, cookie, d) = c.reply().await;
    assert_eq!(
        (f, kind, cookie),
        (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 2)
    );
    assert_eq!(be_u64(&d, 0), Some(2048));
    assert_eq!(&d[8..8 + 2048], &[0; 2048][..]);
    assert_eq!(&d[8 + 2048..], &[0x5a; 2048][..]);
    assert_eq!(vol.data.lock().unwrap()[4096..12288], [0x5a; 8192]);

    // Allocation: hole, data, hole; with REQ_ONE only the first.
    c.request(Command::BlockStatus, 0, 3, 0, 65536).await;
    let (_, kind, _, d) = c.reply().await;
    assert_eq!(kind, REPLY_TYPE_BLOCK_STATUS);
    assert_eq!(
        descriptors(&d),
        vec![(4096, 3), (8192, 0), (65536 - 12288, 3)]
    );
    c.request(Command::BlockStatus, CMD_FLAG_REQ_ONE, 4, 0, 65536)
        .await;
    assert_eq!(descriptors(&c.reply().await.3), vec![(4096, 3)]);

    // A volume error: that request fails with its offset, the next works.
    c.request(Command::Read, 0, 5, BAD.start - 512, 4096).await;
    let (f, kind, cookie, d) = c.reply().await;
    assert_eq!(
        (f, kind, cookie),
        (REPLY_FLAG_DONE, REPLY_TYPE_ERROR_OFFSET, 5)
    );
    assert_eq!(be_u32(&d, 0), Some(EIO));
    assert_eq!(&d[6..16], b"bad sector");
    assert_eq!(be_u64(&d, 16), Some(BAD.start));
    c.request(Command::Read, 0, 6, SIZE as u64 - 512, 1024)
        .await;
    let (_, kind, _, d) = c.reply().await;
    assert_eq!((kind, be_u32(&d, 0)), (REPLY_TYPE_ERROR, Some(EINVAL)));

    // Zero and flush.
    c.request(Command::WriteZeroes, CMD_FLAG_NO_HOLE, 7, 4096, 4096)
        .await;
    assert_eq!(c.reply().await.3, vec![0; 4]);
    c.request(Command::Flush, 0, 8, 0, 0).await;
    assert_eq!(c.reply().await.3, vec![0; 4]);
    assert_eq!(vol.flushes.load(Ordering::SeqCst), 1);
    assert_eq!(vol.data.lock().unwrap()[4096..8192], [0; 4096]);

    // Pipelined reads: all answered, each with its own data.
    for i in 0..32u64 {
        vol.data.lock().unwrap()[(i * 512) as usize] = i as u8 + 1;
    }
    for i in 0..32u64 {
        c.request(Command::Read, 0, 100 + i, i * 512, 512).await;
    }
    let mut seen = Vec::new();
    for _ in 0..32 {
        let (_, kind, cookie, d) = c.reply().await;
        assert_eq!(kind, REPLY_TYPE_OFFSET_DATA);
        let i = cookie - 100;
        assert_eq!(be_u64(&d, 0), Some(i * 512));
        assert_eq!(d[8], i as u8 + 1);
        seen.push(cookie);
    }
    seen.sort();
    assert_eq!(seen, (100..132).collect::<Vec<_>>());

    // Garbage: the server closes and says why.
    c.s.write_all(&[0xee; 28]).await.unwrap();
    assert!(c.closed().await);
    let err = server.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, ProtocolError::Violation(m) if m.contains("magic")),
        "{err}"
    );
}

#[tokio::test]
async fn simple_replies_after_export_name_and_errors_keep_the_stream_in_step() {
    let vol = Ram::new();
    let (mut c, server) = start(vol.clone());
    c.greet(FLAG_C_FIXED_NEWSTYLE).await;
    // Unknown options are refused without closing; LIST names the export.
    assert_eq!(c.option(77, b"xyz").await[0].0, REP_ERR_UNSUP);
    assert_eq!(c.option(OPT_STARTTLS, &[]).await[0].0, REP_ERR_UNSUP);
    let list = c.option(OPT_LIST, &[]).await;
    assert_eq!(list[0].0, REP_SERVER);
    assert_eq!(&list[0].1[..9], b"\0\0\0\x05baton");
    // Meta contexts need structured replies.
    let r = c.option(OPT_LIST_META_CONTEXT, &meta("", &[])).await;
    assert_eq!(r[0].0, REP_ERR_INVALID);
    c.send_option(OPT_EXPORT_NAME, b"baton").await;
    assert_eq!(c.s.read_u64().await.unwrap(), SIZE as u64);
    let flags = c.s.read_u16().await.unwrap();
    assert_eq!(flags & FLAG_SEND_DF, 0, "no DF without structured replies");
    let mut zeroes = [1u8; 124];
    c.s.read_exact(&mut zeroes).await.unwrap();
    assert_eq!(zeroes, [0; 124]);

    vol.data.lock().unwrap()[..4].copy_from_slice(b"abcd");
    c.request(Command::Read, 0, 1, 0, 4).await;
    assert_eq!(c.simple(4).await, (0, 1, b"abcd".to_vec()));
    c.request(Command::Read, 0, 2, BAD.start, 512).await;
    assert_eq!(c.simple(512).await, (EIO, 2, vec![]));
    // A write past the end: ENOSPC, its payload skipped.
    c.request(Command::Write, 0, 3, SIZE as u64 - 2, 4).await;
    c.s.write_all(b"WXYZ").await.unwrap();
    assert_eq!(c.simple(0).await, (ENOSPC, 3, vec![]));
    // Block status was not negotiated; unknown commands and flags are EINVAL.
    c.request(Command::BlockStatus, 0, 4, 0, 512).await;
    assert_eq!(c.simple(0).await.0, EINVAL);
    c.request(Command::Unknown(99), 0, 5, 0, 512).await;
    assert_eq!(c.simple(0).await.0, EINVAL);
    c.request(Command::Read, CMD_FLAG_DF, 6, 0, 512).await;
    assert_eq!(c.simple(512).await.0, EINVAL);
    c.request(Command::Read, 0, 7, 0, 4).await;
    assert_eq!(c.simple(4).await, (0, 7, b"abcd".to_vec()));
    c.request(Command::Disc, 0, 8, 0, 0).await;
    assert!(c.closed().await);
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn read_only_exports_refuse_writes_but_consume_their_payload() {
    let vol = Arc::new(Ram {
        data: Mutex::new(vec![7; SIZE]),
        read_only: true,
        ..Ram::default()
    });
    let (mut c, server) = start(vol.clone());
    let flags = structured(&mut c).await;
    assert_ne!(flags & FLAG_READ_ONLY, 0);
    c.request(Command::Write, 0, 1, 0, 4096).await;
    c.s.write_all(&[1; 4096]).await.unwrap();
    let (_, kind, _, d) = c.reply().await;
    assert_eq!((kind, be_u32(&d, 0)), (REPLY_TYPE_ERROR, Some(EPERM)));
    c.request(Command::Trim, 0, 2, 0, 4096).await;
    assert_eq!(be_u32(&c.reply().await.3, 0), Some(EPERM));
    c.request(Command::Read, 0, 3, 0, 8).await;
    assert_eq!(&c.reply().await.3[8..], &[7; 8]);
    assert!(vol.data.lock().unwrap().iter().all(|&b| b == 7));
    drop(c);
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn handshake_violations_close_the_connection() {
    // No fixed newstyle.
    let (mut c, server) = start(Ram::new());
    c.greet(0).await;
    assert!(c.closed().await);
    assert!(matches!(
        server.await.unwrap(),
        Err(ProtocolError::Violation(_))
    ));
    // Unknown export name: no way to say so but closing.
    let (mut c, server) = start(Ram::new());
    c.greet(FLAG_C_FIXED_NEWSTYLE).await;
    c.send_option(OPT_EXPORT_NAME, b"other").await;
    assert!(c.closed().await);
    assert!(matches!(server.await.unwrap(), Err(ProtocolError::UnknownExport(n)) if n == "other"));
    // An option too long to read.
    let (mut c, server) = start(Ram::new());
    c.greet(FLAG_C_FIXED_NEWSTYLE).await;
    c.s.write_u64(IHAVEOPT).await.unwrap();
    c.s.write_u32(OPT_GO).await.unwrap();
    c.s.write_u32(u32::MAX).await.unwrap();
    assert!(c.closed().await);
    assert!(matches!(
        server.await.unwrap(),
        Err(ProtocolError::Violation(_))
    ));
    // ABORT is acknowledged, then the server closes cleanly.
    let (mut c, server) = start(Ram::new());
    c.greet(FLAG_C_FIXED_NEWSTYLE).await;
    assert_eq!(c.option(OPT_ABORT, &[]).await, vec![(REP_ACK, vec![])]);
    assert!(c.closed().await);
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_write_too_long_to_skip_closes_the_connection() {
    let (mut c, server) = start(Ram::new());
    structured(&mut c).await;
    c.request(Command::Write, 0, 1, 0, MAX_DISCARD_LEN + 1)
        .await;
    assert!(c.closed().await);
    let err = server.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("payload"), "{err}");
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_then_closes() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nbd.sock");
    let vol = Arc::new(Ram {
        data: Mutex::new(vec![9; SIZE]),
        read_delay: Some(Duration::from_millis(300)),
        ..Ram::default()
    });
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let server = Arc::new(Server::new(vol, cfg()).on_event(move |e| ev.lock().unwrap().push(e)));
    let listen: Listen = format!("unix:{}", sock.display()).parse().unwrap();
    // A stale socket file is replaced; a regular file is not.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let l = server.bind(&listen).await.unwrap();
    assert_eq!(l.local_addr_string(), sock.display().to_string());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let s = server.clone();
    let serving = tokio::spawn(async move {
        s.serve(l, async {
            let _ = stop_rx.await;
        })
        .await
    });

    let mut c = Client {
        s: tokio::net::UnixStream::connect(&sock).await.unwrap(),
    };
    structured(&mut c).await;
    assert_eq!(server.connections(), 1);
    c.request(Command::Read, 0, 1, 0, 4096).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop_tx.send(()).unwrap();
    // The read in flight is answered, then the connection closes.
    let (_, kind, cookie, d) = c.reply().await;
    assert_eq!((kind, cookie), (REPLY_TYPE_OFFSET_DATA, 1));
    assert_eq!(&d[8..], &[9; 4096][..]);
    assert!(c.closed().await);
    serving.await.unwrap().unwrap();
    assert_eq!(server.connections(), 0);
    assert!(!sock.exists(), "the socket file is removed");
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            Event::Connected { id: 1 },
            Event::FirstRead,
            Event::Disconnected { id: 1 }
        ]
    );

    std::fs::write(&sock, b"not a socket").unwrap();
    let err = server.bind(&listen).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
}

#[test]
fn listen_addresses_parse() {
    assert_eq!(
        "unix:/run/b.sock".parse::<Listen>().unwrap(),
        Listen::Unix("/run/b.sock".into())
    );
    assert_eq!(
        "127.0.0.1:10809".parse::<Listen>().unwrap(),
        Listen::Tcp("127.0.0.1:10809".parse().unwrap())
    );
    assert_eq!(
        "[::1]:10809".parse::<Listen>().unwrap(),
        Listen::Tcp("[::1]:10809".parse().unwrap())
    );
    match "localhost:10809".parse::<Listen>().unwrap() {
        Listen::Tcp(a) => assert!(a.ip().is_loopback() && a.port() == 10809),
        other => panic!("{other:?}"),
    }
    assert!("unix:".parse::<Listen>().is_err());
    assert!("no-port".parse::<Listen>().is_err());
    assert!("127.0.0.1:99999".parse::<Listen>().is_err());
}
