//! [`SledStore`]: opening the database and the write side of the [`Store`] trait.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use rosetta_core::message::Message;
use rosetta_core::store::{
    BindingRecord, Epoch, ExchangeRecord, QueueRecord, Records, Recovered, Store, StoreError,
};

use crate::commit::{Committer, FlushObserver};
use crate::refs::RefCounts;
use crate::{codec, keys};

/// sled's page cache. Large enough that queue heads and recent bodies stay in memory.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Key in the default tree naming the layout version, so an incompatible store is refused
/// at open instead of being misread record by record.
const FORMAT_KEY: &[u8] = b"rosetta-format";

/// A durable store on sled, with group commit on a dedicated thread.
pub struct SledStore {
    pub(crate) db: sled::Db,
    pub(crate) exchanges: sled::Tree,
    pub(crate) queues: sled::Tree,
    pub(crate) bindings: sled::Tree,
    pub(crate) bodies: sled::Tree,
    pub(crate) entries: sled::Tree,
    pub(crate) records: sled::Tree,
    pub(crate) refs: RefCounts,
    pub(crate) committer: Arc<Committer>,
    thread: Option<JoinHandle<()>>,
}

pub(crate) fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl SledStore {
    /// Opens (creating if needed) the store in directory `path`.
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        prepare_dir(path)?;
        // Durability comes from our own flushes, so sled's periodic background flush is off:
        // it would add fsyncs without making any acknowledged write safer.
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(None)
            .open()
            .map_err(|e| {
                StoreError::Engine(format!("cannot open store at {}: {e}", path.display()))
            })?;
        check_format(&db)?;
        let tree = |name: &str| db.open_tree(name).map_err(engine);
        let committer = Committer::new();
        let thread = committer
            .spawn(db.clone())
            .map_err(|e| StoreError::Engine(format!("cannot start the commit thread: {e}")))?;
        Ok(SledStore {
            exchanges: tree("exchanges")?,
            queues: tree("queues")?,
            bindings: tree("bindings")?,
            bodies: tree("bodies")?,
            entries: tree("entries")?,
            records: tree("records")?,
            db,
            refs: RefCounts::new(),
            committer,
            thread: Some(thread),
        })
    }

    /// Duration of the most recent flush, in microseconds.
    pub fn last_flush_micros(&self) -> u64 {
        self.committer.last_flush_micros()
    }

    /// Has `observer` told the duration of every flush from now on (replacing an earlier one).
    pub fn observe_flushes(&self, observer: FlushObserver) {
        self.committer.set_observer(observer);
    }

    /// Number of flushes performed since open.
    pub fn flush_count(&self) -> u64 {
        self.committer.flush_count()
    }

    /// Number of message bodies stored (each counted once however many queues hold it).
    pub fn body_count(&self) -> usize {
        self.bodies.len()
    }

    /// Number of queue entries stored, across all queues.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Drops `n` references to body `id`, deleting the body when none remain.
    fn release(&self, id: u64, n: u64) -> Result<(), StoreError> {
        let mut refs = self.refs.lock(id);
        // An unknown count means this store never counted the body (e.g. `recover` was not
        // called yet), so it may still be referenced: leave it for recovery to judge.
        let Some(count) = refs.get_mut(&id) else {
            return Ok(());
        };
        *count = count.saturating_sub(n);
        if *count == 0 {
            refs.remove(&id);
            self.bodies.remove(keys::message(id)).map_err(engine)?;
        }
        Ok(())
    }
}

/// Namespaces end at the first NUL of a record key, so one inside a namespace is refused.
fn record_key(namespace: &str, key: &[u8]) -> Result<Vec<u8>, StoreError> {
    if namespace.contains('\0') {
        return Err(StoreError::Engine(format!(
            "record namespace {namespace:?} contains a NUL byte"
        )));
    }
    Ok(keys::record(namespace, key))
}

fn prepare_dir(path: &Path) -> Result<(), StoreError> {
    if path.exists() && !path.is_dir() {
        return Err(StoreError::Engine(format!(
            "store path {} exists and is not a directory",
            path.display()
        )));
    }
    std::fs::create_dir_all(path).map_err(|e| {
        StoreError::Engine(format!(
            "cannot create store directory {}: {e}",
            path.display()
        ))
    })?;
    // sled's own error for a read-only directory names an internal file; probing first lets
    // the operator see the directory and the cause.
    let probe = path.join(".write-probe");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| {
            StoreError::Engine(format!(
                "store directory {} is not writable: {e}",
                path.display()
            ))
        })
}

fn check_format(db: &sled::Db) -> Result<(), StoreError> {
    match db.get(FORMAT_KEY).map_err(engine)? {
        None => {
            db.insert(FORMAT_KEY, &[codec::FORMAT_VERSION])
                .map_err(engine)?;
            Ok(())
        }
        Some(v) if v.as_ref() == [codec::FORMAT_VERSION] => Ok(()),
        Some(v) => Err(StoreError::Engine(format!(
            "store format {:?} is not supported (this build reads format {})",
            v.as_ref(),
            codec::FORMAT_VERSION
        ))),
    }
}

impl Store for SledStore {
    fn save_exchange(&self, record: &ExchangeRecord) -> Result<Epoch, StoreError> {
        let key = keys::named(&record.vhost, &record.name);
        self.exchanges
            .insert(key, codec::encode_exchange(record))
            .map_err(engine)?;
        Ok(self.committer.advance())
    }

    fn delete_exchange(&self, vhost: &str, name: &str) -> Result<Epoch, StoreError> {
        self.exchanges
            .remove(keys::named(vhost, name))
            .map_err(engine)?;
        Ok(self.committer.advance())
    }

    fn save_queue(&self, record: &QueueRecord) -> Result<Epoch, StoreError> {
        let key = keys::named(&record.vhost, &record.name);
        self.queues
            .insert(key, codec::encode_queue(record))
            .map_err(engine)?;
        Ok(self.committer.advance())
    }

    fn delete_queue(&self, vhost: &str, name: &str, id: u64) -> Result<Epoch, StoreError> {
        let key = keys::named(vhost, name);
        // A queue of the same name may have been re-declared with a new id; only the record
        // of the queue being deleted goes. A record that no longer decodes goes too.
        let stored = self.queues.get(&key).map_err(engine)?;
        if let Some(v) = stored {
            let same = codec::decode_queue(&v, &key)
                .map(|q| q.id == id)
                .unwrap_or(true);
            if same {
                self.queues.remove(&key).map_err(engine)?;
            }
        }

        let mut batch = sled::Batch::default();
        let mut released: HashMap<u64, u64> = HashMap::new();
        for item in self.entries.scan_prefix(keys::queue_prefix(id)) {
            let (k, v) = item.map_err(engine)?;
            match keys::parse_entry_value(&v) {
                Some((msg, _)) => *released.entry(msg).or_default() += 1,
                None => tracing::warn!(queue = id, "dropping an unreadable queue entry"),
            }
            batch.remove(k);
        }
        // Entries first, bodies after: a crash in between leaves orphan bodies, never entries
        // without a body.
        self.entries.apply_batch(batch).map_err(engine)?;
        for (msg, n) in released {
            self.release(msg, n)?;
        }
        Ok(self.committer.advance())
    }

    fn save_binding(&self, record: &BindingRecord) -> Result<Epoch, StoreError> {
        self.bindings
            .insert(keys::binding(record), codec::encode_binding(record))
            .map_err(engine)?;
        Ok(self.committer.advance())
    }

    fn delete_binding(&self, record: &BindingRecord) -> Result<Epoch, StoreError> {
        self.bindings
            .remove(keys::binding(record))
            .map_err(engine)?;
        Ok(self.committer.advance())
    }

    /// Each `(queue, seq)` must be new. Re-using one is a caller bug whose only effect is a
    /// body kept until the next restart (counts err high, never low, so no body is lost).
    fn enqueue(&self, message: &Message, queue_seqs: &[(u64, u64)]) -> Result<Epoch, StoreError> {
        if queue_seqs.is_empty() {
            return Ok(self.committer.current());
        }
        let id = message.id;
        let mut refs = self.refs.lock(id);
        // Held across both writes so a concurrent last dequeue of the same id cannot delete
        // the body between our check and our entries.
        if !refs.contains_key(&id) {
            self.bodies
                .insert(keys::message(id), codec::encode_message(message))
                .map_err(engine)?;
        }
        if let [(queue, seq)] = queue_seqs {
            self.entries
                .insert(keys::entry(*queue, *seq), &keys::entry_value(id, false))
                .map_err(engine)?;
        } else {
            let mut batch = sled::Batch::default();
            for (queue, seq) in queue_seqs {
                batch.insert(&keys::entry(*queue, *seq), &keys::entry_value(id, false));
            }
            self.entries.apply_batch(batch).map_err(engine)?;
        }
        *refs.entry(id).or_default() += queue_seqs.len() as u64;
        drop(refs);
        Ok(self.committer.advance())
    }

    fn dequeue(&self, queue_id: u64, seq: u64, message_id: u64) -> Result<Epoch, StoreError> {
        let key = keys::entry(queue_id, seq);
        if let Some(old) = self.entries.remove(key).map_err(engine)? {
            let msg = match keys::parse_entry_value(&old) {
                Some((stored, _)) if stored != message_id => {
                    tracing::warn!(
                        queue_id,
                        seq,
                        stored,
                        message_id,
                        "dequeue names a different message than stored"
                    );
                    stored
                }
                Some((stored, _)) => stored,
                None => message_id,
            };
            self.release(msg, 1)?;
        }
        Ok(self.committer.advance())
    }

    fn mark_redelivered(&self, queue_id: u64, seq: u64) -> Result<Epoch, StoreError> {
        let key = keys::entry(queue_id, seq);
        let Some(current) = self.entries.get(key).map_err(engine)? else {
            return Ok(self.committer.current());
        };
        match keys::parse_entry_value(&current) {
            Some((_, true)) => return Ok(self.committer.current()),
            Some((msg, false)) => {
                // Compare-and-swap so a concurrent dequeue is not undone by re-inserting.
                let new = keys::entry_value(msg, true);
                let swapped = self
                    .entries
                    .compare_and_swap(key, Some(current), Some(&new[..]))
                    .map_err(engine)?;
                if swapped.is_err() {
                    tracing::debug!(queue_id, seq, "entry changed while marking it redelivered");
                }
            }
            None => return Err(codec::corrupt(&key, "queue entry value")),
        }
        Ok(self.committer.advance())
    }

    fn put_record(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<Epoch, StoreError> {
        self.records
            .insert(record_key(namespace, key)?, value)
            .map_err(engine)?;
        Ok(self.committer.advance())
    }

    fn delete_record(&self, namespace: &str, key: &[u8]) -> Result<Epoch, StoreError> {
        self.records
            .remove(record_key(namespace, key)?)
            .map_err(engine)?;
        Ok(self.committer.advance())
    }

    fn delete_records(&self, namespace: &str, prefix: &[u8]) -> Result<Epoch, StoreError> {
        let mut batch = sled::Batch::default();
        for k in self.records.scan_prefix(record_key(namespace, prefix)?).keys() {
            batch.remove(k.map_err(engine)?);
        }
        self.records.apply_batch(batch).map_err(engine)?;
        Ok(self.committer.advance())
    }

    fn scan_records(
        &self,
        namespace: &str,
        prefix: &[u8],
    ) -> Result<Records, StoreError> {
        let skip = namespace.len() + 1;
        self.records
            .scan_prefix(record_key(namespace, prefix)?)
            .map(|item| {
                let (k, v) = item.map_err(engine)?;
                Ok((k[skip..].to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn current_epoch(&self) -> Epoch {
        self.committer.current()
    }

    fn durable_epoch(&self) -> Epoch {
        self.committer.durable()
    }

    fn request_sync(&self, epoch: Epoch) {
        self.committer.request(epoch);
    }

    fn subscribe_durable(&self) -> tokio::sync::watch::Receiver<Epoch> {
        self.committer.subscribe()
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.committer.sync()
    }

    fn recover(&self) -> Result<Recovered, StoreError> {
        crate::recover::recover(self)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read store size");
            0
        })
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.committer.shutdown();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("store commit thread panicked");
            }
        }
        // One last flush so a clean shutdown loses nothing that was buffered.
        if let Err(e) = self.committer.flush(&self.db) {
            tracing::error!(error = %e, "final store flush failed");
        }
    }
}
