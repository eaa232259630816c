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
use crate::sled_store::{engine, SledStore};

/// Metadata that does not decode is an error rather than something to skip: silently dropping
/// a queue or binding would lose routing the operator relies on. Leftovers of interrupted
/// writes are a different matter: they are expected after a crash, so they are cleaned up.
pub fn recover(
    store: &SledStore,
    each: &mut dyn FnMut(&QueueRecord, RecoveredEntry),
) -> Result<Recovered, StoreError> {
    let mut out = Recovered::default();

    for item in store.exchanges.iter() {
        let (k, v) = item.map_err(engine)?;
        out.exchanges.push(codec::decode_exchange(&v, &k)?);
    }
    for item in store.bindings.iter() {
        let (k, v) = item.map_err(engine)?;
        out.bindings.push(codec::decode_binding(&v, &k)?);
    }

    let mut queues: BTreeMap<u64, QueueRecord> = BTreeMap::new();
    for item in store.queues.iter() {
        let (k, v) = item.map_err(engine)?;
        let q = codec::decode_queue(&v, &k)?;
        out.max_queue_id = out.max_queue_id.max(q.id);
        queues.insert(q.id, q);
    }

    store.refs.clear();
    let referenced = load_entries(store, &queues, each, &mut out.max_message_id)?;
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
/// whose body is missing.
fn load_entries(
    store: &SledStore,
    queues: &BTreeMap<u64, QueueRecord>,
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
        let (queue_id, seq) =
            keys::parse_entry_key(&k).ok_or_else(|| corrupt(&k, "queue entry key"))?;
        let value = keys::parse_entry_value(&v).ok_or_else(|| corrupt(&k, "queue entry value"))?;
        let message_id = value.message_id;
        *max_message_id = (*max_message_id).max(message_id);

        let Some(queue) = queues.get(&queue_id) else {
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

/// Each queue's delivery watermark (see `mark_redelivered`).
fn delivery_watermarks(store: &SledStore) -> Result<HashMap<u64, u64>, StoreError> {
    let mut marks = HashMap::new();
    for item in store.delivered.iter() {
        let (k, v) = item.map_err(engine)?;
        let queue = keys::parse_seq(&k).ok_or_else(|| corrupt(&k, "delivery watermark key"))?;
        let seq = keys::parse_seq(&v).ok_or_else(|| corrupt(&k, "delivery watermark"))?;
        marks.insert(queue, seq);
    }
    Ok(marks)
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
        let id = keys::parse_message_key(&key).ok_or_else(|| corrupt(&key, "message body key"))?;
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
