//! The fixed newstyle handshake: greeting, client flags, then options until
//! the client enters transmission (`NBD_OPT_GO`, `NBD_OPT_EXPORT_NAME`) or
//! aborts.

use crate::ProtocolError;
use crate::ServerConfig;
use crate::proto::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The export as the handshake describes it.
pub(crate) struct Export<'a> {
    pub cfg: &'a ServerConfig,
    pub size: u64,
    pub read_only: bool,
}

impl Export<'_> {
    /// The configured name, and `""` for the default export.
    fn matches(&self, name: &str) -> bool {
        name.is_empty() || name == self.cfg.export_name
    }

    /// Transmission flags; `NBD_FLAG_SEND_DF` only with structured replies,
    /// and no write features on a read-only export.
    pub fn flags(&self, structured: bool) -> u16 {
        let mut f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN | FLAG_SEND_CACHE;
        if self.read_only {
            f |= FLAG_READ_ONLY;
        } else {
            f |= FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
        }
        if structured {
            f |= FLAG_SEND_DF;
        }
        f
    }
}

/// What the client negotiated for transmission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Negotiated {
    pub structured: bool,
    /// `base:allocation` selected.
    pub block_status: bool,
}

/// How the handshake ended.
pub(crate) enum Outcome {
    Transmission(Negotiated),
    /// `NBD_OPT_ABORT`, or the client closed between options.
    Closed,
}

/// What to do after answering one option.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Continue,
    Transmission,
    Abort,
}

pub(crate) async fn handshake<S>(s: &mut S, export: &Export<'_>) -> Result<Outcome, ProtocolError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut greeting = NBD_MAGIC.to_be_bytes().to_vec();
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&greeting).await?;
    s.flush().await?;

    let client = s.read_u32().await?;
    if client & FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(ProtocolError::violation(
            "client does not speak fixed newstyle",
        ));
    }
    if client & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(ProtocolError::violation(format!(
            "unknown client flags {client:#x}"
        )));
    }
    let zeroes = client & FLAG_C_NO_ZEROES == 0;

    let mut state = Negotiated::default();
    loop {
        let mut h = [0u8; OPTION_HEADER_LEN];
        match s.read_exact(&mut h).await {
            Ok(_) => {}
            // A client that only probed (or read the list) and hung up.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Outcome::Closed),
            Err(e) => return Err(e.into()),
        }
        let h = parse_option_header(&h).map_err(|e| ProtocolError::violation(e.to_string()))?;
        // Bounded by MAX_OPTION_LEN.
        let mut payload = vec![0u8; h.length as usize];
        s.read_exact(&mut payload).await?;
        let (reply, next) = answer(h.option, &payload, &mut state, export, zeroes)?;
        s.write_all(&reply).await?;
        s.flush().await?;
        match next {
            Next::Continue => {}
            Next::Transmission => return Ok(Outcome::Transmission(state)),
            Next::Abort => return Ok(Outcome::Closed),
        }
    }
}

fn error(option: u32, reply: u32, message: &str) -> (Vec<u8>, Next) {
    (
        option_reply(option, reply, message.as_bytes()),
        Next::Continue,
    )
}

/// Answers one option: the bytes to send and what follows.
fn answer(
    option: u32,
    payload: &[u8],
    st: &mut Negotiated,
    export: &Export<'_>,
    zeroes: bool,
) -> Result<(Vec<u8>, Next), ProtocolError> {
    let ack = option_reply(option, REP_ACK, &[]);
    Ok(match option {
        OPT_EXPORT_NAME => {
            let name = parse_string(payload).map_err(|_| {
                ProtocolError::UnknownExport(String::from_utf8_lossy(payload).into())
            })?;
            if !export.matches(&name) {
                return Err(ProtocolError::UnknownExport(name));
            }
            let flags = export.flags(st.structured);
            (
                export_name_reply(export.size, flags, zeroes),
                Next::Transmission,
            )
        }
        OPT_ABORT => (ack, Next::Abort),
        OPT_LIST if !payload.is_empty() => error(option, REP_ERR_INVALID, "LIST takes no data"),
        OPT_LIST => {
            let mut v = server_reply(&export.cfg.export_name, &export.cfg.description);
            v.extend_from_slice(&ack);
            (v, Next::Continue)
        }
        OPT_INFO | OPT_GO => {
            let o = match parse_info_option(payload) {
                Ok(o) => o,
                Err(e) => return Ok(error(option, REP_ERR_INVALID, &e.to_string())),
            };
            if !export.matches(&o.name) {
                return Ok(error(option, REP_ERR_UNKNOWN, "no such export"));
            }
            let mut v = info_export(option, export.size, export.flags(st.structured));
            let cfg = export.cfg;
            if o.requests.contains(&INFO_NAME) {
                v.extend(info_string(option, INFO_NAME, &cfg.export_name));
            }
            if o.requests.contains(&INFO_DESCRIPTION) && !cfg.description.is_empty() {
                v.extend(info_string(option, INFO_DESCRIPTION, &cfg.description));
            }
            let (min, preferred, max) = cfg.block_sizes();
            v.extend(info_block_size(option, min, preferred, max));
            v.extend_from_slice(&ack);
            let next = if option == OPT_GO {
                Next::Transmission
            } else {
                Next::Continue
            };
            (v, next)
        }
        OPT_STRUCTURED_REPLY if !payload.is_empty() => {
            error(option, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data")
        }
        OPT_STRUCTURED_REPLY if st.structured => error(
            option,
            REP_ERR_INVALID,
            "structured replies already negotiated",
        ),
        OPT_STRUCTURED_REPLY => {
            st.structured = true;
            (ack, Next::Continue)
        }
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => meta_context(option, payload, st, export),
        OPT_STARTTLS => error(option, REP_ERR_UNSUP, "TLS is not supported"),
        OPT_EXTENDED_HEADERS => error(option, REP_ERR_UNSUP, "extended headers are not supported"),
        _ => error(option, REP_ERR_UNSUP, "unknown option"),
    })
}

/// `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`; the only
/// context is `base:allocation` (`base:` lists it too).
fn meta_context(
    option: u32,
    payload: &[u8],
    st: &mut Negotiated,
    export: &Export<'_>,
) -> (Vec<u8>, Next) {
    let set = option == OPT_SET_META_CONTEXT;
    if set {
        // Replaces the earlier selection, even when it fails.
        st.block_status = false;
    }
    if !st.structured {
        return error(
            option,
            REP_ERR_INVALID,
            "negotiate structured replies first",
        );
    }
    let m = match parse_meta_option(payload) {
        Ok(m) => m,
        Err(e) => return error(option, REP_ERR_INVALID, &e.to_string()),
    };
    if !export.matches(&m.export) {
        return error(option, REP_ERR_UNKNOWN, "no such export");
    }
    let is = |q: &String| q == BASE_ALLOCATION || (!set && q == "base:");
    let selected = m.queries.iter().any(is) || (!set && m.queries.is_empty());
    let mut v = Vec::new();
    if selected {
        // Ids in a LIST reply are reserved (zero).
        let id = if set { BASE_ALLOCATION_ID } else { 0 };
        v.extend(meta_context_reply(option, id, BASE_ALLOCATION));
        st.block_status = set;
    }
    v.extend(option_reply(option, REP_ACK, &[]));
    (v, Next::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(cfg: &ServerConfig) -> Export<'_> {
        Export {
            cfg,
            size: 1 << 20,
            read_only: false,
        }
    }

    fn meta_payload(name: &str, queries: &[&str]) -> Vec<u8> {
        let mut p = (name.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            p.extend_from_slice(&(q.len() as u32).to_be_bytes());
            p.extend_from_slice(q.as_bytes());
        }
        p
    }

    /// The reply types in a run of option replies.
    fn reply_types(mut v: &[u8]) -> Vec<u32> {
        let mut out = Vec::new();
        while !v.is_empty() {
            assert_eq!(be_u64(v, 0), Some(OPT_REPLY_MAGIC));
            out.push(be_u32(v, 12).unwrap());
            let len = be_u32(v, 16).unwrap() as usize;
            v = &v[20 + len..];
        }
        out
    }

    #[test]
    fn meta_contexts_need_structured_replies_and_replace_each_other() {
        let cfg = ServerConfig::default();
        let e = export(&cfg);
        let mut st = Negotiated::default();
        let p = meta_payload("", &[BASE_ALLOCATION]);
        let (v, _) = answer(OPT_SET_META_CONTEXT, &p, &mut st, &e, false).unwrap();
        assert_eq!(reply_types(&v), vec![REP_ERR_INVALID]);
        answer(OPT_STRUCTURED_REPLY, &[], &mut st, &e, false).unwrap();
        let (v, _) = answer(OPT_SET_META_CONTEXT, &p, &mut st, &e, false).unwrap();
        assert_eq!(reply_types(&v), vec![REP_META_CONTEXT, REP_ACK]);
        assert!(st.block_status);
        // Zero queries select nothing, and replace the earlier selection.
        let (v, _) = answer(
            OPT_SET_META_CONTEXT,
            &meta_payload("baton", &[]),
            &mut st,
            &e,
            false,
        )
        .unwrap();
        assert_eq!(reply_types(&v), vec![REP_ACK]);
        assert!(!st.block_status);
        // LIST with the wildcard finds base:allocation; an unknown namespace nothing.
        for (q, want) in [
            (&["base:"][..], vec![REP_META_CONTEXT, REP_ACK]),
            (&[][..], vec![REP_META_CONTEXT, REP_ACK]),
            (&["qemu:dirty-bitmap:a"][..], vec![REP_ACK]),
        ] {
            let p = meta_payload("baton", q);
            let (v, _) = answer(OPT_LIST_META_CONTEXT, &p, &mut st, &e, false).unwrap();
            assert_eq!(reply_types(&v), want, "{q:?}");
        }
        let p = meta_payload("other", &[BASE_ALLOCATION]);
        let (v, _) = answer(OPT_SET_META_CONTEXT, &p, &mut st, &e, false).unwrap();
        assert_eq!(reply_types(&v), vec![REP_ERR_UNKNOWN]);
    }

    #[test]
    fn structured_reply_twice_is_invalid() {
        let cfg = ServerConfig::default();
        let e = export(&cfg);
        let mut st = Negotiated::default();
        let (v, _) = answer(OPT_STRUCTURED_REPLY, &[], &mut st, &e, false).unwrap();
        assert_eq!(reply_types(&v), vec![REP_ACK]);
        let (v, _) = answer(OPT_STRUCTURED_REPLY, &[], &mut st, &e, false).unwrap();
        assert_eq!(reply_types(&v), vec![REP_ERR_INVALID]);
    }

    #[test]
    fn info_and_go_describe_the_export() {
        let cfg = ServerConfig {
            description: "a disk".into(),
            ..ServerConfig::default()
        };
        let e = export(&cfg);
        let mut st = Negotiated::default();
        let mut p = 5u32.to_be_bytes().to_vec();
        p.extend_from_slice(b"baton");
        p.extend_from_slice(&[0, 2, 0, INFO_NAME as u8, 0, INFO_DESCRIPTION as u8]);
        let (v, next) = answer(OPT_INFO, &p, &mut st, &e, false).unwrap();
        assert_eq!(next, Next::Continue);
        assert_eq!(
            reply_types(&v),
            vec![REP_INFO; 4]
                .into_iter()
                .chain([REP_ACK])
                .collect::<Vec<_>>()
        );
        let (_, next) = answer(OPT_GO, &[0; 6], &mut st, &e, false).unwrap();
        assert_eq!(next, Next::Transmission);
        let (v, _) = answer(OPT_GO, b"\0\0\0\x03bad\0\0", &mut st, &e, false).unwrap();
        assert_eq!(reply_types(&v), vec![REP_ERR_UNKNOWN]);
        let (v, _) = answer(OPT_GO, b"\0\0\0\x09bad\0\0", &mut st, &e, false).unwrap();
        assert_eq!(reply_types(&v), vec![REP_ERR_INVALID]);
        for unsupported in [OPT_STARTTLS, OPT_EXTENDED_HEADERS, 4, 12, 0xdead] {
            let (v, _) = answer(unsupported, &[], &mut st, &e, false).unwrap();
            assert_eq!(reply_types(&v), vec![REP_ERR_UNSUP]);
        }
        assert!(matches!(
            answer(OPT_EXPORT_NAME, b"nope", &mut st, &e, true),
            Err(ProtocolError::UnknownExport(n)) if n == "nope"
        ));
    }

    #[test]
    fn read_only_exports_advertise_no_write_features() {
        let cfg = ServerConfig::default();
        let ro = Export {
            cfg: &cfg,
            size: 1,
            read_only: true,
        };
        let f = ro.flags(false);
        assert_ne!(f & FLAG_READ_ONLY, 0);
        assert_eq!(
            f & (FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FUA | FLAG_SEND_DF),
            0
        );
        let rw = export(&cfg).flags(true);
        assert_eq!(rw & FLAG_READ_ONLY, 0);
        assert_ne!(rw & FLAG_SEND_DF, 0);
        assert_ne!(rw & FLAG_CAN_MULTI_CONN, 0);
    }
}
