//! A store wrapper for front-end tests (feature `testing`): the test decides when writes become
//! durable and whether they fail, so a test can look at what a session sends while a write is
//! still on its way to the disk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::message::Message;
use crate::store::{
    BindingRecord, Epoch, ExchangeRecord, QueueRecord, Records, Recovered, RecoveredEntry, Store,
    StoreError,
};

/// Wraps a store, whose writes it passes on, with a durable point that moves only when the test
/// calls [`ManualDurability::commit`], like a disk whose fsync has not returned yet. Its
/// blocking [`Store::sync`] panics: front-ends run on async worker threads and must wait for
/// the durable point instead, so a test that reaches it has found a blocked worker.
pub struct ManualDurability {
    inner: Arc<dyn Store>,
    durable: watch::Sender<Epoch>,
    failing: AtomicBool,
}

impl ManualDurability {
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        let durable = watch::Sender::new(inner.durable_epoch());
        Arc::new(ManualDurability {
            inner,
            durable,
            failing: AtomicBool::new(false),
        })
    }

    /// Makes every write so far durable, as one group commit would.
    pub fn commit(&self) {
        self.durable.send_replace(self.inner.current_epoch());
    }

    /// From now on every write fails (`true`) or goes through again (`false`), as on a disk
    /// that is full or broken.
    pub fn fail_writes(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn write(
        &self,
        write: impl FnOnce(&dyn Store) -> Result<Epoch, StoreError>,
    ) -> Result<Epoch, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Engine("simulated write failure".into()));
        }
        write(self.inner.as_ref())
    }
}

impl Store for ManualDurability {
    fn save_exchange(&self, record: &ExchangeRecord) -> Result<Epoch, StoreError> {
        self.write(|s| s.save_exchange(record))
    }
    fn delete_exchange(&self, vhost: &str, name: &str) -> Result<Epoch, StoreError> {
        self.write(|s| s.delete_exchange(vhost, name))
    }
    fn save_queue(&self, record: &QueueRecord) -> Result<Epoch, StoreError> {
        self.write(|s| s.save_queue(record))
    }
    fn delete_queue(&self, vhost: &str, name: &str, id: u64) -> Result<Epoch, StoreError> {
        self.write(|s| s.delete_queue(vhost, name, id))
    }
    fn save_binding(&self, record: &BindingRecord) -> Result<Epoch, StoreError> {
        self.write(|s| s.save_binding(record))
    }
    fn delete_binding(&self, record: &BindingRecord) -> Result<Epoch, StoreError> {
        self.write(|s| s.delete_binding(record))
    }
    fn enqueue(
        &self,
        message: &Arc<Message>,
        queue_seqs: &[(u64, u64)],
    ) -> Result<Epoch, StoreError> {
        self.write(|s| s.enqueue(message, queue_seqs))
    }
    fn dequeue(&self, queue_id: u64, seq: u64, message_id: u64) -> Result<Epoch, StoreError> {
        self.write(|s| s.dequeue(queue_id, seq, message_id))
    }
    fn mark_redelivered(&self, queue_id: u64, seq: u64) -> Result<Epoch, StoreError> {
        self.write(|s| s.mark_redelivered(queue_id, seq))
    }
    fn load_message(&self, id: u64) -> Result<Option<Arc<Message>>, StoreError> {
        self.inner.load_message(id)
    }
    fn put_record(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<Epoch, StoreError> {
        self.write(|s| s.put_record(namespace, key, value))
    }
    fn delete_record(&self, namespace: &str, key: &[u8]) -> Result<Epoch, StoreError> {
        self.write(|s| s.delete_record(namespace, key))
    }
    fn delete_records(&self, namespace: &str, prefix: &[u8]) -> Result<Epoch, StoreError> {
        self.write(|s| s.delete_records(namespace, prefix))
    }
    fn scan_records(&self, namespace: &str, prefix: &[u8]) -> Result<Records, StoreError> {
        self.inner.scan_records(namespace, prefix)
    }
    fn current_epoch(&self) -> Epoch {
        self.inner.current_epoch()
    }
    fn durable_epoch(&self) -> Epoch {
        *self.durable.borrow()
    }
    /// Only the test makes writes durable.
    fn request_sync(&self, _: Epoch) {}
    fn subscribe_durable(&self) -> watch::Receiver<Epoch> {
        self.durable.subscribe()
    }
    fn sync(&self) -> Result<(), StoreError> {
        panic!("blocking Store::sync called: it would stall an async worker thread on an fsync");
    }
    fn recover_streaming(
        &self,
        each: &mut dyn FnMut(&QueueRecord, RecoveredEntry),
    ) -> Result<Recovered, StoreError> {
        self.inner.recover_streaming(each)
    }
    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }
}
