//! Listening: where to listen, binding, accepting connections and shutting
//! down.

use crate::transmission::{EventFn, Hooks, Stop, run_connection};
use crate::{Event, ServerConfig, Volume};
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long [`Server::serve`] waits, after its shutdown, for connections to
/// finish their requests in flight before dropping them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Where to listen: `unix:/path` or `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot listen on {input:?}: {reason}")]
pub struct ParseListenError {
    input: String,
    reason: String,
}

impl std::str::FromStr for Listen {
    type Err = ParseListenError;

    /// `unix:/path`, or an address (`127.0.0.1:10809`, `[::1]:10809`), or a
    /// host name and port (`localhost:10809`, resolved now; the first
    /// address is used).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| ParseListenError {
            input: s.into(),
            reason,
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(err("empty socket path".into()));
            }
            return Ok(Listen::Unix(path.into()));
        }
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Listen::Tcp(a));
        }
        let mut addrs = s
            .to_socket_addrs()
            .map_err(|e| err(format!("expected unix:PATH or HOST:PORT ({e})")))?;
        addrs
            .next()
            .map(Listen::Tcp)
            .ok_or_else(|| err("the host name has no address".into()))
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A bound socket, ready for [`Server::serve`]. A Unix socket file is
/// removed when this is dropped.
#[derive(Debug)]
pub struct BoundListener {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl BoundListener {
    /// `127.0.0.1:43211` (the real port when port 0 was asked), or the Unix
    /// socket's path.
    pub fn local_addr_string(&self) -> String {
        match &self.inner {
            Inner::Tcp(l) => match l.local_addr() {
                Ok(a) => a.to_string(),
                Err(e) => format!("<unknown address: {e}>"),
            },
            Inner::Unix(_, p) => p.display().to_string(),
        }
    }
}

impl Drop for BoundListener {
    fn drop(&mut self) {
        if let Inner::Unix(_, p) = &self.inner
            && is_socket(p)
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn is_socket(p: &std::path::Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// An NBD server of one export.
pub struct Server {
    volume: Arc<dyn Volume>,
    cfg: Arc<ServerConfig>,
    events: Option<EventFn>,
    state: Arc<State>,
}

struct State {
    next_id: AtomicU64,
    open: AtomicUsize,
    first_read: Arc<AtomicBool>,
}

/// Counts a connection as open until dropped, then reports it closed.
struct Open {
    state: Arc<State>,
    hooks: Arc<Hooks>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.state.open.fetch_sub(1, Ordering::Relaxed);
        self.hooks.emit(Event::Disconnected { id: self.hooks.id });
    }
}

impl Server {
    pub fn new(volume: Arc<dyn Volume>, cfg: ServerConfig) -> Self {
        Server {
            volume,
            cfg: Arc::new(cfg),
            events: None,
            state: Arc::new(State {
                next_id: AtomicU64::new(1),
                open: AtomicUsize::new(0),
                first_read: Arc::new(AtomicBool::new(false)),
            }),
        }
    }

    /// Calls `f` for every [`Event`], on the runtime's threads: it must not
    /// block.
    pub fn on_event(mut self, f: impl Fn(Event) + Send + Sync + 'static) -> Self {
        self.events = Some(Arc::new(f));
        self
    }

    /// Binds (removing a stale Unix socket file first: only a socket, and
    /// only if nothing answers on it).
    pub async fn bind(&self, listen: &Listen) -> std::io::Result<BoundListener> {
        let inner = match listen {
            Listen::Tcp(a) => Inner::Tcp(TcpListener::bind(a).await?),
            Listen::Unix(p) => {
                if let Ok(m) = std::fs::symlink_metadata(p) {
                    if !m.file_type().is_socket() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            format!("{} exists and is not a socket", p.display()),
                        ));
                    }
                    if tokio::net::UnixStream::connect(p).await.is_ok() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            format!("a server already listens on {}", p.display()),
                        ));
                    }
                    std::fs::remove_file(p)?;
                }
                Inner::Unix(UnixListener::bind(p)?, p.clone())
            }
        };
        Ok(BoundListener { inner })
    }

    /// Currently open connections (in the handshake or transmission).
    pub fn connections(&self) -> usize {
        self.state.open.load(Ordering::Relaxed)
    }

    /// Serves every connection (each on its own task) until `shutdown`
    /// resolves; then stops accepting, lets each connection finish the
    /// requests it has started (for at most [`SHUTDOWN_GRACE`]) and closes
    /// them. Errors only if accepting fails for good.
    pub async fn serve(
        &self,
        listener: BoundListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        let mut result = Ok(());
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = accept(&listener) => match accepted {
                    Ok(conn) => self.start(conn, &mut tasks, &stop_rx),
                    Err(e) if transient(&e) => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                },
            }
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tasks.shutdown().await;
        }
        result
    }

    fn start(&self, conn: Conn, tasks: &mut JoinSet<()>, stop: &watch::Receiver<bool>) {
        let id = self.state.next_id.fetch_add(1, Ordering::Relaxed);
        self.state.open.fetch_add(1, Ordering::Relaxed);
        let hooks = Arc::new(Hooks {
            id,
            events: self.events.clone(),
            first_read: self.state.first_read.clone(),
        });
        hooks.emit(Event::Connected { id });
        let open = Open {
            state: self.state.clone(),
            hooks: hooks.clone(),
        };
        let (volume, cfg, stop) = (
            self.volume.clone(),
            self.cfg.clone(),
            Stop(Some(stop.clone())),
        );
        tasks.spawn(async move {
            let _open = open;
            let r = match conn {
                Conn::Tcp(s) => run_connection(s, volume, &cfg, &hooks, stop).await,
                Conn::Unix(s) => run_connection(s, volume, &cfg, &hooks, stop).await,
            };
            if let Err(e) = r
                && e.is_client_fault()
            {
                hooks.emit(Event::ProtocolError {
                    id,
                    message: e.to_string(),
                });
            }
        });
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &BoundListener) -> std::io::Result<Conn> {
    match &l.inner {
        Inner::Tcp(l) => {
            let (s, _) = l.accept().await?;
            // Replies are written whole; do not hold back their last packet.
            // (Fails only if the peer is already gone, which reading shows.)
            let _ = s.set_nodelay(true);
            Ok(Conn::Tcp(s))
        }
        Inner::Unix(l, _) => Ok(Conn::Unix(l.accept().await?.0)),
    }
}

/// Accept errors that concern one connection or a passing shortage of
/// descriptors or memory, not the listener.
fn transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || matches!(e.raw_os_error(), Some(12 | 23 | 24 | 105))
}
