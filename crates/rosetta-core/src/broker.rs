//! The broker: virtual hosts over one store, recovery at startup, shared counters.

mod vhosts;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::error::CoreError;
use crate::queue::Queue;
use crate::store::Store;
use crate::vhost::VHost;

pub use vhosts::{VHostDeleted, VHostInfo, VHostMeta, VHostPut};

/// Limits the core enforces; the server fills them from configuration.
#[derive(Debug, Clone, Default)]
pub struct CoreLimits {
    /// Length cap for queues declared without `x-max-length` (0 = none).
    pub max_queue_length: u64,
    /// Byte cap for queues declared without `x-max-length-bytes` (0 = none).
    pub max_queue_bytes: u64,
    /// Body bytes of ready persistent messages each stored queue keeps in memory; the rest are
    /// paged out to the store and read back in order when the queue reaches them (0 = keep
    /// everything in memory).
    pub queue_resident_bytes: u64,
    /// Bytes of deliveries each consumer may have handed to its connection and not yet written
    /// to the socket; past it the queue keeps its messages until the client reads (0 = none).
    pub consumer_buffer_bytes: u64,
    /// Queues per virtual host (0 = none).
    pub max_queues: u64,
    /// Exchanges per virtual host, predeclared ones included (0 = none).
    pub max_exchanges: u64,
    /// Bindings per virtual host (0 = none).
    pub max_bindings: u64,
    /// Quorum queue declares (`x-queue-type = quorum`) are taken as durable classic queues
    /// rather than refused; what a single node can honour of them, it does.
    pub quorum_as_classic: bool,
}

/// Broker-wide message counters, read by the metrics endpoint. Each is counted once, in the
/// core, where its event happens, so every protocol counts the same event the same way.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages clients published (`VHost::publish`).
    pub published: AtomicU64,
    /// Messages queues handed to consumers or to `basic.get`, and MQTT retained messages sent.
    pub delivered: AtomicU64,
    /// Deliveries the client acknowledged (`Queue::settle` with [`crate::Settlement::Ack`]).
    pub acked: AtomicU64,
    /// Deliveries of messages that had been delivered before (the redelivered flag).
    pub redelivered: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Published messages that matched no queue.
    pub unroutable: AtomicU64,
    /// Dead letters dropped to break a cycle or end a runaway cascade.
    pub dead_letter_dropped: AtomicU64,
}

impl Counters {
    /// Counts a message handed to a client, and whether it had been delivered before. Queues
    /// count theirs as they hand them to consumers or to `basic.get`; the MQTT front-end counts
    /// the retained messages it sends, which come from no queue.
    pub fn count_delivery(&self, redelivered: bool) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if redelivered {
            self.redelivered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// State every virtual host shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub next_message_id: AtomicU64,
    pub next_queue_id: AtomicU64,
    pub limits: CoreLimits,
    pub counters: Arc<Counters>,
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

#[derive(Debug)]
pub struct Broker {
    vhosts: DashMap<String, Arc<VHost>>,
    /// The virtual hosts the broker was opened with, which cannot be deleted.
    permanent: HashSet<String>,
    /// Descriptions and tags, for the virtual hosts that have any.
    meta: DashMap<String, VHostMeta>,
    /// Held while a virtual host is created or deleted (see `vhosts.rs`).
    vhost_changes: parking_lot::Mutex<()>,
    shared: Arc<Shared>,
    next_connection_id: AtomicU64,
}

impl Broker {
    /// Opens the broker over `store`, creating the configured virtual hosts (`vhost_names`, which
    /// cannot be deleted) and those made at run time before, and recovering every durable
    /// exchange, queue, binding and message.
    pub fn open(
        store: Arc<dyn Store>,
        vhost_names: &[String],
        limits: CoreLimits,
    ) -> Result<Arc<Broker>, CoreError> {
        // The id counters are set once recovery has seen every stored id; nothing publishes
        // before then.
        let shared = Arc::new(Shared {
            store,
            next_message_id: AtomicU64::new(1),
            next_queue_id: AtomicU64::new(1),
            limits,
            counters: Arc::new(Counters::default()),
        });
        let broker = Arc::new(Broker {
            vhosts: DashMap::new(),
            permanent: vhost_names.iter().cloned().collect(),
            meta: DashMap::new(),
            vhost_changes: parking_lot::Mutex::new(()),
            shared: shared.clone(),
            next_connection_id: AtomicU64::new(1),
        });
        for name in vhost_names {
            broker
                .vhosts
                .insert(name.clone(), VHost::new(name, shared.clone()));
        }
        for (name, meta) in vhosts::stored(shared.store.as_ref())? {
            broker
                .vhosts
                .entry(name.clone())
                .or_insert_with(|| VHost::new(&name, shared.clone()));
            broker.meta.insert(name, meta);
        }
        let vhost = |name: &str| {
            broker
                .vhosts
                .entry(name.to_owned())
                .or_insert_with(|| VHost::new(name, shared.clone()))
                .clone()
        };
        // Entries arrive one by one, each queue created on its first, so a long backlog is never
        // held in a list beside the queue it is restored into.
        let mut restored: HashMap<u64, Arc<Queue>> = HashMap::new();
        let mut failure = None;
        let mut messages = 0usize;
        let recovered = shared.store.recover_streaming(&mut |record, entry| {
            if failure.is_some() {
                return;
            }
            let q = match restored.entry(record.id) {
                Entry::Occupied(q) => q.into_mut(),
                Entry::Vacant(slot) => match vhost(&record.vhost).restore_queue(record) {
                    Ok(q) => slot.insert(q),
                    Err(e) => {
                        failure = Some(e);
                        return;
                    }
                },
            };
            q.restore(entry.seq, entry.summary, entry.redelivered);
            messages += 1;
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        shared
            .next_message_id
            .store(recovered.max_message_id + 1, Ordering::Relaxed);
        shared
            .next_queue_id
            .store(recovered.max_queue_id + 1, Ordering::Relaxed);
        for e in &recovered.exchanges {
            vhost(&e.vhost).restore_exchange(e);
        }
        for (record, _) in &recovered.queues {
            if !restored.contains_key(&record.id) {
                vhost(&record.vhost).restore_queue(record)?;
            }
        }
        for b in &recovered.bindings {
            vhost(&b.vhost).restore_binding(b);
        }
        tracing::info!(
            exchanges = recovered.exchanges.len(),
            queues = recovered.queues.len(),
            bindings = recovered.bindings.len(),
            messages,
            "store recovered"
        );
        Ok(broker)
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        self.vhosts.iter().map(|v| v.clone()).collect()
    }

    pub fn new_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.shared.counters
    }

    /// Periodic housekeeping for every virtual host (TTL expiry, `x-expires`).
    pub fn tick(&self) {
        for v in self.vhosts() {
            v.tick();
        }
    }

    /// A connection ended: drop its exclusive queues everywhere.
    pub fn connection_closed(&self, conn: u64) {
        for v in self.vhosts() {
            v.connection_closed(conn);
        }
    }
}
