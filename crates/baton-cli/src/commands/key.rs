use crate::cli::{Global, KeyCommand, UnlockArgs};
use crate::context;
use anyhow::Result;

pub fn run(g: &Global, cmd: KeyCommand) -> Result<i32> {
    let mut repo = context::open(g)?;
    match cmd {
        KeyCommand::List => {
            let keys = repo.list_keys()?;
            if g.json {
                let v: Vec<_> = keys
                    .iter()
                    .map(|(id, k)| match k {
                        Ok(k) => serde_json::json!({
                            "id": id, "current": id == repo.key_name(), "created": k.created, "append_only": k.append_only,
                            "hostname": k.hostname, "username": k.username,
                        }),
                        Err(e) => serde_json::json!({
                            "id": id, "current": false, "damaged": e,
                        }),
                    })
                    .collect();
                super::print_json("keys", serde_json::json!({ "keys": v }));
            } else {
                outln!(
                    "  {:<8}  {:<16}  {:<16}  {:<11}  Created",
                    "ID",
                    "User",
                    "Host",
                    "Rights"
                );
                for (id, k) in &keys {
                    let mark = if id == repo.key_name() { '*' } else { ' ' };
                    let short = &id[..8.min(id.len())];
                    match k {
                        Ok(k) => outln!(
                            "{mark} {short:<8}  {:<16}  {:<16}  {:<11}  {}",
                            crate::context::escape(&k.username),
                            crate::context::escape(&k.hostname),
                            if k.append_only { "append-only" } else { "full" },
                            crate::context::escape(&k.created)
                        ),
                        Err(e) => outln!(
                            "{mark} {short:<8}  damaged: {} (remove it with `baton key remove {short}`)",
                            crate::context::escape(e)
                        ),
                    }
                }
            }
        }
        KeyCommand::Add(a) => {
            let _lock = repo.lock(false)?;
            let pw = context::new_password(a.new_password_file.as_ref())?;
            let id = repo.add_key_with(
                pw.as_bytes(),
                &context::kdf(&a.kdf),
                a.append_only || repo.is_append_only(),
            )?;
            report(g, "key_added", &id);
        }
        KeyCommand::Remove { id } => {
            let _lock = repo.lock(true)?;
            repo.remove_key(&id)?;
            report(g, "key_removed", &id);
        }
        KeyCommand::Passwd(a) => {
            repo.require_deletes("changing the password (it removes the old key)")?;
            let lock = repo.lock(true)?;
            let pw = context::new_password(a.new_password_file.as_ref())?;
            let id = repo.change_password(pw.as_bytes(), &context::kdf(&a.kdf))?;
            drop(lock);
            report(g, "password_changed", &id);
        }
    }
    Ok(crate::exit::OK)
}

fn report(g: &Global, what: &str, id: &str) {
    if g.json {
        super::print_json(what, serde_json::json!({ "id": id }));
    } else if !g.quiet {
        outln!("{}: {}", what.replace('_', " "), &id[..8.min(id.len())]);
    }
}

pub fn unlock(g: &Global, a: &UnlockArgs) -> Result<i32> {
    let repo = context::open(g)?;
    let n = repo.unlock(a.remove_all)?;
    if g.json {
        super::print_json("unlocked", serde_json::json!({ "removed": n }));
    } else if !g.quiet {
        outln!("removed {}", super::count(n, "lock"));
    }
    Ok(crate::exit::OK)
}

pub fn jobs(g: &Global, a: crate::cli::JobsArgs) -> Result<i32> {
    let repo = context::open(g)?;
    match a.command.unwrap_or(crate::cli::JobsCommand::List) {
        crate::cli::JobsCommand::List => {
            let jobs = crate::baton::list_jobs(&repo)?;
            if g.json {
                let v: Vec<_> = jobs
                    .iter()
                    .map(|j| {
                        serde_json::json!({
                            "id": j.job.to_hex(),
                            "hostname": j.manifest.hostname,
                            "paths": j.manifest.paths,
                            "tags": j.manifest.tags,
                            "parent": j.manifest.parent.map(|p| p.to_hex()),
                            "started": j.manifest.started,
                            "last_record": j.last_time,
                            "records": j.records,
                            "packs": j.packs.len(),
                            "position": j.position,
                            "catalog_entries": j.catalog.len(),
                            "catalog_bytes": j.catalog_bytes(),
                        })
                    })
                    .collect();
                super::print_json("jobs", serde_json::json!({ "jobs": v }));
            } else {
                outln!(
                    "{:<8}  {:<16}  {:<20}  {:>7}  {:>12}  Paths",
                    "ID",
                    "Host",
                    "Last record (UTC)",
                    "Packs",
                    "Durable"
                );
                for j in &jobs {
                    outln!(
                        "{:<8}  {:<16}  {:<20}  {:>7}  {:>12}  {}",
                        j.job.short(),
                        crate::context::escape(&j.manifest.hostname),
                        j.last_time
                            .get(..19)
                            .unwrap_or(&j.last_time)
                            .replace('T', " "),
                        j.packs.len(),
                        super::bytes(j.position),
                        crate::context::escape(&j.manifest.paths.join(", "))
                    );
                }
                if !g.quiet {
                    outln!("{}", super::count(jobs.len(), "unfinished job"));
                }
            }
        }
        crate::cli::JobsCommand::Forget { id } => {
            repo.require_deletes("jobs forget")?;
            // Exclusive: a running backup may still be appending to the journal.
            let _lock = repo.lock(true)?;
            let job = crate::baton::find_job(&repo, &id)?;
            let n = crate::baton::forget_job(&repo, &job)?;
            if g.json {
                super::print_json(
                    "job_forgotten",
                    serde_json::json!({ "id": job.to_hex(), "records": n }),
                );
            } else if !g.quiet {
                outln!("forgot job {} ({n} journal records)", job.short());
            }
        }
    }
    Ok(crate::exit::OK)
}
