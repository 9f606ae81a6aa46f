//! Handshake options: the option header and the payloads of `NBD_OPT_INFO` /
//! `NBD_OPT_GO` and of `NBD_OPT_{LIST,SET}_META_CONTEXT`.

use super::*;

/// An option header; `length` payload bytes follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("option header of {0} bytes, not 16")]
    Length(usize),
    #[error("bad option magic {0:#018x}")]
    BadMagic(u64),
    /// The payload is longer than [`MAX_OPTION_LEN`]: not read, the
    /// connection closes.
    #[error("option payload of {0} bytes is too long")]
    TooLong(u32),
    /// The payload does not parse: answered `NBD_REP_ERR_INVALID`.
    #[error("malformed option payload: {0}")]
    Malformed(&'static str),
}

/// Parses an option header ([`OPTION_HEADER_LEN`] bytes) and bounds its
/// length.
pub fn parse_option_header(b: &[u8]) -> Result<OptionHeader, OptionError> {
    if b.len() != OPTION_HEADER_LEN {
        return Err(OptionError::Length(b.len()));
    }
    let mut c = Cursor { b, at: 0 };
    let magic = c.u64()?;
    if magic != IHAVEOPT {
        return Err(OptionError::BadMagic(magic));
    }
    let h = OptionHeader {
        option: c.u32()?,
        length: c.u32()?,
    };
    if h.length > MAX_OPTION_LEN {
        return Err(OptionError::TooLong(h.length));
    }
    Ok(h)
}

/// `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoOption {
    pub name: String,
    /// `NBD_INFO_*` types the client asks for.
    pub requests: Vec<u16>,
}

/// Parses the payload of `NBD_OPT_INFO` / `NBD_OPT_GO`: name length, name,
/// number of information requests, the requests; nothing may follow.
pub fn parse_info_option(p: &[u8]) -> Result<InfoOption, OptionError> {
    let mut c = Cursor { b: p, at: 0 };
    let name = c.string()?;
    let n = c.u16()?;
    let list = c.take(usize::from(n) * 2)?;
    c.end()?;
    let requests = list
        .chunks_exact(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]))
        .collect();
    Ok(InfoOption { name, requests })
}

/// `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaOption {
    pub export: String,
    pub queries: Vec<String>,
}

/// Parses the payload of the meta-context options: export name length and
/// name, number of queries, each query as length and string; nothing may
/// follow.
pub fn parse_meta_option(p: &[u8]) -> Result<MetaOption, OptionError> {
    let mut c = Cursor { b: p, at: 0 };
    let export = c.string()?;
    let n = c.u32()?;
    // Each query takes at least its 4-byte length: a count that cannot fit
    // is refused before anything is allocated for it.
    if u64::from(n) * 4 > (p.len() - c.at) as u64 {
        return Err(OptionError::Malformed(
            "more queries than the payload holds",
        ));
    }
    let mut queries = Vec::new();
    for _ in 0..n {
        queries.push(c.string()?);
    }
    c.end()?;
    Ok(MetaOption { export, queries })
}

/// Checks a protocol string: at most [`MAX_STRING_LEN`] bytes of UTF-8
/// without NUL.
pub fn parse_string(b: &[u8]) -> Result<String, OptionError> {
    if b.len() > MAX_STRING_LEN {
        return Err(OptionError::Malformed("string longer than 4096 bytes"));
    }
    if b.contains(&0) {
        return Err(OptionError::Malformed("string contains NUL"));
    }
    String::from_utf8(b.to_vec()).map_err(|_| OptionError::Malformed("string is not UTF-8"))
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], OptionError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(OptionError::Malformed("length runs past the payload"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, OptionError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }

    fn u32(&mut self) -> Result<u32, OptionError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self) -> Result<u64, OptionError> {
        let hi = self.u32()?;
        let lo = self.u32()?;
        Ok((u64::from(hi) << 32) | u64::from(lo))
    }

    /// A 32-bit length and that many bytes of string.
    fn string(&mut self) -> Result<String, OptionError> {
        let n = self.u32()?;
        parse_string(self.take(n as usize)?)
    }

    fn end(&self) -> Result<(), OptionError> {
        if self.at == self.b.len() {
            Ok(())
        } else {
            Err(OptionError::Malformed("trailing bytes after the option"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn option_header_checks_magic_and_length() {
        let mut h = IHAVEOPT.to_be_bytes().to_vec();
        h.extend_from_slice(&OPT_GO.to_be_bytes());
        h.extend_from_slice(&12u32.to_be_bytes());
        assert_eq!(
            parse_option_header(&h),
            Ok(OptionHeader {
                option: OPT_GO,
                length: 12
            })
        );
        h[12..].copy_from_slice(&(MAX_OPTION_LEN + 1).to_be_bytes());
        assert_eq!(
            parse_option_header(&h),
            Err(OptionError::TooLong(MAX_OPTION_LEN + 1))
        );
        h[0] = b'J';
        assert!(matches!(
            parse_option_header(&h),
            Err(OptionError::BadMagic(_))
        ));
        assert_eq!(parse_option_header(&h[..15]), Err(OptionError::Length(15)));
    }

    #[test]
    fn info_option_parses_name_and_requests() {
        let mut p = string("disk");
        p.extend_from_slice(&[0, 2, 0, 3, 0, 1]);
        let o = parse_info_option(&p).unwrap();
        assert_eq!(o.name, "disk");
        assert_eq!(o.requests, vec![INFO_BLOCK_SIZE, INFO_NAME]);
        // Empty name and empty list: the default export.
        assert_eq!(
            parse_info_option(&[0, 0, 0, 0, 0, 0]).unwrap(),
            InfoOption {
                name: String::new(),
                requests: vec![]
            }
        );
    }

    #[test]
    fn info_option_refuses_inconsistent_lengths() {
        let mut p = string("disk");
        p.extend_from_slice(&[0, 2, 0, 3]); // two requests announced, one sent
        assert!(parse_info_option(&p).is_err());
        p.extend_from_slice(&[0, 1, 9]); // one byte too many
        assert!(parse_info_option(&p).is_err());
        assert!(parse_info_option(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_err());
        assert!(
            parse_info_option(&[0, 0, 0, 1, 0xff, 0, 0]).is_err(),
            "invalid UTF-8"
        );
        assert!(
            parse_info_option(&[0, 0, 0, 1, 0, 0, 0]).is_err(),
            "NUL in name"
        );
    }

    #[test]
    fn meta_option_parses_queries() {
        let mut p = string("");
        p.extend_from_slice(&2u32.to_be_bytes());
        p.extend(string("base:"));
        p.extend(string("qemu:dirty-bitmap:x"));
        let o = parse_meta_option(&p).unwrap();
        assert_eq!(o.export, "");
        assert_eq!(o.queries, vec!["base:", "qemu:dirty-bitmap:x"]);
    }

    #[test]
    fn meta_option_refuses_impossible_counts_without_allocating() {
        let mut p = string("x");
        p.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            parse_meta_option(&p),
            Err(OptionError::Malformed(
                "more queries than the payload holds"
            ))
        );
        let mut p = string("x");
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(&100u32.to_be_bytes()); // query longer than what is left
        assert!(parse_meta_option(&p).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_option_header(&b);
            let _ = parse_info_option(&b);
            let _ = parse_meta_option(&b);
        }

        #[test]
        fn info_round_trips(name in "[a-z/]{0,40}", reqs in proptest::collection::vec(any::<u16>(), 0..8)) {
            let mut p = string(&name);
            p.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
            for r in &reqs {
                p.extend_from_slice(&r.to_be_bytes());
            }
            prop_assert_eq!(parse_info_option(&p), Ok(InfoOption { name, requests: reqs }));
        }
    }
}
