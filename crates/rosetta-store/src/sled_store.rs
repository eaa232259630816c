//! [`SledStore`]: opening the database and the write side of the [`Store`] trait.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use rosetta_core::message::Message;
use rosetta_core::store::{
    BindingRecord, Epoch, ExchangeRecord, MessageSummary, QueueRecord, Records, Recovered,
    RecoveredEntry, Store, StoreError,
};

use crate::chunked::Chunked;
use crate::commit::{Committer, FlushObserver};
use crate::pending::Pending;
use crate::refs::RefCounts;
use crate::{codec, keys};

/// sled's page cache. Large enough that queue heads and recent bodies stay in memory, and
/// kept modest because sled's resident memory runs at about three times this figure (measured:
/// 64 MiB settled near 200 MiB of RSS under a long backlog, 32 MiB near 100 MiB), which counts
/// against the broker's memory limit.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// Buffered deletes and redelivery marks after which the store asks for a flush itself.
const FLUSH_AFTER_WRITES: usize = 65_536;
/// Key in the default tree naming the layout version, so an incompatible store is refused
/// at open instead of being misread record by record.
const FORMAT_KEY: &[u8] = b"rosetta-format";
/// The layout this build writes. Layout 2 added the message summary to queue entry values, so
/// recovery rebuilds queues without reading bodies.
const LAYOUT_VERSION: u8 = 2;
/// The layout this build still opens: its entry values lack the summary, which recovery then
/// reads from the body. Opening such a store marks it layout 2 (new entries use the new values,
/// which an older build could not read).
const LEGACY_LAYOUT: u8 = 1;

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
    /// Message writes waiting for the commit thread (see `pending`).
    pub(crate) pending: Arc<Mutex<Pending>>,
    pub(crate) committer: Arc<Committer>,
    writer: Writer,
    thread: Option<JoinHandle<()>>,
}

/// What the commit thread needs to write a pending batch before its fsync.
#[derive(Clone)]
pub(crate) struct Writer {
    pub db: sled::Db,
    bodies: sled::Tree,
    entries: sled::Tree,
    pending: Arc<Mutex<Pending>>,
    committer: Arc<Committer>,
}

impl Writer {
    /// Takes the pending batch, writes it to sled (not yet synced) and returns the epoch it
    /// covers. The epoch is read under the pending lock, where writers bump it, so every epoch
    /// up to it belongs to this batch or an earlier one.
    pub fn write_pending(&self) -> Result<Epoch, StoreError> {
        let (batch, written, target) = {
            let mut pending = self.pending.lock();
            let mut batch = std::mem::take(&mut *pending);
            // Readers look for these bodies in `writing` until sled has them.
            let written = Arc::new(std::mem::take(&mut batch.bodies));
            if !written.is_empty() {
                pending.writing = Some(written.clone());
            }
            (batch, written, self.committer.current())
        };
        if batch.is_empty() && written.is_empty() {
            return Ok(target);
        }
        // Bodies before entries, entry deletes before body deletes: a crash in between leaves
        // only orphan bodies, which recovery removes.
        let applied = (|| {
            let mut bodies = Chunked::new(&self.bodies);
            for (id, message) in written.iter() {
                bodies.insert(&keys::message(*id), codec::encode_message(message))?;
            }
            bodies.finish()
        })();
        // Whether or not it worked, readers look in sled again from here on.
        self.pending.lock().writing = None;
        applied?;
        let mut entries = Chunked::new(&self.entries);
        for ((queue, seq), (summary, redelivered)) in &batch.puts {
            entries.insert(
                &keys::entry(*queue, *seq),
                &keys::entry_value(summary, *redelivered),
            )?;
        }
        for (queue, seq) in &batch.deletes {
            entries.remove(&keys::entry(*queue, *seq))?;
        }
        entries.finish()?;
        for (queue, seq) in &batch.marks {
            self.mark_written(*queue, *seq)?;
        }
        let mut gone = Chunked::new(&self.bodies);
        for id in &batch.body_deletes {
            gone.remove(&keys::message(*id))?;
        }
        gone.finish()?;
        Ok(target)
    }

    fn mark_written(&self, queue_id: u64, seq: u64) -> Result<(), StoreError> {
        let key = keys::entry(queue_id, seq);
        let Some(current) = self.entries.get(key).map_err(engine)? else {
            return Ok(());
        };
        match keys::parse_entry_value(&current) {
            Some(value) if value.redelivered => Ok(()),
            Some(_) => {
                let new = keys::with_redelivered(&current)
                    .ok_or_else(|| codec::corrupt(&key, "queue entry value"))?;
                // Compare-and-swap so a delete applied meanwhile is not undone.
                let _ = self
                    .entries
                    .compare_and_swap(key, Some(current), Some(new))
                    .map_err(engine)?;
                Ok(())
            }
            None => Err(codec::corrupt(&key, "queue entry value")),
        }
    }
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
        let pending = Arc::new(Mutex::new(Pending::default()));
        let writer = Writer {
            db: db.clone(),
            bodies: tree("bodies")?,
            entries: tree("entries")?,
            pending: pending.clone(),
            committer: committer.clone(),
        };
        let thread = committer
            .spawn(writer.clone())
            .map_err(|e| StoreError::Engine(format!("cannot start the commit thread: {e}")))?;
        Ok(SledStore {
            exchanges: tree("exchanges")?,
            queues: tree("queues")?,
            bindings: tree("bindings")?,
            bodies: writer.bodies.clone(),
            entries: writer.entries.clone(),
            records: tree("records")?,
            refs: RefCounts::new(),
            pending,
            committer,
            writer,
            db,
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

    /// Reads a written body; `None` if it is not on disk.
    pub(crate) fn read_body(&self, id: u64) -> Result<Option<Arc<Message>>, StoreError> {
        let key = keys::message(id);
        let Some(raw) = self.bodies.get(key).map_err(engine)? else {
            return Ok(None);
        };
        let message = codec::decode_message(&raw, &key)?;
        if message.id != id {
            return Err(codec::corrupt(&key, "message id differs from its key"));
        }
        Ok(Some(Arc::new(message)))
    }

    /// Bumps the epoch for a buffered write that nobody waits for (an acknowledgement, a
    /// redelivery mark) and, once many of those are buffered, asks for a flush: nothing else
    /// would while a backlog drains with no publisher, and the batch would grow without bound.
    fn advance_buffered(&self, pending: &Pending) -> Epoch {
        let epoch = self.committer.advance();
        if pending.unrequested_writes() >= FLUSH_AFTER_WRITES {
            self.committer.request(epoch);
        }
        epoch
    }

    /// Drops `n` references to body `id`; the last one deletes the body, or cancels its
    /// write if it was never written.
    fn release(&self, pending: &mut Pending, id: u64, n: u64) {
        let mut refs = self.refs.lock(id);
        // An unknown count means this store never counted the body (e.g. `recover` was not
        // called yet), so it may still be referenced: leave it for recovery to judge.
        let Some(count) = refs.get_mut(&id) else {
            return;
        };
        *count = count.saturating_sub(n);
        if *count == 0 {
            refs.remove(&id);
            if pending.bodies.remove(&id).is_none() {
                pending.body_deletes.push(id);
            }
        }
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
            db.insert(FORMAT_KEY, &[LAYOUT_VERSION]).map_err(engine)?;
            Ok(())
        }
        Some(v) if v.as_ref() == [LAYOUT_VERSION] => Ok(()),
        Some(v) if v.as_ref() == [LEGACY_LAYOUT] => {
            tracing::info!(from = LEGACY_LAYOUT, to = LAYOUT_VERSION, "store layout upgraded");
            db.insert(FORMAT_KEY, &[LAYOUT_VERSION]).map_err(engine)?;
            Ok(())
        }
        Some(v) => Err(StoreError::Engine(format!(
            "store format {:?} is not supported (this build reads formats {LEGACY_LAYOUT} and {LAYOUT_VERSION})",
            v.as_ref(),
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

        let mut batch = Chunked::new(&self.entries);
        let mut pending = self.pending.lock();
        let mut released = pending.drop_queue(id);
        for item in self.entries.scan_prefix(keys::queue_prefix(id)) {
            let (k, v) = item.map_err(engine)?;
            match keys::parse_entry_value(&v) {
                Some(value) => *released.entry(value.message_id).or_default() += 1,
                None => tracing::warn!(queue = id, "dropping an unreadable queue entry"),
            }
            batch.remove(k)?;
        }
        // Entries first, bodies after: a crash in between leaves orphan bodies, never entries
        // without a body.
        batch.finish()?;
        for (msg, n) in released {
            self.release(&mut pending, msg, n);
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
    fn enqueue(
        &self,
        message: &Arc<Message>,
        queue_seqs: &[(u64, u64)],
    ) -> Result<Epoch, StoreError> {
        if queue_seqs.is_empty() {
            return Ok(self.committer.current());
        }
        let id = message.id;
        let mut pending = self.pending.lock();
        let mut refs = self.refs.lock(id);
        if !refs.contains_key(&id) {
            pending.bodies.insert(id, message.clone());
        }
        let summary = MessageSummary::of(message);
        for (queue, seq) in queue_seqs {
            pending.puts.insert((*queue, *seq), (summary, false));
        }
        *refs.entry(id).or_default() += queue_seqs.len() as u64;
        Ok(self.committer.advance())
    }

    fn dequeue(&self, queue_id: u64, seq: u64, message_id: u64) -> Result<Epoch, StoreError> {
        let mut pending = self.pending.lock();
        // An entry still waiting to be written is simply not written.
        if pending.puts.remove(&(queue_id, seq)).is_none() {
            pending.deletes.push((queue_id, seq));
        }
        self.release(&mut pending, message_id, 1);
        Ok(self.advance_buffered(&pending))
    }

    fn mark_redelivered(&self, queue_id: u64, seq: u64) -> Result<Epoch, StoreError> {
        let mut pending = self.pending.lock();
        match pending.puts.get_mut(&(queue_id, seq)) {
            Some((_, redelivered)) => *redelivered = true,
            None => pending.marks.push((queue_id, seq)),
        }
        Ok(self.advance_buffered(&pending))
    }

    fn load_message(&self, id: u64) -> Result<Option<Arc<Message>>, StoreError> {
        // Checked under the lock: a body the commit thread has not yet handed to sled is in
        // `bodies` or `writing`; one that is in neither is already on disk (or gone).
        if let Some(message) = self.pending.lock().body(id) {
            return Ok(Some(message));
        }
        self.read_body(id)
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
        for k in self
            .records
            .scan_prefix(record_key(namespace, prefix)?)
            .keys()
        {
            batch.remove(k.map_err(engine)?);
        }
        self.records.apply_batch(batch).map_err(engine)?;
        Ok(self.committer.advance())
    }

    fn scan_records(&self, namespace: &str, prefix: &[u8]) -> Result<Records, StoreError> {
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

    fn recover_streaming(
        &self,
        each: &mut dyn FnMut(&QueueRecord, RecoveredEntry),
    ) -> Result<Recovered, StoreError> {
        crate::recover::recover(self, each)
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
        if let Err(e) = self.committer.flush(&self.writer) {
            tracing::error!(error = %e, "final store flush failed");
        }
    }
}
