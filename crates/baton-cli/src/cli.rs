//! Command-line definitions (the raw stage of argument parsing).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Baton: deduplicating, compressed, encrypted backups.
///
/// A backup never starts over, a restore never makes you wait, and every copy
/// is proven.
#[derive(Parser, Debug)]
#[command(name = "baton", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

pub const EXIT_CODES: &str = "\
Environment:
  BATON_REPOSITORY       repository location (like --repo)
  BATON_PASSWORD         repository password
  BATON_PASSWORD_FILE    file holding the password (like --password-file)
  BATON_PASSWORD_COMMAND command printing the password (like --password-command)
  BATON_NEW_PASSWORD     new password for `key add` and `key passwd`

Exit codes:
  0   done
  1   failed
  2   wrong usage (bad arguments)
  3   done, but some files (backup, restore) or objects (snapshots) could not be read
  10  no repository at the given location
  11  repository is locked
  12  wrong password";

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Repository directory [default: ~/.local/share/baton/repo, created by
    /// `backup` on first use]
    #[arg(
        short = 'r',
        long = "repo",
        env = "BATON_REPOSITORY",
        global = true,
        help_heading = "Global options"
    )]
    pub repo: Option<PathBuf>,

    /// Read the password from this file [env: BATON_PASSWORD_FILE]
    #[arg(long, global = true, help_heading = "Global options")]
    pub password_file: Option<PathBuf>,

    /// Run this shell command and use its output as the password [env:
    /// BATON_PASSWORD_COMMAND]
    #[arg(long, global = true, help_heading = "Global options")]
    pub password_command: Option<String>,

    /// Try the key whose id starts with this first (see `baton key list`);
    /// for repositories with many keys
    #[arg(
        long,
        env = "BATON_KEY_HINT",
        global = true,
        value_name = "ID",
        help_heading = "Global options"
    )]
    pub key_hint: Option<String>,

    /// Print machine-readable JSON on stdout
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,

    /// Print more (repeat for even more)
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Global options")]
    pub verbose: u8,

    /// Print only errors
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Global options"
    )]
    pub quiet: bool,

    /// Wait this long (like 5m) for another process's lock to go, instead
    /// of failing at once (exit 11)
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration, help_heading = "Global options")]
    pub retry_lock: Option<std::time::Duration>,

    /// Write to the repository at most this many KiB/s (for `copy`, to
    /// either repository)
    #[arg(
        long,
        env = "BATON_LIMIT_UPLOAD",
        global = true,
        value_name = "KIB_PER_S",
        value_parser = clap::value_parser!(u64).range(1..),
        help_heading = "Global options"
    )]
    pub limit_upload: Option<u64>,

    /// Read from the repository at most this many KiB/s (for `copy`, from
    /// either repository)
    #[arg(
        long,
        env = "BATON_LIMIT_DOWNLOAD",
        global = true,
        value_name = "KIB_PER_S",
        value_parser = clap::value_parser!(u64).range(1..),
        help_heading = "Global options"
    )]
    pub limit_download: Option<u64>,
}

/// The other repository of `copy` and `init --copy-chunker-params`, with
/// its own password.
#[derive(Args, Debug, Clone, Default)]
pub struct FromRepo {
    /// The other repository (a directory or s3:URL)
    #[arg(
        id = "from_repo",
        long = "from-repo",
        env = "BATON_FROM_REPOSITORY",
        value_name = "REPO"
    )]
    pub repo: Option<PathBuf>,
    /// Read the other repository's password from this file [env:
    /// BATON_FROM_PASSWORD_FILE; BATON_FROM_PASSWORD holds it]
    #[arg(
        id = "from_password_file",
        long = "from-password-file",
        value_name = "FILE"
    )]
    pub password_file: Option<PathBuf>,
    /// Run this shell command for the other repository's password [env:
    /// BATON_FROM_PASSWORD_COMMAND]
    #[arg(
        id = "from_password_command",
        long = "from-password-command",
        value_name = "COMMAND"
    )]
    pub password_command: Option<String>,
    /// Try the other repository's key whose id starts with this first
    #[arg(
        id = "from_key_hint",
        long = "from-key-hint",
        env = "BATON_FROM_KEY_HINT",
        value_name = "ID"
    )]
    pub key_hint: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository
    Init(InitArgs),
    /// Developer tools for the benchmark (bench/run.sh): speed of the primitives, index memory
    #[command(subcommand, hide = true)]
    Debug(DebugCommand),
    /// Back up files and directories (or standard input)
    Backup(BackupArgs),
    /// Restore a snapshot, or a path in it, into a directory
    Restore(RestoreArgs),
    /// List snapshots
    Snapshots(SnapshotsArgs),
    /// List the entries of a snapshot
    Ls(LsArgs),
    /// Show the differences between two snapshots
    Diff(DiffArgs),
    /// Write a file of a snapshot to stdout (a directory as a tar archive, an image as its bytes)
    Dump(DumpArgs),
    /// Serve a block image of a snapshot over NBD, writable through an overlay
    ServeNbd(ServeNbdArgs),
    /// Find files and directories by name (or path) pattern across snapshots
    Find(FindArgs),
    /// Sizes of snapshots: restore size, unique data, stored size, ratios
    Stats(StatsArgs),
    /// List the ids of the repository's objects of a kind (for `cat`)
    List(ListArgs),
    /// Write copies of snapshots without the paths given by --exclude
    Rewrite(RewriteArgs),
    /// Change the tags of snapshots (add, remove or set them)
    Tag(TagArgs),
    /// Copy snapshots from another repository (--from-repo) into this one:
    /// only the blobs it lacks; resumable; the two may have different keys
    Copy(CopyArgs),
    /// Copy snapshots to the second site (--to) and, once its copy is
    /// there and acknowledged, delete their volume snapshots
    Replicate(ReplicateArgs),
    /// Fire drill: restore a snapshot of a PostgreSQL data directory, start
    /// the server on it, run a check, report recovery time and data age,
    /// tear it down
    Drill(DrillArgs),
    /// Browse snapshots as a read-only file system (FUSE) until Ctrl-C or `fusermount3 -u`
    Mount(MountArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completion(CompletionArgs),
    /// Write man pages (baton.1, baton-backup.1, ...) into a directory
    Man(ManArgs),
    /// Print a repository object as JSON
    Cat(CatArgs),
    /// Manage the keys (passwords) of the repository
    #[command(subcommand)]
    Key(KeyCommand),
    /// Remove stale locks
    Unlock(UnlockArgs),
    /// List unfinished (resumable) backup jobs, or forget one
    Jobs(JobsArgs),
    /// Verify the repository: structure, and with --read-data all stored data
    Check(CheckArgs),
    /// Repair a damaged repository: rebuild the index, or rewrite snapshots without lost data
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Remove snapshots: given ones, or those a retention policy does not keep
    Forget(ForgetArgs),
    /// Delete data no snapshot uses, and repack partly used packs
    Prune(PruneArgs),
    /// Run the director: the certificate authority that enrols agents and
    /// media agents, their registry, and its HTTPS API (mutual TLS)
    Director(DirectorArgs),
    /// Administer a director through its API (an API token)
    #[command(subcommand)]
    Ctl(CtlCommand),
    /// This machine as a node of a director: enrol it, check who it is,
    /// run its jobs
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Run a media agent: stores what agents back up into its pools'
    /// repositories (append-only for them), forwards their journal records
    /// to the director
    MediaAgent(MediaAgentArgs),
}

#[derive(Args, Debug)]
pub struct MediaAgentArgs {
    /// The director's URL
    #[arg(long, value_name = "URL", env = "BATON_DIRECTOR")]
    pub director: String,
    /// Where `baton agent enrol` (with a media-agent token) put its key and
    /// certificate
    #[arg(long, value_name = "DIR", env = "BATON_MEDIA_STATE")]
    pub state: PathBuf,
    /// Address to listen on (HTTPS, mutual TLS)
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8444",
        env = "BATON_MEDIA_LISTEN"
    )]
    pub listen: std::net::SocketAddr,
    /// The address agents connect to, if not --listen (`host:port`)
    #[arg(long, value_name = "HOST:PORT", env = "BATON_MEDIA_ADVERTISE")]
    pub advertise: Option<String>,
    /// A pool it serves (repeatable; `baton ctl pool-add` defines pools)
    #[arg(
        long = "pool",
        value_name = "NAME",
        required = true,
        env = "BATON_MEDIA_POOLS",
        value_delimiter = ','
    )]
    pub pools: Vec<String>,
    /// Objects written at once (each is held in memory while it is stored)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 8,
        env = "BATON_MEDIA_MAX_WRITES"
    )]
    pub max_writes: usize,
    /// Enrol first with this one-time token if the state holds no
    /// certificate yet (`baton ctl token --role media-agent`)
    #[arg(long, env = "BATON_ENROL_TOKEN", hide_env_values = true)]
    pub enrol_token: Option<String>,
    /// Receive at most as many bytes per second as this file says, read
    /// again every second (a test's way to unbalance a pool mid-backup)
    #[arg(long, value_name = "FILE", hide = true)]
    pub throttle_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DirectorArgs {
    /// Where the director keeps its database (SQLite, by default), its CA
    /// certificate (`ca.pem`) and the first admin API token (`admin.token`)
    #[arg(long, value_name = "DIR", env = "BATON_DIRECTOR_STATE")]
    pub state: PathBuf,
    /// Address to listen on (HTTPS)
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8443",
        env = "BATON_DIRECTOR_LISTEN"
    )]
    pub listen: std::net::SocketAddr,
    /// Keep the state in this database instead: `postgres://USER@HOST/DB`
    /// (or `sqlite://PATH`)
    #[arg(long, value_name = "URL", env = "BATON_DIRECTOR_DATABASE")]
    pub database: Option<String>,
    /// A host name or address nodes reach the director by (repeatable;
    /// `localhost` and the loopback addresses are always included)
    #[arg(
        long = "hostname",
        value_name = "NAME",
        env = "BATON_DIRECTOR_HOSTNAMES",
        value_delimiter = ','
    )]
    pub hostnames: Vec<String>,
    /// How long the certificates issued at enrolment are valid
    #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = parse_validity, env = "BATON_DIRECTOR_CERT_VALIDITY")]
    pub cert_validity: i64,
    /// POST events that need attention (refused enrolments, revoked
    /// certificates) as JSON to this URL (repeatable)
    #[arg(
        long = "webhook",
        value_name = "URL",
        env = "BATON_DIRECTOR_WEBHOOKS",
        value_delimiter = ','
    )]
    pub webhooks: Vec<String>,
    /// Sign webhook bodies with the secret in this file (HMAC-SHA256, in
    /// the `baton-signature` header)
    #[arg(long, value_name = "FILE", env = "BATON_DIRECTOR_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Tell a media agent to cease (its agents move to its pool's others)
    /// when its writes take this many times longer per MiB than the
    /// pool's fastest; 0: never
    #[arg(
        long,
        value_name = "RATIO",
        default_value_t = 4.0,
        env = "BATON_DIRECTOR_REBALANCE_RATIO"
    )]
    pub rebalance_ratio: f64,
    /// How long the director's own server certificate is valid (renewed
    /// while it runs, when a third is left)
    #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = parse_validity, hide = true)]
    pub server_cert_validity: i64,
}

/// Parses a duration such as `90d`, `12h`, `30s` into seconds.
pub fn parse_duration_s(s: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    i64::try_from(d.as_secs())
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?} is not a positive duration"))
}

/// A certificate validity: a duration of at most ten years.
pub fn parse_validity(s: &str) -> Result<i64, String> {
    let n = parse_duration_s(s)?;
    if n > 10 * 366 * 86400 {
        return Err(format!("{s:?}: at most ten years"));
    }
    Ok(n)
}

/// How `baton ctl` reaches the director.
#[derive(Args, Debug)]
pub struct DirectorConn {
    /// The director's URL
    #[arg(long, value_name = "URL", env = "BATON_DIRECTOR")]
    pub director: String,
    /// The director's CA certificate (its state directory's `ca.pem`)
    #[arg(long, value_name = "FILE", env = "BATON_DIRECTOR_CA")]
    pub ca: PathBuf,
    /// A file holding the API token (the director's `admin.token`)
    #[arg(long, value_name = "FILE", env = "BATON_DIRECTOR_TOKEN_FILE")]
    pub token_file: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// Make a one-time enrolment token for a node (shown once)
    Token(CtlTokenArgs),
    /// List the enrolled nodes and their certificates
    Nodes(CtlNodesArgs),
    /// Revoke a node's certificate: its connections are refused from now on
    Revoke(CtlRevokeArgs),
    /// Add a pool: media agents sharing one repository
    PoolAdd(CtlPoolAddArgs),
    /// List the pools
    Pools(CtlNodesArgs),
    /// Set which media agents serve a pool
    PoolMedia(CtlPoolMediaArgs),
    /// Define a job: what an agent backs up, when, into which pool, what is kept
    JobAdd(CtlJobAddArgs),
    /// List the job definitions
    Jobs(CtlNodesArgs),
    /// Remove a job definition
    JobRemove(CtlRevokeArgs),
    /// List the media agents, their pools and load, from their heartbeats
    MediaAgents(CtlNodesArgs),
    /// List runs as agents reported them, and backups as their journal
    /// records reached the director
    Runs(CtlNodesArgs),
    /// Run a job now (at its agent's next poll)
    Run(CtlRevokeArgs),
    /// List the snapshots agents' runs wrote (what is in them: `baton -r
    /// REPO snapshots` with the key)
    Snapshots(CtlNodesArgs),
    /// Define a replicated data set and where it is backed up from
    DatasetAdd(CtlDatasetAddArgs),
    /// List the replicated data sets
    Datasets(CtlNodesArgs),
    /// List where each run of a replicated data set was backed up from,
    /// and why (the latest first)
    Decisions(CtlNodesArgs),
    /// List fire drills with their result, recovery time (RTO) and data
    /// age (RPO), the latest first
    Drills(CtlNodesArgs),
    /// List replications to second sites: state, applied sequence, lag
    Replications(CtlNodesArgs),
    /// List the API tokens (their ids and names, never the secrets)
    ApiTokens(CtlNodesArgs),
    /// Make a new API token (shown once)
    ApiTokenAdd(CtlRevokeArgs),
    /// Revoke an API token by its id
    ApiTokenRevoke(CtlRevokeArgs),
    /// Replace the API token in --token-file with a new one of the same
    /// name, then revoke the old one
    ApiTokenRotate(CtlNodesArgs),
}

#[derive(Args, Debug)]
pub struct CtlPoolAddArgs {
    #[command(flatten)]
    pub conn: DirectorConn,
    /// The pool's name
    #[arg(long)]
    pub name: String,
    /// The repository its media agents write to (a path they share, or an
    /// s3: URL)
    #[arg(long, value_name = "REPO")]
    pub repository: String,
    /// A media agent that serves it (repeatable): a media agent serves only
    /// the pools that name it
    #[arg(long = "media-agent", value_name = "NAME")]
    pub media_agents: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CtlPoolMediaArgs {
    #[command(flatten)]
    pub conn: DirectorConn,
    /// The pool's name
    #[arg(long)]
    pub name: String,
    /// A media agent that serves it (repeatable; replaces the list)
    #[arg(long = "media-agent", value_name = "NAME")]
    pub media_agents: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CtlJobAddArgs {
    #[command(flatten)]
    pub conn: DirectorConn,
    /// The job's name
    #[arg(long)]
    pub name: String,
    /// The agent that runs it
    #[arg(long)]
    pub agent: String,
    /// The pool that stores it
    #[arg(long)]
    pub pool: String,
    /// A path to back up, absolute (repeatable; always backed up by this
    /// job's own agent)
    #[arg(
        long = "path",
        value_name = "PATH",
        required_unless_present = "dataset"
    )]
    pub paths: Vec<String>,
    /// A replicated data set (`ctl dataset-add`) this node holds a copy
    /// of: backed up by this job when the director chooses this node
    #[arg(long, value_name = "NAME", requires = "dataset_connect")]
    pub dataset: Option<String>,
    /// How the agent reaches its copy of the data set (PostgreSQL: a URL,
    /// `postgres://USER@HOST:PORT/DB`)
    #[arg(long, value_name = "URL", requires = "dataset")]
    pub dataset_connect: Option<String>,
    /// Back the paths up from a btrfs snapshot of their subvolume (the
    /// agent runs as root)
    #[arg(long)]
    pub volume_snapshot: bool,
    /// Quiesce the application around the snapshot: `postgres:URL` or
    /// `fsfreeze:MOUNTPOINT`
    #[arg(long, value_name = "KIND:ARG", requires = "volume_snapshot")]
    pub quiesce: Option<String>,
    /// Replicate each snapshot to this second site (a directory or s3:URL
    /// as the agent sees it; its password in the agent's
    /// BATON_REPLICA_PASSWORD_FILE)
    #[arg(long, value_name = "REPO")]
    pub replicate_to: Option<String>,
    /// When: `every N{m,h,d}` or `daily HH:MM` (UTC)
    #[arg(long)]
    pub schedule: String,
    /// A tag for its snapshots (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Keep the last N snapshots
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the last snapshot of each of the last N hours
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// Keep the last snapshot of each of the last N days
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the last snapshot of each of the last N weeks
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the last snapshot of each of the last N months
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep the last snapshot of each of the last N years
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
}

#[derive(Args, Debug)]
pub struct CtlDatasetAddArgs {
    #[command(flatten)]
    pub conn: DirectorConn,
    /// The data set's name (the jobs of the nodes holding a copy name it)
    #[arg(long)]
    pub name: String,
    /// What it is: `postgres` (a server with streaming replicas)
    #[arg(long, default_value = "postgres", value_parser = ["postgres"])]
    pub kind: String,
    /// Where each run is backed up from: primary-only, secondary-only,
    /// prefer-secondary, primary-if-secondary-unavailable
    #[arg(long, default_value = "prefer-secondary", value_parser = [
        "primary-only", "secondary-only", "prefer-secondary", "primary-if-secondary-unavailable"
    ])]
    pub policy: String,
    /// Above this CPU use (percent of the machine) the primary is not used
    #[arg(long, value_name = "PERCENT")]
    pub primary_cpu_max: Option<f64>,
    /// Above this replay lag (bytes: 16MiB) a secondary is not used
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_lag: Option<u64>,
    /// Above this replay lag (a duration: 30s) a secondary is not used
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_s)]
    pub max_lag_time: Option<i64>,
}

#[derive(Args, Debug)]
pub struct CtlTokenArgs {
    #[command(flatten)]
    pub conn: DirectorConn,
    /// What the node is: `agent` or `media-agent`
    #[arg(long, value_parser = ["agent", "media-agent"])]
    pub role: String,
    /// The node's name (1 to 64 of A-Z a-z 0-9 . - _)
    #[arg(long)]
    pub name: String,
    /// How long the token may be used
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration_s)]
    pub ttl: i64,
}

#[derive(Args, Debug)]
pub struct CtlNodesArgs {
    #[command(flatten)]
    pub conn: DirectorConn,
}

#[derive(Args, Debug)]
pub struct CtlRevokeArgs {
    #[command(flatten)]
    pub conn: DirectorConn,
    /// The node (or job) by name
    pub name: String,
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Enrol this machine with a director (a one-time token from `baton ctl token`)
    Enrol(AgentEnrolArgs),
    /// Ask the director who this machine's certificate says it is
    Whoami(AgentWhoamiArgs),
    /// The jobs the director defines for this machine, with their repositories
    Jobs(AgentWhoamiArgs),
    /// Run one of this machine's jobs now, through a media agent of its pool
    Backup(AgentBackupArgs),
    /// Run this machine's jobs on their schedules until stopped
    Run(AgentRunArgs),
    /// Report this machine's load and the state of its copies of
    /// replicated data sets to the director (as `agent run` does before
    /// each poll), and print them
    Status(AgentWhoamiArgs),
}

#[derive(Args, Debug)]
pub struct AgentBackupArgs {
    #[command(flatten)]
    pub node: AgentWhoamiArgs,
    /// The job's name (`baton agent jobs` lists them)
    pub job: String,
}

#[derive(Args, Debug)]
pub struct AgentRunArgs {
    #[command(flatten)]
    pub node: AgentWhoamiArgs,
    /// Run the jobs that are due once, then exit
    #[arg(long)]
    pub once: bool,
    /// How often to ask the director for the jobs
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration_s, env = "BATON_AGENT_POLL")]
    pub poll: i64,
    /// Enrol first with this one-time token if the state holds no
    /// certificate yet (`baton ctl token --role agent`)
    #[arg(long, env = "BATON_ENROL_TOKEN", hide_env_values = true)]
    pub enrol_token: Option<String>,
}

#[derive(Args, Debug)]
pub struct AgentEnrolArgs {
    /// The director's URL
    #[arg(long, value_name = "URL", env = "BATON_DIRECTOR")]
    pub director: String,
    /// The enrolment token
    #[arg(long, env = "BATON_ENROL_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Where the node keeps its key and certificate
    #[arg(long, value_name = "DIR", env = "BATON_AGENT_STATE")]
    pub state: PathBuf,
}

#[derive(Args, Debug)]
pub struct AgentWhoamiArgs {
    /// The director's URL
    #[arg(long, value_name = "URL", env = "BATON_DIRECTOR")]
    pub director: String,
    /// Where the node keeps its key and certificate
    #[arg(long, value_name = "DIR", env = "BATON_AGENT_STATE")]
    pub state: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum RepairCommand {
    /// Rebuild the index from the headers of the packs (replaces every index object)
    Index,
    /// Write a copy of each damaged snapshot without its lost files (tagged `repaired`)
    Snapshots(RepairSnapshotsArgs),
    /// Replace damaged packs: copy their intact blobs to new packs, drop the
    /// rest from the index, delete them (default: every pack with damage that
    /// `check` recorded)
    Packs(RepairPacksArgs),
}

#[derive(Args, Debug)]
pub struct RepairPacksArgs {
    /// Pack ids (full, as `check` prints them)
    pub packs: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RepairSnapshotsArgs {
    /// Delete each damaged snapshot once its repaired copy is stored
    #[arg(long)]
    pub forget: bool,
    /// First read every pack, so that damaged (not only missing) blobs are found
    #[arg(long)]
    pub read_data: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also read every pack and verify every blob in it
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read only some packs: N% (a random share), K/M (group K of M, by pack
    /// id: M runs cover every pack once) or a size such as 500M (random packs
    /// up to that many bytes)
    #[arg(long, value_name = "SUBSET", value_parser = |s: &str| s.parse::<crate::baton::Subset>())]
    pub read_data_subset: Option<crate::baton::Subset>,
}

/// Settings of prune (also for `forget --prune`).
#[derive(Args, Debug, Clone)]
pub struct PruneTuning {
    /// Unused data to tolerate: a share of each pack (packs above it are
    /// repacked), a total size such as 100M, or `unlimited`
    #[arg(long, default_value = "5%", value_name = "LIMIT")]
    pub max_unused: String,
    /// Unfinished backup jobs idle for longer are forgotten and their data
    /// deleted; younger ones keep all their packs (e.g. 7d, 12h, 0s)
    #[arg(long, default_value = "7d", value_name = "DURATION")]
    pub max_job_age: String,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots to forget (ids, unique prefixes or `latest`), instead of a policy
    pub snapshots: Vec<String>,
    /// Keep the N newest snapshots
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours with snapshots
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: u32,
    /// Keep the newest snapshot of each of the last N days with snapshots
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest snapshot of each of the last N ISO weeks with snapshots
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months with snapshots
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep the newest snapshot of each of the last N years with snapshots
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep snapshots at most this much older than the newest of their group
    /// (units y, m, w, d, h: 2d, 1w3d, 1y6m)
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Keep snapshots with this tag (repeatable; TAG1,TAG2 keeps those with both)
    #[arg(long, value_name = "TAG")]
    pub keep_tag: Vec<String>,
    /// Apply the policy to each group of snapshots sharing these fields: a
    /// comma-separated subset of host, paths, tags ("" for one group)
    #[arg(long, default_value = "host,paths", value_name = "FIELDS")]
    pub group_by: String,
    /// Apply the policy only to snapshots of these hosts, paths and tags
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// Show what would be removed, remove nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Run prune afterwards (under the same lock)
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub tuning: PruneTuning,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Show what would be deleted and repacked, change nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub tuning: PruneTuning,
}

#[derive(Args, Debug)]
pub struct JobsArgs {
    #[command(subcommand)]
    pub command: Option<JobsCommand>,
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// List unfinished jobs (the default)
    List,
    /// Drop an unfinished job and its journal; its packs become garbage for prune
    Forget { id: String },
}

/// Key-derivation settings (hidden: for tests that create many keys).
#[derive(Args, Debug, Clone)]
pub struct KdfArgs {
    /// Argon2id memory in KiB
    #[arg(long, default_value_t = 65536, hide = true)]
    pub kdf_memory: u32,
    /// Argon2id passes
    #[arg(long, default_value_t = 3, hide = true)]
    pub kdf_iterations: u32,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// zstd compression level (0 = off, 1..=22)
    #[arg(long, default_value_t = 3)]
    pub compression: i32,
    /// Target pack size in MiB
    #[arg(long, default_value_t = 16)]
    pub pack_size: u64,
    /// Chunker minimum/average/maximum sizes in bytes, as MIN,AVG,MAX
    #[arg(
        long,
        hide = true,
        value_delimiter = ',',
        conflicts_with = "copy_chunker_params"
    )]
    pub chunker: Option<Vec<u32>>,
    /// Cut files as --from-repo does and name blobs as it does (its chunker
    /// parameters and blob-id key; not its encryption key or password), so
    /// that `baton copy` between the two never reads or stores a blob twice
    /// and deduplication carries over
    #[arg(long, requires = "from_repo")]
    pub copy_chunker_params: bool,
    #[command(flatten)]
    pub from: FromRepo,
    #[command(flatten)]
    pub kdf: KdfArgs,
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Snapshots of --from-repo to copy (default: every snapshot matching
    /// the filters)
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub filter: SnapshotFilter,
    #[command(flatten)]
    pub from: FromRepo,
    /// Say what would be copied and how much the repository lacks; store
    /// nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files and directories to back up
    #[arg(required_unless_present_any = ["stdin", "block", "files_from", "files_from_verbatim", "files_from_raw"])]
    pub paths: Vec<PathBuf>,
    /// Back up a block device or raw image file (`-`: standard input) as
    /// fixed-size chunks, instead of files
    #[arg(long, value_name = "DEVICE_OR_IMAGE", conflicts_with_all = ["paths", "stdin"])]
    pub block: Option<PathBuf>,
    /// Chunk size of --block: a power of two from 4KiB to 16MiB (default:
    /// the repository's block size, 1MiB)
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "block")]
    pub block_size: Option<u64>,
    /// Name of the image in the snapshot (default: the file name of --block,
    /// `stdin.img` for standard input)
    #[arg(long, value_name = "NAME", requires = "block")]
    pub image_name: Option<String>,
    /// Exclude paths matching this pattern (a name, or a path when it has a '/')
    #[arg(short = 'e', long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Read exclude patterns from a file (one per line)
    #[arg(long, value_name = "FILE")]
    pub exclude_file: Vec<PathBuf>,
    /// Like --exclude, without regard to case
    #[arg(long = "iexclude", value_name = "PATTERN")]
    pub iexclude: Vec<String>,
    /// Leave out files larger than this (like 100MiB)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub exclude_larger_than: Option<u64>,
    /// Leave out the contents of directories that hold a file of this name
    /// (repeatable; like .nobackup)
    #[arg(long, value_name = "NAME")]
    pub exclude_if_present: Vec<String>,
    /// Read the paths to back up from a file, one per line (# comments and
    /// blank lines skipped; `-` for standard input)
    #[arg(long, value_name = "FILE")]
    pub files_from: Vec<PathBuf>,
    /// Like --files-from, every line a path as it is (no comments)
    #[arg(long, value_name = "FILE")]
    pub files_from_verbatim: Vec<PathBuf>,
    /// Like --files-from, paths separated by NUL bytes (find -print0)
    #[arg(long, value_name = "FILE")]
    pub files_from_raw: Vec<PathBuf>,
    /// Skip the contents of directories holding a valid CACHEDIR.TAG
    #[arg(long)]
    pub exclude_caches: bool,
    /// Do not cross filesystem boundaries
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Read all files again, ignoring the parent snapshot
    #[arg(short, long)]
    pub force: bool,
    /// Compare with this snapshot instead of the latest one of the same host and paths
    #[arg(long, value_name = "SNAPSHOT")]
    pub parent: Option<String>,
    /// Add a tag to the snapshot (repeat or separate with commas)
    #[arg(long, value_delimiter = ',')]
    pub tag: Vec<String>,
    /// Record this host name instead of the machine's
    #[arg(long)]
    pub host: Option<String>,
    /// Do everything except writing to the repository
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Back up standard input as one file
    #[arg(long, conflicts_with = "paths")]
    pub stdin: bool,
    /// File name for --stdin
    #[arg(long, default_value = "stdin", requires = "stdin")]
    pub stdin_filename: String,
    /// Create the repository if it does not exist yet
    #[arg(long)]
    pub init: bool,
    /// Continue an interrupted backup of the same host and paths (auto), or
    /// always start over (never)
    #[arg(long, value_enum, default_value = "auto")]
    pub resume: ResumeArg,
    /// Longest time in seconds between journal records when progress is made
    /// without new packs (a record is also written after every pack)
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub checkpoint_interval: f64,
    /// Record this time (RFC 3339 in UTC) as the snapshot's time (to import
    /// old backups)
    #[arg(long, value_name = "RFC3339")]
    pub time: Option<String>,
    /// Store access times too (off by default: reading a file changes its
    /// atime, so every snapshot of unchanged data would differ)
    #[arg(long)]
    pub with_atime: bool,
    /// Read the paths from a btrfs snapshot of the subvolume holding them,
    /// taken with the application quiesced (--quiesce-*) and released at
    /// once; the snapshot records the original paths. Needs root.
    #[arg(long, conflicts_with_all = ["stdin", "block"])]
    pub volume_snapshot: bool,
    /// Quiesce PostgreSQL at this URL around the snapshot (CHECKPOINT,
    /// pg_backup_start; pg_backup_stop once the snapshot exists; its label
    /// and WAL go into the snapshot)
    #[arg(
        long,
        value_name = "URL",
        requires = "volume_snapshot",
        conflicts_with = "quiesce_command"
    )]
    pub quiesce_postgres: Option<String>,
    /// Freeze the file system mounted here around the snapshot (fsfreeze):
    /// one whose image file is in the subvolume (a loop device, a VM disk)
    #[arg(long, value_name = "MOUNTPOINT", requires = "volume_snapshot", conflicts_with_all = ["quiesce_postgres", "quiesce_command"])]
    pub quiesce_fsfreeze: Option<PathBuf>,
    /// Run this shell command to quiesce the application before the
    /// snapshot (it must succeed)
    #[arg(long, value_name = "COMMAND", requires = "volume_snapshot")]
    pub quiesce_command: Option<String>,
    /// Run this shell command to release the application after the snapshot
    #[arg(long, value_name = "COMMAND", requires = "quiesce_command")]
    pub release_command: Option<String>,
    /// Keep the volume snapshot after the backup, until `baton replicate`
    /// has its copy acknowledged at the second site
    #[arg(long, requires = "volume_snapshot")]
    pub keep_volume_snapshot: bool,
    /// Replicate the snapshot to this repository in the background once the
    /// backup is done (`baton replicate`; implies --keep-volume-snapshot
    /// with --volume-snapshot); its password from BATON_REPLICA_PASSWORD,
    /// BATON_REPLICA_PASSWORD_FILE or BATON_REPLICA_PASSWORD_COMMAND
    #[arg(long, value_name = "REPO")]
    pub replicate_to: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct Replica {
    /// The second site's repository (a directory or s3:URL) [env:
    /// BATON_REPLICA_REPOSITORY]
    #[arg(
        id = "replica_repo",
        long = "to",
        env = "BATON_REPLICA_REPOSITORY",
        value_name = "REPO"
    )]
    pub repo: Option<PathBuf>,
    /// Read the second site's password from this file [env:
    /// BATON_REPLICA_PASSWORD_FILE; BATON_REPLICA_PASSWORD holds it]
    #[arg(
        id = "replica_password_file",
        long = "replica-password-file",
        value_name = "FILE"
    )]
    pub password_file: Option<PathBuf>,
    /// Run this shell command for the second site's password [env:
    /// BATON_REPLICA_PASSWORD_COMMAND]
    #[arg(
        id = "replica_password_command",
        long = "replica-password-command",
        value_name = "COMMAND"
    )]
    pub password_command: Option<String>,
}

#[derive(Args, Debug)]
pub struct DrillArgs {
    /// The snapshot to rehearse (default: the newest matching the filters,
    /// e.g. --tag drill)
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// The PostgreSQL data directory's path in the snapshot
    #[arg(long, value_name = "PATH")]
    pub postgres: String,
    /// The query that proves the data is there (run with psql -At)
    #[arg(long, value_name = "SQL")]
    pub check_sql: String,
    /// What the query must print (default: anything, as long as it runs)
    #[arg(long, value_name = "TEXT")]
    pub expect: Option<String>,
    /// Database and role the check connects as
    #[arg(long, default_value = "postgres")]
    pub database: String,
    #[arg(long, default_value = "postgres")]
    pub db_user: String,
    /// Where the copy is restored and started (default: a new directory in
    /// the temporary directory), removed afterwards
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// PostgreSQL's bin directory (default: the first on PATH with pg_ctl
    /// and psql, else the newest under /usr/lib/postgresql)
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// Longest wait for the server to reach consistency, in seconds
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Run this shell command when the drill fails (BATON_DRILL holds the
    /// result as JSON)
    #[arg(long, value_name = "COMMAND")]
    pub notify_command: Option<String>,
    /// The drill's name in its history and at the director (default: the
    /// tag it watches, else "drill")
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Keep watching: drill whenever the newest matching snapshot changes
    /// (its tag set or updated), checking every --poll; with --every, also
    /// when that long has passed since the last drill
    #[arg(long)]
    pub watch: bool,
    /// How often --watch looks for a new snapshot
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration, requires = "watch")]
    pub poll: std::time::Duration,
    /// With --watch: drill at least this often (a schedule)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "watch")]
    pub every: Option<std::time::Duration>,
}

#[derive(Args, Debug)]
pub struct ReplicateArgs {
    /// Snapshots to replicate (default: every snapshot of this repository
    /// whose volume snapshot is waiting for its copy)
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub replica: Replica,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverwriteArg {
    Always,
    IfChanged,
    IfNewer,
    Never,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeArg {
    Auto,
    Never,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot to restore: `latest`, `latest~N` (the Nth before it), an id or prefix, optionally `:PATH` inside it
    pub snapshot: String,
    /// Directory to restore into (created if missing); for a block image, the
    /// file or block device to write
    #[arg(short, long)]
    pub target: PathBuf,
    /// Restore only paths matching this pattern (repeatable)
    #[arg(short, long, value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Do not restore paths matching this pattern (repeatable)
    #[arg(short, long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Re-read restored files and compare them with the snapshot
    #[arg(long)]
    pub verify: bool,
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// What to do with files that exist in the target: always (make them
    /// the snapshot's, rewriting only what differs), if-changed (keep files
    /// whose size and mtime match), if-newer (only where the snapshot's is
    /// newer), never
    #[arg(long, value_enum, default_value = "always", value_name = "WHEN")]
    pub overwrite: OverwriteArg,
    /// Remove what the target holds that the snapshot does not (within the
    /// restored directories and selected paths)
    #[arg(long)]
    pub delete: bool,
    /// Show what the restore would do (restore, update, skip, delete),
    /// changing nothing; -v also lists unchanged entries
    #[arg(short = 'n', long, conflicts_with = "instant")]
    pub dry_run: bool,
    /// Block images: serve the image over NBD at once and restore to the
    /// target in the background; merge the client's writes when done
    #[arg(long)]
    pub instant: bool,
    #[command(flatten)]
    pub nbd: NbdArgs,
    /// --instant: command that stops the application using the export
    /// (default: wait until every NBD client has disconnected)
    #[arg(long, value_name = "COMMAND", requires = "instant")]
    pub stop_command: Option<String>,
    /// --instant: command that starts the application on the target once it
    /// is merged and verified (BATON_TARGET holds the target's path)
    #[arg(long, value_name = "COMMAND", requires = "instant")]
    pub start_command: Option<String>,
    /// --instant: most bytes per second the background copy writes (like
    /// 50MiB), leaving the rest of the disk and network to the application
    #[arg(long, value_name = "RATE", value_parser = parse_size, requires = "instant")]
    pub copy_limit: Option<u64>,
}

#[derive(Args, Debug)]
pub struct FindArgs {
    /// Glob patterns (`*.conf`, `**/etc/*.d`); one with a `/` matches the
    /// whole path, else the name
    #[arg(required = true)]
    pub patterns: Vec<String>,
    /// Search only these snapshots (repeatable; default: all that match the filters)
    #[arg(long, short = 's', value_name = "SNAPSHOT")]
    pub snapshot: Vec<String>,
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// Only entries modified at or before this time (2026-01-31 or RFC 3339)
    #[arg(long, short = 'N', value_name = "TIME")]
    pub newest: Option<String>,
    /// Only entries modified at or after this time
    #[arg(long, short = 'O', value_name = "TIME")]
    pub oldest: Option<String>,
    /// Match patterns without regard to case
    #[arg(long, short = 'i')]
    pub ignore_case: bool,
    /// Long listing: mode, owner, size, time
    #[arg(long, short = 'l')]
    pub long: bool,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Snapshots to count (default: every snapshot matching the filters)
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// An existing empty directory to mount at
    pub mountpoint: PathBuf,
    /// Let other users use the mount; the kernel then enforces the recorded
    /// owners and modes (non-root users need `user_allow_other` in /etc/fuse.conf)
    #[arg(long)]
    pub allow_other: bool,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
pub struct RewriteArgs {
    /// Snapshots to rewrite (default: every snapshot matching the filters)
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// Remove entries matching this pattern (as backup's --exclude)
    #[arg(short = 'e', long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Like --exclude, without regard to case
    #[arg(long = "iexclude", value_name = "PATTERN")]
    pub iexclude: Vec<String>,
    /// Read exclude patterns from a file (one per line)
    #[arg(long, value_name = "FILE")]
    pub exclude_file: Vec<PathBuf>,
    /// Delete each original once its copy is stored
    #[arg(long)]
    pub forget: bool,
    /// Show what would be removed, write nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    /// Snapshots to change (default: every snapshot matching the filters)
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// Add this tag (repeatable; comma-separated lists too)
    #[arg(long, value_name = "TAG", value_delimiter = ',')]
    pub add: Vec<String>,
    /// Remove this tag (repeatable; comma-separated lists too)
    #[arg(long, value_name = "TAG", value_delimiter = ',')]
    pub remove: Vec<String>,
    /// Make the tags exactly these (repeatable; `--set ""` removes all),
    /// before --add and --remove
    #[arg(long, value_name = "TAG", value_delimiter = ',', num_args = 1)]
    pub set: Option<Vec<String>>,
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing)
    pub dir: std::path::PathBuf,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// snapshots | index | packs | keys | locks | journal
    pub kind: String,
}

/// Where and how the NBD export listens.
#[derive(Args, Debug, Clone)]
pub struct NbdArgs {
    /// Where the NBD export listens: `unix:PATH` or `HOST:PORT`
    #[arg(long, value_name = "ADDRESS", default_value = "127.0.0.1:10809")]
    pub listen: String,
    /// File that keeps the client's writes (with FILE.map), durable on
    /// flush and kept across restarts
    #[arg(long, value_name = "FILE")]
    pub overlay: Option<PathBuf>,
    /// Name of the NBD export (clients may also ask for the empty name)
    #[arg(long, value_name = "NAME")]
    pub export_name: Option<String>,
}

#[derive(Args, Debug)]
pub struct ServeNbdArgs {
    /// Snapshot and image: `SNAPSHOT[:IMAGE]`
    pub snapshot: String,
    #[command(flatten)]
    pub filter: SnapshotFilter,
    #[command(flatten)]
    pub nbd: NbdArgs,
}

/// Parses a size such as `4096`, `64KiB`, `1M`, `4MiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => return Err(format!("unknown size unit {u:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Args, Debug, Default)]
pub struct SnapshotFilter {
    /// Only snapshots (and `latest` among those) with these tags (comma-separated: all of them; repeat for alternatives)
    #[arg(long = "tag", id = "filter_tag", value_name = "TAGS")]
    pub tag: Vec<String>,
    /// Only snapshots of this host (repeatable)
    #[arg(long = "host", id = "filter_host", value_name = "HOST")]
    pub host: Vec<String>,
    /// Only snapshots that include this path (repeatable; a relative path is
    /// made absolute as backup does)
    #[arg(long = "path", id = "filter_path", value_name = "PATH")]
    pub path: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// Group the list by these fields (comma-separated subset of host,
    /// paths, tags)
    #[arg(long, value_name = "FIELDS")]
    pub group_by: Option<String>,
    /// Only the newest N snapshots (of each group)
    #[arg(long, value_name = "N")]
    pub latest: Option<usize>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot (`latest`, `latest~N`, an id or a unique prefix)
    pub snapshot: String,
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// Path inside the snapshot (default: everything)
    pub path: Option<String>,
    /// Long listing: mode, owner, size, time
    #[arg(short, long)]
    pub long: bool,
    /// With a path: list everything below it, not just its entries
    #[arg(long)]
    pub recursive: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    pub snapshot1: String,
    pub snapshot2: String,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    pub snapshot: String,
    #[command(flatten)]
    pub filter: SnapshotFilter,
    /// Path inside the snapshot
    pub path: String,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    /// config | snapshot | tree | index | key | pack | blob | lock
    pub kind: String,
    /// Object id (for `tree`: a tree id, or SNAPSHOT:PATH)
    pub id: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List keys
    List,
    /// Add a key with a new password
    Add(NewPasswordArgs),
    /// Remove a key (not the one in use)
    Remove { id: String },
    /// Change the password of the key in use
    Passwd(NewPasswordArgs),
}

#[derive(Args, Debug)]
pub struct NewPasswordArgs {
    /// Read the new password from this file
    #[arg(long)]
    pub new_password_file: Option<PathBuf>,
    /// (key add) The new key may add data but never delete it: no forget,
    /// prune, key removal, unlock or repair that deletes
    #[arg(long)]
    pub append_only: bool,
    #[command(flatten)]
    pub kdf: KdfArgs,
}

#[derive(Args, Debug)]
pub struct UnlockArgs {
    /// Remove all locks, even those that are not stale
    #[arg(long)]
    pub remove_all: bool,
}

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Single-core speed of chunking, chunk ids, compression and encryption, as a backup runs them
    Primitives(PrimitivesArgs),
    /// Memory per chunk and look-up speed of an in-memory index of N synthetic chunks
    IndexMemory(IndexMemoryArgs),
}

#[derive(Args, Debug)]
pub struct PrimitivesArgs {
    /// MiB of generated data (half text-like, half random) run through each primitive
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub mib: u64,
    /// Measure this many times and keep the fastest run of each primitive
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// zstd level (the repository default is 3)
    #[arg(long, default_value_t = 3)]
    pub level: i32,
}

#[derive(Args, Debug)]
pub struct IndexMemoryArgs {
    /// Number of synthetic chunks (index entries)
    #[arg(long, default_value_t = 10_000_000)]
    pub chunks: u64,
    /// Chunks per pack (16 MiB packs of 1 MiB chunks: 16)
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub blobs_per_pack: u64,
    /// Number of look-ups to time (each of hits and misses)
    #[arg(long, default_value_t = 2_000_000)]
    pub lookups: u64,
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks (unique names, valid relations) on
    /// every subcommand, not only on the ones a test happens to run.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
