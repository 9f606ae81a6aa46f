//! Encoders of what the server sends: option replies during the handshake,
//! simple replies and structured reply chunks during transmission.

use super::*;
use crate::Extent;

/// Most descriptors in one block status chunk (the spec's ceiling is 2^20;
/// fewer keeps a reply within 512 KiB, and clients ask again from where it
/// stops).
pub const MAX_EXTENTS: usize = 1 << 16;

/// An option reply: magic, option, reply type, length, data.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + data.len());
    v.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&reply.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// `NBD_REP_SERVER` for `NBD_OPT_LIST`: name, then the description for
/// humans.
pub fn server_reply(name: &str, description: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(description.as_bytes());
    option_reply(OPT_LIST, REP_SERVER, &d)
}

/// `NBD_REP_INFO` with `NBD_INFO_EXPORT`: size and transmission flags.
pub fn info_export(option: u32, size: u64, flags: u16) -> Vec<u8> {
    let mut d = INFO_EXPORT.to_be_bytes().to_vec();
    d.extend_from_slice(&size.to_be_bytes());
    d.extend_from_slice(&flags.to_be_bytes());
    option_reply(option, REP_INFO, &d)
}

/// `NBD_REP_INFO` with `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION`.
pub fn info_string(option: u32, kind: u16, s: &str) -> Vec<u8> {
    let mut d = kind.to_be_bytes().to_vec();
    d.extend_from_slice(s.as_bytes());
    option_reply(option, REP_INFO, &d)
}

/// `NBD_REP_INFO` with `NBD_INFO_BLOCK_SIZE`.
pub fn info_block_size(option: u32, min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    for v in [min, preferred, max] {
        d.extend_from_slice(&v.to_be_bytes());
    }
    option_reply(option, REP_INFO, &d)
}

/// `NBD_REP_META_CONTEXT`: context id and name.
pub fn meta_context_reply(option: u32, id: u32, name: &str) -> Vec<u8> {
    let mut d = id.to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    option_reply(option, REP_META_CONTEXT, &d)
}

/// The answer to `NBD_OPT_EXPORT_NAME`: size, flags and, unless the client
/// set `NBD_FLAG_C_NO_ZEROES`, 124 zero bytes.
pub fn export_name_reply(size: u64, flags: u16, zeroes: bool) -> Vec<u8> {
    let mut v = size.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    if zeroes {
        v.resize(v.len() + 124, 0);
    }
    v
}

/// A simple reply without data (`errno` 0 is success).
pub fn simple_reply(errno: u32, cookie: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&errno.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v
}

fn chunk_header(v: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, len: u32) {
    v.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
}

/// A successful read reply with room for `len` data bytes, zeroed: a simple
/// reply, or one final `NBD_REPLY_TYPE_OFFSET_DATA` chunk. Returns the buffer
/// and where the data starts in it.
pub fn read_reply_header(structured: bool, cookie: u64, offset: u64, len: u32) -> (Vec<u8>, usize) {
    let head = if structured { 28 } else { 16 };
    let mut v = Vec::with_capacity(head + len as usize);
    if structured {
        let kind = REPLY_TYPE_OFFSET_DATA;
        chunk_header(&mut v, REPLY_FLAG_DONE, kind, cookie, len.saturating_add(8));
        v.extend_from_slice(&offset.to_be_bytes());
    } else {
        v.extend_from_slice(&simple_reply(0, cookie));
    }
    v.resize(head + len as usize, 0);
    (v, head)
}

/// A final error chunk: `NBD_REPLY_TYPE_ERROR_OFFSET` when `offset` is
/// given, else `NBD_REPLY_TYPE_ERROR`. The message is cut to 4096 bytes
/// at a character boundary.
pub fn error_chunk(cookie: u64, errno: u32, message: &str, offset: Option<u64>) -> Vec<u8> {
    let mut cut = message.len().min(MAX_STRING_LEN);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let msg = &message.as_bytes()[..cut];
    let (kind, tail) = match offset {
        Some(_) => (REPLY_TYPE_ERROR_OFFSET, 8),
        None => (REPLY_TYPE_ERROR, 0),
    };
    let len = 6 + msg.len() + tail;
    let mut v = Vec::with_capacity(20 + len);
    chunk_header(&mut v, REPLY_FLAG_DONE, kind, cookie, len as u32);
    v.extend_from_slice(&wire_errno(errno).to_be_bytes());
    v.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    v.extend_from_slice(msg);
    if let Some(o) = offset {
        v.extend_from_slice(&o.to_be_bytes());
    }
    v
}

/// A final `NBD_REPLY_TYPE_BLOCK_STATUS` chunk for a request of `length`
/// bytes from what the volume reported: zero-length extents are skipped,
/// neighbours with equal flags merged, the list cut at `length` (so every
/// descriptor fits 32 bits), after one descriptor with `req_one`, and at
/// [`MAX_EXTENTS`]. `None` if no descriptor is left.
pub fn block_status_chunk(
    cookie: u64,
    context: u32,
    extents: &[Extent],
    length: u32,
    req_one: bool,
) -> Option<Vec<u8>> {
    let mut descs: Vec<(u32, u32)> = Vec::new();
    let mut covered = 0u32;
    for e in extents {
        let left = length - covered;
        if left == 0 {
            break;
        }
        if e.length == 0 {
            continue;
        }
        let len = e.length.min(u64::from(left)) as u32;
        let hole = if e.hole { STATE_HOLE } else { 0 };
        let flags = hole | if e.zero { STATE_ZERO } else { 0 };
        let full = req_one || descs.len() == MAX_EXTENTS;
        match descs.last_mut() {
            Some(last) if last.1 == flags => last.0 += len,
            Some(_) if full => break,
            _ => descs.push((len, flags)),
        }
        covered += len;
    }
    if descs.is_empty() {
        return None;
    }
    let len = 4 + 8 * descs.len();
    let mut v = Vec::with_capacity(20 + len);
    chunk_header(
        &mut v,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        len as u32,
    );
    v.extend_from_slice(&context.to_be_bytes());
    for (l, f) in descs {
        v.extend_from_slice(&l.to_be_bytes());
        v.extend_from_slice(&f.to_be_bytes());
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(length: u64, hole: bool, zero: bool) -> Extent {
        Extent { length, hole, zero }
    }

    /// (length, flags) descriptors of a block status chunk.
    fn descriptors(v: &[u8]) -> Vec<(u32, u32)> {
        assert_eq!(be_u32(v, 0), Some(STRUCTURED_REPLY_MAGIC));
        assert_eq!(be_u16(v, 4), Some(REPLY_FLAG_DONE));
        assert_eq!(be_u16(v, 6), Some(REPLY_TYPE_BLOCK_STATUS));
        let len = be_u32(v, 16).unwrap() as usize;
        assert_eq!(v.len(), 20 + len);
        assert_eq!(be_u32(v, 20), Some(BASE_ALLOCATION_ID));
        v[24..]
            .chunks(8)
            .map(|c| (be_u32(c, 0).unwrap(), be_u32(c, 4).unwrap()))
            .collect()
    }

    #[test]
    fn block_status_merges_clamps_and_skips() {
        let e = [
            ext(4096, false, false),
            ext(0, true, true),
            ext(4096, false, false),
            ext(8192, true, true),
            ext(1 << 40, false, true),
        ];
        let v = block_status_chunk(9, BASE_ALLOCATION_ID, &e, 20000, false).unwrap();
        assert_eq!(
            descriptors(&v),
            vec![
                (8192, 0),
                (8192, STATE_HOLE | STATE_ZERO),
                (20000 - 16384, STATE_ZERO)
            ]
        );
        let one = block_status_chunk(9, BASE_ALLOCATION_ID, &e, 6000, true).unwrap();
        assert_eq!(descriptors(&one), vec![(6000, 0)]);
        let one = block_status_chunk(9, BASE_ALLOCATION_ID, &e, 20000, true).unwrap();
        assert_eq!(descriptors(&one), vec![(8192, 0)]);
        assert!(block_status_chunk(9, 1, &[ext(0, false, false)], 512, false).is_none());
        assert!(block_status_chunk(9, 1, &[], 512, false).is_none());
    }

    #[test]
    fn block_status_stops_at_max_extents() {
        let e: Vec<Extent> = (0..MAX_EXTENTS + 10)
            .map(|i| ext(1, i % 2 == 0, false))
            .collect();
        let v = block_status_chunk(1, 1, &e, u32::MAX, false).unwrap();
        assert_eq!(descriptors(&v).len(), MAX_EXTENTS);
    }

    #[test]
    fn error_chunks_carry_errno_message_and_offset() {
        let v = error_chunk(5, EIO, "bad sector", Some(4096));
        assert_eq!(be_u16(&v, 6), Some(REPLY_TYPE_ERROR_OFFSET));
        assert_eq!(be_u64(&v, 8), Some(5));
        assert_eq!(be_u32(&v, 16), Some(6 + 10 + 8));
        assert_eq!(be_u32(&v, 20), Some(EIO));
        assert_eq!(&v[26..36], b"bad sector");
        assert_eq!(be_u64(&v, 36), Some(4096));
        let long = "é".repeat(3000);
        let v = error_chunk(5, 1234, &long, None);
        assert_eq!(be_u16(&v, 6), Some(REPLY_TYPE_ERROR));
        assert_eq!(be_u32(&v, 20), Some(EIO), "unknown errno sent as EIO");
        let mlen = be_u16(&v, 24).unwrap() as usize;
        assert_eq!(mlen, 4096);
        assert!(std::str::from_utf8(&v[26..26 + mlen]).is_ok());
    }

    #[test]
    fn read_replies_leave_room_for_the_data() {
        let (v, at) = read_reply_header(true, 3, 512, 100);
        assert_eq!((v.len(), at), (128, 28));
        assert_eq!(be_u32(&v, 16), Some(108));
        assert_eq!(be_u64(&v, 20), Some(512));
        let (v, at) = read_reply_header(false, 3, 512, 100);
        assert_eq!((v.len(), at), (116, 16));
        assert_eq!(be_u32(&v, 0), Some(SIMPLE_REPLY_MAGIC));
        assert_eq!(be_u32(&v, 4), Some(0));
    }

    #[test]
    fn option_replies_have_the_fixed_layout() {
        let v = info_export(OPT_GO, 1 << 30, 0x1234);
        assert_eq!(be_u64(&v, 0), Some(OPT_REPLY_MAGIC));
        assert_eq!(be_u32(&v, 8), Some(OPT_GO));
        assert_eq!(be_u32(&v, 12), Some(REP_INFO));
        assert_eq!(be_u32(&v, 16), Some(12));
        assert_eq!(be_u16(&v, 20), Some(INFO_EXPORT));
        assert_eq!(be_u64(&v, 22), Some(1 << 30));
        assert_eq!(be_u16(&v, 30), Some(0x1234));
        assert_eq!(export_name_reply(1, 1, true).len(), 134);
        assert_eq!(export_name_reply(1, 1, false).len(), 10);
    }
}
