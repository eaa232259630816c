//! [`SledStore`]: opening the database and the write side of the [`Store`] trait.

use std::collections::{HashMap, HashSet};
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
use crate::commit::{Committer, FailureFlag, FailureObserver, FlushObserver};
use crate::fs::{FileSystem, StdFs};
use crate::index::Index;
use crate::journal::Op;
use crate::pending::Pending;
use crate::quarantine::{BadRecord, Quarantine, QuarantineObserver};
use crate::refs::RefCounts;
use crate::segments::{Location, Segments};
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
/// recovery rebuilds queues without reading bodies; layout 3 moved bodies out of sled into
/// segment files, entry values naming their place; layout 4 added a checksum to metadata
/// records and entry values; layout 5 moved queue entries out of sled into the queue index.
const LAYOUT_VERSION: u8 = 5;
/// The layouts this build still opens: queue entries in sled's `entries` tree, which recovery
/// moves into the queue index; bodies in sled's `bodies` tree, which are read from there until
/// their last entry goes; and (layout 1) entry values without the summary, which recovery
/// then reads from the body. Layout 3 values simply lack the checksum. Opening such a store
/// marks it layout 5 (an older build could not read it any more).
const LEGACY_LAYOUTS: [u8; 4] = [1, 2, 3, 4];
/// Index files of deleted queues the commit thread removes per commit (8,192 entries each): a
/// queue of millions is removed over many commits, so no single commit, and none of the
/// publishers waiting on it, waits for the whole of it.
const PURGE_FILES_PER_COMMIT: usize = 2;
/// The tree of the front-ends' records, each value sealed with a checksum (layout 5)...
const RECORDS_TREE: &str = "sealed_records";
/// ...and the one that held them without before.
const LEGACY_RECORDS_TREE: &str = "records";
/// Subdirectory of the store holding the body segments.
const SEGMENTS_DIR: &str = "segments";

/// A durable store on sled, with group commit on a dedicated thread.
pub struct SledStore {
    pub(crate) db: sled::Db,
    pub(crate) exchanges: sled::Tree,
    pub(crate) queues: sled::Tree,
    pub(crate) bindings: sled::Tree,
    pub(crate) bodies: sled::Tree,
    pub(crate) entries: sled::Tree,
    pub(crate) delivered: sled::Tree,
    pub(crate) moved: sled::Tree,
    pub(crate) records: sled::Tree,
    pub(crate) refs: Arc<RefCounts>,
    pub(crate) segments: Arc<Segments>,
    pub(crate) index: Arc<Index>,
    /// Message writes waiting for the commit thread (see `pending`).
    pub(crate) pending: Arc<Mutex<Pending>>,
    pub(crate) committer: Arc<Committer>,
    /// Where bad records go (see `quarantine`).
    pub(crate) quarantine: Quarantine,
    /// Bodies found unreadable and copied to quarantine since open.
    quarantined_bodies: Mutex<HashSet<u64>>,
    writer: Writer,
    thread: Option<JoinHandle<()>>,
}

/// What the commit thread needs to write a pending batch before its fsync.
#[derive(Clone)]
pub(crate) struct Writer {
    pub db: sled::Db,
    pub bodies: sled::Tree,
    pub delivered: sled::Tree,
    /// Where compaction moved bodies to (see `compact`).
    pub moved: sled::Tree,
    pub refs: Arc<RefCounts>,
    pub segments: Arc<Segments>,
    pub index: Arc<Index>,
    pub pending: Arc<Mutex<Pending>>,
    pub committer: Arc<Committer>,
}

/// What one commit wrote: the epoch it covers and the segments to delete once it is durable.
pub(crate) struct Written {
    pub target: Epoch,
    pub retired: Vec<u32>,
    /// Message writes in the batch (bodies, entries and their deletions).
    pub writes: usize,
}

impl Writer {
    /// Takes the pending batch, writes it and makes it durable: the segments first, then sled.
    /// Returns what it covered. The epoch is read under the pending lock, where writers bump
    /// it, so every epoch up to it belongs to this batch or an earlier one; the retired
    /// segments are taken there too, so the deletions that emptied them are in this batch or
    /// an earlier one.
    ///
    /// On failure nothing is lost or skipped: the batch goes back to the pending set and the
    /// next commit writes it again, to a fresh segment (see [`Writer::restore`]). Since every
    /// later commit covers it, the durable epoch cannot pass the failed one.
    pub fn commit(&self) -> Result<Written, StoreError> {
        let (batch, bodies, done, purge_due) = {
            let mut pending = self.pending.lock();
            let mut batch = pending.take_batch();
            let purge_due = !pending.purging.is_empty();
            // Readers look for these bodies in `writing` until their location is known.
            let bodies = Arc::new(std::mem::take(&mut batch.bodies));
            if !bodies.is_empty() {
                pending.writing = Some(bodies.clone());
            }
            let done = Written {
                target: self.committer.current(),
                retired: self.segments.take_retired(),
                writes: bodies.len() + batch.puts.len() + batch.deletes.len(),
            };
            (batch, bodies, done, purge_due)
        };
        if batch.is_empty() && bodies.is_empty() && !purge_due {
            // Earlier writes (metadata goes to sled at once) still need their flush.
            return match self.sync() {
                Ok(()) => Ok(done),
                Err(e) => {
                    self.segments.restore_retired(done.retired);
                    Err(e)
                }
            };
        }
        match self.write(&batch, &bodies).and_then(|ops| {
            self.sync()?;
            Ok(ops)
        }) {
            Ok(ops) => {
                self.index.committed(ops);
                // After the sync: the deleted queues' records are gone for good now, so a
                // crash cannot bring back a queue whose entries were removed in part.
                let purged = self.purge().unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "removing a deleted queue's entries failed; retried later");
                    0
                });
                self.compact();
                Ok(Written {
                    writes: done.writes + purged,
                    ..done
                })
            }
            Err(e) => {
                self.restore(batch, &bodies, done.retired);
                Err(e)
            }
        }
    }

    /// Writes a batch taken by [`Writer::commit`], not yet synced; returns the entry changes
    /// it appended to the journal, for the queue index once they are durable.
    fn write(
        &self,
        batch: &Pending,
        bodies: &HashMap<u64, Arc<Message>>,
    ) -> Result<Vec<(u64, u64, Op)>, StoreError> {
        // Bodies before the entries naming them, entry deletes before body deletes: a crash in
        // between leaves only orphan bodies, which recovery removes.
        let located = self.write_bodies(bodies);
        // Whether or not it worked, readers look up locations from here on (a failure puts
        // the bodies back into the pending set).
        self.pending.lock().writing = None;
        let located = located?;
        let mut ops = Vec::with_capacity(batch.puts.len() + batch.deletes.len());
        for ((queue, seq), (summary, redelivered)) in &batch.puts {
            let location = located
                .get(&summary.id)
                .copied()
                .or_else(|| self.refs.location(summary.id));
            let value = keys::slot_value(summary, *redelivered, location);
            ops.push((*queue, *seq, Op::Put(value)));
        }
        for (queue, seq) in &batch.deletes {
            ops.push((*queue, *seq, Op::Settle));
        }
        self.index.append(&ops)?;
        for (queue, seq) in &batch.delivered {
            self.raise_delivered(*queue, *seq)?;
        }
        let mut gone = Chunked::new(&self.bodies);
        for id in &batch.body_deletes {
            gone.remove(&keys::message(*id))?;
        }
        gone.finish()?;
        let mut unmoved = Chunked::new(&self.moved);
        for id in &batch.moved_deletes {
            unmoved.remove(&keys::message(*id))?;
        }
        unmoved.finish()?;
        Ok(ops)
    }

    /// Removes the next index files of deleted queues (at most [`PURGE_FILES_PER_COMMIT`]) and
    /// releases the body references their entries held; returns how many entries it removed.
    /// Runs on the commit thread after a successful sync, with the pending lock taken only to
    /// read the queues and to release, so publishers are not held up by a long queue's
    /// deletion. While a queue is not done, another commit is asked for. A crash before it is
    /// done leaves index files of a queue whose record is gone, which recovery removes.
    fn purge(&self) -> Result<usize, StoreError> {
        let queues = self.pending.lock().purging.clone();
        if queues.is_empty() {
            return Ok(0);
        }
        let mut budget = PURGE_FILES_PER_COMMIT;
        let mut released: HashMap<u64, u64> = HashMap::new();
        let mut removed = 0;
        let mut finished = Vec::new();
        for queue in queues {
            if budget == 0 {
                break;
            }
            let purged = self.index.purge(queue, budget)?;
            budget -= purged.files;
            removed += purged.released.len();
            for id in purged.released {
                *released.entry(id).or_default() += 1;
            }
            if purged.done {
                self.delivered
                    .remove(keys::queue_prefix(queue))
                    .map_err(engine)?;
                finished.push(queue);
            }
        }
        let more = {
            let mut pending = self.pending.lock();
            pending.purging.retain(|q| !finished.contains(q));
            for (id, n) in released {
                self.release(&mut pending, id, n);
            }
            !pending.purging.is_empty()
        };
        if more {
            // Nobody waits on the rest of the purge, so nobody else would ask for it.
            self.committer.request(self.committer.advance());
        }
        Ok(removed)
    }

    /// Puts a batch whose write or fsync failed back into the pending set. Its bodies that are
    /// still referenced lose the place the failed attempt gave them and wait to be written
    /// again; the segment it wrote to is abandoned, because after a failed fsync its unsynced
    /// contents cannot be trusted even if a later fsync succeeds. The segments the batch would
    /// have deleted wait for the next successful commit.
    fn restore(&self, batch: Pending, bodies: &HashMap<u64, Arc<Message>>, retired: Vec<u32>) {
        let mut pending = self.pending.lock();
        pending.writing = None;
        for (id, message) in bodies {
            let mut refs = self.refs.lock(*id);
            // A body whose last entry went meanwhile stays gone: its place, if it had one, was
            // released by whoever saw the count reach zero.
            let Some(body) = refs.get_mut(id) else {
                continue;
            };
            if let Some(location) = body.location.take() {
                self.segments.release(location);
            }
            pending.bodies.insert(*id, message.clone());
        }
        self.segments.abandon_active();
        self.index.abandon_active();
        self.segments.restore_retired(retired);
        pending.restore(batch);
    }

    /// Appends the batch's bodies to the segments and records where each went. A body whose
    /// last entry went while it was being written is released at once.
    fn write_bodies(
        &self,
        written: &HashMap<u64, Arc<Message>>,
    ) -> Result<HashMap<u64, Location>, StoreError> {
        if written.is_empty() {
            return Ok(HashMap::new());
        }
        // In id order, which is publish order: a backlog is read back sequentially.
        let mut messages: Vec<&Message> = written.values().map(|m| &**m).collect();
        messages.sort_unstable_by_key(|m| m.id);
        let locations = self.segments.append(&messages)?;
        let mut located = HashMap::with_capacity(messages.len());
        for (message, location) in messages.iter().zip(locations) {
            let mut refs = self.refs.lock(message.id);
            match refs.get_mut(&message.id) {
                Some(body) => body.location = Some(location),
                None => self.segments.release(location),
            }
            located.insert(message.id, location);
        }
        Ok(located)
    }

    /// Makes everything written so far durable: the segments first, then the journal naming
    /// them, then sled.
    fn sync(&self) -> Result<(), StoreError> {
        self.segments.sync()?;
        self.index.sync()?;
        self.db.flush().map(drop).map_err(engine)
    }

    /// Drops `n` references to body `id`; the last one deletes the body, or cancels its
    /// write if it was never written.
    pub(crate) fn release(&self, pending: &mut Pending, id: u64, n: u64) {
        let mut refs = self.refs.lock(id);
        // An unknown count means this store never counted the body (e.g. `recover` was not
        // called yet), so it may still be referenced: leave it for recovery to judge.
        let Some(body) = refs.get_mut(&id) else {
            return;
        };
        body.count = body.count.saturating_sub(n);
        if body.count > 0 {
            return;
        }
        let location = body.location;
        if body.moved {
            pending.moved_deletes.push(id);
        }
        refs.remove(&id);
        if pending.bodies.remove(&id).is_some() {
            // Never written.
            return;
        }
        match location {
            Some(location) => self.segments.release(location),
            // Being appended right now: the commit thread releases it when it finds no count.
            None if pending.is_writing(id) => {}
            None => pending.body_deletes.push(id),
        }
    }

    /// Deletes segments once the commit that emptied them is durable.
    pub fn remove_segments(&self, retired: Vec<u32>) {
        for number in retired {
            if let Err(e) = self.segments.remove(number) {
                tracing::warn!(segment = number, error = %e, "cannot delete an empty segment");
            }
        }
    }

    /// Raises the queue's delivery watermark to `seq`: after a restart, every entry of the
    /// queue at or below it comes back redelivered.
    fn raise_delivered(&self, queue_id: u64, seq: u64) -> Result<(), StoreError> {
        let key = keys::queue_prefix(queue_id);
        let current = self
            .delivered
            .get(key)
            .map_err(engine)?
            .and_then(|v| keys::parse_seq(&v));
        if current.is_none_or(|c| c < seq) {
            self.delivered
                .insert(key, &seq.to_be_bytes())
                .map_err(engine)?;
        }
        Ok(())
    }
}

pub(crate) fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl SledStore {
    /// Opens (creating if needed) the store in directory `path`.
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        Self::open_with_fs(path, Arc::new(StdFs))
    }

    /// [`SledStore::open`] with the body segments' file operations going through `fs` (a test
    /// stands in a file layer that simulates power loss and disk errors; sled's own files
    /// always go to the operating system).
    pub fn open_with_fs(path: &Path, fs: Arc<dyn FileSystem>) -> Result<SledStore, StoreError> {
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
        let segments = Arc::new(Segments::open(fs.clone(), &path.join(SEGMENTS_DIR))?);
        let index = Arc::new(Index::open(fs, path)?);
        let tree = |name: &str| db.open_tree(name).map_err(engine);
        let committer = Committer::new();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let refs = Arc::new(RefCounts::new());
        let writer = Writer {
            db: db.clone(),
            bodies: tree("bodies")?,
            delivered: tree("delivered")?,
            moved: tree("moved")?,
            refs: refs.clone(),
            segments: segments.clone(),
            index: index.clone(),
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
            entries: tree("entries")?,
            delivered: writer.delivered.clone(),
            moved: writer.moved.clone(),
            records: tree(RECORDS_TREE)?,
            refs,
            segments,
            index,
            pending,
            committer,
            quarantine: Quarantine::new(path),
            quarantined_bodies: Mutex::new(HashSet::new()),
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

    /// Has `observer` told of every failed flush from now on (replacing an earlier one).
    pub fn observe_failures(&self, observer: FailureObserver) {
        self.committer.set_failure_observer(observer);
    }

    /// Set while the store's writes fail (see [`FailureFlag`]).
    pub fn failure_flag(&self) -> FailureFlag {
        self.committer.failure_flag()
    }

    /// Has `observer` told of every record moved to quarantine from now on; set it before
    /// recovery to see the records recovery finds bad.
    pub fn observe_quarantine(&self, observer: QuarantineObserver) {
        self.quarantine.set_observer(observer);
    }

    /// Number of bad records moved to the quarantine directory since open.
    pub fn quarantined_records(&self) -> u64 {
        self.quarantine.count()
    }

    /// Moves queue entry changes from the journal into the index files once the journal holds
    /// `bytes` (4 MiB by default). Smaller windows checkpoint more often; tests use them to
    /// put power cuts inside checkpoints.
    pub fn set_checkpoint_bytes(&self, bytes: u64) {
        self.index.set_checkpoint_bytes(bytes);
    }

    /// Number of flushes performed since open.
    pub fn flush_count(&self) -> u64 {
        self.committer.flush_count()
    }

    /// Number of message bodies stored (each counted once however many queues hold it).
    pub fn body_count(&self) -> usize {
        let in_segments = usize::try_from(self.segments.live_bodies()).unwrap_or(usize::MAX);
        in_segments + self.bodies.len()
    }

    /// Number of queue entries stored, across all queues.
    pub fn entry_count(&self) -> usize {
        self.index.entry_count() + self.entries.len()
    }

    /// Reads a written body; `None` if it is not on disk.
    pub(crate) fn read_body(&self, id: u64) -> Result<Option<Arc<Message>>, StoreError> {
        let key = keys::message(id);
        let message = match self.refs.location(id) {
            Some(location) => match self.segments.read(location, &key) {
                Ok(message) => message,
                // Compaction may have moved the body, and deleted its old segment, between
                // the lookup and the read: the body is then at its new place.
                Err(e) => match self.refs.location(id) {
                    Some(moved) if moved != location => self.segments.read(moved, &key)?,
                    _ => return Err(e),
                },
            },
            None => {
                // Written by an older layout, into sled.
                let Some(raw) = self.bodies.get(key).map_err(engine)? else {
                    return Ok(None);
                };
                codec::decode_message(&raw, &key)?
            }
        };
        if message.id != id {
            return Err(codec::corrupt(&key, "message id differs from its key"));
        }
        Ok(Some(Arc::new(message)))
    }

    /// Copies the record of a body that fails to read to quarantine, once per body: the queue
    /// that asked drops its entry, and another queue holding the same body would otherwise
    /// copy it again.
    fn quarantine_body(&self, id: u64, reason: &str) {
        if !self.quarantined_bodies.lock().insert(id) {
            return;
        }
        let location = self.refs.location(id);
        let raw = location
            .and_then(|l| self.segments.read_raw(l))
            .unwrap_or_default();
        let place = match location {
            Some(l) => format!(
                "segment {:08x}, offset {}, length {} (message {id})",
                l.segment, l.offset, l.len
            ),
            None => format!("body of message {id} in sled"),
        };
        let bad = BadRecord {
            place,
            reason: reason.to_owned(),
            raw: &raw,
        };
        if let Err(e) = self.quarantine.put(&bad) {
            tracing::error!(message_id = id, error = %e, "cannot quarantine an unreadable message body");
        }
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

/// Copies the front-ends' records of a layout before 5, which carried no checksum, into the
/// tree that holds them sealed.
fn seal_records(db: &sled::Db) -> Result<(), StoreError> {
    let old = db.open_tree(LEGACY_RECORDS_TREE).map_err(engine)?;
    let new = db.open_tree(RECORDS_TREE).map_err(engine)?;
    for item in old.iter() {
        let (k, v) = item.map_err(engine)?;
        new.insert(k, codec::seal(v.to_vec())).map_err(engine)?;
    }
    db.flush().map_err(engine)?;
    Ok(())
}

fn check_format(db: &sled::Db) -> Result<(), StoreError> {
    match db.get(FORMAT_KEY).map_err(engine)? {
        None => {
            db.insert(FORMAT_KEY, &[LAYOUT_VERSION]).map_err(engine)?;
            Ok(())
        }
        Some(v) if v.as_ref() == [LAYOUT_VERSION] => Ok(()),
        Some(v) if v.len() == 1 && LEGACY_LAYOUTS.contains(&v[0]) => {
            seal_records(db)?;
            tracing::info!(from = v[0], to = LAYOUT_VERSION, "store layout upgraded");
            db.insert(FORMAT_KEY, &[LAYOUT_VERSION]).map_err(engine)?;
            db.flush().map_err(engine)?;
            // Only once the new layout is durable: a crash before leaves the old records
            // to copy again.
            db.drop_tree(LEGACY_RECORDS_TREE).map_err(engine)?;
            Ok(())
        }
        Some(v) => Err(StoreError::Engine(format!(
            "store format {:?} is not supported (this build reads formats {LEGACY_LAYOUTS:?} and {LAYOUT_VERSION})",
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
        // Cheap whatever the queue holds (only its unwritten entries, one batch at most, are
        // looked at): its written entries are removed, and their references released, by the
        // commit thread (see `Writer::purge`). From now on the queue's entries count as
        // settled, so a late acknowledgement releases nothing.
        let mut pending = self.pending.lock();
        for (msg, n) in pending.drop_queue(id) {
            self.writer.release(&mut pending, msg, n);
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
        let summary = MessageSummary::of(message);
        let mut added = 0u64;
        for (queue, seq) in queue_seqs {
            // A publish that raced the queue's deletion: the deletion settled the queue's
            // entries, this one included, so it is neither written nor counted.
            if pending.is_deleted(*queue) {
                continue;
            }
            pending.puts.insert((*queue, *seq), (summary, false));
            added += 1;
        }
        if added == 0 {
            return Ok(self.committer.current());
        }
        let mut refs = self.refs.lock(id);
        if !refs.contains_key(&id) {
            pending.bodies.insert(id, message.clone());
        }
        refs.entry(id).or_default().count += added;
        Ok(self.committer.advance())
    }

    fn dequeue(&self, queue_id: u64, seq: u64, message_id: u64) -> Result<Epoch, StoreError> {
        let mut pending = self.pending.lock();
        // Deleting the queue settled the entry and released its reference already.
        if pending.is_deleted(queue_id) {
            return Ok(self.committer.current());
        }
        // An entry still waiting to be written is simply not written.
        if pending.cancel_put((queue_id, seq)) {
            pending.deletes.push((queue_id, seq));
        }
        self.writer.release(&mut pending, message_id, 1);
        Ok(self.advance_buffered(&pending))
    }

    /// An entry not yet written gets the flag in its value. For a written one, rewriting its
    /// value would cost sled a node copy per delivery, so the queue's delivery watermark is
    /// raised instead (one write per queue per commit): after a restart every entry at or below
    /// it comes back redelivered. Queues deliver in seq order except across priorities and
    /// requeues, so the flag may be set on an entry that was not delivered, never missing on
    /// one that was, which is the direction AMQP's `redelivered` allows.
    fn mark_redelivered(&self, queue_id: u64, seq: u64) -> Result<Epoch, StoreError> {
        let mut pending = self.pending.lock();
        if pending.is_deleted(queue_id) {
            return Ok(self.committer.current());
        }
        match pending.puts.get_mut(&(queue_id, seq)) {
            Some((_, redelivered)) => *redelivered = true,
            None => {
                let mark = pending.delivered.entry(queue_id).or_default();
                *mark = (*mark).max(seq);
            }
        }
        Ok(self.advance_buffered(&pending))
    }

    fn load_message(&self, id: u64) -> Result<Option<Arc<Message>>, StoreError> {
        // Checked under the lock: a body the commit thread has not yet handed to sled is in
        // `bodies` or `writing`; one that is in neither is already on disk (or gone).
        if let Some(message) = self.pending.lock().body(id) {
            return Ok(Some(message));
        }
        let result = self.read_body(id);
        if let Err(StoreError::Corrupt { reason, .. }) = &result {
            self.quarantine_body(id, reason);
        }
        result
    }

    fn put_record(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<Epoch, StoreError> {
        self.records
            .insert(record_key(namespace, key)?, codec::seal(value.to_vec()))
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
        let mut out = Vec::new();
        for item in self.records.scan_prefix(record_key(namespace, prefix)?) {
            let (k, v) = item.map_err(engine)?;
            match codec::unseal(&v) {
                Some(value) => out.push((k[skip..].to_vec(), value.to_vec())),
                // One bad session or retained message must not stop the others loading.
                None => {
                    let e = codec::corrupt(&k, "record fails its checksum");
                    self.move_aside(&self.records, RECORDS_TREE, &k, &v, &e)?;
                }
            }
        }
        Ok(out)
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
        let sled = self.db.size_on_disk().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read store size");
            0
        });
        sled + self.segments.size_on_disk() + self.index.size_on_disk()
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
