//! One connection: the handshake, then the transmission phase with one reader
//! (parses and starts requests), blocking workers (call the volume) and one
//! writer (sends whole replies in the order they finish).

use crate::handshake::{Export, Outcome, handshake};
use crate::proto::*;
use crate::{Event, IN_FLIGHT_BYTES, ProtocolError, ServerConfig, Volume, VolumeError};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

/// Accounted for every request on top of its data: covers the header, the
/// reply and a block status reply of up to [`MAX_EXTENTS`] descriptors. With
/// [`IN_FLIGHT_BYTES`] it also bounds requests in flight (128 per connection).
const REQUEST_OVERHEAD: usize = 512 << 10;

pub(crate) type EventFn = Arc<dyn Fn(Event) + Send + Sync>;

/// What a connection reports to its server.
pub(crate) struct Hooks {
    pub id: u64,
    pub events: Option<EventFn>,
    /// Shared by all connections of a server.
    pub first_read: Arc<AtomicBool>,
}

impl Hooks {
    fn none() -> Self {
        Hooks {
            id: 0,
            events: None,
            first_read: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn emit(&self, e: Event) {
        if let Some(f) = &self.events {
            f(e);
        }
    }

    fn read_replied(&self) {
        if !self.first_read.swap(true, Ordering::Relaxed) {
            self.emit(Event::FirstRead);
        }
    }
}

/// Resolves when the server shuts down; never for a lone connection.
pub(crate) struct Stop(pub Option<watch::Receiver<bool>>);

impl Stop {
    async fn wait(&mut self) {
        if let Some(rx) = &mut self.0
            && rx.wait_for(|stop| *stop).await.is_ok()
        {
            return;
        }
        std::future::pending().await
    }
}

/// Serves one already-connected stream (used by tests and the fuzz target):
/// the handshake, then requests until the client disconnects. Returns
/// `Ok(())` after `NBD_CMD_DISC`, `NBD_OPT_ABORT` or a clean close.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: S,
    volume: Arc<dyn Volume>,
    cfg: &ServerConfig,
) -> Result<(), ProtocolError> {
    run_connection(stream, volume, cfg, &Hooks::none(), Stop(None)).await
}

/// Longest time a client may take to negotiate.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub(crate) async fn run_connection<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut stream: S,
    volume: Arc<dyn Volume>,
    cfg: &ServerConfig,
    hooks: &Hooks,
    mut stop: Stop,
) -> Result<(), ProtocolError> {
    let v = volume.clone();
    let (size, read_only) = tokio::task::spawn_blocking(move || (v.size(), v.read_only()))
        .await
        .map_err(|_| std::io::Error::other("the volume panicked in size()"))?;
    let export = Export {
        cfg,
        size,
        read_only,
    };
    let neg = tokio::select! {
        r = handshake(&mut stream, &export) => match r? {
            Outcome::Transmission(n) => n,
            Outcome::Closed => return Ok(()),
        },
        _ = stop.wait() => return Ok(()),
        // A client that never finishes negotiating holds no connection
        // (and no "wait until every client has disconnected") for long.
        _ = tokio::time::sleep(HANDSHAKE_TIMEOUT) => {
            return Err(ProtocolError::Violation(format!(
                "no complete handshake within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            )));
        }
    };
    let conn = Conn {
        volume,
        limits: Limits {
            size,
            max_request: cfg.block_sizes().2,
            read_only,
            structured: neg.structured,
            block_status: neg.block_status,
        },
    };
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(64 << 10, rd);
    let (tx, rx) = mpsc::unbounded_channel();
    let reader = conn.read_requests(&mut rd, tx, stop);
    let writer = write_replies(wr, rx, hooks);
    tokio::pin!(reader, writer);
    tokio::select! {
        r = &mut reader => {
            // On a violation close at once; otherwise (DISC, EOF, shutdown)
            // the replies of requests in flight are still sent.
            r?;
            writer.await?;
        }
        w = &mut writer => {
            w?;
            reader.await?;
        }
    }
    Ok(())
}

/// A finished reply, holding its share of the connection's budget until it
/// is written.
struct Outgoing {
    bytes: Vec<u8>,
    ok_read: bool,
    _permit: OwnedSemaphorePermit,
}

struct Conn {
    volume: Arc<dyn Volume>,
    limits: Limits,
}

impl Conn {
    async fn read_requests<R: AsyncRead + Unpin>(
        &self,
        rd: &mut R,
        tx: mpsc::UnboundedSender<Outgoing>,
        mut stop: Stop,
    ) -> Result<(), ProtocolError> {
        let max_cost = self.limits.max_request as usize + REQUEST_OVERHEAD;
        let budget = Arc::new(Semaphore::new(IN_FLIGHT_BYTES.max(max_cost)));
        loop {
            let mut h = [0u8; REQUEST_LEN];
            tokio::select! {
                r = read_header(rd, &mut h) => if !r? {
                    return Ok(());
                },
                _ = stop.wait() => return Ok(()),
            }
            let req = parse_request(&h).map_err(|e| ProtocolError::violation(e.to_string()))?;
            let check = validate_request(&req, &self.limits);
            let data = match (&check, req.command) {
                (Ok(()), Command::Read | Command::Write) => req.length as usize,
                _ => 0,
            };
            let cost = u32::try_from(data + REQUEST_OVERHEAD).unwrap_or(u32::MAX);
            match check {
                Err(Rejection::Close { reason }) => {
                    return Err(ProtocolError::violation(format!(
                        "{reason} ({} bytes)",
                        req.length
                    )));
                }
                Ok(()) if req.command == Command::Disc => return Ok(()),
                Err(Rejection::Errno { errno, reason }) => {
                    let permit = acquire(&budget, cost).await;
                    discard(rd, req.payload_len()).await?;
                    let bytes =
                        error_reply(self.limits.structured, req.cookie, errno, reason, None);
                    send(&tx, bytes, false, permit);
                }
                Ok(()) => {
                    let permit = acquire(&budget, cost).await;
                    let mut payload = vec![0u8; req.payload_len() as usize];
                    rd.read_exact(&mut payload).await?;
                    let volume = self.volume.clone();
                    let limits = self.limits;
                    let tx = tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let run = || execute(&*volume, &req, &payload, &limits);
                        let (bytes, ok_read) =
                            catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|_| {
                                let b = error_reply(
                                    limits.structured,
                                    req.cookie,
                                    EIO,
                                    "the volume panicked",
                                    None,
                                );
                                (b, false)
                            });
                        send(&tx, bytes, ok_read, permit);
                    });
                }
            }
        }
    }
}

async fn acquire(budget: &Arc<Semaphore>, cost: u32) -> OwnedSemaphorePermit {
    // The semaphore is never closed, and no cost exceeds its size.
    match budget.clone().acquire_many_owned(cost).await {
        Ok(p) => p,
        Err(_) => unreachable!("the request budget is never closed"),
    }
}

fn send(
    tx: &mpsc::UnboundedSender<Outgoing>,
    bytes: Vec<u8>,
    ok_read: bool,
    permit: OwnedSemaphorePermit,
) {
    // Fails only when the writer is gone, and then the connection is closing.
    let _ = tx.send(Outgoing {
        bytes,
        ok_read,
        _permit: permit,
    });
}

/// Reads a request header; `false` on a clean end of stream before it.
async fn read_header<R: AsyncRead + Unpin>(
    rd: &mut R,
    h: &mut [u8; REQUEST_LEN],
) -> std::io::Result<bool> {
    let mut got = 0;
    while got < h.len() {
        let n = rd.read(&mut h[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(true)
}

/// Reads and drops the payload of a refused write.
async fn discard<R: AsyncRead + Unpin>(rd: &mut R, len: u32) -> std::io::Result<()> {
    let copied = tokio::io::copy(&mut rd.take(u64::from(len)), &mut tokio::io::sink()).await?;
    if copied < u64::from(len) {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

async fn write_replies<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    hooks: &Hooks,
) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(64 << 10, wr);
    let mut read_sent = false;
    while let Some(out) = rx.recv().await {
        w.write_all(&out.bytes).await?;
        read_sent |= out.ok_read;
        if rx.is_empty() {
            w.flush().await?;
            if read_sent {
                hooks.read_replied();
            }
        }
    }
    w.flush().await?;
    w.shutdown().await
}

/// An error reply: a structured error chunk (with the message) if the client
/// negotiated structured replies, else a simple reply.
fn error_reply(
    structured: bool,
    cookie: u64,
    errno: u32,
    msg: &str,
    offset: Option<u64>,
) -> Vec<u8> {
    if structured {
        error_chunk(cookie, errno, msg, offset)
    } else {
        simple_reply(wire_errno(errno), cookie)
    }
}

/// Carries out a validated request on a blocking thread: the reply, and
/// whether it is a successful read.
fn execute(v: &dyn Volume, r: &Request, payload: &[u8], l: &Limits) -> (Vec<u8>, bool) {
    let (off, len) = (r.offset, u64::from(r.length));
    let fua = r.has(CMD_FLAG_FUA);
    let no_data = |res: Result<(), VolumeError>| res.map(|()| None);
    let result = match r.command {
        Command::Read => {
            let (mut buf, at) = read_reply_header(l.structured, r.cookie, off, r.length);
            v.read(off, &mut buf[at..]).map(|()| Some(buf))
        }
        Command::Write => no_data(v.write(off, payload, fua)),
        Command::Flush => no_data(v.flush()),
        Command::Trim => no_data(v.trim(off, len, fua)),
        Command::WriteZeroes => no_data(v.write_zeroes(off, len, !r.has(CMD_FLAG_NO_HOLE), fua)),
        Command::Cache => no_data(v.cache(off, len)),
        Command::BlockStatus => v.extents(off, len).and_then(|e| {
            let one = r.has(CMD_FLAG_REQ_ONE);
            block_status_chunk(r.cookie, BASE_ALLOCATION_ID, &e, r.length, one)
                .map(Some)
                .ok_or_else(|| VolumeError::io("the volume reported no extents"))
        }),
        Command::Disc | Command::Unknown(_) => Err(VolumeError::new(EINVAL, "unknown command")),
    };
    match result {
        Ok(Some(bytes)) => (bytes, r.command == Command::Read),
        Ok(None) => (simple_reply(0, r.cookie), false),
        Err(e) => {
            // An error offset must lie within the request.
            let ranged = r.command != Command::Flush;
            let at = e.offset.filter(|&o| ranged && o >= off && o - off < len);
            let bytes = error_reply(l.structured, r.cookie, e.errno, &e.message, at);
            (bytes, false)
        }
    }
}
