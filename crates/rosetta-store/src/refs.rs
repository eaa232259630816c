//! In-memory reference counts of message bodies: how many queue entries point at each body, and
//! where the body is once written.
//!
//! Neither is persisted on its own; `recover` rebuilds both from the entries tree, which is the
//! source of truth, straight into the shards (a second map of millions of counts would double
//! what recovery holds). Sharded by message id so publishers to unrelated messages do not
//! contend on one lock. A shard's lock is held across the body write or delete it decides on,
//! so a body cannot be deleted by its last dequeue while an enqueue of the same id is adding
//! references.

use std::collections::HashMap;

use parking_lot::{Mutex, MutexGuard};

use crate::segments::Location;

const SHARDS: usize = 32;

/// What the store knows of one body.
#[derive(Debug, Default, Clone, Copy)]
pub struct BodyRef {
    /// Queue entries referring to it.
    pub count: u64,
    /// Its place in the segments, once written there; `None` before, and for a body an older
    /// layout wrote into sled's `bodies` tree.
    pub location: Option<Location>,
    /// Compaction moved it, so sled's `moved` tree names its place (entries still name the
    /// old one), and that record goes when the body does.
    pub moved: bool,
}

pub struct RefCounts {
    shards: Vec<Mutex<HashMap<u64, BodyRef>>>,
}

impl RefCounts {
    pub fn new() -> Self {
        RefCounts {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Locks the shard holding `id`.
    pub fn lock(&self, id: u64) -> MutexGuard<'_, HashMap<u64, BodyRef>> {
        // Ids are sequential, so the low bits spread them evenly over the shards.
        self.shards[(id % SHARDS as u64) as usize].lock()
    }

    /// Forgets every count, before recovery rebuilds them.
    pub fn clear(&self) {
        for shard in &self.shards {
            shard.lock().clear();
        }
    }

    /// Counts one more reference to `id`, at `location` (recovery, entry by entry); true for
    /// its first.
    pub fn add(&self, id: u64, location: Option<Location>) -> bool {
        let mut shard = self.lock(id);
        let body = shard.entry(id).or_default();
        body.count += 1;
        if body.location.is_none() {
            body.location = location;
        }
        body.count == 1
    }

    pub fn contains(&self, id: u64) -> bool {
        self.lock(id).contains_key(&id)
    }

    /// Where body `id` was written, if it is in the segments.
    pub fn location(&self, id: u64) -> Option<Location> {
        self.lock(id).get(&id).and_then(|b| b.location)
    }
}
