//! `restore --dry-run`: what a restore would do to a target, found without
//! changing it. The walk is the restore's (the same selection, the same
//! `--overwrite` and `--delete` rules) but built only on the target's
//! read-only calls, so a dry run cannot write by mistake: an existing file
//! the restore would verify chunk by chunk is read and hashed here too, and
//! reported `unchanged` only when every chunk matches.

use super::target::{EntryStat, Existing, Target};
use super::{Overwrite, RestoreOptions, Selection};
use baton_repo::browse::{WalkBudget, find_node};
use baton_repo::progress::Cancel;
use baton_repo::{RepoError, Repository, Result};
use baton_types::{Id, Node, NodeKind, Snapshot};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What a restore would do to one entry of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanAction {
    /// Nothing is there: it would be created.
    Restore,
    /// Something else is there: it would be replaced or rewritten.
    Update,
    /// It is there as the snapshot has it (its metadata would be applied).
    Unchanged,
    /// It differs, but `--overwrite` keeps it as it is.
    Skip,
    /// `--delete` would remove it.
    Delete,
}

impl PlanAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanAction::Restore => "restore",
            PlanAction::Update => "update",
            PlanAction::Unchanged => "unchanged",
            PlanAction::Skip => "skip",
            PlanAction::Delete => "delete",
        }
    }
}

/// What a restore would do, in total.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestorePlan {
    /// Entries (files, directories, others) that would be created.
    pub restore: u64,
    pub update: u64,
    pub unchanged: u64,
    pub skip: u64,
    pub delete: u64,
    /// Size of the files that would be created or rewritten.
    pub bytes_to_write: u64,
    /// Of those, bytes that would be loaded from the repository (an existing
    /// file's chunks that already match are kept).
    pub bytes_to_fetch: u64,
    /// (path, message) of every entry that could not be examined.
    pub errors: Vec<(String, String)>,
}

struct Planner<'a> {
    repo: &'a Repository,
    target: Option<&'a Target>,
    budget: WalkBudget,
    selection: Selection,
    opts: &'a RestoreOptions,
    cancel: &'a Cancel,
    plan: RestorePlan,
    report: &'a mut dyn FnMut(PlanAction, &Path, u64),
    /// Hard-linked files seen: later links are links, not data.
    linked: std::collections::HashSet<(u64, u64)>,
}

/// Works out what restoring `subpath` (or the whole snapshot) into
/// `target` with `opts` would do, calling `report` for every entry that
/// would change (and every unchanged one); nothing is written, and a
/// target that does not exist stays so.
pub fn plan_restore(
    repo: &Repository,
    snapshot: &Snapshot,
    subpath: Option<&str>,
    target: &Path,
    opts: &RestoreOptions,
    report: &mut dyn FnMut(PlanAction, &Path, u64),
    cancel: &Cancel,
) -> Result<RestorePlan> {
    let _lock = repo.lock(false)?;
    let sub = subpath.unwrap_or("/");
    let (node, subtree) = find_node(repo, &snapshot.tree, sub)?;
    let handle = Target::open_existing(target).map_err(|e| RepoError::io(target, e))?;
    let mut p = Planner {
        repo,
        target: handle.as_ref(),
        budget: WalkBudget::for_snapshot(snapshot),
        selection: Selection::new(opts, snapshot)?,
        opts,
        cancel,
        plan: RestorePlan::default(),
        report,
        linked: Default::default(),
    };
    let exists = p.target.is_some();
    match (node, subtree) {
        (Some(n), _) if n.kind != NodeKind::Dir => {
            let dst = target.join(n.name.as_os());
            p.leaf(&n, &dst, exists)?;
        }
        (_, Some(tree)) => {
            p.tree(&tree, target, sub, false, exists)?;
        }
        (_, None) => {}
    }
    Ok(p.plan)
}

impl Planner<'_> {
    fn note(&mut self, action: PlanAction, path: &Path, size: u64) {
        match action {
            PlanAction::Restore => self.plan.restore += 1,
            PlanAction::Update => self.plan.update += 1,
            PlanAction::Unchanged => self.plan.unchanged += 1,
            PlanAction::Skip => self.plan.skip += 1,
            PlanAction::Delete => self.plan.delete += 1,
        }
        (self.report)(action, path, size);
    }

    fn error(&mut self, path: &Path, msg: String) {
        self.plan.errors.push((path.display().to_string(), msg));
    }

    /// What is at `dst` and its status (one `fstatat`): nothing when the
    /// directory holding it does not exist; `None` if it cannot be examined.
    fn existing(
        &mut self,
        dst: &Path,
        parent_exists: bool,
    ) -> Option<(Existing, Option<EntryStat>)> {
        let Some(t) = self.target.filter(|_| parent_exists) else {
            return Some((Existing::Nothing, None));
        };
        match t.existing_stat(dst) {
            Ok(e) => Some(e),
            Err(e) => {
                self.error(dst, format!("cannot examine: {e}"));
                None
            }
        }
    }

    /// Returns whether anything below (or the directory itself) is selected.
    fn tree(
        &mut self,
        tree: &Id,
        dir: &Path,
        prefix: &str,
        selected: bool,
        exists: bool,
    ) -> Result<bool> {
        let t = self.repo.read_tree(tree)?;
        self.budget.enter(tree, t.nodes.len())?;
        let mut any = false;
        for n in &t.nodes {
            self.cancel.check()?;
            let (p, sel) = match self.selection.pick(prefix, n, selected) {
                Ok(Some(picked)) => picked,
                Ok(None) => continue,
                Err(e) => {
                    self.error(dir, e);
                    continue;
                }
            };
            let dst = dir.join(n.name.as_os());
            if n.kind == NodeKind::Dir {
                let Some((existing, stat)) = self.existing(&dst, exists) else {
                    continue;
                };
                if sel
                    && existing != Existing::Dir
                    && let Some(st) = stat
                    && super::keeps_in_the_way(self.opts.overwrite, st.mtime_ns, n.mtime_ns)
                {
                    self.note(PlanAction::Skip, &dst, 0);
                    continue;
                }
                let is_dir = existing == Existing::Dir;
                // Whatever else is in the way is replaced.
                let action = match existing {
                    Existing::Dir => None,
                    Existing::Nothing => Some(PlanAction::Restore),
                    _ => Some(PlanAction::Update),
                };
                // Listed before what it holds; an unselected directory only
                // once something below it turns out selected.
                if sel && let Some(a) = action {
                    self.note(a, &dst, 0);
                }
                let inner = match n.subtree {
                    Some(sub) => self.tree(&sub, &dst, &p, sel, is_dir)?,
                    None => false,
                };
                if !sel
                    && inner
                    && let Some(a) = action
                {
                    self.note(a, &dst, 0);
                }
                any |= sel || inner;
            } else if sel {
                self.leaf(n, &dst, exists)?;
                any = true;
            }
        }
        if self.opts.delete && exists {
            self.delete_extra(&t, dir, prefix, selected);
        }
        self.budget.leave();
        Ok(any)
    }

    /// `--delete`: what the target directory holds that the snapshot's does
    /// not, among the selected paths at or below the snapshot's sources.
    fn delete_extra(&mut self, t: &baton_types::Tree, dir: &Path, prefix: &str, selected: bool) {
        let Some(target) = self.target else { return };
        match self.selection.extras(target, t, dir, prefix, selected) {
            Ok(extras) => {
                for dst in extras {
                    self.note(PlanAction::Delete, &dst, 0);
                }
            }
            Err(e) => self.error(dir, format!("cannot list for --delete: {e}")),
        }
    }

    fn leaf(&mut self, n: &Node, dst: &Path, parent_exists: bool) -> Result<()> {
        if n.kind == NodeKind::Image {
            self.error(
                dst,
                format!(
                    "a block image: restore it with `baton restore SNAPSHOT:PATH --target FILE` ({})",
                    n.name.lossy()
                ),
            );
            return Ok(());
        }
        let size = match n.kind {
            NodeKind::File if n.links > 1 && !self.linked.insert((n.device_id, n.inode)) => 0,
            NodeKind::File => n.size,
            _ => 0,
        };
        let Some((existing, stat)) = self.existing(dst, parent_exists) else {
            return Ok(());
        };
        if existing == Existing::Nothing {
            self.plan.bytes_to_write += size;
            self.plan.bytes_to_fetch += size;
            self.note(PlanAction::Restore, dst, size);
            return Ok(());
        }
        let size_and_mtime = stat.map(|st| (st.size, st.mtime_ns));
        let same_stat = existing == Existing::File
            && n.kind == NodeKind::File
            && n.links <= 1
            && size_and_mtime.is_some_and(|(s, m)| s == n.size && m == n.mtime_ns);
        let keep = match self.opts.overwrite {
            Overwrite::Never => Some(PlanAction::Skip),
            Overwrite::IfNewer if size_and_mtime.is_some_and(|(_, m)| m >= n.mtime_ns) => {
                Some(PlanAction::Skip)
            }
            Overwrite::IfNewer => None,
            Overwrite::IfChanged if same_stat => Some(PlanAction::Unchanged),
            Overwrite::Always if same_stat && self.opts.trust_finished => {
                Some(PlanAction::Unchanged)
            }
            Overwrite::IfChanged | Overwrite::Always => None,
        };
        if let Some(action) = keep {
            // Kept as it is: "skip" is only for what differs.
            let action = if action == PlanAction::Skip && same_stat {
                PlanAction::Unchanged
            } else {
                action
            };
            self.note(action, dst, size);
            return Ok(());
        }
        // Rewritten: a regular file of ours in place is verified chunk by
        // chunk and only what differs is fetched; anything else is replaced.
        if existing == Existing::File && n.kind == NodeKind::File && n.links <= 1 {
            let differing = self.differing_bytes(n, dst)?;
            if differing == 0 && size_and_mtime.is_some_and(|(s, _)| s == n.size) {
                self.note(PlanAction::Unchanged, dst, size);
            } else {
                self.plan.bytes_to_write += size;
                self.plan.bytes_to_fetch += differing;
                self.note(PlanAction::Update, dst, size);
            }
            return Ok(());
        }
        self.plan.bytes_to_write += size;
        self.plan.bytes_to_fetch += size;
        self.note(PlanAction::Update, dst, size);
        Ok(())
    }

    /// Bytes of the snapshot's file whose chunks the existing file at `dst`
    /// does not hold in place (read and hashed, as the restore would).
    fn differing_bytes(&mut self, n: &Node, dst: &Path) -> Result<u64> {
        let Some(target) = self.target else {
            return Ok(n.size);
        };
        let f = match target.open_read(dst) {
            Ok(f) => f,
            Err(e) => {
                self.error(dst, format!("cannot read: {e}"));
                return Ok(n.size);
            }
        };
        let old_len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let (mut offset, mut differing) = (0u64, 0u64);
        let mut buf = Vec::new();
        for id in &n.content {
            self.cancel.check()?;
            let Some(len) = self.repo.index().plain_len_any(id) else {
                return Err(RepoError::Damaged(format!(
                    "chunk {} of {} is in no pack",
                    id.short(),
                    dst.display()
                )));
            };
            let same = offset + len <= old_len && {
                buf.resize(len as usize, 0);
                f.read_exact_at(&mut buf, offset).is_ok() && &self.repo.key().blob_id(&buf) == id
            };
            if !same {
                differing += len;
            }
            offset += len;
        }
        Ok(differing)
    }
}
