//! The agents' side of a media agent: [`MediaStorage`], the repository's
//! storage seam over the media agent protocol ([`crate::proto`]), and
//! [`MediaSink`], which sends backup journal records with their summary.
//!
//! The media agent is chosen by the director (the least loaded live one of
//! the pool). Its certificate is checked against the director's CA *by its
//! node name*: the URL's host is the media agent's name and a resolver of
//! our own maps it to the address the director gave, so no other node,
//! whatever address it answers on, passes for it.
//!
//! When a media agent stops answering, or answers that it cannot take
//! requests (503: it lost its lease, it is ceasing), the request is sent
//! again to another media agent of the pool, which the director names.
//! Every request is safe to repeat: objects are created once, and a
//! repeated create of the same bytes succeeds. Only the request in flight
//! is sent again: at most one pack per stream.

use crate::proto::{self, Exists, Listed, Size};
use baton_director::client::Client;
use baton_storage::{ErrorKind, ObjectInfo, ObjectKind, Storage, StorageError};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

/// A connection to one media agent.
struct Conn {
    name: String,
    base: String,
    agent: ureq::Agent,
    /// The lease epoch it was handed in: sent with every request.
    epoch: u64,
}

/// Resolves exactly one host name (a media agent's node name) to the
/// address the director gave for it.
#[derive(Debug)]
struct Fixed {
    host: String,
    addrs: Vec<SocketAddr>,
}

impl ureq::unversioned::resolver::Resolver for Fixed {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        if uri.host() != Some(self.host.as_str()) {
            return Err(ureq::Error::HostNotFound);
        }
        let mut out = self.empty();
        for a in self.addrs.iter().take(16) {
            out.push(*a);
        }
        if out.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}

/// A pool's repository reached through its media agents.
pub struct MediaStorage {
    pool: String,
    director: Client,
    tls: TlsConfig,
    current: Mutex<Option<Arc<Conn>>>,
    /// How long a request keeps looking for a media agent that takes it.
    patience: Duration,
    switches: AtomicU64,
    /// Media agents that served this storage, in order (the last serves now).
    served_by: Mutex<Vec<String>>,
    /// Requests sent again after a failure, and the bytes of their bodies.
    resent: AtomicU64,
    resent_bytes: AtomicU64,
    resent_packs: AtomicU64,
    /// The longest time from a failed request to its success through
    /// another media agent (milliseconds).
    takeover_ms: AtomicU64,
    /// The longest a failed request ran before its failure was known
    /// (milliseconds): how long detection took.
    detect_ms: AtomicU64,
    /// The backup job whose journal records go through this storage, the
    /// media agent that holds it now, and the last record acknowledged.
    job: Mutex<JobHolder>,
    /// Held while a job is handed to another media agent (one handover
    /// for all the requests that move at once).
    handing: Mutex<()>,
    takeovers: Mutex<Vec<baton_wire::Takeover>>,
}

/// Where a running job's journal goes.
#[derive(Default)]
struct JobHolder {
    job: Option<String>,
    media_agent: Option<String>,
    acked_seq: Option<u64>,
}

fn err(kind: ErrorKind, what: impl Into<String>, msg: impl Into<String>) -> StorageError {
    StorageError::new(kind, what, msg)
}

fn what(kind: ObjectKind, name: &str) -> String {
    match kind {
        ObjectKind::Config => "config".into(),
        k => format!("{} {name}", k.dir()),
    }
}

/// What a failed exchange means for the caller: try another media agent
/// (transport failure, 503), or an answer to pass on.
enum Outcome {
    Answer(Answer),
    Switch(String),
    Fatal(StorageError),
}

impl MediaStorage {
    /// The repository of `pool`, for the agent enrolled into `state_dir`
    /// with the director at `director`.
    pub fn new(director: &str, state_dir: &Path, pool: &str) -> Result<MediaStorage, StorageError> {
        let local = |m: String| err(ErrorKind::Permanent, format!("media:{pool}"), m);
        if !baton_wire::valid_node_name(pool) {
            return Err(local("not a pool name".into()));
        }
        let read = |f: &str| {
            std::fs::read_to_string(state_dir.join(f))
                .map_err(|e| local(format!("{}: {e}", state_dir.join(f).display())))
        };
        let (ca, cert, key) = (read("ca.pem")?, read("cert.pem")?, read("key.pem")?);
        let client =
            Client::with_cert(director, &ca, &cert, &key).map_err(|e| local(e.to_string()))?;
        let ca = Certificate::from_pem(ca.as_bytes()).map_err(|e| local(e.to_string()))?;
        let cert = Certificate::from_pem(cert.as_bytes()).map_err(|e| local(e.to_string()))?;
        let key = PrivateKey::from_pem(key.as_bytes()).map_err(|e| local(e.to_string()))?;
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(Arc::new(vec![ca.to_owned()])))
            .client_cert(Some(ClientCert::new_with_certs(
                &[cert.to_owned()],
                key.to_owned(),
            )))
            .build();
        Ok(MediaStorage {
            pool: pool.to_string(),
            director: client,
            tls,
            current: Mutex::new(None),
            patience: Duration::from_secs(
                std::env::var("BATON_MEDIA_PATIENCE_S")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(120),
            ),
            switches: AtomicU64::new(0),
            served_by: Mutex::new(Vec::new()),
            resent: AtomicU64::new(0),
            resent_bytes: AtomicU64::new(0),
            resent_packs: AtomicU64::new(0),
            takeover_ms: AtomicU64::new(0),
            detect_ms: AtomicU64::new(0),
            job: Mutex::new(JobHolder::default()),
            handing: Mutex::new(()),
            takeovers: Mutex::new(Vec::new()),
        })
    }

    /// How many times requests moved to another media agent.
    pub fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// Requests sent again after a failure, their body bytes, and how
    /// many of them were packs.
    pub fn resent(&self) -> (u64, u64, u64) {
        (
            self.resent.load(Ordering::Relaxed),
            self.resent_bytes.load(Ordering::Relaxed),
            self.resent_packs.load(Ordering::Relaxed),
        )
    }

    /// The longest takeover: from a request failing to its success through
    /// another media agent, in milliseconds.
    pub fn takeover_ms(&self) -> u64 {
        self.takeover_ms.load(Ordering::Relaxed)
    }

    /// The longest a failed request ran before the failure was known, in
    /// milliseconds.
    pub fn detect_ms(&self) -> u64 {
        self.detect_ms.load(Ordering::Relaxed)
    }

    /// The handovers of the running job to another media agent, as the
    /// new media agent answered them.
    pub fn takeovers(&self) -> Vec<baton_wire::Takeover> {
        self.takeovers.lock().expect("takeovers").clone()
    }

    /// Hands the running job (if there is one, and media agent `c` does
    /// not hold it yet) to `c`: it takes the job's journal from the
    /// director and checks it against the pool's storage. The job goes on
    /// there only if every record this agent saw acknowledged is in that
    /// journal, and every pack they name is stored.
    fn hand_over(&self, c: &Arc<Conn>) -> Result<(), Outcome> {
        let held = |j: &JobHolder| {
            j.job.is_none() || j.media_agent.is_none() || j.media_agent.as_deref() == Some(&c.name)
        };
        if held(&self.job.lock().expect("job")) {
            return Ok(());
        }
        let _one = self.handing.lock().expect("handing");
        let (job, acked) = {
            let j = self.job.lock().expect("job");
            if held(&j) {
                return Ok(());
            }
            (j.job.clone().expect("a job"), j.acked_seq)
        };
        let path = format!("/jobs/{job}/takeover");
        let req: Request = Arc::new(move |c: &Conn| {
            c.agent
                .post(format!("{}{path}", c.base))
                .header(baton_wire::VERSION_HEADER, baton_wire::VERSION.to_string())
                .header(baton_wire::EPOCH_HEADER, c.epoch.to_string())
                .send_empty()
        });
        let what = format!("handing job {job} to media agent {}", c.name);
        let a = match self.attempt(c, &req, 64 << 20, &what) {
            Outcome::Answer(a) => a,
            o => return Err(o),
        };
        let t: baton_wire::Takeover = Self::json(&what, a).map_err(Outcome::Fatal)?;
        let fatal = |m: String| Outcome::Fatal(err(ErrorKind::Permanent, &what, m));
        if t.missing_count > 0 || !t.missing.is_empty() {
            return Err(fatal(format!(
                "{} of the {} packs this job's acknowledged records name are not in the pool's storage (first: {}): media agent {} acknowledged writes it did not keep. Run the job again: it resumes and sends what is missing",
                t.missing_count.max(t.missing.len() as u64),
                t.packs_checked,
                t.missing.first().map_or("?", String::as_str),
                t.from.as_deref().unwrap_or("(none)")
            )));
        }
        if let Some(a) = acked
            && (!t.progress.gapless || t.progress.records == 0 || t.progress.last_seq < a)
        {
            return Err(fatal(format!(
                "the director holds this job's journal up to record {} ({}), but record {a} was acknowledged",
                t.progress.last_seq,
                if t.progress.gapless {
                    "no gap"
                } else {
                    "with gaps"
                }
            )));
        }
        self.job.lock().expect("job").media_agent = Some(c.name.clone());
        self.takeovers.lock().expect("takeovers").push(t);
        Ok(())
    }

    /// A journal record of `job` is about to be sent.
    fn journal_of(&self, job: &str) {
        let mut j = self.job.lock().expect("job");
        if j.job.as_deref() != Some(job) {
            *j = JobHolder {
                job: Some(job.to_string()),
                ..JobHolder::default()
            };
        }
    }

    /// The media agents that served, in order.
    pub fn served_by(&self) -> Vec<String> {
        self.served_by.lock().expect("served").clone()
    }

    fn connect(&self, name: &str, address: &str, epoch: u64) -> Result<Conn, String> {
        let addrs: Vec<SocketAddr> = address
            .to_socket_addrs()
            .map_err(|e| format!("{address}: {e}"))?
            .collect();
        let port = addrs.first().map(|a| a.port()).ok_or("no address")?;
        let config = ureq::Agent::config_builder()
            .tls_config(self.tls.clone())
            // Straight to the media agent: a proxy's host would not resolve
            // (only the media agent's name does), and is not wanted.
            .proxy(None)
            .https_only(true)
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .timeout_recv_body(Some(Duration::from_secs(120)))
            .timeout_send_body(Some(Duration::from_secs(120)))
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::new(),
            Fixed {
                host: baton_wire::media_host(name),
                addrs,
            },
        );
        Ok(Conn {
            epoch,
            name: name.to_string(),
            base: format!(
                "https://{}:{port}/v1/repo/{}",
                baton_wire::media_host(name),
                self.pool
            ),
            agent,
        })
    }

    /// The media agent to use: the current one, or the one the director
    /// names (not `avoid` if there is another).
    fn conn(&self, avoid: Option<&str>) -> Result<Arc<Conn>, (bool, String)> {
        if let Some(c) = self.current.lock().expect("conn").as_ref()
            && avoid != Some(c.name.as_str())
        {
            return Ok(c.clone());
        }
        let list = self
            .director
            .agent_media(&self.pool)
            .map_err(|e| (e.retry_later(), e.to_string()))?;
        let pick = list
            .media_agents
            .iter()
            .find(|m| Some(m.name.as_str()) != avoid)
            .or(list.media_agents.first())
            .ok_or_else(|| {
                (
                    true,
                    format!("no media agent of pool {} is live", self.pool),
                )
            })?;
        let c = Arc::new(
            self.connect(&pick.name, &pick.address, pick.epoch)
                .map_err(|m| (true, m))?,
        );
        let mut served = self.served_by.lock().expect("served");
        if served.last() != Some(&c.name) {
            if !served.is_empty() {
                self.switches.fetch_add(1, Ordering::Relaxed);
            }
            served.push(c.name.clone());
        }
        *self.current.lock().expect("conn") = Some(c.clone());
        Ok(c)
    }

    /// Whether the director still hands out media agent `name` for this
    /// pool (alive, not ceased). An unreachable director counts as yes:
    /// only the director's word moves a request that is still running.
    fn still_handed_out(&self, name: &str) -> bool {
        match self.director.probe_media(&self.pool) {
            Ok(list) => list.media_agents.iter().any(|m| m.name == name),
            Err(_) => true,
        }
    }

    /// Sends a request (made by `f` on a connection, body read whole within
    /// `limit`) to a media agent that takes it, moving to another on
    /// failure, until `patience` runs out. An error answer other than 503
    /// is returned as it is. `len` is the request body's size (counted when
    /// it has to be sent again).
    ///
    /// The request runs on its own thread. While it runs, the director is
    /// asked every half second (after the first second) whether the media
    /// agent is still live; once it is not (its heartbeats stopped: it is
    /// partitioned or hung, and its lease has ended, so it takes no more
    /// data), the request is sent to another without waiting for the
    /// network to time out. The abandoned thread ends at its own timeout.
    fn call(&self, what: &str, len: u64, limit: u64, f: Request) -> Result<Answer, StorageError> {
        let deadline = Instant::now() + self.patience;
        let mut failed_at: Option<Instant> = None;
        let mut avoid: Option<String> = None;
        let mut wait = Duration::from_millis(50);
        loop {
            let attempt = Instant::now();
            let outcome = match self.conn(avoid.as_deref()) {
                Ok(c) => match self.hand_over(&c) {
                    Err(o) => o,
                    Ok(()) => self.attempt(&c, &f, limit, what),
                },
                Err((true, m)) => Outcome::Switch(m),
                Err((false, m)) => {
                    return Err(err(ErrorKind::PermissionDenied, what, m));
                }
            };
            match outcome {
                Outcome::Fatal(e) => return Err(e),
                Outcome::Answer(a) => {
                    if let Some(t) = failed_at {
                        self.resent.fetch_add(1, Ordering::Relaxed);
                        self.resent_bytes.fetch_add(len, Ordering::Relaxed);
                        self.takeover_ms
                            .fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                    return Ok(a);
                }
                Outcome::Switch(why) => {
                    if failed_at.is_none() {
                        self.detect_ms
                            .fetch_max(attempt.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                    failed_at.get_or_insert_with(Instant::now);
                    let cur = self.current.lock().expect("conn").take();
                    if let Some(c) = cur {
                        avoid = Some(c.name.clone());
                    }
                    if Instant::now() >= deadline {
                        return Err(err(ErrorKind::Transient, what, why));
                    }
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// One exchange with media agent `c`, and what its result means.
    fn attempt(&self, c: &Arc<Conn>, f: &Request, limit: u64, what: &str) -> Outcome {
        match self.run(c, f, limit) {
            Some(Ok(a)) if a.status == 503 => {
                Outcome::Switch(format!("media agent {} is unavailable", c.name))
            }
            Some(Ok(mut a)) => {
                a.by = c.name.clone();
                Outcome::Answer(a)
            }
            Some(Err(e)) => {
                let m = e.to_string();
                if m.to_ascii_lowercase().contains("alert") {
                    // The media agent refused our certificate.
                    return Outcome::Fatal(err(
                        ErrorKind::PermissionDenied,
                        what,
                        format!(
                            "media agent {} refused this agent's certificate: {m}",
                            c.name
                        ),
                    ));
                }
                Outcome::Switch(format!("media agent {}: {m}", c.name))
            }
            None => Outcome::Switch(format!(
                "media agent {} was lost (the director no longer hands it out)",
                c.name
            )),
        }
    }

    /// Runs one exchange on its own thread; `None` if the media agent was
    /// lost while it ran.
    fn run(&self, c: &Arc<Conn>, f: &Request, limit: u64) -> Option<Result<Answer, ureq::Error>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (c2, f2) = (c.clone(), f.clone());
        let spawned = std::thread::Builder::new()
            .name("baton-media-request".into())
            .spawn(move || {
                let r = f2(&c2).and_then(|mut r| {
                    let status = r.status().as_u16();
                    let cap = if (200..300).contains(&status) {
                        limit
                    } else {
                        64 << 10
                    };
                    let body = r.body_mut().with_config().limit(cap).read_to_vec()?;
                    Ok(Answer {
                        status,
                        body,
                        by: String::new(),
                    })
                });
                let _ = tx.send(r);
            });
        if let Err(e) = spawned {
            return Some(Err(ureq::Error::Io(e)));
        }
        let started = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(r) => return Some(r),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Some(Err(ureq::Error::Io(std::io::Error::other(
                        "the request's thread ended",
                    ))));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if started.elapsed() >= Duration::from_secs(1)
                        && !self.still_handed_out(&c.name)
                    {
                        return None;
                    }
                }
            }
        }
    }

    /// An answer as a storage error, unless it is a success.
    fn check(what: &str, a: Answer) -> Result<Vec<u8>, StorageError> {
        if (200..300).contains(&a.status) {
            return Ok(a.body);
        }
        let msg = serde_json::from_slice::<baton_wire::ApiError>(&a.body)
            .map(|e| e.message)
            .unwrap_or_else(|_| format!("HTTP {}", a.status));
        Err(err(proto::kind_of(a.status), what, msg))
    }

    fn json<T: serde::de::DeserializeOwned>(what: &str, a: Answer) -> Result<T, StorageError> {
        let b = Self::check(what, a)?;
        serde_json::from_slice(&b).map_err(|e| {
            err(
                ErrorKind::Permanent,
                what,
                format!("unreadable answer: {e}"),
            )
        })
    }

    fn url(c: &Conn, kind: ObjectKind, name: &str) -> String {
        let name = if kind == ObjectKind::Config {
            "config"
        } else {
            name
        };
        format!("{}/{}/{name}", c.base, proto::kind_name(kind))
    }

    /// A GET of `path` below the repository's URL (with its query).
    fn get_path(path: String) -> Request {
        Arc::new(move |c: &Conn| {
            c.agent
                .get(format!("{}{path}", c.base))
                .header(baton_wire::VERSION_HEADER, baton_wire::VERSION.to_string())
                .header(baton_wire::EPOCH_HEADER, c.epoch.to_string())
                .call()
        })
    }

    fn object_path(kind: ObjectKind, name: &str) -> String {
        let name = if kind == ObjectKind::Config {
            "config"
        } else {
            name
        };
        format!("/{}/{name}", proto::kind_name(kind))
    }

    /// Creates an object; a journal record carries its summary.
    pub fn put_with(
        &self,
        kind: ObjectKind,
        name: &str,
        data: &[u8],
        summary: Option<&baton_wire::JournalSummary>,
    ) -> Result<String, StorageError> {
        baton_storage::check_name(kind, name)?;
        let w = what(kind, name);
        let summary = summary.map(|s| serde_json::to_string(s).expect("summary"));
        let before = self.resent.load(Ordering::Relaxed);
        let body: Arc<[u8]> = Arc::from(data);
        let name = name.to_string();
        let a = self.call(
            &w,
            data.len() as u64,
            64 << 10,
            Arc::new(move |c: &Conn| {
                let mut req = c
                    .agent
                    .put(Self::url(c, kind, &name))
                    .header(baton_wire::VERSION_HEADER, baton_wire::VERSION.to_string())
                    .header(baton_wire::EPOCH_HEADER, c.epoch.to_string());
                if let Some(s) = &summary {
                    req = req.header(baton_wire::SUMMARY_HEADER, s);
                }
                req.send(&body[..])
            }),
        )?;
        if kind == ObjectKind::Pack && self.resent.load(Ordering::Relaxed) > before {
            self.resent_packs.fetch_add(1, Ordering::Relaxed);
        }
        let by = a.by.clone();
        Self::check(&w, a).map(|_| by)
    }
}

/// One exchange with a media agent, made on a connection (it may be made
/// again on another).
type Request =
    Arc<dyn Fn(&Conn) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> + Send + Sync>;

/// A whole answer.
struct Answer {
    status: u16,
    body: Vec<u8>,
    /// The media agent that answered.
    by: String,
}

impl Storage for MediaStorage {
    fn location(&self) -> String {
        format!("media:{}", self.pool)
    }

    fn exists(&self) -> Result<bool, StorageError> {
        let a = self.call("repository", 0, 1 << 10, Self::get_path(String::new()))?;
        Ok(Self::json::<Exists>("repository", a)?.exists)
    }

    fn create(&self) -> Result<(), StorageError> {
        let a = self.call(
            "repository",
            0,
            1 << 10,
            Arc::new(|c: &Conn| {
                c.agent
                    .post(&c.base)
                    .header(baton_wire::VERSION_HEADER, baton_wire::VERSION.to_string())
                    .header(baton_wire::EPOCH_HEADER, c.epoch.to_string())
                    .send_empty()
            }),
        )?;
        Self::check("repository", a).map(|_| ())
    }

    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StorageError> {
        self.put_with(kind, name, data, None).map(|_| ())
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StorageError> {
        self.get_limited(kind, name, proto::MAX_OBJECT as u64)
    }

    fn get_limited(&self, kind: ObjectKind, name: &str, max: u64) -> Result<Vec<u8>, StorageError> {
        baton_storage::check_name(kind, name)?;
        let w = what(kind, name);
        let path = format!("{}?max={max}", Self::object_path(kind, name));
        let a = self.call(&w, 0, max, Self::get_path(path))?;
        Self::check(&w, a)
    }

    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StorageError> {
        baton_storage::check_name(kind, name)?;
        let w = what(kind, name);
        let path = format!(
            "{}?offset={offset}&len={len}",
            Self::object_path(kind, name)
        );
        let a = self.call(&w, 0, len, Self::get_path(path))?;
        let b = Self::check(&w, a)?;
        if b.len() as u64 != len {
            return Err(err(
                ErrorKind::Permanent,
                w,
                format!("short read: {} of {len} bytes", b.len()),
            ));
        }
        Ok(b)
    }

    fn size(&self, kind: ObjectKind, name: &str) -> Result<u64, StorageError> {
        baton_storage::check_name(kind, name)?;
        let w = what(kind, name);
        let path = format!("{}?stat=1", Self::object_path(kind, name));
        let a = self.call(&w, 0, 1 << 10, Self::get_path(path))?;
        Ok(Self::json::<Size>(&w, a)?.size)
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError> {
        self.list_prefix(kind, "")
    }

    fn list_prefix(&self, kind: ObjectKind, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'/')
        {
            return Err(err(ErrorKind::Permanent, kind.dir(), "invalid prefix"));
        }
        let w = kind.dir().to_string();
        let path = format!("/{}?prefix={prefix}", proto::kind_name(kind));
        let a = self.call(&w, 0, 256 << 20, Self::get_path(path))?;
        Ok(Self::json::<Vec<Listed>>(&w, a)?
            .into_iter()
            .map(|l| ObjectInfo {
                name: l.name,
                size: l.size,
            })
            .collect())
    }

    fn remove(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError> {
        baton_storage::check_name(kind, name)?;
        let w = what(kind, name);
        let url_name = name.to_string();
        let a = self.call(
            &w,
            0,
            1 << 10,
            Arc::new(move |c: &Conn| {
                c.agent
                    .delete(Self::url(c, kind, &url_name))
                    .header(baton_wire::VERSION_HEADER, baton_wire::VERSION.to_string())
                    .header(baton_wire::EPOCH_HEADER, c.epoch.to_string())
                    .call()
            }),
        )?;
        if kind == ObjectKind::Journal {
            // The job's journal is going: it is done (or given up), and
            // has nothing more to hand over.
            let mut j = self.job.lock().expect("job");
            if name.split_once('/').map(|(job, _)| job) == j.job.as_deref() {
                *j = JobHolder::default();
            }
        }
        if a.status == 404 {
            return Ok(());
        }
        Self::check(&w, a).map(|_| ())
    }

    fn is_remote(&self) -> bool {
        true
    }
}

/// Sends a repository's backup journal records through a media agent,
/// with their summary in the clear for the director.
pub struct MediaSink(pub Arc<MediaStorage>);

impl baton_repo::journal::JournalSink for MediaSink {
    fn store(
        &self,
        name: &str,
        sealed: &[u8],
        summary: &baton_repo::journal::RecordSummary,
    ) -> baton_repo::Result<()> {
        let s = baton_wire::JournalSummary {
            seq: summary.seq,
            position: summary.position,
            packs: summary.packs.iter().map(|p| p.to_hex()).collect(),
            pack_bytes: summary.pack_bytes,
        };
        if let Some((job, _)) = name.split_once('/') {
            self.0.journal_of(job);
        }
        let by = self
            .0
            .put_with(ObjectKind::Journal, name, sealed, Some(&s))?;
        // Acknowledged: the director holds it, through the media agent
        // that answered (a handover to another waits for it).
        let mut j = self.0.job.lock().expect("job");
        if j.media_agent.is_none() {
            j.media_agent = Some(by);
        }
        j.acked_seq = Some(j.acked_seq.map_or(summary.seq, |a| a.max(summary.seq)));
        Ok(())
    }
}
