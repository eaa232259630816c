//! Message writes held in memory until the next group commit.
//!
//! Publishers only record what must change; the commit thread writes each batch to sled just
//! before its fsync. A message acknowledged before its batch is written therefore never touches
//! the disk at all: its entry write and its entry delete cancel out here. This is what keeps
//! persistent messaging cheap when consumers keep up, and it moves the encoding and tree work
//! off the connection tasks onto the commit thread. The publisher confirm still waits for the
//! fsync that follows the batch (or for the acknowledgement that made the write unnecessary).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rosetta_core::message::Message;
use rosetta_core::store::MessageSummary;

#[derive(Default)]
pub(crate) struct Pending {
    /// Bodies referenced by an entry but not yet written.
    pub bodies: HashMap<u64, Arc<Message>>,
    /// Entries not yet written: (queue, seq) -> (message summary, redelivered).
    pub puts: HashMap<(u64, u64), (MessageSummary, bool)>,
    /// Written entries to delete.
    pub deletes: Vec<(u64, u64)>,
    /// Per queue, the highest seq of a written entry delivered since the last batch (see
    /// `delivered` in the crate docs).
    pub delivered: HashMap<u64, u64>,
    /// Bodies in sled's `bodies` tree (an older layout) whose last entry went.
    pub body_deletes: Vec<u64>,
    /// Bodies compaction moved whose last entry went: their `moved` records go.
    pub moved_deletes: Vec<u64>,
    /// Bodies the commit thread has taken from `bodies` and is writing right now, so that a
    /// reader finds a body between the moment it leaves `bodies` and the moment sled has it.
    /// Not part of a batch: `is_empty` ignores it.
    pub writing: Option<Arc<HashMap<u64, Arc<Message>>>>,
    /// Entries in `puts` that a failed commit may already have handed to sled: cancelling one
    /// of them must also delete it there (see [`Pending::restore`]). Empty unless a commit
    /// failed.
    pub maybe_written: HashSet<(u64, u64)>,
    /// Durable queues deleted since the store opened. Their deletion settles every entry they
    /// held, so a later enqueue, acknowledgement or redelivery mark for one of them (a consumer
    /// acking what it received before the queue went) changes nothing: an acknowledgement
    /// would otherwise release a body reference the deletion already released, and free a body
    /// that another queue still holds. Queue ids are never reused while the store is open, so
    /// the set only grows, by one id per deleted durable queue. Outlives each batch.
    pub deleted_queues: HashSet<u64>,
    /// Deleted queues whose written entries the commit thread is still removing from sled, a
    /// bounded number per commit (see `Writer::purge`). Outlives each batch.
    pub purging: Vec<u64>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.bodies.is_empty()
            && self.puts.is_empty()
            && self.deletes.is_empty()
            && self.delivered.is_empty()
            && self.body_deletes.is_empty()
            && self.moved_deletes.is_empty()
    }

    /// Writes that no caller waits on (deletes and delivery marks), so none requests their
    /// flush.
    pub fn unrequested_writes(&self) -> usize {
        self.deletes.len()
            + self.delivered.len()
            + self.body_deletes.len()
            + self.moved_deletes.len()
    }

    /// Takes the writes buffered so far for the commit thread, leaving behind what outlives a
    /// batch: the deleted queues and the ones still being purged.
    pub fn take_batch(&mut self) -> Pending {
        let outlives = Pending {
            deleted_queues: std::mem::take(&mut self.deleted_queues),
            purging: std::mem::take(&mut self.purging),
            ..Pending::default()
        };
        std::mem::replace(self, outlives)
    }

    /// Whether queue `queue` was deleted, which settled all of its entries.
    pub fn is_deleted(&self, queue: u64) -> bool {
        // The emptiness check keeps the usual case, no deleted queue, to one branch.
        !self.deleted_queues.is_empty() && self.deleted_queues.contains(&queue)
    }

    /// Whether body `id` is being written right now.
    pub fn is_writing(&self, id: u64) -> bool {
        self.writing.as_ref().is_some_and(|w| w.contains_key(&id))
    }

    /// A body not yet on disk, if it is waiting here or being written.
    pub fn body(&self, id: u64) -> Option<Arc<Message>> {
        self.bodies
            .get(&id)
            .or_else(|| self.writing.as_ref().and_then(|w| w.get(&id)))
            .cloned()
    }

    /// Takes back a batch whose commit failed, so the next commit writes it together with what
    /// was buffered meanwhile (its bodies are put back by the caller, who knows which are still
    /// referenced). Puts come before deletes within a commit, so an entry acknowledged while
    /// its write was failing is still deleted after it.
    pub fn restore(&mut self, failed: Pending) {
        for (key, put) in failed.puts {
            // A queue deleted meanwhile settled its entries: the purge removes whatever the
            // failed commit left of this one in sled and releases its reference then.
            if self.is_deleted(key.0) {
                continue;
            }
            // sled may have taken the entry before the failure; if its put is cancelled now,
            // the entry must still be deleted there.
            self.maybe_written.insert(key);
            self.puts.insert(key, put);
        }
        self.maybe_written.extend(failed.maybe_written);
        self.deletes.extend(failed.deletes);
        for (queue, seq) in failed.delivered {
            let mark = self.delivered.entry(queue).or_default();
            *mark = (*mark).max(seq);
        }
        self.body_deletes.extend(failed.body_deletes);
        self.moved_deletes.extend(failed.moved_deletes);
    }

    /// Cancels the write of entry `key`; true if it must be deleted from sled instead (it was
    /// written, or maybe written by a failed commit).
    pub fn cancel_put(&mut self, key: (u64, u64)) -> bool {
        let unwritten = self.puts.remove(&key).is_some();
        // The emptiness check keeps the usual case, no failed commit, to one branch.
        let maybe_written = !self.maybe_written.is_empty() && self.maybe_written.remove(&key);
        !unwritten || maybe_written
    }

    /// Marks `queue` deleted and forgets its unwritten entries; returns how many of those each
    /// message loses, for the reference counts. Its written entries still standing are left to
    /// the commit thread (`purging`), which releases their references as it removes them:
    /// scanning them here would hold the lock every publisher needs for as long as the queue is
    /// long.
    ///
    /// An entry a failed commit may have written is counted by neither: the purge releases it
    /// if it is in sled, and if it is not, its body is kept until the next restart (counts may
    /// err high, never low).
    pub fn drop_queue(&mut self, queue: u64) -> HashMap<u64, u64> {
        let mut released: HashMap<u64, u64> = HashMap::new();
        let maybe_written = &self.maybe_written;
        self.puts.retain(|key, (summary, _)| {
            if key.0 != queue {
                return true;
            }
            if !maybe_written.contains(key) {
                *released.entry(summary.id).or_default() += 1;
            }
            false
        });
        // Its acknowledged entries keep their deletes, written before the purge scans: dropping
        // them would let the scan find those entries and release their references again.
        self.maybe_written.retain(|(q, _)| *q != queue);
        self.delivered.remove(&queue);
        if self.deleted_queues.insert(queue) {
            self.purging.push(queue);
        }
        released
    }
}
