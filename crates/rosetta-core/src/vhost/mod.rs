//! A virtual host: its exchanges, queues and bindings, and the operations every protocol
//! front-end performs on them. Each concern has its own file:
//!
//! - `exchanges`: declaring, restoring and deleting exchanges;
//! - `queues`: declaring, restoring, deleting and purging queues, with the front-end that made
//!   a queue for its own use as its owner;
//! - `owners`: front-ends taking over the queues they made before queues carried an owner;
//! - `bind`: bindings between exchanges and queues or other exchanges;
//! - `route`: publishing, and resolving a message's target queues;
//! - `dead_letter`: republishing messages that died in a queue to its dead-letter exchange;
//! - `consume`: consumers and `basic.get`;
//! - `direct_reply`: direct reply-to, replies routed straight to a requester's consumer;
//! - `housekeeping`: exclusive queues of closed connections, TTL expiry and `x-expires`.
//!
//! Publishing resolves routes in the caller's task against read-mostly tables, then hands the
//! message to each target queue; no global task sits on the message path.

mod bind;
mod consume;
mod dead_letter;
mod direct_reply;
mod exchanges;
mod housekeeping;
mod owners;
mod queues;
mod route;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use dashmap::DashMap;

use crate::broker::Shared;
use crate::consumer::ConnectionId;
use crate::error::CoreError;
use crate::exchange::{Exchange, ExchangeKind, AMQ_TOPIC};
use crate::hash::KeyedState;
use crate::message::Table;
use crate::queue::Queue;
use crate::store::Epoch;

// The declaration and result types live beside the operations that use them; these keep their
// `crate::vhost::…` paths, which front-ends and tests name.
pub use direct_reply::{is_direct_reply, DIRECT_REPLY_TO};
pub use exchanges::ExchangeDeclare;
pub use queues::{QueueDeclare, QueueDeclared, QueueDeleted};
pub use route::{PublishOutcome, MAX_EXCHANGE_HOPS};

/// The exchanges every virtual host has (AMQP 0-9-1 §3.1.3, plus RabbitMQ's `amq.match`).
const PREDECLARED: [(&str, ExchangeKind); 5] = [
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    (AMQ_TOPIC, ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

/// Longest routing or binding key: what an AMQP short string carries. Front-ends refuse longer
/// keys in their own terms; the core refuses them too, so none can reach a consumer whose
/// protocol could not carry it.
pub const MAX_KEY_BYTES: usize = 255;

#[derive(Debug)]
pub struct VHost {
    pub name: String,
    shared: Arc<Shared>,
    /// Publishes look exchanges and queues up by names that clients chose: keyed hashing.
    exchanges: DashMap<String, Arc<Exchange>, KeyedState>,
    queues: DashMap<String, Arc<Queue>, KeyedState>,
    /// The queues behind direct reply addresses, by address; never in `queues`.
    direct_replies: DashMap<String, Arc<Queue>, KeyedState>,
    /// Bindings of every exchange here, for `max_bindings`.
    binding_count: AtomicU64,
    /// Set once the virtual host was deleted at run time (`Broker::delete_vhost`): sessions
    /// still holding it are closed.
    deleted: AtomicBool,
    me: Weak<VHost>,
}

fn inequivalent(
    what: &str,
    arg: &str,
    name: &str,
    vhost: &str,
    received: impl std::fmt::Display,
    current: impl std::fmt::Display,
) -> CoreError {
    CoreError::PreconditionFailed(format!(
        "inequivalent arg '{arg}' for {what} '{name}' in vhost '{vhost}': received '{received}' but current is '{current}'"
    ))
}

impl VHost {
    pub(crate) fn new(name: &str, shared: Arc<Shared>) -> Arc<Self> {
        let vhost = Arc::new_cyclic(|me| VHost {
            name: name.to_owned(),
            shared,
            exchanges: DashMap::default(),
            queues: DashMap::default(),
            direct_replies: DashMap::default(),
            binding_count: AtomicU64::new(0),
            deleted: AtomicBool::new(false),
            me: me.clone(),
        });
        for (ex, kind) in PREDECLARED {
            vhost.exchanges.insert(
                ex.to_owned(),
                Arc::new(Exchange::new(
                    ex.to_owned(),
                    kind,
                    true,
                    false,
                    false,
                    Table::new(),
                )),
            );
        }
        vhost
    }

    /// Whether the virtual host was deleted: its connections must close.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }

    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.get(name).map(|e| e.clone())
    }

    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.get(name).map(|q| q.clone())
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.iter().map(|q| q.clone()).collect()
    }

    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.iter().map(|e| e.clone()).collect()
    }

    fn not_found_queue(&self, name: &str) -> CoreError {
        CoreError::NotFound(format!("no queue '{name}' in vhost '{}'", self.name))
    }

    fn not_found_exchange(&self, name: &str) -> CoreError {
        CoreError::NotFound(format!("no exchange '{name}' in vhost '{}'", self.name))
    }

    /// Writes a durable metadata record and asks the group committer for it. The client hears
    /// "ok" only once the record is on disk, as with RabbitMQ, but this runs on an async worker
    /// thread, so the epoch goes back to the front-end, which holds its reply until the store's
    /// durable point passes it instead of blocking the thread on an fsync.
    fn persist(
        &self,
        write: impl FnOnce() -> Result<Epoch, crate::store::StoreError>,
    ) -> Result<Epoch, CoreError> {
        let epoch = write()?;
        self.shared.store.request_sync(epoch);
        Ok(epoch)
    }

    /// Asks the group committer for `epoch`, when something was written.
    fn request_sync(&self, epoch: Option<Epoch>) {
        if let Some(epoch) = epoch {
            self.shared.store.request_sync(epoch);
        }
    }

    /// Refuses a queue exclusive to another connection (405). Not to be confused with the
    /// queue's owner (`Queue::owner`), the front-end that made it.
    fn check_exclusive(&self, q: &Queue, conn: ConnectionId) -> Result<(), CoreError> {
        match q.exclusive_owner {
            Some(owner) if owner != conn => Err(CoreError::ResourceLocked(format!(
                "cannot obtain exclusive access to locked queue '{}' in vhost '{}'",
                q.name, self.name
            ))),
            _ => Ok(()),
        }
    }

    /// A queue the connection may use: exists (404) and is not another connection's (405).
    pub fn usable_queue(&self, name: &str, conn: ConnectionId) -> Result<Arc<Queue>, CoreError> {
        let q = self.queue(name).ok_or_else(|| self.not_found_queue(name))?;
        self.check_exclusive(&q, conn)?;
        Ok(q)
    }
}
