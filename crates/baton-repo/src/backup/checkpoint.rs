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

use crate::journal::{JournalWriter, to_journal_pack};
use crate::{Repository, Result};
use baton_format::index::IndexPack;
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
    pub fn finished(&mut self, path: &[u8], offset: u64, node: &Node, deps: Vec<Id>) {
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
                // A complete directory covers the entries below it.
                let mut below = p.entry.path.0.clone();
                below.push(b'/');
                self.ready.retain(|e| !e.path.0.starts_with(&below));
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
