//! `baton tag`: changes the tags of snapshots after the fact (restic's
//! `tag --add/--remove/--set`). A snapshot is named by the hash of its
//! bytes, so a change is a new snapshot (the same tree, time, host and
//! paths, naming the first of its line in `original`) and the deletion of
//! the old one, under the exclusive lock.
//!
//! Order of writes: the new snapshot, then the deletion of the old one: a
//! crash in between leaves both (the same tree twice; `tag` again, or
//! `forget`, settles it), never neither.

use baton_repo::progress::Cancel;
use baton_repo::{RepoError, Repository, Result};
use baton_storage::ObjectKind;
use baton_types::{Id, Snapshot};

/// What to do to each snapshot's tags: `set` first (if given, the tags
/// become exactly these), then `add`, then `remove`.
#[derive(Debug, Clone, Default)]
pub struct TagChange {
    pub set: Option<Vec<String>>,
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

impl TagChange {
    /// The tags `tags` become (sorted, each once).
    pub fn apply(&self, tags: &[String]) -> Vec<String> {
        let mut out: Vec<String> = match &self.set {
            Some(s) => s.clone(),
            None => tags.to_vec(),
        };
        out.extend(self.add.iter().cloned());
        out.retain(|t| !self.remove.contains(t) && !t.is_empty());
        out.sort();
        out.dedup();
        out
    }

    fn check(&self) -> Result<()> {
        let all = self
            .set
            .iter()
            .flatten()
            .chain(&self.add)
            .chain(&self.remove);
        for t in all {
            if t.contains(',') || t.len() > 256 || t.chars().any(char::is_control) {
                return Err(RepoError::Invalid(format!("{t:?} is not a tag")));
            }
        }
        if self.set.is_none() && self.add.is_empty() && self.remove.is_empty() {
            return Err(RepoError::Invalid(
                "nothing to change: give --add, --remove or --set".into(),
            ));
        }
        Ok(())
    }
}

/// One snapshot whose tags changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Retagged {
    pub original: Id,
    pub new: Id,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TagReport {
    pub changed: Vec<Retagged>,
    /// Snapshots whose tags were already what the change makes them.
    pub unchanged: u64,
}

/// Changes the tags of `snapshots`. Needs a key that may delete (the old
/// snapshot goes); takes the exclusive lock.
pub fn tag(
    repo: &mut Repository,
    snapshots: &[(Id, Snapshot)],
    change: &TagChange,
    cancel: &Cancel,
) -> Result<TagReport> {
    change.check()?;
    repo.require_deletes("tag")?;
    let lock = repo.lock(true)?;
    lock.abort_on_loss(cancel);
    let mut report = TagReport::default();
    for (id, snap) in snapshots {
        cancel.check()?;
        let mut have = snap.tags.clone();
        have.sort();
        have.dedup();
        let tags = change.apply(&snap.tags);
        if tags == have {
            report.unchanged += 1;
            continue;
        }
        let mut copy = snap.clone();
        copy.tags = tags.clone();
        copy.original = Some(snap.original.unwrap_or(*id));
        let (new, _) = repo.save_snapshot(&copy)?;
        if new != *id {
            repo.storage().remove(ObjectKind::Snapshot, &id.to_hex())?;
        }
        report.changed.push(Retagged {
            original: *id,
            new,
            tags,
        });
    }
    drop(lock);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_then_add_then_remove() {
        let c = TagChange {
            set: Some(vec!["b".into(), "a".into()]),
            add: vec!["c".into(), "a".into()],
            remove: vec!["b".into()],
        };
        assert_eq!(c.apply(&["x".into()]), vec!["a", "c"]);
        let add = TagChange {
            add: vec!["drill".into()],
            ..TagChange::default()
        };
        assert_eq!(add.apply(&["web".into()]), vec!["drill", "web"]);
        let clear = TagChange {
            set: Some(Vec::new()),
            ..TagChange::default()
        };
        assert!(clear.apply(&["web".into()]).is_empty());
        assert!(TagChange::default().check().is_err());
        let bad = TagChange {
            add: vec!["a,b".into()],
            ..TagChange::default()
        };
        assert!(bad.check().is_err());
    }
}
