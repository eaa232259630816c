//! An in-memory [`Store`] for the core's own tests: everything in maps, body reads counted, and
//! a body lost on request.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::message::Message;
use crate::store::{
    BindingRecord, Epoch, ExchangeRecord, MessageSummary, QueueRecord, Records, Recovered,
    RecoveredEntry, Store, StoreError,
};

/// A front-end record's namespace and key.
type RecordKey = (String, Vec<u8>);

/// A store that keeps everything in maps, counts body reads, and can lose a body on request.
#[derive(Default)]
pub(crate) struct MemoryStore {
    queues: Mutex<Vec<QueueRecord>>,
    /// The front-ends' records, by namespace and key.
    records: Mutex<BTreeMap<RecordKey, Vec<u8>>>,
    pub(crate) entries: Mutex<BTreeMap<(u64, u64), (MessageSummary, bool)>>,
    /// Body and the number of entries referencing it.
    pub(crate) bodies: Mutex<HashMap<u64, (Arc<Message>, u64)>>,
    pub(crate) loads: AtomicU64,
    /// Called on every body read, for tests that look at the caller's state meanwhile.
    pub(crate) on_load: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    epoch: AtomicU64,
    /// Blocking [`Store::sync`] calls, which front-end paths must never make: they run on
    /// async worker threads.
    pub(crate) blocking_syncs: AtomicU64,
    /// The highest epoch the group committer was asked for.
    pub(crate) requested: AtomicU64,
}

impl MemoryStore {
    fn advance(&self) -> Epoch {
        self.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// How many holders the stored copy of a body has (1 = only the store).
    pub(crate) fn holders(&self, id: u64) -> usize {
        self.bodies
            .lock()
            .get(&id)
            .map_or(0, |(m, _)| Arc::strong_count(m))
    }

    pub(crate) fn lose_body(&self, id: u64) {
        self.bodies.lock().remove(&id);
    }
}

impl Store for MemoryStore {
    fn save_exchange(&self, _: &ExchangeRecord) -> Result<Epoch, StoreError> {
        Ok(self.advance())
    }
    fn delete_exchange(&self, _: &str, _: &str) -> Result<Epoch, StoreError> {
        Ok(self.advance())
    }
    fn save_queue(&self, record: &QueueRecord) -> Result<Epoch, StoreError> {
        // Replaces a record of the same queue, as a store keyed by vhost and name does.
        let mut queues = self.queues.lock();
        queues.retain(|q| q.vhost != record.vhost || q.name != record.name);
        queues.push(record.clone());
        drop(queues);
        Ok(self.advance())
    }
    fn delete_queue(&self, _: &str, _: &str, id: u64) -> Result<Epoch, StoreError> {
        self.queues.lock().retain(|q| q.id != id);
        self.entries.lock().retain(|(q, _), _| *q != id);
        Ok(self.advance())
    }
    fn save_binding(&self, _: &BindingRecord) -> Result<Epoch, StoreError> {
        Ok(self.advance())
    }
    fn delete_binding(&self, _: &BindingRecord) -> Result<Epoch, StoreError> {
        Ok(self.advance())
    }
    fn enqueue(
        &self,
        message: &Arc<Message>,
        queue_seqs: &[(u64, u64)],
    ) -> Result<Epoch, StoreError> {
        let summary = MessageSummary::of(message);
        let mut entries = self.entries.lock();
        for key in queue_seqs {
            entries.insert(*key, (summary, false));
        }
        self.bodies
            .lock()
            .entry(message.id)
            .or_insert_with(|| (message.clone(), 0))
            .1 += queue_seqs.len() as u64;
        Ok(self.advance())
    }
    fn dequeue(&self, queue_id: u64, seq: u64, message_id: u64) -> Result<Epoch, StoreError> {
        if self.entries.lock().remove(&(queue_id, seq)).is_some() {
            let mut bodies = self.bodies.lock();
            if let Some((_, refs)) = bodies.get_mut(&message_id) {
                *refs -= 1;
                if *refs == 0 {
                    bodies.remove(&message_id);
                }
            }
        }
        Ok(self.advance())
    }
    fn mark_redelivered(&self, queue_id: u64, seq: u64) -> Result<Epoch, StoreError> {
        if let Some((_, redelivered)) = self.entries.lock().get_mut(&(queue_id, seq)) {
            *redelivered = true;
        }
        Ok(self.advance())
    }
    fn load_message(&self, id: u64) -> Result<Option<Arc<Message>>, StoreError> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = self.on_load.lock().as_ref() {
            hook();
        }
        Ok(self.bodies.lock().get(&id).map(|(m, _)| m.clone()))
    }
    fn put_record(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<Epoch, StoreError> {
        self.records
            .lock()
            .insert((namespace.to_owned(), key.to_vec()), value.to_vec());
        Ok(self.advance())
    }
    fn delete_record(&self, namespace: &str, key: &[u8]) -> Result<Epoch, StoreError> {
        self.records
            .lock()
            .remove(&(namespace.to_owned(), key.to_vec()));
        Ok(self.advance())
    }
    fn delete_records(&self, namespace: &str, prefix: &[u8]) -> Result<Epoch, StoreError> {
        self.records
            .lock()
            .retain(|(ns, k), _| ns != namespace || !k.starts_with(prefix));
        Ok(self.advance())
    }
    fn scan_records(&self, namespace: &str, prefix: &[u8]) -> Result<Records, StoreError> {
        Ok(self
            .records
            .lock()
            .iter()
            .filter(|((ns, k), _)| ns == namespace && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }
    fn current_epoch(&self) -> Epoch {
        self.epoch.load(Ordering::SeqCst)
    }
    fn durable_epoch(&self) -> Epoch {
        self.current_epoch()
    }
    fn request_sync(&self, epoch: Epoch) {
        self.requested.fetch_max(epoch, Ordering::SeqCst);
    }
    fn subscribe_durable(&self) -> watch::Receiver<Epoch> {
        watch::channel(self.current_epoch()).1
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.blocking_syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn recover_streaming(
        &self,
        each: &mut dyn FnMut(&QueueRecord, RecoveredEntry),
    ) -> Result<Recovered, StoreError> {
        let queues = self.queues.lock().clone();
        for q in &queues {
            for (&(_, seq), &(summary, redelivered)) in
                self.entries.lock().range((q.id, 0)..=(q.id, u64::MAX))
            {
                each(
                    q,
                    RecoveredEntry {
                        seq,
                        redelivered,
                        summary,
                    },
                );
            }
        }
        let max_message_id = self.bodies.lock().keys().copied().max().unwrap_or(0);
        let max_queue_id = queues.iter().map(|q| q.id).max().unwrap_or(0);
        let queues = queues.into_iter().map(|q| (q, Vec::new())).collect();
        Ok(Recovered {
            queues,
            max_message_id,
            max_queue_id,
            ..Recovered::default()
        })
    }
    fn size_on_disk(&self) -> u64 {
        0
    }
}
