//! The messages Baton's daemons and tools exchange: the director's HTTP API
//! (JSON), used by `baton ctl`, agents and media agents.
//!
//! Every request carries [`VERSION_HEADER`]; a peer refuses a major version
//! it does not speak with [`ErrorCode::Version`], so old and new binaries
//! fail with a message instead of misreading each other. Fields are added
//! only as `Option` or with a `#[serde(default)]`, which keeps a version's
//! messages readable by its successors; anything else is a new version.
//!
//! This crate holds types only (serde): no I/O, no runtime.

use serde::{Deserialize, Serialize};

/// The wire version this build speaks.
pub const VERSION: u32 = 1;

/// The host name a media agent's certificate carries, and agents connect
/// to it by (mapped to the address the director gives): in a namespace of
/// its own, so that it can never be a name of the director or of any other
/// server.
pub fn media_host(name: &str) -> String {
    format!("{}.media.baton.invalid", name.to_ascii_lowercase())
}

/// The HTTP header carrying the sender's wire version.
pub const VERSION_HEADER: &str = "baton-wire-version";

/// What a node enrolled with the director is; it is written into the node's
/// certificate, so a certificate issued to an agent cannot act as a media
/// agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// `baton agent`: runs jobs on a protected machine, holds the keys.
    Agent,
    /// `baton media-agent`: stores packs for the agents of its pool.
    MediaAgent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::MediaAgent => "media-agent",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "agent" => Some(Role::Agent),
            "media-agent" => Some(Role::MediaAgent),
            _ => None,
        }
    }
}

/// `POST /v1/tokens` (API token): a one-time enrolment token for a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub role: Role,
    /// The node's name: letters, digits, `.`, `-` and `_`, at most 64.
    pub name: String,
    /// Seconds until the token expires unused (default one hour).
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

/// The answer to [`TokenRequest`]. `token` is shown once: the director
/// keeps only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenResponse {
    /// `baton-enrol-1.<CA fingerprint>.<secret>`: the fingerprint (SHA-256
    /// of the CA certificate, hex) lets the node check it talks to this
    /// director before it sends the secret.
    pub token: String,
    pub role: Role,
    pub name: String,
    /// Unix seconds.
    pub expires: i64,
}

/// `POST /v1/enrol` (no client certificate; the token authenticates): the
/// node sends a certificate signing request for a key it made and keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The whole token as [`TokenResponse::token`] gave it.
    pub token: String,
    /// PKCS#10, PEM.
    pub csr_pem: String,
}

/// The answer to [`EnrolRequest`]: the node's certificate, to be used as
/// its client (and, for a media agent, server) identity from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolResponse {
    pub name: String,
    pub role: Role,
    /// PEM.
    pub cert_pem: String,
    /// The director's CA certificate, PEM: the only root a node trusts.
    pub ca_pem: String,
    /// Serial number of the certificate, hex.
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// `GET /v1/whoami` (client certificate): who the director takes the
/// caller for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Whoami {
    pub name: String,
    pub role: Role,
    pub serial: String,
    /// When the certificate was issued and until when it is valid (Unix
    /// seconds): nodes renew it when a third of that is left.
    #[serde(default)]
    pub issued: i64,
    #[serde(default)]
    pub not_after: i64,
    /// Whether it was renewed already: a newer one is current (and this
    /// one valid until it expires).
    #[serde(default)]
    pub renewed: bool,
}

impl Whoami {
    /// Whether the certificate is due for renewal at `now`: a third of its
    /// validity or less is left, or it is not the node's current one (a
    /// renewal whose new key was lost).
    pub fn renewal_due(&self, now: i64) -> bool {
        self.renewed
            || (self.not_after > self.issued
                && now >= self.not_after - (self.not_after - self.issued) / 3)
    }
}

/// `POST /v1/renew` (node certificate): a certificate signing request for
/// a new key, to replace the caller's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PKCS#10, PEM.
    pub csr_pem: String,
}

/// An API token as `GET /v1/api-tokens` lists it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenInfo {
    /// The first 16 hex digits of its hash: what `DELETE
    /// /v1/api-tokens/{id}` names.
    pub id: String,
    pub name: String,
    /// Unix seconds.
    pub created: i64,
}

/// `GET /v1/api-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenList {
    pub tokens: Vec<ApiTokenInfo>,
}

/// `POST /v1/api-tokens`: a new API token for a person or a tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenRequest {
    /// Who or what it is for (1 to 64 of `[A-Za-z0-9._-]`).
    pub name: String,
}

/// The answer to [`ApiTokenRequest`]: the token is shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApiToken {
    pub token: String,
    pub id: String,
    pub name: String,
}

/// A node in `GET /v1/nodes` (API token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInfo {
    pub name: String,
    pub role: Role,
    /// Serial number of its current certificate, hex.
    pub serial: String,
    /// Unix seconds.
    pub enrolled: i64,
    pub not_after: i64,
    /// Unix seconds; set once the certificate is revoked.
    pub revoked: Option<i64>,
}

/// `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeList {
    pub nodes: Vec<NodeInfo>,
}

/// A pool of media agents and the repository they all write to (an S3
/// bucket or a shared directory, as `baton -r` takes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub name: String,
    pub repository: String,
    /// The media agents that may serve it (by node name): a media agent
    /// serves only the pools that name it.
    #[serde(default)]
    pub media_agents: Vec<String>,
}

/// `GET /v1/pools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolList {
    pub pools: Vec<Pool>,
}

/// How many snapshots a job's retention keeps (as `baton forget --keep-*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
}

/// A job definition: what an agent backs up, when, into which pool, and
/// what is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    /// The agent (node name) that runs it.
    pub agent: String,
    /// The pool whose media agents store it.
    pub pool: String,
    /// Absolute paths on the agent.
    pub paths: Vec<String>,
    /// `every DURATION` (`30m`, `6h`, `1d`; at least a minute) or `daily
    /// HH:MM` (UTC).
    pub schedule: String,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub tags: Vec<String>,
    /// A replicated data set ([`Dataset`]) this node holds a copy of: the
    /// job backs it up when the director chooses this node for the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// How this node's agent reaches its copy (for PostgreSQL a URL such
    /// as `postgres://postgres@localhost/postgres?host=/run/postgresql`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_connect: Option<String>,
    /// Read the paths from a btrfs snapshot of their subvolume (`backup
    /// --volume-snapshot`), with the application quiesced as `quiesce`
    /// says: `postgres:URL` or `fsfreeze:MOUNTPOINT` (no shell commands:
    /// the director does not run code on agents).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub volume_snapshot: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesce: Option<String>,
    /// A second site the agent replicates each snapshot to, in the
    /// background (`backup --replicate-to`; its password from the agent's
    /// `BATON_REPLICA_PASSWORD_FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicate_to: Option<String>,
}

/// Where a replicated data set is backed up from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourcePolicy {
    /// Only the primary; refused if it cannot be used.
    PrimaryOnly,
    /// Only a secondary that replicates healthily within the lag bound;
    /// refused otherwise.
    SecondaryOnly,
    /// A healthy secondary; else the primary (a fallback, notified).
    PreferSecondary,
    /// A healthy secondary; the primary only if no secondary node is
    /// available (down, not reporting, its server not answering). A
    /// secondary that is up but not replicating healthily is refused: the
    /// replication needs a person, not a silent move of the load.
    PrimaryIfSecondaryUnavailable,
}

impl SourcePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SourcePolicy::PrimaryOnly => "primary-only",
            SourcePolicy::SecondaryOnly => "secondary-only",
            SourcePolicy::PreferSecondary => "prefer-secondary",
            SourcePolicy::PrimaryIfSecondaryUnavailable => "primary-if-secondary-unavailable",
        }
    }

    pub fn parse(s: &str) -> Option<SourcePolicy> {
        [
            SourcePolicy::PrimaryOnly,
            SourcePolicy::SecondaryOnly,
            SourcePolicy::PreferSecondary,
            SourcePolicy::PrimaryIfSecondaryUnavailable,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// A data set replicated between nodes (`POST /v1/datasets`): each node
/// holding a copy has a job naming it; the director chooses, per run, the
/// one node that backs it up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    pub name: String,
    /// `postgres`.
    pub kind: String,
    pub policy: SourcePolicy,
    /// Above this CPU use (percent of the machine) the primary is not used.
    #[serde(default)]
    pub primary_cpu_max: Option<f64>,
    /// Above this replay lag a secondary is not used.
    #[serde(default)]
    pub max_lag_bytes: Option<u64>,
    #[serde(default)]
    pub max_lag_s: Option<f64>,
}

/// `GET /v1/datasets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetList {
    pub datasets: Vec<Dataset>,
}

/// A node's role for a data set, as its copy says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetRole {
    Primary,
    Secondary,
    /// Its copy could not be asked.
    Unknown,
}

/// What an agent found about its copy of a data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetStatus {
    pub dataset: String,
    pub kind: String,
    /// Whether its server answered.
    pub available: bool,
    pub role: DatasetRole,
    /// For a primary: whether a secondary streams from it; for a
    /// secondary: whether it streams from its primary.
    pub replicated: bool,
    /// For a secondary: WAL received and not yet replayed behind what
    /// the primary last reported (bytes), and how old the last replayed
    /// transaction is while replay is behind (seconds). For a primary:
    /// its streaming secondaries' largest replay lag.
    pub lag_bytes: Option<u64>,
    pub lag_s: Option<f64>,
    /// The last WAL position replayed (a secondary) or written (a primary).
    pub position: Option<String>,
    /// Why it is not available, if it is not.
    pub error: Option<String>,
}

/// `POST /v1/agent/status` (agent certificate): the node's load and its
/// copies of data sets, sent before each poll for jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeStatus {
    /// CPU use of the machine over the last interval (percent of all
    /// cores).
    pub cpu_percent: f64,
    /// How often it reports (seconds): a report older than three of
    /// these means the node is unavailable.
    pub every_s: u64,
    pub datasets: Vec<DatasetStatus>,
}

/// One node's inputs to a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionInput {
    pub agent: String,
    /// Whether its last report is recent enough (within three of its
    /// intervals, at least 10 s).
    pub reporting: bool,
    /// Seconds since its last report (none: never).
    pub age_s: Option<i64>,
    pub cpu_percent: Option<f64>,
    pub status: Option<DatasetStatus>,
}

/// Where a run of a replicated data set is backed up from, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub id: String,
    pub dataset: String,
    pub policy: SourcePolicy,
    /// Seconds since 1970.
    pub at: i64,
    /// The agent chosen (none: refused).
    pub chosen: Option<String>,
    /// `secondary`, `primary`, `fallback` (the primary, because no
    /// secondary could be used), `only-copy` (the data set has one node)
    /// or `refused`.
    pub outcome: String,
    pub reason: String,
    pub inputs: Vec<DecisionInput>,
}

/// `GET /v1/decisions` (API token): the latest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionList {
    pub decisions: Vec<Decision>,
}

/// `POST /v1/agent/drills` (agent certificate): one fire drill's result
/// (`baton drill` at the second site); `GET /v1/drills` (API token) lists
/// them, the latest first. No file names or tags: the drill's name, the
/// snapshot id and times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillRecord {
    /// Set by the director: the agent that ran it, and when it arrived
    /// (seconds since 1970).
    #[serde(default)]
    pub agent: String,
    #[serde(default)]
    pub at: i64,
    /// The drill (its policy's name).
    pub name: String,
    pub snapshot: String,
    pub snapshot_time: String,
    pub passed: bool,
    /// Why it failed (empty when it passed).
    pub reason: String,
    pub started_at: String,
    pub finished_at: String,
    /// Recovery time: from the drill's start to the check passing.
    pub rto_s: f64,
    /// Data age: the drill's start minus the snapshot's time.
    pub rpo_s: f64,
    pub restore_s: f64,
    pub recovery_s: f64,
    pub bytes_restored: u64,
}

/// `GET /v1/drills` (API token): the latest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillList {
    pub drills: Vec<DrillRecord>,
}

/// `POST /v1/agent/replications` (agent certificate): where the
/// replication of a snapshot to a second site stands (`baton replicate`);
/// `GET /v1/replications` (API token) lists them, the latest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationRecord {
    /// Set by the director, as for drills.
    #[serde(default)]
    pub agent: String,
    #[serde(default)]
    pub at: i64,
    pub snapshot: String,
    /// The second site (its repository's location).
    pub replica: String,
    /// `acknowledged` (the copy is there whole) or `failed`.
    pub state: String,
    /// The second site's snapshot, once acknowledged.
    pub replica_snapshot: Option<String>,
    /// The last snapshot acknowledged at the second site: its sequence
    /// (acknowledgements of this source so far) and lag (seconds from the
    /// snapshot's time to its acknowledgement).
    pub applied_seq: u64,
    pub lag_s: f64,
    pub bytes_sent: u64,
    pub error: Option<String>,
}

/// `GET /v1/replications` (API token): the latest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationList {
    pub replications: Vec<ReplicationRecord>,
}

/// A job's part in a run of its data set, as the director decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetRun {
    pub decision: String,
    /// Whether this job backs the data set up in this run.
    pub chosen: bool,
    pub outcome: String,
    pub reason: String,
}

/// `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobList {
    pub jobs: Vec<JobSpec>,
}

/// A job as its agent sees it (`GET /v1/agent/jobs`): with the repository
/// of its pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentJob {
    pub job: JobSpec,
    pub repository: String,
    /// Whether the director says it is due now (its schedule, or `baton
    /// ctl run`): the agent runs it.
    #[serde(default)]
    pub due: bool,
    /// For a due job naming a data set: whether it backs the data set up
    /// in this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetRun>,
}

/// `GET /v1/agent/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentJobs {
    pub jobs: Vec<AgentJob>,
}

/// A media agent's load, as it reports it with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaLoad {
    /// Requests being served now.
    pub queue_depth: u64,
    /// Bytes received per second over the last heartbeat interval.
    pub bytes_per_s: u64,
    /// CPU the daemon used over the last interval, in percent of one core.
    pub cpu_percent: f64,
    /// Requests that failed on the storage side since the start.
    pub errors: u64,
    /// Bytes received since the start.
    pub bytes_total: u64,
    /// How long its writes took over the last interval, in milliseconds
    /// per MiB (0: no writes); how the director sees one slower than its
    /// peers.
    #[serde(default)]
    pub write_ms_per_mib: f64,
    /// Packs in its in-memory index of its pools (shared by every job it
    /// serves), and how many times its pools' packs were listed into it
    /// (once per pool at its start; again when a listing failed, or a
    /// handover found many packs it did not know).
    #[serde(default)]
    pub index_packs: u64,
    #[serde(default)]
    pub index_loads: u64,
}

/// `POST /v1/media/heartbeat` (media-agent certificate): the media agent
/// says where agents reach it, which pools it serves, and its load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaHeartbeat {
    /// The address agents connect to (`host:port`); agents check the
    /// media agent's certificate by its name, not by this address.
    pub address: String,
    pub pools: Vec<String>,
    pub load: MediaLoad,
}

/// Who may reach a pool through a media agent: an agent's current
/// certificate (SHA-256 fingerprint, hex) and the pools its jobs name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub agent: String,
    pub fingerprint: String,
    pub pools: Vec<String>,
}

/// The answer to [`MediaHeartbeat`]: what the media agent needs to serve
/// for the next `lease_ms`. Past the lease without a newer answer it
/// refuses every request (a media agent cut off from the director stops
/// taking data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaState {
    pub lease_ms: u64,
    /// The pools this media agent serves, with their repositories.
    pub pools: Vec<Pool>,
    pub grants: Vec<Grant>,
    /// The director's current revocation list (DER, hex), checked at
    /// every handshake.
    pub crl_hex: String,
    /// Stop taking requests (answer 503, so that agents move to another
    /// media agent of the pool): the director found this one failing or
    /// much slower than its peers.
    #[serde(default)]
    pub cease: bool,
    /// The lease's epoch: a new one begins whenever the media agent comes
    /// back after its lease lapsed or a cease ended. It goes with every
    /// record and claim the media agent sends, and agents send the epoch
    /// they were handed with each request: anything from an older epoch is
    /// refused (the fence).
    #[serde(default)]
    pub epoch: u64,
}

/// The header an agent sends the media agent's lease epoch in.
pub const EPOCH_HEADER: &str = "baton-lease-epoch";

/// A media agent as the director knows it from its heartbeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaAgentInfo {
    pub name: String,
    pub address: String,
    pub pools: Vec<String>,
    pub load: MediaLoad,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: u64,
    /// Whether its lease is current (it may take data).
    pub alive: bool,
    /// Whether the director told it to cease (it is not handed to agents).
    #[serde(default)]
    pub ceased: bool,
    /// Its current lease epoch ([`MediaState::epoch`]).
    #[serde(default)]
    pub epoch: u64,
}

/// `GET /v1/media-agents` (API token), and `GET /v1/agent/media?pool=P`
/// (agent certificate; only pools its jobs name; only live media agents,
/// the least loaded first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaAgentList {
    pub media_agents: Vec<MediaAgentInfo>,
}

/// What a journal record says in the clear (the record itself stays
/// sealed with the repository's key): enough for the director to follow a
/// job. Sent by the agent with the record, in [`SUMMARY_HEADER`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSummary {
    pub seq: u64,
    /// Durable position in the backup stream (bytes).
    pub position: u64,
    /// Packs the record makes durable (hex ids).
    pub packs: Vec<String>,
    /// Their stored bytes.
    pub pack_bytes: u64,
}

/// A backup job's progress as its records' summaries tell it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalProgress {
    pub records: u64,
    pub last_seq: u64,
    /// The furthest durable position.
    pub position: u64,
    /// Packs made durable, and their stored bytes.
    pub packs: u64,
    pub pack_bytes: u64,
    /// Whether every record from 0 to `last_seq` is there, once: nothing
    /// acknowledged is missing.
    pub gapless: bool,
}

/// Folds a job's record summaries (in any order) into its progress: the
/// one function the director (which sees summaries only, never the sealed
/// records) and agents (which fold their records' summaries beside the
/// records themselves) both use, so they agree on where a job stands.
pub fn fold_summaries<'a>(
    summaries: impl IntoIterator<Item = &'a JournalSummary>,
) -> JournalProgress {
    let mut p = JournalProgress::default();
    let mut seqs: Vec<u64> = Vec::new();
    for s in summaries {
        p.records += 1;
        p.last_seq = p.last_seq.max(s.seq);
        p.position = p.position.max(s.position);
        p.packs += s.packs.len() as u64;
        p.pack_bytes = p.pack_bytes.saturating_add(s.pack_bytes);
        seqs.push(s.seq);
    }
    seqs.sort_unstable();
    p.gapless = seqs.iter().enumerate().all(|(i, s)| *s == i as u64);
    p
}

/// The largest journal record a media agent takes and forwards.
pub const MAX_JOURNAL_RECORD: usize = 32 << 20;

/// `POST /v1/media/objects` (media-agent certificate): before an agent
/// creates a lock, or deletes a lock or a journal record, through a media
/// agent, the director says whether it may: locks and journals belong to
/// the agent that made them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectClaim {
    pub pool: String,
    pub agent: String,
    /// `locks` or `journal`.
    pub kind: String,
    pub name: String,
    /// `create` or `delete`.
    pub op: String,
    /// The media agent's lease epoch ([`MediaState::epoch`]).
    #[serde(default)]
    pub epoch: u64,
}

/// The header carrying a [`JournalSummary`] (JSON) with a journal record.
pub const SUMMARY_HEADER: &str = "baton-journal-summary";

/// `POST /v1/media/journal` (media-agent certificate): a journal record
/// an agent sent, forwarded before the agent is answered. The director
/// stores it durably, then acknowledges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalShip {
    pub pool: String,
    /// The agent that sent it (as its certificate says).
    pub agent: String,
    /// `<job>/<seq>`, the record's object name.
    pub name: String,
    /// The sealed record, hex.
    pub sealed_hex: String,
    #[serde(default)]
    pub summary: Option<JournalSummary>,
    /// The media agent's lease epoch ([`MediaState::epoch`]).
    #[serde(default)]
    pub epoch: u64,
}

/// The answer to [`JournalShip`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalAck {
    pub name: String,
    /// False when the director already held this record (a retry).
    pub stored: bool,
}

/// `POST /v1/media/handover` (media-agent certificate): an agent moved
/// its running job to this media agent; the director hands over the
/// job's shipped journal (its records' summaries) and records the
/// handover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoverRequest {
    pub pool: String,
    /// The agent whose job it is (as its certificate says).
    pub agent: String,
    /// The job's journal id (hex).
    pub job: String,
    /// The media agent's lease epoch ([`MediaState::epoch`]).
    pub epoch: u64,
}

/// The answer to [`HandoverRequest`]: the job's journal as the director
/// holds it, and the media agent that took its last record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoverJournal {
    /// Names the handover in [`HandoverChecked`].
    pub id: String,
    pub from: Option<String>,
    /// The fold of its records' summaries ([`fold_summaries`]).
    pub progress: JournalProgress,
    /// Every pack its records name, once each.
    pub packs: Vec<String>,
}

/// `POST /v1/media/handover/checked` (media-agent certificate): what the
/// new media agent found when it applied the handed-over journal to its
/// index: how many acknowledged packs it checked, and those the pool's
/// storage does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoverChecked {
    pub id: String,
    pub epoch: u64,
    pub packs_checked: u64,
    /// How many are missing, and the first (at most 100) of them.
    pub missing_count: u64,
    pub missing: Vec<String>,
}

/// `POST /v1/repo/{pool}/jobs/{job}/takeover` (media agent, agent
/// certificate): the new media agent's answer to an agent that moved its
/// running job to it: the durable position the director holds for the
/// job, checked against the pool's storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Takeover {
    pub job: String,
    /// The media agent that took the job's last record (none: no record yet).
    pub from: Option<String>,
    pub to: String,
    pub progress: JournalProgress,
    /// Acknowledged packs checked in the media agent's index (or, where
    /// it did not know them yet, in storage), and those missing.
    pub packs_checked: u64,
    /// How many are missing, and the first (at most 100) of them.
    pub missing_count: u64,
    pub missing: Vec<String>,
    /// Packs in the media agent's index of the pool.
    pub index_packs: u64,
    /// How long the handover took at the media agent (milliseconds).
    pub ms: u64,
}

/// A handover as the director recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoverInfo {
    pub id: String,
    pub pool: String,
    pub job: String,
    pub agent: String,
    pub from: Option<String>,
    pub to: String,
    /// Seconds since 1970.
    pub at: i64,
    /// The job's journal as it was handed over.
    pub records: u64,
    pub last_seq: u64,
    pub position: u64,
    /// Set once the new media agent has checked the journal's packs.
    pub packs_checked: Option<u64>,
    pub missing: Option<u64>,
}

/// A backup run as the director follows it from its journal records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInfo {
    /// The run's journal id (hex).
    pub job: String,
    pub agent: String,
    pub pool: String,
    pub records: u64,
    pub last_seq: u64,
    pub position: u64,
    pub pack_bytes: u64,
    pub packs: u64,
    /// Whether every record up to `last_seq` is held (none lost).
    pub gapless: bool,
    /// The media agent that forwarded the last record.
    pub media_agent: String,
    /// Unix seconds.
    pub started: i64,
    pub updated: i64,
}

/// The state of a run an agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    /// Done: every file stored (exit code 0).
    Completed,
    /// Done, but some files could not be read (exit code 3).
    Partial,
    Failed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Partial => "partial",
            RunState::Failed => "failed",
        }
    }
}

/// `POST /v1/agent/runs` (agent certificate): a run of one of its jobs
/// started or ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunReport {
    /// Made by the agent when the run starts (16 to 64 hex digits).
    pub run: String,
    pub job: String,
    pub state: RunState,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// What went wrong, for a failed run.
    #[serde(default)]
    pub message: Option<String>,
    /// The media agents that stored it, in order.
    #[serde(default)]
    pub media_agents: Vec<String>,
    /// The snapshot it wrote (hex id), once done.
    #[serde(default)]
    pub snapshot: Option<String>,
}

/// A run as the director knows it from its agent's reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    pub run: String,
    pub job: String,
    pub agent: String,
    pub state: RunState,
    /// Unix seconds.
    pub started: i64,
    pub finished: Option<i64>,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    pub media_agents: Vec<String>,
    pub snapshot: Option<String>,
}

/// `GET /v1/runs` (API token): runs as agents reported them, and the
/// progress of backups as their journal records reached the director.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunList {
    pub runs: Vec<RunRecord>,
    pub journals: Vec<RunInfo>,
    /// Running jobs handed from one media agent to another, the latest
    /// first.
    #[serde(default)]
    pub handovers: Vec<HandoverInfo>,
}

/// When a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Every this many seconds.
    Every(u64),
    /// Daily at this minute of the day, UTC.
    Daily(u32),
}

/// Parses a job's schedule: `every N{m,h,d}` (at least a minute) or
/// `daily HH:MM` (UTC).
pub fn parse_schedule(s: &str) -> Result<Schedule, String> {
    let bad = || format!("{s:?}: a schedule is `every N{{m,h,d}}` or `daily HH:MM` (UTC)");
    let mut words = s.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("every"), Some(d), None) => {
            let (n, unit) = d.split_at(d.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
            let n: u64 = n.parse().map_err(|_| bad())?;
            let mult = match unit {
                "m" => 60,
                "h" => 3600,
                "d" => 86400,
                _ => return Err(bad()),
            };
            let secs = n
                .checked_mul(mult)
                .filter(|v| (60..=366 * 86400).contains(v))
                .ok_or_else(bad)?;
            Ok(Schedule::Every(secs))
        }
        (Some("daily"), Some(t), None) => {
            let (h, m) = t.split_once(':').ok_or_else(bad)?;
            let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if h > 23 || m > 59 || t.len() != 5 {
                return Err(bad());
            }
            Ok(Schedule::Daily(h * 60 + m))
        }
        _ => Err(bad()),
    }
}

/// What kind of failure an error answer reports, so that a caller can tell
/// retry-later from alert-a-human from its own mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// No or bad credentials (token, certificate): HTTP 401.
    Unauthenticated,
    /// Authenticated, but not allowed (wrong role, revoked): HTTP 403.
    Forbidden,
    /// HTTP 404.
    NotFound,
    /// The request is malformed or names something invalid: HTTP 400.
    Invalid,
    /// It conflicts with the current state (a used token, a name taken):
    /// HTTP 409.
    Conflict,
    /// The peer speaks another wire version: HTTP 400.
    Version,
    /// Try again later (the database is unreachable): HTTP 503.
    Unavailable,
    /// A bug or an unexpected failure on the server: HTTP 500.
    Internal,
}

impl ErrorCode {
    /// Whether the same request may succeed later without anyone acting.
    pub fn retry_later(self) -> bool {
        matches!(self, ErrorCode::Unavailable)
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

/// Whether `name` may name a node: 1 to 64 of `[A-Za-z0-9._-]`, not
/// starting with `.` or `-` (it goes into certificates, file names and
/// URLs).
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_field_names() {
        let r = TokenRequest {
            role: Role::MediaAgent,
            name: "ma-1".into(),
            ttl_s: None,
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(j, r#"{"role":"media-agent","name":"ma-1","ttl_s":null}"#);
        let back: TokenRequest = serde_json::from_str(r#"{"role":"agent","name":"a"}"#).unwrap();
        assert_eq!(back.role, Role::Agent);
        assert!(
            serde_json::from_str::<TokenRequest>(r#"{"role":"agent","name":"a","x":1}"#).is_err()
        );
        let e = ApiError {
            code: ErrorCode::Unavailable,
            message: "later".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"code":"unavailable","message":"later"}"#
        );
        assert!(e.code.retry_later() && !ErrorCode::Forbidden.retry_later());
    }

    #[test]
    fn summaries_fold_the_same_in_any_order() {
        let s = |seq, position, packs: usize| JournalSummary {
            seq,
            position,
            packs: vec!["ab".repeat(32); packs],
            pack_bytes: 10 * packs as u64,
        };
        let all = [s(0, 0, 0), s(1, 100, 2), s(2, 250, 1)];
        let p = fold_summaries(&all);
        assert_eq!(
            p,
            JournalProgress {
                records: 3,
                last_seq: 2,
                position: 250,
                packs: 3,
                pack_bytes: 30,
                gapless: true
            }
        );
        let rev: Vec<_> = all.iter().rev().cloned().collect();
        assert_eq!(fold_summaries(&rev), p);
        // A record missing, or one twice: not gapless.
        assert!(!fold_summaries(&[s(0, 0, 0), s(2, 9, 0)]).gapless);
        assert!(!fold_summaries(&[s(0, 0, 0), s(0, 0, 0)]).gapless);
        assert!(fold_summaries(&[]).gapless);
    }

    #[test]
    fn schedules_are_parsed() {
        assert_eq!(parse_schedule("every 30m"), Ok(Schedule::Every(1800)));
        assert_eq!(parse_schedule("every 1d"), Ok(Schedule::Every(86400)));
        assert_eq!(parse_schedule("daily 02:05"), Ok(Schedule::Daily(125)));
        for bad in [
            "",
            "every",
            "every 0m",
            "every 5s",
            "every 10x",
            "daily 24:00",
            "daily 2:00",
            "weekly",
            "every 1d extra",
            "every 99999999999999999999d",
        ] {
            assert!(parse_schedule(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_names_are_checked() {
        for ok in ["a", "agent-1", "db.example_2"] {
            assert!(valid_node_name(ok), "{ok}");
        }
        let long = "x".repeat(65);
        for bad in ["", "-a", ".a", "a/b", "a b", "é", long.as_str(), "a\n"] {
            assert!(!valid_node_name(bad), "{bad:?}");
        }
    }
}
