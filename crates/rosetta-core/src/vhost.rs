//! A virtual host: its exchanges, queues and bindings, and the operations every protocol
//! front-end performs on them (declare, bind, publish, consume, acknowledge).
//!
//! Publishing resolves routes in the caller's task against read-mostly tables, then hands the
//! message to each target queue; no global task sits on the message path.

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use dashmap::DashMap;
use tokio::sync::mpsc::UnboundedSender;

use crate::broker::Shared;
use crate::consumer::{ConnectionId, Consumer, ConsumerSpec, Outbound};
use crate::dead_letter::{dead_lettered_message, DeadLetter, DeathHistory, DeathReason};
use crate::error::CoreError;
use crate::exchange::{Destination, Exchange, ExchangeKind, Route};
use crate::message::{Message, Table};
use crate::queue::{now_ms, Admission, Got, Queue, QueueParams};
use crate::queue_config::QueueConfig;
use crate::store::{BindingRecord, Epoch, ExchangeRecord, QueueRecord};

/// The exchanges every virtual host has (AMQP 0-9-1 §3.1.3, plus RabbitMQ's `amq.match`).
const PREDECLARED: [(&str, ExchangeKind); 5] = [
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

/// Longest routing or binding key: what an AMQP short string carries. Front-ends refuse longer
/// keys in their own terms; the core refuses them too, so none can reach a consumer whose
/// protocol could not carry it.
pub const MAX_KEY_BYTES: usize = 255;

/// Exchange-to-exchange and alternate-exchange hops one publish follows. Each exchange is
/// visited once anyway; the bound keeps a long chain from making every publish walk it.
pub const MAX_EXCHANGE_HOPS: usize = 32;

/// Dead letters one operation may set off beyond its own: a message that dies again in the
/// queue it is dead-lettered to starts another round, and a fan-out of such queues multiplies
/// them. Past this the rest are dropped and counted.
const MAX_CASCADED_DEAD_LETTERS: usize = 1_000;

thread_local! {
    /// Dead letters waiting to be republished on this thread. Dead-lettering happens inside a
    /// publish (a full queue drops its head), so republishing at once would recurse without
    /// bound through chains of queues; instead the first dead-lettering on the thread drains
    /// this list in a loop and nested ones only append.
    static DEAD_LETTERS: RefCell<Option<DeadLetterRun>> = const { RefCell::new(None) };
}

struct DeadLetterRun {
    pending: VecDeque<(Arc<VHost>, Message)>,
    /// Cascaded dead letters still allowed in this run.
    budget: usize,
}

/// Clears the thread's run when the draining call ends, even by a panic, so later calls on the
/// thread do not queue behind a run nobody drains.
struct RunGuard;

impl Drop for RunGuard {
    fn drop(&mut self) {
        DEAD_LETTERS.with(|run| run.borrow_mut().take());
    }
}

#[derive(Debug, Clone, Default)]
pub struct ExchangeDeclare {
    pub name: String,
    pub kind: String,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Table,
}

#[derive(Debug, Clone, Default)]
pub struct QueueDeclare {
    /// Empty asks the server to pick a name (`amq.gen-…`).
    pub name: String,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: Table,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclared {
    pub name: String,
    pub message_count: u64,
    pub consumer_count: u64,
    /// The store epoch the new queue's record waits for; `None` when nothing was written.
    pub durable_at: Option<Epoch>,
}

/// A deleted queue: what it held, and the store epoch its removal waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDeleted {
    /// Ready messages the queue held.
    pub messages: u64,
    /// `None` when nothing durable changed.
    pub durable_at: Option<Epoch>,
}

/// What happened to a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublishOutcome {
    /// At least one queue matched (AMQP `mandatory` returns the message otherwise).
    pub routed: bool,
    /// A full queue refused it (`x-overflow = reject-publish…`): confirm with a nack.
    pub rejected: bool,
    /// The store write to wait for before confirming, if the message was written durably.
    pub epoch: Option<Epoch>,
}

#[derive(Debug)]
pub struct VHost {
    pub name: String,
    shared: Arc<Shared>,
    exchanges: DashMap<String, Arc<Exchange>>,
    queues: DashMap<String, Arc<Queue>>,
    /// Bindings of every exchange here, for `max_bindings`.
    binding_count: AtomicU64,
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

fn server_named_queue() -> String {
    // RandomState is seeded per process and per call, which is enough to make names unguessable
    // in practice without adding a random number crate.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let a = h.finish();
    let mut h2 = std::collections::hash_map::RandomState::new().build_hasher();
    h2.write_u64(a);
    let b = h2.finish();
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits = (u128::from(a) << 64) | u128::from(b);
    let suffix: String = (0..22)
        .map(|i| ALPHABET[((bits >> (i * 6)) & 63) as usize] as char)
        .collect();
    format!("amq.gen-{suffix}")
}

impl VHost {
    pub(crate) fn new(name: &str, shared: Arc<Shared>) -> Arc<Self> {
        let vhost = Arc::new_cyclic(|me| VHost {
            name: name.to_owned(),
            shared,
            exchanges: DashMap::new(),
            queues: DashMap::new(),
            binding_count: AtomicU64::new(0),
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

    /// Declares an exchange; returns the epoch a durable exchange's new record waits for.
    pub fn declare_exchange(&self, d: ExchangeDeclare) -> Result<Option<Epoch>, CoreError> {
        if d.name.is_empty() {
            if d.passive {
                return Ok(None);
            }
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        if let Some(existing) = self.exchange(&d.name) {
            if d.passive {
                return Ok(None);
            }
            let what = "exchange";
            if existing.kind.as_str() != d.kind {
                return Err(inequivalent(
                    what,
                    "type",
                    &d.name,
                    &self.name,
                    &d.kind,
                    existing.kind.as_str(),
                ));
            }
            if existing.durable != d.durable {
                return Err(inequivalent(
                    what,
                    "durable",
                    &d.name,
                    &self.name,
                    d.durable,
                    existing.durable,
                ));
            }
            if existing.auto_delete != d.auto_delete {
                return Err(inequivalent(
                    what,
                    "auto_delete",
                    &d.name,
                    &self.name,
                    d.auto_delete,
                    existing.auto_delete,
                ));
            }
            if existing.internal != d.internal {
                return Err(inequivalent(
                    what,
                    "internal",
                    &d.name,
                    &self.name,
                    d.internal,
                    existing.internal,
                ));
            }
            return Ok(None);
        }
        if d.passive {
            return Err(self.not_found_exchange(&d.name));
        }
        if d.name.starts_with("amq.") {
            return Err(CoreError::AccessRefused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        let kind = ExchangeKind::parse(&d.kind)
            .ok_or_else(|| CoreError::UnknownExchangeType(d.kind.clone()))?;
        if d.name.len() > MAX_KEY_BYTES {
            return Err(CoreError::LimitReached(format!(
                "exchange name of {} bytes is longer than {MAX_KEY_BYTES}",
                d.name.len()
            )));
        }
        let max = self.shared.limits.max_exchanges;
        if max > 0 && self.exchanges.len() as u64 >= max {
            return Err(CoreError::LimitReached(format!(
                "cannot declare exchange '{}': exchange limit in vhost '{}' is reached ({max})",
                d.name, self.name
            )));
        }
        let mut durable_at = None;
        if d.durable {
            let record = ExchangeRecord {
                vhost: self.name.clone(),
                name: d.name.clone(),
                kind: d.kind.clone(),
                auto_delete: d.auto_delete,
                internal: d.internal,
                arguments: d.arguments.clone(),
            };
            durable_at = Some(self.persist(|| self.shared.store.save_exchange(&record))?);
        }
        let ex = Exchange::new(
            d.name.clone(),
            kind,
            d.durable,
            d.auto_delete,
            d.internal,
            d.arguments,
        );
        self.exchanges.insert(d.name, Arc::new(ex));
        Ok(durable_at)
    }

    pub(crate) fn restore_exchange(&self, r: &ExchangeRecord) {
        if let Some(kind) = ExchangeKind::parse(&r.kind) {
            let ex = Exchange::new(
                r.name.clone(),
                kind,
                true,
                r.auto_delete,
                r.internal,
                r.arguments.clone(),
            );
            self.exchanges.insert(r.name.clone(), Arc::new(ex));
        }
    }

    /// Deletes an exchange; returns the epoch its removal from the store waits for.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<Option<Epoch>, CoreError> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(CoreError::AccessRefused(format!(
                "operation not permitted on exchange '{name}'"
            )));
        }
        let Some(ex) = self.exchange(name) else {
            return Ok(None);
        };
        if if_unused && ex.binding_count() > 0 {
            return Err(CoreError::PreconditionFailed(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        self.remove_exchange(&ex)
    }

    /// Removes an exchange and its bindings; returns the latest epoch written, if any.
    fn remove_exchange(&self, ex: &Arc<Exchange>) -> Result<Option<Epoch>, CoreError> {
        self.exchanges.remove(&ex.name);
        // Bindings from it go with it; bindings to it (exchange-to-exchange) too.
        let dest = Destination::Exchange(ex.name.clone());
        let own = ex.bindings();
        self.binding_count
            .fetch_sub(own.len() as u64, Ordering::Relaxed);
        let mut written = None;
        for b in own {
            written = written.max(self.forget_binding(
                ex,
                &b.destination,
                &b.routing_key,
                &b.arguments,
            )?);
        }
        for other in self.exchanges() {
            let gone = other.unbind_all_to(&dest);
            self.binding_count
                .fetch_sub(gone.len() as u64, Ordering::Relaxed);
            for b in gone {
                written = written.max(self.forget_binding(
                    &other,
                    &b.destination,
                    &b.routing_key,
                    &b.arguments,
                )?);
            }
        }
        if ex.durable {
            written =
                written.max(Some(self.persist(|| {
                    self.shared.store.delete_exchange(&self.name, &ex.name)
                })?));
        }
        self.request_sync(written);
        Ok(written)
    }

    /// Asks the group committer for `epoch`, when something was written.
    fn request_sync(&self, epoch: Option<Epoch>) {
        if let Some(epoch) = epoch {
            self.shared.store.request_sync(epoch);
        }
    }

    fn check_owner(&self, q: &Queue, conn: ConnectionId) -> Result<(), CoreError> {
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
        self.check_owner(&q, conn)?;
        Ok(q)
    }

    pub fn declare_queue(
        &self,
        d: QueueDeclare,
        conn: ConnectionId,
    ) -> Result<QueueDeclared, CoreError> {
        let name = if d.name.is_empty() && !d.passive {
            server_named_queue()
        } else {
            d.name.clone()
        };
        if name.starts_with("amq.") && !d.passive && !d.name.is_empty() {
            return Err(CoreError::AccessRefused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        if let Some(q) = self.queue(&name) {
            self.check_owner(&q, conn)?;
            if !d.passive {
                let what = "queue";
                if q.durable != d.durable {
                    return Err(inequivalent(
                        what, "durable", &name, &self.name, d.durable, q.durable,
                    ));
                }
                if q.exclusive_owner.is_some() != d.exclusive {
                    return Err(inequivalent(
                        what,
                        "exclusive",
                        &name,
                        &self.name,
                        d.exclusive,
                        q.exclusive_owner.is_some(),
                    ));
                }
                if q.auto_delete != d.auto_delete {
                    return Err(inequivalent(
                        what,
                        "auto_delete",
                        &name,
                        &self.name,
                        d.auto_delete,
                        q.auto_delete,
                    ));
                }
                let config = QueueConfig::parse(&d.arguments)?;
                if config != q.config {
                    return Err(CoreError::PreconditionFailed(format!(
                        "inequivalent arg for queue '{name}' in vhost '{}': arguments differ from the existing queue's",
                        self.name
                    )));
                }
            }
            q.touch();
            let stats = q.stats();
            return Ok(QueueDeclared {
                name,
                message_count: stats.ready,
                consumer_count: stats.consumers,
                durable_at: None,
            });
        }
        if d.passive {
            return Err(self.not_found_queue(&name));
        }
        let config = QueueConfig::parse(&d.arguments)?;
        if name.len() > MAX_KEY_BYTES {
            return Err(CoreError::LimitReached(format!(
                "queue name of {} bytes is longer than {MAX_KEY_BYTES}",
                name.len()
            )));
        }
        let max = self.shared.limits.max_queues;
        if max > 0 && self.queues.len() as u64 >= max {
            return Err(CoreError::LimitReached(format!(
                "cannot declare queue '{name}': queue limit in vhost '{}' is reached ({max})",
                self.name
            )));
        }
        let id = self.shared.next_queue_id.fetch_add(1, Ordering::Relaxed);
        // Exclusive queues die with their connection, so they are never written to disk.
        let stored = d.durable && !d.exclusive;
        let mut durable_at = None;
        if stored {
            let record = QueueRecord {
                id,
                vhost: self.name.clone(),
                name: name.clone(),
                auto_delete: d.auto_delete,
                arguments: d.arguments.clone(),
            };
            durable_at = Some(self.persist(|| self.shared.store.save_queue(&record))?);
        }
        let params = QueueParams {
            name: name.clone(),
            id,
            durable: d.durable,
            auto_delete: d.auto_delete,
            exclusive_owner: d.exclusive.then_some(conn),
            arguments: d.arguments,
            config,
            limits: self.shared.limits.clone(),
        };
        let q = Queue::new(params, self.shared.store.clone(), self.me.clone());
        self.queues.insert(name.clone(), q);
        Ok(QueueDeclared {
            name,
            message_count: 0,
            consumer_count: 0,
            durable_at,
        })
    }

    pub(crate) fn restore_queue(&self, r: &QueueRecord) -> Result<Arc<Queue>, CoreError> {
        let params = QueueParams {
            name: r.name.clone(),
            id: r.id,
            durable: true,
            auto_delete: r.auto_delete,
            exclusive_owner: None,
            arguments: r.arguments.clone(),
            config: QueueConfig::parse(&r.arguments)?,
            limits: self.shared.limits.clone(),
        };
        let q = Queue::new(params, self.shared.store.clone(), self.me.clone());
        self.queues.insert(r.name.clone(), q.clone());
        Ok(q)
    }

    /// Deletes a queue. Deleting a queue that does not exist succeeds (RabbitMQ 3.x
    /// behaviour).
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: ConnectionId,
    ) -> Result<QueueDeleted, CoreError> {
        let Some(q) = self.queue(name) else {
            return Ok(QueueDeleted {
                messages: 0,
                durable_at: None,
            });
        };
        self.check_owner(&q, conn)?;
        let (empty, unused) = q.is_ready_empty_and_unused();
        if if_unused && !unused {
            return Err(CoreError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && !empty {
            return Err(CoreError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{}' is not empty",
                self.name
            )));
        }
        self.remove_queue(&q)
    }

    fn remove_queue(&self, q: &Arc<Queue>) -> Result<QueueDeleted, CoreError> {
        let messages = q.mark_deleted();
        self.queues.remove_if(&q.name, |_, v| Arc::ptr_eq(v, q));
        let dest = Destination::Queue(q.name.clone());
        let mut written = None;
        for ex in self.exchanges() {
            let gone = ex.unbind_all_to(&dest);
            self.binding_count
                .fetch_sub(gone.len() as u64, Ordering::Relaxed);
            for b in gone {
                written = written.max(self.forget_binding(
                    &ex,
                    &b.destination,
                    &b.routing_key,
                    &b.arguments,
                )?);
            }
        }
        if q.durable && q.exclusive_owner.is_none() {
            written =
                written.max(Some(self.persist(|| {
                    self.shared.store.delete_queue(&self.name, &q.name, q.id)
                })?));
        }
        self.request_sync(written);
        Ok(QueueDeleted {
            messages,
            durable_at: written,
        })
    }

    pub fn purge_queue(&self, name: &str, conn: ConnectionId) -> Result<u64, CoreError> {
        Ok(self.usable_queue(name, conn)?.purge())
    }

    fn binding_record(
        &self,
        source: &Exchange,
        destination: &Destination,
        routing_key: &str,
        arguments: &Table,
    ) -> BindingRecord {
        BindingRecord {
            vhost: self.name.clone(),
            source: source.name.clone(),
            destination: destination.name().to_owned(),
            destination_is_queue: matches!(destination, Destination::Queue(_)),
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
        }
    }

    fn destination_durable(&self, destination: &Destination) -> bool {
        match destination {
            Destination::Queue(n) => self
                .queue(n)
                .is_some_and(|q| q.durable && q.exclusive_owner.is_none()),
            Destination::Exchange(n) => self.exchange(n).is_some_and(|e| e.durable),
        }
    }

    /// Drops a binding's durable record, and an auto-delete source left without bindings;
    /// returns the latest epoch written, if any.
    fn forget_binding(
        &self,
        source: &Arc<Exchange>,
        destination: &Destination,
        routing_key: &str,
        arguments: &Table,
    ) -> Result<Option<Epoch>, CoreError> {
        let mut written = None;
        // Deleting a record that was never written is harmless, and the destination may
        // already be gone, so durability is judged by the source alone.
        if source.durable {
            let record = self.binding_record(source, destination, routing_key, arguments);
            written = Some(self.shared.store.delete_binding(&record)?);
        }
        if source.auto_delete
            && source.binding_count() == 0
            && self.exchanges.contains_key(&source.name)
        {
            written = written.max(self.remove_exchange(source)?);
        }
        Ok(written)
    }

    fn source_exchange(&self, name: &str) -> Result<Arc<Exchange>, CoreError> {
        if name.is_empty() {
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        self.exchange(name)
            .ok_or_else(|| self.not_found_exchange(name))
    }

    /// Binds; a durable binding's record is written and its fsync requested, and the epoch to
    /// wait for comes back, so a front-end can hold its reply until the store's durable point
    /// passes it instead of blocking on an fsync.
    pub fn bind_deferred(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: Table,
        conn: ConnectionId,
    ) -> Result<Option<Epoch>, CoreError> {
        let route = match &destination {
            Destination::Queue(q) => Route::Queue(self.usable_queue(q, conn)?),
            Destination::Exchange(e) => {
                if e.is_empty() {
                    return Err(CoreError::AccessRefused(
                        "operation not permitted on the default exchange".into(),
                    ));
                }
                Route::Exchange(self.exchange(e).ok_or_else(|| self.not_found_exchange(e))?)
            }
        };
        let ex = self.source_exchange(source)?;
        if routing_key.len() > MAX_KEY_BYTES {
            return Err(CoreError::LimitReached(format!(
                "binding key of {} bytes is longer than {MAX_KEY_BYTES}",
                routing_key.len()
            )));
        }
        let max = self.shared.limits.max_bindings;
        if max > 0 && self.binding_count.load(Ordering::Relaxed) >= max {
            return Err(CoreError::LimitReached(format!(
                "binding limit in vhost '{}' is reached ({max})",
                self.name
            )));
        }
        let durable = ex.durable && self.destination_durable(&destination);
        let record =
            durable.then(|| self.binding_record(&ex, &destination, routing_key, &arguments));
        if !ex.bind(destination, route, routing_key, arguments) {
            return Ok(None);
        }
        self.binding_count.fetch_add(1, Ordering::Relaxed);
        let Some(record) = record else {
            return Ok(None);
        };
        let epoch = self.shared.store.save_binding(&record)?;
        self.shared.store.request_sync(epoch);
        Ok(Some(epoch))
    }

    pub(crate) fn restore_binding(&self, r: &BindingRecord) {
        let Some(ex) = self.exchange(&r.source) else {
            return;
        };
        let (dest, route) = if r.destination_is_queue {
            let Some(q) = self.queue(&r.destination) else {
                return;
            };
            (Destination::Queue(r.destination.clone()), Route::Queue(q))
        } else {
            let Some(e) = self.exchange(&r.destination) else {
                return;
            };
            (
                Destination::Exchange(r.destination.clone()),
                Route::Exchange(e),
            )
        };
        if ex.bind(dest, route, &r.routing_key, r.arguments.clone()) {
            self.binding_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Unbinds; like [`VHost::bind_deferred`], returns the epoch to wait for when the store
    /// changed. There is no blocking variant: front-ends run on async worker threads.
    pub fn unbind_deferred(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &Table,
        conn: ConnectionId,
    ) -> Result<Option<Epoch>, CoreError> {
        match &destination {
            Destination::Queue(q) => {
                self.usable_queue(q, conn)?;
            }
            Destination::Exchange(e) => {
                self.exchange(e).ok_or_else(|| self.not_found_exchange(e))?;
            }
        }
        let ex = self.source_exchange(source)?;
        if !ex.unbind(&destination, routing_key, arguments) {
            return Ok(None);
        }
        self.binding_count.fetch_sub(1, Ordering::Relaxed);
        let written = self.forget_binding(&ex, &destination, routing_key, arguments)?;
        self.request_sync(written);
        Ok(written)
    }

    /// Collects target queues: follows exchange-to-exchange bindings (each exchange once, at
    /// most [`MAX_EXCHANGE_HOPS`] deep) and alternate exchanges for exchanges that matched
    /// nothing. Iterative, so a chain of exchanges cannot exhaust the stack.
    fn route(&self, start: &Arc<Exchange>, message: &Message, queues: &mut Vec<Arc<Queue>>) {
        let mut hits = Vec::new();
        // Exchanges still to visit, with their hop count; the start needs no allocation.
        let mut current = Some((start.clone(), 0));
        let mut next: Vec<(Arc<Exchange>, usize)> = Vec::new();
        let mut visited: Option<HashSet<usize>> = None;
        while let Some((ex, depth)) = current.take().or_else(|| next.pop()) {
            if depth > 0 {
                if depth > MAX_EXCHANGE_HOPS {
                    tracing::debug!(exchange = %ex.name, "exchange hop limit reached; route not followed");
                    continue;
                }
                let visited =
                    visited.get_or_insert_with(|| HashSet::from([Arc::as_ptr(start) as usize]));
                if !visited.insert(Arc::as_ptr(&ex) as usize) {
                    continue;
                }
            }
            ex.route(message, &mut hits);
            if hits.is_empty() {
                if let Some(ae) = ex.alternate_exchange().and_then(|n| self.exchange(n)) {
                    next.push((ae, depth + 1));
                }
            }
            for hit in hits.drain(..) {
                match hit {
                    Route::Queue(q) => queues.push(q),
                    Route::Exchange(e) => next.push((e, depth + 1)),
                }
            }
        }
        if queues.len() > 1 {
            queues.sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
            queues.dedup_by(|a, b| Arc::ptr_eq(a, b));
        }
    }

    /// Publishes a message as a client would. Internal exchanges refuse clients (403).
    pub fn publish(&self, message: Message) -> Result<PublishOutcome, CoreError> {
        self.publish_from(message, false)
    }

    fn publish_from(
        &self,
        mut message: Message,
        dead_lettered: bool,
    ) -> Result<PublishOutcome, CoreError> {
        if message.routing_key.len() > MAX_KEY_BYTES {
            return Err(CoreError::LimitReached(format!(
                "routing key of {} bytes is longer than {MAX_KEY_BYTES}",
                message.routing_key.len()
            )));
        }
        let mut targets: Vec<Arc<Queue>> = Vec::new();
        if message.exchange.is_empty() {
            if let Some(q) = self.queue(&message.routing_key) {
                targets.push(q);
            }
        } else {
            let ex = self
                .exchange(&message.exchange)
                .ok_or_else(|| self.not_found_exchange(&message.exchange))?;
            if ex.internal && !dead_lettered {
                return Err(CoreError::AccessRefused(format!(
                    "cannot publish to internal exchange '{}' in vhost '{}'",
                    ex.name, self.name
                )));
            }
            self.route(&ex, &message, &mut targets);
        }
        if dead_lettered {
            let history = DeathHistory::of(&message);
            let before = targets.len();
            targets.retain(|q| !history.is_cycle_into(&q.name));
            let dropped = before - targets.len();
            if dropped > 0 {
                self.shared
                    .counters
                    .dead_letter_dropped
                    .fetch_add(dropped as u64, Ordering::Relaxed);
                tracing::debug!(vhost = %self.name, dropped, "dead-letter cycle broken");
            }
        }
        let mut outcome = PublishOutcome {
            routed: !targets.is_empty(),
            ..PublishOutcome::default()
        };
        if targets.is_empty() {
            return Ok(outcome);
        }
        message.id = self.shared.next_message_id.fetch_add(1, Ordering::Relaxed);
        let persistent = message.properties.is_persistent();
        let mut accepted = Vec::with_capacity(targets.len());
        let mut refused_dlx = Vec::new();
        for q in &targets {
            match q.admit(&message) {
                Admission::Accept(seq) => accepted.push((q, seq)),
                Admission::Gone => {}
                Admission::Reject => outcome.rejected = true,
                Admission::RejectDeadLetter => {
                    outcome.rejected = true;
                    refused_dlx.push(q);
                }
            }
        }
        // Queues deleted on the way do not count as routes.
        outcome.routed = !accepted.is_empty() || outcome.rejected;
        let durable: Vec<(u64, u64)> = accepted
            .iter()
            .filter(|(q, _)| persistent && q.durable && q.exclusive_owner.is_none())
            .map(|(q, seq)| (q.id, *seq))
            .collect();
        let message = Arc::new(message);
        if !durable.is_empty() {
            let epoch = self.shared.store.enqueue(&message, &durable)?;
            self.shared.store.request_sync(epoch);
            outcome.epoch = Some(epoch);
        }
        for (q, seq) in accepted {
            let persisted = persistent && q.durable && q.exclusive_owner.is_none();
            q.push(seq, message.clone(), persisted);
        }
        for q in refused_dlx {
            self.dead_letter(
                q,
                vec![DeadLetter {
                    message: message.clone(),
                    reason: DeathReason::MaxLen,
                }],
            );
        }
        Ok(outcome)
    }

    /// Republishes messages that left `queue` dead to its dead-letter exchange. A message that
    /// would go back into a queue it already died in, with no client rejection among its
    /// deaths, is dropped (RabbitMQ's cycle rule); see [`DEAD_LETTERS`] for why republishing
    /// waits for the outermost call.
    pub(crate) fn dead_letter(&self, queue: &Queue, dead: Vec<DeadLetter>) {
        let Some(dlx) = queue.config.dead_letter_exchange.as_deref() else {
            return;
        };
        if !dlx.is_empty() && !self.exchanges.contains_key(dlx) {
            tracing::debug!(queue = %queue.name, dlx, "dead-letter exchange missing; messages dropped");
            return;
        }
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let dlrk = queue.config.dead_letter_routing_key.as_deref();
        let mut messages: Vec<Message> = dead
            .into_iter()
            .map(|d| dead_lettered_message(&d.message, &queue.name, d.reason, dlx, dlrk))
            .collect();
        let nested = DEAD_LETTERS.with(|run| {
            let mut run = run.borrow_mut();
            let Some(run) = run.as_mut() else {
                return false;
            };
            for m in messages.drain(..) {
                if run.budget == 0 {
                    self.shared
                        .counters
                        .dead_letter_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                run.budget -= 1;
                run.pending.push_back((me.clone(), m));
            }
            true
        });
        if nested {
            return;
        }
        DEAD_LETTERS.with(|run| {
            *run.borrow_mut() = Some(DeadLetterRun {
                pending: VecDeque::new(),
                budget: MAX_CASCADED_DEAD_LETTERS,
            })
        });
        let _run = RunGuard;
        for m in messages {
            self.republish_dead(m);
        }
        while let Some((vhost, m)) =
            DEAD_LETTERS.with(|run| run.borrow_mut().as_mut()?.pending.pop_front())
        {
            vhost.republish_dead(m);
        }
    }

    fn republish_dead(&self, message: Message) {
        match self.publish_from(message, true) {
            Ok(o) if o.routed => {
                self.shared
                    .counters
                    .dead_lettered
                    .fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(vhost = %self.name, error = %e, "dead-lettering failed"),
        }
    }

    pub fn consume(
        &self,
        queue: &str,
        spec: ConsumerSpec,
        outbox: UnboundedSender<Outbound>,
    ) -> Result<(Arc<Queue>, Arc<Consumer>), CoreError> {
        let q = self.usable_queue(queue, spec.connection)?;
        let consumer = Consumer::new(spec, outbox, self.shared.limits.consumer_buffer_bytes);
        q.add_consumer(consumer.clone())?;
        Ok((q, consumer))
    }

    /// Stops a consumer; an auto-delete queue that lost its last consumer is deleted.
    pub fn cancel(&self, queue: &Arc<Queue>, consumer: &Arc<Consumer>) {
        if queue.remove_consumer(consumer) {
            if let Err(e) = self.remove_queue(queue) {
                tracing::warn!(queue = %queue.name, error = %e, "auto-delete failed");
            }
        }
    }

    pub fn get(
        &self,
        queue: &str,
        conn: ConnectionId,
        no_ack: bool,
    ) -> Result<(Arc<Queue>, Option<Got>), CoreError> {
        let q = self.usable_queue(queue, conn)?;
        let got = q.get(no_ack);
        Ok((q, got))
    }

    /// A connection ended: its exclusive queues go with it.
    pub fn connection_closed(&self, conn: ConnectionId) {
        let owned: Vec<Arc<Queue>> = self
            .queues
            .iter()
            .filter(|q| q.exclusive_owner == Some(conn))
            .map(|q| q.clone())
            .collect();
        for q in owned {
            if let Err(e) = self.remove_queue(&q) {
                tracing::warn!(queue = %q.name, error = %e, "exclusive queue cleanup failed");
            }
        }
    }

    /// Periodic housekeeping: expire message TTLs at queue heads and delete `x-expires` queues.
    pub fn tick(&self) {
        let now = now_ms();
        for q in self.queues() {
            if q.lease_expired(now) {
                tracing::debug!(queue = %q.name, "queue expired (x-expires)");
                if let Err(e) = self.remove_queue(&q) {
                    tracing::warn!(queue = %q.name, error = %e, "x-expires delete failed");
                }
            } else {
                q.expire();
            }
        }
    }
}
