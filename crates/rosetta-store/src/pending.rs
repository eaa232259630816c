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
    /// Bodies the commit thread has taken from `bodies` and is writing right now, so that a
    /// reader finds a body between the moment it leaves `bodies` and the moment sled has it.
    /// Not part of a batch: `is_empty` ignores it.
    pub writing: Option<Arc<HashMap<u64, Arc<Message>>>>,
    /// Entries in `puts` that a failed commit may already have handed to sled: cancelling one
    /// of them must also delete it there (see [`Pending::restore`]). Empty unless a commit
    /// failed.
    pub maybe_written: HashSet<(u64, u64)>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.bodies.is_empty()
            && self.puts.is_empty()
            && self.deletes.is_empty()
            && self.delivered.is_empty()
            && self.body_deletes.is_empty()
    }

    /// Writes that no caller waits on (deletes and delivery marks), so none requests their
    /// flush.
    pub fn unrequested_writes(&self) -> usize {
        self.deletes.len() + self.delivered.len() + self.body_deletes.len()
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
    }

    /// Cancels the write of entry `key`; true if it must be deleted from sled instead (it was
    /// written, or maybe written by a failed commit).
    pub fn cancel_put(&mut self, key: (u64, u64)) -> bool {
        let unwritten = self.puts.remove(&key).is_some();
        // The emptiness check keeps the usual case, no failed commit, to one branch.
        let maybe_written = !self.maybe_written.is_empty() && self.maybe_written.remove(&key);
        !unwritten || maybe_written
    }

    /// Forgets every unwritten entry of a deleted queue; returns how many entries each message
    /// lost, for the reference counts.
    pub fn drop_queue(&mut self, queue: u64) -> HashMap<u64, u64> {
        let mut released: HashMap<u64, u64> = HashMap::new();
        self.puts.retain(|(q, _), (summary, _)| {
            if *q == queue {
                *released.entry(summary.id).or_default() += 1;
                false
            } else {
                true
            }
        });
        self.deletes.retain(|(q, _)| *q != queue);
        self.maybe_written.retain(|(q, _)| *q != queue);
        self.delivered.remove(&queue);
        released
    }
}
