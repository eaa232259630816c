//! The storage contract. The core decides *what* is durable; an implementation of [`Store`]
//! decides how it reaches the disk. Writes are buffered by the implementation and made durable by
//! a group commit: every write returns a [`Epoch`] and the write is durable once
//! [`Store::durable_epoch`] has reached it. One fsync therefore covers many publishers.

use std::collections::HashMap;
use std::sync::Arc;

use crate::message::{Message, Table};
use crate::queue_owner::QueueOwner;

/// A monotonically increasing write counter. A write with epoch `e` is on disk once the durable
/// epoch is `>= e`.
pub type Epoch = u64;

/// A durable exchange as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeRecord {
    pub vhost: String,
    pub name: String,
    /// `direct`, `fanout`, `topic` or `headers`.
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Table,
}

/// A durable queue as stored. `id` is the key prefix of its messages.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRecord {
    pub id: u64,
    pub vhost: String,
    pub name: String,
    pub auto_delete: bool,
    pub arguments: Table,
    /// The front-end that made the queue for its own use; `None` for queues clients and
    /// operators declared, and for records written before queues carried an owner.
    pub owner: Option<QueueOwner>,
}

/// A binding between durable ends. `destination_is_queue` tells queue from exchange bindings.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingRecord {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    pub destination_is_queue: bool,
    pub routing_key: String,
    pub arguments: Table,
}

/// What a queue keeps of a message whose body it leaves in the store (see the core's paging):
/// enough to order, count and expire the entry, and to read the body back by `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageSummary {
    pub id: u64,
    /// Counted against `x-max-length-bytes` like the body itself.
    pub body_len: u64,
    /// The publisher's priority, before a queue's `x-max-priority` caps it.
    pub priority: Option<u8>,
    /// The per-message TTL (`expiration`) in milliseconds, when present and valid.
    pub expiration_ms: Option<u64>,
}

impl MessageSummary {
    pub fn of(message: &Message) -> Self {
        MessageSummary {
            id: message.id,
            body_len: message.body_len(),
            priority: message.properties.priority,
            expiration_ms: message.properties.expiration_ms(),
        }
    }
}

/// A message recovered for one queue, in queue order. Only its summary comes back: bodies stay
/// on disk until the queue reads them with [`Store::load_message`], so recovering a long
/// backlog does not load it into memory.
#[derive(Debug, Clone)]
pub struct RecoveredEntry {
    pub seq: u64,
    pub redelivered: bool,
    pub summary: MessageSummary,
}

/// Everything the store held at startup.
#[derive(Debug, Default)]
pub struct Recovered {
    pub exchanges: Vec<ExchangeRecord>,
    /// Each queue with its messages sorted by `seq` ([`Store::recover`]), or with none when
    /// they were handed out one by one ([`Store::recover_streaming`]).
    pub queues: Vec<(QueueRecord, Vec<RecoveredEntry>)>,
    pub bindings: Vec<BindingRecord>,
    /// The largest message id seen, so new ids do not collide.
    pub max_message_id: u64,
    /// The largest queue id seen.
    pub max_queue_id: u64,
}

/// Records a scan returns: (key, value) pairs in key order.
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Errors a store reports. Implementations wrap their engine's error as text so the core stays
/// independent of any engine.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("corrupt record under key {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// A durable store. All methods are synchronous and cheap (they buffer); durability comes from
/// the group commit, observed through [`Store::durable_epoch`] / [`Store::subscribe_durable`].
pub trait Store: Send + Sync + 'static {
    fn save_exchange(&self, record: &ExchangeRecord) -> Result<Epoch, StoreError>;
    fn delete_exchange(&self, vhost: &str, name: &str) -> Result<Epoch, StoreError>;
    fn save_queue(&self, record: &QueueRecord) -> Result<Epoch, StoreError>;
    /// Deletes the queue and every message entry it holds (bodies whose last reference goes
    /// are deleted too).
    fn delete_queue(&self, vhost: &str, name: &str, id: u64) -> Result<Epoch, StoreError>;
    fn save_binding(&self, record: &BindingRecord) -> Result<Epoch, StoreError>;
    fn delete_binding(&self, record: &BindingRecord) -> Result<Epoch, StoreError>;

    /// Adds `message` to the durable queues `queue_seqs` (queue id, sequence in that queue).
    /// The body is written once however many queues reference it.
    fn enqueue(
        &self,
        message: &Arc<Message>,
        queue_seqs: &[(u64, u64)],
    ) -> Result<Epoch, StoreError>;
    /// Removes one queue entry; the body goes with its last reference.
    fn dequeue(&self, queue_id: u64, seq: u64, message_id: u64) -> Result<Epoch, StoreError>;
    /// Records that the entry was delivered at least once, so it comes back `redelivered`
    /// after a restart.
    fn mark_redelivered(&self, queue_id: u64, seq: u64) -> Result<Epoch, StoreError>;
    /// Reads a message back by id, whether it is still waiting for the group commit or already
    /// on disk. `None` when no queue entry references it any more.
    fn load_message(&self, id: u64) -> Result<Option<Arc<Message>>, StoreError>;

    /// Stores a small record a front-end keeps beside its queues (MQTT sessions, retained
    /// messages, packet ids awaiting release; the core keeps which front-ends took over their
    /// queues from before queue owners the same way), under `namespace` and `key`, replacing any
    /// record of the same key. The value is opaque: its writer encodes it. Durable like every other
    /// write, once the durable epoch reaches the returned one. `namespace` holds no NUL byte.
    fn put_record(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<Epoch, StoreError>;
    /// Deletes one record; deleting a missing record succeeds.
    fn delete_record(&self, namespace: &str, key: &[u8]) -> Result<Epoch, StoreError>;
    /// Deletes every record of `namespace` whose key starts with `prefix`.
    fn delete_records(&self, namespace: &str, prefix: &[u8]) -> Result<Epoch, StoreError>;
    /// Every record of `namespace` whose key starts with `prefix`, in key order. Sees buffered
    /// writes too, so a reader always finds what was just put.
    fn scan_records(&self, namespace: &str, prefix: &[u8]) -> Result<Records, StoreError>;

    /// The epoch of the latest buffered write.
    fn current_epoch(&self) -> Epoch;
    /// The epoch covered by the latest completed fsync.
    fn durable_epoch(&self) -> Epoch;
    /// Asks the group committer to make everything up to `epoch` durable soon.
    fn request_sync(&self, epoch: Epoch);
    /// A receiver that sees the durable epoch advance.
    fn subscribe_durable(&self) -> tokio::sync::watch::Receiver<Epoch>;
    /// Blocks until everything written so far is on disk.
    fn sync(&self) -> Result<(), StoreError>;
    /// Reads back everything durable except message bodies (see [`RecoveredEntry`]), handing
    /// each queue entry to `each` with its queue's record, queue by queue in `seq` order, rather
    /// than collecting them: a backlog of millions is then never held twice. The returned
    /// queues carry no entries. Called once, at startup.
    fn recover_streaming(
        &self,
        each: &mut dyn FnMut(&QueueRecord, RecoveredEntry),
    ) -> Result<Recovered, StoreError>;

    /// [`Store::recover_streaming`] with each queue's entries collected beside it.
    fn recover(&self) -> Result<Recovered, StoreError> {
        let mut entries: HashMap<u64, Vec<RecoveredEntry>> = HashMap::new();
        let mut recovered = self.recover_streaming(&mut |queue, entry| {
            entries.entry(queue.id).or_default().push(entry)
        })?;
        for (queue, list) in &mut recovered.queues {
            if let Some(collected) = entries.remove(&queue.id) {
                *list = collected;
            }
        }
        Ok(recovered)
    }
    /// Bytes the engine occupies on disk.
    fn size_on_disk(&self) -> u64;
}
