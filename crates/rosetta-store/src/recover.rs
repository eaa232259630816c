//! Startup recovery: read every record back, share bodies between queues, rebuild reference
//! counts and segment live counts, and clear what a crash between two writes left behind.
//!
//! Bodies are not read: queue entries carry the summary the core needs, and each entry goes to
//! the caller as soon as it is read, so recovering a backlog of millions holds neither their
//! bodies nor a list of them.

use std::collections::{BTreeMap, HashMap};

use rosetta_core::store::{MessageSummary, QueueRecord, Recovered, RecoveredEntry, StoreError};

use crate::chunked::Chunked;
use crate::codec::{self, corrupt};
use crate::index::Walk;
use crate::keys;
use crate::quarantine::{tree_place, BadRecord};
use crate::segments::Location;
use crate::sled_store::{engine, SledStore};

/// A record that fails its checksum or does not decode is moved to the quarantine directory
/// (see `quarantine`) and everything else recovers: one bad record must neither stop the broker
/// nor vanish without trace. Leftovers of interrupted writes are a different matter: they are
/// expected after a crash, so they are cleaned up.
pub fn recover(
    store: &SledStore,
    each: &mut dyn FnMut(&QueueRecord, RecoveredEntry),
) -> Result<Recovered, StoreError> {
    let mut out = Recovered::default();

    for item in store.exchanges.iter() {
        let (k, v) = item.map_err(engine)?;
        match codec::decode_exchange(&v, &k) {
            Ok(exchange) => out.exchanges.push(exchange),
            Err(e) => store.move_aside(&store.exchanges, "exchanges", &k, &v, &e)?,
        }
    }
    for item in store.bindings.iter() {
        let (k, v) = item.map_err(engine)?;
        match codec::decode_binding(&v, &k) {
            Ok(binding) => out.bindings.push(binding),
            Err(e) => store.move_aside(&store.bindings, "bindings", &k, &v, &e)?,
        }
    }

    let mut queues: BTreeMap<u64, QueueRecord> = BTreeMap::new();
    let mut lost_queues = false;
    for item in store.queues.iter() {
        let (k, v) = item.map_err(engine)?;
        match codec::decode_queue(&v, &k) {
            Ok(q) => {
                out.max_queue_id = out.max_queue_id.max(q.id);
                queues.insert(q.id, q);
            }
            Err(e) => {
                store.move_aside(&store.queues, "queues", &k, &v, &e)?;
                lost_queues = true;
            }
        }
    }

    store.refs.clear();
    let referenced = load_entries(store, &queues, lost_queues, each, &mut out.max_message_id)?;
    let dead_segments = store.segments.recovered()?;
    if dead_segments > 0 {
        tracing::info!(
            count = dead_segments,
            "removed body segments no queue references"
        );
    }
    let found = remove_orphan_bodies(store, &mut out.max_message_id)?;
    if found < referenced {
        // The write order never leaves an entry without its body, so only a damaged store gets
        // here. Such an entry is dropped, with a warning, when its queue reaches it.
        tracing::warn!(
            count = referenced - found,
            "queue entries reference message bodies that are missing"
        );
    }

    out.queues = queues.into_values().map(|q| (q, Vec::new())).collect();
    Ok(out)
}

/// Hands every entry to `each` with its queue, queue by queue in seq order, counts references
/// to each body and returns how many distinct bodies kept in sled's `bodies` tree (older
/// layouts) are referenced; bodies in segments are counted live there. Entries an older layout
/// kept in sled move into the queue index first. Entries of queues that no longer exist are
/// removed; when a queue record was quarantined (`lost_queues`), an entry of an unknown queue
/// may be one of its messages, so it is quarantined instead.
fn load_entries(
    store: &SledStore,
    queues: &BTreeMap<u64, QueueRecord>,
    lost_queues: bool,
    each: &mut dyn FnMut(&QueueRecord, RecoveredEntry),
    max_message_id: &mut u64,
) -> Result<usize, StoreError> {
    migrate_sled_entries(store, queues, lost_queues, max_message_id)?;
    let watermarks = delivery_watermarks(store)?;
    let moved = moved_bodies(store)?;
    let mut referenced = 0usize;
    let walk = Walk {
        known: &|queue| queues.contains_key(&queue),
        delivered: &|queue| watermarks.get(&queue).copied(),
        lost_queues,
        bad: &mut |bad| store.quarantine.put(&bad).map(drop),
        read_only: false,
    };
    store.index.recover(walk, &mut |found| {
        let Some(queue) = queues.get(&found.queue) else {
            let place = format!("queue {} seq {} in the queue index", found.queue, found.seq);
            return quarantine_orphan_entry(store, &place, &found.slot, found.value.location);
        };
        let Some(summary) = found.value.summary else {
            return Ok(());
        };
        let message_id = found.value.message_id;
        *max_message_id = (*max_message_id).max(message_id);
        let location = moved.get(&message_id).copied().or(found.value.location);
        if store.refs.add(message_id, location) {
            match location {
                Some(location) => store.segments.recovered_body(location),
                None => referenced += 1,
            }
        }
        each(
            queue,
            RecoveredEntry {
                seq: found.seq,
                redelivered: found.value.redelivered,
                summary,
            },
        );
        Ok(())
    })?;
    forget_moves_of_gone_bodies(store, &moved)?;
    // The flags are in the index files now.
    if !watermarks.is_empty() {
        store.delivered.clear().map_err(engine)?;
        store.committer.advance();
    }
    Ok(referenced)
}

/// Entries sled moved into the queue index per step.
const MIGRATE_CHUNK: usize = 65_536;

/// Moves the queue entries an older layout kept in sled's `entries` tree into the queue index,
/// a chunk at a time: each chunk is written and synced there before it is removed from sled,
/// so a crash in between leaves entries in both places, which the next start moves again
/// (writing a slot twice is harmless), and never in neither. A layout 1 entry, which lacks the
/// summary, reads it from its body.
fn migrate_sled_entries(
    store: &SledStore,
    queues: &BTreeMap<u64, QueueRecord>,
    lost_queues: bool,
    max_message_id: &mut u64,
) -> Result<(), StoreError> {
    if store.entries.is_empty() {
        return Ok(());
    }
    let mut moved = 0usize;
    let mut chunk = Vec::with_capacity(MIGRATE_CHUNK);
    let mut done = Vec::with_capacity(MIGRATE_CHUNK);
    let mut iter = store.entries.iter();
    loop {
        let item = iter.next();
        if let Some(item) = item.as_ref() {
            let (k, v) = item.as_ref().map_err(|e| engine(e.clone()))?;
            if let Some(entry) = sled_entry(store, queues, lost_queues, k, v, max_message_id)? {
                chunk.push(entry);
            }
            done.push(k.clone());
            if done.len() < MIGRATE_CHUNK {
                continue;
            }
        }
        store.index.import(&chunk)?;
        moved += chunk.len();
        let mut gone = Chunked::new(&store.entries);
        for k in done.drain(..) {
            gone.remove(k)?;
        }
        gone.finish()?;
        store.db.flush().map_err(engine)?;
        chunk.clear();
        if item.is_none() {
            break;
        }
    }
    tracing::info!(
        entries = moved,
        "queue entries moved from sled into the queue index"
    );
    Ok(())
}

/// One entry of sled's `entries` tree as an index slot, or `None` if it is not to be moved
/// (bad, of a deleted queue, or whose body is missing).
fn sled_entry(
    store: &SledStore,
    queues: &BTreeMap<u64, QueueRecord>,
    lost_queues: bool,
    k: &[u8],
    v: &[u8],
    max_message_id: &mut u64,
) -> Result<Option<(u64, u64, [u8; keys::ENTRY_VALUE_LEN])>, StoreError> {
    let parsed = keys::parse_entry_key(k).zip(keys::parse_entry_value(v));
    let Some(((queue_id, seq), value)) = parsed else {
        let e = corrupt(k, "queue entry fails its checksum or does not decode");
        store.move_aside(&store.entries, "entries", k, v, &e)?;
        return Ok(None);
    };
    // Counted even for an entry not moved: handing out its id again is harmless, but ids
    // that only grow keep logs readable.
    *max_message_id = (*max_message_id).max(value.message_id);
    if !queues.contains_key(&queue_id) {
        if lost_queues {
            quarantine_orphan_entry(store, &tree_place("entries", k), v, value.location)?;
        } else {
            // Left by a crash during delete_queue, which removes the record first.
            tracing::warn!(queue_id, seq, "removing an entry of a deleted queue");
        }
        return Ok(None);
    }
    let summary = match value.summary {
        Some(summary) => summary,
        None => match store.read_body(value.message_id)? {
            Some(message) => MessageSummary::of(&message),
            None => {
                tracing::warn!(
                    queue_id,
                    seq,
                    message_id = value.message_id,
                    "skipping a queue entry whose message body is missing"
                );
                return Ok(None);
            }
        },
    };
    let slot = keys::slot_value(&summary, value.redelivered, value.location);
    Ok(Some((queue_id, seq, slot)))
}

/// Quarantines an entry whose queue record was itself quarantined, together with its body
/// (when it can be read), so the message can still be recovered by hand. The body's place is
/// not released: nothing counted it, so recovery deletes it like any unreferenced body.
fn quarantine_orphan_entry(
    store: &SledStore,
    place: &str,
    raw: &[u8],
    location: Option<crate::segments::Location>,
) -> Result<(), StoreError> {
    let reason = "entry of a queue whose record was quarantined";
    let body = location.map(|l| store.segments.read(l, place.as_bytes()));
    match body {
        Some(Ok(message)) => {
            let raw = codec::encode_message(&message);
            store.quarantine.put(&BadRecord {
                place: format!("body of {place}"),
                reason: reason.to_owned(),
                raw: &raw,
            })?;
        }
        Some(Err(e)) => tracing::warn!(error = %e, "cannot read the body of a quarantined entry"),
        None => {}
    }
    store.quarantine.put(&BadRecord {
        place: place.to_owned(),
        reason: reason.to_owned(),
        raw,
    })?;
    Ok(())
}

/// Where compaction moved bodies (see `compact`). A record that does not decode is
/// quarantined: its body is then looked for at its first place, which is still right unless
/// the old segment is gone.
fn moved_bodies(store: &SledStore) -> Result<HashMap<u64, Location>, StoreError> {
    let mut moved = HashMap::new();
    for item in store.moved.iter() {
        let (k, v) = item.map_err(engine)?;
        let parsed = keys::parse_message_key(&k).zip(codec::unseal(&v).and_then(Location::decode));
        match parsed {
            Some((id, location)) => {
                moved.insert(id, location);
            }
            None => {
                let e = corrupt(
                    &k,
                    "moved body record fails its checksum or does not decode",
                );
                store.move_aside(&store.moved, "moved", &k, &v, &e)?;
            }
        }
    }
    Ok(moved)
}

/// Marks the recovered bodies that were moved, and removes the records of bodies no entry
/// references any more.
fn forget_moves_of_gone_bodies(
    store: &SledStore,
    moved: &HashMap<u64, Location>,
) -> Result<(), StoreError> {
    let mut gone = Chunked::new(&store.moved);
    let mut removed = false;
    for id in moved.keys() {
        let mut refs = store.refs.lock(*id);
        match refs.get_mut(id) {
            Some(body) => body.moved = true,
            None => {
                gone.remove(&keys::message(*id))?;
                removed = true;
            }
        }
    }
    gone.finish()?;
    if removed {
        store.committer.advance();
    }
    Ok(())
}

/// Each queue's delivery watermark (see `mark_redelivered`). A bad one is quarantined: at
/// worst some entries come back without their redelivered flag.
fn delivery_watermarks(store: &SledStore) -> Result<HashMap<u64, u64>, StoreError> {
    let mut marks = HashMap::new();
    for item in store.delivered.iter() {
        let (k, v) = item.map_err(engine)?;
        match keys::parse_seq(&k).zip(keys::parse_seq(&v)) {
            Some((queue, seq)) => {
                marks.insert(queue, seq);
            }
            None => {
                let e = corrupt(&k, "delivery watermark does not decode");
                store.move_aside(&store.delivered, "delivered", &k, &v, &e)?;
            }
        }
    }
    Ok(marks)
}

impl SledStore {
    /// Copies a bad record of `tree` (named `name`) to the quarantine directory, then removes
    /// it from the tree. The removal becomes durable with the next flush; a crash before that
    /// quarantines the record again, which only adds a second copy.
    pub(crate) fn move_aside(
        &self,
        tree: &sled::Tree,
        name: &str,
        key: &[u8],
        raw: &[u8],
        error: &StoreError,
    ) -> Result<(), StoreError> {
        let reason = match error {
            StoreError::Corrupt { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        self.quarantine.put(&BadRecord {
            place: tree_place(name, key),
            reason,
            raw,
        })?;
        tree.remove(key).map_err(engine)?;
        self.committer.advance();
        Ok(())
    }
}

/// Deletes bodies no entry references: written by an enqueue whose entries never made it to
/// disk, or kept by a dequeue interrupted before its body delete. Returns how many referenced
/// bodies it saw, so the caller knows whether some entry lacks its body.
fn remove_orphan_bodies(store: &SledStore, max_message_id: &mut u64) -> Result<usize, StoreError> {
    let mut found = 0usize;
    let mut orphans = Chunked::new(&store.bodies);
    let mut orphan_count = 0usize;
    for key in store.bodies.iter().keys() {
        let key = key.map_err(engine)?;
        let Some(id) = keys::parse_message_key(&key) else {
            let raw = store.bodies.get(&key).map_err(engine)?.unwrap_or_default();
            let e = corrupt(&key, "message body key does not decode");
            store.move_aside(&store.bodies, "bodies", &key, &raw, &e)?;
            continue;
        };
        // Counted even when deleted: handing out the id again is harmless, but keeping ids
        // monotonic makes logs and debugging saner.
        *max_message_id = (*max_message_id).max(id);
        if store.refs.contains(id) {
            found += 1;
        } else {
            orphans.remove(key)?;
            orphan_count += 1;
        }
    }
    orphans.finish()?;
    if orphan_count > 0 {
        tracing::info!(
            count = orphan_count,
            "removed message bodies no queue references"
        );
        store.committer.advance();
    }
    Ok(found)
}
