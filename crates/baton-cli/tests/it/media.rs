//! Media agents (issue 13), with the real binaries on loopback: a director,
//! two media agents serving a pool, agents enrolled with one-time tokens.
//! An agent's backup goes through a media agent into the pool's repository
//! and restores identically; the journal records reach the director before
//! they are acknowledged; agents cannot delete through a media agent nor
//! reach a pool their jobs do not name; revoked and forged certificates are
//! refused; a media agent killed mid-backup is replaced without starting
//! over.

use crate::common::{Env, Run, run};
use crate::director::Director;
use baton_testing::{CompareOptions, compare_trees};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running `baton media-agent`, killed when dropped.
pub(crate) struct Media {
    child: Child,
    name: String,
    address: String,
}

impl Drop for Media {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Media {
    /// Starts one serving `pools`, inside network namespace `netns` if
    /// given.
    pub(crate) fn start(
        env: &Env,
        d: &Director,
        state: &Path,
        pools: &str,
        extra: &[&str],
        netns: Option<&str>,
    ) -> Media {
        let base = env.std_cmd();
        let mut c = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(base.get_program());
                c.env_clear();
                for (k, v) in base.get_envs() {
                    if let Some(v) = v {
                        c.env(k, v);
                    }
                }
                c
            }
            None => base,
        };
        let listen = if extra.contains(&"--listen") {
            Vec::new()
        } else {
            vec!["--listen", "127.0.0.1:0"]
        };
        c.args([
            "media-agent",
            "--json",
            "--director",
            &d.url,
            "--pool",
            pools,
            "--state",
        ])
        .arg(state)
        .args(&listen)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = c.spawn().expect("starting baton media-agent");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("media agent's first line ({e}): {line:?}"));
        crate::schemas::validate("media-agent.schema.json", &ready).unwrap();
        Media {
            child,
            name: ready["name"].as_str().unwrap().to_string(),
            address: ready["address"].as_str().unwrap().to_string(),
        }
    }

    /// A request to it with `curl`, as the node whose state is `state`:
    /// the HTTP status.
    fn curl(&self, state: &Path, method: &str, path: &str) -> String {
        self.curl_with(state, method, path, None, &[])
    }

    /// [`Media::curl`] with a request body and more headers.
    fn curl_with(
        &self,
        state: &Path,
        method: &str,
        path: &str,
        body: Option<&Path>,
        headers: &[&str],
    ) -> String {
        let (ip, port) = self.address.rsplit_once(':').unwrap();
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
            .args(["-H", "baton-wire-version: 1"])
            .args(headers.iter().flat_map(|h| ["-H", h]))
            .arg("--resolve")
            .arg(format!(
                "{}:{port}:{ip}",
                baton_wire::media_host(&self.name)
            ))
            .arg("--cacert")
            .arg(state.join("ca.pem"))
            .arg("--cert")
            .arg(state.join("cert.pem"))
            .arg("--key")
            .arg(state.join("key.pem"))
            .args(body.map_or(Vec::new(), |b| {
                vec!["--data-binary".to_string(), format!("@{}", b.display())]
            }))
            .arg(format!(
                "https://{}:{port}{path}",
                baton_wire::media_host(&self.name)
            ))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// `baton` as the agent enrolled into `state`.
fn as_agent(env: &Env, d: &Director, state: &Path, args: &[&str]) -> Run {
    let mut c = env.cmd();
    c.env("BATON_DIRECTOR", &d.url)
        .env("BATON_AGENT_STATE", state)
        .env("BATON_MEDIA_PATIENCE_S", "5")
        .args(args);
    run(&mut c)
}

/// `baton agent backup --json JOB` as the agent enrolled into `state`.
fn backup_cmd(env: &Env, d: &Director, state: &Path, job: &str) -> Command {
    let mut c = env.std_cmd();
    c.args(["agent", "backup", "--json", "--director", &d.url, "--state"])
        .arg(state)
        .arg(job);
    c
}

fn agent_backup(env: &Env, d: &Director, state: &Path, job: &str) -> std::process::Output {
    backup_cmd(env, d, state, job).output().unwrap()
}

struct Setup {
    env: Env,
    d: Director,
    web: PathBuf,
    other: PathBuf,
    media: Vec<Media>,
    media_states: Vec<PathBuf>,
    src: PathBuf,
    /// Pool p2's repository.
    _env2: Env,
}

/// How one media agent of a test runs.
#[derive(Default, Clone, Copy)]
struct MediaSpec<'a> {
    extra: &'a [&'a str],
    /// The network namespace it runs in (else the test's).
    netns: Option<&'a str>,
}

fn setup(media_extra: &[&[&str]]) -> Setup {
    // Small packs: a backup stores, and journals, many.
    let specs: Vec<MediaSpec> = media_extra
        .iter()
        .map(|e| MediaSpec {
            extra: e,
            netns: None,
        })
        .collect();
    setup_with(1, &[], &specs)
}

fn setup_with(pack_mib: u64, director_extra: &[&str], media_specs: &[MediaSpec]) -> Setup {
    let env = Env::with_pack_size(pack_mib);
    let d = Director::start(&env, &env.path("director"), None, director_extra);
    let repo = env.repo.display().to_string();
    let env2 = Env::new();
    let repo2 = env2.repo.clone();
    let members: Vec<String> = (1..=media_specs.len()).map(|i| format!("ma-{i}")).collect();
    let add = |name: &str, repo: &str| {
        let mut args = vec!["pool-add", "--name", name, "--repository", repo];
        for m in &members {
            args.extend(["--media-agent", m.as_str()]);
        }
        d.ctl(&env, &args).ok();
    };
    add("p1", &repo);
    add("p2", repo2.to_str().unwrap());
    let src = env.path("src");
    let web = d.enrolled(&env, "agent", "web-1");
    let other = d.enrolled(&env, "agent", "other-1");
    let media_states: Vec<PathBuf> = (1..=media_specs.len())
        .map(|i| d.enrolled(&env, "media-agent", &format!("ma-{i}")))
        .collect();
    let src_path = src.to_str().unwrap();
    add_job(
        &env,
        &d,
        ("web", "web-1", "p1"),
        src_path,
        &["--tag", "web"],
    );
    add_job(&env, &d, ("other", "other-1", "p2"), src_path, &[]);
    let media = media_states
        .iter()
        .zip(media_specs)
        .map(|(s, m)| Media::start(&env, &d, s, "p1,p2", m.extra, m.netns))
        .collect();
    Setup {
        env,
        d,
        web,
        other,
        media,
        media_states,
        src,
        _env2: env2,
    }
}

/// `ctl job-add` of job `name` for `agent` in `pool`, backing up `path`
/// every hour (and `extra` flags).
fn add_job(
    env: &Env,
    d: &Director,
    (name, agent, pool): (&str, &str, &str),
    path: &str,
    extra: &[&str],
) {
    let mut args = vec![
        "job-add",
        "--name",
        name,
        "--agent",
        agent,
        "--pool",
        pool,
        "--schedule",
        "every 1h",
        "--path",
        path,
    ];
    args.extend(extra);
    d.ctl(env, &args).ok();
}

fn same_tree(src: &Path, dst: &Path) {
    if let Err(diff) = compare_trees(src, dst, &CompareOptions::default()) {
        panic!("restored tree differs:\n{}", diff.join("\n"));
    }
}

fn snapshot_ids(env: &Env, repo: &Path) -> Vec<String> {
    let r = env
        .run(&["-r", repo.to_str().unwrap(), "snapshots", "--json"])
        .ok();
    r.json()["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_agent_backs_up_through_a_media_agent_and_can_only_append_to_its_own_pool() {
    let s = setup(&[&[], &[]]);
    let env = &s.env;
    baton_testing::generate_tree(
        &s.src,
        &baton_testing::GenOptions {
            seed: 13,
            small_files: 200,
            special_files: false,
            ownership: false,
            ..Default::default()
        },
    )
    .unwrap();

    let out = agent_backup(env, &s.d, &s.web, "web");
    assert!(
        out.status.success(),
        "agent backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // In the pool's repository, readable with the key alone.
    let ids = snapshot_ids(env, &env.repo);
    assert_eq!(ids.len(), 1);
    let target = env.path("restored");
    env.restore("latest", &target, &[]).ok();
    same_tree(&s.src, &target.join(s.src.strip_prefix("/").unwrap()));
    env.run(&["check", "--read-data"]).ok();

    // The journal reached the director, summary in the clear, record sealed.
    let runs = s.d.ctl(env, &["runs", "--json"]).ok().json();
    let run = &runs["journals"][0];
    assert_eq!(run["agent"], "web-1");
    assert_eq!(run["pool"], "p1");
    assert!(run["records"].as_u64().unwrap() >= 2, "{runs}");
    assert!(run["packs"].as_u64().unwrap() >= 1, "{runs}");
    assert!(run["media_agent"].as_str().unwrap().starts_with("ma-"));
    let listed = s.d.ctl(env, &["media-agents", "--json"]).ok().json();
    assert_eq!(
        listed["media_agents"].as_array().unwrap().len(),
        2,
        "{listed}"
    );

    // Append-only: the agent cannot forget or prune through a media agent.
    let r = as_agent(env, &s.d, &s.web, &["-r", "media:p1", "forget", &ids[0]]);
    assert_ne!(r.code, 0, "forget through a media agent succeeded");
    assert!(r.stderr.contains("append-only"), "{}", r.stderr);
    assert_eq!(snapshot_ids(env, &env.repo), ids);
    let pack = crate::common::objects(&env.repo, "data")
        .into_iter()
        .next()
        .unwrap();
    let pack_name = pack.file_name().unwrap().to_str().unwrap().to_string();
    let m = &s.media[0];
    assert_eq!(
        m.curl(&s.web, "DELETE", &format!("/v1/repo/p1/data/{pack_name}")),
        "403"
    );
    assert_eq!(
        m.curl(
            &s.web,
            "DELETE",
            &format!("/v1/repo/p1/snapshots/{}", ids[0])
        ),
        "403"
    );
    assert!(crate::common::objects(&env.repo, "data").contains(&pack));
    // Reading is allowed (a restore through the media agent).
    let t2 = env.path("restored-through-media");
    as_agent(
        env,
        &s.d,
        &s.web,
        &[
            "-r",
            "media:p1",
            "restore",
            "latest",
            "--target",
            t2.to_str().unwrap(),
        ],
    )
    .ok();
    same_tree(&s.src, &t2.join(s.src.strip_prefix("/").unwrap()));

    // Isolation: web-1's jobs name p1 only.
    let r = as_agent(env, &s.d, &s.web, &["-r", "media:p2", "snapshots"]);
    assert_ne!(r.code, 0);
    assert_eq!(m.curl(&s.web, "GET", "/v1/repo/p2"), "403");
    assert_eq!(m.curl(&s.web, "GET", "/v1/repo/p2/snapshots"), "403");
    assert_eq!(m.curl(&s.web, "GET", "/v1/repo/p1"), "200");
    // A media agent's own certificate is no agent's.
    assert_eq!(m.curl(&s.media_states[1], "GET", "/v1/repo/p1"), "403");
    // other-1 reaches p2 (its job's), not p1.
    assert_eq!(m.curl(&s.other, "GET", "/v1/repo/p2"), "200");
    assert_eq!(m.curl(&s.other, "GET", "/v1/repo/p1"), "403");

    // Content-addressed names are the hash of their bytes: no agent can
    // take (or, on a backend that re-uploads, replace) a pack's name.
    let junk = env.path("junk");
    std::fs::write(&junk, b"not the pack").unwrap();
    let put = |who: &Path, path: &str, body: &Path| m.curl_with(who, "PUT", path, Some(body), &[]);
    assert_eq!(
        put(&s.web, &format!("/v1/repo/p1/data/{pack_name}"), &junk),
        "400"
    );
    // The pack is still its own bytes.
    assert_eq!(
        baton_format::storage_id(&crate::common::obj_read(&pack)).to_hex(),
        pack_name
    );
    // Locks and journals are their agent's own: another agent of the same
    // pool can neither delete them nor write into another's journal.
    let web2 = s.d.enrolled(env, "agent", "web-2");
    add_job(env, &s.d, ("web2", "web-2", "p1"), "/nonexistent", &[]);
    let lock = env.path("lock");
    std::fs::write(&lock, b"a lock's sealed bytes").unwrap();
    let lock_name = baton_format::storage_id(b"a lock's sealed bytes").to_hex();
    assert_eq!(
        put(&s.web, &format!("/v1/repo/p1/locks/{lock_name}"), &lock),
        "201"
    );
    assert_eq!(
        m.curl(&web2, "DELETE", &format!("/v1/repo/p1/locks/{lock_name}")),
        "403"
    );
    assert_eq!(
        m.curl(&s.web, "DELETE", &format!("/v1/repo/p1/locks/{lock_name}")),
        "204"
    );
    let job = run["job"].as_str().unwrap();
    assert_eq!(
        put(
            &web2,
            &format!("/v1/repo/p1/journal/{job}/000000009999"),
            &junk
        ),
        "409"
    );
    assert_eq!(
        m.curl(
            &web2,
            "DELETE",
            &format!("/v1/repo/p1/journal/{job}/000000000000")
        ),
        "403"
    );
    // Nor take over another agent's running job at a media agent (the
    // director hands a job's journal only for its own agent).
    let takeover = format!("/v1/repo/p1/jobs/{job}/takeover");
    assert_eq!(m.curl(&web2, "POST", &takeover), "403");
    assert_eq!(m.curl(&s.other, "POST", &takeover), "403");
    assert_eq!(
        m.curl(&s.web, "POST", "/v1/repo/p1/jobs/not-hex/takeover"),
        "400"
    );
    // A journal record naming a pack the pool does not hold is not
    // forwarded: the director never holds it as durable.
    let lost = "ab".repeat(32);
    let summary = format!(
        "baton-journal-summary: {{\"seq\":0,\"position\":1,\"packs\":[\"{lost}\"],\"pack_bytes\":1}}"
    );
    let fresh_job = "cd".repeat(16);
    assert_eq!(
        m.curl_with(
            &s.web,
            "PUT",
            &format!("/v1/repo/p1/journal/{fresh_job}/000000000000"),
            Some(&junk),
            &[&summary]
        ),
        "422"
    );
    // Its own agent may (the job is done: nothing is missing).
    assert_eq!(m.curl(&s.web, "POST", &takeover), "200");
    let runs = s.d.ctl(env, &["runs", "--json"]).ok().json();
    let h = &runs["handovers"][0];
    assert_eq!(
        (&h["job"], &h["to"], &h["missing"]),
        (
            &run["job"],
            &serde_json::json!(m.name),
            &serde_json::json!(0)
        ),
        "{runs}"
    );
    assert!(h["packs_checked"].as_u64().unwrap() >= 1, "{runs}");
    // Oversized small objects are refused before they are read whole.
    let big = env.path("big");
    std::fs::write(&big, vec![0u8; 100 << 10]).unwrap();
    // (The answer comes before the body is read: asking first keeps curl
    // from sending it into a closed connection.)
    assert_eq!(
        m.curl_with(
            &s.web,
            "PUT",
            "/v1/repo/p1/keys/abcd",
            Some(&big),
            &["Expect: 100-continue"]
        ),
        "413"
    );

    // Revoked: refused at the handshake once the media agent's next
    // heartbeat brings the new revocation list (within a second).
    s.d.ctl(env, &["revoke", "other-1"]).ok();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let code = m.curl(&s.other, "GET", "/v1/repo/p2");
        if code == "000" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a revoked agent still answered: {code}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Forged: a certificate of the same name from another CA.
    let forged = env.path("forged");
    std::fs::create_dir_all(&forged).unwrap();
    let ca2 = Director::start(env, &env.path("director-2"), None, &[]);
    let t = ca2.token(env, "agent", "web-1", "1h");
    ca2.enrol(env, &t, &forged).ok();
    std::fs::copy(s.web.join("ca.pem"), forged.join("ca.pem")).unwrap();
    assert_eq!(m.curl(&forged, "GET", "/v1/repo/p1"), "000");
    // No certificate at all.
    let port = m.address.rsplit_once(':').unwrap().1;
    let out = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://127.0.0.1:{port}/v1/repo/p1"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "000");
}

/// Writes `files` files of `mib` MiB of incompressible bytes under `dir`.
fn random_files(dir: &Path, files: usize, mib: usize, seed: u64) {
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    for f in 0..files {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(dir.join(format!("f{f:02}.bin"))).unwrap(),
        );
        for _ in 0..mib {
            for c in buf.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            out.write_all(&buf).unwrap();
        }
        out.flush().unwrap();
    }
}

/// A network namespace joined to this one by a veth pair (a /30 link):
/// what runs in it can be cut off from everything by taking the link down.
struct Netns {
    name: String,
    host_if: String,
    /// The link's address on this side, and inside.
    host_addr: String,
    ns_addr: String,
}

impl Netns {
    /// Made as root with `ip`; `None` (the test skipped) otherwise, unless
    /// `BATON_TEST_REQUIRE_NETNS=1`.
    fn create(tag: u8) -> Option<Netns> {
        let have_ip = Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !crate::common::is_root() || !have_ip {
            assert!(
                std::env::var_os("BATON_TEST_REQUIRE_NETNS").is_none(),
                "network namespaces need root and iproute2"
            );
            eprintln!("skipped: network namespaces need root and iproute2");
            return None;
        }
        let pid = std::process::id();
        let n = Netns {
            name: format!("baton-{pid}-{tag}"),
            host_if: format!("bh{}{tag}", pid % 100_000),
            host_addr: format!("10.{}.{}.1", 200 + tag, (pid % 250) + 1),
            ns_addr: format!("10.{}.{}.2", 200 + tag, (pid % 250) + 1),
        };
        let ns_if = format!("bn{}{tag}", pid % 100_000);
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip").args(["netns", "del", &n.name]).output();
        ip(&["netns", "add", &n.name]);
        ip(&[
            "link", "add", &n.host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &n.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", n.host_addr),
            "dev",
            &n.host_if,
        ]);
        ip(&["link", "set", &n.host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &n.name, "ip"];
            a.extend_from_slice(args);
            ip(&a);
        };
        inside(&["addr", "add", &format!("{}/30", n.ns_addr), "dev", &ns_if]);
        inside(&["link", "set", &ns_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        Some(n)
    }

    /// Cuts the namespace off: its link goes down (`up`: back).
    fn set_link(&self, up: bool) {
        let out = Command::new("ip")
            .args(["link", "set", &self.host_if, if up { "up" } else { "down" }])
            .output()
            .unwrap();
        assert!(out.status.success());
    }

    fn cut(&self) {
        self.set_link(false);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Media agent A is slowed to 1 MiB/s: the director finds it
    /// unbalanced against its pool and tells it to cease.
    Throttle,
    /// A is killed (SIGKILL).
    Kill,
    /// A is cut off from the network (its namespace's link goes down): it
    /// misses its heartbeats, its lease lapses, agents move.
    Partition,
}

/// A backup of 1 GiB through media agent A, faulted midway: it completes
/// through B, not from the start, and is exactly an uninterrupted backup.
fn failover(fault: Fault) {
    let throttle =
        std::env::temp_dir().join(format!("baton-throttle-{}-{:?}", std::process::id(), fault));
    let _ = std::fs::remove_file(&throttle);
    let tf = throttle.to_str().unwrap().to_string();
    let netns = match fault {
        Fault::Partition => match Netns::create(1) {
            Some(n) => Some(n),
            None => return,
        },
        _ => None,
    };
    // Partitioned: the director listens on this side of the link, A
    // inside the namespace.
    let director_listen = netns.as_ref().map(|n| format!("{}:0", n.host_addr));
    let a_listen = netns.as_ref().map(|n| format!("{}:0", n.ns_addr));
    let director_extra: Vec<&str> = match &director_listen {
        Some(l) => vec!["--listen", l],
        None => Vec::new(),
    };
    let mut a_extra = vec!["--throttle-file", tf.as_str()];
    if let Some(l) = &a_listen {
        a_extra.extend(["--listen", l]);
    }
    let mut s = setup_with(
        16,
        &director_extra,
        &[
            MediaSpec {
                extra: &a_extra,
                netns: netns.as_ref().map(|n| n.name.as_str()),
            },
            MediaSpec::default(),
        ],
    );
    let env = &s.env;
    let data = s.src.join("data");
    random_files(&data, 8, 128, 0x5eed_0000 + fault as u64);

    let child = backup_cmd(env, &s.d, &s.web, "web")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    // Midway: 400 MiB made durable through A, as the director saw it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let runs = s.d.ctl(env, &["runs", "--json"]).ok().json();
        let r = &runs["journals"][0];
        if r["pack_bytes"].as_u64().unwrap_or(0) >= 400 << 20 {
            assert_eq!(r["media_agent"], "ma-1", "{runs}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no progress: {runs}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut old_epoch = 0;
    match fault {
        Fault::Kill => {
            let a = &mut s.media[0].child;
            a.kill().unwrap();
            a.wait().unwrap();
        }
        Fault::Throttle => std::fs::write(&throttle, format!("{}", 1 << 20)).unwrap(),
        Fault::Partition => {
            let listed = s.d.ctl(env, &["media-agents", "--json"]).ok().json();
            old_epoch = listed["media_agents"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["name"] == "ma-1")
                .unwrap()["epoch"]
                .as_u64()
                .unwrap();
            netns.as_ref().unwrap().cut()
        }
    }
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&throttle);
    assert!(out.status.success(), "the backup did not complete");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message_type"] == "agent_backup")
        .unwrap_or_else(|| panic!("no agent_backup message: {stdout}"));
    crate::schemas::validate("agent.schema.json", &report).unwrap();
    eprintln!(
        "failover after {fault:?}: failure known after {} ms, takeover {} ms, sent again {} bytes in {} requests ({} packs)",
        report["detect_ms"],
        report["takeover_ms"],
        report["resent_bytes"],
        report["resent_requests"],
        report["resent_packs"]
    );
    assert_eq!(
        report["media_agents"],
        serde_json::json!(["ma-1", "ma-2"]),
        "{report}"
    );
    // The job was handed over: B took its journal from the director,
    // checked every acknowledged pack in the pool, and the agent went on
    // from the durable position the director held.
    let t = &report["takeovers"];
    assert_eq!(t.as_array().map(Vec::len), Some(1), "{report}");
    let t = &t[0];
    assert_eq!(
        (&t["from"], &t["to"]),
        (&serde_json::json!("ma-1"), &serde_json::json!("ma-2")),
        "{report}"
    );
    assert_eq!(t["missing"], serde_json::json!([]), "{report}");
    assert_eq!(t["progress"]["gapless"], true, "{report}");
    assert!(
        t["progress"]["pack_bytes"].as_u64().unwrap() >= 400 << 20,
        "{report}"
    );
    // Every pack the records named: 400 MiB of 16 MiB packs at least.
    assert!(t["packs_checked"].as_u64().unwrap() >= 24, "{report}");
    assert_eq!(t["packs_checked"], t["progress"]["packs"], "{report}");
    eprintln!(
        "handover after {fault:?}: {} records, {} packs checked, {} in the index, {} ms at the media agent",
        t["progress"]["records"], t["packs_checked"], t["index_packs"], t["ms"]
    );
    // Not from the start: at most the pack in flight was sent again (one
    // uploader: one stream), and the small metadata request beside it.
    assert!(report["resent_packs"].as_u64().unwrap() <= 1, "{report}");
    assert!(report["resent_requests"].as_u64().unwrap() <= 2, "{report}");
    if let Fault::Partition = fault {
        // Fenced: cut off from the director, A takes no request (tried
        // from inside its namespace, where it can still be reached).
        let n = netns.as_ref().unwrap();
        let m = &s.media[0];
        let port = m.address.rsplit_once(':').unwrap().1;
        let out = Command::new("ip")
            .args(["netns", "exec", &n.name, "curl", "-s", "-o", "/dev/null"])
            .args(["-w", "%{http_code}", "-X", "PUT", "--data-binary", "x"])
            .args(["-H", "baton-wire-version: 1", "--resolve"])
            .arg(format!(
                "{}:{port}:{}",
                baton_wire::media_host(&m.name),
                n.ns_addr
            ))
            .arg("--cacert")
            .arg(s.web.join("ca.pem"))
            .arg("--cert")
            .arg(s.web.join("cert.pem"))
            .arg("--key")
            .arg(s.web.join("key.pem"))
            .arg(format!(
                "https://{}:{port}/v1/repo/p1/locks/fenced",
                baton_wire::media_host(&m.name)
            ))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "503");
        // Back on the network, it serves again, in a new lease epoch: a
        // request handed out in the old one is refused.
        n.set_link(true);
        let epoch_of = |listed: &serde_json::Value| {
            listed["media_agents"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["name"] == "ma-1")
                .map(|x| (x["alive"] == true, x["epoch"].as_u64().unwrap()))
                .unwrap()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let new_epoch = loop {
            let (alive, e) = epoch_of(&s.d.ctl(env, &["media-agents", "--json"]).ok().json());
            if alive && e != old_epoch {
                break e;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ma-1 did not come back"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        assert!(new_epoch > old_epoch);
        let old = format!("baton-lease-epoch: {old_epoch}");
        let new = format!("baton-lease-epoch: {new_epoch}");
        let m = &s.media[0];
        assert_eq!(
            m.curl_with(&s.web, "GET", "/v1/repo/p1", None, &[&old]),
            "503"
        );
        // (Its own lease is renewed by its next heartbeat, within a second.)
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while m.curl_with(&s.web, "GET", "/v1/repo/p1", None, &[&new]) != "200" {
            assert!(
                std::time::Instant::now() < deadline,
                "ma-1 does not serve its new epoch"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    if let Fault::Throttle = fault {
        // Fenced: a ceased media agent takes no request.
        assert_eq!(
            s.media[0].curl(&s.web, "PUT", "/v1/repo/p1/locks/fenced"),
            "503"
        );
        let listed = s.d.ctl(env, &["media-agents", "--json"]).ok().json();
        let a = listed["media_agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "ma-1")
            .unwrap()
            .clone();
        assert_eq!(a["ceased"], true, "{listed}");
    }
    let runs = s.d.ctl(env, &["runs", "--json"]).ok().json();
    assert_eq!(runs["journals"][0]["media_agent"], "ma-2", "{runs}");
    // The director recorded the handover as the agent saw it.
    let h = &runs["handovers"][0];
    assert_eq!(
        runs["handovers"].as_array().map(Vec::len),
        Some(1),
        "{runs}"
    );
    assert_eq!(
        (&h["from"], &h["to"], &h["job"]),
        (&t["from"], &t["to"], &t["job"]),
        "{runs}"
    );
    assert_eq!(
        (&h["last_seq"], &h["position"]),
        (&t["progress"]["last_seq"], &t["progress"]["position"]),
        "{runs}"
    );
    assert_eq!(
        (&h["packs_checked"], &h["missing"]),
        (&t["packs_checked"], &serde_json::json!(0)),
        "{runs}"
    );

    // The repository is whole, and the snapshot is the source exactly.
    env.run(&["check", "--read-data"]).ok();
    let target = env.path("restored");
    env.restore("latest", &target, &[]).ok();
    same_tree(&s.src, &target.join(s.src.strip_prefix("/").unwrap()));
    std::fs::remove_dir_all(&target).unwrap();
    let snaps = env.run(&["snapshots", "--json"]).ok().json();
    let through = snaps["snapshots"][0]["tree"].as_str().unwrap().to_string();
    // The same tree as a backup that nothing interrupted.
    let direct = env.backup(&[&s.src], &[]);
    let snaps = env.run(&["snapshots", "--json"]).ok().json();
    let tree_of = |id: &serde_json::Value| {
        snaps["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| &x["id"] == id)
            .map(|x| x["tree"].as_str().unwrap().to_string())
    };
    assert_eq!(tree_of(&direct["snapshot_id"]), Some(through), "{direct}");
}

#[test]
fn a_media_agent_killed_mid_backup_is_replaced_without_starting_over() {
    failover(Fault::Kill);
}

#[test]
fn an_unbalanced_media_agent_is_told_to_cease_and_its_backup_moves() {
    failover(Fault::Throttle);
}

#[test]
fn a_media_agent_cut_off_mid_backup_is_fenced_and_replaced() {
    if crate::common::local_only(
        "the partitioned media agent cannot reach the S3 gateway on loopback",
    ) {
        return;
    }
    failover(Fault::Partition);
}

/// A free port on loopback (a director restarted on it keeps its URL).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The director's view of the (first) run: records, last sequence number,
/// pack bytes.
fn run_state(s: &Setup) -> (u64, u64, u64) {
    let runs = s.d.ctl(&s.env, &["runs", "--json"]).ok().json();
    let r = &runs["journals"][0];
    (
        r["records"].as_u64().unwrap_or(0),
        r["last_seq"].as_u64().unwrap_or(0),
        r["pack_bytes"].as_u64().unwrap_or(0),
    )
}

fn wait_for_pack_bytes(s: &Setup, at_least: u64) -> (u64, u64, u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let st = run_state(s);
        if st.2 >= at_least {
            return st;
        }
        assert!(std::time::Instant::now() < deadline, "no progress: {st:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A backup whose director is killed -9 and started again mid-job (and,
/// on PostgreSQL, whose database server is restarted mid-job): the job
/// continues, and every record the director acknowledged is still there.
fn director_restarts(pg: Option<&crate::director::Postgres>) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let db = pg.map(|p| p.create_db(&format!("restarts_{}", std::process::id())));
    let mut dextra = vec!["--listen", listen.as_str()];
    if let Some(db) = &db {
        dextra.extend(["--database", db.as_str()]);
    }
    let mut s = setup_with(16, &dextra, &[MediaSpec::default(), MediaSpec::default()]);
    random_files(&s.src.join("data"), 6, 64, 0xd1ec);
    let child = backup_cmd(&s.env, &s.d, &s.web, "web")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    if let Some(pg) = pg {
        let before = wait_for_pack_bytes(&s, 64 << 20);
        pg.restart();
        let after = wait_for_pack_bytes(&s, before.2 + (32 << 20));
        assert!(
            after.0 >= before.0 && after.1 >= before.1,
            "{before:?} {after:?}"
        );
    }
    let before = wait_for_pack_bytes(&s, 192 << 20);
    s.d.child.kill().unwrap();
    s.d.child.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let state = s.d.state.clone();
    s.d = Director::start(&s.env, &state, None, &dextra);
    // Acknowledged records survived the kill.
    let restarted = run_state(&s);
    assert!(
        restarted.0 >= before.0 && restarted.1 >= before.1,
        "{before:?} {restarted:?}"
    );

    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the backup did not complete");
    let (records, last_seq, _) = run_state(&s);
    // Every record of the run, none missing.
    assert_eq!(records, last_seq + 1);
    let runs = s.d.ctl(&s.env, &["runs", "--json"]).ok().json();
    assert_eq!(runs["journals"][0]["gapless"], true, "{runs}");
    assert!(records > before.0);
    s.env.run(&["check", "--read-data"]).ok();
    let target = s.env.path("restored");
    s.env.restore("latest", &target, &[]).ok();
    same_tree(&s.src, &target.join(s.src.strip_prefix("/").unwrap()));
}

#[test]
fn the_director_killed_mid_job_loses_no_acknowledged_record() {
    director_restarts(None);
}

#[test]
fn the_same_with_the_director_on_postgresql_and_postgresql_restarted() {
    let Some(pg) = crate::director::Postgres::start() else {
        assert!(
            std::env::var("BATON_TEST_REQUIRE_PG").is_err(),
            "PostgreSQL is required (BATON_TEST_REQUIRE_PG) but not here"
        );
        eprintln!("skipped: no PostgreSQL (or not root)");
        return;
    };
    director_restarts(Some(&pg));
}

fn agent_run_once(s: &Setup) -> std::process::Output {
    let mut c = s.env.std_cmd();
    c.args(["agent", "run", "--once", "--director", &s.d.url, "--state"])
        .arg(&s.web);
    c.output().unwrap()
}

fn runs_of(s: &Setup) -> Vec<serde_json::Value> {
    s.d.ctl(&s.env, &["runs", "--json"]).ok().json()["runs"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn the_director_dispatches_due_jobs_and_follows_their_runs() {
    let s = setup(&[&[]]);
    std::fs::create_dir_all(&s.src).unwrap();
    for i in 0..20u64 {
        baton_testing::write_file(&s.src.join(format!("f{i}")), 10_000 + i * 3_000, i).unwrap();
    }
    // A new job is due at once.
    let jobs = {
        let mut c = s.env.cmd();
        c.args(["agent", "jobs", "--json", "--director", &s.d.url, "--state"])
            .arg(&s.web);
        run(&mut c).ok().json()
    };
    assert_eq!(jobs["jobs"][0]["due"], true, "{jobs}");
    let out = agent_run_once(&s);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = runs_of(&s);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["job"], "web");
    assert_eq!(runs[0]["agent"], "web-1");
    assert_eq!(runs[0]["state"], "completed");
    assert_eq!(runs[0]["exit_code"], 0);
    assert!(runs[0]["finished"].is_i64());
    assert_eq!(runs[0]["media_agents"], serde_json::json!(["ma-1"]));
    let ids = snapshot_ids(&s.env, &s.env.repo);
    assert_eq!(runs[0]["snapshot"], ids[0].as_str());
    let snaps = s.d.ctl(&s.env, &["snapshots", "--json"]).ok().json();
    assert_eq!(snaps["snapshots"][0]["id"], ids[0].as_str(), "{snaps}");
    assert_eq!(snaps["snapshots"][0]["job"], "web");
    // Every hour: not due again now.
    assert!(agent_run_once(&s).status.success());
    assert_eq!(runs_of(&s).len(), 1);
    // Asked for: due at the next poll, once.
    s.d.ctl(&s.env, &["run", "web", "--json"]).ok();
    assert!(agent_run_once(&s).status.success());
    assert_eq!(runs_of(&s).len(), 2);
    assert!(agent_run_once(&s).status.success());
    assert_eq!(runs_of(&s).len(), 2);
    assert_eq!(snapshot_ids(&s.env, &s.env.repo).len(), 2);
    // A run that fails is reported so.
    std::fs::remove_dir_all(&s.src).unwrap();
    s.d.ctl(&s.env, &["run", "web"]).ok();
    let out = agent_run_once(&s);
    assert!(!out.status.success());
    let runs = runs_of(&s);
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[0]["state"], "failed", "{runs:?}");
    assert!(runs[0]["message"].is_string(), "{runs:?}");
    // Unknown jobs cannot be asked for.
    assert_eq!(s.d.ctl(&s.env, &["run", "nope"]).code, 2);
}

/// Peak resident memory of a process, KiB (`VmHWM`).
fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// 20 agents back up at once through two media agents: every backup
/// completes, the director spreads them over both, and each daemon's memory
/// stays bounded (`bench/fleet.sh` measures the same at scale).
#[test]
fn twenty_agents_at_once_are_spread_over_the_pool() {
    let s = setup(&[&[], &[]]);
    let n = 20;
    let mut agents = Vec::new();
    for i in 0..n {
        let name = format!("fleet-{i:02}");
        let state = s.d.enrolled(&s.env, "agent", &name);
        let src = s.env.path(&format!("src-{i:02}"));
        random_files(&src, 2, 4, 0xf1ee7 + i as u64);
        add_job(
            &s.env,
            &s.d,
            (&name, &name, "p1"),
            src.to_str().unwrap(),
            &[],
        );
        agents.push((name, state));
    }
    let children: Vec<_> = agents
        .iter()
        .map(|(name, state)| {
            backup_cmd(&s.env, &s.d, state, name)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut first: std::collections::BTreeMap<String, usize> = Default::default();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message_type"] == "agent_backup")
            .unwrap();
        *first
            .entry(report["media_agents"][0].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(snapshot_ids(&s.env, &s.env.repo).len(), n);
    // Spread: each media agent took a fair share of the agents and bytes.
    let listed = s.d.ctl(&s.env, &["media-agents", "--json"]).ok().json();
    let bytes: Vec<u64> = listed["media_agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["load"]["bytes_total"].as_u64().unwrap())
        .collect();
    let total: u64 = bytes.iter().sum();
    eprintln!("agents first served by: {first:?}; bytes per media agent: {bytes:?}");
    for (m, k) in &first {
        assert!(
            (5..=15).contains(k),
            "{m} took {k} of {n} agents: {first:?}"
        );
    }
    for b in &bytes {
        assert!(*b * 4 >= total && *b * 4 <= total * 3, "{bytes:?}");
    }
    // One in-memory index per pool served all a media agent's jobs: each
    // pool was listed once, and the index holds the packs written since.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let listed = s.d.ctl(&s.env, &["media-agents", "--json"]).ok().json();
    let mut indexed = 0;
    for m in listed["media_agents"].as_array().unwrap() {
        let pools = m["pools"].as_array().unwrap().len();
        assert_eq!(m["load"]["index_loads"], pools, "{listed}");
        indexed += m["load"]["index_packs"].as_u64().unwrap();
    }
    assert!(indexed >= n as u64, "{listed}");
    // Bounded memory: a media agent holds at most --max-writes objects.
    for m in &s.media {
        let kib = peak_kib(m.child.id());
        eprintln!("{}: peak {} MiB", m.name, kib / 1024);
        assert!(kib < 256 << 10, "{}: {kib} KiB", m.name);
    }
    let kib = peak_kib(s.d.child.id());
    eprintln!("director: peak {} MiB", kib / 1024);
    assert!(kib < 256 << 10, "director: {kib} KiB");
}

/// Kills a process group when dropped.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The README's quick start, run as written (on a free port, in a scratch
/// home): a director, two media agents and an agent come up, and the
/// agent's job is stored in the pool's repository.
#[test]
fn the_readme_quick_start_brings_up_a_pool_in_three_commands() {
    use std::os::unix::process::CommandExt;
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let start = readme.find("<!-- quickstart:start -->").unwrap();
    let end = readme.find("<!-- quickstart:end -->").unwrap();
    let block: String = readme[start..end]
        .lines()
        .filter(|l| !l.starts_with("```") && !l.starts_with("<!--"))
        .collect::<Vec<_>>()
        .join("\n");
    let commands = block.lines().filter(|l| l.starts_with("baton ")).count();
    assert_eq!(commands, 3, "the quick start is three commands:\n{block}");
    let port = free_port();
    let script = format!(
        "set -euo pipefail\n{}\n",
        block.replace("127.0.0.1:8443", &format!("127.0.0.1:{port}"))
    );
    let home = tempfile::tempdir().unwrap();
    let docs = home.path().join("Documents");
    std::fs::create_dir_all(&docs).unwrap();
    for i in 0..10u64 {
        baton_testing::write_file(&docs.join(format!("d{i}.txt")), 5_000 * (i + 1), i).unwrap();
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_baton")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Into a file: the daemons it leaves running keep their output open.
    let log = home.path().join("quickstart.log");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env_clear()
        .env("PATH", &path)
        .env("HOME", home.path())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    let _group = Group(child.id() as i32);
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the quick start failed:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let lab = home.path().join("baton-lab");
    let baton = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(args)
            .env_clear()
            .env("PATH", &path)
            .env("HOME", home.path())
            .env("BATON_DIRECTOR", format!("https://127.0.0.1:{port}"))
            .env("BATON_DIRECTOR_CA", lab.join("director/ca.pem"))
            .env(
                "BATON_DIRECTOR_TOKEN_FILE",
                lab.join("director/admin.token"),
            )
            .env("BATON_PASSWORD", "lab-password")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap_or_default()
    };
    let runs = baton(&["ctl", "runs", "--json"]);
    assert_eq!(runs["runs"][0]["state"], "completed", "{runs}");
    let media = baton(&["ctl", "media-agents", "--json"]);
    assert_eq!(
        media["media_agents"].as_array().unwrap().len(),
        2,
        "{media}"
    );
    let target = home.path().join("restored");
    let repo = lab.join("repo");
    baton(&[
        "-r",
        repo.to_str().unwrap(),
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
    ]);
    same_tree(&docs, &target.join(docs.strip_prefix("/").unwrap()));
}

/// An agent's certificate that has expired is refused by media agents (at
/// the handshake; the grants leave it out too).
#[test]
fn an_expired_agent_certificate_is_refused_by_media_agents() {
    let s = setup(&[&[]]);
    // A second director on the same state (the same CA and database)
    // issues certificates that last three seconds.
    let short = Director::start(&s.env, &s.d.state, None, &["--cert-validity", "3s"]);
    let brief = s.env.path("brief-1");
    let t = s.d.token(&s.env, "agent", "brief-1", "1h");
    short.enrol(&s.env, &t, &brief).ok();
    add_job(
        &s.env,
        &s.d,
        ("brief", "brief-1", "p1"),
        "/nonexistent",
        &[],
    );
    let m = &s.media[0];
    assert_eq!(m.curl(&brief, "GET", "/v1/repo/p1"), "200");
    std::thread::sleep(std::time::Duration::from_secs(4));
    let code = m.curl(&brief, "GET", "/v1/repo/p1");
    assert!(
        code == "000" || code == "403",
        "an expired certificate was served: {code}"
    );
}

/// Nodes renew their certificates when a third of the validity is left:
/// the media agent while it serves, the agent before it runs a job. The
/// old certificate holds until it expires (work under way goes on), the
/// new one after it: backups through the pool work on both sides of the
/// old one's expiry.
#[test]
fn node_certificates_are_renewed_before_they_expire() {
    let s = setup_with(1, &["--cert-validity", "24s"], &[MediaSpec::default()]);
    let env = &s.env;
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&s.src).unwrap();
    std::fs::write(s.src.join("f"), b"renewed").unwrap();
    let fingerprint = |state: &Path| {
        let pem = std::fs::read_to_string(state.join("cert.pem")).unwrap();
        baton_format::storage_id(pem.as_bytes()).to_hex()
    };
    let (web_before, ma_before) = (fingerprint(&s.web), fingerprint(&s.media_states[0]));
    // Due after 16 s.
    std::thread::sleep(std::time::Duration::from_secs(17).saturating_sub(started.elapsed()));
    let out = agent_backup(env, &s.d, &s.web, "web");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate renewed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(fingerprint(&s.web), web_before);
    // The media agent renewed while serving (it checks every heartbeat).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fingerprint(&s.media_states[0]) == ma_before {
        assert!(
            std::time::Instant::now() < deadline,
            "the media agent did not renew"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let nodes = s.d.ctl(env, &["nodes", "--json"]).ok().json();
    for name in ["web-1", "ma-1"] {
        let certs: Vec<&serde_json::Value> = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["name"] == name)
            .collect();
        assert_eq!(certs.len(), 2, "{nodes}");
        // The old one is revoked from its expiry on; the new one is current.
        let old = certs.iter().find(|n| !n["revoked"].is_null()).unwrap();
        assert_eq!(old["revoked"], old["not_after"], "{nodes}");
        assert!(certs.iter().any(|n| n["revoked"].is_null()), "{nodes}");
    }
    // Past the old certificates' expiry, the pool still serves the agent.
    std::thread::sleep(std::time::Duration::from_secs(26).saturating_sub(started.elapsed()));
    std::fs::write(s.src.join("g"), b"after the old expiry").unwrap();
    let out = agent_backup(env, &s.d, &s.web, "web");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot_ids(env, &env.repo).len(), 2);
    let token = std::fs::read_to_string(s.d.state.join("admin.token")).unwrap();
    let (_, metrics) = crate::director::curl(
        &s.d,
        "/metrics",
        &["-H", &format!("authorization: Bearer {token}")],
    );
    assert!(
        metrics.contains("baton_director_renewals_total 2"),
        "{metrics}"
    );
}

/// A job the director defines with `--volume-snapshot --replicate-to`:
/// the agent backs its paths up through the pool from a btrfs snapshot,
/// replicates the snapshot to the second site in the background (reading
/// the pool as the agent, through the media agent), and once that site
/// holds it whole the volume snapshot is deleted and the director knows.
#[test]
fn a_job_with_a_volume_snapshot_is_replicated_to_a_second_site() {
    if !crate::drill::tools_present() {
        return;
    }
    let s = setup(&[&[]]);
    let env = &s.env;
    let mut cleanup = crate::instant_pg::Cleanup(vec![]);
    let vol = crate::drill::btrfs_volume(env, "1G", &mut cleanup);
    let data = vol.join("data");
    random_files(&data, 20, 8, 77);
    let site = env.path("site2");
    let mut init = env.cmd();
    init.env("BATON_REPOSITORY", &site)
        .env("BATON_PASSWORD", "site two")
        .args(["init", "--kdf-memory", "8192", "--kdf-iterations", "1"]);
    run(&mut init).ok();
    add_job(
        env,
        &s.d,
        ("vol", "web-1", "p1"),
        data.to_str().unwrap(),
        &[
            "--volume-snapshot",
            "--replicate-to",
            site.to_str().unwrap(),
        ],
    );
    let out = backup_cmd(env, &s.d, &s.web, "vol")
        .env("BATON_REPLICA_PASSWORD", "site two")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "agent backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snaps = vol.join(".baton-snapshots");
    // The background replication: the second site gets the snapshot, then
    // the volume snapshot goes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let left = std::fs::read_dir(&snaps).map_or(0, |r| r.count());
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the volume snapshot is still there; replicate's log: {}",
            std::fs::read_dir(env.path(".local/state/baton/volume-snapshots"))
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect::<String>()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut restore = env.cmd();
    let target = env.path("from-site2");
    restore
        .env("BATON_REPOSITORY", &site)
        .env("BATON_PASSWORD", "site two")
        .args(["restore", "latest", "--target", target.to_str().unwrap()]);
    run(&mut restore).ok();
    same_tree(&data, &target.join(data.strip_prefix("/").unwrap()));
    let reps = s.d.ctl(env, &["replications", "--json"]).ok().json();
    assert_eq!(reps["replications"][0]["state"], "acknowledged", "{reps}");
    assert_eq!(reps["replications"][0]["agent"], "web-1", "{reps}");
    // A job cannot make agents run shell commands.
    let r = s.d.ctl(
        env,
        &[
            "job-add",
            "--name",
            "bad",
            "--agent",
            "web-1",
            "--pool",
            "p1",
            "--schedule",
            "every 1h",
            "--path",
            "/srv",
            "--volume-snapshot",
            "--quiesce",
            "command:rm -rf /",
        ],
    );
    assert_ne!(r.code, 0);
    drop(cleanup);
}
