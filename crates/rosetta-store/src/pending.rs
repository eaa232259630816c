//! Message writes held in memory until the next group commit.
//!
//! Publishers only record what must change; the commit thread writes each batch to sled just
//! before its fsync. A message acknowledged before its batch is written therefore never touches
//! the disk at all: its entry write and its entry delete cancel out here. This is what keeps
//! persistent messaging cheap when consumers keep up, and it moves the encoding and tree work
//! off the connection tasks onto the commit thread. The publisher confirm still waits for the
//! fsync that follows the batch (or for the acknowledgement that made the write unnecessary).

use std::collections::HashMap;
use std::sync::Arc;

use rosetta_core::message::Message;

#[derive(Default)]
pub(crate) struct Pending {
    /// Bodies referenced by an entry but not yet written.
    pub bodies: HashMap<u64, Arc<Message>>,
    /// Entries not yet written: (queue, seq) -> (message id, redelivered).
    pub puts: HashMap<(u64, u64), (u64, bool)>,
    /// Written entries to delete.
    pub deletes: Vec<(u64, u64)>,
    /// Written entries to flag redelivered.
    pub marks: Vec<(u64, u64)>,
    /// Written bodies whose last entry went.
    pub body_deletes: Vec<u64>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.bodies.is_empty() && self.puts.is_empty() && self.deletes.is_empty() && self.marks.is_empty() && self.body_deletes.is_empty()
    }

    /// Forgets every unwritten entry of a deleted queue; returns how many entries each message
    /// lost, for the reference counts.
    pub fn drop_queue(&mut self, queue: u64) -> HashMap<u64, u64> {
        let mut released: HashMap<u64, u64> = HashMap::new();
        self.puts.retain(|(q, _), (msg, _)| {
            if *q == queue {
                *released.entry(*msg).or_default() += 1;
                false
            } else {
                true
            }
        });
        self.deletes.retain(|(q, _)| *q != queue);
        self.marks.retain(|(q, _)| *q != queue);
        released
    }
}
