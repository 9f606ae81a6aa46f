//! `baton director`, `baton ctl ...` and `baton agent ...`: the director's
//! daemon (on a tokio runtime made here; the library runs on the caller's)
//! and the blocking clients of its API.

use crate::cli::{
    AgentCommand, AgentWhoamiArgs, CtlCommand, DirectorArgs, DirectorConn, Global, MediaAgentArgs,
};
use crate::context;
use anyhow::{Context, Result};
use baton_director::client::{self, Client};
use baton_wire::Role;

/// Runs the director until SIGINT or SIGTERM.
pub fn serve(g: &Global, a: &DirectorArgs) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the director's runtime")?;
    for u in &a.webhooks {
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            return Err(
                crate::Usage(format!("--webhook {u:?}: an http:// or https:// URL")).into(),
            );
        }
    }
    let webhook_secret = match &a.webhook_secret_file {
        Some(f) => Some(
            std::fs::read(f)
                .with_context(|| format!("reading the webhook secret {}", f.display()))?
                .trim_ascii()
                .to_vec(),
        ),
        None => None,
    };
    rt.block_on(async {
        let cfg = baton_director::Config {
            webhooks: a.webhooks.clone(),
            webhook_secret,
            state_dir: a.state.clone(),
            database: a.database.clone(),
            listen: a.listen,
            hostnames: a.hostnames.clone(),
            cert_validity_s: a.cert_validity,
            rebalance_ratio: a.rebalance_ratio,
            server_cert_validity_s: a.server_cert_validity,
        };
        let d = baton_director::Director::start(cfg).await?;
        let addr = d.local_addr()?;
        let ca_file = a.state.join("ca.pem");
        client::write_private(&ca_file, d.ca_pem().as_bytes())?;
        // Written by the director when it made the first API token.
        let token_file = a.state.join("admin.token");
        if g.json {
            super::print_json(
                "director_ready",
                serde_json::json!({
                    "url": format!("https://{addr}"),
                    "ca_fingerprint": d.ca_fingerprint(),
                    "ca_file": ca_file.display().to_string(),
                    "admin_token_file": token_file.display().to_string(),
                }),
            );
        } else if !g.quiet {
            outln!(
                "director listening on https://{addr}\nCA certificate: {} (SHA-256 {})\nadmin API token: {}",
                ca_file.display(),
                d.ca_fingerprint(),
                token_file.display()
            );
        }
        let stop = async {
            while !context::cancel().is_cancelled() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        d.run(stop).await;
        // Ctrl-C is how a daemon is stopped: not an interruption to report.
        context::forget_interrupt();
        anyhow::Ok(crate::exit::OK)
    })
}

fn admin(c: &DirectorConn) -> Result<Client> {
    let ca = std::fs::read_to_string(&c.ca)
        .with_context(|| format!("reading the director's CA certificate {}", c.ca.display()))?;
    let token = std::fs::read_to_string(&c.token_file)
        .with_context(|| format!("reading the API token {}", c.token_file.display()))?;
    Ok(Client::with_token(&c.director, &ca, &token)?)
}

fn date(unix_s: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_s.max(0) as u64),
    )
    .to_string()
}

pub fn ctl(g: &Global, c: CtlCommand) -> Result<i32> {
    match c {
        CtlCommand::Token(a) => {
            let role = Role::parse(&a.role).expect("clap checked the role");
            let t = admin(&a.conn)?.create_token(role, &a.name, Some(a.ttl as u64))?;
            if g.json {
                super::print_json("enrol_token", serde_json::to_value(&t)?);
            } else {
                // The token alone on stdout, for `$(baton ctl token ...)`.
                outln!("{}", t.token);
                if !g.quiet {
                    eprintln!(
                        "one-time token for {} {:?}, valid until {}",
                        t.role.as_str(),
                        t.name,
                        date(t.expires)
                    );
                }
            }
        }
        CtlCommand::Nodes(a) => {
            let list = admin(&a.conn)?.nodes()?;
            if g.json {
                super::print_json("nodes", serde_json::to_value(&list)?);
            } else {
                outln!(
                    "{:<24} {:<12} {:<34} {:<21} status",
                    "name",
                    "role",
                    "certificate",
                    "valid until"
                );
                for n in &list.nodes {
                    let status = match n.revoked {
                        Some(t) => format!("revoked {}", date(t)),
                        None if n.not_after < baton_director::server::now() => "expired".into(),
                        None => "valid".into(),
                    };
                    outln!(
                        "{:<24} {:<12} {:<34} {:<21} {status}",
                        context::escape(&n.name),
                        n.role.as_str(),
                        n.serial,
                        date(n.not_after)
                    );
                }
            }
        }
        CtlCommand::PoolAdd(a) => {
            let pool = baton_wire::Pool {
                name: a.name.clone(),
                repository: a.repository.clone(),
                media_agents: a.media_agents.clone(),
            };
            let list = admin(&a.conn)?.add_pool(&pool)?;
            if g.json {
                super::print_json("pools", serde_json::to_value(&list)?);
            } else if !g.quiet {
                outln!(
                    "added pool {:?}: {}",
                    a.name,
                    context::escape(&a.repository)
                );
            }
        }
        CtlCommand::Pools(a) => {
            let list = admin(&a.conn)?.pools()?;
            if g.json {
                super::print_json("pools", serde_json::to_value(&list)?);
            } else {
                for p in &list.pools {
                    outln!(
                        "{:<24} {}  (media agents: {})",
                        p.name,
                        context::escape(&p.repository),
                        p.media_agents.join(", ")
                    );
                }
            }
        }
        CtlCommand::PoolMedia(a) => {
            let list = admin(&a.conn)?.set_pool_media(&a.name, &a.media_agents)?;
            if g.json {
                super::print_json("pools", serde_json::to_value(&list)?);
            } else if !g.quiet {
                outln!(
                    "pool {:?} is served by: {}",
                    a.name,
                    a.media_agents.join(", ")
                );
            }
        }
        CtlCommand::JobAdd(a) => {
            let job = baton_wire::JobSpec {
                name: a.name.clone(),
                agent: a.agent.clone(),
                pool: a.pool.clone(),
                paths: a.paths.clone(),
                schedule: a.schedule.clone(),
                retention: baton_wire::Retention {
                    keep_last: a.keep_last,
                    keep_hourly: a.keep_hourly,
                    keep_daily: a.keep_daily,
                    keep_weekly: a.keep_weekly,
                    keep_monthly: a.keep_monthly,
                    keep_yearly: a.keep_yearly,
                },
                tags: a.tags.clone(),
                dataset: a.dataset.clone(),
                dataset_connect: a.dataset_connect.clone(),
                volume_snapshot: a.volume_snapshot,
                quiesce: a.quiesce.clone(),
                replicate_to: a.replicate_to.clone(),
            };
            if let Err(e) = baton_wire::parse_schedule(&job.schedule) {
                return Err(crate::Usage(e).into());
            }
            let list = admin(&a.conn)?.add_job(&job)?;
            if g.json {
                super::print_json("jobs", serde_json::to_value(&list)?);
            } else if !g.quiet {
                outln!("added job {:?} for agent {:?}", a.name, a.agent);
            }
        }
        CtlCommand::Jobs(a) => {
            let list = admin(&a.conn)?.jobs()?;
            if g.json {
                super::print_json("jobs", serde_json::to_value(&list)?);
            } else {
                for j in &list.jobs {
                    outln!(
                        "{:<20} agent {:<16} pool {:<12} {:<14} {}",
                        j.name,
                        j.agent,
                        j.pool,
                        j.schedule,
                        context::escape(&j.paths.join(" "))
                    );
                }
            }
        }
        CtlCommand::JobRemove(a) => {
            let list = admin(&a.conn)?.remove_job(&a.name)?;
            if g.json {
                super::print_json("jobs", serde_json::to_value(&list)?);
            } else if !g.quiet {
                outln!("removed job {:?}", a.name);
            }
        }
        CtlCommand::MediaAgents(a) => {
            let list = admin(&a.conn)?.media_agents()?;
            if g.json {
                super::print_json("media_agents", serde_json::to_value(&list)?);
            } else {
                outln!(
                    "{:<20} {:<22} {:<8} {:>6} {:>12} {:>6} {:>7} {:>8} pools",
                    "name",
                    "address",
                    "status",
                    "queue",
                    "bytes/s",
                    "cpu%",
                    "errors",
                    "indexed"
                );
                for m in &list.media_agents {
                    outln!(
                        "{:<20} {:<22} {:<8} {:>6} {:>12} {:>6.1} {:>7} {:>8} {}",
                        m.name,
                        context::escape(&m.address),
                        match (m.alive, m.ceased) {
                            (false, _) => "lost",
                            (true, true) => "ceased",
                            (true, false) => "live",
                        },
                        m.load.queue_depth,
                        m.load.bytes_per_s,
                        m.load.cpu_percent,
                        m.load.errors,
                        m.load.index_packs,
                        m.pools.join(",")
                    );
                }
            }
        }
        CtlCommand::Runs(a) => {
            let list = admin(&a.conn)?.runs()?;
            if g.json {
                super::print_json("runs", serde_json::to_value(&list)?);
            } else {
                outln!(
                    "{:<18} {:<16} {:<16} {:<10} {:<21} {:<5} media agents",
                    "run",
                    "job",
                    "agent",
                    "state",
                    "started",
                    "exit"
                );
                for r in &list.runs {
                    outln!(
                        "{:<18} {:<16} {:<16} {:<10} {:<21} {:<5} {}",
                        &r.run[..16.min(r.run.len())],
                        r.job,
                        r.agent,
                        r.state.as_str(),
                        date(r.started),
                        r.exit_code.map_or("-".to_string(), |c| c.to_string()),
                        r.media_agents.join(" then ")
                    );
                }
                if !list.journals.is_empty() {
                    outln!(
                        "\nbackups in progress or done, as their journals reached the director:\n{:<18} {:<16} {:<10} {:>8} {:>14} {:>7} {:<16} updated",
                        "journal",
                        "agent",
                        "pool",
                        "records",
                        "position",
                        "packs",
                        "media agent"
                    );
                    for r in &list.journals {
                        outln!(
                            "{:<18} {:<16} {:<10} {:>8} {:>14} {:>7} {:<16} {}",
                            &r.job[..16.min(r.job.len())],
                            r.agent,
                            r.pool,
                            r.records,
                            r.position,
                            r.packs,
                            r.media_agent,
                            date(r.updated)
                        );
                    }
                }
                if !list.handovers.is_empty() {
                    outln!(
                        "\njobs handed to another media agent:\n{:<18} {:<16} {:<16} {:<16} {:>8} {:>14} {:>7} {:>7} at",
                        "journal",
                        "agent",
                        "from",
                        "to",
                        "record",
                        "position",
                        "checked",
                        "missing"
                    );
                    let n = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
                    for h in &list.handovers {
                        outln!(
                            "{:<18} {:<16} {:<16} {:<16} {:>8} {:>14} {:>7} {:>7} {}",
                            &h.job[..16.min(h.job.len())],
                            context::escape(&h.agent),
                            context::escape(h.from.as_deref().unwrap_or("-")),
                            context::escape(&h.to),
                            h.last_seq,
                            h.position,
                            n(h.packs_checked),
                            n(h.missing),
                            date(h.at)
                        );
                    }
                }
            }
        }
        CtlCommand::DatasetAdd(a) => {
            let d = baton_wire::Dataset {
                name: a.name.clone(),
                kind: a.kind.clone(),
                policy: baton_wire::SourcePolicy::parse(&a.policy)
                    .ok_or_else(|| crate::Usage(format!("no policy {:?}", a.policy)))?,
                primary_cpu_max: a.primary_cpu_max,
                max_lag_bytes: a.max_lag,
                max_lag_s: a.max_lag_time.map(|s| s as f64),
            };
            let list = admin(&a.conn)?.add_dataset(&d)?;
            if g.json {
                super::print_json("datasets", serde_json::to_value(&list)?);
            } else if !g.quiet {
                outln!("added data set {:?} ({})", a.name, a.policy);
            }
        }
        CtlCommand::Datasets(a) => {
            let list = admin(&a.conn)?.datasets()?;
            if g.json {
                super::print_json("datasets", serde_json::to_value(&list)?);
            } else {
                outln!(
                    "{:<20} {:<10} {:<34} {:>8} {:>12} {:>8}",
                    "name",
                    "kind",
                    "policy",
                    "cpu max",
                    "lag max",
                    "lag s"
                );
                let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                for d in &list.datasets {
                    outln!(
                        "{:<20} {:<10} {:<34} {:>8} {:>12} {:>8}",
                        context::escape(&d.name),
                        d.kind,
                        d.policy.as_str(),
                        opt(d.primary_cpu_max.map(|c| format!("{c:.0}%"))),
                        opt(d.max_lag_bytes.map(|b| b.to_string())),
                        opt(d.max_lag_s.map(|s| format!("{s:.0}")))
                    );
                }
            }
        }
        CtlCommand::Decisions(a) => {
            let list = admin(&a.conn)?.decisions()?;
            if g.json {
                super::print_json("decisions", serde_json::to_value(&list)?);
            } else {
                for d in &list.decisions {
                    outln!(
                        "{} {:<16} {:<10} {:<16} {}",
                        date(d.at),
                        context::escape(&d.dataset),
                        d.outcome,
                        context::escape(d.chosen.as_deref().unwrap_or("-")),
                        context::escape(&d.reason)
                    );
                }
            }
        }
        CtlCommand::Drills(a) => {
            let list = admin(&a.conn)?.drills()?;
            if g.json {
                super::print_json("drills", serde_json::to_value(&list)?);
            } else {
                outln!(
                    "{:<19} {:<16} {:<14} {:<8} {:>9} {:>9}  snapshot  reason",
                    "reported",
                    "drill",
                    "agent",
                    "result",
                    "RTO (s)",
                    "RPO (s)"
                );
                for d in &list.drills {
                    outln!(
                        "{} {:<16} {:<14} {:<8} {:>9.1} {:>9.0}  {}  {}",
                        date(d.at),
                        context::escape(&d.name),
                        context::escape(&d.agent),
                        if d.passed { "passed" } else { "FAILED" },
                        d.rto_s,
                        d.rpo_s,
                        &d.snapshot[..8.min(d.snapshot.len())],
                        context::escape(&d.reason)
                    );
                }
            }
        }
        CtlCommand::Replications(a) => {
            let list = admin(&a.conn)?.replications()?;
            if g.json {
                super::print_json("replications", serde_json::to_value(&list)?);
            } else {
                for r in &list.replications {
                    outln!(
                        "{} {:<14} {} -> {} {:<12} seq {} lag {:.0} s{}",
                        date(r.at),
                        context::escape(&r.agent),
                        &r.snapshot[..8.min(r.snapshot.len())],
                        context::escape(&r.replica),
                        context::escape(&r.state),
                        r.applied_seq,
                        r.lag_s,
                        r.error
                            .as_deref()
                            .map(|e| format!(": {}", context::escape(e)))
                            .unwrap_or_default()
                    );
                }
            }
        }
        CtlCommand::ApiTokens(a) => {
            let list = admin(&a.conn)?.api_tokens()?;
            if g.json {
                super::print_json("api_tokens", serde_json::to_value(&list)?);
            } else {
                outln!("{:<18} {:<24} created", "id", "name");
                for t in &list.tokens {
                    outln!("{:<18} {:<24} {}", t.id, t.name, date(t.created));
                }
            }
        }
        CtlCommand::ApiTokenAdd(a) => {
            let t = admin(&a.conn)?.add_api_token(&a.name)?;
            if g.json {
                super::print_json("api_token", serde_json::to_value(&t)?);
            } else {
                // The token alone on stdout, for `$(baton ctl api-token-add ...)`.
                outln!("{}", t.token);
                if !g.quiet {
                    eprintln!("API token {} for {:?} (shown once)", t.id, t.name);
                }
            }
        }
        CtlCommand::ApiTokenRevoke(a) => {
            if a.name.len() != 16 || !a.name.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(crate::Usage(format!(
                    "{:?}: an API token's id is 16 hex digits (`baton ctl api-tokens` lists them)",
                    a.name
                ))
                .into());
            }
            let list = admin(&a.conn)?.revoke_api_token(&a.name)?;
            if g.json {
                super::print_json("api_tokens", serde_json::to_value(&list)?);
            } else if !g.quiet {
                outln!("revoked API token {}", a.name);
            }
        }
        CtlCommand::ApiTokenRotate(a) => {
            let c = admin(&a.conn)?;
            let old = c.token_id().expect("an API token client");
            let list = c.api_tokens()?;
            let name = list
                .tokens
                .iter()
                .find(|t| t.id == old)
                .map_or("admin".to_string(), |t| t.name.clone());
            let new = c.add_api_token(&name)?;
            // The new token is on disk before the old one stops working.
            client::write_private(&a.conn.token_file, new.token.as_bytes())?;
            let c2 = admin(&a.conn)?;
            let list = c2.revoke_api_token(&old)?;
            if g.json {
                super::print_json("api_tokens", serde_json::to_value(&list)?);
            } else if !g.quiet {
                outln!(
                    "API token {old} replaced by {} in {}",
                    new.id,
                    a.conn.token_file.display()
                );
            }
        }
        CtlCommand::Snapshots(a) => {
            // The snapshots runs reported (the director has no key: what is
            // in them is read with `baton -r REPO snapshots`).
            let list = admin(&a.conn)?.runs()?;
            let snaps: Vec<serde_json::Value> = list
                .runs
                .iter()
                .filter_map(|r| {
                    r.snapshot.as_ref().map(|id| {
                        serde_json::json!({
                            "id": id,
                            "job": r.job,
                            "agent": r.agent,
                            "run": r.run,
                            "time": r.finished.unwrap_or(r.started),
                            "state": r.state,
                        })
                    })
                })
                .collect();
            if g.json {
                super::print_json("snapshots", serde_json::json!({ "snapshots": snaps }));
            } else {
                outln!(
                    "{:<10} {:<16} {:<16} {:<21} state",
                    "id",
                    "job",
                    "agent",
                    "time"
                );
                for s in &snaps {
                    outln!(
                        "{:<10} {:<16} {:<16} {:<21} {}",
                        &s["id"].as_str().unwrap_or("")[..8],
                        s["job"].as_str().unwrap_or(""),
                        s["agent"].as_str().unwrap_or(""),
                        date(s["time"].as_i64().unwrap_or(0)),
                        s["state"].as_str().unwrap_or("")
                    );
                }
            }
        }
        CtlCommand::Run(a) => {
            admin(&a.conn)?.request_run(&a.name)?;
            if g.json {
                super::print_json("run_requested", serde_json::json!({ "job": a.name }));
            } else if !g.quiet {
                outln!("job {:?} runs at its agent's next poll", a.name);
            }
        }
        CtlCommand::Revoke(a) => {
            let list = admin(&a.conn)?.revoke(&a.name)?;
            if g.json {
                super::print_json("nodes", serde_json::to_value(&list)?);
            } else if !g.quiet {
                outln!("revoked the certificate of {:?}", a.name);
            }
        }
    }
    Ok(crate::exit::OK)
}

pub fn agent(g: &Global, c: AgentCommand) -> Result<i32> {
    match c {
        AgentCommand::Enrol(a) => {
            let r = client::enrol(&a.director, &a.token, &a.state)?;
            if g.json {
                super::print_json(
                    "enrolled",
                    serde_json::json!({
                        "name": r.name,
                        "role": r.role,
                        "serial": r.serial,
                        "not_after": r.not_after,
                        "state": a.state.display().to_string(),
                    }),
                );
            } else if !g.quiet {
                outln!(
                    "enrolled as {} {:?}; certificate {} valid until {}, key in {}",
                    r.role.as_str(),
                    r.name,
                    r.serial,
                    date(r.not_after),
                    a.state.join("key.pem").display()
                );
            }
        }
        AgentCommand::Jobs(a) => {
            let jobs = Client::for_node(&a.director, &a.state)?.agent_jobs()?;
            if g.json {
                super::print_json("jobs", serde_json::to_value(&jobs)?);
            } else {
                for j in &jobs.jobs {
                    outln!(
                        "{:<20} {:<14} {} -> {}",
                        j.job.name,
                        j.job.schedule,
                        context::escape(&j.job.paths.join(" ")),
                        context::escape(&j.repository)
                    );
                }
            }
        }
        AgentCommand::Backup(a) => {
            let c = renewed_client(&a.node)?;
            let mut jobs = c.agent_jobs()?;
            // A job naming a data set waits (a minute at most) for the
            // director's decision on it.
            let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while jobs
                .jobs
                .iter()
                .any(|j| j.job.name == a.job && j.job.dataset.is_some())
            {
                jobs = c.agent_status(&super::dataset::node_status(&jobs.jobs, 30))?;
                let decided = jobs
                    .jobs
                    .iter()
                    .any(|j| j.job.name == a.job && (j.dataset.is_some() || !j.due));
                if decided || std::time::Instant::now() >= until {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            let Some(job) = jobs.jobs.into_iter().find(|j| j.job.name == a.job) else {
                return Err(crate::Usage(format!(
                    "no job {:?} for this agent (`baton agent jobs` lists them)",
                    a.job
                ))
                .into());
            };
            return run_job(g, &a.node, &job);
        }
        AgentCommand::Run(a) => return run_schedule(g, &a),
        AgentCommand::Status(a) => {
            let c = renewed_client(&a)?;
            let jobs = c.agent_jobs()?;
            let st = super::dataset::node_status(&jobs.jobs, 30);
            c.report_status(&st)?;
            if g.json {
                super::print_json("agent_status", serde_json::to_value(&st)?);
            } else {
                outln!("cpu {:.0}%", st.cpu_percent);
                for d in &st.datasets {
                    outln!(
                        "{}: {} {:?}{}, lag {} bytes / {:.1} s{}",
                        context::escape(&d.dataset),
                        if d.available { "up" } else { "down" },
                        d.role,
                        if d.replicated { ", replicating" } else { "" },
                        d.lag_bytes.unwrap_or(0),
                        d.lag_s.unwrap_or(0.0),
                        d.error
                            .as_deref()
                            .map(|e| format!(" ({})", context::escape(e)))
                            .unwrap_or_default()
                    );
                }
            }
        }
        AgentCommand::Whoami(a) => {
            let w = Client::for_node(&a.director, &a.state)?.whoami()?;
            if g.json {
                super::print_json("whoami", serde_json::to_value(&w)?);
            } else {
                outln!("{} {} (certificate {})", w.role.as_str(), w.name, w.serial);
            }
        }
    }
    Ok(crate::exit::OK)
}

/// The node's client of the director, its certificate renewed first if a
/// third of its validity is left (a failed renewal is said and tried
/// again next time: the certificate still holds).
fn renewed_client(node: &AgentWhoamiArgs) -> std::result::Result<Client, client::ClientError> {
    let c = Client::for_node(&node.director, &node.state)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match c.renew_if_due(&node.state, now) {
        Ok(None) => Ok(c),
        Ok(Some(r)) => {
            eprintln!(
                "agent: certificate renewed (serial {}, valid until {})",
                r.serial,
                date(r.not_after)
            );
            Client::for_node(&node.director, &node.state)
        }
        Err(e) if e.retry_later() => Err(e),
        Err(e) => {
            eprintln!("agent: renewing the certificate failed ({e}); trying again next time");
            Ok(c)
        }
    }
}

/// Runs one job now: the CLI's own backup, into the job's pool through a
/// media agent the director names.
fn run_job(g: &Global, node: &AgentWhoamiArgs, aj: &baton_wire::AgentJob) -> Result<i32> {
    let job = &aj.job;
    context::set_media_node(&node.director, &node.state);
    let director = Client::for_node(&node.director, &node.state)?;
    let run = random_run_id()?;
    let snapshot = std::cell::RefCell::new(None::<String>);
    let report = |state, exit_code, message: Option<String>, media: Vec<String>| {
        let r = baton_wire::RunReport {
            run: run.clone(),
            job: job.name.clone(),
            state,
            exit_code,
            message,
            media_agents: media,
            snapshot: snapshot.borrow().clone(),
        };
        // The run goes on (or its result stands) if the director cannot
        // be told: it learns of the run from its journal meanwhile.
        if let Err(e) = director.report_run(&r) {
            eprintln!("agent: cannot report run {run} of job {:?}: {e}", job.name);
        }
    };
    report(baton_wire::RunState::Running, None, None, Vec::new());
    let mut note: Option<String> = None;
    let result = (|| -> Result<i32> {
        let mut worst = crate::exit::OK;
        if !job.paths.is_empty() {
            worst = run_backup(g, job)?;
            *snapshot.borrow_mut() = context::take_last_snapshot();
        }
        let (Some(name), Some(url)) = (&job.dataset, &job.dataset_connect) else {
            return Ok(worst);
        };
        let Some(d) = &aj.dataset else {
            let n = format!(
                "data set {name}: no decision for this run (the job is not due: `baton ctl run {}` makes it due), not backed up",
                job.name
            );
            eprintln!("agent: warning: {}", context::escape(&n));
            note = Some(n);
            return Ok(worst);
        };
        let mut report_json = serde_json::json!({
            "job": job.name,
            "dataset": name,
            "decision": d.decision,
            "outcome": d.outcome,
            "chosen": d.chosen,
            "reason": d.reason,
        });
        if d.chosen {
            let code = super::dataset::backup_postgres(g, job, name, url, &d.decision)?;
            worst = worst.max(code);
            let snap = context::take_last_snapshot();
            report_json["exit_code"] = code.into();
            report_json["snapshot"] = snap.clone().into();
            note = Some(format!(
                "data set {name}: backed up here ({}, decision {}): {}",
                d.outcome, d.decision, d.reason
            ));
            if snap.is_some() {
                *snapshot.borrow_mut() = snap;
            }
        } else {
            note = Some(format!(
                "data set {name}: not here in this run ({}, decision {}): {}",
                d.outcome, d.decision, d.reason
            ));
        }
        report_json["read_bytes"] = read_bytes().into();
        if g.json {
            super::print_json("agent_dataset", report_json);
        } else if !g.quiet {
            eprintln!("agent: {}", context::escape(note.as_deref().unwrap_or("")));
        }
        Ok(worst)
    })();
    let media = context::media().map(|m| m.served_by()).unwrap_or_default();
    match &result {
        Ok(code) => report(
            if *code == crate::exit::OK {
                baton_wire::RunState::Completed
            } else if *code == crate::exit::PARTIAL {
                baton_wire::RunState::Partial
            } else {
                baton_wire::RunState::Failed
            },
            Some(*code),
            // Within what the director takes for a run's message.
            note.as_ref().map(|n| {
                let mut end = n.len().min(2000);
                while !n.is_char_boundary(end) {
                    end -= 1;
                }
                n[..end].to_string()
            }),
            media,
        ),
        Err(e) => report(
            baton_wire::RunState::Failed,
            Some(crate::exit_code(e)),
            Some(format!("{e:#}")),
            media,
        ),
    }
    result
}

/// Bytes this process has read so far (`rchar` of /proc/self/io: from
/// files and sockets, cached or not): how the tests see which node read
/// a data set.
fn read_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("rchar: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A random run id (hex).
fn random_run_id() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("the system's random source: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A job's backup command line (`argv`) as the CLI's own backup
/// arguments, with the settings that send it to the job's pool.
pub(super) fn backup_of(
    g: &Global,
    job: &baton_wire::JobSpec,
    argv: &[String],
) -> Result<(Global, crate::cli::BackupArgs)> {
    let parsed = <crate::cli::Cli as clap::Parser>::try_parse_from(argv)
        .map_err(|e| crate::Usage(format!("job {:?}: {e}", job.name)))?;
    let crate::cli::Command::Backup(args) = parsed.command else {
        unreachable!("parsed as a backup");
    };
    let mut g2 = g.clone();
    g2.repo = Some(std::path::PathBuf::from(format!("media:{}", job.pool)));
    Ok((g2, args))
}

/// The backup of a job: the CLI's own, into the job's pool.
fn run_backup(g: &Global, job: &baton_wire::JobSpec) -> Result<i32> {
    let mut argv: Vec<String> = vec!["baton".into(), "backup".into()];
    for t in &job.tags {
        argv.push("--tag".into());
        argv.push(t.clone());
    }
    if job.volume_snapshot {
        argv.push("--volume-snapshot".into());
        match job.quiesce.as_deref().and_then(|q| q.split_once(':')) {
            Some(("postgres", url)) => {
                argv.push("--quiesce-postgres".into());
                argv.push(url.into());
            }
            Some(("fsfreeze", mount)) => {
                argv.push("--quiesce-fsfreeze".into());
                argv.push(mount.into());
            }
            _ => {}
        }
    }
    if let Some(r) = &job.replicate_to {
        argv.push("--replicate-to".into());
        argv.push(r.clone());
    }
    argv.push("--".into());
    argv.extend(job.paths.iter().cloned());
    let (g2, args) = backup_of(g, job, &argv)?;
    let code = super::backup::run(&g2, &args)?;
    if let Some(m) = context::media() {
        let (resent, resent_bytes, resent_packs) = m.resent();
        if g.json {
            super::print_json(
                "agent_backup",
                serde_json::json!({
                    "job": job.name,
                    "pool": job.pool,
                    "exit_code": code,
                    "media_agents": m.served_by(),
                    "switches": m.switches(),
                    "resent_requests": resent,
                    "resent_bytes": resent_bytes,
                    "resent_packs": resent_packs,
                    "takeover_ms": m.takeover_ms(),
                    "detect_ms": m.detect_ms(),
                    "takeovers": m.takeovers(),
                }),
            );
        } else if !g.quiet {
            let mut line = format!(
                "job {:?}: stored through media agent {}",
                job.name,
                m.served_by().join(" then ")
            );
            if m.switches() > 0 {
                line.push_str(&format!(
                    " ({} switch(es); {resent} request(s), {resent_bytes} bytes sent again; failure known after {} ms, takeover {} ms)",
                    m.switches(),
                    m.detect_ms(),
                    m.takeover_ms()
                ));
            }
            eprintln!("{line}");
            for t in m.takeovers() {
                eprintln!(
                    "  job handed from {} to {} at record {} (position {}): {} acknowledged packs checked, {} in its index, {} ms",
                    t.from.as_deref().unwrap_or("(none)"),
                    t.to,
                    t.progress.last_seq,
                    t.progress.position,
                    t.packs_checked,
                    t.index_packs,
                    t.ms
                );
            }
        }
    }
    Ok(code)
}

/// Runs the jobs the director says are due (their schedules, `baton ctl
/// run`), one at a time, asking every `--poll`, until Ctrl-C.
fn run_schedule(g: &Global, a: &crate::cli::AgentRunArgs) -> Result<i32> {
    enrol_once(g, &a.node.director, &a.node.state, a.enrol_token.as_deref())?;
    let mut worst = crate::exit::OK;
    loop {
        let jobs = match renewed_client(&a.node).and_then(|c| {
            // Its data sets' state first: the answer decides, for each due
            // job's data set, whether this node backs it up.
            let jobs = c.agent_jobs()?;
            if jobs.jobs.iter().any(|j| j.job.dataset.is_some()) {
                c.agent_status(&super::dataset::node_status(&jobs.jobs, a.poll as u64))
            } else {
                Ok(jobs)
            }
        }) {
            Ok(j) => j.jobs,
            Err(e) if e.retry_later() && !a.once => {
                eprintln!("agent: cannot reach the director ({e}); trying again");
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        for j in jobs.iter().filter(|j| j.due) {
            if context::cancel().is_cancelled() {
                break;
            }
            if j.job.dataset.is_some() && j.dataset.is_none() {
                eprintln!(
                    "agent: job {:?} waits for the director's decision on its data set (a node has not reported yet)",
                    j.job.name
                );
                continue;
            }
            match run_job(g, &a.node, j) {
                Ok(code) => worst = worst.max(code),
                Err(e) => {
                    eprintln!("agent: job {:?} failed: {e:#}", j.job.name);
                    worst = worst.max(crate::exit::FAILED);
                }
            }
        }
        if a.once || context::cancel().is_cancelled() {
            break;
        }
        let until = std::time::Instant::now() + std::time::Duration::from_secs(a.poll as u64);
        while std::time::Instant::now() < until && !context::cancel().is_cancelled() {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        if context::cancel().is_cancelled() {
            break;
        }
    }
    context::forget_interrupt();
    Ok(worst)
}

/// Enrols the node into `state` with `token` unless it holds a
/// certificate already (a daemon's first start).
fn enrol_once(
    g: &Global,
    director: &str,
    state: &std::path::Path,
    token: Option<&str>,
) -> Result<()> {
    if state.join("cert.pem").exists() {
        return Ok(());
    }
    let Some(token) = token else {
        return Ok(());
    };
    let r = client::enrol(director, token, state)?;
    if !g.quiet && !g.json {
        eprintln!(
            "enrolled as {} {:?}; certificate {} valid until {}",
            r.role.as_str(),
            r.name,
            r.serial,
            date(r.not_after)
        );
    }
    Ok(())
}

/// Runs a media agent until SIGINT or SIGTERM.
pub fn media_agent(g: &Global, a: &MediaAgentArgs) -> Result<i32> {
    enrol_once(g, &a.director, &a.state, a.enrol_token.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the media agent's runtime")?;
    let base = g.clone();
    let open: baton_media::server::Opener = std::sync::Arc::new(move |repo: &str| {
        if repo.starts_with("media:") {
            return Err("a pool's repository cannot be another media agent".into());
        }
        let mut g = base.clone();
        g.repo = Some(std::path::PathBuf::from(repo));
        context::storage(&g).map_err(|e| format!("{e:#}"))
    });
    rt.block_on(async {
        let m = baton_media::MediaAgent::start(baton_media::Config {
            state_dir: a.state.clone(),
            director: a.director.clone(),
            listen: a.listen,
            advertise: a.advertise.clone(),
            pools: a.pools.clone(),
            open,
            max_writes: a.max_writes,
            throttle_file: a.throttle_file.clone(),
        })
        .await?;
        if g.json {
            super::print_json(
                "media_agent_ready",
                serde_json::json!({ "name": m.name(), "address": m.address(), "pools": a.pools }),
            );
        } else if !g.quiet {
            outln!(
                "media agent {} listening on {} for pools {}",
                m.name(),
                m.address(),
                a.pools.join(",")
            );
        }
        let stop = async {
            while !context::cancel().is_cancelled() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        m.run(stop).await;
        context::forget_interrupt();
        anyhow::Ok(crate::exit::OK)
    })
}
