//! Repository locks.
//!
//! A lock is an ordinary sealed object `locks/<random id>` holding who took it
//! (host, user, pid), when, and whether it is exclusive. Shared locks coexist
//! with each other; an exclusive lock excludes every other lock. To take a
//! lock, a process checks the existing locks, writes its own, then checks again
//! (two racing writers both see each other and one backs off). A held lock is
//! rewritten every [`REFRESH`]; a lock is stale when its time is older than
//! [`STALE_AFTER`], or when it was taken on this host by a process that no
//! longer exists. "This host" is decided by hostname, machine id, boot id and
//! pid namespace together (see `LockInfo::location`), never by hostname
//! alone: two containers or cloned machines that share a hostname do not
//! take each other's live locks for dead. Stale locks are ignored and
//! removed by `baton unlock`.

use crate::repo::{hostname, now_rfc3339, object_ad, username};
use crate::{Cancel, RepoError, Repository, Result};
use baton_format::compress::Compressor;
use baton_format::crypto::MasterKey;
use baton_format::object::{from_json, seal_object, to_json};
use baton_format::storage_id;
use baton_storage::{ObjectKind, Storage};
use baton_types::Id;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How often a held lock is refreshed.
pub const REFRESH: Duration = Duration::from_secs(5 * 60);
/// Age after which an unrefreshed lock is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// The content of a lock object.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LockInfo {
    pub time: String,
    pub exclusive: bool,
    pub hostname: String,
    pub username: String,
    pub pid: u32,
    /// The backup job this lock's holder is running: a live job is never
    /// resumed by another process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Id>,
    /// The kernel's boot id of the holder's host: a lock of this host from
    /// an earlier boot is stale, even if its pid was reused since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// A hash of the holder's machine id (`/etc/machine-id`): two machines
    /// or containers that share a hostname are told apart by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// The holder's pid namespace (`/proc/self/ns/pid`): containers of one
    /// machine share its boot id but not their pids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<String>,
}

/// Hash of this machine's id, if it has one (systemd and dbus write it; many
/// containers have none).
fn machine() -> Option<String> {
    static MACHINE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    MACHINE
        .get_or_init(|| {
            ["/etc/machine-id", "/var/lib/dbus/machine-id"]
                .iter()
                .find_map(|p| {
                    let s = std::fs::read_to_string(p).ok()?;
                    let s = s.trim();
                    (s.len() >= 16 && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                        .then(|| s.to_string())
                })
                .map(|id| {
                    // Only the hash is stored: the id itself is meant to
                    // stay on the machine.
                    let h = blake3::keyed_hash(b"baton lock host id, machine-id!!", id.as_bytes());
                    h.to_hex()[..32].to_string()
                })
        })
        .clone()
}

/// This process's pid namespace ("pid:[4026531836]"), if known.
fn pid_ns() -> Option<String> {
    static NS: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NS.get_or_init(|| {
        std::fs::read_link("/proc/self/ns/pid")
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    })
    .clone()
}

/// Whether a lock's holder ran where this process can see its pid.
#[derive(Debug, PartialEq, Eq)]
enum Where {
    /// Same machine, boot and pid namespace: its pid can be checked.
    Here,
    /// Same machine, an earlier boot: the holder is gone.
    EarlierBoot,
    /// Another machine or container, or not known: only its age tells.
    Elsewhere,
}

/// This host's boot id (`/proc/sys/kernel/random/boot_id`), if known.
fn boot_id() -> Option<String> {
    static BOOT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
    .clone()
}

/// Names of the lock objects this process holds right now. A lock of this
/// host and pid that is not among them was left by an operation of this
/// process that has ended (a library caller that carried on after a
/// failure): it protects nothing.
fn held() -> &'static Mutex<std::collections::HashSet<String>> {
    static HELD: std::sync::OnceLock<Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    HELD.get_or_init(Default::default)
}

/// Whether lock object `name` holding `info` protects nothing any more.
pub fn lock_is_stale(name: &str, info: &LockInfo) -> bool {
    if info.is_stale() {
        return true;
    }
    info.location() == Where::Here
        && info.pid == std::process::id()
        && !held().lock().expect("held locks").contains(name)
}

impl LockInfo {
    fn new(exclusive: bool) -> Self {
        LockInfo {
            time: now_rfc3339(),
            exclusive,
            hostname: hostname(),
            username: username(),
            pid: std::process::id(),
            job: None,
            boot_id: boot_id(),
            machine: machine(),
            pid_ns: pid_ns(),
        }
    }

    /// Where the holder ran, seen from this process. A hostname alone does
    /// not tell machines apart (containers and cloned machines share them),
    /// so a lock is taken for this machine's only when the machine ids
    /// match, or when neither has one and the boot ids match; and its pid
    /// is checked only in the same pid namespace.
    fn location(&self) -> Where {
        if self.hostname != hostname() {
            return Where::Elsewhere;
        }
        let (boot, machine) = (boot_id(), machine());
        // Both known and equal, or both unknown.
        let same_boot = self.boot_id == boot;
        match (&self.machine, &machine) {
            (Some(a), Some(b)) if a == b => {
                if !same_boot && self.boot_id.is_some() && boot.is_some() {
                    return Where::EarlierBoot;
                }
            }
            (None, None) if same_boot => {}
            _ => return Where::Elsewhere,
        }
        if !same_boot || self.pid_ns != pid_ns() {
            return Where::Elsewhere;
        }
        Where::Here
    }

    /// Whether this lock no longer protects anything: older than
    /// [`STALE_AFTER`], taken on this host by a process that is gone, or
    /// with a time that does not parse or lies in the future beyond
    /// [`crate::repo::FUTURE_TOLERANCE`] (a lock dated 2999 would otherwise
    /// block everything forever).
    pub fn is_stale(&self) -> bool {
        let Ok(t) = humantime::parse_rfc3339_weak(&self.time) else {
            return true;
        };
        if crate::repo::in_future(&self.time) {
            return true;
        }
        let age = SystemTime::now().duration_since(t).unwrap_or_default();
        if age > STALE_AFTER {
            return true;
        }
        match self.location() {
            Where::EarlierBoot => true,
            Where::Here => {
                let pid = nix::unistd::Pid::from_raw(self.pid as i32);
                matches!(
                    nix::sys::signal::kill(pid, None),
                    Err(nix::errno::Errno::ESRCH)
                )
            }
            Where::Elsewhere => false,
        }
    }

    /// "exclusive lock held by PID 12 on host h by user u since T".
    pub fn describe(&self) -> String {
        format!(
            "{} lock held by PID {} on host {} by user {} since {}",
            if self.exclusive {
                "an exclusive"
            } else {
                "a shared"
            },
            self.pid,
            self.hostname,
            self.username,
            self.time
        )
    }
}

/// A held lock; released (deleted) on drop.
pub struct LockGuard {
    storage: Arc<dyn Storage>,
    key: MasterKey,
    repository: Id,
    /// The backup job this holder runs, written into every lock object.
    job: Arc<Mutex<Option<Id>>>,
    name: Arc<Mutex<String>>,
    exclusive: bool,
    /// When the lock object now in storage was written.
    written: Arc<Mutex<std::time::Instant>>,
    stop: Arc<AtomicBool>,
    refresher: Option<std::thread::JoinHandle<()>>,
    lost: Arc<Mutex<Option<Cancel>>>,
}

impl LockGuard {
    /// Aborts `cancel` if the lock cannot be refreshed for so long that
    /// others would consider it stale: the operation must then stop, since
    /// an exclusive operation (prune) may start.
    pub fn abort_on_loss(&self, cancel: &Cancel) {
        *self.lost.lock().expect("lock watcher") = Some(cancel.clone());
    }
}

impl LockGuard {
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }

    /// The name of the lock object now in storage.
    pub fn name(&self) -> String {
        self.name.lock().expect("lock name").clone()
    }

    /// Rewrites the lock to say that its holder runs backup `job` (or none).
    pub fn set_job(&self, job: Option<Id>) -> Result<()> {
        let mut current = self.name.lock().expect("lock name");
        let mut info = LockInfo::new(self.exclusive);
        info.job = job;
        let new = write_lock(&*self.storage, &self.key, &self.repository, &info)?;
        *self.job.lock().expect("lock job") = job;
        *self.written.lock().expect("lock time") = std::time::Instant::now();
        let old = std::mem::replace(&mut *current, new);
        release(&*self.storage, &old);
        Ok(())
    }

    /// Fails unless the lock is certain to still protect us: its object was
    /// written (or refreshed) less than `STALE_AFTER - REFRESH` ago, so no
    /// other process can consider it stale yet. Operations that delete data
    /// call this before deleting anything.
    pub fn ensure_fresh(&self) -> Result<()> {
        let age = self.written.lock().expect("lock time").elapsed();
        if age >= STALE_AFTER - REFRESH {
            return Err(RepoError::LockLost(format!(
                "our lock could not be refreshed for {}s; stopping before other processes consider it stale",
                age.as_secs()
            )));
        }
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.refresher.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        let name = self.name.lock().expect("lock name").clone();
        release(&*self.storage, &name);
    }
}

fn write_lock(
    storage: &dyn Storage,
    key: &MasterKey,
    repository: &Id,
    info: &LockInfo,
) -> Result<String> {
    let sealed = seal_object(
        key,
        &object_ad(repository, ObjectKind::Lock, ""),
        &mut Compressor::new(0),
        &to_json(info),
    );
    let name = storage_id(&sealed).to_hex();
    // Registered before it exists, so this process never sees its own live
    // lock as one left behind.
    held().lock().expect("held locks").insert(name.clone());
    if let Err(e) = storage.put(ObjectKind::Lock, &name, &sealed) {
        held().lock().expect("held locks").remove(&name);
        return Err(e.into());
    }
    Ok(name)
}

/// Deletes a lock object this process wrote.
fn release(storage: &dyn Storage, name: &str) {
    let _ = storage.remove(ObjectKind::Lock, name);
    held().lock().expect("held locks").remove(name);
}

impl Repository {
    /// All lock objects that can be read, with their names.
    pub fn list_locks(&self) -> Result<Vec<(String, LockInfo)>> {
        let mut out = Vec::new();
        for o in self.storage().list(ObjectKind::Lock)? {
            let sealed =
                match self
                    .storage()
                    .get_limited(ObjectKind::Lock, &o.name, crate::repo::MAX_LOCK)
                {
                    Ok(s) => s,
                    Err(e) if e.is_not_found() => continue, // released meanwhile
                    Err(e) if e.is_transient() => return Err(e.into()),
                    // Oversized or unreadable: handled below like a lock
                    // that does not open.
                    Err(_) => Vec::new(),
                };
            let info = self
                .open_sealed(ObjectKind::Lock, &o.name, &sealed)
                .ok()
                .and_then(|p| from_json::<LockInfo>("lock", &p).ok());
            match info {
                Some(i) => out.push((o.name, i)),
                // An unreadable lock protects nothing we can name; treat as stale.
                None => out.push((
                    o.name,
                    LockInfo {
                        time: "1970-01-01T00:00:00Z".into(),
                        exclusive: false,
                        hostname: "?".into(),
                        username: "?".into(),
                        pid: 0,
                        job: None,
                        boot_id: None,
                        machine: None,
                        pid_ns: None,
                    },
                )),
            }
        }
        Ok(out)
    }

    fn conflicting(&self, exclusive: bool, own: Option<&str>) -> Result<Option<LockInfo>> {
        for (name, info) in self.list_locks()? {
            if Some(name.as_str()) == own || lock_is_stale(&name, &info) {
                continue;
            }
            if exclusive || info.exclusive {
                return Ok(Some(info));
            }
        }
        Ok(None)
    }

    /// Whether a live process (a lock that is not stale) runs backup `job`.
    pub fn job_is_live(&self, job: &Id, own: Option<&LockGuard>) -> Result<bool> {
        let own = own.map(|l| l.name());
        Ok(self.list_locks()?.into_iter().any(|(name, info)| {
            Some(&name) != own.as_ref()
                && !lock_is_stale(&name, &info)
                && info.job.as_ref() == Some(job)
        }))
    }

    /// Claims backup `job` for the holder of `lock`: writes the claim, then
    /// checks that no other live process claims it too (check, write,
    /// re-check, as for locks: of two racing claimers at least one backs
    /// off). Returns whether the job is ours.
    pub fn claim_job(&self, lock: &LockGuard, job: Id) -> Result<bool> {
        if self.job_is_live(&job, Some(lock))? {
            return Ok(false);
        }
        lock.set_job(Some(job))?;
        if self.job_is_live(&job, Some(lock))? {
            lock.set_job(None)?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Takes a shared (`exclusive = false`) or exclusive lock. While another
    /// process holds a conflicting one, waits up to the repository's lock
    /// retry time (see [`Repository::set_lock_retry`]), then fails with
    /// `Locked`.
    pub fn lock(&self, exclusive: bool) -> Result<LockGuard> {
        let (wait, stop) = self.lock_retry();
        let deadline = std::time::Instant::now() + wait;
        let mut pause = std::time::Duration::from_millis(200);
        loop {
            match self.try_lock(exclusive) {
                Err(RepoError::Locked { holder }) => {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        return Err(RepoError::Locked { holder });
                    }
                    // Sleep in small steps: an interrupt ends the wait.
                    let until = (now + pause).min(deadline);
                    while std::time::Instant::now() < until {
                        if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
                            return Err(RepoError::Cancelled);
                        }
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
                r => return r,
            }
        }
    }

    fn try_lock(&self, exclusive: bool) -> Result<LockGuard> {
        if let Some(h) = self.conflicting(exclusive, None)? {
            return Err(RepoError::Locked {
                holder: h.describe(),
            });
        }
        let written_at = std::time::Instant::now();
        let repository = self.config().id;
        let name = write_lock(
            &**self.storage(),
            self.key(),
            &repository,
            &LockInfo::new(exclusive),
        )?;
        if let Some(h) = self.conflicting(exclusive, Some(&name))? {
            release(&**self.storage(), &name);
            return Err(RepoError::Locked {
                holder: h.describe(),
            });
        }
        let name = Arc::new(Mutex::new(name));
        let job: Arc<Mutex<Option<Id>>> = Arc::new(Mutex::new(None));
        let written = Arc::new(Mutex::new(written_at));
        let stop = Arc::new(AtomicBool::new(false));
        let lost: Arc<Mutex<Option<Cancel>>> = Arc::new(Mutex::new(None));
        let refresher = {
            let (storage, key, name, stop, written, job) = (
                self.storage().clone(),
                self.key().clone(),
                name.clone(),
                stop.clone(),
                written.clone(),
                job.clone(),
            );
            let lost = lost.clone();
            std::thread::Builder::new()
                .name("lock-refresh".into())
                .spawn(move || {
                                        let mut last_try = std::time::Instant::now();
                    let mut last_ok = std::time::Instant::now();
                    while !stop.load(Ordering::SeqCst) {
                        std::thread::park_timeout(Duration::from_secs(1));
                        if last_try.elapsed() < REFRESH || stop.load(Ordering::SeqCst) {
                            continue;
                        }
                        last_try = std::time::Instant::now();
                        // The name's mutex is held across the rewrite, so a
                        // concurrent `set_job` cannot interleave with it.
                        let mut current = name.lock().expect("lock name");
                        let mut info = LockInfo::new(exclusive);
                        info.job = *job.lock().expect("lock job");
                        match write_lock(&*storage, &key, &repository, &info) {
                            Ok(new) => {
                                last_ok = std::time::Instant::now();
                                *written.lock().expect("lock time") = last_try;
                                let old = std::mem::replace(&mut *current, new);
                                release(&*storage, &old);
                            }
                            Err(e) if last_ok.elapsed() + REFRESH >= STALE_AFTER => {
                                if let Some(c) = lost.lock().expect("lock watcher").as_ref() {
                                    c.abort(format!(
                                        "lost the repository lock: it could not be refreshed for {} minutes ({e}); stopping before others take it for stale",
                                        last_ok.elapsed().as_secs() / 60
                                    ));
                                }
                            }
                            Err(_) => {}
                        }
                    }
                })
                .ok()
        };
        Ok(LockGuard {
            storage: self.storage().clone(),
            key: self.key().clone(),
            repository,
            job,
            name,
            exclusive,
            written,
            stop,
            refresher,
            lost,
        })
    }

    /// Removes stale locks (or all locks with `all`); returns how many.
    pub fn unlock(&self, all: bool) -> Result<usize> {
        self.require_deletes("unlock")?;
        let mut n = 0;
        for (name, info) in self.list_locks()? {
            if all || lock_is_stale(&name, &info) {
                self.storage().remove(ObjectKind::Lock, &name)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that has certainly exited: its pid is free (until reused,
    /// which the test does not wait for).
    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    #[test]
    fn a_dead_holder_on_this_machine_is_stale() {
        let info = LockInfo {
            pid: dead_pid(),
            ..LockInfo::new(true)
        };
        assert_eq!(info.location(), Where::Here);
        assert!(info.is_stale());
        let live = LockInfo::new(true);
        assert!(!live.is_stale());
    }

    /// Another machine or container with the same hostname: its pids are
    /// not ours to check, so a fresh lock of it is live whatever pid it
    /// names.
    #[test]
    fn a_lock_of_another_machine_or_container_sharing_the_hostname_is_live() {
        let pid = dead_pid();
        let other_machine = LockInfo {
            pid,
            machine: Some("another machine".into()),
            boot_id: Some("another boot".into()),
            ..LockInfo::new(true)
        };
        assert_eq!(other_machine.location(), Where::Elsewhere);
        assert!(!other_machine.is_stale());
        let other_container = LockInfo {
            pid,
            pid_ns: Some("pid:[1]".into()),
            ..LockInfo::new(true)
        };
        assert_eq!(other_container.location(), Where::Elsewhere);
        assert!(!other_container.is_stale());
        // Neither has a machine id, the boot ids differ: another machine
        // or a reboot cannot be told apart, so only age decides.
        let unknown = LockInfo {
            pid,
            machine: None,
            boot_id: Some("another boot".into()),
            ..LockInfo::new(true)
        };
        if machine().is_none() {
            assert_eq!(unknown.location(), Where::Elsewhere);
        }
        assert!(!unknown.is_stale());
    }

    /// The same machine (by its id) after a reboot: every lock of the
    /// earlier boot is stale, even if its pid is alive again.
    #[test]
    fn a_lock_of_an_earlier_boot_of_this_machine_is_stale() {
        if machine().is_none() || boot_id().is_none() {
            return; // nothing to tell a reboot by here
        }
        let info = LockInfo {
            pid: std::process::id(),
            boot_id: Some("an earlier boot".into()),
            ..LockInfo::new(true)
        };
        assert_eq!(info.location(), Where::EarlierBoot);
        assert!(info.is_stale());
    }
}
