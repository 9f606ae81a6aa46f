//! The director's security backbone (issue 13), with the real binary: a
//! director on loopback, `baton ctl` with its API token, `baton agent
//! enrol` with one-time tokens, and connections with certificates that are
//! forged, expired or revoked. Each scenario runs on SQLite and on a real
//! PostgreSQL started for the test (skipped without PostgreSQL unless
//! `BATON_TEST_REQUIRE_PG=1`).

use crate::common::{Env, Run, is_root, run};
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running `baton director`, killed when dropped.
pub(crate) struct Director {
    pub(crate) child: Child,
    pub(crate) url: String,
    pub(crate) state: PathBuf,
    fingerprint: String,
}

impl Drop for Director {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Director {
    pub(crate) fn start(env: &Env, state: &Path, db: Option<&str>, extra: &[&str]) -> Director {
        let mut c = Command::new(env!("CARGO_BIN_EXE_baton"));
        c.args(["director", "--json"]);
        if !extra.contains(&"--listen") {
            c.args(["--listen", "127.0.0.1:0"]);
        }
        c.arg("--state")
            .arg(state)
            .args(extra)
            .env_remove("BATON_DIRECTOR_DATABASE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(db) = db {
            c.args(["--database", db]);
        }
        let _ = env;
        let mut child = c.spawn().expect("starting baton director");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("director's first line is not its ready message ({e}): {line:?}")
        });
        crate::schemas::validate("director.schema.json", &ready).unwrap();
        Director {
            child,
            url: ready["url"].as_str().unwrap().to_string(),
            state: state.to_path_buf(),
            fingerprint: ready["ca_fingerprint"].as_str().unwrap().to_string(),
        }
    }

    pub(crate) fn ctl(&self, env: &Env, args: &[&str]) -> Run {
        let mut c = env.cmd();
        c.arg("ctl")
            .args(args)
            .arg("--director")
            .arg(&self.url)
            .arg("--ca")
            .arg(self.state.join("ca.pem"))
            .arg("--token-file")
            .arg(self.state.join("admin.token"));
        run(&mut c)
    }

    pub(crate) fn token(&self, env: &Env, role: &str, name: &str, ttl: &str) -> String {
        let r = self
            .ctl(
                env,
                &[
                    "token", "--json", "--role", role, "--name", name, "--ttl", ttl,
                ],
            )
            .ok();
        r.json()["token"].as_str().unwrap().to_string()
    }

    /// Enrols node `name` as `role` into `env`'s directory of that name
    /// (with a token of an hour); the state directory.
    pub(crate) fn enrolled(&self, env: &Env, role: &str, name: &str) -> PathBuf {
        let state = env.path(name);
        let t = self.token(env, role, name, "1h");
        self.enrol(env, &t, &state).ok();
        state
    }

    pub(crate) fn enrol(&self, env: &Env, token: &str, state: &Path) -> Run {
        let mut c = env.cmd();
        c.args([
            "agent",
            "enrol",
            "--json",
            "--director",
            &self.url,
            "--token",
            token,
            "--state",
        ])
        .arg(state);
        run(&mut c)
    }

    fn whoami(&self, env: &Env, state: &Path) -> Run {
        let mut c = env.cmd();
        c.args([
            "agent",
            "whoami",
            "--json",
            "--director",
            &self.url,
            "--state",
        ])
        .arg(state);
        run(&mut c)
    }
}

/// An HTTPS request with no certificate and no token (`curl -k`): status
/// code and body.
fn anonymous(url: &str, method: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sk", "-X", method, "-o", "-", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_string(), body.to_string())
}

fn scenario(db: Option<&str>) {
    let env = Env::new();
    let dstate = env.path("director");
    let d = Director::start(&env, &dstate, db, &[]);

    // Its state is private: it holds the CA's key.
    let mode = std::fs::metadata(&dstate).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let mode = std::fs::metadata(dstate.join("admin.token"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // Nothing answers without authentication (the CA certificate, public,
    // aside).
    for (path, method) in [
        ("/v1/nodes", "GET"),
        ("/v1/tokens", "POST"),
        ("/v1/whoami", "GET"),
        ("/v1/nodes/x/revoke", "POST"),
    ] {
        let (code, body) = anonymous(&format!("{}{path}", d.url), method);
        assert_eq!(code, "401", "{path}: {body}");
        assert!(body.contains("\"unauthenticated\""), "{path}: {body}");
    }
    let (code, ca) = anonymous(&format!("{}/v1/ca", d.url), "GET");
    assert_eq!(code, "200");
    assert!(ca.contains("BEGIN CERTIFICATE"));
    // A wrong API token is refused (exit 13).
    let wrong = env.path("wrong.token");
    std::fs::write(&wrong, "0".repeat(64)).unwrap();
    let mut c = env.cmd();
    c.args(["ctl", "nodes", "--director", &d.url, "--ca"])
        .arg(dstate.join("ca.pem"))
        .arg("--token-file")
        .arg(&wrong);
    let r = run(&mut c);
    assert_eq!(r.code, 13, "{}", r.stderr);

    // Enrolment with a one-time token; the node is known by its certificate.
    let token = d.token(&env, "agent", "web-1", "1h");
    assert!(token.contains(&d.fingerprint));
    let a = env.path("agent-a");
    let e = d.enrol(&env, &token, &a).ok().json();
    assert_eq!(
        (e["name"].as_str(), e["role"].as_str()),
        (Some("web-1"), Some("agent"))
    );
    let key_mode = std::fs::metadata(a.join("key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    let w = d.whoami(&env, &a).ok().json();
    assert_eq!(w["name"], "web-1");
    assert_eq!(w["role"], "agent");
    assert_eq!(w["serial"], e["serial"]);

    // Tokens and secrets never travel in the clear.
    let plain = d.url.replace("https://", "http://");
    let spare = d.token(&env, "agent", "web-2", "1h");
    let r = d.enrol(&env, &spare, &env.path("agent-plain"));
    let mut c = env.cmd();
    c.args([
        "agent",
        "enrol",
        "--director",
        &plain,
        "--token",
        &spare,
        "--state",
    ])
    .arg(env.path("agent-plain"));
    let r2 = run(&mut c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r2.code, 1, "{}", r2.stderr);
    assert!(r2.stderr.contains("https:// only"), "{}", r2.stderr);
    let mut c = env.cmd();
    c.args(["ctl", "nodes", "--director", &plain, "--ca"])
        .arg(dstate.join("ca.pem"))
        .arg("--token-file")
        .arg(dstate.join("admin.token"));
    assert_eq!(run(&mut c).code, 1);
    // A media agent may not be named like the director (its certificate
    // would then let it pose as the director).
    for name in ["localhost", "127.0.0.1", "LocalHost"] {
        let r = d.ctl(&env, &["token", "--role", "media-agent", "--name", name]);
        assert_eq!(r.code, 2, "{name}: {}", r.stderr);
    }

    // The token works once.
    let again = d.enrol(&env, &token, &env.path("agent-b"));
    assert_eq!(again.code, 13, "{}", again.stderr);
    assert!(again.stderr.contains("used"), "{}", again.stderr);
    // A token that was never issued, and a mangled one.
    let forged_token = format!("baton-enrol-1.{}.{}", d.fingerprint, "ab".repeat(32));
    assert_eq!(d.enrol(&env, &forged_token, &env.path("agent-c")).code, 13);
    assert_ne!(
        d.enrol(&env, "baton-enrol-1.zz", &env.path("agent-c")).code,
        0
    );
    // An expired token.
    let short = d.token(&env, "agent", "late", "1s");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(d.enrol(&env, &short, &env.path("agent-late")).code, 13);

    // A certificate from another CA, for the same name: refused at the
    // handshake.
    let forged = env.path("forged");
    std::fs::create_dir_all(&forged).unwrap();
    let other = baton_director::pki::Ca::create("impostor", baton_director::server::now()).unwrap();
    let (key, csr) = baton_director::pki::node_key_and_csr("web-1").unwrap();
    let cert = other
        .issue_node(
            &csr,
            baton_wire::Role::Agent,
            "web-1",
            baton_director::server::now(),
            3600,
        )
        .unwrap();
    std::fs::write(forged.join("key.pem"), key).unwrap();
    std::fs::write(forged.join("cert.pem"), cert.cert_pem).unwrap();
    std::fs::copy(a.join("ca.pem"), forged.join("ca.pem")).unwrap();
    let r = d.whoami(&env, &forged);
    assert_eq!(r.code, 13, "{}", r.stderr);
    assert!(r.stderr.contains("refused"), "{}", r.stderr);
    // A node's certificate without its key is of no use.
    std::fs::copy(a.join("cert.pem"), forged.join("cert.pem")).unwrap();
    let r = d.whoami(&env, &forged);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("does not go with"), "{}", r.stderr);

    // A token made by another director is not sent to this one.
    let d2 = Director::start(&env, &env.path("director-2"), None, &[]);
    let foreign = d2.token(&env, "agent", "web-9", "1h");
    let r = d.enrol(&env, &foreign, &env.path("agent-9"));
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("not the director"), "{}", r.stderr);
    drop(d2);

    // Revoked: refused at the handshake from then on.
    let n = d.ctl(&env, &["revoke", "--json", "web-1"]).ok().json();
    assert!(n["nodes"][0]["revoked"].is_i64(), "{n}");
    let r = d.whoami(&env, &a);
    assert_eq!(r.code, 13, "{}", r.stderr);
    // By the revocation list, at the handshake (not only by the database).
    assert!(r.stderr.contains("CertificateRevoked"), "{}", r.stderr);
    // Enrolled again, the node has a new certificate; the old one stays
    // revoked.
    let b = env.path("agent-a2");
    d.enrol(&env, &d.token(&env, "agent", "web-1", "1h"), &b)
        .ok();
    assert_eq!(d.whoami(&env, &b).ok().json()["name"], "web-1");
    assert_eq!(d.whoami(&env, &a).code, 13);
    let nodes = d.ctl(&env, &["nodes", "--json"]).ok().json();
    let list: Vec<_> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["name"] == "web-1")
        .collect();
    assert_eq!(list.len(), 2, "{nodes}");
    assert!(
        list[0]["revoked"].is_i64() && list[1]["revoked"].is_null(),
        "{nodes}"
    );

    // Pools and jobs: an agent sees its own jobs, with their repositories.
    let p = d
        .ctl(
            &env,
            &[
                "pool-add",
                "--json",
                "--name",
                "p1",
                "--repository",
                "/srv/repo-1",
            ],
        )
        .ok()
        .json();
    assert_eq!(p["pools"][0]["repository"], "/srv/repo-1");
    assert_eq!(
        d.ctl(&env, &["pool-add", "--name", "p1", "--repository", "/x"])
            .code,
        2
    );
    let job = |name: &str, agent: &str, pool: &str, path: &str, schedule: &str| {
        d.ctl(
            &env,
            &[
                "job-add",
                "--json",
                "--name",
                name,
                "--agent",
                agent,
                "--pool",
                pool,
                "--path",
                path,
                "--schedule",
                schedule,
                "--keep-daily",
                "7",
                "--tag",
                "nightly",
            ],
        )
    };
    assert_eq!(job("j0", "web-1", "nope", "/etc", "daily 02:00").code, 2);
    assert_eq!(job("j0", "web-1", "p1", "/etc", "hourly").code, 2);
    assert_eq!(job("j0", "web-1", "p1", "etc", "daily 02:00").code, 2);
    assert_eq!(
        job("j0", "web-1", "p1", "/etc/../root", "daily 02:00").code,
        2
    );
    let j = job("j1", "web-1", "p1", "/etc", "daily 02:00").ok().json();
    assert_eq!(j["jobs"][0]["retention"]["keep_daily"], 7);
    job("j2", "web-9", "p1", "/srv", "every 6h").ok();
    assert_eq!(job("j1", "web-1", "p1", "/etc", "daily 02:00").code, 2);
    let all = d.ctl(&env, &["jobs", "--json"]).ok().json();
    assert_eq!(all["jobs"].as_array().unwrap().len(), 2, "{all}");
    let mut c = env.cmd();
    c.args(["agent", "jobs", "--json", "--director", &d.url, "--state"])
        .arg(&b);
    let mine = run(&mut c).ok().json();
    let mine = mine["jobs"].as_array().unwrap();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["job"]["name"], "j1");
    assert_eq!(mine[0]["repository"], "/srv/repo-1");
    // A media agent has no jobs; a revoked agent sees none.
    let m = env.path("media");
    d.enrol(&env, &d.token(&env, "media-agent", "ma-x", "1h"), &m)
        .ok();
    let mut c = env.cmd();
    c.args(["agent", "jobs", "--director", &d.url, "--state"])
        .arg(&m);
    assert_eq!(run(&mut c).code, 13);
    let mut c = env.cmd();
    c.args(["agent", "jobs", "--director", &d.url, "--state"])
        .arg(&a);
    assert_eq!(run(&mut c).code, 13);
    d.ctl(&env, &["job-remove", "j2"]).ok();
    assert_eq!(d.ctl(&env, &["job-remove", "j2"]).code, 2);

    // Restarted on the same state: the same CA, the same nodes, the same
    // revocations.
    let url = d.url.clone();
    drop(d);
    let d = Director::start(&env, &dstate, db, &[]);
    assert_ne!(d.url, url, "a new port (port 0)");
    let fp_again = d.fingerprint.clone();
    assert_eq!(d.whoami(&env, &b).ok().json()["name"], "web-1");
    assert_eq!(d.whoami(&env, &a).code, 13);
    assert!(token.contains(&fp_again));
    let all = d.ctl(&env, &["jobs", "--json"]).ok().json();
    assert_eq!(all["jobs"][0]["name"], "j1", "{all}");

    // Expired certificates are refused at the handshake.
    let short_state = env.path("director-short");
    let ds = Director::start(&env, &short_state, None, &["--cert-validity", "2s"]);
    let s = env.path("agent-s");
    ds.enrol(&env, &ds.token(&env, "media-agent", "ma-1", "1h"), &s)
        .ok();
    assert_eq!(ds.whoami(&env, &s).ok().json()["role"], "media-agent");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let r = ds.whoami(&env, &s);
    assert_eq!(r.code, 13, "{}", r.stderr);

    api_tokens(&env, &d);
}

/// API tokens are listed without their secrets, added, rotated (the token
/// file gets the new one before the old stops working) and revoked.
fn api_tokens(env: &Env, d: &Director) {
    let with = |file: &Path, args: &[&str]| {
        let mut c = env.cmd();
        c.arg("ctl")
            .args(args)
            .arg("--director")
            .arg(&d.url)
            .arg("--ca")
            .arg(d.state.join("ca.pem"))
            .arg("--token-file")
            .arg(file);
        run(&mut c)
    };
    let list = d.ctl(env, &["api-tokens", "--json"]).ok().json();
    let tokens = list["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1, "{list}");
    assert_eq!(tokens[0]["name"], "admin");
    let admin_token = std::fs::read_to_string(d.state.join("admin.token")).unwrap();
    assert!(!list.to_string().contains(admin_token.trim()));

    let added = d.ctl(env, &["api-token-add", "ops", "--json"]).ok().json();
    let ops = env.path("ops.token");
    std::fs::write(&ops, added["token"].as_str().unwrap()).unwrap();
    with(&ops, &["nodes"]).ok();
    let old = added["token"].as_str().unwrap().to_string();

    let rotated = with(&ops, &["api-token-rotate", "--json"]).ok().json();
    let new = std::fs::read_to_string(&ops).unwrap();
    assert_ne!(new.trim(), old);
    let ids: Vec<&str> = rotated["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(&added["id"].as_str().unwrap()), "{rotated}");
    assert_eq!(ids.len(), 2, "{rotated}");
    with(&ops, &["nodes"]).ok();
    let stale = env.path("stale.token");
    std::fs::write(&stale, &old).unwrap();
    assert_eq!(with(&stale, &["nodes"]).code, 13);

    let new_id = rotated["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ops")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.ctl(env, &["api-token-revoke", &new_id]).ok();
    assert_eq!(with(&ops, &["nodes"]).code, 13);
    assert_eq!(d.ctl(env, &["api-token-revoke", &new_id]).code, 2);
    assert_eq!(d.ctl(env, &["api-token-revoke", "nothex"]).code, 2);
}

#[test]
fn nodes_enrol_once_and_forged_expired_or_revoked_certificates_are_refused() {
    scenario(None);
}

/// A PostgreSQL server of its own on loopback (trust authentication, a
/// random port), stopped when dropped.
pub(crate) struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D"])
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Postgres {
    pub(crate) fn start() -> Option<Postgres> {
        let bin = crate::instant_pg::pg_bin()?;
        if !is_root() {
            return None;
        }
        // One directory per server: tests start theirs at once.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/baton-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let sh = |cmd: String| {
            let out = Command::new("runuser")
                .args(["-u", "postgres", "--", "bash", "-c", &cmd])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "`{cmd}`: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        Command::new("chown")
            .args(["postgres:", dir.to_str().unwrap()])
            .status()
            .unwrap();
        let pg = Postgres { dir, bin, port };
        let (b, d) = (pg.bin.display(), pg.dir.display());
        sh(format!(
            "{b}/initdb -D {d}/data -U postgres --auth=trust --no-sync -E UTF8 --locale=C >/dev/null"
        ));
        sh(format!(
            "{b}/pg_ctl -D {d}/data -l {d}/log -w -t 60 -o '-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off' start >/dev/null"
        ));
        sh(format!(
            "{b}/createdb -h 127.0.0.1 -p {port} -U postgres director"
        ));
        Some(pg)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/director", self.port)
    }

    /// Stops the server at once (as a crash would) and starts it again.
    pub(crate) fn restart(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.dir.join("data");
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&pg_ctl)
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "stop"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
        let (d, port) = (self.dir.display(), self.port);
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&pg_ctl)
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off"
            ))
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new database; its URL.
    pub(crate) fn create_db(&self, name: &str) -> String {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                name,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

#[test]
fn the_same_on_postgresql() {
    let Some(pg) = Postgres::start() else {
        assert!(
            std::env::var("BATON_TEST_REQUIRE_PG").is_err(),
            "PostgreSQL is required (BATON_TEST_REQUIRE_PG) but not here"
        );
        eprintln!("skipped: no PostgreSQL (or not root)");
        return;
    };
    scenario(Some(&pg.url()));

    // Two directors on one database: one CA, one registry; a revocation on
    // one is refused by the other at once (its database check), and at the
    // handshake within seconds (its revocation list).
    let env = Env::new();
    let url = pg.create_db("shared");
    let one = Director::start(&env, &env.path("one"), Some(&url), &[]);
    let two = Director::start(&env, &env.path("two"), Some(&url), &[]);
    assert_eq!(one.fingerprint, two.fingerprint);
    // The API token is where the database's first director wrote it.
    assert!(!env.path("two").join("admin.token").exists());
    std::fs::copy(
        env.path("one").join("admin.token"),
        env.path("two").join("admin.token"),
    )
    .unwrap();
    let n = env.path("node");
    one.enrol(&env, &one.token(&env, "agent", "shared-1", "1h"), &n)
        .ok();
    assert_eq!(two.whoami(&env, &n).ok().json()["name"], "shared-1");
    two.ctl(&env, &["revoke", "shared-1"]).ok();
    assert_eq!(one.whoami(&env, &n).code, 13);
    std::thread::sleep(std::time::Duration::from_secs(7));
    let r = one.whoami(&env, &n);
    assert!(r.stderr.contains("CertificateRevoked"), "{}", r.stderr);
}

/// `curl` against the director with these extra arguments (CA pinned):
/// status code and body.
pub(crate) fn curl(d: &Director, path: &str, args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(d.state.join("ca.pem"))
        .args(args)
        .args(["-o", "-", "-w", "\n%{http_code}"])
        .arg(format!("{}{path}", d.url))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_string(), body.to_string())
}

/// The API answers as `docs/api/director.openapi.json` says: the document
/// lists exactly the routes the server has; each, called without
/// credentials, answers with a status it documents (an error body being an
/// `ApiError`); called properly, each answers a body its schema accepts.
#[test]
fn the_api_answers_as_its_openapi_document_says() {
    let env = Env::new();
    let d = Director::start(&env, &env.path("director"), None, &[]);
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api/director.openapi.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let base = "https://baton.invalid/api/director.openapi.json";
    let mut compiler = boon::Compiler::new();
    compiler.set_default_draft(boon::Draft::V2020_12);
    compiler.add_resource(base, doc.clone()).unwrap();
    let mut schemas = boon::Schemas::new();
    let mut check = |name: &str, body: &str| {
        let idx = compiler
            .compile(&format!("{base}#/components/schemas/{name}"), &mut schemas)
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {body}"));
        if let Err(e) = schemas.validate(&v, idx) {
            panic!("{name}: {e:#}\n{v}");
        }
    };

    let mut documented = std::collections::BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert((path.clone(), method.clone()));
        }
    }
    let served: std::collections::BTreeSet<(String, String)> = [
        ("/v1/ca", "get"),
        ("/v1/enrol", "post"),
        ("/v1/whoami", "get"),
        ("/v1/renew", "post"),
        ("/v1/datasets", "get"),
        ("/v1/datasets", "post"),
        ("/v1/decisions", "get"),
        ("/v1/agent/status", "post"),
        ("/v1/agent/drills", "post"),
        ("/v1/agent/replications", "post"),
        ("/v1/drills", "get"),
        ("/v1/replications", "get"),
        ("/v1/tokens", "post"),
        ("/v1/nodes", "get"),
        ("/v1/nodes/{name}/revoke", "post"),
        ("/metrics", "get"),
        ("/v1/pools", "get"),
        ("/v1/pools", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs", "post"),
        ("/v1/jobs/{name}", "delete"),
        ("/v1/agent/jobs", "get"),
        ("/v1/agent/media", "get"),
        ("/v1/media/heartbeat", "post"),
        ("/v1/media/journal", "post"),
        ("/v1/media-agents", "get"),
        ("/v1/runs", "get"),
        ("/v1/jobs/{name}/run", "post"),
        ("/v1/agent/runs", "post"),
        ("/v1/api-tokens", "get"),
        ("/v1/api-tokens", "post"),
        ("/v1/api-tokens/{id}", "delete"),
        ("/v1/media/objects", "post"),
        ("/v1/media/handover", "post"),
        ("/v1/media/handover/checked", "post"),
        ("/v1/pools/{name}/media-agents", "put"),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_string(), m.to_string()))
    .collect();
    assert_eq!(documented, served);

    for (path, method) in &documented {
        let (code, body) = anonymous(
            &format!(
                "{}{}",
                d.url,
                path.replace("{name}", "x")
                    .replace("{id}", "0123456789abcdef")
            ),
            &method.to_uppercase(),
        );
        let responses = &doc["paths"][path][method]["responses"];
        assert!(
            responses.get(&code).is_some(),
            "{method} {path}: {code} is not documented: {body}"
        );
        if code != "200" {
            check("ApiError", &body);
        }
    }
    for (path, method) in [("/v1/nope", "GET"), ("/", "GET"), ("/v1/ca/x", "POST")] {
        let (code, body) = anonymous(&format!("{}{path}", d.url), method);
        assert_eq!(code, "404", "{path}");
        check("ApiError", &body);
    }

    let token = std::fs::read_to_string(d.state.join("admin.token")).unwrap();
    let bearer = format!("authorization: Bearer {token}");
    let json = "content-type: application/json";
    let (code, body) = curl(
        &d,
        "/v1/tokens",
        &[
            "-H",
            &bearer,
            "-H",
            json,
            "-d",
            r#"{"role":"agent","name":"n1"}"#,
        ],
    );
    assert_eq!(code, "200", "{body}");
    check("TokenResponse", &body);
    let enrol_token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = curl(
        &d,
        "/v1/tokens",
        &[
            "-H",
            &bearer,
            "-H",
            json,
            "-d",
            r#"{"role":"agent","name":"../n"}"#,
        ],
    );
    assert_eq!(code, "400", "{body}");
    check("ApiError", &body);

    let (key, csr) = baton_director::pki::node_key_and_csr("n1").unwrap();
    let req = serde_json::json!({ "token": enrol_token, "csr_pem": csr }).to_string();
    let (code, body) = curl(&d, "/v1/enrol", &["-H", json, "-d", &req]);
    assert_eq!(code, "200", "{body}");
    check("EnrolResponse", &body);
    let cert = serde_json::from_str::<serde_json::Value>(&body).unwrap()["cert_pem"]
        .as_str()
        .unwrap()
        .to_string();
    let node = env.path("node");
    std::fs::create_dir_all(&node).unwrap();
    std::fs::write(node.join("key.pem"), key).unwrap();
    std::fs::write(node.join("cert.pem"), cert).unwrap();
    let (certf, keyf) = (node.join("cert.pem"), node.join("key.pem"));
    let mtls = [
        "--cert",
        certf.to_str().unwrap(),
        "--key",
        keyf.to_str().unwrap(),
    ];
    let (code, body) = curl(&d, "/v1/whoami", &mtls);
    assert_eq!(code, "200", "{body}");
    check("Whoami", &body);
    // A node certificate is no API token.
    let (code, body) = curl(&d, "/v1/nodes", &mtls);
    assert_eq!(code, "401", "{body}");
    let (code, body) = curl(&d, "/v1/nodes", &["-H", &bearer]);
    assert_eq!(code, "200", "{body}");
    check("NodeList", &body);
    for (path, schema) in [
        ("/v1/media-agents", "MediaAgentList"),
        ("/v1/runs", "RunList"),
    ] {
        let (code, body) = curl(&d, path, &["-H", &bearer]);
        assert_eq!(code, "200", "{body}");
        check(schema, &body);
    }
    // An agent is no media agent, and asks only for its jobs' pools.
    let (code, body) = curl(
        &d,
        "/v1/media/heartbeat",
        &[
            &mtls[..],
            &["-H", json, "-d", r#"{"address":"x:1","pools":[],"load":{"queue_depth":0,"bytes_per_s":0,"cpu_percent":0,"errors":0,"bytes_total":0}}"#],
        ]
        .concat(),
    );
    assert_eq!(code, "403", "{body}");
    check("ApiError", &body);
    let (code, body) = curl(&d, "/v1/agent/media?pool=p9", &mtls);
    assert_eq!(code, "403", "{body}");
    check("ApiError", &body);
    let (code, body) = curl(&d, "/v1/nodes/n1/revoke", &["-H", &bearer, "-X", "POST"]);
    assert_eq!(code, "200", "{body}");
    check("NodeList", &body);
    let (code, body) = curl(&d, "/v1/nodes/n1/revoke", &["-H", &bearer, "-X", "POST"]);
    assert_eq!(code, "404", "{body}");
    check("ApiError", &body);
    // Another wire version is refused.
    let (code, body) = curl(
        &d,
        "/v1/nodes",
        &["-H", &bearer, "-H", "baton-wire-version: 2"],
    );
    assert_eq!(code, "400", "{body}");
    assert!(body.contains("\"version\""), "{body}");

    let (code, text) = curl(&d, "/metrics", &["-H", &bearer]);
    assert_eq!(code, "200", "{text}");
    for line in [
        "baton_director_certificates{role=\"agent\",state=\"revoked\"} 1",
        "baton_director_certificates{role=\"agent\",state=\"valid\"} 0",
        "baton_director_enrolments_total 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    }
    let refused: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("baton_director_requests_refused_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused >= 5, "{text}");
}

/// The example settings file names only settings `baton director` reads,
/// and the unit file starts it with them.
#[test]
fn the_example_settings_are_the_directors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (daemon, env_name, unit_name, args) in [
        (
            "director",
            "director.env",
            "baton-director.service",
            &["director"][..],
        ),
        (
            "media-agent",
            "media-agent.env",
            "baton-media-agent.service",
            &["media-agent"][..],
        ),
        (
            "agent run",
            "agent.env",
            "baton-agent.service",
            &["agent", "run"][..],
        ),
    ] {
        let env_file = std::fs::read_to_string(root.join("contrib").join(env_name)).unwrap();
        let unit = std::fs::read_to_string(root.join("contrib/systemd").join(unit_name)).unwrap();
        let mut help_args = args.to_vec();
        help_args.push("--help");
        let help = Env::new().run(&help_args).ok().stdout;
        // Help text wraps anywhere.
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut n = 0;
        for line in env_file.lines().map(|l| l.trim_start_matches('#')) {
            if let Some((name, _)) = line.split_once('=')
                && name.starts_with("BATON_")
            {
                assert!(
                    help.contains(&format!("env: {name}"))
                        || (name == "BATON_PASSWORD_FILE" && help.contains("BATON_PASSWORD_FILE")),
                    "{name} is not a setting of baton {daemon}:\n{help}"
                );
                n += 1;
            }
        }
        assert!(n >= 3, "{env_name}");
        assert!(
            unit.contains(&format!("EnvironmentFile=/etc/baton/{env_name}")),
            "{unit_name}"
        );
        assert!(
            unit.contains(&format!("ExecStart=/usr/local/bin/baton {daemon}")),
            "{unit_name}"
        );
        // The state directory is set by the unit.
        let state_var = unit
            .lines()
            .find_map(|l| l.strip_prefix("Environment=BATON_"))
            .and_then(|l| l.split('=').next())
            .map(|v| format!("BATON_{v}"))
            .unwrap_or_default();
        assert!(
            help.contains(&format!("env: {state_var}=")),
            "{unit_name}: {state_var}"
        );
    }
}

/// A webhook receiver on loopback: every request's headers and body.
pub(crate) fn receiver() -> (String, std::sync::mpsc::Receiver<(String, String)>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Headers, then Content-Length bytes of body.
            let (head, body) = loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break (String::new(), String::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if rest.len() >= len {
                        break (head.to_string(), rest[..len].to_string());
                    }
                }
            };
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
            let _ = tx.send((head, body));
        }
    });
    (url, rx)
}

/// Refused enrolments and revocations are POSTed to the webhook, signed
/// with HMAC-SHA256 under the configured secret.
#[test]
fn events_that_need_attention_reach_the_webhook_signed() {
    let env = Env::new();
    let (url, rx) = receiver();
    let secret = env.path("hook.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let d = Director::start(
        &env,
        &env.path("director"),
        None,
        &[
            "--webhook",
            &url,
            "--webhook-secret-file",
            secret.to_str().unwrap(),
        ],
    );
    let token = d.token(&env, "agent", "web-1", "1h");
    d.enrol(&env, &token, &env.path("a")).ok();
    assert_eq!(d.enrol(&env, &token, &env.path("b")).code, 13);
    d.ctl(&env, &["revoke", "web-1"]).ok();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (head, body) = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a webhook call");
        let sig = head
            .lines()
            .find_map(|l| l.strip_prefix("baton-signature: "))
            .unwrap_or_else(|| panic!("unsigned: {head}"));
        assert_eq!(
            sig,
            baton_director::webhooks::sign(b"s3cret", body.as_bytes())
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        seen.push((v["event"].as_str().unwrap().to_string(), v["node"].clone()));
    }
    assert_eq!(
        seen,
        [
            ("node_enrolled".to_string(), serde_json::json!("web-1")),
            ("enrolment_refused".to_string(), serde_json::Value::Null),
            (
                "certificate_revoked".to_string(),
                serde_json::json!("web-1")
            ),
        ]
    );
    // A webhook that is not a URL is a usage error.
    let mut c = env.cmd();
    c.args([
        "director",
        "--listen",
        "127.0.0.1:0",
        "--webhook",
        "ftp://x",
        "--state",
    ])
    .arg(env.path("d2"));
    assert_eq!(run(&mut c).code, 2);
}

/// The director's server certificate as a verifying client sees it (the
/// first PEM block of curl's `%{certs}`); panics if verification fails.
fn served_cert(d: &Director) -> String {
    let out = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(d.state.join("ca.pem"))
        .args(["-o", "/dev/null", "-w", "%{certs}"])
        .arg(format!("{}/v1/ca", d.url))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "the director's certificate was not accepted"
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start;
    text[start..end].to_string()
}

/// Its own certificate is renewed while it runs, before it expires: a
/// director up longer than the validity is still reachable.
#[test]
fn the_directors_server_certificate_is_renewed_while_it_runs() {
    let env = Env::new();
    let d = Director::start(
        &env,
        &env.path("director"),
        None,
        &["--server-cert-validity", "6s"],
    );
    let first = served_cert(&d);
    std::thread::sleep(std::time::Duration::from_secs(8));
    let second = served_cert(&d);
    assert_ne!(first, second);
}
