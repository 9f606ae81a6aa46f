//! Transmission-phase requests: the 28-byte header and its validation against
//! the export.

use super::*;

/// The command of a request; `Unknown` keeps the value to reply `EINVAL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    Unknown(u16),
}

impl Command {
    pub fn from_wire(v: u16) -> Self {
        match v {
            CMD_READ => Command::Read,
            CMD_WRITE => Command::Write,
            CMD_DISC => Command::Disc,
            CMD_FLUSH => Command::Flush,
            CMD_TRIM => Command::Trim,
            CMD_CACHE => Command::Cache,
            CMD_WRITE_ZEROES => Command::WriteZeroes,
            CMD_BLOCK_STATUS => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }

    pub fn to_wire(self) -> u16 {
        match self {
            Command::Read => CMD_READ,
            Command::Write => CMD_WRITE,
            Command::Disc => CMD_DISC,
            Command::Flush => CMD_FLUSH,
            Command::Trim => CMD_TRIM,
            Command::Cache => CMD_CACHE,
            Command::WriteZeroes => CMD_WRITE_ZEROES,
            Command::BlockStatus => CMD_BLOCK_STATUS,
            Command::Unknown(v) => v,
        }
    }

    /// Command flags valid for this command besides `FUA` (valid for all).
    fn own_flags(self, structured: bool) -> u16 {
        match self {
            Command::Read if structured => CMD_FLAG_DF,
            Command::WriteZeroes => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            Command::BlockStatus => CMD_FLAG_REQ_ONE,
            _ => 0,
        }
    }

    fn writes(self) -> bool {
        matches!(self, Command::Write | Command::WriteZeroes | Command::Trim)
    }
}

/// A request header. A write's payload (`length` bytes) follows it on the
/// wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub flags: u16,
    /// Opaque; echoed in the reply.
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    /// Bytes that follow the header on the wire.
    pub fn payload_len(&self) -> u32 {
        if self.command == Command::Write {
            self.length
        } else {
            0
        }
    }

    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// The header as a client sends it (for tests and fuzz seeds).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_wire().to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// A header that cannot be a request: the stream is out of step, so the
/// connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request header of {0} bytes, not 28")]
    Length(usize),
    #[error("bad request magic {0:#010x}")]
    BadMagic(u32),
}

/// Parses a request header (exactly [`REQUEST_LEN`] bytes).
pub fn parse_request(b: &[u8]) -> Result<Request, RequestError> {
    let b: &[u8; REQUEST_LEN] = b.try_into().map_err(|_| RequestError::Length(b.len()))?;
    let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if magic != REQUEST_MAGIC {
        return Err(RequestError::BadMagic(magic));
    }
    let mut cookie = [0u8; 8];
    cookie.copy_from_slice(&b[8..16]);
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&b[16..24]);
    Ok(Request {
        flags: u16::from_be_bytes([b[4], b[5]]),
        command: Command::from_wire(u16::from_be_bytes([b[6], b[7]])),
        cookie: u64::from_be_bytes(cookie),
        offset: u64::from_be_bytes(offset),
        length: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
    })
}

/// What a connection negotiated and what the export is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Export size in bytes.
    pub size: u64,
    /// Largest read or write payload.
    pub max_request: u32,
    pub read_only: bool,
    /// `NBD_OPT_STRUCTURED_REPLY` was acknowledged.
    pub structured: bool,
    /// `base:allocation` was selected with `NBD_OPT_SET_META_CONTEXT`.
    pub block_status: bool,
}

/// Why a request is not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Reply with `errno` and go on, after reading and dropping a write's
    /// payload.
    Errno { errno: u32, reason: &'static str },
    /// The write payload is too long even to skip: close the connection.
    Close { reason: &'static str },
}

fn errno(errno: u32, reason: &'static str) -> Result<(), Rejection> {
    Err(Rejection::Errno { errno, reason })
}

/// Checks a request against the export and the negotiated features, with
/// the spec's errors: `EINVAL` for unknown commands and flags, zero lengths,
/// oversized payloads and ranges past the end of reads, trims, caches and
/// block status; `ENOSPC` for writes past the end; `EPERM` for writes to a
/// read-only export.
pub fn validate_request(r: &Request, l: &Limits) -> Result<(), Rejection> {
    if r.payload_len() > l.max_request.max(MAX_DISCARD_LEN) {
        return Err(Rejection::Close {
            reason: "write payload longer than the server will read",
        });
    }
    let cmd = r.command;
    match cmd {
        Command::Unknown(_) => return errno(EINVAL, "unknown command"),
        Command::Disc => return Ok(()),
        _ => {}
    }
    if r.flags & !(CMD_FLAG_FUA | cmd.own_flags(l.structured)) != 0 {
        return errno(EINVAL, "command flag not valid for this command");
    }
    if cmd == Command::Flush {
        return Ok(());
    }
    if r.length == 0 {
        return errno(EINVAL, "zero length");
    }
    if l.read_only && cmd.writes() {
        return errno(EPERM, "the export is read-only");
    }
    if cmd == Command::BlockStatus && !l.block_status {
        return errno(EINVAL, "no metadata context was negotiated");
    }
    if matches!(cmd, Command::Read | Command::Write) && r.length > l.max_request {
        return errno(EINVAL, "longer than the maximum payload size");
    }
    let end = r.offset.checked_add(u64::from(r.length));
    if end.is_none_or(|e| e > l.size) {
        return match cmd {
            Command::Write | Command::WriteZeroes => errno(ENOSPC, "past the end of the export"),
            _ => errno(EINVAL, "past the end of the export"),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const L: Limits = Limits {
        size: 1 << 20,
        max_request: 1 << 16,
        read_only: false,
        structured: true,
        block_status: true,
    };

    fn req(command: Command, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            command,
            flags,
            cookie: 7,
            offset,
            length,
        }
    }

    fn rejected(r: Request, l: &Limits) -> Option<u32> {
        match validate_request(&r, l) {
            Ok(()) => None,
            Err(Rejection::Errno { errno, .. }) => Some(errno),
            Err(Rejection::Close { .. }) => Some(u32::MAX),
        }
    }

    #[test]
    fn header_parses_every_field() {
        let mut b = [0u8; 28];
        b[0..4].copy_from_slice(&[0x25, 0x60, 0x95, 0x13]);
        b[4..6].copy_from_slice(&[0, 1]); // FUA
        b[6..8].copy_from_slice(&[0, 1]); // WRITE
        b[8..16].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        b[16..24].copy_from_slice(&4096u64.to_be_bytes());
        b[24..28].copy_from_slice(&512u32.to_be_bytes());
        let r = parse_request(&b).unwrap();
        assert_eq!(
            r,
            req(Command::Write, CMD_FLAG_FUA, 4096, 512).with_cookie(0x0102_0304_0506_0708)
        );
        assert_eq!(r.payload_len(), 512);
        assert_eq!(r.encode(), b);
    }

    impl Request {
        fn with_cookie(mut self, c: u64) -> Self {
            self.cookie = c;
            self
        }
    }

    #[test]
    fn bad_magic_and_short_headers_are_refused() {
        let mut b = req(Command::Read, 0, 0, 1).encode();
        b[0] ^= 1;
        assert_eq!(parse_request(&b), Err(RequestError::BadMagic(0x2460_9513)));
        assert_eq!(parse_request(&b[..27]), Err(RequestError::Length(27)));
        assert_eq!(parse_request(&[]), Err(RequestError::Length(0)));
    }

    #[test]
    fn ranges_are_checked_against_the_export() {
        assert_eq!(
            rejected(req(Command::Read, 0, (1 << 20) - 512, 512), &L),
            None
        );
        assert_eq!(
            rejected(req(Command::Read, 0, (1 << 20) - 511, 512), &L),
            Some(EINVAL)
        );
        assert_eq!(
            rejected(req(Command::Write, 0, 1 << 20, 1), &L),
            Some(ENOSPC)
        );
        assert_eq!(
            rejected(req(Command::WriteZeroes, 0, u64::MAX, 1), &L),
            Some(ENOSPC)
        );
        assert_eq!(
            rejected(req(Command::Trim, 0, u64::MAX - 1, 4), &L),
            Some(EINVAL)
        );
        assert_eq!(
            rejected(req(Command::BlockStatus, 0, 1 << 20, 1), &L),
            Some(EINVAL)
        );
        assert_eq!(rejected(req(Command::Read, 0, 0, 0), &L), Some(EINVAL));
        // Effect lengths beyond max_request are fine without a payload.
        assert_eq!(rejected(req(Command::WriteZeroes, 0, 0, 1 << 20), &L), None);
        assert_eq!(
            rejected(req(Command::Read, 0, 0, (1 << 16) + 1), &L),
            Some(EINVAL)
        );
    }

    #[test]
    fn oversized_writes_are_skipped_or_close() {
        assert_eq!(
            rejected(req(Command::Write, 0, 0, (1 << 16) + 1), &L),
            Some(EINVAL)
        );
        assert_eq!(
            rejected(req(Command::Write, 0, 0, MAX_DISCARD_LEN), &L),
            Some(EINVAL)
        );
        assert_eq!(
            rejected(req(Command::Write, 0, 0, MAX_DISCARD_LEN + 1), &L),
            Some(u32::MAX)
        );
        // Even an unknown flag does not make an unskippable payload skippable.
        assert_eq!(
            rejected(req(Command::Write, 0x8000, 0, u32::MAX), &L),
            Some(u32::MAX)
        );
    }

    #[test]
    fn flags_are_checked_per_command_and_negotiation() {
        assert_eq!(
            rejected(req(Command::Read, CMD_FLAG_DF | CMD_FLAG_FUA, 0, 1), &L),
            None
        );
        let simple = Limits {
            structured: false,
            block_status: false,
            ..L
        };
        assert_eq!(
            rejected(req(Command::Read, CMD_FLAG_DF, 0, 1), &simple),
            Some(EINVAL)
        );
        assert_eq!(
            rejected(req(Command::Write, CMD_FLAG_NO_HOLE, 0, 1), &L),
            Some(EINVAL)
        );
        let wz = CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO | CMD_FLAG_FUA;
        assert_eq!(rejected(req(Command::WriteZeroes, wz, 0, 1), &L), None);
        assert_eq!(
            rejected(req(Command::BlockStatus, CMD_FLAG_REQ_ONE, 0, 1), &L),
            None
        );
        assert_eq!(
            rejected(req(Command::BlockStatus, 0, 0, 1), &simple),
            Some(EINVAL)
        );
        assert_eq!(
            rejected(req(Command::Cache, 1 << 9, 0, 1), &L),
            Some(EINVAL)
        );
        assert_eq!(
            rejected(req(Command::Unknown(42), 0, 0, 1), &L),
            Some(EINVAL)
        );
        assert_eq!(rejected(req(Command::Flush, 0, 5, 5), &L), None);
        assert_eq!(rejected(req(Command::Disc, 0xffff, 5, 5), &L), None);
    }

    #[test]
    fn read_only_exports_refuse_writes_with_eperm() {
        let ro = Limits {
            read_only: true,
            ..L
        };
        for c in [Command::Write, Command::WriteZeroes, Command::Trim] {
            assert_eq!(rejected(req(c, 0, 0, 512), &ro), Some(EPERM), "{c:?}");
        }
        assert_eq!(rejected(req(Command::Read, 0, 0, 512), &ro), None);
        assert_eq!(rejected(req(Command::Flush, 0, 0, 0), &ro), None);
    }

    proptest! {
        #[test]
        fn any_header_round_trips(flags: u16, cmd: u16, cookie: u64, offset: u64, length: u32) {
            let r = Request { command: Command::from_wire(cmd), flags, cookie, offset, length };
            prop_assert_eq!(parse_request(&r.encode()), Ok(r));
        }

        #[test]
        fn accepted_requests_lie_within_the_export(b in proptest::collection::vec(any::<u8>(), 28)) {
            let mut b = b;
            b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
            let r = parse_request(&b).unwrap();
            if validate_request(&r, &L).is_ok()
                && !matches!(r.command, Command::Disc | Command::Flush)
            {
                prop_assert!(r.length > 0);
                prop_assert!(r.offset + u64::from(r.length) <= L.size);
            }
        }
    }
}
