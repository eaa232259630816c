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
use crate::keys;
use crate::quarantine::{tree_place, BadRecord};
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

/// Hands every entry to `each` with its queue (already in seq order: keys sort by queue, then
/// seq), counts references to each body and returns how many distinct bodies kept in sled's
/// `bodies` tree (older layouts) are referenced; bodies in segments are counted live there.
/// The entry value carries the message summary; a layout 1 entry, which does not, reads it from
/// its body. Entries of queues that no longer exist are removed, and so are layout 1 entries
/// whose body is missing. When a queue record was quarantined (`lost_queues`), an entry of an
/// unknown queue may be one of its messages, so it is quarantined with its body instead.
fn load_entries(
    store: &SledStore,
    queues: &BTreeMap<u64, QueueRecord>,
    lost_queues: bool,
    each: &mut dyn FnMut(&QueueRecord, RecoveredEntry),
    max_message_id: &mut u64,
) -> Result<usize, StoreError> {
    let mut referenced = 0usize;
    let mut stale = Chunked::new(&store.entries);
    let mut stale_count = 0usize;
    let watermarks = delivery_watermarks(store)?;
    let mut flagged = Chunked::new(&store.entries);
    let mut flagged_count = 0usize;

    for item in store.entries.iter() {
        let (k, v) = item.map_err(engine)?;
        let parsed = keys::parse_entry_key(&k).zip(keys::parse_entry_value(&v));
        let Some(((queue_id, seq), value)) = parsed else {
            let e = corrupt(&k, "queue entry fails its checksum or does not decode");
            store.move_aside(&store.entries, "entries", &k, &v, &e)?;
            continue;
        };
        let message_id = value.message_id;
        *max_message_id = (*max_message_id).max(message_id);

        let Some(queue) = queues.get(&queue_id) else {
            if lost_queues {
                quarantine_orphan_entry(store, &k, &v, value.location)?;
                continue;
            }
            // Left by a crash during delete_queue, which removes the record first.
            tracing::warn!(queue_id, seq, "removing an entry of a deleted queue");
            stale.remove(k)?;
            stale_count += 1;
            continue;
        };
        let summary = match value.summary {
            Some(summary) => summary,
            None => match store.read_body(message_id)? {
                Some(message) => MessageSummary::of(&message),
                None => {
                    tracing::warn!(
                        queue_id,
                        seq,
                        message_id,
                        "skipping a queue entry whose message body is missing"
                    );
                    stale.remove(k)?;
                    stale_count += 1;
                    continue;
                }
            },
        };
        let delivered = watermarks.get(&queue_id).is_some_and(|w| seq <= *w);
        let redelivered = value.redelivered || delivered;
        if redelivered && !value.redelivered {
            // Kept in the entry itself, so the watermark can go.
            let flagged_value =
                keys::with_redelivered(&v).ok_or_else(|| corrupt(&k, "queue entry value"))?;
            flagged.insert(k.clone(), flagged_value)?;
            flagged_count += 1;
        }
        if store.refs.add(message_id, value.location) {
            match value.location {
                Some(location) => store.segments.recovered_body(location),
                None => referenced += 1,
            }
        }
        each(
            queue,
            RecoveredEntry {
                seq,
                redelivered,
                summary,
            },
        );
    }

    stale.finish()?;
    // Flags first, watermarks after: a crash in between recovers the same flags again.
    flagged.finish()?;
    store.delivered.clear().map_err(engine)?;
    if stale_count + flagged_count > 0 || !watermarks.is_empty() {
        store.committer.advance();
    }
    Ok(referenced)
}

/// Quarantines an entry whose queue record was itself quarantined, together with its body
/// (when it can be read), so the message can still be recovered by hand. The body's place is
/// not released: nothing counted it, so recovery deletes it like any unreferenced body.
fn quarantine_orphan_entry(
    store: &SledStore,
    key: &[u8],
    value: &[u8],
    location: Option<crate::segments::Location>,
) -> Result<(), StoreError> {
    let reason = "entry of a queue whose record was quarantined";
    let body = location.map(|l| store.segments.read(l, key));
    match body {
        Some(Ok(message)) => {
            let raw = codec::encode_message(&message);
            store.quarantine.put(&BadRecord {
                place: format!("body of {}", tree_place("entries", key)),
                reason: reason.to_owned(),
                raw: &raw,
            })?;
        }
        Some(Err(e)) => tracing::warn!(error = %e, "cannot read the body of a quarantined entry"),
        None => {}
    }
    store.move_aside(&store.entries, "entries", key, value, &corrupt(key, reason))
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
