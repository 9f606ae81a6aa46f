//! The director's HTTPS API. Every connection is TLS; a node presents the
//! certificate the director issued it (mutual TLS, checked against the CA
//! and its revocation list at the handshake, then looked up by
//! fingerprint); a person or `baton ctl` presents an API token. The only
//! answers given without either are the CA certificate (public) and
//! enrolment, which a one-time token authenticates.

use crate::pki::{self, Ca};
use crate::store::{Store, StoreError};
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_wire::{
    AgentJob, AgentJobs, ApiError, EnrolRequest, EnrolResponse, ErrorCode, Grant, JobList, JobSpec,
    JournalAck, JournalShip, MediaAgentInfo, MediaAgentList, MediaHeartbeat, MediaState, NodeList,
    Pool, PoolList, Role, RunList, RunReport, RunState, TokenRequest, TokenResponse, Whoami,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// How a director runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where its SQLite database (by default) and its admin token live.
    pub state_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; default: `state_dir/director.db`.
    pub database: Option<String>,
    pub listen: SocketAddr,
    /// Host names and addresses its certificate names (besides `localhost`
    /// and the loopback addresses).
    pub hostnames: Vec<String>,
    /// How long node certificates are valid, in seconds.
    pub cert_validity_s: i64,
    /// URLs events are POSTed to.
    pub webhooks: Vec<String>,
    /// The secret webhook bodies are signed with (HMAC-SHA256).
    pub webhook_secret: Option<Vec<u8>>,
    /// A media agent whose writes take this many times longer (per MiB)
    /// than its pool's fastest is told to cease; 0: never.
    pub rebalance_ratio: f64,
    /// How long the director's own server certificate is valid; it is
    /// renewed while the director runs, when a third of that is left.
    pub server_cert_validity_s: i64,
}

/// The default of [`Config::server_cert_validity_s`]: a year.
pub const SERVER_CERT_VALIDITY_S: i64 = 365 * 86400;

#[derive(Debug, thiserror::Error)]
pub enum DirectorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("the system's random source");
    hex::encode(b)
}

/// How secrets (enrolment and API tokens) are stored: their BLAKE3 hash
/// (they are 256 random bits, so no slow hash is needed).
pub fn secret_hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// The prefix of enrolment tokens (their format's version).
pub const TOKEN_PREFIX: &str = "baton-enrol-1";

/// Splits an enrolment token into the CA fingerprint and the secret.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let mut parts = token.trim().split('.');
    let (Some(TOKEN_PREFIX), Some(fp), Some(secret), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    (fp.len() == 64 && secret.len() == 64).then_some((fp, secret))
}

struct Inner {
    store: Store,
    ca: Ca,
    ca_fingerprint: String,
    cfg: Config,
    /// Rebuilt when a certificate is revoked: new connections check the
    /// new revocation list.
    tls: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    /// Held while a new TLS configuration is built and swapped in; the
    /// number of revoked certificates it was built with.
    reloading: tokio::sync::Mutex<usize>,
    /// The director's server certificate and key (PEM), renewed while it
    /// runs; when it expires; the names it carries.
    server_cert: RwLock<(String, String)>,
    server_cert_expires: std::sync::atomic::AtomicI64,
    hosts: Vec<String>,
    counters: Counters,
    hooks: std::sync::OnceLock<crate::webhooks::Webhooks>,
    /// Media agents as their heartbeats tell them (not persisted: a
    /// restarted director knows them again within one heartbeat).
    media: std::sync::Mutex<std::collections::HashMap<String, MediaEntry>>,
    /// The fastest writes (ms per MiB) any media agent of each pool
    /// reported: the baseline a slower one is measured against when its
    /// peers are idle.
    best_write: std::sync::Mutex<std::collections::HashMap<String, f64>>,
    failovers: AtomicU64,
    handovers: AtomicU64,
    /// One decision at a time (two nodes' jobs asking at once get the
    /// same), and how many of each outcome per data set.
    deciding: tokio::sync::Mutex<()>,
    decided: std::sync::Mutex<std::collections::BTreeMap<(String, String), u64>>,
    /// Drills reported since start, by name and result; the last RTO of each.
    drilled: std::sync::Mutex<std::collections::BTreeMap<(String, String, bool), u64>>,
    last_rto: std::sync::Mutex<std::collections::BTreeMap<(String, String), f64>>,
    /// The last acknowledged replication of each agent to each second
    /// site: its sequence and lag.
    replication_lag: std::sync::Mutex<std::collections::BTreeMap<(String, String), (u64, f64)>>,
    /// Data sets whose decision waits for a node's report, since when.
    waiting: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

struct MediaEntry {
    beat: MediaHeartbeat,
    seen: std::time::Instant,
    /// Agents pointed at it since its last heartbeat (so that agents
    /// asking at once are spread before its load shows them).
    handed: u64,
    /// Told to cease until then (unbalanced, failing).
    ceased_until: Option<std::time::Instant>,
    /// Storage errors it reported at the previous heartbeat.
    errors: u64,
    /// Heartbeats in a row that found it much slower than its pool.
    slow_beats: u32,
    /// Its lease epoch: the time (ms) its current unbroken lease began.
    epoch: u64,
}

/// How long a media agent told to cease stays out of its pools.
const CEASE_FOR: std::time::Duration = std::time::Duration::from_secs(60);
/// Slower than this (ms per MiB: 20 MiB/s) is never "unbalanced": a busy
/// disk's fsync, noise on an idle pool.
const REBALANCE_FLOOR_MS_PER_MIB: f64 = 50.0;
/// Heartbeats in a row a media agent must be unbalanced before it is told
/// to cease (one slow write is no trend).
const SLOW_BEATS: u32 = 3;

/// How long a media agent may take data after the director last answered
/// its heartbeat (it beats every [`LEASE_MS`] / 6).
pub const LEASE_MS: u64 = 3000;

/// What `/metrics` counts since the start.
#[derive(Default)]
struct Counters {
    handshakes_failed: AtomicU64,
    enrolments: AtomicU64,
    enrolments_refused: AtomicU64,
    renewals: AtomicU64,
    requests_refused: AtomicU64,
}

impl Inner {
    fn notify(&self, event: &'static str, node: Option<&str>, message: String) {
        if let Some(h) = self.hooks.get() {
            h.send(event, node, message);
        }
    }
}

/// A director, its state opened and its port bound.
pub struct Director {
    inner: Arc<Inner>,
    listener: tokio::net::TcpListener,
    /// A new admin API token, when this start made the first one.
    pub new_admin_token: Option<String>,
}

impl Director {
    pub async fn start(cfg: Config) -> Result<Director, DirectorError> {
        // The state holds the CA's key: private to this user.
        let io = |what: &std::path::Path, e| DirectorError::Io(what.display().to_string(), e);
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&cfg.state_dir)
                .map_err(|e| io(&cfg.state_dir, e))?;
            std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io(&cfg.state_dir, e))?;
        }
        let url = match &cfg.database {
            Some(u) => u.clone(),
            None => {
                use std::os::unix::fs::OpenOptionsExt;
                let db = cfg.state_dir.join("director.db");
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(&db)
                    .map_err(|e| io(&db, e))?;
                format!("sqlite://{}?mode=rwc", db.display())
            }
        };
        let store = Store::open(&url).await?;
        let now = now();
        // The CA: made once; two directors sharing a database agree on the
        // first one stored.
        // Certificate and key in one row: whoever stores first wins whole.
        let stored = match store.meta("ca").await? {
            Some(v) => v,
            None => {
                let ca = Ca::create(&hostname(), now)?;
                let v = serde_json::json!({ "cert": ca.cert_pem, "key": ca.key_pem() });
                store.meta_set_once("ca", &v.to_string()).await?
            }
        };
        let v: serde_json::Value =
            serde_json::from_str(&stored).map_err(|_| StoreError::Corrupt("CA".into()))?;
        let (Some(c), Some(k)) = (v["cert"].as_str(), v["key"].as_str()) else {
            return Err(StoreError::Corrupt("CA".into()).into());
        };
        let ca = Ca::load(c, k)?;
        let new_admin_token = if store.api_token_count().await? == 0 {
            let token = random_hex(32);
            // On disk before it counts: a token whose file could not be
            // written would leave no way in.
            let file = cfg.state_dir.join("admin.token");
            crate::client::write_private(&file, token.as_bytes())
                .map_err(|e| DirectorError::Tls(e.to_string()))?;
            store
                .add_api_token(&secret_hash(&token), "admin", now)
                .await?;
            Some(token)
        } else {
            None
        };
        let mut hosts = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        hosts.extend(cfg.hostnames.iter().cloned());
        if !cfg.listen.ip().is_unspecified() {
            hosts.push(cfg.listen.ip().to_string());
        }
        hosts.sort();
        hosts.dedup();
        let server_cert = ca.issue_server(&hosts, now, cfg.server_cert_validity_s)?;
        let tls = tls_config(&ca, &store, &server_cert).await?;
        let server_cert_expires =
            std::sync::atomic::AtomicI64::new(now + cfg.server_cert_validity_s);
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| DirectorError::Io(format!("listening on {}", cfg.listen), e))?;
        let ca_fingerprint = ca.fingerprint()?;
        Ok(Director {
            inner: Arc::new(Inner {
                store,
                ca,
                ca_fingerprint,
                cfg,
                tls: Arc::new(RwLock::new(tls)),
                reloading: tokio::sync::Mutex::new(usize::MAX),
                server_cert: RwLock::new(server_cert),
                server_cert_expires,
                hosts,
                counters: Counters::default(),
                hooks: std::sync::OnceLock::new(),
                media: Default::default(),
                best_write: Default::default(),
                failovers: AtomicU64::new(0),
                handovers: AtomicU64::new(0),
                deciding: tokio::sync::Mutex::new(()),
                decided: std::sync::Mutex::new(Default::default()),
                drilled: std::sync::Mutex::new(Default::default()),
                last_rto: std::sync::Mutex::new(Default::default()),
                replication_lag: std::sync::Mutex::new(Default::default()),
                waiting: std::sync::Mutex::new(Default::default()),
            }),
            listener,
            new_admin_token,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn ca_pem(&self) -> &str {
        &self.inner.ca.cert_pem
    }

    pub fn ca_fingerprint(&self) -> &str {
        &self.inner.ca_fingerprint
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let _ = self.inner.hooks.set(crate::webhooks::Webhooks::start(
            self.inner.cfg.webhooks.clone(),
            self.inner.cfg.webhook_secret.clone(),
        ));
        let router = router(self.inner.clone());
        // Revocations made by another director sharing the database reach
        // this one's handshakes within seconds.
        let watch = {
            let inner = self.inner.clone();
            async move {
                let every = (inner.cfg.server_cert_validity_s / 10).clamp(1, 5) as u64;
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(every)).await;
                    if let Err(e) = renew_server_cert(&inner).await {
                        eprintln!("director: renewing its server certificate failed: {}", e.1);
                    }
                    let _ = reload_tls(&inner, false).await;
                }
            }
        };
        let failed: Arc<dyn Fn() + Send + Sync> = {
            let inner = self.inner.clone();
            Arc::new(move || {
                inner
                    .counters
                    .handshakes_failed
                    .fetch_add(1, Ordering::Relaxed);
            })
        };
        let accept = crate::tls::serve(self.listener, self.inner.tls.clone(), router, failed);
        tokio::select! {
            () = accept => {}
            () = watch => {}
            () = shutdown => {}
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "director".into())
}

async fn tls_config(
    ca: &Ca,
    store: &Store,
    server_cert: &(String, String),
) -> Result<Arc<rustls::ServerConfig>, DirectorError> {
    let revoked = store.revoked(now()).await?;
    let number = revoked.len() as u64 + 1;
    let crl = ca.crl(&revoked, number, now())?;
    let chain = vec![
        crate::tls::cert_der(&server_cert.0).map_err(DirectorError::Tls)?,
        ca.cert_der()?,
    ];
    // Enrolment and API-token requests come without a certificate; every
    // handler says which it needs.
    crate::tls::server_config(&ca.cert_der()?, crl, true, chain, &server_cert.1)
        .map_err(DirectorError::Tls)
}

/// The fingerprint of the certificate the connection presented, if any
/// (already checked against the CA and its revocation list).
use crate::tls::Peer;

/// An error answer.
struct Fail(ErrorCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let status = match self.0 {
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Invalid | ErrorCode::Version => StatusCode::BAD_REQUEST,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(ApiError {
                code: self.0,
                message: self.1,
            }),
        )
            .into_response()
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        match e {
            StoreError::Db(_) => {
                // The details (host names, the server's words) go to the
                // log, not to whoever asked.
                eprintln!("director: {e}");
                Fail(
                    ErrorCode::Unavailable,
                    "the director's database is unavailable; try again later".into(),
                )
            }
            StoreError::Conflict(m) => Fail(ErrorCode::Conflict, m),
            StoreError::Corrupt(_) | StoreError::Refused(_) => {
                eprintln!("director: {e}");
                Fail(
                    ErrorCode::Internal,
                    "the director failed; see its log".into(),
                )
            }
        }
    }
}

impl From<DirectorError> for Fail {
    fn from(e: DirectorError) -> Fail {
        match e {
            DirectorError::Store(s) => s.into(),
            e => Fail(ErrorCode::Internal, e.to_string()),
        }
    }
}

type Answer<T> = Result<Json<T>, Fail>;

fn router(inner: Arc<Inner>) -> Router {
    // Who may call what is checked before anything of the request is read.
    let admin = Router::new()
        .route("/v1/tokens", post(create_token))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{name}/revoke", post(revoke))
        .route("/metrics", get(metrics))
        .route("/v1/pools", post(add_pool).get(pools))
        .route(
            "/v1/pools/{name}/media-agents",
            axum::routing::put(set_pool_media),
        )
        .route("/v1/jobs", post(add_job).get(jobs))
        .route("/v1/jobs/{name}", axum::routing::delete(remove_job))
        .route("/v1/media-agents", get(media_agents))
        .route("/v1/api-tokens", get(api_tokens).post(add_api_token))
        .route(
            "/v1/api-tokens/{id}",
            axum::routing::delete(revoke_api_token),
        )
        .route("/v1/runs", get(runs))
        .route("/v1/datasets", post(add_dataset).get(datasets))
        .route("/v1/decisions", get(decisions))
        .route("/v1/drills", get(drills))
        .route("/v1/replications", get(replications))
        .route("/v1/jobs/{name}/run", post(request_run))
        .route_layer(axum::middleware::from_fn_with_state(
            inner.clone(),
            require_api_token,
        ));
    let nodes = Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/renew", post(renew))
        .route("/v1/agent/jobs", get(agent_jobs))
        .route("/v1/agent/media", get(agent_media))
        .route("/v1/agent/runs", post(report_run))
        .route("/v1/agent/status", post(agent_status))
        .route("/v1/agent/drills", post(report_drill))
        .route("/v1/agent/replications", post(report_replication))
        .route("/v1/media/heartbeat", post(heartbeat))
        .route(
            "/v1/media/journal",
            // Hex doubles a record; the JSON around it is small.
            post(ship_journal).layer(axum::extract::DefaultBodyLimit::max(
                2 * baton_wire::MAX_JOURNAL_RECORD + (1 << 20),
            )),
        )
        .route("/v1/media/objects", post(claim_object))
        .route("/v1/media/handover", post(handover))
        .route("/v1/media/handover/checked", post(handover_checked))
        .route_layer(axum::middleware::from_fn_with_state(
            inner.clone(),
            require_node,
        ));
    Router::new()
        .route("/v1/ca", get(ca))
        .route("/v1/enrol", post(enrol))
        .merge(admin)
        .merge(nodes)
        .fallback(|| async { Fail(ErrorCode::NotFound, "no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            Fail(
                ErrorCode::NotFound,
                "no such endpoint (not with this method)".into(),
            )
        })
        .layer(axum::middleware::from_fn(check_version))
        .with_state(inner)
}

/// Whether `name` is one the director's certificate carries, or looks
/// like an address.
fn names_the_director(inner: &Inner, name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "localhost"
        || n.parse::<std::net::IpAddr>().is_ok()
        || n.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        || inner
            .cfg
            .hostnames
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&n))
        || n == hostname().to_ascii_lowercase()
}

/// A request refused for want of credentials: counted, answered.
fn refused(inner: &Inner, f: Fail) -> Response {
    inner
        .counters
        .requests_refused
        .fetch_add(1, Ordering::Relaxed);
    f.into_response()
}

/// Lets through only requests with a known API token.
async fn require_api_token(
    State(inner): State<Arc<Inner>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match api_user(&inner, req.headers()).await {
        Ok(_) => next.run(req).await,
        Err(f) => refused(&inner, f),
    }
}

/// Lets through only requests on a connection with the certificate of an
/// enrolled node that is not revoked; the handler finds the node in the
/// request's extensions.
async fn require_node(
    State(inner): State<Arc<Inner>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = Peer::of(&req);
    match node_of(&inner, &peer).await {
        Ok(node) => {
            req.extensions_mut().insert(node);
            next.run(req).await
        }
        Err(f) => refused(&inner, f),
    }
}

/// Refuses a request that says it speaks another wire version.
async fn check_version(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Some(v) = req.headers().get(baton_wire::VERSION_HEADER) {
        let theirs = v.to_str().ok().and_then(|s| s.parse::<u32>().ok());
        if theirs != Some(baton_wire::VERSION) {
            return Fail(
                ErrorCode::Version,
                format!(
                    "this director speaks wire version {}; the request says {:?}",
                    baton_wire::VERSION,
                    v
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The API token of a request (`Authorization: Bearer ...`), checked.
async fn api_user(inner: &Inner, headers: &HeaderMap) -> Result<String, Fail> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Fail(
                ErrorCode::Unauthenticated,
                "an API token is needed (Authorization: Bearer TOKEN)".into(),
            )
        })?;
    inner
        .store
        .api_token(&secret_hash(token.trim()))
        .await?
        .ok_or_else(|| Fail(ErrorCode::Unauthenticated, "unknown API token".into()))
}

/// The enrolled node a connection's certificate belongs to.
async fn node_of(inner: &Inner, peer: &Peer) -> Result<crate::store::Node, Fail> {
    let fp = peer.0.as_deref().ok_or_else(|| {
        Fail(
            ErrorCode::Unauthenticated,
            "a node certificate is needed (enrol first)".into(),
        )
    })?;
    let node = inner
        .store
        .node_by_fingerprint(fp)
        .await?
        .ok_or_else(|| Fail(ErrorCode::Unauthenticated, "unknown certificate".into()))?;
    // A renewed certificate is revoked from its expiry on.
    if node.info.revoked.is_some_and(|t| t <= now()) {
        return Err(Fail(
            ErrorCode::Forbidden,
            "this certificate is revoked".into(),
        ));
    }
    if node.info.not_after <= now() {
        return Err(Fail(
            ErrorCode::Forbidden,
            "this certificate has expired".into(),
        ));
    }
    Ok(node)
}

async fn ca(State(inner): State<Arc<Inner>>) -> String {
    inner.ca.cert_pem.clone()
}

async fn enrol(
    State(inner): State<Arc<Inner>>,
    req: Result<Json<EnrolRequest>, axum::extract::rejection::JsonRejection>,
) -> Answer<EnrolResponse> {
    let req = body(req)?;
    let (fp, secret) = parse_token(&req.token).ok_or_else(|| {
        Fail(
            ErrorCode::Unauthenticated,
            "malformed enrolment token".into(),
        )
    })?;
    if fp != inner.ca_fingerprint {
        return Err(Fail(
            ErrorCode::Unauthenticated,
            "this token was made by another director".into(),
        ));
    }
    // A request that cannot succeed does not use up the token.
    pki::check_csr(&req.csr_pem).map_err(|e| Fail(ErrorCode::Invalid, e.to_string()))?;
    let now = now();
    let validity = inner.cfg.cert_validity_s;
    let enrolled = inner
        .store
        .enrol(&secret_hash(secret), now, |role, name| {
            let issued = inner
                .ca
                .issue_node(&req.csr_pem, role, name, now, validity)
                .map_err(|e| StoreError::Refused(e.to_string()))?;
            let info = baton_wire::NodeInfo {
                name: name.to_string(),
                role,
                serial: issued.serial.clone(),
                enrolled: now,
                not_after: issued.not_after,
                revoked: None,
            };
            Ok((info, issued.fingerprint.clone(), issued))
        })
        .await
        .map_err(|e| match e {
            StoreError::Refused(m) => Fail(ErrorCode::Invalid, m),
            e => e.into(),
        })?;
    let Some((info, issued)) = enrolled else {
        inner
            .counters
            .enrolments_refused
            .fetch_add(1, Ordering::Relaxed);
        inner.notify(
            "enrolment_refused",
            None,
            "an enrolment with an unknown, used or expired token was refused".into(),
        );
        return Err(Fail(
            ErrorCode::Unauthenticated,
            "unknown, used or expired enrolment token".into(),
        ));
    };
    let (role, name) = (info.role, info.name);
    inner.counters.enrolments.fetch_add(1, Ordering::Relaxed);
    inner.notify(
        "node_enrolled",
        Some(&name),
        format!(
            "{} {name:?} enrolled (certificate {})",
            role.as_str(),
            issued.serial
        ),
    );
    // An earlier certificate of this name is revoked now.
    reload_tls(&inner, true).await?;
    Ok(Json(EnrolResponse {
        name,
        role,
        cert_pem: issued.cert_pem,
        ca_pem: inner.ca.cert_pem.clone(),
        serial: issued.serial,
        not_after: issued.not_after,
    }))
}

/// Builds a TLS configuration with the current revocation list and swaps
/// it in (one at a time, so an older list never replaces a newer one);
/// unless `force`, only if the number of revoked certificates changed.
async fn reload_tls(inner: &Inner, force: bool) -> Result<(), Fail> {
    let mut built_with = inner.reloading.lock().await;
    let revoked = inner.store.revoked(now()).await?.len();
    if !force && revoked == *built_with {
        return Ok(());
    }
    let cert = inner.server_cert.read().expect("server cert").clone();
    let cfg = tls_config(&inner.ca, &inner.store, &cert).await?;
    *inner.tls.write().expect("tls config") = cfg;
    *built_with = revoked;
    Ok(())
}

/// Issues the director a new server certificate when a third of its
/// validity is left, and serves new connections with it.
async fn renew_server_cert(inner: &Inner) -> Result<(), Fail> {
    let now = now();
    let validity = inner.cfg.server_cert_validity_s;
    if inner.server_cert_expires.load(Ordering::Relaxed) - now > validity / 3 {
        return Ok(());
    }
    let cert = inner
        .ca
        .issue_server(&inner.hosts, now, validity)
        .map_err(|e| Fail(ErrorCode::Internal, e.to_string()))?;
    *inner.server_cert.write().expect("server cert") = cert;
    inner
        .server_cert_expires
        .store(now + validity, Ordering::Relaxed);
    reload_tls(inner, true).await
}

/// A JSON body, or an error answer in the documented shape.
fn body<T>(b: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, Fail> {
    b.map(|Json(v)| v).map_err(|e| {
        Fail(
            ErrorCode::Invalid,
            format!("request body: {}", e.body_text()),
        )
    })
}

async fn whoami(Extension(node): Extension<crate::store::Node>) -> Answer<Whoami> {
    Ok(Json(Whoami {
        name: node.info.name,
        role: node.info.role,
        serial: node.info.serial,
        issued: node.info.enrolled,
        not_after: node.info.not_after,
        renewed: node.info.revoked.is_some(),
    }))
}

/// A node renews its certificate (with it): a new one for the same name
/// and role, from a new key. The old one stays valid until it expires, so
/// work under way with it goes on; only the current certificate renews.
async fn renew(
    State(inner): State<Arc<Inner>>,
    Extension(node): Extension<crate::store::Node>,
    req: Result<Json<baton_wire::RenewRequest>, axum::extract::rejection::JsonRejection>,
) -> Answer<EnrolResponse> {
    let req = body(req)?;
    pki::check_csr(&req.csr_pem).map_err(|e| Fail(ErrorCode::Invalid, e.to_string()))?;
    let now = now();
    let issued = inner
        .ca
        .issue_node(
            &req.csr_pem,
            node.info.role,
            &node.info.name,
            now,
            inner.cfg.cert_validity_s,
        )
        .map_err(|e| Fail(ErrorCode::Invalid, e.to_string()))?;
    let info = baton_wire::NodeInfo {
        name: node.info.name.clone(),
        role: node.info.role,
        serial: issued.serial.clone(),
        enrolled: now,
        not_after: issued.not_after,
        revoked: None,
    };
    if !inner
        .store
        .renew(
            &node.info.serial,
            node.info.not_after,
            &info,
            &issued.fingerprint,
        )
        .await?
    {
        return Err(Fail(
            ErrorCode::Conflict,
            "this certificate was renewed already: use the newer one".into(),
        ));
    }
    inner.counters.renewals.fetch_add(1, Ordering::Relaxed);
    Ok(Json(EnrolResponse {
        name: info.name,
        role: info.role,
        cert_pem: issued.cert_pem,
        ca_pem: inner.ca.cert_pem.clone(),
        serial: issued.serial,
        not_after: issued.not_after,
    }))
}

async fn create_token(
    State(inner): State<Arc<Inner>>,
    req: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Answer<TokenResponse> {
    let req = body(req)?;
    if !baton_wire::valid_node_name(&req.name) {
        return Err(Fail(
            ErrorCode::Invalid,
            format!(
                "{:?} is not a valid node name (1 to 64 of A-Z a-z 0-9 . - _)",
                req.name
            ),
        ));
    }
    if req.role == baton_wire::Role::MediaAgent
        && (req
            .name
            .bytes()
            .any(|b| b.is_ascii_uppercase() || b == b'_'))
    {
        // Host names compare without case, and take no `_`: two media
        // agents must never share one.
        return Err(Fail(
            ErrorCode::Invalid,
            format!(
                "{:?}: a media agent's name is lower case letters, digits, `.` and `-`",
                req.name
            ),
        ));
    }
    if req.role == baton_wire::Role::MediaAgent && names_the_director(&inner, &req.name) {
        // A media agent's certificate names it as a server: it must not
        // name the director (or an address), or that machine could pose
        // as the director to nodes and people.
        return Err(Fail(
            ErrorCode::Invalid,
            format!(
                "{:?} is a name of the director, or an address: a media agent needs its own host name",
                req.name
            ),
        ));
    }
    let ttl = req.ttl_s.unwrap_or(3600).clamp(1, 30 * 86400) as i64;
    let secret = random_hex(32);
    let expires = now() + ttl;
    inner
        .store
        .add_enrol_token(&secret_hash(&secret), req.role, &req.name, expires)
        .await?;
    Ok(Json(TokenResponse {
        token: format!("{TOKEN_PREFIX}.{}.{secret}", inner.ca_fingerprint),
        role: req.role,
        name: req.name,
        expires,
    }))
}

async fn nodes(State(inner): State<Arc<Inner>>) -> Answer<NodeList> {
    let nodes = inner.store.nodes().await?;
    Ok(Json(NodeList {
        nodes: nodes.into_iter().map(|n| n.info).collect(),
    }))
}

async fn revoke(State(inner): State<Arc<Inner>>, Path(name): Path<String>) -> Answer<NodeList> {
    if inner.store.revoke(&name, now()).await? == 0 {
        return Err(Fail(
            ErrorCode::NotFound,
            format!("no node {name:?} with a valid certificate"),
        ));
    }
    reload_tls(&inner, true).await?;
    inner.notify(
        "certificate_revoked",
        Some(&name),
        format!("the certificate of {name:?} was revoked"),
    );
    let nodes = inner.store.nodes().await?;
    Ok(Json(NodeList {
        nodes: nodes
            .into_iter()
            .filter(|n| n.info.name == name)
            .map(|n| n.info)
            .collect(),
    }))
}

/// Prometheus text format: the nodes by role and state, and what was
/// refused since the start.
async fn metrics(State(inner): State<Arc<Inner>>) -> Result<String, Fail> {
    use std::fmt::Write;
    let nodes = inner.store.nodes().await?;
    let now = now();
    let mut by: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
    for n in &nodes {
        let state = match n.info.revoked {
            Some(t) if t <= now => "revoked",
            _ if n.info.not_after < now => "expired",
            Some(_) => "renewed",
            None => "valid",
        };
        *by.entry((n.info.role.as_str(), state)).or_default() += 1;
    }
    let mut out = String::new();
    out.push_str(
        "# HELP baton_director_certificates Node certificates issued, by role and state.\n",
    );
    out.push_str("# TYPE baton_director_certificates gauge\n");
    for role in ["agent", "media-agent"] {
        for state in ["valid", "renewed", "expired", "revoked"] {
            let n = by.get(&(role, state)).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "baton_director_certificates{{role=\"{role}\",state=\"{state}\"}} {n}"
            );
        }
    }
    let c = &inner.counters;
    for (name, help, v) in [
        (
            "baton_director_enrolments_total",
            "Nodes enrolled.",
            &c.enrolments,
        ),
        (
            "baton_director_enrolments_refused_total",
            "Enrolments refused (unknown, used or expired token).",
            &c.enrolments_refused,
        ),
        (
            "baton_director_renewals_total",
            "Node certificates renewed by their nodes.",
            &c.renewals,
        ),
        (
            "baton_director_requests_refused_total",
            "Requests refused for want of a valid API token or node certificate.",
            &c.requests_refused,
        ),
        (
            "baton_director_tls_handshakes_failed_total",
            "TLS handshakes that failed (forged, expired or revoked certificates among them).",
            &c.handshakes_failed,
        ),
        (
            "baton_director_failovers_total",
            "Media agents told to cease (failing, or slower than their pool's others).",
            &inner.failovers,
        ),
        (
            "baton_director_handovers_total",
            "Running jobs handed from one media agent to another.",
            &inner.handovers,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Ordering::Relaxed)
        );
    }
    // Where replicated data sets were backed up from (since the start).
    out.push_str(
        "# HELP baton_director_source_decisions_total Runs of replicated data sets, by data set and outcome (secondary, primary, fallback, only-copy, refused).\n# TYPE baton_director_source_decisions_total counter\n",
    );
    for ((dataset, outcome), n) in inner.decided.lock().expect("decisions").iter() {
        let _ = writeln!(
            out,
            "baton_director_source_decisions_total{{dataset=\"{dataset}\",outcome=\"{outcome}\"}} {n}"
        );
    }
    // Fire drills and replications to second sites, as agents reported them.
    out.push_str(
        "# HELP baton_director_drills_total Fire drills reported since the start, by drill and result.\n# TYPE baton_director_drills_total counter\n",
    );
    for ((agent, name, passed), n) in inner.drilled.lock().expect("drills").iter() {
        let _ = writeln!(
            out,
            "baton_director_drills_total{{agent=\"{}\",drill=\"{}\",result=\"{}\"}} {n}",
            label(agent),
            label(name),
            if *passed { "passed" } else { "failed" }
        );
    }
    out.push_str(
        "# HELP baton_director_drill_rto_seconds The last drill's recovery time, by drill.\n# TYPE baton_director_drill_rto_seconds gauge\n",
    );
    for ((agent, name), rto) in inner.last_rto.lock().expect("drills").iter() {
        let _ = writeln!(
            out,
            "baton_director_drill_rto_seconds{{agent=\"{}\",drill=\"{}\"}} {rto}",
            label(agent),
            label(name)
        );
    }
    out.push_str(
        "# HELP baton_director_replication_lag_seconds From a snapshot's time to its acknowledgement at the second site, for the last one, by agent and site.\n# TYPE baton_director_replication_lag_seconds gauge\n# HELP baton_director_replication_applied_seq Snapshots acknowledged at the second site, by agent and site.\n# TYPE baton_director_replication_applied_seq gauge\n",
    );
    for ((agent, replica), (seq, lag)) in inner.replication_lag.lock().expect("replications").iter()
    {
        let _ = writeln!(
            out,
            "baton_director_replication_lag_seconds{{agent=\"{a}\",replica=\"{r}\"}} {lag}\nbaton_director_replication_applied_seq{{agent=\"{a}\",replica=\"{r}\"}} {seq}",
            a = label(agent),
            r = label(replica)
        );
    }
    // Media agents: liveness and load from their heartbeats.
    let media: Vec<MediaAgentInfo> = {
        let m = inner.media.lock().expect("media agents");
        m.iter().map(|(n, e)| media_info(n, e)).collect()
    };
    for (metric, help, kind) in [
        (
            "baton_media_agent_up",
            "Whether its lease is current and it is not ceased.",
            "gauge",
        ),
        (
            "baton_media_agent_queue_depth",
            "Requests it is serving.",
            "gauge",
        ),
        (
            "baton_media_agent_bytes_per_second",
            "Bytes received per second.",
            "gauge",
        ),
        (
            "baton_media_agent_cpu_percent",
            "CPU it used, percent of one core.",
            "gauge",
        ),
        (
            "baton_media_agent_write_ms_per_mib",
            "How long its writes take per MiB.",
            "gauge",
        ),
        (
            "baton_media_agent_errors_total",
            "Storage-side failures since its start.",
            "counter",
        ),
    ] {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        for m in &media {
            let v = match metric {
                "baton_media_agent_up" => f64::from(u8::from(m.alive && !m.ceased)),
                "baton_media_agent_queue_depth" => m.load.queue_depth as f64,
                "baton_media_agent_bytes_per_second" => m.load.bytes_per_s as f64,
                "baton_media_agent_cpu_percent" => m.load.cpu_percent,
                "baton_media_agent_write_ms_per_mib" => m.load.write_ms_per_mib,
                _ => m.load.errors as f64,
            };
            let _ = writeln!(out, "{metric}{{name=\"{}\"}} {v}", m.name);
        }
    }
    Ok(out)
}

fn invalid(msg: String) -> Fail {
    Fail(ErrorCode::Invalid, msg)
}

async fn add_pool(
    State(inner): State<Arc<Inner>>,
    req: Result<Json<Pool>, axum::extract::rejection::JsonRejection>,
) -> Answer<PoolList> {
    let pool = body(req)?;
    if !baton_wire::valid_node_name(&pool.name) {
        return Err(invalid(format!("{:?} is not a valid pool name", pool.name)));
    }
    if pool.repository.trim().is_empty() || pool.repository.len() > 4096 {
        return Err(invalid(
            "a pool needs its repository (a path or an s3: URL)".into(),
        ));
    }
    check_media_names(&pool.media_agents)?;
    inner.store.add_pool(&pool, now()).await?;
    Ok(Json(PoolList { pools: vec![pool] }))
}

fn check_media_names(names: &[String]) -> Result<(), Fail> {
    if names.len() > 256 {
        return Err(invalid("at most 256 media agents per pool".into()));
    }
    if let Some(bad) = names.iter().find(|n| !baton_wire::valid_node_name(n)) {
        return Err(invalid(format!("{bad:?} is not a valid media agent name")));
    }
    Ok(())
}

/// `PUT /v1/pools/{name}/media-agents`: which media agents serve a pool.
async fn set_pool_media(
    State(inner): State<Arc<Inner>>,
    Path(name): Path<String>,
    b: Result<Json<Vec<String>>, axum::extract::rejection::JsonRejection>,
) -> Answer<PoolList> {
    let media = body(b)?;
    check_media_names(&media)?;
    if !inner.store.set_pool_media(&name, &media).await? {
        return Err(Fail(ErrorCode::NotFound, format!("no pool {name:?}")));
    }
    Ok(Json(PoolList {
        pools: inner
            .store
            .pools()
            .await?
            .into_iter()
            .filter(|p| p.name == name)
            .collect(),
    }))
}

async fn pools(State(inner): State<Arc<Inner>>) -> Answer<PoolList> {
    Ok(Json(PoolList {
        pools: inner.store.pools().await?,
    }))
}

/// Checks a job definition; the reason it is refused.
fn check_job(job: &JobSpec) -> Result<(), String> {
    for (what, name) in [
        ("job", &job.name),
        ("agent", &job.agent),
        ("pool", &job.pool),
    ] {
        if !baton_wire::valid_node_name(name) {
            return Err(format!("{name:?} is not a valid {what} name"));
        }
    }
    if (job.paths.is_empty() && job.dataset.is_none()) || job.paths.len() > 1024 {
        return Err("a job backs up 1 to 1024 paths, or a data set".into());
    }
    match (&job.dataset, &job.dataset_connect) {
        (Some(d), Some(c)) => {
            if !baton_wire::valid_node_name(d) {
                return Err(format!("{d:?} is not a valid data set name"));
            }
            if c.len() > 4096 || c.contains('\0') {
                return Err("not a data set connection".into());
            }
            // The director stores it and shows it: no password in it.
            let userinfo = c
                .split_once("://")
                .and_then(|(_, rest)| rest.split('/').next())
                .and_then(|auth| auth.rsplit_once('@'))
                .map(|(u, _)| u);
            if userinfo.is_some_and(|u| u.contains(':')) || c.contains("password=") {
                return Err(
                    "keep the password out of --dataset-connect (the director stores it): give the agent PGPASSWORD or a ~/.pgpass"
                        .into(),
                );
            }
        }
        (None, None) => {}
        _ => {
            return Err("a job's data set needs --dataset-connect, and the other way round".into());
        }
    }
    if let Some(q) = &job.quiesce {
        if !job.volume_snapshot {
            return Err("--quiesce needs --volume-snapshot".into());
        }
        let ok = q.len() <= 4096
            && !q.chars().any(char::is_control)
            && match q.split_once(':') {
                Some(("postgres", url)) => {
                    url.starts_with("postgres")
                        && !url.contains("password=")
                        && !url
                            .split_once("://")
                            .and_then(|(_, rest)| rest.split('/').next())
                            .and_then(|auth| auth.rsplit_once('@'))
                            .is_some_and(|(u, _)| u.contains(':'))
                }
                Some(("fsfreeze", mount)) => mount.starts_with('/') && !mount.contains(".."),
                _ => false,
            };
        if !ok {
            return Err(
                "--quiesce is postgres:URL (no password in it) or fsfreeze:/MOUNTPOINT".into(),
            );
        }
    }
    if let Some(r) = &job.replicate_to
        && (r.is_empty()
            || r.len() > 1024
            || r.chars().any(char::is_control)
            || r.starts_with("media:"))
    {
        return Err("--replicate-to is a directory or s3:URL".into());
    }
    for p in &job.paths {
        if !p.starts_with('/') || p.contains('\0') || p.split('/').any(|c| c == "..") {
            return Err(format!("{p:?}: a job's paths are absolute, without `..`"));
        }
    }
    for t in &job.tags {
        if t.is_empty() || t.contains(',') || t.len() > 128 {
            return Err(format!("{t:?} is not a valid tag"));
        }
    }
    baton_wire::parse_schedule(&job.schedule)?;
    Ok(())
}

async fn add_job(
    State(inner): State<Arc<Inner>>,
    req: Result<Json<JobSpec>, axum::extract::rejection::JsonRejection>,
) -> Answer<JobList> {
    let job = body(req)?;
    check_job(&job).map_err(invalid)?;
    if let Some(d) = &job.dataset
        && !inner.store.datasets().await?.iter().any(|x| &x.name == d)
    {
        return Err(Fail(
            ErrorCode::NotFound,
            format!("no data set {d:?} (baton ctl dataset-add)"),
        ));
    }
    if !inner.store.add_job(&job, now()).await? {
        return Err(Fail(
            ErrorCode::NotFound,
            format!("no pool {:?} (baton ctl pool-add)", job.pool),
        ));
    }
    Ok(Json(JobList { jobs: vec![job] }))
}

async fn jobs(State(inner): State<Arc<Inner>>) -> Answer<JobList> {
    Ok(Json(JobList {
        jobs: inner
            .store
            .jobs(None)
            .await?
            .into_iter()
            .map(|(j, _)| j)
            .collect(),
    }))
}

async fn remove_job(State(inner): State<Arc<Inner>>, Path(name): Path<String>) -> Answer<JobList> {
    if !inner.store.remove_job(&name).await? {
        return Err(Fail(ErrorCode::NotFound, format!("no job {name:?}")));
    }
    Ok(Json(JobList { jobs: Vec::new() }))
}

/// The jobs of the calling agent, with their repositories: what it runs,
/// and all it may reach.
async fn agent_jobs(
    State(inner): State<Arc<Inner>>,
    Extension(node): Extension<crate::store::Node>,
) -> Answer<AgentJobs> {
    if node.info.role != baton_wire::Role::Agent {
        return Err(Fail(ErrorCode::Forbidden, "only agents have jobs".into()));
    }
    // Decisions wait for the agent's status (`POST /v1/agent/status`).
    Ok(Json(jobs_for(&inner, &node.info.name, false).await?))
}

/// An agent reports its load and its copies of data sets, before it asks
/// for its jobs: the answer is its jobs, with the director's decision for
/// each due job's data set.
async fn agent_status(
    State(inner): State<Arc<Inner>>,
    Extension(node): Extension<crate::store::Node>,
    axum::extract::Query(q): axum::extract::Query<DecideQuery>,
    b: Result<Json<baton_wire::NodeStatus>, axum::extract::rejection::JsonRejection>,
) -> Answer<AgentJobs> {
    require_role(&node, Role::Agent)?;
    let mut st = body(b)?;
    let ours: std::collections::HashSet<String> = inner
        .store
        .jobs(Some(&node.info.name))
        .await?
        .into_iter()
        .filter_map(|(j, _)| j.dataset)
        .collect();
    if st.datasets.len() > 1024 || !st.cpu_percent.is_finite() {
        return Err(invalid("not a node status".into()));
    }
    // Reports on data sets none of its jobs names are dropped (a job
    // removed while the agent probed); bounded strings, a sane interval.
    st.datasets.retain(|d| ours.contains(&d.dataset));
    st.every_s = st.every_s.clamp(1, 3600);
    st.cpu_percent = st.cpu_percent.clamp(0.0, 100.0);
    let cap = |v: &mut Option<String>| {
        if let Some(s) = v
            && s.len() > 512
        {
            let mut end = 512;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
        }
    };
    for d in &mut st.datasets {
        cap(&mut d.error);
        cap(&mut d.position);
        if d.lag_s.is_some_and(|l| !l.is_finite()) {
            d.lag_s = None;
        }
    }
    inner.store.set_status(&node.info.name, &st, now()).await?;
    Ok(Json(
        jobs_for(&inner, &node.info.name, q.decide != Some(0)).await?,
    ))
}

#[derive(serde::Deserialize)]
struct DecideQuery {
    /// `0`: a report only, no decisions.
    decide: Option<u8>,
}

/// An agent's jobs: whether each is due, and (if `decide`) for a due job
/// naming a data set, whether it backs the data set up in this run.
async fn jobs_for(inner: &Inner, agent: &str, decide: bool) -> Result<AgentJobs, Fail> {
    let jobs = inner.store.jobs(Some(agent)).await?;
    let last = inner.store.last_starts().await?;
    let requested = inner.store.run_requests().await?;
    let now = now();
    let mut out = Vec::new();
    for (job, repository) in jobs {
        let last_start = last.get(&job.name).copied();
        let due = due(&job, last_start, requested.contains_key(&job.name), now);
        let dataset = match (&job.dataset, due && decide) {
            (Some(d), true) => decision_for(
                inner,
                d,
                &job,
                last_start,
                requested.get(&job.name).copied(),
                now,
            )
            .await?
            .map(|decision| baton_wire::DatasetRun {
                chosen: decision.chosen.as_deref() == Some(agent),
                decision: decision.id,
                outcome: decision.outcome,
                reason: decision.reason,
            }),
            _ => None,
        };
        out.push(AgentJob {
            due,
            job,
            repository,
            dataset,
        });
    }
    Ok(AgentJobs { jobs: out })
}

/// The decision for this run of data set `name`: the one made for the
/// run already (by the other nodes' jobs of the same schedule: made
/// within half the schedule's period, and after this job's last start),
/// or a new one from what the nodes last reported. `None` (ask again)
/// while a node of the data set has not reported recently, for up to
/// twice the asking node's interval (at least 2 s): the first node to
/// ask after a restart does not decide alone.
async fn decision_for(
    inner: &Inner,
    name: &str,
    job: &JobSpec,
    last_start: Option<i64>,
    requested_at: Option<i64>,
    now: i64,
) -> Result<Option<baton_wire::Decision>, Fail> {
    let _one = inner.deciding.lock().await;
    let period = match baton_wire::parse_schedule(&job.schedule) {
        Ok(baton_wire::Schedule::Every(s)) => s as i64,
        _ => 86400,
    };
    // This run's decision if one was made for it: recent, after this
    // job's last start, and not older than a run asked for since.
    let reusable = inner
        .store
        .decisions(Some(name), 1)
        .await?
        .pop()
        .filter(|d| {
            now - d.at < period / 2
                && last_start.is_none_or(|s| s < d.at)
                && requested_at.is_none_or(|r| r <= d.at)
        });
    let Some(ds) = inner
        .store
        .datasets()
        .await?
        .into_iter()
        .find(|d| d.name == name)
    else {
        return Ok(Some(baton_wire::Decision {
            id: random_hex(8),
            dataset: name.to_string(),
            policy: baton_wire::SourcePolicy::PreferSecondary,
            at: now,
            chosen: None,
            outcome: "refused".into(),
            reason: format!("no data set {name:?} is defined (baton ctl dataset-add)"),
            inputs: Vec::new(),
        }));
    };
    let members: std::collections::BTreeSet<String> = inner
        .store
        .jobs(None)
        .await?
        .into_iter()
        .filter(|(j, _)| j.dataset.as_deref() == Some(name))
        .map(|(j, _)| j.agent)
        .collect();
    let reported = inner.store.statuses(name).await?;
    let inputs: Vec<baton_wire::DecisionInput> = members
        .into_iter()
        .map(|agent| {
            let r = reported.iter().find(|r| r.0 == agent);
            baton_wire::DecisionInput {
                reporting: r.is_some_and(|r| now - r.1 <= (3 * r.3).max(10)),
                age_s: r.map(|r| now - r.1),
                cpu_percent: r.map(|r| r.2),
                status: r.map(|r| r.4.clone()),
                agent,
            }
        })
        .collect();
    let c = baton_replication::policy::decide(&ds, &inputs);
    if let Some(d) = reusable {
        // Unless the node it chose asks now with a report that no longer
        // supports it (behind, promoted, its server down): then decide
        // again.
        if d.chosen.as_deref() != Some(job.agent.as_str()) || c.chosen == d.chosen {
            return Ok(Some(d));
        }
    }
    if inputs.iter().any(|i| !i.reporting) {
        let asking_every = reported
            .iter()
            .find(|r| r.0 == job.agent)
            .map_or(30, |r| r.3);
        let mut waiting = inner.waiting.lock().expect("waiting");
        let since = waiting.entry(name.to_string()).or_insert(now);
        // An old wait (the node that asked stopped asking) starts over.
        if now - *since > 600 {
            *since = now;
        }
        if now - *since < (2 * asking_every).max(2) {
            return Ok(None);
        }
    }
    inner.waiting.lock().expect("waiting").remove(name);
    let d = baton_wire::Decision {
        id: random_hex(8),
        dataset: name.to_string(),
        policy: ds.policy,
        at: now,
        chosen: c.chosen,
        outcome: c.outcome.to_string(),
        reason: c.reason,
        inputs,
    };
    inner.store.add_decision(&d).await?;
    // The chosen node runs it at its next poll, whatever its own
    // schedule says (a run asked for: this decision is its).
    if let Some(chosen) = &d.chosen
        && chosen != &job.agent
    {
        for (j, _) in inner.store.jobs(Some(chosen)).await? {
            if j.dataset.as_deref() == Some(name) {
                inner.store.request_run(&j.name, now).await?;
            }
        }
    }
    *inner
        .decided
        .lock()
        .expect("decisions")
        .entry((d.dataset.clone(), d.outcome.clone()))
        .or_default() += 1;
    match d.outcome.as_str() {
        "refused" => inner.notify(
            "dataset_refused",
            None,
            format!("data set {name}: this run is refused: {}", d.reason),
        ),
        "fallback" => inner.notify(
            "dataset_fallback",
            d.chosen.as_deref(),
            format!("data set {name}: {}", d.reason),
        ),
        _ => {}
    }
    Ok(Some(d))
}

async fn add_dataset(
    State(inner): State<Arc<Inner>>,
    req: Result<Json<baton_wire::Dataset>, axum::extract::rejection::JsonRejection>,
) -> Answer<baton_wire::DatasetList> {
    let d = body(req)?;
    if !baton_wire::valid_node_name(&d.name) {
        return Err(invalid(format!(
            "{:?} is not a valid data set name",
            d.name
        )));
    }
    if d.kind != "postgres" {
        return Err(invalid(format!(
            "{:?}: the data sets Baton knows are `postgres`",
            d.kind
        )));
    }
    if d.primary_cpu_max
        .is_some_and(|c| !(0.0..=100.0).contains(&c))
        || d.max_lag_s.is_some_and(|s| !s.is_finite() || s < 0.0)
    {
        return Err(invalid(
            "a CPU bound is 0 to 100 %, a lag bound positive".into(),
        ));
    }
    if !inner.store.add_dataset(&d, now()).await? {
        return Err(Fail(
            ErrorCode::Conflict,
            format!("data set {:?} exists", d.name),
        ));
    }
    Ok(Json(baton_wire::DatasetList { datasets: vec![d] }))
}

async fn datasets(State(inner): State<Arc<Inner>>) -> Answer<baton_wire::DatasetList> {
    Ok(Json(baton_wire::DatasetList {
        datasets: inner.store.datasets().await?,
    }))
}

/// Series of one metric that agents' reports may add, at most.
const METRIC_SERIES_MAX: usize = 1000;

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Bounds a reported string (512 bytes, on a character boundary).
fn cap_string(s: &mut String) {
    if s.len() > 512 {
        let mut end = 512;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

fn finite(x: f64) -> f64 {
    if x.is_finite() { x.max(0.0) } else { 0.0 }
}

/// `POST /v1/agent/drills`: a fire drill's result. A failed drill sends
/// the `drill_failed` webhook.
async fn report_drill(
    State(inner): State<Arc<Inner>>,
    Extension(node): Extension<crate::store::Node>,
    b: Result<Json<baton_wire::DrillRecord>, axum::extract::rejection::JsonRejection>,
) -> Answer<baton_wire::DrillRecord> {
    require_role(&node, Role::Agent)?;
    let mut r = body(b)?;
    if r.snapshot.len() != 64 || !r.snapshot.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            "not a drill report: its snapshot is not an id".into(),
        ));
    }
    r.agent = node.info.name.clone();
    r.at = now();
    for s in [
        &mut r.name,
        &mut r.reason,
        &mut r.snapshot_time,
        &mut r.started_at,
        &mut r.finished_at,
    ] {
        cap_string(s);
    }
    for x in [
        &mut r.rto_s,
        &mut r.rpo_s,
        &mut r.restore_s,
        &mut r.recovery_s,
    ] {
        *x = finite(*x);
    }
    inner
        .store
        .add_report(crate::store::Reports::Drills, r.at, &r)
        .await?;
    // Metrics by agent and drill, bounded: an agent cannot grow them
    // without end by naming drills anew.
    {
        let mut drilled = inner.drilled.lock().expect("drills");
        let key = (r.agent.clone(), r.name.clone(), r.passed);
        if drilled.contains_key(&key) || drilled.len() < METRIC_SERIES_MAX {
            *drilled.entry(key).or_default() += 1;
        }
        let mut rto = inner.last_rto.lock().expect("drills");
        let key = (r.agent.clone(), r.name.clone());
        if rto.contains_key(&key) || rto.len() < METRIC_SERIES_MAX {
            rto.insert(key, r.rto_s);
        }
    }
    if !r.passed {
        inner.notify(
            "drill_failed",
            Some(&node.info.name),
            format!(
                "drill {} of snapshot {} failed: {}",
                r.name,
                &r.snapshot[..8],
                r.reason
            ),
        );
    }
    Ok(Json(r))
}

/// `POST /v1/agent/replications`: where a snapshot's replication to a
/// second site stands.
async fn report_replication(
    State(inner): State<Arc<Inner>>,
    Extension(node): Extension<crate::store::Node>,
    b: Result<Json<baton_wire::ReplicationRecord>, axum::extract::rejection::JsonRejection>,
) -> Answer<baton_wire::ReplicationRecord> {
    require_role(&node, Role::Agent)?;
    let mut r = body(b)?;
    if r.snapshot.len() != 64 || !r.snapshot.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            "not a replication report: its snapshot is not an id".into(),
        ));
    }
    r.agent = node.info.name.clone();
    r.at = now();
    cap_string(&mut r.replica);
    cap_string(&mut r.state);
    if let Some(e) = &mut r.error {
        cap_string(e);
    }
    if let Some(s) = &mut r.replica_snapshot {
        cap_string(s);
    }
    r.lag_s = finite(r.lag_s);
    inner
        .store
        .add_report(crate::store::Reports::Replications, r.at, &r)
        .await?;
    if r.state == "acknowledged" {
        let mut lag = inner.replication_lag.lock().expect("replications");
        let key = (r.agent.clone(), r.replica.clone());
        if lag.contains_key(&key) || lag.len() < METRIC_SERIES_MAX {
            lag.insert(key, (r.applied_seq, r.lag_s));
        }
    } else {
        inner.notify(
            "replication_failed",
            Some(&node.info.name),
            format!(
                "replication of snapshot {} to {} failed: {}",
                &r.snapshot[..8],
                r.replica,
                r.error.as_deref().unwrap_or("")
            ),
        );
    }
    Ok(Json(r))
}

async fn drills(State(inner): State<Arc<Inner>>) -> Answer<baton_wire::DrillList> {
    Ok(Json(baton_wire::DrillList {
        drills: inner
            .store
            .reports(crate::store::Reports::Drills, 1000)
            .await?,
    }))
}

async fn replications(State(inner): State<Arc<Inner>>) -> Answer<baton_wire::ReplicationList> {
    Ok(Json(baton_wire::ReplicationList {
        replications: inner
            .store
            .reports(crate::store::Reports::Replications, 1000)
            .await?,
    }))
}

async fn decisions(State(inner): State<Arc<Inner>>) -> Answer<baton_wire::DecisionList> {
    Ok(Json(baton_wire::DecisionList {
        decisions: inner.store.decisions(None, 1000).await?,
    }))
}

fn require_role(node: &crate::store::Node, role: Role) -> Result<(), Fail> {
    if node.info.role != role {
        return Err(Fail(
            ErrorCode::Forbidden,
            format!("only a {} may call this", role.as_str()),
        ));
    }
    Ok(())
}

fn media_info(name: &str, e: &MediaEntry) -> MediaAgentInfo {
    let age = e.seen.elapsed().as_millis() as u64;
    MediaAgentInfo {
        name: name.to_string(),
        address: e.beat.address.clone(),
        pools: e.beat.pools.clone(),
        load: e.beat.load.clone(),
        last_seen_ms: age,
        alive: age < LEASE_MS,
        ceased: e
            .ceased_until
            .is_some_and(|t| t > std::time::Instant::now()),
        epoch: e.epoch,
    }
}

/// A media agent's heartbeat: its load is recorded; it is answered with
/// what it needs to serve until the next one (its pools, who may reach
/// them, the revocation list) and the lease that bounds how long it may.
async fn heartbeat(
    State(inner): State<Arc<Inner>>,
    Extension(node): Extension<crate::store::Node>,
    b: Result<Json<MediaHeartbeat>, axum::extract::rejection::JsonRejection>,
) -> Answer<MediaState> {
    require_role(&node, Role::MediaAgent)?;
    let beat = body(b)?;
    if beat.address.len() > 256 || beat.pools.len() > 256 {
        return Err(invalid("heartbeat too large".into()));
    }
    // It serves the pools it says it serves that name it: a media agent
    // cannot make itself one of a pool's.
    let known = inner.store.pools().await?;
    let pools: Vec<Pool> = known
        .into_iter()
        .filter(|p| beat.pools.contains(&p.name) && p.media_agents.contains(&node.info.name))
        .collect();
    let mut beat = beat;
    beat.pools.retain(|p| pools.iter().any(|q| &q.name == p));
    let grants: Vec<Grant> = inner
        .store
        .grants(now())
        .await?
        .into_iter()
        .filter_map(|mut g| {
            g.pools.retain(|p| pools.iter().any(|q| &q.name == p));
            (!g.pools.is_empty()).then_some(g)
        })
        .collect();
    let revoked = inner.store.revoked(now()).await?;
    let crl = inner
        .ca
        .crl(&revoked, revoked.len() as u64 + 1, now())
        .map_err(|e| Fail(ErrorCode::Internal, e.to_string()))?;
    let (cease, why, epoch) = record_beat(&inner, &node.info.name, beat);
    if let Some(why) = why {
        inner.failovers.fetch_add(1, Ordering::Relaxed);
        eprintln!(
            "director: media agent {} told to cease: {why}",
            node.info.name
        );
        inner.notify("failover", Some(&node.info.name), why);
    }
    Ok(Json(MediaState {
        lease_ms: LEASE_MS,
        pools,
        grants,
        crl_hex: hex::encode(crl),
        cease,
        epoch,
    }))
}

/// Whether `agent` has a job in `pool`.
async fn agent_in_pool(inner: &Inner, agent: &str, pool: &str) -> Result<bool, Fail> {
    Ok(inner.store.agent_in_pool(agent, pool).await?)
}

#[derive(serde::Deserialize)]
struct PoolQuery {
    pool: String,
    /// A check that a media agent is still live, not a choice of one:
    /// does not count toward spreading agents.
    #[serde(default)]
    probe: Option<u8>,
}

/// The live media agents of a pool the calling agent's jobs name, the
/// least loaded first.
async fn agent_media(
    State(inner): State<Arc<Inner>>,
    Extension(node): Extension<crate::store::Node>,
    axum::extract::Query(q): axum::extract::Query<PoolQuery>,
) -> Answer<MediaAgentList> {
    require_role(&node, Role::Agent)?;
    if !agent_in_pool(&inner, &node.info.name, &q.pool).await? {
        return Err(Fail(
            ErrorCode::Forbidden,
            format!("no job of yours names pool {:?}", q.pool),
        ));
    }
    let mut media = inner.media.lock().expect("media agents");
    let mut list: Vec<(u64, MediaAgentInfo)> = media
        .iter()
        .map(|(n, e)| (e.beat.load.queue_depth + e.handed, media_info(n, e)))
        .filter(|(_, i)| i.alive && !i.ceased && i.pools.contains(&q.pool))
        .collect();
    list.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.load.bytes_per_s.cmp(&b.1.load.bytes_per_s))
            .then(a.1.name.cmp(&b.1.name))
    });
    if let Some((_, first)) = list.first()
        && q.probe.is_none()
        && let Some(e) = media.get_mut(&first.name)
    {
        e.handed += 1;
    }
    Ok(Json(MediaAgentList {
        media_agents: list.into_iter().map(|(_, i)| i).collect(),
    }))
}

async fn media_agents(State(inner): State<Arc<Inner>>) -> Answer<MediaAgentList> {
    let media = inner.media.lock().expect("media agents");
    let mut list: Vec<MediaAgentInfo> = media.iter().map(|(n, e)| media_info(n, e)).collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(MediaAgentList { media_agents: list }))
}

async fn runs(State(inner): State<Arc<Inner>>) -> Answer<RunList> {
    Ok(Json(RunList {
        runs: inner.store.run_records(1000).await?,
        journals: inner.store.journal_runs().await?,
        handovers: inner.store.handovers(None, 1000).await?,
    }))
}

/// `baton ctl run JOB`: the job's agent runs it at its next poll.
async fn request_run(State(inner): State<Arc<Inner>>, Path(name): Path<String>) -> Answer<JobList> {
    if !inner.store.request_run(&name, now()).await? {
        return Err(Fail(ErrorCode::NotFound, format!("no job {name:?}")));
    }
    Ok(Json(JobList { jobs: Vec::new() }))
}

/// An agent reports a run of one of its jobs.
async fn report_run(
    State(inner): State<Arc<Inner>>,
    Extension(node): Extension<crate::store::Node>,
    b: Result<Json<RunReport>, axum::extract::rejection::JsonRejection>,
) -> Answer<RunReport> {
    require_role(&node, Role::Agent)?;
    let r = body(b)?;
    if !(16..=64).contains(&r.run.len())
        || !r.run.bytes().all(|b| b.is_ascii_hexdigit())
        || r.message.as_ref().is_some_and(|m| m.len() > 4096)
        || r.media_agents.len() > 64
        || r.snapshot
            .as_ref()
            .is_some_and(|id| id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(invalid("not a run report".into()));
    }
    let jobs = inner.store.jobs(Some(&node.info.name)).await?;
    if !jobs.iter().any(|(j, _)| j.name == r.job) {
        return Err(Fail(
            ErrorCode::Forbidden,
            format!("no job {:?} of agent {:?}", r.job, node.info.name),
        ));
    }
    if !inner.store.report_run(&node.info.name, &r, now()).await? {
        return Err(Fail(
            ErrorCode::Conflict,
            format!("run {} belongs to another job or agent", r.run),
        ));
    }
    if r.state == RunState::Failed {
        inner.notify(
            "failure",
            Some(&node.info.name),
            format!(
                "run {} of job {:?} failed: {}",
                r.run,
                r.job,
                r.message.as_deref().unwrap_or("(no message)")
            ),
        );
    }
    Ok(Json(r))
}

/// Whether a job is due: asked for with `ctl run`, never run, or its
/// schedule's time has come since its last run started.
fn due(job: &JobSpec, last: Option<i64>, requested: bool, now: i64) -> bool {
    if requested {
        return true;
    }
    let Some(last) = last else {
        return true;
    };
    match baton_wire::parse_schedule(&job.schedule) {
        Ok(baton_wire::Schedule::Every(s)) => now - last >= s as i64,
        Ok(baton_wire::Schedule::Daily(minute)) => {
            // The latest HH:MM (UTC) not after now.
            let mut at = now.div_euclid(86400) * 86400 + i64::from(minute) * 60;
            if at > now {
                at -= 86400;
            }
            last < at
        }
        Err(_) => false,
    }
}

/// Whether `name` is a journal record's name: `<job hex>/<seq digits>`.
fn journal_name_ok(name: &str) -> bool {
    name.split_once('/').is_some_and(|(j, s)| {
        (1..=64).contains(&j.len())
            && j.bytes().all(|b| b.is_ascii_hexdigit())
            && (1..=20).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_digit())
    })
}

/// A journal record forwarded by a media agent: stored durably, then
/// acknowledged (the media agent answers its agent only after this).
async fn ship_journal(
    State(inner): State<Arc<Inner>>,
    Extension(node): Extension<crate::store::Node>,
    b: Result<Json<JournalShip>, axum::extract::rejection::JsonRejection>,
) -> Answer<JournalAck> {
    require_role(&node, Role::MediaAgent)?;
    let ship = body(b)?;
    media_current(&inner, &node.info.name, ship.epoch)?;
    if !journal_name_ok(&ship.name)
        || ship.sealed_hex.len() > 2 * baton_wire::MAX_JOURNAL_RECORD
        || hex::decode(&ship.sealed_hex).is_err()
    {
        return Err(invalid("not a journal record".into()));
    }
    if !serves(&inner, &node.info.name, &ship.pool).await? {
        return Err(Fail(
            ErrorCode::Forbidden,
            format!(
                "media agent {:?} does not serve pool {:?}",
                node.info.name, ship.pool
            ),
        ));
    }
    // The media agent checked the agent; so does the director.
    if !agent_in_pool(&inner, &ship.agent, &ship.pool).await? {
        inner.notify(
            "refused",
            Some(&node.info.name),
            format!(
                "a journal record for pool {:?} from agent {:?}, which has no job there",
                ship.pool, ship.agent
            ),
        );
        return Err(Fail(
            ErrorCode::Forbidden,
            format!("agent {:?} has no job in pool {:?}", ship.agent, ship.pool),
        ));
    }
    let summary = ship.summary.clone().unwrap_or_default();
    if summary.pack_bytes > 1 << 50
        || summary.position > 1 << 62
        || summary.seq > 1 << 40
        || summary.packs.len() > 100_000
        || summary
            .packs
            .iter()
            .any(|p| p.len() != 64 || !p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(invalid("not a journal summary".into()));
    }
    let stored = inner
        .store
        .add_journal(
            &crate::store::JournalRow {
                pool: &ship.pool,
                name: &ship.name,
                agent: &ship.agent,
                media_agent: &node.info.name,
                sealed_hex: &ship.sealed_hex,
                summary: &summary,
            },
            now(),
        )
        .await?;
    Ok(Json(JournalAck {
        name: ship.name,
        stored,
    }))
}

/// Records a heartbeat; whether the media agent must cease, and why if
/// that is new. It must when it reports new storage errors, or when its
/// writes are `rebalance_ratio` times slower than the fastest of its pool
/// (its live peers' now, or the best the pool has shown).
fn record_beat(inner: &Inner, name: &str, beat: MediaHeartbeat) -> (bool, Option<String>, u64) {
    let now = std::time::Instant::now();
    let mut media = inner.media.lock().expect("media agents");
    let (mut ceased_until, prev_errors, mut slow_beats) =
        media.get(name).map_or((None, beat.load.errors, 0), |e| {
            (e.ceased_until, e.errors, e.slow_beats)
        });
    // A new epoch unless this heartbeat continues an unbroken lease that
    // is not ceased; milliseconds since 1970, so that it grows across
    // restarts of the director.
    let new_epoch = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64)
    };
    let mut epoch = match media.get(name) {
        Some(e) if e.seen.elapsed().as_millis() < u128::from(LEASE_MS) => e.epoch,
        _ => new_epoch(),
    };
    if ceased_until.is_some_and(|t| t <= now) {
        ceased_until = None;
        epoch = new_epoch();
    }
    let mut why = None;
    let mut slow_pools = false;
    let lat = beat.load.write_ms_per_mib;
    {
        let mut best = inner.best_write.lock().expect("best writes");
        let ratio = inner.cfg.rebalance_ratio;
        for pool in &beat.pools {
            let peers = media
                .iter()
                .filter(|(n, e)| {
                    n.as_str() != name
                        && e.beat.pools.contains(pool)
                        && e.seen.elapsed().as_millis() < u128::from(LEASE_MS)
                        && e.ceased_until.is_none_or(|t| t <= now)
                })
                .filter_map(|(_, e)| {
                    (e.beat.load.write_ms_per_mib > 0.0).then_some(e.beat.load.write_ms_per_mib)
                })
                .fold(f64::INFINITY, f64::min);
            // The pool's best is forgotten slowly (doubling in about 20 s of
            // heartbeats): a burst of cached writes long ago is no baseline.
            if let Some(b) = best.get_mut(pool) {
                *b *= 1.02;
            }
            let base = best.get(pool).copied().unwrap_or(f64::INFINITY).min(peers);
            let has_peer = media.iter().any(|(n, e)| {
                n.as_str() != name
                    && e.beat.pools.contains(pool)
                    && e.seen.elapsed().as_millis() < u128::from(LEASE_MS)
                    && e.ceased_until.is_none_or(|t| t <= now)
            });
            let slow = ceased_until.is_none()
                && has_peer
                && ratio > 0.0
                && lat > REBALANCE_FLOOR_MS_PER_MIB
                && base.is_finite()
                && lat > ratio * base.max(1.0);
            if slow {
                slow_pools = true;
                if slow_beats + 1 >= SLOW_BEATS {
                    why = Some(format!(
                        "its writes take {lat:.0} ms per MiB, over {ratio}x the {base:.0} ms of pool {pool:?}, for {SLOW_BEATS} heartbeats; its agents move to its peers"
                    ));
                }
            }
            if lat > 0.0 && ceased_until.is_none() {
                let b = best.entry(pool.clone()).or_insert(lat);
                *b = b.min(lat);
            }
        }
    }
    if why.is_none() && ceased_until.is_none() && beat.load.errors > prev_errors {
        why = Some(format!(
            "it reported {} storage errors since its last heartbeat; its agents move to its peers",
            beat.load.errors - prev_errors
        ));
    }
    slow_beats = if slow_pools { slow_beats + 1 } else { 0 };
    if why.is_some() {
        ceased_until = Some(now + CEASE_FOR);
        slow_beats = 0;
        epoch = new_epoch();
    }
    let errors = beat.load.errors;
    media.insert(
        name.to_string(),
        MediaEntry {
            beat,
            seen: now,
            handed: 0,
            ceased_until,
            errors,
            slow_beats,
            epoch,
        },
    );
    (ceased_until.is_some(), why, epoch)
}

async fn api_tokens(State(inner): State<Arc<Inner>>) -> Answer<baton_wire::ApiTokenList> {
    Ok(Json(baton_wire::ApiTokenList {
        tokens: inner
            .store
            .api_tokens()
            .await?
            .into_iter()
            .map(|(id, name, created)| baton_wire::ApiTokenInfo { id, name, created })
            .collect(),
    }))
}

/// A new API token (256 random bits; only its hash is kept).
async fn add_api_token(
    State(inner): State<Arc<Inner>>,
    b: Result<Json<baton_wire::ApiTokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Answer<baton_wire::NewApiToken> {
    let req = body(b)?;
    if !baton_wire::valid_node_name(&req.name) {
        return Err(invalid(format!("{:?} is not a valid token name", req.name)));
    }
    let token = random_hex(32);
    let hash = secret_hash(&token);
    inner.store.add_api_token(&hash, &req.name, now()).await?;
    Ok(Json(baton_wire::NewApiToken {
        token,
        id: hash[..16].to_string(),
        name: req.name,
    }))
}

async fn revoke_api_token(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
) -> Answer<baton_wire::ApiTokenList> {
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid("an API token's id is 16 hex digits".into()));
    }
    if !inner
        .store
        .revoke_api_token(&id.to_ascii_lowercase())
        .await?
    {
        return Err(Fail(ErrorCode::NotFound, format!("no API token {id}")));
    }
    inner.notify("api_token_revoked", None, format!("API token {id} revoked"));
    api_tokens(State(inner)).await
}

/// Refuses (503) a media agent whose lease has lapsed or that was told to
/// cease: the index server takes no record from it, whatever it still
/// believes (the fence at the director's side).
fn media_current(inner: &Inner, name: &str, epoch: u64) -> Result<(), Fail> {
    let media = inner.media.lock().expect("media agents");
    match media.get(name).map(|e| media_info(name, e)) {
        Some(i) if i.alive && !i.ceased && i.epoch == epoch => Ok(()),
        _ => Err(Fail(
            ErrorCode::Unavailable,
            format!(
                "media agent {name:?} has no current lease of epoch {epoch} (missed heartbeats, or told to cease): use another"
            ),
        )),
    }
}

/// Whether media agent `name` serves `pool` (the pool names it).
async fn serves(inner: &Inner, name: &str, pool: &str) -> Result<bool, Fail> {
    Ok(inner.store.serves(name, pool).await?)
}

/// A media agent asks whether an agent may create a lock, or delete a lock
/// or a journal record: only its own.
async fn claim_object(
    State(inner): State<Arc<Inner>>,
    Extension(node): Extension<crate::store::Node>,
    b: Result<Json<baton_wire::ObjectClaim>, axum::extract::rejection::JsonRejection>,
) -> Answer<baton_wire::ObjectClaim> {
    require_role(&node, Role::MediaAgent)?;
    let c = body(b)?;
    media_current(&inner, &node.info.name, c.epoch)?;
    if !serves(&inner, &node.info.name, &c.pool).await? {
        return Err(Fail(
            ErrorCode::Forbidden,
            format!(
                "media agent {:?} does not serve pool {:?}",
                node.info.name, c.pool
            ),
        ));
    }
    let name_ok = match c.kind.as_str() {
        "locks" => c.name.len() == 64 && c.name.bytes().all(|b| b.is_ascii_hexdigit()),
        "journal" => journal_name_ok(&c.name),
        _ => false,
    };
    if !name_ok || !matches!(c.op.as_str(), "create" | "delete") {
        return Err(invalid("not an object claim".into()));
    }
    let held = inner.store.claim(&c).await.map_err(|e| match e {
        StoreError::Refused(m) => invalid(m),
        e => e.into(),
    })?;
    if !held {
        inner.notify(
            "refused",
            Some(&node.info.name),
            format!(
                "agent {:?} tried to {} {}/{} of pool {:?}, which is another's",
                c.agent, c.op, c.kind, c.name, c.pool
            ),
        );
        return Err(Fail(
            ErrorCode::Forbidden,
            format!("{}/{} is another agent's", c.kind, c.name),
        ));
    }
    Ok(Json(c))
}

/// An agent moved its running job to this media agent: the director hands
/// over the job's shipped journal (the summaries of its records, in
/// order), and records the handover. Only a media agent with a current
/// lease that serves the pool, and only for the agent whose job it is.
async fn handover(
    State(inner): State<Arc<Inner>>,
    Extension(node): Extension<crate::store::Node>,
    b: Result<Json<baton_wire::HandoverRequest>, axum::extract::rejection::JsonRejection>,
) -> Answer<baton_wire::HandoverJournal> {
    require_role(&node, Role::MediaAgent)?;
    let h = body(b)?;
    media_current(&inner, &node.info.name, h.epoch)?;
    if !journal_name_ok(&format!("{}/0", h.job)) {
        return Err(invalid("not a job id".into()));
    }
    if !serves(&inner, &node.info.name, &h.pool).await? {
        return Err(Fail(
            ErrorCode::Forbidden,
            format!(
                "media agent {:?} does not serve pool {:?}",
                node.info.name, h.pool
            ),
        ));
    }
    if !agent_in_pool(&inner, &h.agent, &h.pool).await? {
        return Err(Fail(
            ErrorCode::Forbidden,
            format!("agent {:?} has no job in pool {:?}", h.agent, h.pool),
        ));
    }
    let Some(owner) = inner.store.job_agent(&h.pool, &h.job).await? else {
        return Err(Fail(
            ErrorCode::NotFound,
            format!("no journal of job {} in pool {:?}", h.job, h.pool),
        ));
    };
    if owner != h.agent {
        inner.notify(
            "refused",
            Some(&node.info.name),
            format!(
                "agent {:?} asked to take over job {} of pool {:?}, which is {owner:?}'s",
                h.agent, h.job, h.pool
            ),
        );
        return Err(Fail(
            ErrorCode::Forbidden,
            format!("job {} is another agent's", h.job),
        ));
    }
    let (summaries, from) = inner.store.journal_summaries(&h.pool, &h.job).await?;
    let p = baton_wire::fold_summaries(&summaries);
    // The same handover asked again (a retry, or the agent's requests
    // moving at once): the one recorded, not another.
    let mut packs: Vec<String> = summaries.into_iter().flat_map(|r| r.packs).collect();
    packs.sort_unstable();
    packs.dedup();
    if let Some((id, to, last_seq)) = inner.store.last_handover(&h.pool, &h.job).await?
        && to == node.info.name
        && last_seq as u64 == p.last_seq
    {
        return Ok(Json(baton_wire::HandoverJournal {
            id,
            from,
            progress: p,
            packs,
        }));
    }
    let info = baton_wire::HandoverInfo {
        id: random_hex(16),
        pool: h.pool.clone(),
        job: h.job.clone(),
        agent: h.agent.clone(),
        from: from.clone(),
        to: node.info.name.clone(),
        at: now(),
        records: p.records,
        last_seq: p.last_seq,
        position: p.position,
        packs_checked: None,
        missing: None,
    };
    inner.store.add_handover(&info).await?;
    inner.handovers.fetch_add(1, Ordering::Relaxed);
    inner.notify(
        "failover",
        Some(&node.info.name),
        format!(
            "job {} of agent {:?} (pool {:?}) handed from media agent {} to {} at record {} (position {})",
            h.job,
            h.agent,
            h.pool,
            from.as_deref().unwrap_or("(none)"),
            node.info.name,
            p.last_seq,
            p.position
        ),
    );
    Ok(Json(baton_wire::HandoverJournal {
        id: info.id,
        from,
        progress: p,
        packs,
    }))
}

/// What the new media agent found applying a handed-over journal to its
/// index; acknowledged packs missing from the pool are a failure a person
/// must see.
async fn handover_checked(
    State(inner): State<Arc<Inner>>,
    Extension(node): Extension<crate::store::Node>,
    b: Result<Json<baton_wire::HandoverChecked>, axum::extract::rejection::JsonRejection>,
) -> Answer<baton_wire::HandoverInfo> {
    require_role(&node, Role::MediaAgent)?;
    let c = body(b)?;
    media_current(&inner, &node.info.name, c.epoch)?;
    if c.missing.len() > 100
        || c.missing_count < c.missing.len() as u64
        || c.id.len() > 64
        || c.missing
            .iter()
            .any(|p| p.len() != 64 || !p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(invalid("not a handover check".into()));
    }
    let Some(h) = inner
        .store
        .handover_checked(&c.id, &node.info.name, c.packs_checked, c.missing_count)
        .await?
    else {
        return Err(Fail(
            ErrorCode::NotFound,
            format!("no handover {} to media agent {}", c.id, node.info.name),
        ));
    };
    if !c.missing.is_empty() {
        inner.notify(
            "failure",
            Some(&node.info.name),
            format!(
                "job {} of agent {:?} (pool {:?}): {} of {} acknowledged packs are not in the pool's storage (first: {}); media agent {} acknowledged writes it did not keep",
                h.job,
                h.agent,
                h.pool,
                c.missing_count,
                c.packs_checked,
                c.missing[0],
                h.from.as_deref().unwrap_or("(none)"),
            ),
        );
    }
    Ok(Json(h))
}
