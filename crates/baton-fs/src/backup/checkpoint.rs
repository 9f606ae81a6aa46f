//! Turning the archiver's progress into journal records.
//!
//! Every finished entry (file, link, directory...) is queued with the new
//! blobs it depends on. When the packer reports a pack as durably stored,
//! those blobs stop being pending; entries at the head of the queue whose
//! blobs are all stored become durable, in stream order. A record is written
//! whenever packs were stored, or at least every `interval` while entries
//! became durable without new packs (unchanged files). Records are written
//! from the archiver's thread, so a record never names a pack before the
//! pack is stored.

use baton_format::index::IndexPack;
use baton_repo::journal::{JournalWriter, to_journal_pack};
use baton_repo::{Repository, Result};
use baton_types::{CatalogEntry, FsName, Id, JournalPack, Node, NodeKind};
use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

struct Pending {
    entry: CatalogEntry,
    deps: Vec<Id>,
}

pub(super) struct Checkpointer {
    writer: JournalWriter,
    queue: VecDeque<Pending>,
    packs: Vec<JournalPack>,
    ready: Vec<CatalogEntry>,
    position: u64,
    last_record: Instant,
    interval: Duration,
    sources: Vec<Vec<u8>>,
}

impl Checkpointer {
    pub fn new(writer: JournalWriter, interval: Duration, sources: Vec<Vec<u8>>) -> Self {
        Checkpointer {
            writer,
            queue: VecDeque::new(),
            packs: Vec::new(),
            ready: Vec::new(),
            position: 0,
            last_record: Instant::now(),
            interval,
            sources,
        }
    }

    pub fn job(&self) -> Id {
        self.writer.job()
    }

    /// Queues a finished entry; `deps` are its blobs not yet stored.
    ///
    /// A finished directory takes the place of the entries below it that
    /// are still waiting (they are the end of the queue: the walk finishes a
    /// directory right after everything below it), and their blobs become
    /// its own: it is durable exactly when they all are, and then covers
    /// them. So the queue holds a few entries per open directory, not every
    /// file walked while a pack fills (an incremental backup that changes a
    /// little early on would otherwise hold a node for every later file).
    pub fn finished(&mut self, path: &[u8], offset: u64, node: &Node, mut deps: Vec<Id>) {
        if node.kind == NodeKind::Dir {
            let below = below(path);
            let mut merged = false;
            while self
                .queue
                .back()
                .is_some_and(|p| p.entry.path.0.starts_with(&below))
            {
                let p = self.queue.pop_back().expect("checked above");
                deps.extend(p.deps);
                merged = true;
            }
            if merged {
                deps.sort_unstable();
                deps.dedup();
            }
        }
        let depth = path.split(|&b| b == b'/').filter(|c| !c.is_empty()).count() as u32;
        self.queue.push_back(Pending {
            entry: CatalogEntry {
                path: FsName(path.to_vec()),
                depth,
                offset,
                node: node.clone(),
            },
            deps,
        });
    }

    /// Takes note of stored packs, moves durable entries to the next record,
    /// and writes a record when one is due. `pending` holds the blobs queued
    /// but not yet stored; stored blobs are removed from it here.
    pub fn pump(
        &mut self,
        repo: &Repository,
        stored: Vec<IndexPack>,
        pending: &mut HashSet<Id>,
        force: bool,
    ) -> Result<()> {
        for p in &stored {
            for b in &p.blobs {
                pending.remove(&b.id);
            }
            self.packs.push(to_journal_pack(p));
        }
        while let Some(head) = self.queue.front() {
            if head.deps.iter().any(|d| pending.contains(d)) {
                break;
            }
            let p = self.queue.pop_front().expect("head exists");
            self.position = p.entry.offset;
            if p.entry.node.kind == NodeKind::Dir {
                // A complete directory covers the entries below it: those
                // already durable are the end of `ready`.
                let below = below(&p.entry.path.0);
                while self
                    .ready
                    .pop_if(|e| e.path.0.starts_with(&below))
                    .is_some()
                {}
            }
            self.ready.push(p.entry);
        }
        let due = !self.packs.is_empty()
            || (!self.ready.is_empty() && (force || self.last_record.elapsed() >= self.interval));
        if due {
            let completed: Vec<String> = self
                .ready
                .iter()
                .filter(|e| self.sources.contains(&e.path.0))
                .map(|e| e.path.lossy())
                .collect();
            self.writer.append(
                repo,
                None,
                std::mem::take(&mut self.packs),
                self.position,
                std::mem::take(&mut self.ready),
                completed,
            )?;
            self.last_record = Instant::now();
        }
        Ok(())
    }
}

/// The prefix of every path below directory `path`.
fn below(path: &[u8]) -> Vec<u8> {
    let mut b = path.to_vec();
    if b.last() != Some(&b'/') {
        b.push(b'/');
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_format::pack::PackEntry;
    use baton_repo::InitOptions;
    use baton_storage::LocalStorage;
    use baton_types::{BlobType, JobManifest};
    use std::sync::Arc;

    fn node(name: &str, kind: NodeKind) -> Node {
        Node {
            name: FsName::from(name),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            mtime_ns: 1,
            atime_ns: 1,
            ctime_ns: 1,
            inode: 1,
            device_id: 1,
            links: 1,
            size: 10,
            rdev: 0,
            content: Vec::new(),
            subtree: None,
            link_target: None,
            xattrs: Vec::new(),
            image: None,
        }
    }

    #[test]
    fn a_finished_directory_takes_the_place_of_its_waiting_entries() {
        let d = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            kdf: baton_repo::kdf_params(8192, 1),
            ..InitOptions::default()
        };
        let repo = Repository::init(
            Arc::new(LocalStorage::new(d.path().join("r"))),
            b"pw",
            &opts,
        )
        .unwrap();
        let manifest = JobManifest {
            hostname: "h".into(),
            paths: vec!["/s".into()],
            tags: Vec::new(),
            parent: None,
            started: "2026-01-01T00:00:00Z".into(),
            image: None,
        };
        let writer = JournalWriter::create(&repo, manifest).unwrap();
        let mut c = Checkpointer::new(writer, Duration::from_secs(3600), vec![b"/s".to_vec()]);
        let x = Id::from_bytes([7; 32]);
        let mut pending: HashSet<Id> = [x].into_iter().collect();
        // /s/a/f0 waits for blob x; 1000 files after it in /s/a and /s/a/b.
        c.finished(b"/s/a/f0", 10, &node("f0", NodeKind::File), vec![x]);
        for i in 1..500u64 {
            let name = format!("f{i}");
            c.finished(
                format!("/s/a/{name}").as_bytes(),
                10 + i * 10,
                &node(&name, NodeKind::File),
                vec![],
            );
        }
        for i in 0..500u64 {
            let name = format!("g{i}");
            c.finished(
                format!("/s/a/b/{name}").as_bytes(),
                5000 + i * 10,
                &node(&name, NodeKind::File),
                vec![],
            );
        }
        c.finished(b"/s/a/b", 10_000, &node("b", NodeKind::Dir), vec![]);
        assert_eq!(c.queue.len(), 501, "/s/a/b replaced its 500 entries");
        c.finished(b"/s/a", 10_000, &node("a", NodeKind::Dir), vec![]);
        assert_eq!(c.queue.len(), 1, "/s/a replaced everything below it");
        assert_eq!(
            c.queue[0].deps,
            vec![x],
            "and waits for what they waited for"
        );
        c.pump(&repo, Vec::new(), &mut pending, true).unwrap();
        assert_eq!(c.queue.len(), 1, "not durable before x is stored");
        let pack = IndexPack {
            id: Id::from_bytes([9; 32]),
            blobs: vec![PackEntry {
                blob_type: BlobType::Data,
                id: x,
                offset: 0,
                length: 50,
                raw_length: 10,
                compressed: false,
            }],
        };
        c.pump(&repo, vec![pack], &mut pending, true).unwrap();
        assert!(c.queue.is_empty());
        let job = &baton_repo::journal::list_jobs(&repo).unwrap()[0];
        assert_eq!(job.position, 10_000);
        let paths: Vec<&[u8]> = job.catalog.keys().map(|k| k.as_slice()).collect();
        assert_eq!(
            paths,
            vec![&b"/s/a"[..]],
            "the directory covers its contents"
        );
    }
}
