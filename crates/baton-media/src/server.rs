//! The media agent's daemon: heartbeats to the director (its load out;
//! its pools, grants, revocation list and lease back), and the storage
//! protocol ([`crate::proto`]) over mutual TLS for the agents the
//! director's grants name.

use crate::index::PackIndex;
use crate::proto::{self, Exists, Listed, Size};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use baton_director::client::{Client, ClientError};
use baton_director::tls::Peer;
use baton_storage::{ObjectKind, Storage, StorageError};
use baton_wire::{ApiError, ErrorCode, JournalShip, MediaHeartbeat, MediaLoad, MediaState, Role};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Opens a pool's repository storage from its location (as `baton -r`
/// takes it): given by the caller, which knows the backends.
pub type Opener = Arc<dyn Fn(&str) -> Result<Arc<dyn Storage>, String> + Send + Sync>;

/// How a media agent runs.
#[derive(Clone)]
pub struct Config {
    /// Where `baton agent enrol` put its key, certificate and the CA.
    pub state_dir: PathBuf,
    /// The director's URL.
    pub director: String,
    pub listen: SocketAddr,
    /// The address agents connect to (`host:port`); default: `listen`
    /// (loopback if that is unspecified).
    pub advertise: Option<String>,
    /// The pools it serves.
    pub pools: Vec<String>,
    pub open: Opener,
    /// Writes stored at once (each holds one object in memory).
    pub max_writes: usize,
    /// A file holding a rate in bytes per second, read again every
    /// second: receiving is slowed to it (a test's way to unbalance a pool
    /// mid-backup). Missing or empty: no limit.
    pub throttle_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error(transparent)]
    Director(#[from] ClientError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}")]
    Refused(String),
}

/// A pool's repository as a media agent serves it.
#[derive(Clone)]
struct Store {
    repository: String,
    storage: Arc<dyn Storage>,
    index: Arc<PackIndex>,
}

/// What the last heartbeat's answer allows.
#[derive(Default)]
struct Grants {
    /// Agent certificate fingerprint -> (agent, its pools).
    by_fingerprint: HashMap<String, (String, Vec<String>)>,
    /// Pool -> its repository, with the storage opened for it and the
    /// media agent's index of its packs.
    stores: HashMap<String, Store>,
    crl_hex: String,
}

#[derive(Default)]
struct Load {
    in_flight: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    /// Bytes written and microseconds spent writing them (receiving the
    /// body not counted: that is the agent's pace), since the last beat.
    written: AtomicU64,
    write_us: AtomicU64,
    /// Pack writes under way: when each started, and its bytes (a slow one
    /// shows before it ends).
    writing: Mutex<HashMap<u64, (Instant, u64)>>,
    next_write: AtomicU64,
}

/// A pack write under way, for as long as it lives.
struct Writing<'a>(&'a Load, u64);

impl<'a> Writing<'a> {
    fn new(l: &'a Load, len: u64) -> Self {
        let id = l.next_write.fetch_add(1, Ordering::Relaxed);
        l.writing
            .lock()
            .expect("writes")
            .insert(id, (Instant::now(), len));
        Writing(l, id)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.writing.lock().expect("writes").remove(&self.1);
    }
}

struct Inner {
    name: String,
    cfg: Config,
    address: String,
    /// Its client of the director, and the certificate chain and key it
    /// serves with: replaced together when its certificate is renewed.
    director: RwLock<Arc<Client>>,
    identity: RwLock<(Vec<Vec<u8>>, String)>,
    grants: RwLock<Grants>,
    tls: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    ca_der: Vec<u8>,
    /// When (Unix seconds) to check next whether its certificate is due
    /// for renewal.
    renew_at: std::sync::atomic::AtomicI64,
    /// Until when the director's last answer lets it take requests.
    lease_until: Mutex<Option<Instant>>,
    load: Load,
    writes: tokio::sync::Semaphore,
    /// Memory for request and answer bodies, in MiB: every object held in
    /// memory (received or read for an answer) takes its size from it first.
    budget: tokio::sync::Semaphore,
    handshakes_failed: AtomicU64,
    /// Told by the director to cease: every request is answered 503 (the
    /// agents move to another media agent of the pool).
    ceased: tokio::sync::watch::Sender<bool>,
    /// The throttle file's rate (0: none).
    throttle: AtomicU64,
    /// When the request of the heartbeat answer applied last left.
    applied: Mutex<Option<Instant>>,
    /// The lease epoch of the last answer.
    epoch: AtomicU64,
    /// Journals (pool, job) the director confirmed are an agent's, so that
    /// deleting a job's records asks once.
    journal_owners: Mutex<HashMap<(String, String), String>>,
    /// The load the last heartbeat reported, and when the grants were last
    /// asked for out of turn (an agent not in them yet: a job just added).
    last_load: Mutex<MediaLoad>,
    refreshed: tokio::sync::Mutex<Instant>,
}

/// A media agent, enrolled and registered with its director, its port bound.
pub struct MediaAgent {
    inner: Arc<Inner>,
    listener: tokio::net::TcpListener,
}

fn read(dir: &std::path::Path, f: &str) -> Result<String, MediaError> {
    let p = dir.join(f);
    std::fs::read_to_string(&p).map_err(|e| MediaError::Io(p.display().to_string(), e))
}

/// Memory a media agent lets request and answer bodies take at once (MiB).
const BUDGET_MIB: u32 = 1024;

/// The largest object of each kind an agent may send: what the repository's
/// readers accept (key, config and lock files are read with a 64 KiB bound;
/// a journal record is forwarded to the director).
fn max_put(kind: ObjectKind) -> usize {
    match kind {
        ObjectKind::Config | ObjectKind::Key | ObjectKind::Lock => 64 << 10,
        ObjectKind::Journal => proto::MAX_JOURNAL_RECORD,
        _ => proto::MAX_OBJECT,
    }
}

/// Takes room for `bytes` of body from the budget (waiting for it).
async fn reserve(inner: &Inner, bytes: u64) -> Result<tokio::sync::SemaphorePermit<'_>, Fail> {
    let mib = (bytes.div_ceil(1 << 20) + 1).min(u64::from(BUDGET_MIB)) as u32;
    inner.budget.acquire_many(mib).await.map_err(|_| {
        Fail(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "shutting down".into(),
        )
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// When a certificate valid from `issued` to `not_after` is due for
/// renewal: when a third of its validity is left.
fn renew_at(issued: i64, not_after: i64) -> i64 {
    not_after - (not_after - issued).max(0) / 3
}

/// How often a media agent beats (a sixth of its lease).
fn beat_interval(lease_ms: u64) -> Duration {
    Duration::from_millis((lease_ms / 6).max(100))
}

impl MediaAgent {
    /// Checks its certificate with the director, binds `listen` and makes
    /// its first heartbeat (so it serves with a current revocation list).
    pub async fn start(cfg: Config) -> Result<MediaAgent, MediaError> {
        baton_director::client::finish_renewal(&cfg.state_dir)?;
        let ca_pem = read(&cfg.state_dir, "ca.pem")?;
        let cert_pem = read(&cfg.state_dir, "cert.pem")?;
        let key_pem = read(&cfg.state_dir, "key.pem")?;
        let director = Client::with_cert(&cfg.director, &ca_pem, &cert_pem, &key_pem)?;
        let (director, me) = tokio::task::spawn_blocking(move || {
            let me = director.whoami();
            (director, me)
        })
        .await
        .map_err(|e| MediaError::Refused(e.to_string()))?;
        let me = me?;
        if me.role != Role::MediaAgent {
            return Err(MediaError::Refused(format!(
                "this node is enrolled as {} {:?}, not as a media agent (enrol with a media-agent token)",
                me.role.as_str(),
                me.name
            )));
        }
        for p in &cfg.pools {
            if !baton_wire::valid_node_name(p) {
                return Err(MediaError::Refused(format!("{p:?} is not a pool name")));
            }
        }
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| MediaError::Io(format!("listening on {}", cfg.listen), e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| MediaError::Io("listening".into(), e))?;
        let address = match &cfg.advertise {
            Some(a) => a.clone(),
            None if bound.ip().is_unspecified() => SocketAddr::new(
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                bound.port(),
            )
            .to_string(),
            None => bound.to_string(),
        };
        let tls = |e: String| MediaError::Tls(e);
        let ca_der = baton_director::tls::cert_der(&ca_pem).map_err(tls)?;
        let chain = vec![
            baton_director::tls::cert_der(&cert_pem).map_err(tls)?,
            ca_der.clone(),
        ];
        // Replaced by the first heartbeat's answer (with the director's
        // revocation list) before the port is served.
        let placeholder = {
            use rustls::pki_types::pem::PemObject;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| tls(e.to_string()))?;
            Arc::new(
                rustls::ServerConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| tls(e.to_string()))?
                .with_no_client_auth()
                .with_single_cert(chain.iter().cloned().map(Into::into).collect(), key)
                .map_err(|e| tls(e.to_string()))?,
            )
        };
        let inner = Arc::new(Inner {
            name: me.name,
            address,
            director: RwLock::new(Arc::new(director)),
            identity: RwLock::new((chain, key_pem)),
            grants: RwLock::new(Grants::default()),
            tls: Arc::new(RwLock::new(placeholder)),
            ca_der,
            renew_at: std::sync::atomic::AtomicI64::new(renew_at(me.issued, me.not_after)),
            lease_until: Mutex::new(None),
            load: Load::default(),
            writes: tokio::sync::Semaphore::new(cfg.max_writes.max(1)),
            budget: tokio::sync::Semaphore::new(BUDGET_MIB as usize),
            handshakes_failed: AtomicU64::new(0),
            ceased: tokio::sync::watch::Sender::new(false),
            throttle: AtomicU64::new(0),
            last_load: Mutex::new(MediaLoad::default()),
            journal_owners: Mutex::new(HashMap::new()),
            applied: Mutex::new(None),
            epoch: AtomicU64::new(0),
            refreshed: tokio::sync::Mutex::new(Instant::now()),
            cfg,
        });
        let first = inner.clone();
        tokio::task::spawn_blocking(move || first.beat(&mut CpuClock::new()))
            .await
            .map_err(|e| MediaError::Refused(e.to_string()))??;
        Ok(MediaAgent { inner, listener })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The address it told the director agents reach it at.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let beats = {
            let inner = self.inner.clone();
            async move {
                let mut clock = CpuClock::new();
                let mut was_ok = true;
                loop {
                    let every = beat_interval(baton_director::server::LEASE_MS);
                    tokio::time::sleep(every).await;
                    let i = inner.clone();
                    let (r, c) = tokio::task::spawn_blocking(move || {
                        let r = i.beat(&mut clock);
                        (r, clock)
                    })
                    .await
                    .expect("heartbeat thread");
                    clock = c;
                    match r {
                        Ok(()) if !was_ok => {
                            eprintln!("media agent {}: the director answers again", inner.name);
                            was_ok = true;
                        }
                        Err(e) if was_ok => {
                            eprintln!("media agent {}: heartbeat failed: {e}", inner.name);
                            was_ok = false;
                        }
                        _ => {}
                    }
                }
            }
        };
        let failed: Arc<dyn Fn() + Send + Sync> = {
            let inner = self.inner.clone();
            Arc::new(move || {
                inner.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            })
        };
        let serve = baton_director::tls::serve(
            self.listener,
            self.inner.tls.clone(),
            router(self.inner.clone()),
            failed,
        );
        tokio::select! {
            () = serve => {}
            () = beats => {}
            () = shutdown => {}
        }
    }
}

/// CPU time of this process between heartbeats.
struct CpuClock {
    last: (Instant, u64),
    last_bytes: u64,
}

impl CpuClock {
    fn new() -> CpuClock {
        CpuClock {
            last: (Instant::now(), cpu_ticks()),
            last_bytes: 0,
        }
    }
}

/// User and system time of this process, in clock ticks (USER_HZ, 100 on
/// Linux by ABI).
fn cpu_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    n(11) + n(12)
}

impl Inner {
    /// One heartbeat (blocking): reports the load, applies the answer.
    fn beat(&self, clock: &mut CpuClock) -> Result<(), MediaError> {
        let now = Instant::now();
        let ticks = cpu_ticks();
        let secs = now.duration_since(clock.last.0).as_secs_f64().max(1e-3);
        let bytes = self.load.bytes.load(Ordering::Relaxed);
        let mut written = self.load.written.swap(0, Ordering::Relaxed);
        let mut write_us = self.load.write_us.swap(0, Ordering::Relaxed);
        for (start, len) in self.load.writing.lock().expect("writes").values() {
            written += len;
            write_us += start.elapsed().as_micros() as u64;
        }
        if let Some(f) = &self.cfg.throttle_file {
            let rate = std::fs::read_to_string(f)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0);
            self.throttle.store(rate, Ordering::Relaxed);
        }
        let (index_packs, index_loads) = self
            .grants
            .read()
            .expect("grants")
            .stores
            .values()
            .fold((0, 0), |(p, l), st| {
                (p + st.index.len() as u64, l + st.index.listings())
            });
        let load = MediaLoad {
            write_ms_per_mib: if written >= 64 << 10 {
                write_us as f64 / 1000.0 / (written as f64 / (1 << 20) as f64)
            } else {
                0.0
            },
            queue_depth: self.load.in_flight.load(Ordering::Relaxed),
            bytes_per_s: ((bytes - clock.last_bytes) as f64 / secs) as u64,
            cpu_percent: (ticks.saturating_sub(clock.last.1) as f64) / secs,
            errors: self.load.errors.load(Ordering::Relaxed),
            bytes_total: bytes,
            index_packs,
            index_loads,
        };
        clock.last = (now, ticks);
        clock.last_bytes = bytes;
        *self.last_load.lock().expect("load") = load.clone();
        let beat = MediaHeartbeat {
            address: self.address.clone(),
            pools: self.cfg.pools.clone(),
            load,
        };
        // The lease counts from when the request left, not when the answer
        // came: a slow answer never stretches it.
        let sent = Instant::now();
        let state = self.director().heartbeat(&beat)?;
        self.apply(state, sent)?;
        self.renew_if_due();
        // A pool whose listing failed is listed again, at most once a minute.
        let retry: Vec<(String, Store)> = self
            .grants
            .read()
            .expect("grants")
            .stores
            .iter()
            .filter(|(_, st)| st.index.wants_listing(Duration::from_secs(60)))
            .map(|(p, st)| (p.clone(), st.clone()))
            .collect();
        for (pool, st) in retry {
            self.load_index(&pool, &st);
        }
        Ok(())
    }

    fn director(&self) -> Arc<Client> {
        self.director.read().expect("director").clone()
    }

    /// Renews its certificate when a third of its validity is left: the
    /// new one serves new connections and signs its calls to the director
    /// from then on (the old one stays valid until it expires). A failure
    /// is said and tried again 10 s later.
    fn renew_if_due(&self) {
        let now = unix_now();
        if now < self.renew_at.load(Ordering::Relaxed) {
            return;
        }
        let renewed = self
            .director()
            .renew_if_due(&self.cfg.state_dir, now)
            .map_err(MediaError::from)
            .and_then(|r| match r {
                Some(r) => self.take_certificate().map(|()| Some(r)),
                None => Ok(None),
            });
        match renewed {
            Ok(Some(r)) => {
                eprintln!(
                    "media agent {}: certificate renewed (serial {}, valid until {})",
                    self.name, r.serial, r.not_after
                );
                self.renew_at
                    .store(renew_at(now, r.not_after), Ordering::Relaxed);
            }
            Ok(None) => self.renew_at.store(now + 60, Ordering::Relaxed),
            Err(e) => {
                eprintln!("media agent {}: renewing its certificate: {e}", self.name);
                self.renew_at.store(now + 10, Ordering::Relaxed);
            }
        }
    }

    /// Takes the certificate and key in its state directory into use.
    fn take_certificate(&self) -> Result<(), MediaError> {
        let dir = &self.cfg.state_dir;
        let (ca_pem, cert_pem, key_pem) = (
            read(dir, "ca.pem")?,
            read(dir, "cert.pem")?,
            read(dir, "key.pem")?,
        );
        let client = Client::with_cert(&self.cfg.director, &ca_pem, &cert_pem, &key_pem)?;
        let chain = vec![
            baton_director::tls::cert_der(&cert_pem).map_err(MediaError::Tls)?,
            self.ca_der.clone(),
        ];
        let crl = hex::decode(&self.grants.read().expect("grants").crl_hex)
            .map_err(|_| MediaError::Tls("unreadable CRL".into()))?;
        let cfg =
            baton_director::tls::server_config(&self.ca_der, crl, false, chain.clone(), &key_pem)
                .map_err(MediaError::Tls)?;
        *self.tls.write().expect("tls") = cfg;
        *self.identity.write().expect("identity") = (chain, key_pem);
        *self.director.write().expect("director") = Arc::new(client);
        Ok(())
    }

    /// Loads a pool's index in the background (listing its packs): ready
    /// for a handover before one comes; until then a handover looks its
    /// packs up one by one.
    fn load_index(&self, pool: &str, st: &Store) {
        let (s, idx, name, pool) = (
            st.storage.clone(),
            st.index.clone(),
            self.name.clone(),
            pool.to_string(),
        );
        st.index.note_try();
        let spawned = std::thread::Builder::new()
            .name("baton-media-index".into())
            .spawn(move || {
                if let Err(e) = idx.load(s.as_ref()) {
                    eprintln!("media agent {name}: listing the packs of pool {pool}: {e}");
                }
            });
        if let Err(e) = spawned {
            eprintln!("media agent {}: {e}", self.name);
        }
    }

    /// A heartbeat out of turn (the last load again), for the grants.
    fn refresh(&self) -> Result<(), MediaError> {
        let beat = MediaHeartbeat {
            address: self.address.clone(),
            pools: self.cfg.pools.clone(),
            load: self.last_load.lock().expect("load").clone(),
        };
        let sent = Instant::now();
        let state = self.director().heartbeat(&beat)?;
        self.apply(state, sent)
    }

    fn apply(&self, state: MediaState, sent: Instant) -> Result<(), MediaError> {
        // Answers apply in the order their requests left: a slow older one
        // never undoes a newer cease or lease.
        let mut applied = self.applied.lock().expect("applied");
        if applied.is_some_and(|t| t > sent) {
            return Ok(());
        }
        *applied = Some(sent);
        let mut stores = HashMap::new();
        {
            let held = self.grants.read().expect("grants");
            for p in &state.pools {
                match held.stores.get(&p.name) {
                    Some(st) if st.repository == p.repository => {
                        stores.insert(p.name.clone(), st.clone());
                    }
                    _ => {}
                }
            }
        }
        for p in &state.pools {
            if !stores.contains_key(&p.name) {
                match (self.cfg.open)(&p.repository) {
                    Ok(s) => {
                        let st = Store {
                            repository: p.repository.clone(),
                            storage: s,
                            index: Arc::new(PackIndex::default()),
                        };
                        self.load_index(&p.name, &st);
                        stores.insert(p.name.clone(), st);
                    }
                    Err(e) => eprintln!(
                        "media agent {}: cannot open the repository of pool {}: {e}",
                        self.name, p.name
                    ),
                }
            }
        }
        let crl_changed = self.grants.read().expect("grants").crl_hex != state.crl_hex;
        if crl_changed {
            let crl = hex::decode(&state.crl_hex)
                .map_err(|_| MediaError::Tls("the director sent an unreadable CRL".into()))?;
            let (chain, key_pem) = self.identity.read().expect("identity").clone();
            let cfg = baton_director::tls::server_config(&self.ca_der, crl, false, chain, &key_pem)
                .map_err(MediaError::Tls)?;
            *self.tls.write().expect("tls") = cfg;
        }
        let by_fingerprint = state
            .grants
            .into_iter()
            .map(|g| (g.fingerprint, (g.agent, g.pools)))
            .collect();
        *self.grants.write().expect("grants") = Grants {
            by_fingerprint,
            stores,
            crl_hex: state.crl_hex,
        };
        self.ceased.send_if_modified(|c| {
            let changed = *c != state.cease;
            if changed {
                eprintln!(
                    "media agent {}: {}",
                    self.name,
                    if state.cease {
                        "told to cease by the director: refusing requests"
                    } else {
                        "taking requests again"
                    }
                );
            }
            *c = state.cease;
            changed
        });
        self.epoch.store(state.epoch, Ordering::Relaxed);
        *self.lease_until.lock().expect("lease") =
            Some(sent + Duration::from_millis(state.lease_ms));
        Ok(())
    }
}

/// An error answer.
struct Fail(StatusCode, ErrorCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (
            self.0,
            axum::Json(ApiError {
                code: self.1,
                message: self.2,
            }),
        )
            .into_response()
    }
}

/// A storage error as an answer. Only failures of the storage itself count
/// as the media agent's errors (which the director acts on): those a
/// request can cause (a range past an object's end, a damaged object read)
/// do not, unless the request was a write.
fn storage_fail(inner: &Inner, e: StorageError, write: bool) -> Fail {
    let status =
        StatusCode::from_u16(proto::status_of(e.kind)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let code = match status.as_u16() {
        404 => ErrorCode::NotFound,
        409 => ErrorCode::Conflict,
        403 => ErrorCode::Forbidden,
        503 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    use baton_storage::ErrorKind as K;
    let storage_side = match e.kind {
        K::Transient | K::NoSpace | K::PermissionDenied => true,
        K::Permanent => write,
        K::NotFound | K::AlreadyExists | K::Cancelled => false,
    };
    if storage_side {
        inner.load.errors.fetch_add(1, Ordering::Relaxed);
        eprintln!("media agent {}: {e}", inner.name);
    }
    Fail(status, code, e.to_string())
}

/// Who a request comes from and the storage it may use, found before any
/// of its body is read.
#[derive(Clone)]
struct Allowed(String, Arc<dyn Storage>, Arc<PackIndex>);

async fn authorize(
    State(inner): State<Arc<Inner>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = Peer::of(&req);
    let pool = req
        .uri()
        .path()
        .strip_prefix("/v1/repo/")
        .and_then(|p| p.split('/').next())
        .unwrap_or("")
        .to_string();
    // The agent was handed this media agent in an epoch: after a lapse or
    // a cease, it must ask the director again.
    if let Some(e) = req
        .headers()
        .get(baton_wire::EPOCH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && e != inner.epoch.load(Ordering::Relaxed)
    {
        return Fail(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!(
                "media agent {}: lease epoch {e} is over; ask the director again",
                inner.name
            ),
        )
        .into_response();
    }
    let mut allowed = allow(&inner, &peer, &pool);
    if matches!(&allowed, Err(f) if f.0 == StatusCode::FORBIDDEN) {
        // Perhaps a job or an enrolment newer than the last heartbeat: ask
        // the director now (at most four times a second, whoever asks;
        // requests waiting meanwhile share the answer).
        let arrived = Instant::now();
        let mut last = inner.refreshed.lock().await;
        // Unless a refresh that started after this request arrived has
        // answered already.
        if *last < arrived {
            let next = *last + Duration::from_millis(250);
            tokio::time::sleep_until(next.into()).await;
            let started = Instant::now();
            let i = inner.clone();
            let _ = tokio::task::spawn_blocking(move || i.refresh()).await;
            *last = started;
        }
        drop(last);
        allowed = allow(&inner, &peer, &pool);
    }
    match allowed {
        Ok((agent, s)) => {
            req.extensions_mut()
                .insert(Allowed(agent, s.storage, s.index));
            next.run(req).await
        }
        Err(f) => f.into_response(),
    }
}

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/v1/repo/{pool}", get(repo_exists).post(repo_create))
        .route("/v1/repo/{pool}/{kind}", get(list))
        .route(
            "/v1/repo/{pool}/jobs/{job}/takeover",
            axum::routing::post(takeover),
        )
        .route(
            "/v1/repo/{pool}/{kind}/{*name}",
            get(get_object).put(put_object).delete(delete_object),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            inner.clone(),
            authorize,
        ))
        .layer(DefaultBodyLimit::max(proto::MAX_OBJECT))
        .fallback(|| async {
            Fail(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such endpoint".into(),
            )
        })
        .layer(axum::middleware::from_fn(check_version))
        .with_state(inner)
}

async fn check_version(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let v = req.headers().get(baton_wire::VERSION_HEADER);
    if v.and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u32>().ok())
        != Some(baton_wire::VERSION)
    {
        return Fail(
            StatusCode::BAD_REQUEST,
            ErrorCode::Version,
            format!(
                "this media agent speaks wire version {} (header {})",
                baton_wire::VERSION,
                baton_wire::VERSION_HEADER
            ),
        )
        .into_response();
    }
    next.run(req).await
}

/// Counts a request as in flight while it lives.
struct InFlight<'a>(&'a Load);

impl<'a> InFlight<'a> {
    fn new(l: &'a Load) -> Self {
        l.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(l)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Refuses (503) while the director has told this media agent to cease or
/// its lease has lapsed.
fn fenced(inner: &Inner) -> Result<(), Fail> {
    if *inner.ceased.borrow() {
        return Err(Fail(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!(
                "media agent {} was told to cease by the director; use another of the pool",
                inner.name
            ),
        ));
    }
    let current = inner
        .lease_until
        .lock()
        .expect("lease")
        .is_some_and(|t| Instant::now() < t);
    if !current {
        return Err(Fail(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!(
                "media agent {} has lost contact with the director and takes no requests; try another",
                inner.name
            ),
        ));
    }
    Ok(())
}

/// The agent behind a request and the storage of the pool it asks for,
/// if the director's grants allow it and the lease is current.
fn allow(inner: &Inner, peer: &Peer, pool: &str) -> Result<(String, Store), Fail> {
    fenced(inner)?;
    let Some(fp) = peer.0.as_deref() else {
        return Err(Fail(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            "an agent certificate is needed".into(),
        ));
    };
    let g = inner.grants.read().expect("grants");
    let Some((agent, pools)) = g.by_fingerprint.get(fp) else {
        return Err(Fail(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this certificate has no jobs here (not an agent's current certificate, or revoked)"
                .into(),
        ));
    };
    if !pools.iter().any(|p| p == pool) {
        return Err(Fail(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!("no job of agent {agent:?} names pool {pool:?}"),
        ));
    }
    let Some(s) = g.stores.get(pool) else {
        return Err(Fail(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!("media agent {} cannot open pool {pool:?} now", inner.name),
        ));
    };
    Ok((agent.clone(), s.clone()))
}

fn object(kind: &str, name: &str) -> Result<(ObjectKind, String), Fail> {
    let bad = |m: String| Fail(StatusCode::BAD_REQUEST, ErrorCode::Invalid, m);
    let k = proto::parse_kind(kind).ok_or_else(|| bad(format!("no object kind {kind:?}")))?;
    baton_storage::check_name(k, name).map_err(|e| bad(e.to_string()))?;
    Ok((k, name.to_string()))
}

/// Runs a storage call that reads on a blocking thread.
async fn blocking<T: Send + 'static>(
    inner: &Arc<Inner>,
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, Fail> {
    run_blocking(inner, false, f).await
}

/// Runs a storage call on a blocking thread; `write`: it changes the
/// repository.
async fn run_blocking<T: Send + 'static>(
    inner: &Arc<Inner>,
    write: bool,
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, Fail> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| storage_fail(inner, e, write)),
        Err(_) => Err(Fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "a storage call failed".into(),
        )),
    }
}

async fn repo_exists(
    State(inner): State<Arc<Inner>>,
    Extension(Allowed(_, s, _)): Extension<Allowed>,
    Path(_pool): Path<String>,
) -> Result<axum::Json<Exists>, Fail> {
    let exists = blocking(&inner, move || s.exists()).await?;
    Ok(axum::Json(Exists { exists }))
}

async fn repo_create(
    State(inner): State<Arc<Inner>>,
    Extension(Allowed(_, s, _)): Extension<Allowed>,
    Path(_pool): Path<String>,
) -> Result<StatusCode, Fail> {
    run_blocking(&inner, true, move || s.create()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
struct ListQuery {
    prefix: Option<String>,
}

async fn list(
    State(inner): State<Arc<Inner>>,
    Extension(Allowed(_, s, _)): Extension<Allowed>,
    Path((_pool, kind)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Vec<Listed>>, Fail> {
    let _f = InFlight::new(&inner.load);
    let k = proto::parse_kind(&kind).ok_or_else(|| {
        Fail(
            StatusCode::BAD_REQUEST,
            ErrorCode::Invalid,
            format!("no object kind {kind:?}"),
        )
    })?;
    if q.prefix.as_ref().is_some_and(|p| {
        p.len() > 200
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'/')
    }) {
        return Err(Fail(
            StatusCode::BAD_REQUEST,
            ErrorCode::Invalid,
            "invalid prefix".into(),
        ));
    }
    let listed = blocking(&inner, move || match q.prefix {
        Some(p) => s.list_prefix(k, &p),
        None => s.list(k),
    })
    .await?;
    Ok(axum::Json(
        listed
            .into_iter()
            .map(|o| Listed {
                name: o.name,
                size: o.size,
            })
            .collect(),
    ))
}

#[derive(serde::Deserialize)]
struct GetQuery {
    offset: Option<u64>,
    len: Option<u64>,
    max: Option<u64>,
    stat: Option<String>,
}

async fn get_object(
    State(inner): State<Arc<Inner>>,
    Extension(Allowed(_, s, _)): Extension<Allowed>,
    Path((_pool, kind, name)): Path<(String, String, String)>,
    Query(q): Query<GetQuery>,
) -> Result<Response, Fail> {
    let _f = InFlight::new(&inner.load);
    let (k, name) = object(&kind, &name)?;
    if q.stat.is_some() {
        let size = blocking(&inner, move || s.size(k, &name)).await?;
        return Ok(axum::Json(Size { size }).into_response());
    }
    let bad = |m: &str| Fail(StatusCode::BAD_REQUEST, ErrorCode::Invalid, m.to_string());
    let data = match (q.offset, q.len) {
        (Some(off), Some(len)) => {
            if len > proto::MAX_OBJECT as u64 || off.checked_add(len).is_none() {
                return Err(bad("range too long"));
            }
            let _room = reserve(&inner, len).await?;
            blocking(&inner, move || s.get_range(k, &name, off, len)).await?
        }
        (None, None) => {
            let max = q
                .max
                .unwrap_or(proto::MAX_OBJECT as u64)
                .min(proto::MAX_OBJECT as u64);
            // Room for what it is, not for what it may be.
            let (s2, n2) = (s.clone(), name.clone());
            let size = blocking(&inner, move || s2.size(k, &n2)).await?;
            if size > max {
                return Err(Fail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::Invalid,
                    format!("{kind}/{name} is {size} bytes, more than the {max} asked for"),
                ));
            }
            let _room = reserve(&inner, size).await?;
            blocking(&inner, move || s.get_limited(k, &name, max)).await?
        }
        _ => return Err(bad("a range needs both offset and len")),
    };
    Ok(([("content-type", "application/octet-stream")], data).into_response())
}

async fn put_object(
    State(inner): State<Arc<Inner>>,
    Extension(Allowed(agent, s, index)): Extension<Allowed>,
    Path((pool, kind, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<StatusCode, Fail> {
    let _f = InFlight::new(&inner.load);
    let (k, name) = object(&kind, &name)?;
    let cap = max_put(k);
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        Fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Invalid,
            format!("{kind} objects are at most {cap} bytes"),
        )
    };
    if declared.is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    // Room first, then the body: a slow or huge sender holds no memory it
    // was not given.
    let _slot = inner.writes.acquire().await.map_err(|_| {
        Fail(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "shutting down".into(),
        )
    })?;
    let _room = reserve(&inner, declared.unwrap_or(cap as u64)).await?;
    let data: Bytes = axum::body::to_bytes(body, cap)
        .await
        .map_err(|_| too_large())?;
    // Objects named by the hash of their bytes must be those bytes: a name
    // can never be taken by other contents (nor, on a backend that
    // re-uploads a torn object, replace them).
    if matches!(
        k,
        ObjectKind::Pack | ObjectKind::Index | ObjectKind::Snapshot | ObjectKind::Lock
    ) && baton_format::storage_id(&data).to_hex() != name
    {
        return Err(Fail(
            StatusCode::BAD_REQUEST,
            ErrorCode::Invalid,
            format!("{kind}/{name}: the name is not the hash of the bytes sent"),
        ));
    }
    if k == ObjectKind::Lock {
        // The lock is this agent's: only it may delete it.
        claim(&inner, &pool, &agent, k, &name, "create").await?;
    }
    let started = Instant::now();
    let _writing = (k == ObjectKind::Pack).then(|| Writing::new(&inner.load, data.len() as u64));
    let rate = inner.throttle.load(Ordering::Relaxed);
    if rate > 0 {
        // Ends early when the director says cease: what is not stored yet
        // goes to another media agent at once.
        let mut ceased = inner.ceased.subscribe();
        let pause = tokio::time::sleep(Duration::from_secs_f64(data.len() as f64 / rate as f64));
        tokio::select! {
            () = pause => {}
            _ = ceased.wait_for(|c| *c) => {
                return Err(Fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    format!("media agent {} was told to cease; use another of the pool", inner.name),
                ));
            }
        }
    }
    inner
        .load
        .bytes
        .fetch_add(data.len() as u64, Ordering::Relaxed);
    if k == ObjectKind::Journal {
        // On the index server before anything is acknowledged.
        let summary: Option<baton_wire::JournalSummary> =
            match headers.get(baton_wire::SUMMARY_HEADER) {
                Some(v) => Some(
                    v.to_str()
                        .ok()
                        .and_then(|v| serde_json::from_str(v).ok())
                        .ok_or_else(|| {
                            Fail(
                                StatusCode::BAD_REQUEST,
                                ErrorCode::Invalid,
                                "unreadable journal summary".into(),
                            )
                        })?,
                ),
                None => None,
            };
        // Every pack the record names is in the pool before the director
        // holds it as durable: packs this media agent stored are in its
        // index; those another stored (before a handover) are looked up.
        if let Some(sum) = &summary {
            let (packs, idx, s2): (Vec<String>, _, _) =
                (sum.packs.clone(), index.clone(), s.clone());
            let applied =
                run_blocking(&inner, false, move || idx.apply(s2.as_ref(), &packs)).await?;
            if let Some(first) = applied.missing.first() {
                return Err(Fail(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ErrorCode::Invalid,
                    format!(
                        "journal record {name} names {} pack(s) the pool does not hold (first: {first}): acknowledged but not stored. Run the job again: it resumes and sends what is missing",
                        applied.missing.len()
                    ),
                ));
            }
        }
        let ship = JournalShip {
            pool: pool.clone(),
            agent,
            name: name.clone(),
            sealed_hex: hex::encode(&data),
            summary,
            epoch: inner.epoch.load(Ordering::Relaxed),
        };
        ask_director(
            &inner,
            "the director did not take the journal record",
            move |d| d.ship_journal(&ship),
        )
        .await?;
    }
    // Fenced again right before the write: a request that arrived while
    // the lease held is not stored once it has lapsed or the director said
    // cease (the agent sends it to another media agent).
    fenced(&inner)?;
    let len = data.len() as u64;
    let stored = name.clone();
    let r = run_blocking(&inner, true, move || match s.put(k, &name, &data) {
        Err(e) if e.is_already_exists() => {
            // A retry of a write whose answer was lost is a success; a
            // different object under the name is not.
            let held = s.get_limited(k, &name, data.len() as u64)?;
            if held == data[..] { Ok(()) } else { Err(e) }
        }
        r => r,
    })
    .await;
    if r.is_ok() && k == ObjectKind::Pack {
        index.insert(&stored);
        inner.load.written.fetch_add(len, Ordering::Relaxed);
        inner
            .load
            .write_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
    r?;
    Ok(StatusCode::CREATED)
}

/// Asks the director (on a blocking thread). Its refusals pass on to the
/// agent as they are; anything else (it is unreachable, it fenced this
/// media agent) is 503: the agent tries another media agent.
async fn ask_director<T: Send + 'static>(
    inner: &Arc<Inner>,
    what: &'static str,
    f: impl FnOnce(&Client) -> Result<T, ClientError> + Send + 'static,
) -> Result<T, Fail> {
    let i = inner.clone();
    let r = tokio::task::spawn_blocking(move || f(&i.director()))
        .await
        .map_err(|_| {
            Fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                format!("{what}: the call failed"),
            )
        })?;
    r.map_err(|e| {
        let (status, code) = match e.code() {
            Some(ErrorCode::Forbidden) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            Some(ErrorCode::Conflict) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            Some(ErrorCode::Invalid) => (StatusCode::BAD_REQUEST, ErrorCode::Invalid),
            _ => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
        };
        Fail(status, code, format!("{what}: {e}"))
    })
}

/// An agent moved its running job here (its media agent failed, was
/// partitioned or told to cease): takes the job's shipped journal from
/// the director, applies it to this media agent's index of the pool
/// (every pack an acknowledged record names must be in the pool's
/// storage), reports what it found, and answers with the durable position
/// the job continues from.
async fn takeover(
    State(inner): State<Arc<Inner>>,
    Extension(Allowed(agent, s, index)): Extension<Allowed>,
    Path((pool, job)): Path<(String, String)>,
) -> Result<axum::Json<baton_wire::Takeover>, Fail> {
    let _f = InFlight::new(&inner.load);
    let started = Instant::now();
    if !(1..=64).contains(&job.len()) || !job.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Fail(
            StatusCode::BAD_REQUEST,
            ErrorCode::Invalid,
            "not a job id".into(),
        ));
    }
    fenced(&inner)?;
    let epoch = inner.epoch.load(Ordering::Relaxed);
    let req = baton_wire::HandoverRequest {
        pool,
        agent,
        job: job.clone(),
        epoch,
    };
    let handed = ask_director(&inner, "the director did not hand the job over", move |d| {
        d.handover(&req)
    })
    .await?;
    let packs = handed.packs.clone();
    let idx = index.clone();
    let applied = run_blocking(&inner, false, move || idx.apply(s.as_ref(), &packs)).await?;
    let checked = baton_wire::HandoverChecked {
        id: handed.id.clone(),
        epoch,
        packs_checked: applied.checked,
        missing_count: applied.missing.len() as u64,
        missing: applied.missing.iter().take(100).cloned().collect(),
    };
    ask_director(
        &inner,
        "the director did not take the handover's check",
        move |d| d.handover_checked(&checked),
    )
    .await?;
    if !applied.missing.is_empty() {
        eprintln!(
            "media agent {}: job {job} handed over from {}: {} acknowledged packs are not in storage",
            inner.name,
            handed.from.as_deref().unwrap_or("(none)"),
            applied.missing.len()
        );
    }
    Ok(axum::Json(baton_wire::Takeover {
        job,
        from: handed.from,
        to: inner.name.clone(),
        progress: handed.progress,
        packs_checked: applied.checked,
        missing_count: applied.missing.len() as u64,
        missing: applied.missing.into_iter().take(100).collect(),
        index_packs: index.len() as u64,
        ms: started.elapsed().as_millis() as u64,
    }))
}

/// Asks the director whether `agent` may `op` (create, delete) the lock or
/// journal record `kind/name` of `pool`: only its own.
async fn claim(
    inner: &Arc<Inner>,
    pool: &str,
    agent: &str,
    kind: ObjectKind,
    name: &str,
    op: &str,
) -> Result<(), Fail> {
    let job_key = (kind == ObjectKind::Journal).then(|| {
        (
            pool.to_string(),
            name.split('/').next().unwrap_or("").to_string(),
        )
    });
    if let Some(k) = &job_key
        && inner
            .journal_owners
            .lock()
            .expect("owners")
            .get(k)
            .is_some_and(|a| a == agent)
    {
        return Ok(());
    }
    let c = baton_wire::ObjectClaim {
        pool: pool.to_string(),
        agent: agent.to_string(),
        kind: proto::kind_name(kind).to_string(),
        name: name.to_string(),
        op: op.to_string(),
        epoch: inner.epoch.load(Ordering::Relaxed),
    };
    let i = inner.clone();
    let r = tokio::task::spawn_blocking(move || i.director().claim(&c))
        .await
        .map_err(|_| {
            Fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "asking the director failed".into(),
            )
        })?;
    match r {
        Ok(_) => {
            if let Some(k) = job_key {
                let mut owners = inner.journal_owners.lock().expect("owners");
                if owners.len() > 10_000 {
                    owners.clear();
                }
                owners.insert(k, agent.to_string());
            }
            Ok(())
        }
        Err(e) if e.code() == Some(ErrorCode::Forbidden) => Err(Fail(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!("{}/{name} is not this agent's", proto::kind_name(kind)),
        )),
        Err(e) => Err(Fail(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!("the director did not answer: {e}"),
        )),
    }
}

async fn delete_object(
    State(inner): State<Arc<Inner>>,
    Extension(Allowed(agent, s, _)): Extension<Allowed>,
    Path((pool, kind, name)): Path<(String, String, String)>,
) -> Result<StatusCode, Fail> {
    let (k, name) = object(&kind, &name)?;
    if !proto::client_may_delete(k) {
        eprintln!(
            "media agent {}: refused agent {agent:?} deleting {kind}/{name} in pool {pool:?}",
            inner.name
        );
        return Err(Fail(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "append-only: agents may not delete {kind} through a media agent (prune with a full key on a trusted machine)"
            ),
        ));
    }
    fenced(&inner)?;
    // Only the agent's own lock or journal.
    claim(&inner, &pool, &agent, k, &name, "delete").await?;
    run_blocking(&inner, true, move || s.remove(k, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}
