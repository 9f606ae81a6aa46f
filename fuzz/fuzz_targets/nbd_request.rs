//! The sans-IO NBD parsers (baton_nbd::proto): request headers and their
//! validation, option headers and payloads, block status encoding.
#![no_main]

use baton_nbd::Extent;
use baton_nbd::proto::*;
use libfuzzer_sys::fuzz_target;

fn string(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(&(s.len() as u32).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
}

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.get(..REQUEST_LEN)
        && let Ok(r) = parse_request(h)
    {
        assert_eq!(&r.encode()[..], h, "request headers round-trip");
        for (structured, read_only) in [(false, false), (true, false), (true, true)] {
            let l = Limits {
                size: 1 << 20,
                max_request: 1 << 16,
                read_only,
                structured,
                block_status: structured,
            };
            match validate_request(&r, &l) {
                Ok(()) if !matches!(r.command, Command::Disc | Command::Flush) => {
                    assert!(r.length > 0);
                    assert!(r.offset + u64::from(r.length) <= l.size);
                    assert!(r.payload_len() <= l.max_request);
                    assert!(
                        !read_only
                            || r.command == Command::Read
                            || r.command == Command::Cache
                            || r.command == Command::BlockStatus
                    );
                }
                Ok(()) => {}
                Err(Rejection::Errno { errno, .. }) => {
                    assert!(r.payload_len() <= MAX_DISCARD_LEN.max(l.max_request));
                    assert_eq!(wire_errno(errno), errno);
                }
                Err(Rejection::Close { .. }) => assert!(r.payload_len() > MAX_DISCARD_LEN),
            }
        }
    }
    if let Some(h) = data.get(..OPTION_HEADER_LEN)
        && let Ok(o) = parse_option_header(h)
    {
        assert!(o.length <= MAX_OPTION_LEN);
    }
    // Option payloads are canonical: what parses re-encodes to the input.
    if let Ok(o) = parse_info_option(data) {
        let mut v = Vec::new();
        string(&mut v, &o.name);
        v.extend_from_slice(&(o.requests.len() as u16).to_be_bytes());
        for r in &o.requests {
            v.extend_from_slice(&r.to_be_bytes());
        }
        assert_eq!(v, data);
    }
    if let Ok(m) = parse_meta_option(data) {
        let mut v = Vec::new();
        string(&mut v, &m.export);
        v.extend_from_slice(&(m.queries.len() as u32).to_be_bytes());
        for q in &m.queries {
            string(&mut v, q);
        }
        assert_eq!(v, data);
    }
    // Block status from arbitrary extents: within the request, nonzero.
    if data.len() >= 5 {
        let length = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let req_one = data[4] & 1 != 0;
        let extents: Vec<Extent> = data[5..]
            .chunks_exact(3)
            .map(|c| Extent {
                length: u64::from(u16::from_be_bytes([c[0], c[1]])) << (c[2] % 40),
                hole: c[2] & 0x40 != 0,
                zero: c[2] & 0x80 != 0,
            })
            .collect();
        if let Some(chunk) = block_status_chunk(1, 1, &extents, length, req_one) {
            let descs: Vec<(u64, u32)> = chunk[24..]
                .chunks_exact(8)
                .map(|d| {
                    let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
                    (u64::from(len), u32::from_be_bytes([d[4], d[5], d[6], d[7]]))
                })
                .collect();
            assert!(!descs.is_empty() && descs.len() <= MAX_EXTENTS);
            assert!(!req_one || descs.len() == 1);
            assert!(descs.iter().all(|d| d.0 > 0 && d.1 & !3 == 0));
            assert!(descs.iter().map(|d| d.0).sum::<u64>() <= u64::from(length));
        }
    }
});
