//! `baton director`, `baton ctl ...` and `baton agent ...`: the director's
//! daemon (on a tokio runtime made here; the library runs on the caller's)
//! and the blocking clients of its API.

use crate::cli::{AgentCommand, CtlCommand, DirectorArgs, DirectorConn, Global};
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
                    outln!("{:<24} {}", p.name, context::escape(&p.repository));
                }
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
