//! Startup recovery: read every record back, share bodies between queues, rebuild reference
//! counts and clear what a crash between two writes left behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rosetta_core::message::Message;
use rosetta_core::store::{QueueRecord, Recovered, RecoveredEntry, StoreError};

use crate::codec::{self, corrupt};
use crate::keys;
use crate::sled_store::{engine, SledStore};

/// Metadata that does not decode is an error rather than something to skip: silently dropping
/// a queue or binding would lose routing the operator relies on. Leftovers of interrupted
/// writes are a different matter: they are expected after a crash, so they are cleaned up.
pub fn recover(store: &SledStore) -> Result<Recovered, StoreError> {
    let mut out = Recovered::default();

    for item in store.exchanges.iter() {
        let (k, v) = item.map_err(engine)?;
        out.exchanges.push(codec::decode_exchange(&v, &k)?);
    }
    for item in store.bindings.iter() {
        let (k, v) = item.map_err(engine)?;
        out.bindings.push(codec::decode_binding(&v, &k)?);
    }

    let mut queues: BTreeMap<u64, (QueueRecord, Vec<RecoveredEntry>)> = BTreeMap::new();
    for item in store.queues.iter() {
        let (k, v) = item.map_err(engine)?;
        let q = codec::decode_queue(&v, &k)?;
        out.max_queue_id = out.max_queue_id.max(q.id);
        queues.insert(q.id, (q, Vec::new()));
    }

    let counts = load_entries(store, &mut queues, &mut out.max_message_id)?;
    remove_orphan_bodies(store, &counts, &mut out.max_message_id)?;
    store.refs.reset(counts);

    out.queues = queues.into_values().collect();
    Ok(out)
}

/// Attaches every entry to its queue (already in seq order: keys sort by queue, then seq) and
/// returns how many entries reference each body. Entries of queues that no longer exist and
/// entries whose body is missing are removed.
fn load_entries(
    store: &SledStore,
    queues: &mut BTreeMap<u64, (QueueRecord, Vec<RecoveredEntry>)>,
    max_message_id: &mut u64,
) -> Result<HashMap<u64, u64>, StoreError> {
    let mut bodies: HashMap<u64, Arc<Message>> = HashMap::new();
    let mut counts: HashMap<u64, u64> = HashMap::new();
    let mut stale = sled::Batch::default();
    let mut stale_count = 0usize;

    for item in store.entries.iter() {
        let (k, v) = item.map_err(engine)?;
        let (queue_id, seq) =
            keys::parse_entry_key(&k).ok_or_else(|| corrupt(&k, "queue entry key"))?;
        let (message_id, redelivered) =
            keys::parse_entry_value(&v).ok_or_else(|| corrupt(&k, "queue entry value"))?;
        *max_message_id = (*max_message_id).max(message_id);

        let Some((_, entries)) = queues.get_mut(&queue_id) else {
            // Left by a crash during delete_queue, which removes the record first.
            tracing::warn!(queue_id, seq, "removing an entry of a deleted queue");
            stale.remove(k);
            stale_count += 1;
            continue;
        };
        let message = match bodies.get(&message_id) {
            Some(m) => Arc::clone(m),
            None => match load_body(store, message_id)? {
                Some(m) => {
                    bodies.insert(message_id, Arc::clone(&m));
                    m
                }
                None => {
                    tracing::warn!(
                        queue_id,
                        seq,
                        message_id,
                        "skipping a queue entry whose message body is missing"
                    );
                    stale.remove(k);
                    stale_count += 1;
                    continue;
                }
            },
        };
        *counts.entry(message_id).or_default() += 1;
        entries.push(RecoveredEntry {
            seq,
            redelivered,
            message,
        });
    }

    if stale_count > 0 {
        store.entries.apply_batch(stale).map_err(engine)?;
        store.committer.advance();
    }
    Ok(counts)
}

fn load_body(store: &SledStore, id: u64) -> Result<Option<Arc<Message>>, StoreError> {
    let key = keys::message(id);
    let Some(raw) = store.bodies.get(key).map_err(engine)? else {
        return Ok(None);
    };
    let message = codec::decode_message(&raw, &key)?;
    if message.id != id {
        return Err(corrupt(&key, "message id differs from its key"));
    }
    Ok(Some(Arc::new(message)))
}

/// Deletes bodies no entry references: written by an enqueue whose entries never made it to
/// disk, or kept by a dequeue interrupted before its body delete.
fn remove_orphan_bodies(
    store: &SledStore,
    counts: &HashMap<u64, u64>,
    max_message_id: &mut u64,
) -> Result<(), StoreError> {
    let mut orphans = sled::Batch::default();
    let mut orphan_count = 0usize;
    for key in store.bodies.iter().keys() {
        let key = key.map_err(engine)?;
        let id = keys::parse_message_key(&key).ok_or_else(|| corrupt(&key, "message body key"))?;
        // Counted even when deleted: handing out the id again is harmless, but keeping ids
        // monotonic makes logs and debugging saner.
        *max_message_id = (*max_message_id).max(id);
        if !counts.contains_key(&id) {
            orphans.remove(key);
            orphan_count += 1;
        }
    }
    if orphan_count > 0 {
        tracing::info!(
            count = orphan_count,
            "removing message bodies no queue references"
        );
        store.bodies.apply_batch(orphans).map_err(engine)?;
        store.committer.advance();
    }
    Ok(())
}
