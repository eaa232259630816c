//! A virtual host: its exchanges, queues and bindings, and the operations every protocol
//! front-end performs on them (declare, bind, publish, consume, acknowledge).
//!
//! Publishing resolves routes in the caller's task against read-mostly tables, then hands the
//! message to each target queue; no global task sits on the message path.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use dashmap::DashMap;
use tokio::sync::mpsc::UnboundedSender;

use crate::broker::Shared;
use crate::consumer::{ConnectionId, Consumer, ConsumerSpec, Outbound};
use crate::dead_letter::{dead_lettered_message, DeadLetter, DeathReason};
use crate::error::CoreError;
use crate::exchange::{Destination, Exchange, ExchangeKind};
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

    /// Durable metadata changes are synced before the client hears "ok", as RabbitMQ does.
    fn persist(
        &self,
        write: impl FnOnce() -> Result<Epoch, crate::store::StoreError>,
    ) -> Result<(), CoreError> {
        write()?;
        self.shared.store.sync()?;
        Ok(())
    }

    pub fn declare_exchange(&self, d: ExchangeDeclare) -> Result<(), CoreError> {
        if d.name.is_empty() {
            if d.passive {
                return Ok(());
            }
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        if let Some(existing) = self.exchange(&d.name) {
            if d.passive {
                return Ok(());
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
            return Ok(());
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
        if d.durable {
            let record = ExchangeRecord {
                vhost: self.name.clone(),
                name: d.name.clone(),
                kind: d.kind.clone(),
                auto_delete: d.auto_delete,
                internal: d.internal,
                arguments: d.arguments.clone(),
            };
            self.persist(|| self.shared.store.save_exchange(&record))?;
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
        Ok(())
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

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), CoreError> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(CoreError::AccessRefused(format!(
                "operation not permitted on exchange '{name}'"
            )));
        }
        let Some(ex) = self.exchange(name) else {
            return Ok(());
        };
        if if_unused && ex.binding_count() > 0 {
            return Err(CoreError::PreconditionFailed(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        self.remove_exchange(&ex)
    }

    fn remove_exchange(&self, ex: &Arc<Exchange>) -> Result<(), CoreError> {
        self.exchanges.remove(&ex.name);
        // Bindings from it go with it; bindings to it (exchange-to-exchange) too.
        let dest = Destination::Exchange(ex.name.clone());
        for b in ex.bindings() {
            self.forget_binding(ex, &b.destination, &b.routing_key, &b.arguments)?;
        }
        for other in self.exchanges() {
            for b in other.unbind_all_to(&dest) {
                self.forget_binding(&other, &b.destination, &b.routing_key, &b.arguments)?;
            }
        }
        if ex.durable {
            self.persist(|| self.shared.store.delete_exchange(&self.name, &ex.name))?;
        }
        Ok(())
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
            });
        }
        if d.passive {
            return Err(self.not_found_queue(&name));
        }
        let config = QueueConfig::parse(&d.arguments)?;
        let id = self.shared.next_queue_id.fetch_add(1, Ordering::Relaxed);
        // Exclusive queues die with their connection, so they are never written to disk.
        let stored = d.durable && !d.exclusive;
        if stored {
            let record = QueueRecord {
                id,
                vhost: self.name.clone(),
                name: name.clone(),
                auto_delete: d.auto_delete,
                arguments: d.arguments.clone(),
            };
            self.persist(|| self.shared.store.save_queue(&record))?;
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

    /// Deletes a queue; returns the number of ready messages it held. Deleting a queue that
    /// does not exist succeeds (RabbitMQ 3.x behaviour).
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: ConnectionId,
    ) -> Result<u64, CoreError> {
        let Some(q) = self.queue(name) else {
            return Ok(0);
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

    fn remove_queue(&self, q: &Arc<Queue>) -> Result<u64, CoreError> {
        let count = q.mark_deleted();
        self.queues.remove_if(&q.name, |_, v| Arc::ptr_eq(v, q));
        let dest = Destination::Queue(q.name.clone());
        for ex in self.exchanges() {
            for b in ex.unbind_all_to(&dest) {
                self.forget_binding(&ex, &b.destination, &b.routing_key, &b.arguments)?;
            }
        }
        if q.durable && q.exclusive_owner.is_none() {
            self.persist(|| self.shared.store.delete_queue(&self.name, &q.name, q.id))?;
        }
        Ok(count)
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

    /// Drops a binding's durable record, and an auto-delete source left without bindings.
    fn forget_binding(
        &self,
        source: &Arc<Exchange>,
        destination: &Destination,
        routing_key: &str,
        arguments: &Table,
    ) -> Result<(), CoreError> {
        // Deleting a record that was never written is harmless, and the destination may
        // already be gone, so durability is judged by the source alone.
        if source.durable {
            let record = self.binding_record(source, destination, routing_key, arguments);
            self.shared.store.delete_binding(&record)?;
        }
        if source.auto_delete
            && source.binding_count() == 0
            && self.exchanges.contains_key(&source.name)
        {
            self.remove_exchange(source)?;
        }
        Ok(())
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

    pub fn bind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: Table,
        conn: ConnectionId,
    ) -> Result<(), CoreError> {
        match &destination {
            Destination::Queue(q) => {
                self.usable_queue(q, conn)?;
            }
            Destination::Exchange(e) => {
                if e.is_empty() {
                    return Err(CoreError::AccessRefused(
                        "operation not permitted on the default exchange".into(),
                    ));
                }
                self.exchange(e).ok_or_else(|| self.not_found_exchange(e))?;
            }
        }
        let ex = self.source_exchange(source)?;
        let durable = ex.durable && self.destination_durable(&destination);
        let record =
            durable.then(|| self.binding_record(&ex, &destination, routing_key, &arguments));
        if ex.bind(destination, routing_key, arguments) {
            if let Some(record) = record {
                self.persist(|| self.shared.store.save_binding(&record))?;
            }
        }
        Ok(())
    }

    pub(crate) fn restore_binding(&self, r: &BindingRecord) {
        let Some(ex) = self.exchange(&r.source) else {
            return;
        };
        let dest = if r.destination_is_queue {
            Destination::Queue(r.destination.clone())
        } else {
            Destination::Exchange(r.destination.clone())
        };
        ex.bind(dest, &r.routing_key, r.arguments.clone());
    }

    pub fn unbind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &Table,
        conn: ConnectionId,
    ) -> Result<(), CoreError> {
        match &destination {
            Destination::Queue(q) => {
                self.usable_queue(q, conn)?;
            }
            Destination::Exchange(e) => {
                self.exchange(e).ok_or_else(|| self.not_found_exchange(e))?;
            }
        }
        let ex = self.source_exchange(source)?;
        if ex.unbind(&destination, routing_key, arguments) {
            self.forget_binding(&ex, &destination, routing_key, arguments)?;
            self.shared.store.sync()?;
        }
        Ok(())
    }

    /// Collects target queues: follows exchange-to-exchange bindings (each exchange once) and
    /// alternate exchanges for exchanges where nothing matched.
    fn route(
        &self,
        exchange: &Exchange,
        message: &Message,
        queues: &mut BTreeSet<String>,
        seen: &mut BTreeSet<String>,
    ) {
        if !seen.insert(exchange.name.clone()) {
            return;
        }
        let mut hits = Vec::new();
        exchange.route(message, &mut hits);
        let before = queues.len();
        let mut via_exchange = false;
        for dest in hits {
            match dest {
                Destination::Queue(q) => {
                    queues.insert(q);
                }
                Destination::Exchange(e) => {
                    if let Some(next) = self.exchange(&e) {
                        via_exchange = true;
                        self.route(&next, message, queues, seen);
                    }
                }
            }
        }
        if queues.len() == before && !via_exchange {
            if let Some(ae) = exchange.alternate_exchange().and_then(|n| self.exchange(n)) {
                self.route(&ae, message, queues, seen);
            }
        }
    }

    /// Publishes a message as a client would. Internal exchanges refuse clients (403).
    pub fn publish(&self, message: Message) -> Result<PublishOutcome, CoreError> {
        self.publish_from(message, false, None)
    }

    fn publish_from(
        &self,
        mut message: Message,
        internal_ok: bool,
        exclude: Option<&str>,
    ) -> Result<PublishOutcome, CoreError> {
        let mut names = BTreeSet::new();
        if message.exchange.is_empty() {
            if self.queues.contains_key(&message.routing_key) {
                names.insert(message.routing_key.clone());
            }
        } else {
            let ex = self
                .exchange(&message.exchange)
                .ok_or_else(|| self.not_found_exchange(&message.exchange))?;
            if ex.internal && !internal_ok {
                return Err(CoreError::AccessRefused(format!(
                    "cannot publish to internal exchange '{}' in vhost '{}'",
                    ex.name, self.name
                )));
            }
            self.route(&ex, &message, &mut names, &mut BTreeSet::new());
        }
        if let Some(ex) = exclude {
            names.remove(ex);
        }
        let targets: Vec<Arc<Queue>> = names.iter().filter_map(|n| self.queue(n)).collect();
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
                Admission::Reject => outcome.rejected = true,
                Admission::RejectDeadLetter => {
                    outcome.rejected = true;
                    refused_dlx.push(q);
                }
            }
        }
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

    /// Republishes messages that left `queue` dead to its dead-letter exchange.
    pub(crate) fn dead_letter(&self, queue: &Queue, dead: Vec<DeadLetter>) {
        let Some(dlx) = queue.config.dead_letter_exchange.as_deref() else {
            return;
        };
        let dlrk = queue.config.dead_letter_routing_key.as_deref();
        for d in dead {
            let m = dead_lettered_message(&d.message, &queue.name, d.reason, dlx, dlrk);
            // A message must not cycle back into the queue it just died in unless a client
            // rejected it (RabbitMQ's cycle rule, simplified to the direct cycle).
            let exclude = (d.reason != DeathReason::Rejected).then_some(queue.name.as_str());
            if !dlx.is_empty() && !self.exchanges.contains_key(dlx) {
                tracing::debug!(queue = %queue.name, dlx, "dead-letter exchange missing; message dropped");
                continue;
            }
            match self.publish_from(m, true, exclude) {
                Ok(o) if o.routed => self
                    .shared
                    .counters
                    .dead_lettered
                    .fetch_add(1, Ordering::Relaxed),
                Ok(_) => 0,
                Err(e) => {
                    tracing::warn!(queue = %queue.name, error = %e, "dead-lettering failed");
                    0
                }
            };
        }
    }

    pub fn consume(
        &self,
        queue: &str,
        spec: ConsumerSpec,
        outbox: UnboundedSender<Outbound>,
    ) -> Result<(Arc<Queue>, Arc<Consumer>), CoreError> {
        let q = self.usable_queue(queue, spec.connection)?;
        let consumer = Consumer::new(spec, outbox);
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
