//! Replication-aware sources (issue 14), with a real PostgreSQL primary and
//! streaming standby started here, a director, a media agent and two
//! agents (one per database node): the director chooses, per run, the
//! node a replicated data set is backed up from, records why, and the
//! chosen agent takes a consistent backup of its copy (on the standby,
//! with the non-exclusive backup API) that restores to a running server.

use crate::common::{Env, is_root};
use crate::director::Director;
use crate::media::Media;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A PostgreSQL primary with a streaming standby, on loopback.
pub(crate) struct Replicated {
    dir: PathBuf,
    bin: PathBuf,
    pub primary: u16,
    pub standby: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `cmd` with bash as the postgres user; its output, or a panic.
fn as_pg(cmd: &str) -> String {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--", "bash", "-c", cmd])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "`{cmd}`: {text}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Drop for Replicated {
    fn drop(&mut self) {
        for d in ["standby", "primary", "restored"] {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join(d))
                .args(["-m", "immediate", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Replicated {
    /// Starts both and waits until the standby streams; `None` where
    /// PostgreSQL (or root, to run it as its own user) is not here.
    pub(crate) fn start() -> Option<Replicated> {
        let bin = crate::instant_pg::pg_bin();
        if bin.is_none() || !is_root() {
            assert!(
                std::env::var("BATON_TEST_REQUIRE_PG").is_err(),
                "PostgreSQL is required (BATON_TEST_REQUIRE_PG) but not here"
            );
            eprintln!("skipped: PostgreSQL or root is not here");
            return None;
        }
        let bin = bin.unwrap();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/baton-repl-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Command::new("chown")
            .args(["postgres:", dir.to_str().unwrap()])
            .status()
            .unwrap();
        let r = Replicated {
            dir,
            bin,
            primary: free_port(),
            standby: free_port(),
        };
        let (b, d) = (r.bin.display(), r.dir.display());
        as_pg(&format!(
            "{b}/initdb -D {d}/primary -U postgres --auth=trust --no-sync -E UTF8 --locale=C >/dev/null"
        ));
        std::fs::write(
            r.dir.join("primary/postgresql.conf"),
            format!(
                "{}\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{d}'\nwal_level = replica\nmax_wal_senders = 5\nmax_replication_slots = 5\nfsync = off\nwal_keep_size = '256MB'\nshared_buffers = '32MB'\n",
                std::fs::read_to_string(r.dir.join("primary/postgresql.conf")).unwrap(),
                r.primary
            ),
        )
        .unwrap();
        as_pg(&format!(
            "{b}/pg_ctl -D {d}/primary -l {d}/primary.log -w -t 60 start >/dev/null"
        ));
        as_pg(&format!(
            "{b}/pg_basebackup -h 127.0.0.1 -p {} -U postgres -D {d}/standby -R -X stream -C -S standby1 -c fast --no-sync",
            r.primary
        ));
        as_pg(&format!(
            "echo 'port = {}' >> {d}/standby/postgresql.auto.conf",
            r.standby
        ));
        r.start_standby();
        Some(r)
    }

    pub(crate) fn url(port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    }

    pub(crate) fn q(&self, port: u16, sql: &str) -> String {
        as_pg(&format!(
            "{}/psql -X -q -At -h 127.0.0.1 -p {port} -U postgres -d postgres -c \"{sql}\"",
            self.bin.display()
        ))
    }

    pub(crate) fn start_standby(&self) {
        let (b, d) = (self.bin.display(), self.dir.display());
        as_pg(&format!(
            "{b}/pg_ctl -D {d}/standby -l {d}/standby.log -w -t 60 start >/dev/null"
        ));
        self.wait_streaming();
    }

    pub(crate) fn stop_standby(&self) {
        let (b, d) = (self.bin.display(), self.dir.display());
        as_pg(&format!(
            "{b}/pg_ctl -D {d}/standby -m fast -w stop >/dev/null"
        ));
    }

    pub(crate) fn wait_streaming(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.q(
            self.primary,
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        ) != "1"
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the standby does not stream"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Waits until the standby has replayed all the primary has written.
    pub(crate) fn wait_replayed(&self) {
        let lsn = self.q(self.primary, "SELECT pg_current_wal_lsn()");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.q(
            self.standby,
            &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
        ) != "t"
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the standby does not replay"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Bytes read so far by the primary's server processes (`rchar`).
    pub(crate) fn primary_read(&self) -> u64 {
        let pid: u32 = std::fs::read_to_string(self.dir.join("primary/postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut total = 0;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            if p == pid || ppid == Some(pid) {
                let io = std::fs::read_to_string(format!("/proc/{p}/io")).unwrap_or_default();
                total += io
                    .lines()
                    .find_map(|l| l.strip_prefix("rchar: "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        total
    }

    /// Untars a data set's backup into a new data directory and starts a
    /// server on it (as the README says); its port.
    pub(crate) fn start_restored(&self, tar: &Path) -> u16 {
        let (b, d) = (self.bin.display(), self.dir.display());
        let port = free_port();
        as_pg(&format!(
            "mkdir -m 700 {d}/restored && tar -C {d}/restored -xf {} && {b}/pg_ctl -D {d}/restored -l {d}/restored.log -w -t 60 -o '-p {port} -k {d}' start >/dev/null",
            tar.display()
        ));
        port
    }

    pub(crate) fn restored_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("restored.log")).unwrap_or_default()
    }
}

/// A director, a media agent serving pool p1, and agents `db-1` (beside
/// the primary) and `db-2` (beside the standby), each with a job naming
/// data set `pg` and a directory of its own.
struct Site {
    env: Env,
    d: Director,
    _media: Media,
    db1: PathBuf,
    db2: PathBuf,
}

fn site(pg: &Replicated, policy: &str, extra: &[&str]) -> Site {
    site_with(pg, &[("pg", policy, extra)], true, &[])
}

/// [`site`] with several data sets (`(name, policy, dataset-add flags)`),
/// each with a job on both nodes (named `NAME-1`, `NAME-2`), with their
/// own directories too if `with_paths`.
fn site_with(
    pg: &Replicated,
    datasets: &[(&str, &str, &[&str])],
    with_paths: bool,
    director_extra: &[&str],
) -> Site {
    let env = Env::new();
    let d = Director::start(&env, &env.path("director"), None, director_extra);
    let repo = env.repo.display().to_string();
    d.ctl(
        &env,
        &[
            "pool-add",
            "--name",
            "p1",
            "--repository",
            &repo,
            "--media-agent",
            "ma-1",
        ],
    )
    .ok();
    let db1 = d.enrolled(&env, "agent", "db-1");
    let db2 = d.enrolled(&env, "agent", "db-2");
    let ma = d.enrolled(&env, "media-agent", "ma-1");
    for (name, policy, extra) in datasets {
        let job = |i: usize, agent: &str| {
            if datasets.len() == 1 {
                agent.to_string()
            } else {
                format!("{name}-{i}")
            }
        };
        add_dataset(&env, &d, pg, (name, policy, extra), with_paths, job);
    }
    let media = Media::start(&env, &d, &ma, "p1", &[], None);
    Site {
        env,
        d,
        _media: media,
        db1,
        db2,
    }
}

/// Adds data set `name` and a job naming it on each node (named by
/// `job(1 or 2, agent)`), with the node's own directory if `with_paths`.
fn add_dataset(
    env: &Env,
    d: &Director,
    pg: &Replicated,
    (name, policy, extra): (&str, &str, &[&str]),
    with_paths: bool,
    job: impl Fn(usize, &str) -> String,
) {
    let mut args = vec!["dataset-add", "--name", name, "--policy", policy];
    args.extend(extra.iter());
    d.ctl(env, &args).ok();
    for (i, agent, port) in [(1, "db-1", pg.primary), (2, "db-2", pg.standby)] {
        let local = env.path(&format!("{agent}-local"));
        std::fs::create_dir_all(&local).unwrap();
        std::fs::write(local.join("conf"), format!("{agent}'s own settings")).unwrap();
        let url = Replicated::url(port);
        let job = job(i, agent);
        let mut args = vec![
            "job-add",
            "--name",
            &job,
            "--agent",
            agent,
            "--pool",
            "p1",
            "--schedule",
            "every 1h",
            "--dataset",
            name,
            "--dataset-connect",
            &url,
        ];
        let local = local.to_str().unwrap().to_string();
        if with_paths {
            args.extend(["--path", &local]);
        }
        d.ctl(env, &args).ok();
    }
}

/// `baton agent run --once --json` as `state`'s agent: its messages.
fn run_once(s: &Site, state: &Path) -> Vec<serde_json::Value> {
    agent(s, state, &["run", "--once", "--poll", "1s"])
}

/// `baton agent SUBCOMMAND --json` as `state`'s agent, which must
/// succeed: its messages, each as its schema says.
fn agent(s: &Site, state: &Path, sub: &[&str]) -> Vec<serde_json::Value> {
    let out = s
        .env
        .std_cmd()
        .arg("agent")
        .args(sub)
        .args(["--json", "--director", &s.d.url, "--state"])
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "agent {sub:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn dataset_message(msgs: &[serde_json::Value]) -> serde_json::Value {
    let m = msgs
        .iter()
        .find(|m| m["message_type"] == "agent_dataset")
        .unwrap_or_else(|| panic!("no agent_dataset message: {msgs:?}"))
        .clone();
    crate::schemas::validate("agent.schema.json", &m).unwrap();
    m
}

/// The snapshots of the repository with `tag`.
fn tagged(env: &Env, tag: &str) -> Vec<serde_json::Value> {
    env.run(&["snapshots", "--json", "--tag", tag]).ok().json()["snapshots"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_healthy_standby_is_backed_up_and_the_copy_restores_to_a_running_server() {
    let Some(pg) = Replicated::start() else {
        return;
    };
    // About 40 MiB of table, replicated.
    pg.q(
        pg.primary,
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 120000) g;",
    );
    pg.wait_replayed();
    let size: u64 = pg
        .q(pg.primary, "SELECT pg_database_size('postgres')")
        .parse()
        .unwrap();
    let s = site(
        &pg,
        "prefer-secondary",
        &["--max-lag", "64MiB", "--max-lag-time", "60s"],
    );

    // A password never goes into the director's job definitions.
    let refused = s.d.ctl(
        &s.env,
        &[
            "job-add",
            "--name",
            "leaky",
            "--agent",
            "db-1",
            "--pool",
            "p1",
            "--schedule",
            "every 1h",
            "--dataset",
            "pg",
            "--dataset-connect",
            "postgres://postgres:secret@127.0.0.1:5432/postgres",
        ],
    );
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("password"), "{}", refused.stderr);

    let primary_before = pg.primary_read();
    // The first node to ask waits for the other's report (no decision
    // from one side), and runs nothing of its job yet.
    let first = run_once(&s, &s.db1);
    assert!(
        first.iter().all(|m| m["message_type"] != "agent_dataset"),
        "{first:?}"
    );
    let m2 = dataset_message(&run_once(&s, &s.db2));
    let m1 = dataset_message(&run_once(&s, &s.db1));
    let primary_read = pg.primary_read() - primary_before;
    eprintln!("db-1: {m1}\ndb-2: {m2}");
    // One decision for the run, the standby's node chosen, and why.
    assert_eq!(m1["decision"], m2["decision"]);
    assert_eq!(
        (m1["chosen"].as_bool(), m2["chosen"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(m2["outcome"], "secondary");
    let decisions = s.d.ctl(&s.env, &["decisions", "--json"]).ok().json();
    let d = &decisions["decisions"][0];
    assert_eq!(
        decisions["decisions"].as_array().unwrap().len(),
        1,
        "{decisions}"
    );
    assert_eq!(
        (&d["chosen"], &d["outcome"]),
        (&serde_json::json!("db-2"), &serde_json::json!("secondary"))
    );
    let inputs = d["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 2, "{d}");
    assert!(
        inputs
            .iter()
            .any(|i| i["status"]["role"] == "secondary" && i["status"]["replicated"] == true),
        "{d}"
    );
    assert!(d["reason"].as_str().unwrap().contains("db-2"), "{d}");

    // The primary read no backup I/O: neither its server nor its node's
    // agent read anything near the data set's size; the standby's did.
    eprintln!(
        "data set {size} bytes; read by the primary's server {primary_read}, by db-1's agent {}, by db-2's agent {}",
        m1["read_bytes"], m2["read_bytes"]
    );
    assert!(
        primary_read < size / 4,
        "the primary read {primary_read} of {size}"
    );
    assert!(m1["read_bytes"].as_u64().unwrap() < size / 4, "{m1}");
    assert!(m2["read_bytes"].as_u64().unwrap() > size, "{m2}");

    // Stored once; each node's own directory by its own job.
    assert_eq!(tagged(&s.env, "dataset:pg").len(), 1);
    let all = s.env.run(&["snapshots", "--json"]).ok().json();
    let all = all["snapshots"].as_array().unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    let ds = &tagged(&s.env, "dataset:pg")[0];
    assert_eq!(ds["hostname"], "pg", "{ds}");
    for node in ["db-1", "db-2"] {
        let local = s.env.path(&format!("{node}-local"));
        let own: Vec<&serde_json::Value> = all
            .iter()
            .filter(|x| x["paths"] == serde_json::json!([local.to_str().unwrap()]))
            .collect();
        assert_eq!(own.len(), 1, "{node}'s own directory: {all:?}");
    }

    // A row written after the backup is not in it; every row before is.
    pg.q(pg.primary, "INSERT INTO t VALUES (999999, 'after');");
    let snap = m2["snapshot"].as_str().unwrap();
    let tar = s.env.path("pg.tar");
    let out = s
        .env
        .std_cmd()
        .args(["dump", snap, "pg.tar"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&tar, &out.stdout).unwrap();
    Command::new("chown")
        .args(["postgres:"])
        .arg(&tar)
        .status()
        .unwrap();
    let port = pg.start_restored(&tar);
    assert_eq!(
        pg.q(port, "SELECT count(*) FROM t"),
        "120000",
        "{}",
        pg.restored_log()
    );
    assert_eq!(pg.q(port, "SELECT count(*) FROM t WHERE id = 999999"), "0");
    // It is a primary of its own, consistent, that takes writes.
    assert_eq!(pg.q(port, "SELECT pg_is_in_recovery()"), "f");
    pg.q(port, "INSERT INTO t VALUES (1000001, 'restored');");
    let log = pg.restored_log();
    assert!(log.contains("consistent recovery state reached"), "{log}");
    assert!(!log.contains("PANIC"), "{log}");
}

/// Each policy does what it says with the real replication in each
/// condition: the standby stopped, replication broken, the standby's
/// replay behind the bound, the primary's CPU above the bound. The chosen
/// node backs the data set up (a fallback from the primary), a refusal
/// backs up nothing; each is recorded with its inputs and reason, counted
/// in the metrics, and a fallback or refusal is notified.
#[test]
fn each_policy_does_what_it_says_in_each_condition() {
    let Some(pg) = Replicated::start() else {
        return;
    };
    pg.q(
        pg.primary,
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g;",
    );
    pg.wait_replayed();
    let (hook, events) = crate::director::receiver();
    let bound: &[&str] = &["--max-lag", "1MiB"];
    let cpu: &[&str] = &["--primary-cpu-max", "50"];
    let s = site_with(
        &pg,
        &[
            ("po", "primary-only", bound),
            ("so", "secondary-only", bound),
            ("ps", "prefer-secondary", bound),
            ("pi", "primary-if-secondary-unavailable", bound),
        ],
        false,
        &["--webhook", &hook],
    );
    let env = &s.env;
    let status = |state: &Path| {
        let v = agent(&s, state, &["status"]);
        assert_eq!(v.len(), 1, "{v:?}");
        crate::schemas::validate("agent.schema.json", &v[0]).unwrap();
    };
    // One run of each named data set: both nodes report, both jobs are
    // asked for, both agents run; the decision of each, and which node's
    // agent backed the data set up.
    let round = |what: &str, expect: &[(&str, Option<&str>, &str)]| {
        status(&s.db1);
        status(&s.db2);
        for (name, _, _) in expect {
            for i in [1, 2] {
                s.d.ctl(env, &["run", &format!("{name}-{i}")]).ok();
            }
        }
        let mut msgs = run_once(&s, &s.db1);
        msgs.extend(run_once(&s, &s.db2));
        for (name, chosen, outcome) in expect {
            let mine: Vec<&serde_json::Value> = msgs
                .iter()
                .filter(|m| m["message_type"] == "agent_dataset" && m["dataset"] == *name)
                .collect();
            assert_eq!(mine.len(), 2, "{what}, {name}: {msgs:?}");
            assert_eq!(mine[0]["decision"], mine[1]["decision"], "{what}, {name}");
            assert_eq!(
                mine[0]["outcome"], *outcome,
                "{what}, {name}: {}",
                mine[0]["reason"]
            );
            let backed_up: Vec<&str> = mine
                .iter()
                .filter(|m| m["chosen"] == true)
                .map(|m| {
                    assert_eq!(m["exit_code"], 0, "{what}, {name}: {m}");
                    if m["job"].as_str().unwrap().ends_with("-1") {
                        "db-1"
                    } else {
                        "db-2"
                    }
                })
                .collect();
            assert_eq!(
                backed_up,
                chosen.iter().copied().collect::<Vec<_>>(),
                "{what}, {name}: {mine:?}"
            );
            eprintln!("{what}: {name} -> {outcome}: {}", mine[0]["reason"]);
        }
    };
    use std::sync::atomic::{AtomicBool, Ordering};
    round(
        "healthy",
        &[
            ("po", Some("db-1"), "primary"),
            ("so", Some("db-2"), "secondary"),
            ("ps", Some("db-2"), "secondary"),
            ("pi", Some("db-2"), "secondary"),
        ],
    );
    // The standby's replay paused while the primary writes 4 MiB: the
    // standby receives it, and falls behind the 1 MiB bound.
    pg.q(pg.standby, "SELECT pg_wal_replay_pause()");
    pg.q(
        pg.primary,
        "INSERT INTO t SELECT g, repeat(md5(g::text), 16) FROM generate_series(1001, 9000) g",
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    round(
        "lag above the bound",
        &[
            ("po", Some("db-1"), "primary"),
            ("so", None, "refused"),
            ("ps", Some("db-1"), "fallback"),
            ("pi", None, "refused"),
        ],
    );
    pg.q(pg.standby, "SELECT pg_wal_replay_resume()");
    pg.wait_replayed();
    // Replication broken: the standby runs, but its primary_conninfo
    // points nowhere.
    let conninfo = pg.q(pg.standby, "SHOW primary_conninfo");
    pg.q(
        pg.standby,
        "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 user=postgres'",
    );
    pg.q(pg.standby, "SELECT pg_reload_conf()");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while pg.q(pg.primary, "SELECT count(*) FROM pg_stat_replication") != "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "replication did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    round(
        "replication broken",
        &[
            ("po", Some("db-1"), "primary"),
            ("so", None, "refused"),
            ("ps", Some("db-1"), "fallback"),
            ("pi", None, "refused"),
        ],
    );
    pg.q(
        pg.standby,
        &format!(
            "ALTER SYSTEM SET primary_conninfo = '{}'",
            conninfo.replace('\'', "''")
        ),
    );
    pg.q(pg.standby, "SELECT pg_reload_conf()");
    pg.wait_streaming();
    // The standby stopped.
    pg.stop_standby();
    round(
        "standby stopped",
        &[
            ("po", Some("db-1"), "primary"),
            ("so", None, "refused"),
            ("ps", Some("db-1"), "fallback"),
            ("pi", Some("db-1"), "fallback"),
        ],
    );
    pg.start_standby();
    // The primary's node busy: both cores burnt while the agents measure
    // (data sets with a CPU bound, added now: their first run is this
    // round, whatever the machine's load was before).
    for (name, policy) in [("po-cpu", "primary-only"), ("ps-cpu", "prefer-secondary")] {
        add_dataset(env, &s.d, &pg, (name, policy, cpu), false, |i, _| {
            format!("{name}-{i}")
        });
    }
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let burners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                x
            })
        })
        .collect();
    round(
        "primary above the CPU bound",
        &[
            ("po-cpu", None, "refused"),
            ("ps-cpu", Some("db-2"), "secondary"),
        ],
    );
    stop.store(true, Ordering::Relaxed);
    for b in burners {
        b.join().unwrap();
    }

    // Recorded with their inputs, counted, and notified.
    let decisions = s.d.ctl(env, &["decisions", "--json"]).ok().json();
    let all = decisions["decisions"].as_array().unwrap();
    // Four rounds of four, and the CPU round's two.
    assert_eq!(all.len(), 18, "{decisions}");
    assert!(
        all.iter()
            .all(|d| d["inputs"].as_array().unwrap().len() == 2)
    );
    let count = |o: &str| all.iter().filter(|d| d["outcome"] == o).count();
    let (refused, fallback) = (count("refused"), count("fallback"));
    assert_eq!((refused, fallback), (6, 4), "{decisions}");
    let token = std::fs::read_to_string(s.d.state.join("admin.token")).unwrap();
    let (_, metrics) = crate::director::curl(
        &s.d,
        "/metrics",
        &["-H", &format!("authorization: Bearer {token}")],
    );
    for line in [
        "baton_director_source_decisions_total{dataset=\"so\",outcome=\"refused\"} 3",
        "baton_director_source_decisions_total{dataset=\"ps\",outcome=\"fallback\"} 3",
        "baton_director_source_decisions_total{dataset=\"po-cpu\",outcome=\"refused\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}:\n{metrics}");
    }
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    while let Ok((_, body)) = events.recv_timeout(std::time::Duration::from_secs(5)) {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        *seen
            .entry(v["event"].as_str().unwrap().to_string())
            .or_default() += 1;
        if seen.get("dataset_refused") == Some(&refused)
            && seen.get("dataset_fallback") == Some(&fallback)
        {
            break;
        }
    }
    assert_eq!(seen.get("dataset_refused"), Some(&refused), "{seen:?}");
    assert_eq!(seen.get("dataset_fallback"), Some(&fallback), "{seen:?}");
}
