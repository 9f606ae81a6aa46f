//! The director's state: SQLite by default (a file in its state directory),
//! PostgreSQL with `--database postgres://...`. One set of SQL statements
//! serves both (sqlx's `Any` driver; `$N` parameters, `TEXT` and `BIGINT`
//! columns only, `ON CONFLICT DO NOTHING`), so the same tests run on both.

use baton_wire::{JobSpec, NodeInfo, Pool, Role};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or failed: try again later.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database holds an invalid {0}")]
    Corrupt(String),
    #[error("{0}")]
    Refused(String),
    /// Another enrolment of the same name won the race.
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS enrol_tokens (hash TEXT PRIMARY KEY, role TEXT NOT NULL, \
     name TEXT NOT NULL, expires BIGINT NOT NULL, used BIGINT)",
    "CREATE TABLE IF NOT EXISTS nodes (serial TEXT PRIMARY KEY, name TEXT NOT NULL, \
     role TEXT NOT NULL, fingerprint TEXT NOT NULL UNIQUE, enrolled BIGINT NOT NULL, \
     not_after BIGINT NOT NULL, revoked BIGINT)",
    "CREATE TABLE IF NOT EXISTS api_tokens (hash TEXT PRIMARY KEY, name TEXT NOT NULL, \
     created BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pools (name TEXT PRIMARY KEY, repository TEXT NOT NULL, \
     created BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS jobs (name TEXT PRIMARY KEY, agent TEXT NOT NULL, \
     pool TEXT NOT NULL, spec TEXT NOT NULL, created BIGINT NOT NULL)",
    // Journal records shipped by media agents: sealed (the director has no
    // repository key), with the summary that travelled in the clear.
    "CREATE TABLE IF NOT EXISTS journal (pool TEXT NOT NULL, name TEXT NOT NULL, \
     job TEXT NOT NULL, seq BIGINT NOT NULL, agent TEXT NOT NULL, media_agent TEXT NOT NULL, \
     sealed TEXT NOT NULL, position BIGINT NOT NULL, pack_bytes BIGINT NOT NULL, \
     packs BIGINT NOT NULL, pack_ids TEXT NOT NULL, received BIGINT NOT NULL, \
     PRIMARY KEY (pool, name))",
    // Runs as agents report them, and runs asked for with `ctl run`.
    "CREATE TABLE IF NOT EXISTS runs (run TEXT PRIMARY KEY, job TEXT NOT NULL, \
     agent TEXT NOT NULL, state TEXT NOT NULL, started BIGINT NOT NULL, finished BIGINT, \
     exit_code BIGINT, message TEXT, media_agents TEXT NOT NULL, ord BIGINT NOT NULL, \
     snapshot TEXT)",
    "CREATE TABLE IF NOT EXISTS run_requests (job TEXT PRIMARY KEY, requested BIGINT NOT NULL)",
    // Which media agents may serve which pool.
    "CREATE TABLE IF NOT EXISTS pool_media (pool TEXT NOT NULL, media_agent TEXT NOT NULL, \
     PRIMARY KEY (pool, media_agent))",
    // Locks agents made through media agents, and whose they are.
    "CREATE TABLE IF NOT EXISTS owned (pool TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, \
     agent TEXT NOT NULL, PRIMARY KEY (pool, kind, name))",
    // Running jobs handed from one media agent to another.
    "CREATE TABLE IF NOT EXISTS handovers (id TEXT PRIMARY KEY, pool TEXT NOT NULL, \
     job TEXT NOT NULL, agent TEXT NOT NULL, from_media TEXT, to_media TEXT NOT NULL, \
     at BIGINT NOT NULL, records BIGINT NOT NULL, last_seq BIGINT NOT NULL, \
     position BIGINT NOT NULL, packs_checked BIGINT, missing BIGINT)",
    "CREATE INDEX IF NOT EXISTS jobs_agent ON jobs (agent, pool)",
    // Replicated data sets, what nodes last said of their copies, and
    // where each run of a data set was backed up from, and why.
    "CREATE TABLE IF NOT EXISTS datasets (name TEXT PRIMARY KEY, spec TEXT NOT NULL, \
     created BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dataset_status (agent TEXT NOT NULL, dataset TEXT NOT NULL, \
     at BIGINT NOT NULL, cpu DOUBLE PRECISION NOT NULL, every_s BIGINT NOT NULL, \
     status TEXT NOT NULL, PRIMARY KEY (agent, dataset))",
    "CREATE TABLE IF NOT EXISTS decisions (id TEXT PRIMARY KEY, dataset TEXT NOT NULL, \
     at BIGINT NOT NULL, spec TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS decisions_dataset ON decisions (dataset, at)",
    // Fire drills and replications to second sites, as agents reported them.
    "CREATE TABLE IF NOT EXISTS drills (id TEXT PRIMARY KEY, at BIGINT NOT NULL, \
     spec TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS replications (id TEXT PRIMARY KEY, at BIGINT NOT NULL, \
     spec TEXT NOT NULL)",
    // A job's records, found without reading the whole table.
    "CREATE INDEX IF NOT EXISTS journal_job ON journal (pool, job, seq)",
    // One current certificate per node, even with two enrolments racing.
    "CREATE UNIQUE INDEX IF NOT EXISTS nodes_current ON nodes (name) WHERE revoked IS NULL",
];

/// Whether `url` may be used as it is: SQLite, PostgreSQL over a Unix socket
/// or loopback, or PostgreSQL with `sslmode=verify-full` (the database holds
/// the CA's key: whoever reads it can issue certificates).
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    if url.starts_with("sqlite:") {
        return Ok(());
    }
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return Err(format!(
            "{url:?}: the database is sqlite://PATH or postgres://USER@HOST/DB"
        ));
    };
    if url.contains("sslmode=verify-full") {
        return Ok(());
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.split(']').next())
        .unwrap_or_else(|| host.split(':').next().unwrap_or(""));
    let local = host.is_empty()
        || host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        || url.contains("host=/");
    if local {
        Ok(())
    } else {
        Err(format!(
            "{host}: PostgreSQL across a network needs `?sslmode=verify-full` (with `sslrootcert=` for a private CA): the database holds the director's CA key"
        ))
    }
}

/// A node as the director knows it, with its certificate's fingerprint.
#[derive(Debug, Clone)]
pub struct Node {
    pub info: NodeInfo,
    pub fingerprint: String,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
}

type NodeRow = (String, String, String, String, i64, i64, Option<i64>);

fn node_of(r: NodeRow) -> Result<Node> {
    let (serial, name, role, fingerprint, enrolled, not_after, revoked) = r;
    let role = Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?;
    Ok(Node {
        info: NodeInfo {
            name,
            role,
            serial,
            enrolled,
            not_after,
            revoked,
        },
        fingerprint,
    })
}

impl Store {
    /// Connects (creating an SQLite file if needed) and makes the tables.
    pub async fn open(url: &str) -> Result<Store> {
        check_url(url).map_err(StoreError::Refused)?;
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(if url.starts_with("sqlite:") { 1 } else { 8 })
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        for stmt in SCHEMA {
            // Constant statements of this file.
            sqlx::query(sqlx::AssertSqlSafe(*stmt))
                .execute(&pool)
                .await?;
        }
        Ok(Store { pool })
    }

    pub async fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_as::<_, (String,)>("SELECT value FROM meta WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.0),
        )
    }

    /// Sets `key` unless it is set; returns the value it holds after.
    pub async fn meta_set_once(&self, key: &str, value: &str) -> Result<String> {
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        self.meta(key)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("meta {key} vanished")))
    }

    pub async fn add_enrol_token(
        &self,
        hash: &str,
        role: Role,
        name: &str,
        expires: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO enrol_tokens (hash, role, name, expires) VALUES ($1, $2, $3, $4)")
            .bind(hash)
            .bind(role.as_str())
            .bind(name)
            .bind(expires)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Enrols a node in one transaction: uses the token `hash` (once,
    /// even with directors racing), issues the certificate with `issue`
    /// (given the token's role and name), revokes the name's earlier
    /// certificate and stores the node. A failure anywhere leaves the token
    /// unused. `Ok(None)`: unknown, used or expired token.
    pub async fn enrol<T>(
        &self,
        hash: &str,
        now: i64,
        issue: impl FnOnce(Role, &str) -> Result<(NodeInfo, String, T)>,
    ) -> Result<Option<(NodeInfo, T)>> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query_as::<_, (String, String)>(
            "SELECT role, name FROM enrol_tokens WHERE hash = $1 AND used IS NULL AND expires > $2",
        )
        .bind(hash)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((role, name)) = row else {
            return Ok(None);
        };
        let role =
            Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?;
        let used = sqlx::query(
            "UPDATE enrol_tokens SET used = $1 WHERE hash = $2 AND used IS NULL AND expires > $1",
        )
        .bind(now)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            return Ok(None);
        }
        let (info, fingerprint, extra) = issue(role, &name)?;
        // Renewed certificates of the name (valid until they expire) too.
        sqlx::query(
            "UPDATE nodes SET revoked = $1 WHERE name = $2 AND (revoked IS NULL OR revoked > $1)",
        )
        .bind(info.enrolled)
        .bind(&info.name)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO nodes (serial, name, role, fingerprint, enrolled, not_after) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&info.serial)
        .bind(&info.name)
        .bind(info.role.as_str())
        .bind(&fingerprint)
        .bind(info.enrolled)
        .bind(info.not_after)
        .execute(&mut *tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(format!(
                "node {:?} is being enrolled by another request",
                info.name
            )),
            e => e.into(),
        })?;
        tx.commit().await?;
        Ok(Some((info, extra)))
    }

    pub async fn node_by_fingerprint(&self, fingerprint: &str) -> Result<Option<Node>> {
        let row = sqlx::query_as::<_, NodeRow>(
            "SELECT serial, name, role, fingerprint, enrolled, not_after, revoked \
             FROM nodes WHERE fingerprint = $1",
        )
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await?;
        row.map(node_of).transpose()
    }

    /// Every certificate ever issued, oldest first.
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        sqlx::query_as::<_, NodeRow>(
            "SELECT serial, name, role, fingerprint, enrolled, not_after, revoked \
             FROM nodes ORDER BY enrolled, serial",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(node_of)
        .collect()
    }

    /// Revokes the current certificate of node `name`, and cancels the
    /// unused enrolment tokens for that name; how many certificates were.
    pub async fn revoke(&self, name: &str, now: i64) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        // Renewed certificates, still valid until they expire, too.
        let n = sqlx::query(
            "UPDATE nodes SET revoked = $1 WHERE name = $2 AND (revoked IS NULL OR revoked > $1)",
        )
        .bind(now)
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("UPDATE enrol_tokens SET used = $1 WHERE name = $2 AND used IS NULL")
            .bind(now)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// (serial, revocation time) of every certificate revoked by `now` (a
    /// renewed one is revoked from its expiry on).
    pub async fn revoked(&self, now: i64) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as::<_, (String, i64)>(
            "SELECT serial, revoked FROM nodes WHERE revoked IS NOT NULL AND revoked <= $1 \
             ORDER BY serial",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Replaces node certificate `old` (its serial) with `new`, issued to
    /// the same node: the old one stays valid until it expires (work under
    /// way with it goes on), and is then revoked; `false` if `old` is
    /// revoked. Renewing from a certificate renewed before (its node lost
    /// the newer key in a crash) revokes the newer one now.
    pub async fn renew(
        &self,
        old: &str,
        old_not_after: i64,
        new: &NodeInfo,
        fingerprint: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // A newer certificate renewed from `old` whose key its node lost
        // (it renews from `old` again) is revoked now.
        sqlx::query(
            "UPDATE nodes SET revoked = $1 WHERE name = $2 AND revoked IS NULL AND serial <> $3",
        )
        .bind(new.enrolled)
        .bind(&new.name)
        .bind(old)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query(
            "UPDATE nodes SET revoked = $1 WHERE serial = $2 AND (revoked IS NULL OR revoked > $3)",
        )
        .bind(old_not_after)
        .bind(old)
        .bind(new.enrolled)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO nodes (serial, name, role, fingerprint, enrolled, not_after) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&new.serial)
        .bind(&new.name)
        .bind(new.role.as_str())
        .bind(fingerprint)
        .bind(new.enrolled)
        .bind(new.not_after)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn add_api_token(&self, hash: &str, name: &str, now: i64) -> Result<()> {
        sqlx::query("INSERT INTO api_tokens (hash, name, created) VALUES ($1, $2, $3)")
            .bind(hash)
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// API tokens: id (the first 16 hex digits of the hash), name, created.
    pub async fn api_tokens(&self) -> Result<Vec<(String, String, i64)>> {
        Ok(sqlx::query_as::<_, (String, String, i64)>(
            "SELECT hash, name, created FROM api_tokens ORDER BY created, hash",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|(h, n, c)| (h[..16.min(h.len())].to_string(), n, c))
        .collect())
    }

    /// Revokes the API token with this id; whether there was one.
    pub async fn revoke_api_token(&self, id: &str) -> Result<bool> {
        let rows = sqlx::query_as::<_, (String,)>("SELECT hash FROM api_tokens")
            .fetch_all(&self.pool)
            .await?;
        let Some((hash,)) = rows.into_iter().find(|(h,)| h.starts_with(id)) else {
            return Ok(false);
        };
        Ok(sqlx::query("DELETE FROM api_tokens WHERE hash = $1")
            .bind(hash)
            .execute(&self.pool)
            .await?
            .rows_affected()
            == 1)
    }

    pub async fn api_token_count(&self) -> Result<i64> {
        Ok(
            sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM api_tokens")
                .fetch_one(&self.pool)
                .await?
                .0,
        )
    }

    /// The name of the API token with this hash, if there is one.
    pub async fn api_token(&self, hash: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_as::<_, (String,)>("SELECT name FROM api_tokens WHERE hash = $1")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.0),
        )
    }
}

impl Store {
    /// Adds a pool; `Conflict` if the name is taken.
    pub async fn add_pool(&self, pool: &Pool, now: i64) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO pools (name, repository, created) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(&pool.name)
        .bind(&pool.repository)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("pool {:?} exists", pool.name)));
        }
        self.set_pool_media(&pool.name, &pool.media_agents).await?;
        Ok(())
    }

    /// Sets the media agents that may serve `pool`; whether it exists.
    pub async fn set_pool_media(&self, pool: &str, media: &[String]) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let exists = sqlx::query_as::<_, (String,)>("SELECT name FROM pools WHERE name = $1")
            .bind(pool)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !exists {
            return Ok(false);
        }
        sqlx::query("DELETE FROM pool_media WHERE pool = $1")
            .bind(pool)
            .execute(&mut *tx)
            .await?;
        for m in media {
            sqlx::query(
                "INSERT INTO pool_media (pool, media_agent) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(pool)
            .bind(m)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Claims a lock for an agent (`create`), or checks that it is the
    /// agent's and forgets it (`delete`); a journal record is the agent's
    /// whose job wrote it. Whether the claim holds.
    pub async fn claim(&self, c: &baton_wire::ObjectClaim) -> Result<bool> {
        match (c.kind.as_str(), c.op.as_str()) {
            ("locks", "create") => {
                sqlx::query(
                    "INSERT INTO owned (pool, kind, name, agent) VALUES ($1, 'locks', $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(&c.pool)
                .bind(&c.name)
                .bind(&c.agent)
                .execute(&self.pool)
                .await?;
                Ok(self.owner(&c.pool, &c.name).await?.as_deref() == Some(c.agent.as_str()))
            }
            ("locks", "delete") => {
                if self.owner(&c.pool, &c.name).await?.as_deref() != Some(c.agent.as_str()) {
                    return Ok(false);
                }
                sqlx::query("DELETE FROM owned WHERE pool = $1 AND kind = 'locks' AND name = $2")
                    .bind(&c.pool)
                    .bind(&c.name)
                    .execute(&self.pool)
                    .await?;
                Ok(true)
            }
            ("journal", "delete") => {
                let job = c.name.split('/').next().unwrap_or("");
                Ok(self.job_agent(&c.pool, job).await?.as_deref() == Some(c.agent.as_str()))
            }
            _ => Err(StoreError::Refused("not a claim".into())),
        }
    }

    async fn owner(&self, pool: &str, name: &str) -> Result<Option<String>> {
        Ok(sqlx::query_as::<_, (String,)>(
            "SELECT agent FROM owned WHERE pool = $1 AND kind = 'locks' AND name = $2",
        )
        .bind(pool)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.0))
    }

    /// The agent whose records a journal (job id) holds.
    pub async fn job_agent(&self, pool: &str, job: &str) -> Result<Option<String>> {
        Ok(sqlx::query_as::<_, (String,)>(
            "SELECT agent FROM journal WHERE pool = $1 AND job = $2 LIMIT 1",
        )
        .bind(pool)
        .bind(job)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.0))
    }

    /// Whether media agent `media` serves `pool` (one indexed lookup:
    /// asked for every journal record).
    pub async fn serves(&self, media: &str, pool: &str) -> Result<bool> {
        Ok(sqlx::query_as::<_, (String,)>(
            "SELECT pool FROM pool_media WHERE pool = $1 AND media_agent = $2",
        )
        .bind(pool)
        .bind(media)
        .fetch_optional(&self.pool)
        .await?
        .is_some())
    }

    /// Whether `agent` has a job in `pool`.
    pub async fn agent_in_pool(&self, agent: &str, pool: &str) -> Result<bool> {
        Ok(sqlx::query_as::<_, (String,)>(
            "SELECT name FROM jobs WHERE agent = $1 AND pool = $2 LIMIT 1",
        )
        .bind(agent)
        .bind(pool)
        .fetch_optional(&self.pool)
        .await?
        .is_some())
    }

    pub async fn pools(&self) -> Result<Vec<Pool>> {
        let members = sqlx::query_as::<_, (String, String)>(
            "SELECT pool, media_agent FROM pool_media ORDER BY pool, media_agent",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(sqlx::query_as::<_, (String, String)>(
            "SELECT name, repository FROM pools ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|(name, repository)| Pool {
            media_agents: members
                .iter()
                .filter(|(p, _)| *p == name)
                .map(|(_, m)| m.clone())
                .collect(),
            name,
            repository,
        })
        .collect())
    }

    /// Adds a job (its pool checked to exist, in the same transaction);
    /// `Conflict` if the name is taken, `Ok(false)` without the pool.
    pub async fn add_job(&self, job: &JobSpec, now: i64) -> Result<bool> {
        let spec = serde_json::to_string(job).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        let pool = sqlx::query_as::<_, (String,)>("SELECT name FROM pools WHERE name = $1")
            .bind(&job.pool)
            .fetch_optional(&mut *tx)
            .await?;
        if pool.is_none() {
            return Ok(false);
        }
        let done = sqlx::query(
            "INSERT INTO jobs (name, agent, pool, spec, created) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&job.name)
        .bind(&job.agent)
        .bind(&job.pool)
        .bind(spec)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("job {:?} exists", job.name)));
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Jobs, all or those of one agent, with their pool's repository.
    pub async fn jobs(&self, agent: Option<&str>) -> Result<Vec<(JobSpec, String)>> {
        let rows = sqlx::query_as::<_, (String, String)>(
            "SELECT jobs.spec, pools.repository FROM jobs JOIN pools ON pools.name = jobs.pool \
             WHERE $1 = '' OR jobs.agent = $1 ORDER BY jobs.name",
        )
        .bind(agent.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(spec, repo)| {
                serde_json::from_str(&spec)
                    .map(|j| (j, repo))
                    .map_err(|_| StoreError::Corrupt("job".into()))
            })
            .collect()
    }

    /// Removes a job; whether there was one.
    pub async fn remove_job(&self, name: &str) -> Result<bool> {
        Ok(sqlx::query("DELETE FROM jobs WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected()
            == 1)
    }
}

impl Store {
    /// Records a run's report; `Ok(false)` if the run belongs to another
    /// agent or job (a report cannot change another's run).
    pub async fn report_run(
        &self,
        agent: &str,
        r: &baton_wire::RunReport,
        now: i64,
    ) -> Result<bool> {
        let media = r.media_agents.join(",");
        let mut tx = self.pool.begin().await?;
        let held =
            sqlx::query_as::<_, (String, String)>("SELECT agent, job FROM runs WHERE run = $1")
                .bind(&r.run)
                .fetch_optional(&mut *tx)
                .await?;
        match held {
            None => {
                sqlx::query(
                    "INSERT INTO runs (run, job, agent, state, started, finished, exit_code, message, media_agents, ord, snapshot) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(&r.run)
                .bind(&r.job)
                .bind(agent)
                .bind(r.state.as_str())
                .bind(now)
                .bind((r.state != baton_wire::RunState::Running).then_some(now))
                .bind(r.exit_code.map(i64::from))
                .bind(&r.message)
                .bind(&media)
                // Microseconds: the order runs started in, within a second.
                .bind(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros() as i64),
                )
                .bind(&r.snapshot)
                .execute(&mut *tx)
                .await?;
            }
            Some((a, j)) if a == agent && j == r.job => {
                sqlx::query(
                    "UPDATE runs SET state = $2, finished = $3, exit_code = $4, message = $5, media_agents = $6, \
                     snapshot = $7 WHERE run = $1",
                )
                .bind(&r.run)
                .bind(r.state.as_str())
                .bind((r.state != baton_wire::RunState::Running).then_some(now))
                .bind(r.exit_code.map(i64::from))
                .bind(&r.message)
                .bind(&media)
                .bind(&r.snapshot)
                .execute(&mut *tx)
                .await?;
            }
            Some(_) => return Ok(false),
        }
        if r.state == baton_wire::RunState::Running {
            // A run asked for has started.
            sqlx::query("DELETE FROM run_requests WHERE job = $1")
                .bind(&r.job)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Runs, the latest first (at most `limit`).
    pub async fn run_records(&self, limit: i64) -> Result<Vec<baton_wire::RunRecord>> {
        type Row = (
            String,
            String,
            String,
            String,
            i64,
            Option<i64>,
            Option<i64>,
            Option<String>,
            String,
            Option<String>,
        );
        let rows = sqlx::query_as::<_, Row>(
            "SELECT run, job, agent, state, started, finished, exit_code, message, media_agents, \
             snapshot FROM runs ORDER BY ord DESC, run LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(
                    run,
                    job,
                    agent,
                    state,
                    started,
                    finished,
                    exit_code,
                    message,
                    media,
                    snapshot,
                )| {
                    let state = match state.as_str() {
                        "running" => baton_wire::RunState::Running,
                        "completed" => baton_wire::RunState::Completed,
                        "partial" => baton_wire::RunState::Partial,
                        "failed" => baton_wire::RunState::Failed,
                        _ => return Err(StoreError::Corrupt(format!("run state {state:?}"))),
                    };
                    Ok(baton_wire::RunRecord {
                        run,
                        job,
                        agent,
                        state,
                        started,
                        finished,
                        exit_code: exit_code.map(|c| c as i32),
                        message,
                        media_agents: media
                            .split(',')
                            .filter(|m| !m.is_empty())
                            .map(str::to_string)
                            .collect(),
                        snapshot,
                    })
                },
            )
            .collect()
    }

    /// When each job's last run started.
    pub async fn last_starts(&self) -> Result<std::collections::HashMap<String, i64>> {
        Ok(
            sqlx::query_as::<_, (String, i64)>("SELECT job, MAX(started) FROM runs GROUP BY job")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect(),
        )
    }

    /// Asks for a run of `job` now; whether the job exists.
    pub async fn request_run(&self, job: &str, now: i64) -> Result<bool> {
        let exists = sqlx::query_as::<_, (String,)>("SELECT name FROM jobs WHERE name = $1")
            .bind(job)
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        if exists {
            sqlx::query(
                "INSERT INTO run_requests (job, requested) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(job)
            .bind(now)
            .execute(&self.pool)
            .await?;
        }
        Ok(exists)
    }

    /// Runs asked for, and when.
    pub async fn run_requests(&self) -> Result<std::collections::HashMap<String, i64>> {
        Ok(
            sqlx::query_as::<_, (String, i64)>("SELECT job, requested FROM run_requests")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect(),
        )
    }
}

impl Store {
    /// Adds a data set; `false` if one of that name exists.
    pub async fn add_dataset(&self, d: &baton_wire::Dataset, now: i64) -> Result<bool> {
        let spec = serde_json::to_string(d).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(sqlx::query(
            "INSERT INTO datasets (name, spec, created) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(&d.name)
        .bind(spec)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    pub async fn datasets(&self) -> Result<Vec<baton_wire::Dataset>> {
        sqlx::query_as::<_, (String,)>("SELECT spec FROM datasets ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|(s,)| {
                serde_json::from_str(&s).map_err(|_| StoreError::Corrupt("data set".into()))
            })
            .collect()
    }

    /// Keeps what `agent` reported of its copy of each data set.
    pub async fn set_status(
        &self,
        agent: &str,
        st: &baton_wire::NodeStatus,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for d in &st.datasets {
            let spec = serde_json::to_string(d).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO dataset_status (agent, dataset, at, cpu, every_s, status) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (agent, dataset) DO UPDATE SET \
                 at = excluded.at, cpu = excluded.cpu, every_s = excluded.every_s, \
                 status = excluded.status",
            )
            .bind(agent)
            .bind(&d.dataset)
            .bind(now)
            .bind(st.cpu_percent)
            .bind(st.every_s as i64)
            .bind(spec)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// What each agent last reported of data set `dataset`: (agent, when,
    /// CPU, its interval, the status).
    pub async fn statuses(
        &self,
        dataset: &str,
    ) -> Result<Vec<(String, i64, f64, i64, baton_wire::DatasetStatus)>> {
        sqlx::query_as::<_, (String, i64, f64, i64, String)>(
            "SELECT agent, at, cpu, every_s, status FROM dataset_status WHERE dataset = $1",
        )
        .bind(dataset)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|(a, at, cpu, every, s)| {
            serde_json::from_str(&s)
                .map(|st| (a, at, cpu, every, st))
                .map_err(|_| StoreError::Corrupt("status".into()))
        })
        .collect()
    }

    pub async fn add_decision(&self, d: &baton_wire::Decision) -> Result<()> {
        let spec = serde_json::to_string(d).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query("INSERT INTO decisions (id, dataset, at, spec) VALUES ($1, $2, $3, $4)")
            .bind(&d.id)
            .bind(&d.dataset)
            .bind(d.at)
            .bind(spec)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Keeps a report (`drills` or `replications`) as JSON.
    pub async fn add_report<T: serde::Serialize>(
        &self,
        table: Reports,
        at: i64,
        r: &T,
    ) -> Result<()> {
        let spec = serde_json::to_string(r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // Ordered by arrival within a second too: the time in nanoseconds,
        // then random bits against two reports in the same nanosecond.
        let id = {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("{nanos:024}-{}", hex::encode(b))
        };
        sqlx::query(table.insert_sql())
            .bind(id)
            .bind(at)
            .bind(spec)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Reports of a table, the latest first.
    pub async fn reports<T: serde::de::DeserializeOwned>(
        &self,
        table: Reports,
        limit: i64,
    ) -> Result<Vec<T>> {
        let rows = sqlx::query_as::<_, (String,)>(table.select_sql())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|(s,)| {
                serde_json::from_str(&s).map_err(|_| StoreError::Corrupt(table.name().into()))
            })
            .collect()
    }

    /// Decisions, the latest first: all, or of one data set.
    pub async fn decisions(
        &self,
        dataset: Option<&str>,
        limit: i64,
    ) -> Result<Vec<baton_wire::Decision>> {
        let rows =
            match dataset {
                Some(d) => sqlx::query_as::<_, (String,)>(
                    "SELECT spec FROM decisions WHERE dataset = $1 ORDER BY at DESC, id LIMIT $2",
                )
                .bind(d)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
                None => {
                    sqlx::query_as::<_, (String,)>(
                        "SELECT spec FROM decisions ORDER BY at DESC, id LIMIT $1",
                    )
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
                }
            };
        rows.into_iter()
            .map(|(s,)| {
                serde_json::from_str(&s).map_err(|_| StoreError::Corrupt("decision".into()))
            })
            .collect()
    }
}

/// A record's summary from its row.
fn summary_of(
    seq: i64,
    position: i64,
    pack_bytes: i64,
    pack_ids: &str,
) -> baton_wire::JournalSummary {
    baton_wire::JournalSummary {
        seq: seq as u64,
        position: position as u64,
        pack_bytes: pack_bytes as u64,
        packs: pack_ids
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
    }
}

/// A journal record as the director keeps it.
pub struct JournalRow<'a> {
    pub pool: &'a str,
    pub name: &'a str,
    pub agent: &'a str,
    pub media_agent: &'a str,
    pub sealed_hex: &'a str,
    pub summary: &'a baton_wire::JournalSummary,
}

impl Store {
    /// Stores a journal record durably (the commit is the acknowledgement).
    /// `Ok(false)` if it was already held with the same bytes (a retry);
    /// `Conflict` if a different record holds the name.
    pub async fn add_journal(&self, r: &JournalRow<'_>, now: i64) -> Result<bool> {
        let (job, _) = r
            .name
            .split_once('/')
            .ok_or_else(|| StoreError::Refused("journal record name".into()))?;
        // A job's records come from the agent that started it.
        if let Some(a) = self.job_agent(r.pool, job).await?
            && a != r.agent
        {
            return Err(StoreError::Conflict(format!(
                "journal {job} of pool {} is another agent's",
                r.pool
            )));
        }
        let done = sqlx::query(
            "INSERT INTO journal (pool, name, job, seq, agent, media_agent, sealed, position, \
             pack_bytes, packs, pack_ids, received) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING",
        )
        .bind(r.pool)
        .bind(r.name)
        .bind(job)
        .bind(r.summary.seq as i64)
        .bind(r.agent)
        .bind(r.media_agent)
        .bind(r.sealed_hex)
        .bind(r.summary.position as i64)
        .bind(r.summary.pack_bytes as i64)
        .bind(r.summary.packs.len() as i64)
        .bind(r.summary.packs.join(","))
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(true);
        }
        let held = sqlx::query_as::<_, (String,)>(
            "SELECT sealed FROM journal WHERE pool = $1 AND name = $2",
        )
        .bind(r.pool)
        .bind(r.name)
        .fetch_optional(&self.pool)
        .await?;
        match held {
            Some((s,)) if s == r.sealed_hex => Ok(false),
            _ => Err(StoreError::Conflict(format!(
                "journal record {} of pool {} is held with other contents",
                r.name, r.pool
            ))),
        }
    }

    /// The sealed records of one run (job id), in order.
    pub async fn journal_of(&self, pool: &str, job: &str) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as::<_, (String, String)>(
            "SELECT name, sealed FROM journal WHERE pool = $1 AND job = $2 ORDER BY seq",
        )
        .bind(pool)
        .bind(job)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The summaries of one job's records, in order, and the media agent
    /// that took the last.
    pub async fn journal_summaries(
        &self,
        pool: &str,
        job: &str,
    ) -> Result<(Vec<baton_wire::JournalSummary>, Option<String>)> {
        let rows = sqlx::query_as::<_, (i64, i64, i64, String, String)>(
            "SELECT seq, position, pack_bytes, pack_ids, media_agent FROM journal \
             WHERE pool = $1 AND job = $2 ORDER BY seq",
        )
        .bind(pool)
        .bind(job)
        .fetch_all(&self.pool)
        .await?;
        let last = rows.last().map(|r| r.4.clone());
        Ok((
            rows.into_iter()
                .map(|r| summary_of(r.0, r.1, r.2, &r.3))
                .collect(),
            last,
        ))
    }

    /// The latest handover of a job.
    pub async fn last_handover(
        &self,
        pool: &str,
        job: &str,
    ) -> Result<Option<(String, String, i64)>> {
        Ok(sqlx::query_as::<_, (String, String, i64)>(
            "SELECT id, to_media, last_seq FROM handovers WHERE pool = $1 AND job = $2 \
             ORDER BY at DESC, id LIMIT 1",
        )
        .bind(pool)
        .bind(job)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Records a handover (its check comes later).
    pub async fn add_handover(&self, h: &baton_wire::HandoverInfo) -> Result<()> {
        sqlx::query(
            "INSERT INTO handovers (id, pool, job, agent, from_media, to_media, at, records, \
             last_seq, position) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&h.id)
        .bind(&h.pool)
        .bind(&h.job)
        .bind(&h.agent)
        .bind(&h.from)
        .bind(&h.to)
        .bind(h.at)
        .bind(h.records as i64)
        .bind(h.last_seq as i64)
        .bind(h.position as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records what media agent `to` found checking handover `id`; the
    /// handover, or `None` if it is not one of `to`'s.
    pub async fn handover_checked(
        &self,
        id: &str,
        to: &str,
        checked: u64,
        missing: u64,
    ) -> Result<Option<baton_wire::HandoverInfo>> {
        let done = sqlx::query(
            "UPDATE handovers SET packs_checked = $1, missing = $2 WHERE id = $3 AND to_media = $4",
        )
        .bind(checked as i64)
        .bind(missing as i64)
        .bind(id)
        .bind(to)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        Ok(self.handovers(Some(id), 1).await?.pop())
    }

    /// Handovers, the latest first (or the one named `id`).
    pub async fn handovers(
        &self,
        id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<baton_wire::HandoverInfo>> {
        type Row = (
            String,
            String,
            String,
            String,
            Option<String>,
            String,
            i64,
            i64,
            i64,
            i64,
            Option<i64>,
            Option<i64>,
        );
        macro_rules! columns {
            ($rest:literal) => {
                concat!(
                    "SELECT id, pool, job, agent, from_media, to_media, at, records, last_seq, \
                     position, packs_checked, missing FROM handovers ",
                    $rest
                )
            };
        }
        let rows = match id {
            Some(id) => {
                sqlx::query_as::<_, Row>(columns!("WHERE id = $1"))
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query_as::<_, Row>(columns!("ORDER BY at DESC, id LIMIT $1"))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|r| baton_wire::HandoverInfo {
                id: r.0,
                pool: r.1,
                job: r.2,
                agent: r.3,
                from: r.4,
                to: r.5,
                at: r.6,
                records: r.7 as u64,
                last_seq: r.8 as u64,
                position: r.9 as u64,
                packs_checked: r.10.map(|n| n as u64),
                missing: r.11.map(|n| n as u64),
            })
            .collect())
    }

    /// Runs as their journal records tell them, the latest first.
    pub async fn journal_runs(&self) -> Result<Vec<baton_wire::RunInfo>> {
        type Row = (String, String, String, String, i64, i64, i64, String, i64);
        let rows = sqlx::query_as::<_, Row>(
            "SELECT pool, job, agent, media_agent, seq, position, pack_bytes, pack_ids, received \
             FROM journal ORDER BY pool, job, seq",
        )
        .fetch_all(&self.pool)
        .await?;
        // Grouped by job, each folded by the function agents use too.
        let mut runs = Vec::new();
        let mut i = 0;
        while i < rows.len() {
            let (pool, job) = (&rows[i].0, &rows[i].1);
            let end = rows[i..]
                .iter()
                .position(|r| &r.0 != pool || &r.1 != job)
                .map_or(rows.len(), |n| i + n);
            let group = &rows[i..end];
            let summaries: Vec<baton_wire::JournalSummary> = group
                .iter()
                .map(|r| summary_of(r.4, r.5, r.6, &r.7))
                .collect();
            let p = baton_wire::fold_summaries(&summaries);
            let last = group.last().expect("a group has rows");
            runs.push(baton_wire::RunInfo {
                job: job.clone(),
                agent: group[0].2.clone(),
                pool: pool.clone(),
                records: p.records,
                last_seq: p.last_seq,
                position: p.position,
                pack_bytes: p.pack_bytes,
                packs: p.packs,
                gapless: p.gapless,
                media_agent: last.3.clone(),
                started: group.iter().map(|r| r.8).min().unwrap_or(0),
                updated: group.iter().map(|r| r.8).max().unwrap_or(0),
            });
            i = end;
        }
        runs.sort_by(|a, b| b.updated.cmp(&a.updated).then(a.job.cmp(&b.job)));
        Ok(runs)
    }

    /// The current (not revoked, not expired) certificates of agents, with
    /// the pools their jobs name: who may reach which repository.
    pub async fn grants(&self, now: i64) -> Result<Vec<baton_wire::Grant>> {
        let rows = sqlx::query_as::<_, (String, String, String)>(
            "SELECT DISTINCT nodes.name, nodes.fingerprint, jobs.pool FROM nodes \
             JOIN jobs ON jobs.agent = nodes.name \
             WHERE nodes.role = 'agent' AND (nodes.revoked IS NULL OR nodes.revoked > $1) \
             AND nodes.not_after > $1 \
             ORDER BY nodes.name, jobs.pool",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<baton_wire::Grant> = Vec::new();
        for (agent, fingerprint, pool) in rows {
            match out.last_mut() {
                Some(g) if g.fingerprint == fingerprint => g.pools.push(pool),
                _ => out.push(baton_wire::Grant {
                    agent,
                    fingerprint,
                    pools: vec![pool],
                }),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn postgres_across_a_network_needs_verified_tls() {
        for ok in [
            "sqlite:///var/lib/x.db?mode=rwc",
            "postgres://u@127.0.0.1:5432/d",
            "postgres://u@localhost/d",
            "postgres://u@[::1]:5432/d",
            "postgres:///d?host=/run/postgresql",
            "postgres://u@db.example.org/d?sslmode=verify-full",
        ] {
            assert!(super::check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "postgres://u@db.example.org/d",
            "postgres://u:pw@10.0.0.5:5432/d?sslmode=require",
            "mysql://x",
        ] {
            assert!(super::check_url(bad).is_err(), "{bad}");
        }
    }
}

/// The tables of agents' reports.
#[derive(Debug, Clone, Copy)]
pub enum Reports {
    Drills,
    Replications,
}

impl Reports {
    fn insert_sql(self) -> &'static str {
        match self {
            Reports::Drills => "INSERT INTO drills (id, at, spec) VALUES ($1, $2, $3)",
            Reports::Replications => "INSERT INTO replications (id, at, spec) VALUES ($1, $2, $3)",
        }
    }

    fn select_sql(self) -> &'static str {
        match self {
            Reports::Drills => "SELECT spec FROM drills ORDER BY at DESC, id DESC LIMIT $1",
            Reports::Replications => {
                "SELECT spec FROM replications ORDER BY at DESC, id DESC LIMIT $1"
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Reports::Drills => "drills",
            Reports::Replications => "replications",
        }
    }
}
