//! Opening and creating repositories, and reading/writing their objects.

use crate::index::Index;
use crate::{RepoError, Result};
use baton_format::compress::Compressor;
use baton_format::crypto::{self, MasterKey};
use baton_format::index::{IndexFile, IndexPack};
use baton_format::object::{from_json, open_object, seal_object, to_json};
use baton_format::pack::{PackWriter, open_blob};
use baton_format::storage_id;
use baton_storage::{ObjectKind, Storage, StorageError};
use baton_types::{ChunkerParams, Config, FORMAT_VERSION, Id, KdfParams, KeyFile, Snapshot, Tree};
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
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

pub(crate) fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

pub(crate) fn username() -> String {
    let uid = nix::unistd::geteuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

impl Repository {
    /// Creates a new repository protected by `password`.
    pub fn init(
        storage: Arc<dyn Storage>,
        password: &[u8],
        opts: &InitOptions,
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
        let key = MasterKey::generate();
        storage.create().map_err(|e| {
            if e.is_already_exists() {
                RepoError::AlreadyExists {
                    location: storage.location(),
                }
            } else {
                e.into()
            }
        })?;
        let key_name = write_key(&*storage, &key, password, &opts.kdf, false)?;
        let sealed = seal_object(&key, &mut Compressor::new(0), &to_json(&config));
        storage.put(ObjectKind::Config, "", &sealed)?;
        Ok(Repository {
            storage,
            key,
            key_name,
            append_only: false,
            config,
            index: Index::new(),
            tree_cache: Mutex::new(HashMap::new()),
        })
    }

    /// Opens an existing repository with `password` (the index is not loaded).
    pub fn open(storage: Arc<dyn Storage>, password: &[u8]) -> Result<Repository> {
        if !storage.exists()? {
            return Err(RepoError::NoRepository {
                location: storage.location(),
            });
        }
        let keys = storage.list(ObjectKind::Key)?;
        if keys.is_empty() {
            return Err(RepoError::Invalid(format!(
                "repository at {} has no keys",
                storage.location()
            )));
        }
        let mut found = None;
        let mut damaged = Vec::new();
        for k in keys {
            let bytes = storage.get(ObjectKind::Key, &k.name)?;
            let kf: KeyFile = match from_json("key file", &bytes) {
                Ok(kf) => kf,
                Err(e) => {
                    damaged.push(format!("key {}: {e}", k.name));
                    continue;
                }
            };
            match MasterKey::unwrap(&kf.data, password, &kf.kdf) {
                Ok(m) => {
                    found = Some((m, k.name, kf.append_only));
                    break;
                }
                // A key file is named by the hash of its bytes: when they no
                // longer match, the failure is damage, not a wrong password.
                Err(baton_format::FormatError::Decrypt)
                    if storage_id(&bytes).to_hex() != k.name =>
                {
                    damaged.push(format!(
                        "key {}: its bytes no longer hash to its name (damaged or renamed)",
                        k.name
                    ))
                }
                Err(baton_format::FormatError::Decrypt) => continue,
                Err(e) => damaged.push(format!("key {}: {e}", k.name)),
            }
        }
        let Some((key, key_name, append_only)) = found else {
            if !damaged.is_empty() {
                return Err(RepoError::Invalid(format!(
                    "no key opened with this password, and some keys are damaged: {}",
                    damaged.join("; ")
                )));
            }
            return Err(RepoError::WrongPassword);
        };
        let sealed = storage.get(ObjectKind::Config, "")?;
        let config: Config = from_json(
            "config",
            &open_object(&key, &sealed).map_err(|e| RepoError::format("config", e))?,
        )
        .map_err(|e| RepoError::format("config", e))?;
        if config.version > FORMAT_VERSION {
            return Err(RepoError::NewerFormat {
                found: config.version,
                supported: FORMAT_VERSION,
            });
        }
        config
            .chunker
            .validate()
            .map_err(|e| RepoError::Invalid(format!("config: {e}")))?;
        Ok(Repository {
            storage,
            key,
            key_name,
            append_only,
            config,
            index: Index::new(),
            tree_cache: Mutex::new(HashMap::new()),
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
        let mut superseded = std::collections::HashSet::new();
        for obj in self.storage.list(ObjectKind::Index)? {
            match self.read_index(&obj.name) {
                Ok(f) => {
                    superseded.extend(f.supersedes.iter().copied());
                    index.load_file(&f);
                    loaded.push(obj.name);
                }
                Err(e) => failed.push((obj.name, e)),
            }
        }
        let is_superseded =
            |name: &str| Id::from_hex(name).is_ok_and(|id| superseded.contains(&id));
        if let Some((_, e)) = failed.into_iter().find(|(name, _)| !is_superseded(name)) {
            return Err(e);
        }
        if loaded.iter().any(|n| is_superseded(n)) {
            // Index objects that a rewrite (prune, repair) replaced are still
            // there (it was interrupted before deleting them): load again
            // without them.
            index = Index::new();
            for name in loaded.iter().filter(|n| !is_superseded(n)) {
                index.load_file(&self.read_index(name)?);
            }
        }
        index.compact();
        self.index = index;
        Ok(())
    }

    /// Reads and decodes one index object.
    pub fn read_index(&self, name: &str) -> Result<IndexFile> {
        let what = format!("index {name}");
        let sealed = self.storage.get(ObjectKind::Index, name)?;
        let plain = open_object(&self.key, &sealed).map_err(|e| RepoError::format(&what, e))?;
        IndexFile::decode(&plain).map_err(|e| RepoError::format(&what, e))
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
    pub(crate) fn index_mut(&mut self) -> &mut Index {
        &mut self.index
    }

    /// Seals and stores a JSON or binary payload as an object named by the
    /// hash of its stored bytes. Returns the id and the stored size.
    pub fn save_object(&self, kind: ObjectKind, payload: &[u8]) -> Result<(Id, u64)> {
        let sealed = seal_object(
            &self.key,
            &mut Compressor::new(self.config.compression),
            payload,
        );
        let id = storage_id(&sealed);
        put_content_addressed(&*self.storage, kind, &id, &sealed)?;
        Ok((id, sealed.len() as u64))
    }

    /// Seals the header of a finished pack and stores the pack durably.
    /// Returns its index entry and its size.
    pub(crate) fn store_pack(&self, w: PackWriter) -> Result<(IndexPack, u64)> {
        let (bytes, blobs) = w.finish(&self.key);
        let id = storage_id(&bytes);
        put_content_addressed(&*self.storage, ObjectKind::Pack, &id, &bytes)?;
        Ok((IndexPack { id, blobs }, bytes.len() as u64))
    }

    /// Reads and opens a sealed object.
    pub fn load_object(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        let sealed = self.storage.get(kind, name)?;
        open_object(&self.key, &sealed)
            .map_err(|e| RepoError::format(format!("{} {name}", kind.dir()), e))
    }

    /// Loads one blob through the index, verifying its hash.
    pub fn load_blob(&self, id: &Id) -> Result<Vec<u8>> {
        let loc = self.index.get(id).ok_or_else(|| {
            RepoError::NotFound(format!("blob {id} is not in the index (missing data)"))
        })?;
        let sealed = self
            .storage
            .get_range(
                ObjectKind::Pack,
                &loc.pack.to_hex(),
                loc.offset as u64,
                loc.length as u64,
            )
            .map_err(|e| annotate(e, &format!("blob {} in pack {}", id.short(), loc.pack)))?;
        open_blob(&self.key, id, &sealed, loc.raw_length, loc.compressed)
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
        let bytes = self.load_blob(id)?;
        let tree: Tree =
            from_json("tree", &bytes).map_err(|e| RepoError::format(format!("tree {id}"), e))?;
        Ok(Arc::new(tree))
    }

    /// All snapshots, oldest first.
    pub fn list_snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let mut out = Vec::new();
        for obj in self.storage.list(ObjectKind::Snapshot)? {
            out.push(self.load_snapshot_exact(&obj.name)?);
        }
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    fn load_snapshot_exact(&self, name: &str) -> Result<(Id, Snapshot)> {
        let id = Id::from_hex(name).map_err(|e| RepoError::Invalid(e.to_string()))?;
        let plain = self.load_object(ObjectKind::Snapshot, name)?;
        let s = from_json("snapshot", &plain)
            .map_err(|e| RepoError::format(format!("snapshot {name}"), e))?;
        Ok((id, s))
    }

    /// Finds a snapshot by `latest`, a full id or a unique id prefix.
    pub fn find_snapshot(&self, reference: &str) -> Result<(Id, Snapshot)> {
        if reference == "latest" {
            return self
                .list_snapshots()?
                .pop()
                .ok_or_else(|| RepoError::NotFound("the repository has no snapshots yet".into()));
        }
        if reference.is_empty() || !reference.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RepoError::Invalid(format!(
                "{reference:?} is not a snapshot id (use `latest`, an id or a unique id prefix)"
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
            1 => self.load_snapshot_exact(&matches[0]),
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
            return Err(RepoError::Invalid(
                "this key is append-only: it can only add append-only keys".into(),
            ));
        }
        write_key(&*self.storage, &self.key, password, kdf, append_only)
    }

    /// Whether the key in use is append-only.
    pub fn is_append_only(&self) -> bool {
        self.append_only
    }

    /// Fails when the key in use is append-only: `what` would delete objects.
    pub fn require_deletes(&self, what: &str) -> Result<()> {
        if self.append_only {
            Err(RepoError::Invalid(format!(
                "this key is append-only: {what} would delete data; use a key with full rights"
            )))
        } else {
            Ok(())
        }
    }

    /// All key files.
    pub fn list_keys(&self) -> Result<Vec<(String, KeyFile)>> {
        let mut out = Vec::new();
        for k in self.storage.list(ObjectKind::Key)? {
            let bytes = self.storage.get(ObjectKind::Key, &k.name)?;
            let kf = from_json("key file", &bytes)
                .map_err(|e| RepoError::format(format!("key {}", k.name), e))?;
            out.push((k.name, kf));
        }
        Ok(out)
    }

    /// Removes a key file. The key this repository was opened with, and the
    /// last key, cannot be removed.
    pub fn remove_key(&self, name: &str) -> Result<()> {
        self.require_deletes("removing a key")?;
        let keys = self.list_keys()?;
        let matches: Vec<&String> = keys
            .iter()
            .map(|(n, _)| n)
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
    password: &[u8],
    kdf: &KdfParams,
    append_only: bool,
) -> Result<String> {
    let data = key
        .wrap(password, kdf)
        .map_err(|e| RepoError::format("new key", e))?;
    let kf = KeyFile {
        created: now_rfc3339(),
        hostname: hostname(),
        username: username(),
        kdf: kdf.clone(),
        data,
        append_only,
    };
    let bytes = serde_json::to_vec_pretty(&kf).expect("key files serialize");
    let name = storage_id(&bytes).to_hex();
    storage.put(ObjectKind::Key, &name, &bytes)?;
    Ok(name)
}

/// Stores an object named by the hash of its bytes: one already stored
/// under that name holds the same bytes, so it counts as stored.
pub(crate) fn put_content_addressed(
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
