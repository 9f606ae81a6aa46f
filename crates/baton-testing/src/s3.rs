//! A real S3 endpoint for tests: a one-node Ceph RADOS Gateway on loopback,
//! started once per test process by `scripts/rgw.sh` (and stopped by the
//! script's watchdog when the process ends, even if it is killed).
//!
//! `BATON_TEST_S3_ENDPOINT` (with `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY`) points the tests at a gateway started outside
//! instead. Without radosgw installed, [`gateway`] is `None` and S3 tests
//! say they were skipped, unless `BATON_TEST_REQUIRE_S3` is set (CI sets
//! it), which makes a missing gateway a failure.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    /// The script's state directory (None for a gateway started outside).
    dir: Option<PathBuf>,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rgw.sh")
}

fn start() -> Result<Gateway, String> {
    if let Ok(endpoint) = std::env::var("BATON_TEST_S3_ENDPOINT") {
        let get = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
        return Ok(Gateway {
            endpoint,
            access_key: get("AWS_ACCESS_KEY_ID")?,
            secret_key: get("AWS_SECRET_ACCESS_KEY")?,
            dir: None,
        });
    }
    let dir = std::env::temp_dir().join(format!(
        "baton-rgw-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    let out = Command::new("bash")
        .arg(script())
        .arg("start")
        .arg(&dir)
        .env("RGW_WATCH_PID", std::process::id().to_string())
        .env("RGW_QUIET", "1")
        .output()
        .map_err(|e| format!("running {}: {e}", script().display()))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/rgw.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let var = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {k}=")))
            .map(str::to_string)
            .ok_or_else(|| format!("rgw.sh printed no {k}"))
    };
    Ok(Gateway {
        endpoint: var("BATON_TEST_S3_ENDPOINT")?,
        access_key: var("AWS_ACCESS_KEY_ID")?,
        secret_key: var("AWS_SECRET_ACCESS_KEY")?,
        dir: Some(dir),
    })
}

/// The gateway of this test process, started on first use; `None` (after
/// saying why on stderr) when radosgw is not installed and
/// `BATON_TEST_REQUIRE_S3` is not set.
pub fn gateway() -> Option<&'static Gateway> {
    static GW: OnceLock<Result<Gateway, String>> = OnceLock::new();
    match GW.get_or_init(start) {
        Ok(g) => Some(g),
        Err(e) if std::env::var_os("BATON_TEST_REQUIRE_S3").is_some() => {
            panic!("no S3 gateway for the tests: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no S3 gateway ({e}); `scripts/rgw.sh install` provides one");
            None
        }
    }
}

/// A bucket name no other test of any process uses.
pub fn unique_bucket() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("t{}-{n}-{nanos:x}", std::process::id())
}

impl Gateway {
    /// `s3:http://127.0.0.1:PORT/BUCKET/PREFIX`
    pub fn location(&self, bucket: &str, prefix: &str) -> String {
        format!("s3:{}/{bucket}/{prefix}", self.endpoint)
    }

    /// The environment a `baton` process needs to reach this gateway.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
    }

    /// One variable of [`Gateway::env`], for code that looks variables up
    /// (`S3Config::from_location_with`).
    pub fn var(&self, name: &str) -> Option<String> {
        self.env()
            .into_iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    fn script(&self, args: &[&str]) {
        let dir = self
            .dir
            .as_ref()
            .expect("only a gateway started by the tests can be controlled");
        let out = Command::new("bash")
            .arg(script())
            .arg(args[0])
            .arg(dir)
            .args(&args[1..])
            .env("RGW_QUIET", "1")
            .output()
            .expect("running rgw.sh");
        assert!(
            out.status.success(),
            "rgw.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether this gateway can be restarted and given quotas (it was
    /// started by the tests).
    pub fn controllable(&self) -> bool {
        self.dir.is_some()
    }

    /// Restarts radosgw only (same port), as an operator or a crash would.
    pub fn restart(&self) {
        self.script(&["restart-rgw"]);
    }

    /// Sets a quota of `bytes` on `bucket` ("off" lifts it).
    pub fn quota(&self, bucket: &str, bytes: &str) {
        self.script(&["quota", bucket, bytes]);
    }
}
