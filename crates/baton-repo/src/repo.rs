//! Opening and creating repositories, and reading/writing their objects.

use crate::index::Index;
use crate::{RepoError, Result};
use baton_format::compress::Compressor;
use baton_format::crypto::{self, MasterKey};
use baton_format::index::{IndexFile, IndexPack};
use baton_format::object::{from_json, open_object, seal_object, to_json};
use baton_format::pack::{PackWriter, open_blob};
use baton_format::role;
use baton_format::storage_id;
use baton_storage::{ObjectKind, Storage, StorageError};
use baton_types::{
    BlobType, ChunkerParams, Config, FORMAT_VERSION, Id, KdfParams, KeyFile, Snapshot, Tree,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Options of `baton init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub compression: i32,
    pub pack_size: u64,
    pub chunker: Option<ChunkerParams>,
    pub kdf: KdfParams,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            compression: 3,
            pack_size: 16 << 20,
            chunker: None,
            kdf: crypto::default_kdf_params(),
        }
    }
}

/// Snapshots listed: those read, oldest first, and the names of those that
/// could not be read with why.
#[derive(Debug, Default)]
pub struct SnapshotListing {
    pub snapshots: Vec<(Id, Snapshot)>,
    pub unreadable: Vec<(String, String)>,
}

/// An open repository: storage, the master key, the config and the index.
pub struct Repository {
    storage: Arc<dyn Storage>,
    key: MasterKey,
    key_name: String,
    /// Opened with an append-only key: nothing may be deleted.
    append_only: bool,
    config: Config,
    index: Index,
    tree_cache: Mutex<HashMap<Id, Arc<Tree>>>,
    /// The local cache of a remote repository (index objects, snapshots,
    /// tree packs); None for a local one.
    cache: Option<crate::cache::Cache>,
    /// Tree packs not to fetch whole again (too large, or damaged in the
    /// repository): their trees are read by range.
    not_cacheable: Mutex<std::collections::HashSet<String>>,
    /// Index objects the last `load_index` left out (damaged, planted or
    /// replayed under another name), with why.
    index_skipped: Vec<(String, String)>,
    /// How long `lock` waits for a conflicting lock to go, and the flag
    /// that ends the wait early.
    lock_retry: (
        std::time::Duration,
        Option<Arc<std::sync::atomic::AtomicBool>>,
    ),
    /// Where backup journal records go instead of the repository's
    /// `journal/` objects directly (under a director: the network).
    journal_sink: Option<Arc<dyn crate::journal::JournalSink>>,
}

/// How many default-cost key derivations one `open` spends at most on
/// trying key files (the hinted key and the first are always tried).
pub const KEY_SEARCH_WORK: u64 = 24;

/// The work of one Argon2 run: memory times passes.
fn kdf_cost(p: &baton_types::KdfParams) -> u64 {
    u64::from(p.memory_kib) * u64::from(p.iterations.max(1))
}

/// Most Argon2 memory (KiB) this machine spends on one key: the
/// `BATON_KDF_MAX_MEMORY` variable (MiB) if set, else half the physical
/// memory, at most the format's limit.
pub fn kdf_memory_limit_kib() -> u32 {
    let max = baton_format::crypto::MAX_KDF_MEMORY_KIB;
    if let Some(mib) = std::env::var("BATON_KDF_MAX_MEMORY")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return mib.saturating_mul(1024).min(u64::from(max)) as u32;
    }
    let half = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(u64::from(max), |kib| kib / 2);
    half.clamp(
        u64::from(baton_format::crypto::MIN_KDF_MEMORY_KIB),
        u64::from(max),
    ) as u32
}

/// What deciding which index objects are superseded needs of one.
#[derive(Debug, Clone)]
pub struct IndexSummary {
    pub name: String,
    pub supersedes: Vec<Id>,
    pub packs: Vec<Id>,
}

impl IndexSummary {
    pub fn of(name: &str, f: &IndexFile) -> Self {
        IndexSummary {
            name: name.to_string(),
            supersedes: f.supersedes.clone(),
            packs: f.packs.iter().map(|p| p.id).collect(),
        }
    }
}

/// The index objects to leave out as superseded. A rewrite (prune, repair)
/// writes one index object naming every old one in `supersedes`, then
/// deletes packs, then the old objects; an old object still there is left
/// out only if every pack it lists is listed by an object that is not left
/// out, or is gone from storage. So an index object that claims to
/// supersede others (one written by an append-only key, say) can never hide
/// a pack that exists: the claim is ignored and both are loaded.
/// `stored_packs` is asked only when a claim must be checked against storage.
pub fn superseded_index_objects(
    files: &[IndexSummary],
    stored_packs: impl FnOnce() -> Result<std::collections::HashSet<Id>>,
) -> Result<std::collections::HashSet<Id>> {
    use std::collections::HashSet;
    let claimed: HashSet<Id> = files
        .iter()
        .flat_map(|f| f.supersedes.iter().copied())
        .collect();
    let id_of = |f: &IndexSummary| Id::from_hex(&f.name).ok();
    let is_claimed = |f: &IndexSummary| id_of(f).is_some_and(|id| claimed.contains(&id));
    if !files.iter().any(is_claimed) {
        return Ok(claimed);
    }
    let covered: HashSet<Id> = files
        .iter()
        .filter(|f| !is_claimed(f))
        .flat_map(|f| f.packs.iter().copied())
        .collect();
    let mut stored_packs = Some(stored_packs);
    let mut stored: Option<HashSet<Id>> = None;
    let mut left_out = claimed.clone();
    for f in files.iter().filter(|f| is_claimed(f)) {
        let mut uncovered = f.packs.iter().filter(|p| !covered.contains(p)).peekable();
        if uncovered.peek().is_none() {
            continue;
        }
        if stored.is_none() {
            stored = Some((stored_packs.take().expect("asked once"))()?);
        }
        let stored = stored.as_ref().expect("listed");
        if uncovered.any(|p| stored.contains(p)) {
            // Its claim would hide packs that exist: it stays.
            if let Some(id) = id_of(f) {
                left_out.remove(&id);
            }
        }
    }
    Ok(left_out)
}

/// How far ahead of this machine's clock a time may be and still count as
/// now (clocks of different machines drift).
pub const FUTURE_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether an RFC 3339 time lies in the future beyond [`FUTURE_TOLERANCE`].
/// A time that does not parse counts as in the future: it must not win
/// either.
pub fn in_future(time: &str) -> bool {
    match humantime::parse_rfc3339_weak(time) {
        Ok(t) => t > std::time::SystemTime::now() + FUTURE_TOLERANCE,
        Err(_) => true,
    }
}

/// The time a snapshot records: `time` (RFC 3339 in UTC, normalised to
/// nanoseconds) if given, else `start`.
pub fn snapshot_time(time: Option<&str>, start: &str) -> Result<String> {
    match time {
        Some(t) => Ok(
            humantime::format_rfc3339_nanos(humantime::parse_rfc3339(t).map_err(|e| {
                RepoError::Invalid(format!(
                    "snapshot time {t:?} is not RFC 3339 in UTC (like 2025-01-31T14:00:00Z): {e}"
                ))
            })?)
            .to_string(),
        ),
        None => Ok(start.to_string()),
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

pub fn username() -> String {
    let uid = nix::unistd::geteuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

impl Repository {
    /// Sends this repository's backup journal records to `sink` (which
    /// stores them durably, with their summary) instead of writing them
    /// as objects directly.
    pub fn set_journal_sink(&mut self, sink: Arc<dyn crate::journal::JournalSink>) {
        self.journal_sink = Some(sink);
    }

    pub(crate) fn journal_sink(&self) -> Option<&Arc<dyn crate::journal::JournalSink>> {
        self.journal_sink.as_ref()
    }

    /// Creates a new repository protected by `password`.
    pub fn init(
        storage: Arc<dyn Storage>,
        password: &[u8],
        opts: &InitOptions,
    ) -> Result<Repository> {
        Self::init_with_key(storage, password, opts, MasterKey::generate())
    }

    /// Creates a new repository that names blobs as `other` does (the same
    /// MAC key, a new encryption key and password), so that `copy` between
    /// them keeps blob ids and never reads a blob the destination holds.
    /// `init --from-repo --copy-chunker-params` uses it with `other`'s
    /// chunker parameters, so that deduplication carries over too.
    pub fn init_related(
        storage: Arc<dyn Storage>,
        password: &[u8],
        opts: &InitOptions,
        other: &Repository,
    ) -> Result<Repository> {
        let fresh = MasterKey::generate();
        Self::init_with_key(storage, password, opts, fresh.with_ids_of(&other.key))
    }

    fn init_with_key(
        storage: Arc<dyn Storage>,
        password: &[u8],
        opts: &InitOptions,
        key: MasterKey,
    ) -> Result<Repository> {
        if storage.exists()? {
            return Err(RepoError::AlreadyExists {
                location: storage.location(),
            });
        }
        let mut seed = [0u8; 8];
        baton_format::random_bytes(&mut seed);
        let chunker = opts
            .chunker
            .unwrap_or_else(|| ChunkerParams::with_seed(u64::from_le_bytes(seed)));
        chunker.validate().map_err(RepoError::Invalid)?;
        if !(0..=22).contains(&opts.compression) {
            return Err(RepoError::Invalid(format!(
                "compression level {} is not in 0..=22",
                opts.compression
            )));
        }
        if !(1 << 20..=1 << 30).contains(&opts.pack_size) {
            return Err(RepoError::Invalid(
                "pack size must be between 1 MiB and 1 GiB".into(),
            ));
        }
        let config = Config {
            version: FORMAT_VERSION,
            id: baton_format::random_id(),
            chunker,
            compression: opts.compression,
            pack_size: opts.pack_size,
            block_size: 1 << 20,
        };
        config.validate().map_err(RepoError::Invalid)?;
        crypto::check_kdf_floor(&opts.kdf).map_err(|e| RepoError::format("new key", e))?;
        storage.create().map_err(|e| {
            if e.is_already_exists() {
                RepoError::AlreadyExists {
                    location: storage.location(),
                }
            } else {
                e.into()
            }
        })?;
        let key_name = write_key(&*storage, &key, &config.id, password, &opts.kdf, false)?;
        let sealed = seal_object(
            &key,
            &object_ad(&config.id, ObjectKind::Config, ""),
            &mut Compressor::new(0),
            &to_json(&config),
        );
        storage.put(ObjectKind::Config, "", &sealed)?;
        Ok(Repository {
            storage,
            key,
            key_name,
            append_only: false,
            config,
            index: Index::new(),
            tree_cache: Mutex::new(HashMap::new()),
            cache: None,
            not_cacheable: Mutex::default(),
            index_skipped: Vec::new(),
            lock_retry: (std::time::Duration::ZERO, None),
            journal_sink: None,
        })
    }

    /// Opens an existing repository with `password` (the index is not loaded).
    pub fn open(storage: Arc<dyn Storage>, password: &[u8]) -> Result<Repository> {
        Self::open_with_hint(storage, password, None)
    }

    /// Opens an existing repository, trying the key file whose name starts
    /// with `hint` first.
    ///
    /// Key files are plaintext and anyone who can write the repository can
    /// plant some, each asking for an Argon2 run of up to 4 GiB and 64
    /// passes. So the keys are tried cheapest first (the hinted one before
    /// all), a key whose memory exceeds [`kdf_memory_limit_kib`] is not tried
    /// at all, and the search stops once the work spent reaches
    /// [`KEY_SEARCH_WORK`] default-cost keys: a few planted files cost a few
    /// hundred milliseconds, never minutes or the machine's memory.
    pub fn open_with_hint(
        storage: Arc<dyn Storage>,
        password: &[u8],
        hint: Option<&str>,
    ) -> Result<Repository> {
        if !storage.exists()? {
            return Err(RepoError::NoRepository {
                location: storage.location(),
            });
        }
        let keys = storage.list(ObjectKind::Key)?;
        if keys.is_empty() {
            return Err(RepoError::Damaged(format!(
                "repository at {} has no keys",
                storage.location()
            )));
        }
        let mut damaged = Vec::new();
        let mut old_versions = Vec::new();
        let mut candidates = Vec::new();
        for k in keys {
            let bytes = match storage.get_limited(ObjectKind::Key, &k.name, MAX_KEY_FILE) {
                Ok(b) => b,
                Err(e) if e.is_not_found() => continue,
                Err(e) if e.is_transient() => return Err(e.into()),
                Err(e) => {
                    damaged.push(format!("key {}: {e}", k.name));
                    continue;
                }
            };
            let kf: KeyFile = match from_json("key file", &bytes) {
                Ok(kf) => kf,
                Err(e) => {
                    damaged.push(format!("key {}: {e}", k.name));
                    continue;
                }
            };
            if kf.version != FORMAT_VERSION {
                old_versions.push(kf.version);
                continue;
            }
            if let Err(e) = baton_format::crypto::check_kdf_floor(&kf.kdf) {
                damaged.push(format!("key {}: {e}", k.name));
                continue;
            }
            let hinted = hint.is_some_and(|h| !h.is_empty() && k.name.starts_with(h));
            let cost = kdf_cost(&kf.kdf);
            candidates.push((!hinted, cost, k.name, kf, bytes));
        }
        candidates.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
        let memory_limit = kdf_memory_limit_kib();
        let budget = KEY_SEARCH_WORK * kdf_cost(&baton_format::crypto::default_kdf_params());
        let mut spent = 0u64;
        let mut skipped = Vec::new();
        let mut found = None;
        for (not_hinted, cost, name, kf, bytes) in candidates {
            if kf.kdf.memory_kib > memory_limit {
                skipped.push(format!(
                    "key {name} needs {} MiB for its password hash, more than this machine allows ({} MiB; set BATON_KDF_MAX_MEMORY in MiB to raise it)",
                    kf.kdf.memory_kib / 1024,
                    memory_limit / 1024
                ));
                continue;
            }
            // The hinted key, and the first one, are always tried.
            if not_hinted && spent > 0 && spent.saturating_add(cost) > budget {
                skipped.push(format!(
                    "key {name} and any others were not tried: trying keys stops after the work of {KEY_SEARCH_WORK} ordinary ones (name the key with --key-hint)"
                ));
                break;
            }
            spent = spent.saturating_add(cost);
            let Some(repository) = kf.repository else {
                damaged.push(format!("key {name}: names no repository"));
                continue;
            };
            match MasterKey::unwrap(&kf.data, password, &kf.kdf, &key_wrap_ad(&kf)) {
                Ok(m) => {
                    found = Some((m, name, kf.append_only, repository));
                    break;
                }
                // A key file is named by the hash of its bytes: when they no
                // longer match, the failure is damage (or an edit, which the
                // wrap's binding to every field refuses), not a wrong password.
                Err(baton_format::FormatError::Decrypt) if storage_id(&bytes).to_hex() != name => {
                    damaged.push(format!(
                        "key {name}: its bytes no longer hash to its name (damaged or edited)"
                    ))
                }
                Err(baton_format::FormatError::Decrypt) => continue,
                Err(e) => damaged.push(format!("key {name}: {e}")),
            }
        }
        if found.is_none() && !skipped.is_empty() {
            damaged.extend(skipped);
        }
        let Some((key, key_name, append_only, repository)) = found else {
            if let Some(&v) = old_versions.iter().max() {
                if v > FORMAT_VERSION {
                    return Err(RepoError::NewerFormat {
                        found: v,
                        supported: FORMAT_VERSION,
                    });
                }
                return Err(RepoError::OldFormat {
                    location: storage.location(),
                    found: v,
                    supported: FORMAT_VERSION,
                });
            }
            if !damaged.is_empty() {
                return Err(RepoError::Damaged(format!(
                    "no key opened with this password, and some keys are damaged or were not tried: {}",
                    damaged.join("; ")
                )));
            }
            return Err(RepoError::WrongPassword);
        };
        let sealed = storage.get_limited(ObjectKind::Config, "", MAX_CONFIG)?;
        let config: Config = from_json(
            "config",
            &open_object(
                &key,
                &object_ad(&repository, ObjectKind::Config, ""),
                &sealed,
            )
            .map_err(|e| RepoError::format("config", e))?,
        )
        .map_err(|e| RepoError::format("config", e))?;
        if config.version > FORMAT_VERSION {
            return Err(RepoError::NewerFormat {
                found: config.version,
                supported: FORMAT_VERSION,
            });
        }
        config
            .validate()
            .map_err(|e| RepoError::Damaged(format!("config: {e}")))?;
        if config.id != repository {
            return Err(RepoError::Damaged(format!(
                "config: repository id {} differs from the key's {}",
                config.id.short(),
                repository.short()
            )));
        }
        let cache = if storage.is_remote() {
            crate::cache::Cache::open(&config.id)
        } else {
            None
        };
        Ok(Repository {
            storage,
            key,
            key_name,
            append_only,
            config,
            index: Index::new(),
            tree_cache: Mutex::new(HashMap::new()),
            cache,
            not_cacheable: Mutex::default(),
            index_skipped: Vec::new(),
            lock_retry: (std::time::Duration::ZERO, None),
            journal_sink: None,
        })
    }

    /// Loads every index object into memory. Superseded index objects are
    /// skipped, and may even be unreadable (`repair index` supersedes damaged
    /// ones before deleting them); any other unreadable one fails the load.
    pub fn load_index(&mut self) -> Result<()> {
        // Each index object is added as soon as it is decoded, so only one
        // decoded object is in memory at a time.
        let mut index = Index::new();
        let mut loaded = Vec::new();
        let mut failed = Vec::new();
        for obj in self.storage.list(ObjectKind::Index)? {
            match self.read_index(&obj.name) {
                Ok(f) => {
                    index.load_file(&f);
                    loaded.push(IndexSummary::of(&obj.name, &f));
                }
                Err(e) => failed.push((obj.name, e)),
            }
        }
        if let Some(c) = &self.cache {
            let listed: std::collections::HashSet<String> = loaded
                .iter()
                .map(|f| f.name.clone())
                .chain(failed.iter().map(|(n, _)| n.clone()))
                .collect();
            c.retain("index", &listed);
        }
        let left_out = superseded_index_objects(&loaded, || self.stored_packs())?;
        let is_superseded = |name: &str| Id::from_hex(name).is_ok_and(|id| left_out.contains(&id));
        // One unreadable index object must not stop every backup: it is
        // left out (its packs are not indexed, so a backup stores their
        // content again, and `check` names it); only a fault that may pass
        // fails the load.
        let claimed: std::collections::HashSet<Id> = loaded
            .iter()
            .flat_map(|f| f.supersedes.iter().copied())
            .collect();
        let mut skipped = Vec::new();
        for (name, e) in failed {
            if Id::from_hex(&name).is_ok_and(|id| claimed.contains(&id)) {
                continue;
            }
            match e {
                RepoError::Storage(se) if se.is_transient() => return Err(RepoError::Storage(se)),
                RepoError::Storage(se) if se.is_not_found() => {}
                e => skipped.push((name, e.to_string())),
            }
        }
        self.index_skipped = skipped;
        if loaded.iter().any(|f| is_superseded(&f.name)) {
            // Index objects that a rewrite (prune, repair) replaced are still
            // there (it was interrupted before deleting them): load again
            // without them.
            index = Index::new();
            for f in loaded.iter().filter(|f| !is_superseded(&f.name)) {
                index.load_file(&self.read_index(&f.name)?);
            }
        }
        index.compact();
        self.index = index;
        if let Some(c) = &self.cache {
            let packs = self.index.pack_ids().map(|p| p.to_hex()).collect();
            c.retain("data", &packs);
        }
        Ok(())
    }

    /// The packs in storage.
    pub fn stored_packs(&self) -> Result<std::collections::HashSet<Id>> {
        Ok(self
            .storage
            .list(ObjectKind::Pack)?
            .into_iter()
            .filter_map(|o| Id::from_hex(&o.name).ok())
            .collect())
    }

    /// Reads and decodes one index object.
    pub fn read_index(&self, name: &str) -> Result<IndexFile> {
        let what = format!("index {name}");
        let plain = self.load_object(ObjectKind::Index, name)?;
        IndexFile::decode(&plain).map_err(|e| RepoError::format(&what, e))
    }

    /// Index objects the last [`Repository::load_index`] left out, with why.
    pub fn index_skipped(&self) -> &[(String, String)] {
        &self.index_skipped
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }
    pub fn key(&self) -> &MasterKey {
        &self.key
    }
    /// Name of the key file this repository was opened with.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn index(&self) -> &Index {
        &self.index
    }
    pub fn index_mut(&mut self) -> &mut Index {
        &mut self.index
    }

    /// Seals and stores a JSON or binary payload as an object named by the
    /// hash of its stored bytes. Returns the id and the stored size.
    pub fn save_object(&self, kind: ObjectKind, payload: &[u8]) -> Result<(Id, u64)> {
        let sealed = self.seal(kind, "", self.config.compression, payload);
        let id = storage_id(&sealed);
        put_content_addressed(&*self.storage, kind, &id, &sealed)?;
        Ok((id, sealed.len() as u64))
    }

    /// Seals a payload as an object of `kind` in this repository; `name` is
    /// the name it will be stored under where that is not its hash (a
    /// journal record's), else empty.
    pub fn seal(&self, kind: ObjectKind, name: &str, compression: i32, payload: &[u8]) -> Vec<u8> {
        seal_object(
            &self.key,
            &object_ad(&self.config.id, kind, bound_name(kind, name)),
            &mut Compressor::new(compression),
            payload,
        )
    }

    /// Opens the sealed bytes of object `kind/name`: refused unless they
    /// were sealed as exactly that kind of object of this repository.
    pub fn open_sealed(&self, kind: ObjectKind, name: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        // A content-named object is bound to its name by its hash: an old
        // object put back under a new name (a replayed index) is refused.
        if matches!(
            kind,
            ObjectKind::Index | ObjectKind::Snapshot | ObjectKind::Lock
        ) && storage_id(sealed).to_hex() != name
        {
            return Err(RepoError::Damaged(format!(
                "{} {name}: its bytes do not hash to its name (damaged, or put there under another name)",
                kind.dir()
            )));
        }
        open_object(
            &self.key,
            &object_ad(&self.config.id, kind, bound_name(kind, name)),
            sealed,
        )
        .map_err(|e| RepoError::format(format!("{} {name}", kind.dir()), e))
    }

    /// Seals the header of a finished pack and stores the pack durably.
    /// Returns its index entry and its size.
    pub fn store_pack(&self, w: PackWriter) -> Result<(IndexPack, u64)> {
        let (bytes, blobs) = w.finish(&self.key, &self.config.id);
        let id = storage_id(&bytes);
        put_content_addressed(&*self.storage, ObjectKind::Pack, &id, &bytes)?;
        Ok((IndexPack { id, blobs }, bytes.len() as u64))
    }

    /// Stores blobs exactly as given, in one new pack with its own index
    /// object, and adds them to the loaded index; returns their ids. Nothing
    /// checks that they make sense: this is for tools and tests that build
    /// repository content directly (the crafted repositories of the attack
    /// tests: duplicate names, deep and exponential trees).
    pub fn store_raw_blobs(&mut self, blobs: &[(BlobType, Vec<u8>)]) -> Result<Vec<Id>> {
        let mut w = PackWriter::new();
        let mut ids = Vec::new();
        let mut sealed = Vec::new();
        for (t, data) in blobs {
            let id = self.key.blob_id(data);
            baton_format::pack::seal_blob_into(&self.key, *t, &id, data, &mut sealed);
            w.add(*t, id, &sealed, data.len() as u32, false);
            ids.push(id);
        }
        let (pack, _) = self.store_pack(w)?;
        let index = IndexFile {
            supersedes: Vec::new(),
            packs: vec![pack.clone()],
            damaged: Vec::new(),
        };
        self.save_object(ObjectKind::Index, &index.encode())?;
        self.index.add_pack(&pack);
        Ok(ids)
    }

    /// Reads and opens a sealed object.
    pub fn load_object(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        let cacheable = matches!(kind, ObjectKind::Index | ObjectKind::Snapshot);
        if cacheable
            && let Some(c) = &self.cache
            && let Some(sealed) = c.get(kind.dir(), name)
            && let Ok(plain) = self.open_sealed(kind, name, &sealed)
        {
            return Ok(plain);
        }
        let sealed = self
            .storage
            .get_limited(kind, name, max_object_size(kind))?;
        let plain = self.open_sealed(kind, name, &sealed)?;
        if cacheable && let Some(c) = &self.cache {
            c.put(kind.dir(), name, &sealed);
        }
        Ok(plain)
    }

    /// Uses a local cache for what this (remote) repository reads often;
    /// see [`crate::cache`].
    pub fn enable_cache(&mut self) {
        self.cache = crate::cache::Cache::open(&self.config.id);
    }

    /// Makes `lock` wait up to `wait` for a conflicting lock to be released
    /// (restic's `--retry-lock`) instead of failing at once; `stop` (set by
    /// an interrupt) ends the wait.
    pub fn set_lock_retry(
        &mut self,
        wait: std::time::Duration,
        stop: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) {
        self.lock_retry = (wait, stop);
    }

    pub(crate) fn lock_retry(
        &self,
    ) -> (
        std::time::Duration,
        Option<Arc<std::sync::atomic::AtomicBool>>,
    ) {
        self.lock_retry.clone()
    }

    /// The local cache in use, if any.
    pub fn cache(&self) -> Option<&crate::cache::Cache> {
        self.cache.as_ref()
    }

    /// The sealed bytes of a tree blob: from the cached copy of its pack
    /// when there is one, else the whole pack is fetched once and cached
    /// (tree packs are small and read again by every backup and browse).
    fn tree_bytes_cached(
        &self,
        cache: &crate::cache::Cache,
        pack: &str,
        offset: u64,
        len: usize,
    ) -> Option<Vec<u8>> {
        if let Some(b) = cache.read_range(pack, offset, len) {
            return Some(b);
        }
        if self.not_cacheable.lock().expect("cache set").contains(pack) {
            return None;
        }
        let refuse = || {
            self.not_cacheable
                .lock()
                .expect("cache set")
                .insert(pack.to_string());
        };
        let Ok(whole) =
            self.storage
                .get_limited(ObjectKind::Pack, pack, crate::cache::MAX_CACHED_PACK)
        else {
            refuse();
            return None;
        };
        if storage_id(&whole).to_hex() != pack {
            refuse();
            return None;
        }
        cache.put("data", pack, &whole);
        whole
            .get(offset as usize..offset as usize + len)
            .map(<[u8]>::to_vec)
    }

    /// Loads one data blob through the index, verifying its hash.
    pub fn load_blob(&self, id: &Id) -> Result<Vec<u8>> {
        self.load_blob_of(BlobType::Data, id)
    }

    /// Loads one blob of `blob_type` through the index, verifying its hash;
    /// a blob of another type is refused.
    pub fn load_blob_of(&self, blob_type: BlobType, id: &Id) -> Result<Vec<u8>> {
        let loc = self.index.locate(id).ok_or_else(|| {
            RepoError::NotFound(format!("blob {id} is not in the index (missing data)"))
        })?;
        if loc.blob_type != blob_type {
            return Err(RepoError::Damaged(format!(
                "blob {} is a {:?} blob, not a {blob_type:?} blob",
                id.short(),
                loc.blob_type
            )));
        }
        if blob_type.is_metadata()
            && let Some(c) = &self.cache
        {
            let pack = loc.pack.to_hex();
            if let Some(sealed) =
                self.tree_bytes_cached(c, &pack, loc.offset as u64, loc.length as usize)
            {
                match open_blob(
                    &self.key,
                    loc.blob_type,
                    id,
                    &sealed,
                    loc.raw_length,
                    loc.compressed,
                ) {
                    Ok(b) => return Ok(b),
                    // Either the cached pack was damaged since it was
                    // stored (a hash check of it removes it) or the blob is
                    // as damaged in the repository; either way the
                    // repository is read by range below.
                    Err(_) => {
                        let _ = c.get("data", &pack);
                    }
                }
            }
        }
        let sealed = self
            .storage
            .get_range(
                ObjectKind::Pack,
                &loc.pack.to_hex(),
                loc.offset as u64,
                loc.length as u64,
            )
            .map_err(|e| annotate(e, &format!("blob {} in pack {}", id.short(), loc.pack)))?;
        open_blob(
            &self.key,
            loc.blob_type,
            id,
            &sealed,
            loc.raw_length,
            loc.compressed,
        )
        .map_err(|e| RepoError::format(format!("blob {} in pack {}", id, loc.pack), e))
    }

    /// Loads a tree (cached: for browsing, which visits trees repeatedly).
    pub fn load_tree(&self, id: &Id) -> Result<Arc<Tree>> {
        if let Some(t) = self.tree_cache.lock().expect("tree cache").get(id) {
            return Ok(t.clone());
        }
        let tree = self.read_tree(id)?;
        let mut cache = self.tree_cache.lock().expect("tree cache");
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(*id, tree.clone());
        Ok(tree)
    }

    /// Loads a tree without caching it: for walks that visit each tree
    /// once (backup's parent, restore), whose memory must not grow with the
    /// number of directories.
    pub fn read_tree(&self, id: &Id) -> Result<Arc<Tree>> {
        let bytes = self.load_blob_of(BlobType::Tree, id)?;
        let tree: Tree =
            from_json("tree", &bytes).map_err(|e| RepoError::format(format!("tree {id}"), e))?;
        tree.validate()
            .map_err(|e| RepoError::Damaged(format!("tree {}: {e}", id.short())))?;
        Ok(Arc::new(tree))
    }

    /// All readable snapshots, oldest first. An unreadable one (damaged,
    /// planted, or a name that is no id) is skipped: one bad object must
    /// not stop every listing, backup and forget. [`Repository::list_snapshots_all`]
    /// says which were skipped.
    pub fn list_snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        Ok(self.list_snapshots_all()?.snapshots)
    }

    /// All snapshots, oldest first, and those that cannot be read, with why.
    /// A transient storage failure fails the listing (it may pass; skipping
    /// would make a snapshot look forgotten).
    pub fn list_snapshots_all(&self) -> Result<SnapshotListing> {
        let mut out = SnapshotListing::default();
        let listed = self.storage.list(ObjectKind::Snapshot)?;
        if let Some(c) = &self.cache {
            c.retain(
                "snapshots",
                &listed.iter().map(|o| o.name.clone()).collect(),
            );
        }
        for obj in listed {
            match self.load_snapshot_exact(&obj.name) {
                Ok(s) => out.snapshots.push(s),
                Err(RepoError::Storage(e)) if e.is_not_found() => {}
                Err(RepoError::Storage(e)) if e.is_transient() => return Err(e.into()),
                Err(e) => out.unreadable.push((obj.name, e.to_string())),
            }
        }
        out.snapshots
            .sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    fn load_snapshot_exact(&self, name: &str) -> Result<(Id, Snapshot)> {
        let id = Id::from_hex(name).map_err(|e| RepoError::Damaged(e.to_string()))?;
        let plain = self.load_object(ObjectKind::Snapshot, name)?;
        let s = from_json("snapshot", &plain)
            .map_err(|e| RepoError::format(format!("snapshot {name}"), e))?;
        Ok((id, s))
    }

    /// Finds a snapshot by `latest` (the newest not dated in the future),
    /// a full id or a unique id prefix.
    pub fn find_snapshot(&self, reference: &str) -> Result<(Id, Snapshot)> {
        if reference == "latest" {
            return self
                .list_snapshots()?
                .into_iter()
                .rev()
                .find(|(_, s)| !in_future(&s.time))
                .ok_or_else(|| RepoError::NotFound("the repository has no snapshots yet".into()));
        }
        let name = self.resolve_snapshot_name(reference)?;
        self.load_snapshot_exact(&name)
    }

    /// The name of the one snapshot object whose id starts with
    /// `reference`, found by listing (the object is not read, so an
    /// unreadable snapshot can be named, e.g. to forget it).
    pub fn resolve_snapshot_name(&self, reference: &str) -> Result<String> {
        if reference.is_empty() || !reference.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RepoError::Invalid(format!(
                "{reference:?} is not a snapshot id (use `latest`, `latest~N`, an id or a unique id prefix)"
            )));
        }
        let prefix = reference.to_ascii_lowercase();
        let matches: Vec<String> = self
            .storage
            .list(ObjectKind::Snapshot)?
            .into_iter()
            .map(|o| o.name)
            .filter(|n| n.starts_with(&prefix))
            .collect();
        match matches.len() {
            0 => Err(RepoError::NotFound(format!(
                "no snapshot with id {reference}"
            ))),
            1 => Ok(matches.into_iter().next().expect("one match")),
            n => Err(RepoError::Invalid(format!(
                "id prefix {reference} matches {n} snapshots; give more digits"
            ))),
        }
    }

    /// Stores a snapshot object: the commit point of a backup.
    pub fn save_snapshot(&self, s: &Snapshot) -> Result<(Id, u64)> {
        self.save_object(ObjectKind::Snapshot, &to_json(s))
    }

    /// Writes a new key file wrapping this repository's master key.
    pub fn add_key(&self, password: &[u8], kdf: &KdfParams) -> Result<String> {
        self.add_key_with(password, kdf, self.append_only)
    }

    /// Writes a new key file; `append_only` keys may add objects but never
    /// delete them. An append-only key can only add append-only keys.
    pub fn add_key_with(
        &self,
        password: &[u8],
        kdf: &KdfParams,
        append_only: bool,
    ) -> Result<String> {
        if self.append_only && !append_only {
            return Err(RepoError::AppendOnly(
                "this key is append-only: it can only add append-only keys".into(),
            ));
        }
        crypto::check_kdf_floor(kdf).map_err(|e| RepoError::format("new key", e))?;
        write_key(
            &*self.storage,
            &self.key,
            &self.config.id,
            password,
            kdf,
            append_only,
        )
    }

    /// Whether the key in use is append-only.
    pub fn is_append_only(&self) -> bool {
        self.append_only
    }

    /// Fails when the key in use is append-only: `what` would delete objects.
    pub fn require_deletes(&self, what: &str) -> Result<()> {
        if self.append_only {
            Err(RepoError::AppendOnly(format!(
                "this key is append-only: {what} would delete data; use a key with full rights"
            )))
        } else {
            Ok(())
        }
    }

    /// All key files, each read or with why it cannot be (a damaged key
    /// file is listed, so that it can be removed).
    pub fn list_keys(&self) -> Result<Vec<(String, std::result::Result<KeyFile, String>)>> {
        let mut out = Vec::new();
        for k in self.storage.list(ObjectKind::Key)? {
            let kf = match self
                .storage
                .get_limited(ObjectKind::Key, &k.name, MAX_KEY_FILE)
            {
                // A key file is named by the hash of its bytes.
                Ok(bytes) if storage_id(&bytes).to_hex() != k.name => {
                    Err("its bytes no longer hash to its name (damaged or edited)".to_string())
                }
                Ok(bytes) => from_json::<KeyFile>("key file", &bytes).map_err(|e| e.to_string()),
                Err(e) if e.is_not_found() => continue,
                Err(e) if e.is_transient() => return Err(e.into()),
                Err(e) => Err(e.to_string()),
            };
            out.push((k.name, kf));
        }
        Ok(out)
    }

    /// Removes a key file. The key this repository was opened with, and the
    /// last key, cannot be removed.
    pub fn remove_key(&self, name: &str) -> Result<()> {
        self.require_deletes("removing a key")?;
        // By listing, not by reading: a damaged key file can be removed too.
        let keys = self.storage.list(ObjectKind::Key)?;
        let matches: Vec<&String> = keys
            .iter()
            .map(|o| &o.name)
            .filter(|n| n.starts_with(name))
            .collect();
        let target = match matches.as_slice() {
            [] => return Err(RepoError::NotFound(format!("no key with id {name}"))),
            [one] => (*one).clone(),
            _ => {
                return Err(RepoError::Invalid(format!(
                    "key id prefix {name} is ambiguous"
                )));
            }
        };
        if target == self.key_name {
            return Err(RepoError::Invalid(
                "refusing to remove the key in use; open the repository with another key to remove this one".into(),
            ));
        }
        self.storage.remove(ObjectKind::Key, &target)?;
        Ok(())
    }

    /// Replaces the password of the key in use: adds a new key file, then
    /// removes the old one (so a crash in between leaves both valid).
    pub fn change_password(&mut self, new_password: &[u8], kdf: &KdfParams) -> Result<String> {
        self.require_deletes("changing the password (it removes the old key)")?;
        let new_name = self.add_key(new_password, kdf)?;
        self.storage.remove(ObjectKind::Key, &self.key_name)?;
        self.key_name = new_name.clone();
        Ok(new_name)
    }
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.storage.location())
            .field("id", &self.config.id)
            .field("blobs", &self.index.len())
            .finish()
    }
}

fn write_key(
    storage: &dyn Storage,
    key: &MasterKey,
    repository: &Id,
    password: &[u8],
    kdf: &KdfParams,
    append_only: bool,
) -> Result<String> {
    let mut kf = KeyFile {
        version: FORMAT_VERSION,
        repository: Some(*repository),
        created: now_rfc3339(),
        hostname: hostname(),
        username: username(),
        kdf: kdf.clone(),
        data: String::new(),
        append_only,
    };
    kf.data = key
        .wrap(password, kdf, &key_wrap_ad(&kf))
        .map_err(|e| RepoError::format("new key", e))?;
    let bytes = serde_json::to_vec_pretty(&kf).expect("key files serialize");
    let name = storage_id(&bytes).to_hex();
    storage.put(ObjectKind::Key, &name, &bytes)?;
    Ok(name)
}

/// Most bytes read of a key file (plaintext JSON of a few hundred bytes).
pub const MAX_KEY_FILE: u64 = 64 << 10;
/// Most bytes read of the config.
pub const MAX_CONFIG: u64 = 64 << 10;
/// Most bytes read of a lock.
pub const MAX_LOCK: u64 = 64 << 10;

/// Most bytes read of a stored object of `kind` before it is opened.
pub fn max_object_size(kind: ObjectKind) -> u64 {
    match kind {
        ObjectKind::Key => MAX_KEY_FILE,
        ObjectKind::Config => MAX_CONFIG,
        ObjectKind::Lock => MAX_LOCK,
        // Metadata objects decode to at most MAX_OBJECT; sealed, they are
        // at most that plus the seal.
        _ => baton_format::object::MAX_OBJECT as u64 + 64,
    }
}

/// What the wrap of a key file is bound to: all its other fields.
fn key_wrap_ad(kf: &KeyFile) -> Vec<u8> {
    role::key_wrap(&to_json(&kf.fields()))
}

/// The associated data of object `kind/name` in repository `id`.
pub fn object_ad(id: &Id, kind: ObjectKind, name: &str) -> Vec<u8> {
    let label = match kind {
        ObjectKind::Config => "config",
        k => k.dir(),
    };
    role::object(label, id, name)
}

/// The part of an object's name its seal is bound to: the whole name where
/// it is chosen by the writer (journal records), nothing where it is the
/// hash of the sealed bytes.
fn bound_name(kind: ObjectKind, name: &str) -> &str {
    match kind {
        ObjectKind::Journal => name,
        _ => "",
    }
}

/// Stores an object named by the hash of its bytes: one already stored
/// under that name holds the same bytes, so it counts as stored.
pub fn put_content_addressed(
    storage: &dyn Storage,
    kind: ObjectKind,
    id: &Id,
    bytes: &[u8],
) -> Result<()> {
    match storage.put(kind, &id.to_hex(), bytes) {
        Err(e) if !e.is_already_exists() => Err(e.into()),
        _ => Ok(()),
    }
}

fn annotate(e: StorageError, context: &str) -> RepoError {
    RepoError::Storage(StorageError::new(
        e.kind,
        format!("{context} ({})", e.what),
        e.message,
    ))
}
