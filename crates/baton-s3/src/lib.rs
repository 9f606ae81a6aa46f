//! Baton repositories on S3-compatible object storage.
//!
//! `s3:https://host[:port]/bucket[/prefix]` (or `s3:http://...` for a
//! gateway on a trusted network). Objects keep the layout of a local
//! repository under the prefix (`config`, `keys/<id>`, `data/<2 hex>/<id>`,
//! `index/<id>`, `snapshots/<id>`, `locks/<id>`, `journal/<job>/<record>`),
//! so a repository can be copied between a directory and a bucket with any
//! sync tool.
//!
//! How the format's needs map to S3:
//! - **Create-only:** every single-request `PUT` carries `If-None-Match: *`;
//!   the server answers 412 when the name exists, atomically (AWS since
//!   2024, Ceph RGW, MinIO, R2). Creating a repository first proves the
//!   server honours it (a second conditional `PUT` of a probe object must
//!   fail), and refuses a server that ignores it: locks, journal records and
//!   the config depend on it. Only content-addressed objects (packs, index
//!   objects, snapshots: named by the hash of their bytes) may be large, and
//!   only they are uploaded in parts; for them an overwrite writes the same
//!   bytes, so no condition is needed (and RGW ignores it on multipart
//!   completion anyway).
//! - **Bounded memory:** an object is uploaded from the caller's buffer (a
//!   pack, at most the configured pack size), in parts of [`PART_SIZE`];
//!   reads of objects whose size is not authenticated stop one byte past
//!   their limit.
//! - **Errors:** 404 is "not found", 412 "exists", 403 `QuotaExceeded` "no
//!   space", other 403/401 "permission denied"; 429, 5xx, timeouts and
//!   broken connections are transient: the request is sent again with
//!   back-off and jitter (each wait ended by the stop flag); anything else
//!   is permanent and never retried.
//!
//! The client is synchronous: requests are signed by `rusty-s3` (SigV4,
//! presigned URLs, no I/O) and sent by `ureq` (blocking, rustls), so the
//! core stays free of an async runtime.

use baton_storage::{
    ErrorKind, ObjectInfo, ObjectKind, RetryPolicy, Storage, StorageError, check_name,
};
use rusty_s3::actions::{
    CompleteMultipartUpload, CreateMultipartUpload, DeleteObjectsResponse, ListObjectsV2,
    ObjectIdentifier,
};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use ureq::http;

/// Objects larger than this are uploaded in parts of this size (S3's
/// smallest part is 5 MiB).
pub const PART_SIZE: usize = 8 << 20;

/// How long a signed request stays valid.
const SIGNATURE_VALID: Duration = Duration::from_secs(3600);

/// Most bytes of an error answer read (its XML names the error).
const MAX_ERROR_BODY: u64 = 64 << 10;

/// Most keys one listing returns (100 million: far beyond any repository's
/// object count, far below what would exhaust memory).
const MAX_LISTED: usize = 100_000_000;

/// Most bytes of a whole-object read (the largest pack plus its header;
/// metadata objects are smaller).
const MAX_OBJECT: u64 = (1 << 30) + (64 << 20);

/// Most bytes of one listing page or other XML answer read.
const MAX_XML_BODY: u64 = 16 << 20;

/// Where and how to reach a bucket.
#[derive(Clone)]
pub struct S3Config {
    /// Scheme, host and port of the endpoint.
    pub endpoint: url::Url,
    pub bucket: String,
    /// Key prefix of the repository inside the bucket ("" or ending in `/`).
    pub prefix: String,
    pub region: String,
    /// Path-style (`host/bucket/key`, the default: works with every
    /// S3-compatible server) or virtual-host style (`bucket.host/key`).
    pub virtual_host: bool,
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
    /// Extra CA certificates (PEM) to trust, for a private endpoint.
    pub ca_bundle: Option<PathBuf>,
    /// How long to wait for an answer to a request (the response head)
    /// and for each read or write of a body to progress.
    pub timeout: Duration,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint.as_str())
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("virtual_host", &self.virtual_host)
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

fn config_error(message: impl Into<String>) -> StorageError {
    StorageError::new(ErrorKind::Permanent, "S3 repository location", message)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl S3Config {
    /// Parses `https://host[:port]/bucket[/prefix]` (the part after `s3:`),
    /// taking the rest from the environment: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, else the profile
    /// `AWS_PROFILE` (default `default`) of `AWS_SHARED_CREDENTIALS_FILE`
    /// (default `~/.aws/credentials`); the region from `BATON_S3_REGION`,
    /// `AWS_REGION`, `AWS_DEFAULT_REGION` or the profile's config file
    /// (default `us-east-1`); `BATON_S3_ADDRESSING=virtual` for
    /// virtual-host addressing; a CA bundle from `BATON_S3_CA_BUNDLE` or
    /// `AWS_CA_BUNDLE`; `BATON_S3_TIMEOUT` in seconds (default 60).
    pub fn from_location(location: &str) -> Result<S3Config, StorageError> {
        Self::from_location_with(location, &env)
    }

    /// [`S3Config::from_location`] with the variables looked up by `env`
    /// (a test's own environment, say).
    pub fn from_location_with(
        location: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<S3Config, StorageError> {
        let url = url::Url::parse(location).map_err(|e| {
            config_error(format!(
                "{location:?} is not a URL ({e}); expected s3:https://host[:port]/bucket[/prefix]"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(config_error(format!(
                "{location:?}: expected s3:https://host[:port]/bucket[/prefix] (or http:// on a trusted network)"
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(config_error(
                "credentials do not belong in the repository URL: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ));
        }
        let path = url.path().trim_matches('/');
        let (bucket, prefix) = match path.split_once('/') {
            Some((b, p)) => (b.to_string(), format!("{}/", p.trim_matches('/'))),
            None => (path.to_string(), String::new()),
        };
        if bucket.is_empty() {
            return Err(config_error(format!(
                "{location:?} names no bucket: expected s3:https://host[:port]/bucket[/prefix]"
            )));
        }
        let mut endpoint = url.clone();
        endpoint.set_path("/");
        endpoint.set_query(None);
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let home = env("HOME").map(PathBuf::from);
        let (access_key, secret_key, session_token) = match (
            env("AWS_ACCESS_KEY_ID"),
            env("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(a), Some(s)) => (a, s, env("AWS_SESSION_TOKEN")),
            _ => {
                let file = env("AWS_SHARED_CREDENTIALS_FILE")
                    .map(PathBuf::from)
                    .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
                let section = file
                    .as_ref()
                    .and_then(|f| std::fs::read_to_string(f).ok())
                    .map(|t| ini_section(&t, &profile))
                    .unwrap_or_default();
                let get = |k: &str| {
                    section
                        .iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                };
                match (get("aws_access_key_id"), get("aws_secret_access_key")) {
                    (Some(a), Some(s)) => (a, s, get("aws_session_token")),
                    _ => {
                        return Err(config_error(format!(
                            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or add profile [{profile}] to {}",
                            file.map_or("~/.aws/credentials".into(), |f| f.display().to_string())
                        )));
                    }
                }
            }
        };
        let region = env("BATON_S3_REGION")
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| {
                let file = env("AWS_CONFIG_FILE")
                    .map(PathBuf::from)
                    .or_else(|| home.as_ref().map(|h| h.join(".aws/config")))?;
                let text = std::fs::read_to_string(file).ok()?;
                let name = if profile == "default" {
                    "default".to_string()
                } else {
                    format!("profile {profile}")
                };
                ini_section(&text, &name)
                    .into_iter()
                    .find(|(k, _)| k == "region")
                    .map(|(_, v)| v)
            })
            .unwrap_or_else(|| "us-east-1".into());
        let virtual_host = match env("BATON_S3_ADDRESSING").as_deref() {
            None | Some("path") => false,
            Some("virtual") => true,
            Some(other) => {
                return Err(config_error(format!(
                    "BATON_S3_ADDRESSING={other:?}: expected \"path\" or \"virtual\""
                )));
            }
        };
        let timeout = match env("BATON_S3_TIMEOUT") {
            None => Duration::from_secs(60),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0 && *s < 86_400.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| config_error(format!("BATON_S3_TIMEOUT={v:?}: expected seconds")))?,
        };
        Ok(S3Config {
            endpoint,
            bucket,
            prefix,
            region,
            virtual_host,
            access_key,
            secret_key,
            session_token,
            ca_bundle: env("BATON_S3_CA_BUNDLE")
                .or_else(|| env("AWS_CA_BUNDLE"))
                .map(PathBuf::from),
            timeout,
        })
    }
}

/// The `key = value` lines of section `[name]` of an INI file (the AWS
/// credentials and config files).
fn ini_section(text: &str, name: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = h.trim() == name;
            continue;
        }
        if inside && let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// A repository in an S3 bucket.
pub struct S3Storage {
    policy: RetryPolicy,
    stop: Option<Arc<AtomicBool>>,
    bucket: Bucket,
    creds: Credentials,
    prefix: String,
    agent: ureq::Agent,
    location: String,
    requests: AtomicU64,
    /// Print each request's method and path (`BATON_S3_TRACE`).
    trace: bool,
}

/// What a response said, read far enough to act on.
struct Answer {
    status: u16,
    code: String,
    message: String,
}

fn xml_field(body: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    body.find(&open)
        .and_then(|i| {
            let rest = &body[i + open.len()..];
            rest.find(&close).map(|j| rest[..j].to_string())
        })
        .unwrap_or_default()
}

impl S3Storage {
    pub fn new(config: S3Config) -> Result<S3Storage, StorageError> {
        let style = if config.virtual_host {
            UrlStyle::VirtualHost
        } else {
            UrlStyle::Path
        };
        let bucket = Bucket::new(
            config.endpoint.clone(),
            style,
            config.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|e| config_error(format!("bucket {:?}: {e}", config.bucket)))?;
        let creds = match &config.session_token {
            Some(t) => Credentials::new_with_token(&config.access_key, &config.secret_key, t),
            None => Credentials::new(&config.access_key, &config.secret_key),
        };
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(path) = &config.ca_bundle {
            let pem = std::fs::read(path).map_err(|e| {
                config_error(format!("reading the CA bundle {}: {e}", path.display()))
            })?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(config_error(format!(
                            "the CA bundle {} is not PEM: {e}",
                            path.display()
                        )));
                    }
                }
            }
            if certs.is_empty() {
                return Err(config_error(format!(
                    "the CA bundle {} holds no certificate",
                    path.display()
                )));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let t = Some(config.timeout);
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls.build())
            .timeout_connect(Some(Duration::from_secs(10).min(config.timeout)))
            .timeout_recv_response(t)
            .timeout_per_read(t)
            .timeout_per_write(t)
            .max_idle_connections_per_host(16)
            // A 3xx to a write or delete must not become a GET that
            // "succeeds"; an https endpoint is never left for http.
            .max_redirects(0)
            .https_only(config.endpoint.scheme() == "https")
            // A server trickling one byte a minute still ends.
            .timeout_global(Some(Duration::from_secs(3600)))
            .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let location = format!(
            "s3:{}{}/{}",
            config.endpoint.as_str().trim_end_matches('/'),
            if config.virtual_host {
                " (virtual-host)"
            } else {
                ""
            },
            format!("{}/{}", config.bucket, config.prefix).trim_end_matches('/')
        );
        Ok(S3Storage {
            policy: RetryPolicy {
                attempts: 8,
                initial_delay: Duration::from_millis(200),
                max_delay: Duration::from_secs(10),
            },
            stop: None,
            bucket,
            creds,
            prefix: config.prefix,
            agent,
            location,
            requests: AtomicU64::new(0),
            trace: std::env::var_os("BATON_S3_TRACE").is_some(),
        })
    }

    /// How often and how long a transient failure of a request is retried
    /// (default: 8 attempts, 200 ms doubling to 10 s, with jitter).
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Waits between retries end as soon as `stop` is set (Ctrl-C).
    pub fn with_stop(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Requests sent so far (for the benchmark's requests per backup).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn key(&self, kind: ObjectKind, name: &str) -> String {
        match kind {
            ObjectKind::Config => format!("{}config", self.prefix),
            ObjectKind::Pack => format!(
                "{}data/{}/{name}",
                self.prefix,
                name.get(..2).unwrap_or("00")
            ),
            _ => format!("{}{}/{name}", self.prefix, kind.dir()),
        }
    }

    fn what(kind: ObjectKind, name: &str) -> String {
        match kind {
            ObjectKind::Config => "config".into(),
            _ => format!("{} {name}", kind.dir()),
        }
    }

    /// Sends a request, again after a transient failure (a broken or
    /// refused connection, a timeout, 408, 429, 500, 502, 503, 504) with
    /// back-off and jitter, each wait ended by the stop flag; any other
    /// HTTP answer is returned as a response. Requests are presigned and
    /// their bodies are buffers, so each attempt sends the same request.
    fn send(
        &self,
        method: http::Method,
        url: url::Url,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
        what: &str,
    ) -> Result<http::Response<ureq::Body>, StorageError> {
        self.policy.run_until(self.stop.as_deref(), || {
            let mut resp = self.send_once(method.clone(), url.clone(), headers, body, what)?;
            if resp.status().is_success() || !transient_status(resp.status().as_u16()) {
                return Ok(resp);
            }
            // One table decides (status_error's kinds): the retry loop
            // sends again only what it calls transient.
            Err(Self::status_error(&mut resp, what, "request"))
        })
    }

    /// Sends one request; a network failure is an error, any HTTP answer a
    /// response.
    fn send_once(
        &self,
        method: http::Method,
        url: url::Url,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
        what: &str,
    ) -> Result<http::Response<ureq::Body>, StorageError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.trace {
            eprintln!("s3: {method} {}", url.path());
        }
        let uri = url.as_str();
        let net = |e: ureq::Error| transport_error(e, what);
        macro_rules! with_headers {
            ($req:expr) => {{
                let mut r = $req;
                for (k, v) in headers {
                    r = r.header(*k, v.as_str());
                }
                r
            }};
        }
        let resp = match method {
            http::Method::GET => with_headers!(self.agent.get(uri)).call(),
            http::Method::HEAD => with_headers!(self.agent.head(uri)).call(),
            http::Method::DELETE => with_headers!(self.agent.delete(uri)).call(),
            http::Method::PUT => with_headers!(self.agent.put(uri)).send(body.unwrap_or_default()),
            http::Method::POST => {
                with_headers!(self.agent.post(uri)).send(body.unwrap_or_default())
            }
            m => {
                return Err(StorageError::new(
                    ErrorKind::Permanent,
                    what,
                    format!("unsupported method {m}"),
                ));
            }
        };
        resp.map_err(net)
    }

    /// Reads an error answer's code and message.
    fn answer(resp: &mut http::Response<ureq::Body>) -> Answer {
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_ERROR_BODY)
            .read_to_string()
            .unwrap_or_default();
        Answer {
            status,
            code: xml_field(&body, "Code"),
            message: xml_field(&body, "Message"),
        }
    }

    /// The error of a non-success answer.
    fn status_error(
        resp: &mut http::Response<ureq::Body>,
        what: &str,
        action: &str,
    ) -> StorageError {
        let a = Self::answer(resp);
        let detail = match (a.code.is_empty(), a.message.is_empty()) {
            (true, _) => format!("HTTP {}", a.status),
            (false, true) => format!("HTTP {} {}", a.status, a.code),
            (false, false) => format!("HTTP {} {}: {}", a.status, a.code, a.message),
        };
        let kind = match (a.status, a.code.as_str()) {
            (404, _) => ErrorKind::NotFound,
            (412, _) => ErrorKind::AlreadyExists,
            (403, "QuotaExceeded") | (507, _) => ErrorKind::NoSpace,
            (400, "EntityTooLarge") => ErrorKind::NoSpace,
            (401 | 403, _) => ErrorKind::PermissionDenied,
            // A concurrent conditional write of the same key (AWS).
            (409, "ConditionalRequestConflict" | "OperationAborted") => ErrorKind::Transient,
            (408 | 429 | 500 | 502 | 503 | 504, _) => ErrorKind::Transient,
            (400, "RequestTimeout" | "SlowDown") => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        };
        let hint = match kind {
            ErrorKind::NoSpace => " (the bucket's quota or the store is full)",
            ErrorKind::PermissionDenied => " (check the credentials and the bucket's policy)",
            _ => "",
        };
        StorageError::new(kind, what, format!("{action} failed: {detail}{hint}"))
    }

    fn ok_or_error(
        mut resp: http::Response<ureq::Body>,
        what: &str,
        action: &str,
    ) -> Result<http::Response<ureq::Body>, StorageError> {
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(Self::status_error(&mut resp, what, action))
        }
    }

    fn read_xml(resp: &mut http::Response<ureq::Body>, what: &str) -> Result<String, StorageError> {
        resp.body_mut()
            .with_config()
            .limit(MAX_XML_BODY)
            .read_to_string()
            .map_err(|e| transport_error(e, what))
    }

    fn put_single(
        &self,
        key: &str,
        data: &[u8],
        conditional: bool,
        what: &str,
    ) -> Result<(), StorageError> {
        let mut action = self.bucket.put_object(Some(&self.creds), key);
        let mut headers = Vec::new();
        if conditional {
            action.headers_mut().insert("if-none-match", "*");
            headers.push(("if-none-match", "*".to_string()));
        }
        let url = action.sign(SIGNATURE_VALID);
        let before = self.requests();
        let resp = self.send(http::Method::PUT, url, &headers, Some(data), what)?;
        match Self::ok_or_error(resp, what, "storing") {
            Ok(_) => Ok(()),
            // An earlier attempt may have stored it and lost the answer:
            // the object is ours if it holds exactly these bytes (every
            // sealed object carries a random nonce, so nobody else's does).
            Err(e) if e.is_already_exists() && self.requests() - before > 1 => {
                let get = self
                    .bucket
                    .get_object(Some(&self.creds), key)
                    .sign(SIGNATURE_VALID);
                let mut resp = Self::ok_or_error(
                    self.send(http::Method::GET, get, &[], None, what)?,
                    what,
                    "reading back",
                )?;
                let mut stored = Vec::new();
                resp.body_mut()
                    .as_reader()
                    .take(data.len() as u64 + 1)
                    .read_to_end(&mut stored)
                    .map_err(|e| io_transport_error(&e, what))?;
                if stored == data { Ok(()) } else { Err(e) }
            }
            Err(e) => Err(e),
        }
    }

    fn put_multipart(&self, key: &str, data: &[u8], what: &str) -> Result<(), StorageError> {
        let create = self.bucket.create_multipart_upload(Some(&self.creds), key);
        let url = create.sign(SIGNATURE_VALID);
        let resp = self.send(http::Method::POST, url, &[], Some(&[]), what)?;
        let mut resp = Self::ok_or_error(resp, what, "starting an upload in parts")?;
        let xml = Self::read_xml(&mut resp, what)?;
        let created = CreateMultipartUpload::parse_response(&xml).map_err(|e| {
            StorageError::new(
                ErrorKind::Permanent,
                what,
                format!("unexpected answer to an upload in parts: {e}"),
            )
        })?;
        let upload_id = created.upload_id().to_string();
        let result = self.upload_parts(key, &upload_id, data, what);
        if result.is_err() {
            // Parts of an abandoned upload cost storage until aborted.
            let abort = self
                .bucket
                .abort_multipart_upload(Some(&self.creds), key, &upload_id);
            let url = abort.sign(SIGNATURE_VALID);
            let _ = self.send(http::Method::DELETE, url, &[], None, what);
        }
        result
    }

    fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        data: &[u8],
        what: &str,
    ) -> Result<(), StorageError> {
        let mut etags = Vec::new();
        for (i, part) in data.chunks(PART_SIZE).enumerate() {
            let number = u16::try_from(i + 1).map_err(|_| {
                StorageError::new(ErrorKind::Permanent, what, "more than 65535 parts")
            })?;
            let action = self
                .bucket
                .upload_part(Some(&self.creds), key, number, upload_id);
            let url = action.sign(SIGNATURE_VALID);
            let resp = self.send(http::Method::PUT, url, &[], Some(part), what)?;
            let resp = Self::ok_or_error(resp, what, "uploading a part")?;
            let etag = resp
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .ok_or_else(|| {
                    StorageError::new(
                        ErrorKind::Transient,
                        what,
                        "the server named no ETag for an uploaded part",
                    )
                })?;
            etags.push(etag);
        }
        let complete: CompleteMultipartUpload<'_, _> = self.bucket.complete_multipart_upload(
            Some(&self.creds),
            key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = complete.sign(SIGNATURE_VALID);
        let body = complete.body();
        let resp = self.send(http::Method::POST, url, &[], Some(body.as_bytes()), what)?;
        let mut resp = match Self::ok_or_error(resp, what, "completing an upload in parts") {
            Ok(r) => r,
            // A retried completion whose first answer was lost finds the
            // upload gone: done if the object is there whole.
            Err(e) if e.is_not_found() => {
                return match self.head(key, what)? {
                    Some(n) if n == data.len() as u64 => Ok(()),
                    _ => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        // S3 may answer 200 and report a failure in the body.
        let xml = Self::read_xml(&mut resp, what)?;
        if xml.contains("<Error>") {
            let code = xml_field(&xml, "Code");
            let kind = if matches!(code.as_str(), "InternalError" | "SlowDown") {
                ErrorKind::Transient
            } else {
                ErrorKind::Permanent
            };
            return Err(StorageError::new(
                kind,
                what,
                format!(
                    "completing an upload in parts failed: {code}: {}",
                    xml_field(&xml, "Message")
                ),
            ));
        }
        // The stored size must be what was sent (a part lost or doubled
        // would otherwise go unnoticed until a read).
        let size = self.head(key, what)?.ok_or_else(|| {
            StorageError::new(
                ErrorKind::Transient,
                what,
                "the object is not there after its upload completed",
            )
        })?;
        if size != data.len() as u64 {
            // Never leave a wrong object under a content-addressed name:
            // the next put would take it for stored.
            let url = self
                .bucket
                .delete_object(Some(&self.creds), key)
                .sign(SIGNATURE_VALID);
            let _ = self.send(http::Method::DELETE, url, &[], None, what);
            return Err(StorageError::new(
                ErrorKind::Permanent,
                what,
                format!(
                    "stored {size} bytes after an upload in parts of {}",
                    data.len()
                ),
            ));
        }
        Ok(())
    }

    /// The size of `key`, or None if there is no such object.
    fn head(&self, key: &str, what: &str) -> Result<Option<u64>, StorageError> {
        let url = self
            .bucket
            .head_object(Some(&self.creds), key)
            .sign(SIGNATURE_VALID);
        let mut resp = self.send(http::Method::HEAD, url, &[], None, what)?;
        match resp.status().as_u16() {
            404 => Ok(None),
            s if (200..300).contains(&s) => Ok(Some(content_length(&resp).ok_or_else(|| {
                StorageError::new(
                    ErrorKind::Transient,
                    what,
                    "no Content-Length in the answer",
                )
            })?)),
            // A HEAD answer has no body to name the error.
            403 => Err(StorageError::new(
                ErrorKind::PermissionDenied,
                what,
                "reading failed: HTTP 403 (check the credentials and the bucket's policy)",
            )),
            _ => Err(Self::status_error(&mut resp, what, "reading")),
        }
    }

    fn get_object(
        &self,
        kind: ObjectKind,
        name: &str,
        range: Option<(u64, u64)>,
        max: u64,
    ) -> Result<Vec<u8>, StorageError> {
        check_name(kind, name)?;
        let what = Self::what(kind, name);
        let key = self.key(kind, name);
        let url = self
            .bucket
            .get_object(Some(&self.creds), &key)
            .sign(SIGNATURE_VALID);
        let mut headers = Vec::new();
        if let Some((offset, len)) = range {
            headers.push(("range", format!("bytes={}-{}", offset, offset + len - 1)));
        }
        // The body is read inside the retry: a connection reset halfway
        // through a pack is as transient as one before its head.
        self.policy.run_until(self.stop.as_deref(), || {
            let resp = self.send_once(http::Method::GET, url.clone(), &headers, None, &what)?;
            let mut resp = Self::ok_or_error(resp, &what, "reading")?;
            if range.is_some() && resp.status().as_u16() != 206 {
                return Err(StorageError::new(
                    ErrorKind::Permanent,
                    what.clone(),
                    format!(
                        "reading a range failed: the server answered HTTP {} instead of 206",
                        resp.status().as_u16()
                    ),
                ));
            }
            if let Some(len) = content_length(&resp)
                && len > max
            {
                return Err(baton_storage::too_large(kind, name, len, max));
            }
            let mut out = Vec::new();
            resp.body_mut()
                .as_reader()
                .take(max + 1)
                .read_to_end(&mut out)
                .map_err(|e| io_transport_error(&e, &what))?;
            if out.len() as u64 > max {
                return Err(baton_storage::too_large(kind, name, out.len() as u64, max));
            }
            Ok(out)
        })
    }

    /// Whether the server refuses a second conditional create of one key:
    /// proven on a probe object before a repository is created.
    fn probe_conditional_put(&self) -> Result<(), StorageError> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| {
            StorageError::new(ErrorKind::Permanent, "probe", format!("no randomness: {e}"))
        })?;
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let key = format!("{}locks/probe-{hex}", self.prefix);
        let what = "conditional-write probe";
        self.put_single(&key, b"1", true, what)?;
        let second = self.put_single(&key, b"2", true, what);
        let url = self
            .bucket
            .delete_object(Some(&self.creds), &key)
            .sign(SIGNATURE_VALID);
        let _ = self.send(http::Method::DELETE, url, &[], None, what);
        match second {
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => Err(e),
            Ok(()) => Err(StorageError::new(
                ErrorKind::Permanent,
                self.location.clone(),
                "this S3 server ignores conditional writes (If-None-Match: *): a second create of one name succeeded. Baton needs them for locks, journal records and the config, so it does not create a repository here",
            )),
        }
    }

    fn list_keys(&self, prefix: &str, what: &str) -> Result<Vec<(String, u64)>, StorageError> {
        self.list_keys_limited(prefix, what, MAX_LISTED)
    }

    /// Lists keys under `prefix`, page by page, at most `limit` of them. A
    /// hostile or broken server cannot make it run forever: every page
    /// must start after the previous one's last key, a continuation token
    /// is never accepted twice, and the stop flag ends it between pages.
    fn list_keys_limited(
        &self,
        prefix: &str,
        what: &str,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, StorageError> {
        let bad = |m: String| StorageError::new(ErrorKind::Permanent, what, m);
        let mut out: Vec<(String, u64)> = Vec::new();
        let mut token: Option<String> = None;
        let mut seen_tokens = std::collections::HashSet::new();
        loop {
            if self
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
            {
                return Err(StorageError::new(
                    ErrorKind::Cancelled,
                    what,
                    "listing cancelled",
                ));
            }
            let mut action = self.bucket.list_objects_v2(Some(&self.creds));
            action.with_prefix(prefix);
            if limit < 1000 {
                action.with_max_keys(limit.max(1));
            }
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let url = action.sign(SIGNATURE_VALID);
            let page = self.policy.run_until(self.stop.as_deref(), || {
                let resp = self.send_once(http::Method::GET, url.clone(), &[], None, what)?;
                let mut resp = Self::ok_or_error(resp, what, "listing")?;
                let xml = Self::read_xml(&mut resp, what)?;
                ListObjectsV2::parse_response(&xml).map_err(|e| {
                    StorageError::new(
                        ErrorKind::Transient,
                        what,
                        format!("unexpected listing from the server: {e}"),
                    )
                })
            })?;
            for c in page.contents {
                if !c.key.starts_with(prefix) {
                    return Err(bad(format!(
                        "the server listed {:?} outside {prefix:?}",
                        c.key
                    )));
                }
                if out.last().is_some_and(|(last, _)| c.key <= *last) {
                    return Err(bad(
                        "the server's listing is not in key order (or repeats itself)".into(),
                    ));
                }
                out.push((c.key, c.size.unwrap_or(0)));
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => {
                    if !seen_tokens.insert(t.clone()) {
                        return Err(bad("the server repeated a continuation token".into()));
                    }
                    token = Some(t);
                }
                _ => break,
            }
        }
        Ok(out)
    }
}

/// Statuses that may name a transient error (the body's code decides for 400
/// and 409).
fn transient_status(status: u16) -> bool {
    matches!(status, 400 | 408 | 409 | 429 | 500 | 502 | 503 | 504)
}

fn content_length(resp: &http::Response<ureq::Body>) -> Option<u64> {
    resp.headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn transport_error(e: ureq::Error, what: &str) -> StorageError {
    let kind = match &e {
        ureq::Error::Timeout(_)
        | ureq::Error::Io(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::Protocol(_) => ErrorKind::Transient,
        ureq::Error::BodyExceedsLimit(_) => ErrorKind::Permanent,
        _ => ErrorKind::Permanent,
    };
    StorageError::new(kind, what, format!("request failed: {e}"))
}

fn io_transport_error(e: &std::io::Error, what: &str) -> StorageError {
    StorageError::new(
        ErrorKind::Transient,
        what,
        format!("reading the answer failed: {e}"),
    )
}

impl Storage for S3Storage {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn exists(&self) -> Result<bool, StorageError> {
        Ok(self
            .head(&self.key(ObjectKind::Config, ""), "config")?
            .is_some())
    }

    fn create(&self) -> Result<(), StorageError> {
        let what = format!("bucket {}", self.bucket.name());
        let url = self
            .bucket
            .head_bucket(Some(&self.creds))
            .sign(SIGNATURE_VALID);
        let mut resp = self.send(http::Method::HEAD, url, &[], None, &what)?;
        match resp.status().as_u16() {
            s if (200..300).contains(&s) => {}
            404 => {
                let url = self.bucket.create_bucket(&self.creds).sign(SIGNATURE_VALID);
                let resp = self.send(http::Method::PUT, url, &[], Some(&[]), &what)?;
                Self::ok_or_error(resp, &what, "creating the bucket")?;
            }
            403 => {
                return Err(StorageError::new(
                    ErrorKind::PermissionDenied,
                    what,
                    "access denied (check the credentials and the bucket's policy)",
                ));
            }
            _ => return Err(Self::status_error(&mut resp, &what, "checking the bucket")),
        }
        let probe = format!("{}locks/probe-", self.prefix);
        let existing = self.list_keys_limited(&self.prefix, &what, 50)?;
        let is_probe = |k: &str| {
            k.strip_prefix(&probe)
                .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        if existing.iter().any(|(k, _)| !is_probe(k)) {
            return Err(StorageError::new(
                ErrorKind::AlreadyExists,
                self.location.clone(),
                "the bucket already holds objects under this prefix",
            ));
        }
        self.probe_conditional_put()
    }

    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StorageError> {
        check_name(kind, name)?;
        let what = Self::what(kind, name);
        let key = self.key(kind, name);
        let content_addressed = matches!(
            kind,
            ObjectKind::Pack | ObjectKind::Index | ObjectKind::Snapshot
        );
        if data.len() > PART_SIZE && content_addressed {
            // Same name, same bytes: an existing one is reported as such
            // (callers take that as success), else written in parts.
            // One of another size (a broken upload) is replaced.
            if self.head(&key, &what)? == Some(data.len() as u64) {
                return Err(StorageError::new(
                    ErrorKind::AlreadyExists,
                    what,
                    "already stored",
                ));
            }
            return self.put_multipart(&key, data, &what);
        }
        self.put_single(&key, data, true, &what)
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StorageError> {
        self.get_object(kind, name, None, MAX_OBJECT)
    }

    fn get_limited(&self, kind: ObjectKind, name: &str, max: u64) -> Result<Vec<u8>, StorageError> {
        self.get_object(kind, name, None, max)
    }

    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StorageError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let data = self.get_object(kind, name, Some((offset, len)), len)?;
        if (data.len() as u64) < len {
            return Err(StorageError::new(
                ErrorKind::Permanent,
                Self::what(kind, name),
                format!(
                    "reading {len} bytes at {offset} gave {} (the object is shorter)",
                    data.len()
                ),
            ));
        }
        Ok(data)
    }

    fn size(&self, kind: ObjectKind, name: &str) -> Result<u64, StorageError> {
        check_name(kind, name)?;
        let what = Self::what(kind, name);
        self.head(&self.key(kind, name), &what)?
            .ok_or_else(|| StorageError::new(ErrorKind::NotFound, what, "not found"))
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError> {
        self.list_prefix(kind, "")
    }

    fn list_prefix(&self, kind: ObjectKind, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        if kind == ObjectKind::Config {
            return Ok(match self.head(&self.key(kind, ""), "config")? {
                Some(size) => vec![ObjectInfo {
                    name: "config".into(),
                    size,
                }],
                None => Vec::new(),
            });
        }
        let base = format!("{}{}/", self.prefix, kind.dir());
        // Packs live under a two-hex-digit directory: a name prefix of two
        // or more digits narrows the listing to one of them.
        let search = match kind {
            ObjectKind::Pack if prefix.len() >= 2 => format!("{base}{}/{prefix}", &prefix[..2]),
            ObjectKind::Pack => base.clone(),
            _ => format!("{base}{prefix}"),
        };
        let mut out = Vec::new();
        for (key, size) in self.list_keys(&search, kind.dir())? {
            let Some(rest) = key.strip_prefix(&base) else {
                continue;
            };
            let name = match kind {
                // Only where reads and deletes look for it: data/<first 2>/<name>.
                ObjectKind::Pack => match rest.split_once('/') {
                    Some((dir, n)) if n.get(..2) == Some(dir) => n,
                    _ => continue,
                },
                _ => rest,
            };
            if name.starts_with(prefix) && check_name(kind, name).is_ok() {
                out.push(ObjectInfo {
                    name: name.to_string(),
                    size,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    }

    fn remove(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError> {
        check_name(kind, name)?;
        let what = Self::what(kind, name);
        let key = self.key(kind, name);
        let url = self
            .bucket
            .delete_object(Some(&self.creds), &key)
            .sign(SIGNATURE_VALID);
        let mut resp = self.send(http::Method::DELETE, url, &[], None, &what)?;
        match resp.status().as_u16() {
            s if (200..300).contains(&s) || s == 404 => Ok(()),
            _ => Err(Self::status_error(&mut resp, &what, "deleting")),
        }
    }

    fn remove_many(&self, kind: ObjectKind, names: &[String]) -> Result<(), StorageError> {
        for n in names {
            check_name(kind, n)?;
        }
        for batch in names.chunks(1000) {
            let what = format!("{} ({} objects)", kind.dir(), batch.len());
            let ids: Vec<ObjectIdentifier> = batch
                .iter()
                .map(|n| ObjectIdentifier::new(self.key(kind, n)))
                .collect();
            let mut action = self.bucket.delete_objects(Some(&self.creds), ids.iter());
            action.set_quiet(true);
            let url = action.sign(SIGNATURE_VALID);
            let (body, md5) = action.body_with_md5();
            let resp = self.send(
                http::Method::POST,
                url,
                &[("content-md5", md5)],
                Some(body.as_bytes()),
                &what,
            )?;
            let mut resp = Self::ok_or_error(resp, &what, "deleting")?;
            let xml = Self::read_xml(&mut resp, &what)?;
            let parsed = DeleteObjectsResponse::parse(&xml).map_err(|e| {
                StorageError::new(
                    ErrorKind::Transient,
                    what.clone(),
                    format!("unexpected answer to a batch delete: {e}"),
                )
            })?;
            if let Some(e) = parsed.errors.iter().find(|e| e.code != "NoSuchKey") {
                let kind = if e.code == "AccessDenied" {
                    ErrorKind::PermissionDenied
                } else {
                    ErrorKind::Transient
                };
                return Err(StorageError::new(
                    kind,
                    e.key.clone(),
                    format!("deleting failed: {}: {}", e.code, e.message),
                ));
            }
        }
        Ok(())
    }

    fn atomic_create(&self) -> bool {
        // Proven by the probe when the repository was created here.
        true
    }

    fn is_remote(&self) -> bool {
        true
    }
}

impl Drop for S3Storage {
    fn drop(&mut self) {
        // For the benchmark: requests per operation.
        if std::env::var_os("BATON_S3_STATS").is_some() {
            eprintln!("s3: {} requests", self.requests());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_sections_are_read() {
        let text = "[default]\naws_access_key_id = A\n# c\n[other]\naws_access_key_id=B\naws_secret_access_key = S\n";
        assert_eq!(
            ini_section(text, "other")[1],
            ("aws_secret_access_key".into(), "S".into())
        );
        assert_eq!(ini_section(text, "default")[0].1, "A");
        assert!(ini_section(text, "none").is_empty());
    }

    fn config(location: &str, vars: &[(&str, &str)]) -> Result<S3Config, StorageError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        S3Config::from_location_with(location, &move |k: &str| {
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    const CREDS: [(&str, &str); 2] = [("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "S")];

    /// Locations, addressing styles and regions become the requests' URLs.
    #[test]
    fn locations_and_addressing() {
        let c = config("https://s3.example.com/bucket/some/prefix/", &CREDS).unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("bucket", "some/prefix/")
        );
        assert_eq!(c.region, "us-east-1");
        let s = S3Storage::new(c).unwrap();
        let url = s
            .bucket
            .object_url(&s.key(ObjectKind::Pack, &"ab".repeat(32)));
        assert_eq!(url.host_str(), Some("s3.example.com"));
        assert!(
            url.path().starts_with("/bucket/some/prefix/data/ab/abab"),
            "{url}"
        );

        let mut vars = CREDS.to_vec();
        vars.extend([
            ("BATON_S3_ADDRESSING", "virtual"),
            ("AWS_REGION", "eu-west-3"),
        ]);
        let c = config("https://s3.example.com/bucket", &vars).unwrap();
        assert_eq!(c.region, "eu-west-3");
        let s = S3Storage::new(c).unwrap();
        let url = s.bucket.object_url(&s.key(ObjectKind::Config, ""));
        assert_eq!(url.host_str(), Some("bucket.s3.example.com"));
        assert_eq!(url.path(), "/config");
        assert!(s.location().contains("virtual-host"));

        // Mistakes are refused with a message, before any request.
        for bad in [
            "ftp://host/b",
            "https://host",
            "https://user:pw@host/b",
            "not a url",
        ] {
            assert!(config(bad, &CREDS).is_err(), "{bad}");
        }
        assert!(config("https://host/b", &[]).is_err(), "no credentials");
        let mut vars = CREDS.to_vec();
        vars.push(("BATON_S3_ADDRESSING", "sideways"));
        assert!(config("https://host/b", &vars).is_err());
        let mut vars = CREDS.to_vec();
        vars.push(("BATON_S3_CA_BUNDLE", "/nonexistent/ca.pem"));
        let c = config("https://host/b", &vars).unwrap();
        assert!(S3Storage::new(c).is_err(), "a missing CA bundle");
    }

    /// Credentials from a profile of the shared credentials file.
    #[test]
    fn credentials_from_a_profile() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n[work]\naws_access_key_id=W\naws_secret_access_key=WS\naws_session_token = T\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = config("https://h/b", &[("AWS_SHARED_CREDENTIALS_FILE", f)]).unwrap();
        assert_eq!((c.access_key.as_str(), c.secret_key.as_str()), ("D", "DS"));
        let c = config(
            "https://h/b",
            &[("AWS_SHARED_CREDENTIALS_FILE", f), ("AWS_PROFILE", "work")],
        )
        .unwrap();
        assert_eq!(c.access_key, "W");
        assert_eq!(c.session_token.as_deref(), Some("T"));
    }

    #[test]
    fn xml_fields_are_found() {
        let body = "<Error><Code>QuotaExceeded</Code><Message>full</Message></Error>";
        assert_eq!(xml_field(body, "Code"), "QuotaExceeded");
        assert_eq!(xml_field(body, "Message"), "full");
        assert_eq!(xml_field(body, "Nope"), "");
    }
}
