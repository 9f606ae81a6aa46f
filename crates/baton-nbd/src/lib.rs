//! A Network Block Device (NBD) server: exports one [`Volume`] to NBD clients
//! (`qemu-img`, `qemu-io`, `nbdcopy`, `nbdinfo`, `nbdfuse`, the Linux kernel's
//! `nbd-client`) over TCP or a Unix socket.
//!
//! ```
//! use baton_nbd::{Extent, Listen, Server, ServerConfig, Volume, VolumeError};
//! use std::sync::{Arc, Mutex};
//!
//! struct Ram(Mutex<Vec<u8>>);
//! impl Volume for Ram {
//!     fn size(&self) -> u64 { self.0.lock().unwrap().len() as u64 }
//!     fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
//!         let d = self.0.lock().unwrap();
//!         buf.copy_from_slice(&d[off as usize..off as usize + buf.len()]);
//!         Ok(())
//!     }
//!     fn write(&self, off: u64, data: &[u8], _fua: bool) -> Result<(), VolumeError> {
//!         self.0.lock().unwrap()[off as usize..][..data.len()].copy_from_slice(data);
//!         Ok(())
//!     }
//!     fn write_zeroes(&self, off: u64, len: u64, _: bool, _: bool) -> Result<(), VolumeError> {
//!         self.0.lock().unwrap()[off as usize..][..len as usize].fill(0);
//!         Ok(())
//!     }
//!     fn trim(&self, _: u64, _: u64, _: bool) -> Result<(), VolumeError> { Ok(()) }
//!     fn flush(&self) -> Result<(), VolumeError> { Ok(()) }
//!     fn extents(&self, _: u64, len: u64) -> Result<Vec<Extent>, VolumeError> {
//!         Ok(vec![Extent { length: len, hole: false, zero: false }])
//!     }
//! }
//!
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! rt.block_on(async {
//!     let server = Server::new(Arc::new(Ram(Mutex::new(vec![0; 1 << 20]))), ServerConfig::default())
//!         .on_event(|e| eprintln!("nbd: {e:?}"));
//!     let listener = server.bind(&"127.0.0.1:0".parse::<Listen>().unwrap()).await.unwrap();
//!     println!("serving nbd://{}", listener.local_addr_string());
//!     // A real caller passes e.g. a Ctrl-C future; this one stops at once.
//!     server.serve(listener, async {}).await.unwrap();
//! });
//! ```
//!
//! # Supported subset of the protocol
//! Written from the NBD protocol specification (`doc/proto.md` of the
//! reference implementation), as a server in NOTLS mode:
//! - Handshake: fixed newstyle only (a client without
//!   `NBD_FLAG_C_FIXED_NEWSTYLE` is refused), `NBD_FLAG_NO_ZEROES`.
//! - Options: `EXPORT_NAME`, `ABORT`, `LIST`, `INFO` and `GO` (with
//!   `NBD_INFO_EXPORT`, `NAME`, `DESCRIPTION`, `BLOCK_SIZE`),
//!   `STRUCTURED_REPLY`, `LIST_META_CONTEXT` and `SET_META_CONTEXT` with the
//!   one context `base:allocation`. `STARTTLS`, `EXTENDED_HEADERS` and
//!   anything else are answered `NBD_REP_ERR_UNSUP`.
//! - Commands: `READ`, `WRITE`, `DISC`, `FLUSH`, `TRIM`, `WRITE_ZEROES`
//!   (`NO_HOLE`, `FAST_ZERO`), `BLOCK_STATUS` (`REQ_ONE`), `CACHE`; `FUA` on
//!   every command, `DF` on reads (a read is always one data chunk).
//! - One export: `ServerConfig::export_name`, also reachable as the default
//!   export `""`. Exports are never read-only unless [`Volume::read_only`].
//!
//! Left out: TLS, extended headers, `NBD_REPLY_TYPE_OFFSET_HOLE` (holes are
//! sent as zero bytes; clients that care ask `BLOCK_STATUS` first), the
//! oldstyle handshake and the resize extension.
//!
//! # Why hand-written
//! No well-kept, permissively licensed crate we know of implements the
//! *server* side with structured replies and metadata contexts (`tokio-nbd`
//! is GPL and has no structured replies). The protocol subset above is small,
//! and owning it lets us bound memory per connection and fuzz every parser.
//!
//! # Layout
//! [`proto`] is sans-IO: it parses untrusted bytes (request headers, option
//! payloads) into values and encodes replies, and is what the fuzz targets
//! drive. `handshake` and `transmission` do the I/O of one connection;
//! `server` accepts connections.
//!
//! # Concurrency
//! Each connection has one reader, which parses requests and starts each on a
//! blocking thread (`spawn_blocking`), and one writer, which writes the
//! finished replies whole, in the order they finish (NBD allows replies out of
//! order). The bytes of requests in flight on one connection (payloads and
//! replies) are bounded by a semaphore of [`IN_FLIGHT_BYTES`]; when it is
//! exhausted the reader stops reading from the client.
//!
//! # Consistency
//! A reply is sent only after the volume call returned, so a client that saw
//! the reply of a write and then sends `FLUSH` gets [`Volume::flush`] after
//! that write. Writes in flight at the same time on one or several
//! connections may reach the volume in any order: the client orders them.
//! `NBD_FLAG_CAN_MULTI_CONN` is advertised because a volume has one state and
//! one flush for all connections.
//!
//! # Cancellation
//! [`Server::serve`] stops on its `shutdown` future: it stops accepting,
//! each connection stops reading new requests, waits for the volume calls it
//! started, sends their replies and closes. A client that breaks the protocol
//! (bad magic, impossible lengths, unknown flags during the handshake) is
//! disconnected and reported with [`Event::ProtocolError`]; every other
//! connection goes on.
//!
//! # Crash consistency
//! The server keeps no state of its own: durability is the volume's
//! (`fua` and [`Volume::flush`]).

mod error;
mod handshake;
pub mod proto;
mod server;
mod transmission;

#[cfg(test)]
mod tests;

pub use error::ProtocolError;
pub use server::{BoundListener, Listen, ParseListenError, SHUTDOWN_GRACE, Server};
pub use transmission::{HANDSHAKE_TIMEOUT, serve_connection};

/// The bytes of requests in flight on one connection (write payloads being
/// held, read replies being built or sent) are bounded by this, or by one
/// maximal request plus overhead if `max_request` is larger.
pub const IN_FLIGHT_BYTES: usize = 64 << 20;

/// An error of a [`Volume`] call; `errno` is sent to the client.
///
/// NBD defines `EPERM` (1), `EIO` (5), `ENOMEM` (12), `EINVAL` (22),
/// `ENOSPC` (28), `EOVERFLOW` (75), `ENOTSUP` (95) and `ESHUTDOWN` (108);
/// `EDQUOT` and `EFBIG` are sent as `ENOSPC` and anything else as `EIO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeError {
    pub errno: u32,
    /// Shown to the user by clients that negotiated structured replies.
    pub message: String,
    /// Where the error happened, if known (sent for reads and writes with
    /// structured replies, so the client knows what succeeded before it).
    pub offset: Option<u64>,
}

impl VolumeError {
    pub fn new(errno: u32, message: impl Into<String>) -> Self {
        VolumeError {
            errno,
            message: message.into(),
            offset: None,
        }
    }

    /// `EIO` with a message.
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(proto::EIO, message)
    }

    pub fn at(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }
}

impl std::fmt::Display for VolumeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "errno {}: {}", self.errno, self.message)?;
        if let Some(o) = self.offset {
            write!(f, " (at offset {o})")?;
        }
        Ok(())
    }
}

impl std::error::Error for VolumeError {}

/// One run of bytes with the same allocation status (`base:allocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u64,
    /// Not allocated in the backing store (`NBD_STATE_HOLE`).
    pub hole: bool,
    /// Reads as zeroes (`NBD_STATE_ZERO`).
    pub zero: bool,
}

/// The block device an NBD export serves.
///
/// All methods are blocking; the server calls them through
/// `tokio::task::spawn_blocking`, possibly several at once (from one
/// connection's pipelined requests and from several connections). Ranges are
/// checked against [`Volume::size`] before a call: `offset + len <= size()`,
/// `len > 0`.
pub trait Volume: Send + Sync + 'static {
    fn size(&self) -> u64;
    fn read_only(&self) -> bool {
        false
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError>;
    /// With `fua`, `data` is durable when this returns.
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), VolumeError>;
    /// Zeroes the range; `may_trim` allows deallocating it (false when the
    /// client asked `NBD_CMD_FLAG_NO_HOLE`). Must be fast: the server
    /// advertises `NBD_FLAG_SEND_FAST_ZERO`.
    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        may_trim: bool,
        fua: bool,
    ) -> Result<(), VolumeError>;
    /// The client no longer needs the range; its contents become undefined.
    fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<(), VolumeError>;
    /// Makes every write that has returned durable, for all connections.
    fn flush(&self) -> Result<(), VolumeError>;
    /// Allocation of [offset, offset+length): extents in order, covering at least one byte, never past the export's end.
    fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>, VolumeError>;
    /// NBD_CMD_CACHE hint; default does nothing.
    fn cache(&self, _offset: u64, _length: u64) -> Result<(), VolumeError> {
        Ok(())
    }
}

/// What a server exports and the sizes it advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The export's name; the default export `""` is the same export.
    pub export_name: String,
    /// Shown by clients (`NBD_INFO_DESCRIPTION`, `NBD_OPT_LIST`); may be empty.
    pub description: String,
    /// Preferred I/O size advertised in `NBD_INFO_BLOCK_SIZE`; a power of two
    /// of at least 512 (other values are replaced by 4096).
    pub preferred_block: u32,
    /// Largest read or write payload (`NBD_INFO_BLOCK_SIZE` maximum); raised
    /// to `preferred_block` if smaller.
    pub max_request: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            export_name: "baton".into(),
            description: String::new(),
            preferred_block: 4096,
            max_request: 32 << 20,
        }
    }
}

impl ServerConfig {
    /// (minimum, preferred, maximum) as advertised and enforced.
    pub fn block_sizes(&self) -> (u32, u32, u32) {
        let pref = self.preferred_block;
        let pref = if pref.is_power_of_two() && pref >= 512 {
            pref
        } else {
            4096
        };
        (1, pref, self.max_request.max(pref))
    }
}

/// What a [`Server`] reports through [`Server::on_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A client connected (before the handshake); ids count up from 1.
    Connected { id: u64 },
    /// The connection `id` is closed, whatever the reason.
    Disconnected { id: u64 },
    /// The first successful read reply of the server's life was sent.
    FirstRead,
    /// The client broke the protocol and was disconnected.
    ProtocolError { id: u64, message: String },
}
