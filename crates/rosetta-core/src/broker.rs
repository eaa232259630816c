//! The broker: virtual hosts over one store, recovery at startup, shared counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::error::CoreError;
use crate::store::Store;
use crate::vhost::VHost;

/// Limits the core enforces; the server fills them from configuration.
#[derive(Debug, Clone, Default)]
pub struct CoreLimits {
    /// Length cap for queues declared without `x-max-length` (0 = none).
    pub max_queue_length: u64,
    /// Byte cap for queues declared without `x-max-length-bytes` (0 = none).
    pub max_queue_bytes: u64,
}

/// Broker-wide message counters, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    pub redelivered: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub unroutable: AtomicU64,
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
    shared: Arc<Shared>,
    next_connection_id: AtomicU64,
}

impl Broker {
    /// Opens the broker over `store`, creating the configured virtual hosts and recovering
    /// every durable exchange, queue, binding and message.
    pub fn open(store: Arc<dyn Store>, vhost_names: &[String], limits: CoreLimits) -> Result<Arc<Broker>, CoreError> {
        let recovered = store.recover()?;
        let shared = Arc::new(Shared {
            store,
            next_message_id: AtomicU64::new(recovered.max_message_id + 1),
            next_queue_id: AtomicU64::new(recovered.max_queue_id + 1),
            limits,
            counters: Arc::new(Counters::default()),
        });
        let broker = Arc::new(Broker { vhosts: DashMap::new(), shared: shared.clone(), next_connection_id: AtomicU64::new(1) });
        for name in vhost_names {
            broker.vhosts.insert(name.clone(), VHost::new(name, shared.clone()));
        }
        let vhost = |name: &str| broker.vhosts.entry(name.to_owned()).or_insert_with(|| VHost::new(name, shared.clone())).clone();
        for e in &recovered.exchanges {
            vhost(&e.vhost).restore_exchange(e);
        }
        let mut messages = 0usize;
        for (record, entries) in &recovered.queues {
            let q = vhost(&record.vhost).restore_queue(record)?;
            messages += entries.len();
            for entry in entries {
                q.restore(entry.seq, entry.message.clone(), entry.redelivered);
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
