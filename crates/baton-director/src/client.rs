//! A blocking client of the director's API (for `baton ctl`, enrolment and
//! the synchronous core): HTTPS with the director's CA as the only root,
//! and either an API token or the node's own certificate.

use baton_wire::{
    AgentJobs, ApiError, EnrolRequest, EnrolResponse, ErrorCode, JobList, JobSpec, JournalAck,
    JournalShip, MediaAgentList, MediaHeartbeat, MediaState, NodeList, Pool, PoolList, Role,
    RunList, TokenRequest, TokenResponse, Whoami,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The director answered with an error.
    #[error("director: {} ({:?})", .0.message, .0.code)]
    Api(ApiError),
    /// It could not be reached, or the connection failed.
    #[error("cannot reach the director: {0}")]
    Transport(String),
    /// The TLS handshake was refused: a certificate not accepted (by the
    /// director: forged, expired or revoked; or the director's by us).
    #[error("the TLS connection was refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Local(String),
}

impl ClientError {
    /// Whether the same call may succeed later without anyone acting.
    pub fn retry_later(&self) -> bool {
        match self {
            ClientError::Api(e) => e.code.retry_later(),
            ClientError::Transport(_) => true,
            ClientError::Refused(_) | ClientError::Local(_) => false,
        }
    }

    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api(e) => Some(e.code),
            ClientError::Refused(_) => Some(ErrorCode::Unauthenticated),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// How the client proves who it is.
enum Auth {
    None,
    Token(String),
}

pub struct Client {
    base: String,
    agent: ureq::Agent,
    auth: Auth,
}

/// A failed exchange: a refused TLS handshake (an alert, a certificate
/// not accepted) or else a transport failure.
fn transport(e: ureq::Error) -> ClientError {
    let msg = e.to_string();
    let lower = msg.to_ascii_lowercase();
    if lower.contains("alert") {
        // The server ended the handshake: it did not accept us.
        ClientError::Refused(msg)
    } else if matches!(e, ureq::Error::Rustls(_)) || lower.contains("certificate") {
        // We did not accept the server: not the director we know.
        ClientError::Local(format!(
            "the server's certificate is not the director's (or not valid): {msg}"
        ))
    } else {
        ClientError::Transport(msg)
    }
}

fn local(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Local(format!("{what}: {e}"))
}

/// The director's base URL, checked to be `https://`: tokens and secrets
/// never travel in the clear.
fn https(base: &str) -> Result<String> {
    let base = base.trim_end_matches('/');
    if !base.starts_with("https://") {
        return Err(ClientError::Local(format!(
            "{base:?}: the director is reached over https:// only"
        )));
    }
    Ok(base.to_string())
}

fn agent(tls: TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .tls_config(tls)
        .https_only(true)
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .new_agent()
}

fn roots(ca_pem: &str) -> Result<RootCerts> {
    let ca = Certificate::from_pem(ca_pem.as_bytes()).map_err(|e| local("CA certificate", e))?;
    Ok(RootCerts::Specific(Arc::new(vec![ca])))
}

impl Client {
    /// A client for people and `baton ctl`: an API token.
    pub fn with_token(base: &str, ca_pem: &str, token: &str) -> Result<Client> {
        let tls = TlsConfig::builder().root_certs(roots(ca_pem)?).build();
        Ok(Client {
            base: https(base)?,
            agent: agent(tls),
            auth: Auth::Token(token.trim().to_string()),
        })
    }

    /// A client for an enrolled node: its certificate and key (PEM).
    pub fn with_cert(base: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Client> {
        {
            // The key must be the certificate's (ureq would panic otherwise).
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::{CertificateDer, PrivateKeyDer};
            let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
                .map_err(|e| local("certificate", e))?;
            let key =
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| local("key", e))?;
            rustls::sign::CertifiedKey::from_der(
                vec![cert],
                key,
                &rustls::crypto::ring::default_provider(),
            )
            .map_err(|e| local("the key does not go with the certificate", e))?;
        }
        let cert =
            Certificate::from_pem(cert_pem.as_bytes()).map_err(|e| local("certificate", e))?;
        let key = PrivateKey::from_pem(key_pem.as_bytes()).map_err(|e| local("key", e))?;
        let tls = TlsConfig::builder()
            .root_certs(roots(ca_pem)?)
            .client_cert(Some(ClientCert::new_with_certs(&[cert], key)))
            .build();
        Ok(Client {
            base: https(base)?,
            agent: agent(tls),
            auth: Auth::None,
        })
    }

    /// A client for a node enrolled into `state_dir` ([`enrol`]).
    pub fn for_node(base: &str, state_dir: &Path) -> Result<Client> {
        finish_renewal(state_dir)?;
        let read = |f: &str| {
            std::fs::read_to_string(state_dir.join(f))
                .map_err(|e| local(&format!("{}", state_dir.join(f).display()), e))
        };
        Client::with_cert(
            base,
            &read("ca.pem")?,
            &read("cert.pem")?,
            &read("key.pem")?,
        )
    }

    fn answer<T: DeserializeOwned>(
        r: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T> {
        Self::answer_within(r, 16 << 20)
    }

    /// An answer of at most `limit` bytes.
    fn answer_within<T: DeserializeOwned>(
        r: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        limit: u64,
    ) -> Result<T> {
        let mut r = r.map_err(transport)?;
        let ok = r.status().is_success();
        let body = r
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_string()
            .map_err(transport)?;
        if ok {
            serde_json::from_str(&body)
                .map_err(|e| ClientError::Transport(format!("unreadable answer: {e}")))
        } else {
            Err(match serde_json::from_str::<ApiError>(&body) {
                Ok(e) => ClientError::Api(e),
                Err(_) => ClientError::Transport(format!("HTTP {}: {body}", r.status())),
            })
        }
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Self::answer(self.request("GET", path).call())
    }

    /// A request of `method` to `path`, with the version header and the
    /// API token if any.
    fn request(
        &self,
        method: &str,
        path: &str,
    ) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "DELETE" => self.agent.delete(url),
            _ => self.agent.get(url),
        }
        .header(baton_wire::VERSION_HEADER, baton_wire::VERSION.to_string());
        if let Auth::Token(t) = &self.auth {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req
    }

    fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Self::answer(self.request("DELETE", path).call())
    }

    /// A JSON body sent with `method` (POST or PUT).
    fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.send_within(method, path, body, None, 16 << 20)
    }

    /// [`Client::send`], given up after `within` (instead of 30 s).
    fn send_within<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
        within: Option<std::time::Duration>,
        limit: u64,
    ) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "PUT" => self.agent.put(url),
            _ => self.agent.post(url),
        }
        .header(baton_wire::VERSION_HEADER, baton_wire::VERSION.to_string())
        .header("content-type", "application/json");
        if let Auth::Token(t) = &self.auth {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(d) = within {
            req = req.config().timeout_global(Some(d)).build();
        }
        let body = serde_json::to_vec(body).map_err(|e| local("request", e))?;
        Self::answer_within(req.send(&body[..]), limit)
    }

    fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send("POST", path, body)
    }

    pub fn create_token(
        &self,
        role: Role,
        name: &str,
        ttl_s: Option<u64>,
    ) -> Result<TokenResponse> {
        self.post(
            "/v1/tokens",
            &TokenRequest {
                role,
                name: name.to_string(),
                ttl_s,
            },
        )
    }

    pub fn nodes(&self) -> Result<NodeList> {
        self.get("/v1/nodes")
    }

    pub fn revoke(&self, name: &str) -> Result<NodeList> {
        if !baton_wire::valid_node_name(name) {
            return Err(ClientError::Local(format!("{name:?} is not a node name")));
        }
        self.post(&format!("/v1/nodes/{name}/revoke"), &serde_json::json!({}))
    }

    pub fn whoami(&self) -> Result<Whoami> {
        self.get("/v1/whoami")
    }

    pub fn add_pool(&self, pool: &Pool) -> Result<PoolList> {
        self.post("/v1/pools", pool)
    }

    pub fn pools(&self) -> Result<PoolList> {
        self.get("/v1/pools")
    }

    pub fn add_job(&self, job: &JobSpec) -> Result<JobList> {
        self.post("/v1/jobs", job)
    }

    pub fn jobs(&self) -> Result<JobList> {
        self.get("/v1/jobs")
    }

    pub fn remove_job(&self, name: &str) -> Result<JobList> {
        if !baton_wire::valid_node_name(name) {
            return Err(ClientError::Local(format!("{name:?} is not a job name")));
        }
        self.delete(&format!("/v1/jobs/{name}"))
    }

    /// The calling agent's jobs (node certificate).
    pub fn agent_jobs(&self) -> Result<AgentJobs> {
        self.get("/v1/agent/jobs")
    }

    /// An agent reports its load and data sets; its jobs come back, with
    /// the director's decision for each due job's data set.
    pub fn agent_status(&self, st: &baton_wire::NodeStatus) -> Result<AgentJobs> {
        self.post("/v1/agent/status", st)
    }

    /// [`Client::agent_status`] without asking for decisions (a report
    /// only).
    pub fn report_status(&self, st: &baton_wire::NodeStatus) -> Result<AgentJobs> {
        self.post("/v1/agent/status?decide=0", st)
    }

    pub fn add_dataset(&self, d: &baton_wire::Dataset) -> Result<baton_wire::DatasetList> {
        self.post("/v1/datasets", d)
    }

    pub fn datasets(&self) -> Result<baton_wire::DatasetList> {
        self.get("/v1/datasets")
    }

    pub fn decisions(&self) -> Result<baton_wire::DecisionList> {
        self.get("/v1/decisions")
    }

    /// An agent reports a fire drill's result.
    pub fn report_drill(&self, r: &baton_wire::DrillRecord) -> Result<baton_wire::DrillRecord> {
        self.post("/v1/agent/drills", r)
    }

    /// An agent reports where a replication to a second site stands.
    pub fn report_replication(
        &self,
        r: &baton_wire::ReplicationRecord,
    ) -> Result<baton_wire::ReplicationRecord> {
        self.post("/v1/agent/replications", r)
    }

    pub fn drills(&self) -> Result<baton_wire::DrillList> {
        self.get("/v1/drills")
    }

    pub fn replications(&self) -> Result<baton_wire::ReplicationList> {
        self.get("/v1/replications")
    }

    /// A media agent's heartbeat, given up after 2 s: one stuck on a
    /// broken network must not hold back the next (its lease would lapse
    /// while the network is back).
    pub fn heartbeat(&self, beat: &MediaHeartbeat) -> Result<MediaState> {
        self.send_within(
            "POST",
            "/v1/media/heartbeat",
            beat,
            Some(std::time::Duration::from_secs(2)),
            16 << 20,
        )
    }

    /// A media agent forwards a journal record; `Ok` once it is durable.
    pub fn ship_journal(&self, ship: &JournalShip) -> Result<JournalAck> {
        self.post("/v1/media/journal", ship)
    }

    /// A media agent asks whether an agent's object claim holds.
    pub fn claim(&self, c: &baton_wire::ObjectClaim) -> Result<baton_wire::ObjectClaim> {
        self.post("/v1/media/objects", c)
    }

    /// A media agent asks for a running job's shipped journal: an agent
    /// moved the job to it.
    pub fn handover(&self, h: &baton_wire::HandoverRequest) -> Result<baton_wire::HandoverJournal> {
        // Every pack of the job, 67 bytes each: 256 MiB holds millions.
        self.send_within("POST", "/v1/media/handover", h, None, 256 << 20)
    }

    /// A media agent reports what it found applying a handed-over journal.
    pub fn handover_checked(
        &self,
        c: &baton_wire::HandoverChecked,
    ) -> Result<baton_wire::HandoverInfo> {
        self.post("/v1/media/handover/checked", c)
    }

    /// Sets the media agents that serve `pool`.
    pub fn set_pool_media(&self, pool: &str, media: &[String]) -> Result<PoolList> {
        if !baton_wire::valid_node_name(pool) {
            return Err(ClientError::Local(format!("{pool:?} is not a pool name")));
        }
        self.send("PUT", &format!("/v1/pools/{pool}/media-agents"), &media)
    }

    /// The live media agents of `pool`, the least loaded first (an agent).
    pub fn agent_media(&self, pool: &str) -> Result<MediaAgentList> {
        if !baton_wire::valid_node_name(pool) {
            return Err(ClientError::Local(format!("{pool:?} is not a pool name")));
        }
        self.get(&format!("/v1/agent/media?pool={pool}"))
    }

    /// [`Client::agent_media`] to check that one is still live (not
    /// counted as choosing it).
    pub fn probe_media(&self, pool: &str) -> Result<MediaAgentList> {
        if !baton_wire::valid_node_name(pool) {
            return Err(ClientError::Local(format!("{pool:?} is not a pool name")));
        }
        self.get(&format!("/v1/agent/media?pool={pool}&probe=1"))
    }

    pub fn media_agents(&self) -> Result<MediaAgentList> {
        self.get("/v1/media-agents")
    }

    pub fn runs(&self) -> Result<RunList> {
        self.get("/v1/runs")
    }

    pub fn api_tokens(&self) -> Result<baton_wire::ApiTokenList> {
        self.get("/v1/api-tokens")
    }

    pub fn add_api_token(&self, name: &str) -> Result<baton_wire::NewApiToken> {
        self.post(
            "/v1/api-tokens",
            &baton_wire::ApiTokenRequest {
                name: name.to_string(),
            },
        )
    }

    pub fn revoke_api_token(&self, id: &str) -> Result<baton_wire::ApiTokenList> {
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ClientError::Local(format!(
                "{id:?}: an API token's id is 16 hex digits (ctl api-tokens lists them)"
            )));
        }
        self.delete(&format!("/v1/api-tokens/{id}"))
    }

    /// The id of the API token this client uses.
    pub fn token_id(&self) -> Option<String> {
        match &self.auth {
            Auth::Token(t) => Some(crate::server::secret_hash(t)[..16].to_string()),
            Auth::None => None,
        }
    }

    /// Asks for a run of `job` now.
    pub fn request_run(&self, job: &str) -> Result<JobList> {
        if !baton_wire::valid_node_name(job) {
            return Err(ClientError::Local(format!("{job:?} is not a job name")));
        }
        self.post(&format!("/v1/jobs/{job}/run"), &serde_json::json!({}))
    }

    /// An agent reports a run.
    pub fn report_run(&self, r: &baton_wire::RunReport) -> Result<baton_wire::RunReport> {
        self.post("/v1/agent/runs", r)
    }
}

/// Enrols this machine with the director at `base` using a one-time
/// `token`: fetches the director's CA certificate and checks it against the
/// fingerprint the token carries (before the token's secret is sent), makes
/// a key that never leaves `state_dir`, and stores the certificate the
/// director issues for it there (`key.pem` mode 0600, `cert.pem`, `ca.pem`).
pub fn enrol(base: &str, token: &str, state_dir: &Path) -> Result<EnrolResponse> {
    let base = &https(base)?;
    // Where the key goes is checked first: a token is used up by the
    // director's answer.
    std::fs::create_dir_all(state_dir).map_err(|e| local("state directory", e))?;
    write_private(&state_dir.join("probe"), b"")?;
    let _ = std::fs::remove_file(state_dir.join("probe"));
    let (fp, _) = crate::server::parse_token(token).ok_or_else(|| {
        ClientError::Local("not an enrolment token (baton-enrol-1.<fingerprint>.<secret>)".into())
    })?;
    // The CA certificate is public; what is fetched is checked against the
    // fingerprint in the token, so an impostor gains nothing.
    let unverified = agent(TlsConfig::builder().disable_verification(true).build());
    let mut r = unverified
        .get(format!("{base}/v1/ca"))
        .header(baton_wire::VERSION_HEADER, baton_wire::VERSION.to_string())
        .call()
        .map_err(transport)?;
    let ca_pem = r
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .map_err(transport)?;
    let ca_der = {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| ClientError::Transport(format!("the director's CA certificate: {e}")))?
    };
    // Only the first certificate, exactly as checked, is kept.
    let ca_pem = first_pem_block(&ca_pem)
        .ok_or_else(|| ClientError::Transport("the director's CA certificate".into()))?;
    if crate::pki::fingerprint(&ca_der) != fp {
        return Err(ClientError::Local(format!(
            "the server at {base} is not the director that made this token (its CA's fingerprint differs)"
        )));
    }
    let (key_pem, csr_pem) =
        crate::pki::node_key_and_csr("baton-node").map_err(|e| local("making a key", e))?;
    let tls = TlsConfig::builder().root_certs(roots(&ca_pem)?).build();
    let client = Client {
        base: base.to_string(),
        agent: agent(tls),
        auth: Auth::None,
    };
    let answer: EnrolResponse = client.post(
        "/v1/enrol",
        &EnrolRequest {
            token: token.trim().to_string(),
            csr_pem,
        },
    )?;
    write_private(&state_dir.join("key.pem"), key_pem.as_bytes())?;
    write_private(&state_dir.join("cert.pem"), answer.cert_pem.as_bytes())?;
    write_private(&state_dir.join("ca.pem"), ca_pem.as_bytes())?;
    Ok(answer)
}

/// Finishes a renewal a crash interrupted: its new key and certificate
/// are written whole (`*.pem.new`) before either replaces the old, the key
/// first; a certificate left waiting goes in with its key, a lone key is
/// dropped (the next check renews again).
pub fn finish_renewal(state_dir: &Path) -> Result<()> {
    let (key_new, cert_new) = (
        state_dir.join("key.pem.new"),
        state_dir.join("cert.pem.new"),
    );
    let mv = |from: &Path, to: &str| {
        std::fs::rename(from, state_dir.join(to)).map_err(|e| local(&from.display().to_string(), e))
    };
    if cert_new.exists() {
        if key_new.exists() {
            mv(&key_new, "key.pem")?;
        }
        mv(&cert_new, "cert.pem")?;
    } else if key_new.exists() {
        std::fs::remove_file(&key_new).map_err(|e| local(&key_new.display().to_string(), e))?;
    }
    Ok(())
}

impl Client {
    /// Renews this node's certificate (the one this client was made with)
    /// when it is due (a third of its validity left, or a newer one was
    /// issued whose key this node does not have): a new key, and the new
    /// certificate, replace the old in `state_dir`. The old certificate
    /// stays valid until it expires, so work under way with it goes on;
    /// clients made from `state_dir` from now on use the new one.
    pub fn renew_if_due(&self, state_dir: &Path, now: i64) -> Result<Option<EnrolResponse>> {
        finish_renewal(state_dir)?;
        let me = self.whoami()?;
        if !me.renewal_due(now) {
            return Ok(None);
        }
        let (key_pem, csr_pem) =
            crate::pki::node_key_and_csr("baton-node").map_err(|e| local("making a key", e))?;
        let answer: EnrolResponse =
            self.post("/v1/renew", &baton_wire::RenewRequest { csr_pem })?;
        write_private(&state_dir.join("key.pem.new"), key_pem.as_bytes())?;
        write_private(&state_dir.join("cert.pem.new"), answer.cert_pem.as_bytes())?;
        finish_renewal(state_dir)?;
        Ok(Some(answer))
    }
}

/// The first `-----BEGIN CERTIFICATE-----` block of `pem`, with its end
/// line.
fn first_pem_block(pem: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find("-----BEGIN CERTIFICATE-----")?;
    let end = pem[start..].find(END)? + start + END.len();
    Some(format!("{}\n", &pem[start..end]))
}

/// Writes `path` whole (a new file, mode 0600, synced, then renamed).
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| local(&tmp.display().to_string(), e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| local(&tmp.display().to_string(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| local(&path.display().to_string(), e))
}
