//! `baton check`: verify that a repository is complete and undamaged.
//!
//! The structure pass reads every metadata object (keys, config, index
//! objects, snapshots, journal records), compares each content-addressed
//! object's bytes with its name, walks every tree reachable from a snapshot
//! once, and checks that every blob those trees reference is indexed and that
//! every index entry lies inside an existing pack of the right size. With
//! `--read-data` (or a subset of it) packs are then read whole, one at a
//! time: hash, header, agreement with the index, and every blob decrypted,
//! decompressed and hash-checked. Finally the snapshots are walked again for
//! only the blobs found missing or damaged, to name the files they affect.
//!
//! Problems never stop the check; each names the object it concerns.
//! Reading order follows the commit protocol backwards (snapshots, then
//! index objects, then packs, then journals), so a backup committing while
//! check runs cannot make it report a missing blob.

mod affected;
mod data;
mod structure;
mod trees;

use baton_format::pack::PackEntry;
use baton_repo::index::Index;
use baton_repo::progress::{Cancel, Progress};
use baton_repo::{Repository, Result};
use baton_types::{Id, Snapshot};
use std::collections::{BTreeMap, HashMap, HashSet};

pub(crate) use data::{PackSelection, verify_pack};
pub(crate) use structure::{blob_beyond_pack, layout_problem};

/// How much pack data `check` reads.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ReadData {
    /// Structure only: packs are listed and sized, not read.
    #[default]
    None,
    /// Every pack.
    All,
    /// Part of the packs.
    Subset(Subset),
}

/// `--read-data-subset`: which packs to read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Subset {
    /// A random share of the packs, in percent (0 < p <= 100).
    Percent(f64),
    /// Group `k` (1-based) of `m` groups of packs, chosen by pack id, so that
    /// `1/m` ... `m/m` over `m` runs read every pack exactly once.
    Group { k: u64, m: u64 },
    /// Random packs up to this many bytes in total.
    Bytes(u64),
}

impl std::str::FromStr for Subset {
    type Err = String;

    /// Parses `N%`, `K/M` or a size such as `500M` (K, M, G, T: powers of 1024).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || {
            format!(
                "invalid subset {s:?}: expected N% (e.g. 10%), K/M (e.g. 2/5) or a size (e.g. 500M)"
            )
        };
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!("subset {s}: the percentage must be in (0, 100]"));
            }
            return Ok(Subset::Percent(p));
        }
        if let Some((k, m)) = s.split_once('/') {
            let k: u64 = k.trim().parse().map_err(|_| bad())?;
            let m: u64 = m.trim().parse().map_err(|_| bad())?;
            if m == 0 || k == 0 || k > m {
                return Err(format!("subset {s}: need 1 <= K <= M"));
            }
            return Ok(Subset::Group { k, m });
        }
        let (digits, mult) = match s.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let shift = match c.to_ascii_uppercase() {
                    'B' => 0,
                    'K' => 10,
                    'M' => 20,
                    'G' => 30,
                    'T' => 40,
                    _ => return Err(bad()),
                };
                (&s[..i], 1u64 << shift)
            }
            _ => (s, 1),
        };
        let n: u64 = digits.trim().parse().map_err(|_| bad())?;
        match n.checked_mul(mult) {
            Some(b) if b > 0 => Ok(Subset::Bytes(b)),
            _ => Err(bad()),
        }
    }
}

/// Options of `baton check`.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    pub read_data: ReadData,
}

/// How serious a problem is: errors mean data is missing or damaged;
/// warnings (packs nothing references, a parent snapshot that is gone) are
/// states the repository reaches normally and prune cleans up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The stored bytes do not hash to the object's name (damaged, or renamed).
    HashMismatch,
    /// A listed object's name is not a valid id.
    InvalidName,
    /// The object cannot be read from storage.
    Unreadable,
    /// The object cannot be decrypted or decoded.
    Damaged,
    /// An index (or journal) names a pack that does not exist.
    MissingPack,
    /// A tree references a blob that no index lists.
    MissingBlob,
    /// A blob cannot be read, decrypted, or does not hash to its id.
    DamagedBlob,
    /// Index entries disagree with the pack they describe.
    IndexMismatch,
    /// A pack that no index and no unfinished backup references.
    UnreferencedPack,
}

/// One problem found by `check`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    pub severity: Severity,
    pub kind: ProblemKind,
    /// The object concerned: `"<kind> <id>"`, e.g. `"pack 1a2b…"`, `"tree …"`,
    /// `"blob …"`, `"index …"`, `"snapshot …"`, `"key …"`, `"journal …"`, `"config"`.
    pub object: String,
    pub message: String,
    /// Snapshots whose contents are affected (full ids).
    pub snapshots: Vec<Id>,
    /// Snapshot paths affected: files that lost content, directories whose
    /// listing is lost.
    pub paths: Vec<String>,
    /// Blobs lost through this problem (for the affected-paths pass).
    #[serde(skip)]
    pub(crate) blobs: Vec<Id>,
}

/// The result of a check.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    pub problems: Vec<Problem>,
    /// Packs read whole and verified.
    pub packs_checked: u64,
    /// Blobs decrypted and hash-checked while reading packs.
    pub blobs_checked: u64,
    pub bytes_read: u64,
    /// Snapshot objects found.
    pub snapshots: u64,
    /// Packs in storage.
    pub packs: u64,
    pub index_objects: u64,
    /// Distinct trees loaded.
    pub trees_checked: u64,
    /// Damaged copies of blobs recorded by this check (see [`check`]): the
    /// next backup stores fresh copies of their content.
    pub damage_recorded: u64,
    /// Problems of each severity (`--json`: `error_count`, `warning_count`;
    /// `errors` names lists everywhere in Baton's JSON).
    #[serde(rename = "error_count")]
    pub errors: u64,
    #[serde(rename = "warning_count")]
    pub warnings: u64,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.errors == 0
    }
}

/// Everything the passes share.
pub(crate) struct Checker<'a> {
    pub repo: &'a Repository,
    pub progress: &'a dyn Progress,
    pub cancel: &'a Cancel,
    pub report: CheckReport,
    /// Blob locations from every readable, non-superseded index object.
    pub index: Index,
    /// Per indexed pack: its entries and the index object listing it.
    pub indexed_packs: HashMap<Id, (Vec<PackEntry>, String)>,
    /// Packs named only by journals of unfinished jobs, with their entries.
    pub job_packs: HashMap<Id, Vec<PackEntry>>,
    /// Packs in storage and their sizes.
    pub stored_packs: BTreeMap<Id, u64>,
    /// Packs that are missing or too short (their blobs are all lost).
    pub bad_packs: HashSet<Id>,
    pub snapshots: Vec<(Id, Snapshot)>,
    /// Blobs found missing or damaged.
    pub bad_blobs: HashSet<Id>,
    /// Fixed index roots of images already checked.
    pub images_seen: HashSet<Id>,
}

impl<'a> Checker<'a> {
    pub fn new(repo: &'a Repository, progress: &'a dyn Progress, cancel: &'a Cancel) -> Self {
        Checker {
            repo,
            progress,
            cancel,
            report: CheckReport::default(),
            index: Index::new(),
            indexed_packs: HashMap::new(),
            job_packs: HashMap::new(),
            stored_packs: BTreeMap::new(),
            images_seen: HashSet::new(),
            bad_packs: HashSet::new(),
            snapshots: Vec::new(),
            bad_blobs: HashSet::new(),
        }
    }

    /// Records a problem; `blobs` are the blobs it makes unreadable.
    pub fn problem(
        &mut self,
        severity: Severity,
        kind: ProblemKind,
        object: String,
        message: String,
        blobs: Vec<Id>,
    ) {
        self.bad_blobs.extend(blobs.iter().copied());
        self.report.problems.push(Problem {
            severity,
            kind,
            object,
            message,
            snapshots: Vec::new(),
            paths: Vec::new(),
            blobs,
        });
    }

    pub fn error(&mut self, kind: ProblemKind, object: String, message: String, blobs: Vec<Id>) {
        self.problem(Severity::Error, kind, object, message, blobs);
    }
}

/// Checks the repository. Takes a shared lock for its duration. Problems
/// found go into the report; an `Err` means the check itself could not run
/// (storage unreachable, lock conflict, cancelled).
pub fn check(
    repo: &Repository,
    opts: &CheckOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<CheckReport> {
    let _lock = repo.lock(false)?;
    let mut c = Checker::new(repo, progress, cancel);
    c.check_keys_and_config()?;
    c.load_snapshots()?;
    c.load_index()?;
    c.list_packs()?;
    c.load_journals()?;
    c.check_packs_against_index();
    c.check_trees()?;
    let selection = match opts.read_data {
        ReadData::None => None,
        ReadData::All => Some(PackSelection::All),
        ReadData::Subset(s) => Some(PackSelection::Subset(s)),
    };
    if let Some(sel) = selection {
        let packs = data::select_packs(&c.stored_packs, sel);
        let total = packs.iter().map(|(_, size)| size).sum();
        progress.set_total(packs.len() as u64, total);
        // The workers read the expected entries while the results go into
        // the checker: lend the maps out for the duration.
        let indexed = std::mem::take(&mut c.indexed_packs);
        let jobs = std::mem::take(&mut c.job_packs);
        data::check_packs(&mut c, &packs, &indexed, &jobs);
        c.indexed_packs = indexed;
        c.job_packs = jobs;
        cancel.check()?;
    }
    if !c.bad_blobs.is_empty() {
        affected::attribute(&mut c)?;
    }
    record_damage(&mut c)?;
    let mut report = c.report;
    report.problems.sort_by_key(|p| p.severity);
    report.errors = report
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count() as u64;
    report.warnings = report.problems.len() as u64 - report.errors;
    Ok(report)
}

/// Records the copies of blobs found damaged or in missing packs, in an
/// index object of their own, so that every later backup leaves them out and
/// stores a fresh copy of their content instead of deduplicating against
/// them (`repair packs` then replaces the damaged packs). Damage already
/// recorded is not recorded again.
fn record_damage(c: &mut Checker<'_>) -> Result<()> {
    let mut pairs = std::collections::BTreeSet::new();
    for p in &c.report.problems {
        if p.severity != Severity::Error
            || !matches!(p.kind, ProblemKind::DamagedBlob | ProblemKind::MissingPack)
        {
            continue;
        }
        // The tree pass reports trees it cannot load for any reason (a
        // transient read, a validation failure): not recorded as damage.
        if p.object.starts_with("tree ") {
            continue;
        }
        let named = p
            .object
            .strip_prefix("pack ")
            .and_then(|h| Id::from_hex(h).ok());
        for b in &p.blobs {
            // Without a named pack, only a blob held by exactly one pack
            // is recorded (never a guess between a damaged and a good copy).
            let pack = named.or_else(|| {
                let mut holders = c
                    .indexed_packs
                    .iter()
                    .filter(|(_, (es, _))| es.iter().any(|e| e.id == *b))
                    .map(|(id, _)| *id);
                match (holders.next(), holders.next()) {
                    (Some(one), None) => Some(one),
                    _ => None,
                }
            });
            let Some(pack) = pack else { continue };
            let listed = c
                .indexed_packs
                .get(&pack)
                .is_some_and(|(es, _)| es.iter().any(|e| e.id == *b));
            if listed && !c.index.is_damaged(&pack, b) {
                pairs.insert((pack, *b));
            }
        }
    }
    if pairs.is_empty() {
        return Ok(());
    }
    let f = baton_format::index::IndexFile {
        supersedes: Vec::new(),
        packs: Vec::new(),
        damaged: pairs.into_iter().collect(),
    };
    match c
        .repo
        .save_object(baton_storage::ObjectKind::Index, &f.encode())
    {
        Ok(_) => c.report.damage_recorded = f.damaged.len() as u64,
        // A read-only repository: the check stands, the damage stays unrecorded.
        Err(e) => c.problem(
            Severity::Warning,
            ProblemKind::Unreadable,
            "index".into(),
            format!("could not record the damage found, so later backups may still reuse it: {e}"),
            vec![],
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_parsing() {
        assert_eq!("10%".parse::<Subset>(), Ok(Subset::Percent(10.0)));
        assert_eq!("2.5%".parse::<Subset>(), Ok(Subset::Percent(2.5)));
        assert_eq!("2/5".parse::<Subset>(), Ok(Subset::Group { k: 2, m: 5 }));
        assert_eq!("500M".parse::<Subset>(), Ok(Subset::Bytes(500 << 20)));
        assert_eq!("1g".parse::<Subset>(), Ok(Subset::Bytes(1 << 30)));
        assert_eq!("4096".parse::<Subset>(), Ok(Subset::Bytes(4096)));
        for bad in ["0%", "101%", "0/3", "4/3", "x", "", "5Q", "0", "-1%", "1/0"] {
            assert!(bad.parse::<Subset>().is_err(), "{bad} was accepted");
        }
    }
}
