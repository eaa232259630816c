//! A queue: ready messages in order, deliveries awaiting acknowledgement, consumers.
//!
//! Each queue owns its state behind one short mutex; nothing awaits while holding it. Messages
//! are ordered by `(priority slot, seq)`, so a requeued message returns to its original place
//! and a priority queue serves higher priorities first with FIFO inside each priority.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::broker::CoreLimits;
use crate::consumer::{ConnectionId, Consumer, Delivery, Outbound};
use crate::dead_letter::{DeadLetter, DeathReason};
use crate::error::CoreError;
use crate::message::{Message, Table};
use crate::queue_config::{Overflow, QueueConfig};
use crate::store::Store;
use crate::vhost::VHost;

/// Milliseconds since the Unix epoch; TTLs are wall-clock so they mean the same after a restart.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Sort key: inverted priority first, so `pop_first` yields the highest priority, then order.
type Slot = (u8, u64);

#[derive(Debug)]
struct Entry {
    message: Arc<Message>,
    redelivered: bool,
    expires_at: Option<u64>,
    /// Whether the store holds this entry (persistent message in a durable queue).
    persisted: bool,
}

#[derive(Debug)]
struct Unacked {
    slot: Slot,
    entry: Entry,
    /// `None` for `basic.get` deliveries, which hold no consumer credit.
    consumer: Option<Arc<Consumer>>,
}

#[derive(Debug, Default)]
struct State {
    ready: BTreeMap<Slot, Entry>,
    ready_bytes: u64,
    unacked: HashMap<u64, Unacked>,
    unacked_bytes: u64,
    consumers: Vec<Arc<Consumer>>,
    next_consumer: usize,
    deleted: bool,
    /// For `x-expires`: when the queue was last declared, consumed from or polled.
    last_used_ms: u64,
    /// Auto-delete queues go away when their last consumer leaves, but only once they had one.
    had_consumer: bool,
}

/// The result of asking a queue to take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Accept(u64),
    /// Full with `x-overflow = reject-publish`: the publisher is told (nack).
    Reject,
    /// Full with `reject-publish-dlx`: rejected and dead-lettered.
    RejectDeadLetter,
}

/// Counters visible to management and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    pub ready: u64,
    pub unacked: u64,
    pub ready_bytes: u64,
    pub unacked_bytes: u64,
    pub consumers: u64,
}

/// A message taken with `basic.get`.
#[derive(Debug)]
pub struct Got {
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// Ready messages left after this one.
    pub remaining: u64,
}

#[derive(Debug)]
pub struct Queue {
    pub name: String,
    /// Store key prefix of its messages; unique across the broker.
    pub id: u64,
    pub durable: bool,
    pub auto_delete: bool,
    pub exclusive_owner: Option<ConnectionId>,
    pub arguments: Table,
    pub config: QueueConfig,
    /// The broker-wide caps for queues declared without their own (0 = none).
    limits: CoreLimits,
    store: Arc<dyn Store>,
    vhost: Weak<VHost>,
    next_seq: AtomicU64,
    /// Set once a message with a TTL arrives, so the expiry sweep skips queues that never had one.
    may_expire: AtomicBool,
    state: Mutex<State>,
}

pub(crate) struct QueueParams {
    pub name: String,
    pub id: u64,
    pub durable: bool,
    pub auto_delete: bool,
    pub exclusive_owner: Option<ConnectionId>,
    pub arguments: Table,
    pub config: QueueConfig,
    pub limits: CoreLimits,
}

impl Queue {
    pub(crate) fn new(params: QueueParams, store: Arc<dyn Store>, vhost: Weak<VHost>) -> Arc<Self> {
        let may_expire = params.config.message_ttl.is_some();
        Arc::new(Queue {
            name: params.name,
            id: params.id,
            durable: params.durable,
            auto_delete: params.auto_delete,
            exclusive_owner: params.exclusive_owner,
            arguments: params.arguments,
            config: params.config,
            limits: params.limits,
            store,
            vhost,
            next_seq: AtomicU64::new(1),
            may_expire: AtomicBool::new(may_expire),
            state: Mutex::new(State { last_used_ms: now_ms(), ..State::default() }),
        })
    }

    fn max_length(&self) -> Option<u64> {
        let default = self.limits.max_queue_length;
        self.config.max_length.or((default > 0).then_some(default))
    }

    fn max_length_bytes(&self) -> Option<u64> {
        let default = self.limits.max_queue_bytes;
        self.config.max_length_bytes.or((default > 0).then_some(default))
    }

    fn overflow(&self) -> Overflow {
        if self.config.max_length.is_none() && self.config.max_length_bytes.is_none() {
            // The broker-wide safety caps never drop silently: they refuse the publisher.
            return Overflow::RejectPublish;
        }
        self.config.overflow
    }

    fn slot(&self, message: &Message, seq: u64) -> Slot {
        let priority = match self.config.max_priority {
            Some(max) => message.properties.priority.unwrap_or(0).min(max),
            None => 0,
        };
        (u8::MAX - priority, seq)
    }

    pub fn stats(&self) -> QueueStats {
        let st = self.state.lock();
        QueueStats {
            ready: st.ready.len() as u64,
            unacked: st.unacked.len() as u64,
            ready_bytes: st.ready_bytes,
            unacked_bytes: st.unacked_bytes,
            consumers: st.consumers.len() as u64,
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// First half of a publish: decides whether the queue takes the message and reserves its
    /// position. The caller then writes durable entries and calls [`Queue::push`].
    pub fn admit(&self, message: &Message) -> Admission {
        let st = self.state.lock();
        if st.deleted {
            return Admission::Reject;
        }
        let full = self.max_length().is_some_and(|max| st.ready.len() as u64 >= max)
            || self.max_length_bytes().is_some_and(|max| st.ready_bytes + message.body_len() > max);
        if full {
            match self.overflow() {
                Overflow::DropHead => {}
                Overflow::RejectPublish => return Admission::Reject,
                Overflow::RejectPublishDlx => return Admission::RejectDeadLetter,
            }
        }
        Admission::Accept(self.next_seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Second half of a publish: enqueues at the reserved position and offers it to consumers.
    pub fn push(self: &Arc<Self>, seq: u64, message: Arc<Message>, persisted: bool) {
        let now = now_ms();
        let expires_at = self.expiry_for(&message, now);
        if expires_at.is_some() {
            self.may_expire.store(true, Ordering::Relaxed);
        }
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            if st.deleted {
                drop(st);
                if persisted {
                    self.forget(seq, &message);
                }
                return;
            }
            st.ready_bytes += message.body_len();
            let slot = self.slot(&message, seq);
            st.ready.insert(slot, Entry { message, redelivered: false, expires_at, persisted });
            self.enforce_limits(&mut st, &mut dead);
            self.dispatch_locked(&mut st, now, &mut dead);
        }
        self.dead_letter(dead);
    }

    /// Re-inserts a message recovered from the store, before any consumer exists.
    pub(crate) fn restore(&self, seq: u64, message: Arc<Message>, redelivered: bool) {
        let now = now_ms();
        let expires_at = self.expiry_for(&message, now);
        if expires_at.is_some() {
            self.may_expire.store(true, Ordering::Relaxed);
        }
        let mut st = self.state.lock();
        st.ready_bytes += message.body_len();
        let slot = self.slot(&message, seq);
        st.ready.insert(slot, Entry { message, redelivered, expires_at, persisted: true });
        let next = self.next_seq.load(Ordering::Relaxed).max(seq + 1);
        self.next_seq.store(next, Ordering::Relaxed);
    }

    /// Queue TTL and per-message `expiration`, whichever is sooner (RabbitMQ rule).
    fn expiry_for(&self, message: &Message, now: u64) -> Option<u64> {
        let ttl = match (self.config.message_ttl, message.properties.expiration_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ttl.map(|t| now.saturating_add(t))
    }

    fn enforce_limits(&self, st: &mut State, dead: &mut Vec<DeadLetter>) {
        if self.overflow() != Overflow::DropHead {
            return;
        }
        let max_len = self.max_length();
        let max_bytes = self.max_length_bytes();
        while max_len.is_some_and(|m| st.ready.len() as u64 > m) || max_bytes.is_some_and(|m| st.ready_bytes > m) {
            let Some(((_, seq), entry)) = st.ready.pop_first() else { break };
            st.ready_bytes -= entry.message.body_len();
            self.settle_dead(seq, entry, DeathReason::MaxLen, dead);
        }
    }

    /// Removes a message for good and, if the queue has a dead-letter exchange, hands it there.
    fn settle_dead(&self, seq: u64, entry: Entry, reason: DeathReason, dead: &mut Vec<DeadLetter>) {
        if entry.persisted {
            self.forget(seq, &entry.message);
        }
        if self.config.dead_letter_exchange.is_some() {
            dead.push(DeadLetter { message: entry.message, reason });
        }
    }

    fn forget(&self, seq: u64, message: &Message) {
        if let Err(e) = self.store.dequeue(self.id, seq, message.id) {
            tracing::warn!(queue = %self.name, error = %e, "store dequeue failed");
        }
    }

    fn drop_expired_head(&self, st: &mut State, now: u64, dead: &mut Vec<DeadLetter>) {
        while let Some(entry) = st.ready.first_key_value().map(|(_, e)| e) {
            if !entry.expires_at.is_some_and(|t| t < now) {
                break;
            }
            let Some(((_, seq), entry)) = st.ready.pop_first() else { break };
            st.ready_bytes -= entry.message.body_len();
            self.settle_dead(seq, entry, DeathReason::Expired, dead);
        }
    }

    fn pick_consumer(&self, st: &mut State) -> Option<Arc<Consumer>> {
        let n = st.consumers.len();
        if self.config.single_active_consumer {
            // Only the longest-standing consumer receives (RabbitMQ single active consumer).
            let first = st.consumers.first()?;
            return first.try_acquire().then(|| first.clone());
        }
        for i in 0..n {
            let idx = (st.next_consumer + i) % n;
            if st.consumers[idx].try_acquire() {
                st.next_consumer = (idx + 1) % n;
                return Some(st.consumers[idx].clone());
            }
        }
        None
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut State, now: u64, dead: &mut Vec<DeadLetter>) {
        loop {
            if self.may_expire.load(Ordering::Relaxed) {
                self.drop_expired_head(st, now, dead);
            }
            if st.ready.is_empty() || st.consumers.is_empty() {
                return;
            }
            let Some(consumer) = self.pick_consumer(st) else { return };
            let Some((slot, mut entry)) = st.ready.pop_first() else {
                consumer.release();
                return;
            };
            st.ready_bytes -= entry.message.body_len();
            let seq = slot.1;
            let redelivered = entry.redelivered;
            let message = entry.message.clone();
            if consumer.no_ack {
                if entry.persisted {
                    self.forget(seq, &entry.message);
                }
            } else {
                if entry.persisted && !entry.redelivered {
                    if let Err(e) = self.store.mark_redelivered(self.id, seq) {
                        tracing::warn!(queue = %self.name, error = %e, "store mark_redelivered failed");
                    }
                }
                entry.redelivered = true;
                st.unacked_bytes += entry.message.body_len();
                st.unacked.insert(seq, Unacked { slot, entry, consumer: Some(consumer.clone()) });
            }
            let delivery = Delivery { consumer: consumer.clone(), queue: self.clone(), seq, message, redelivered };
            if !consumer.send(Outbound::Deliver(delivery)) {
                // The connection is gone; its cleanup will cancel the consumer. Put the message
                // back and stop offering to this consumer.
                consumer.mark_cancelled();
                consumer.release();
                if let Some(u) = st.unacked.remove(&seq) {
                    st.unacked_bytes -= u.entry.message.body_len();
                    st.ready_bytes += u.entry.message.body_len();
                    st.ready.insert(u.slot, u.entry);
                }
            }
        }
    }

    /// Offers ready messages to consumers that have credit again.
    pub fn dispatch(self: &Arc<Self>) {
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            if st.deleted {
                return;
            }
            self.dispatch_locked(&mut st, now_ms(), &mut dead);
        }
        self.dead_letter(dead);
    }

    /// Drops expired messages at the head (RabbitMQ expires from the head only); called by the
    /// broker's periodic sweep.
    pub fn expire(self: &Arc<Self>) {
        if self.may_expire.load(Ordering::Relaxed) {
            self.dispatch();
        }
    }

    /// Whether an `x-expires` queue has been unused for its whole lease.
    pub fn lease_expired(&self, now: u64) -> bool {
        let Some(expires) = self.config.expires else { return false };
        let st = self.state.lock();
        !st.deleted && st.consumers.is_empty() && now.saturating_sub(st.last_used_ms) >= expires
    }

    pub fn touch(&self) {
        self.state.lock().last_used_ms = now_ms();
    }

    /// Registers a consumer. AMQP `exclusive` consumers refuse company (403).
    pub fn add_consumer(self: &Arc<Self>, consumer: Arc<Consumer>) -> Result<(), CoreError> {
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            if st.deleted {
                return Err(CoreError::NotFound(format!("no queue '{}'", self.name)));
            }
            if st.consumers.iter().any(|c| c.exclusive) || (consumer.exclusive && !st.consumers.is_empty()) {
                return Err(CoreError::AccessRefused(format!(
                    "queue '{}' in vhost has an exclusive consumer or cannot take one",
                    self.name
                )));
            }
            st.consumers.push(consumer);
            st.had_consumer = true;
            st.last_used_ms = now_ms();
            self.dispatch_locked(&mut st, now_ms(), &mut dead);
        }
        self.dead_letter(dead);
        Ok(())
    }

    /// Removes a consumer; returns true when an auto-delete queue has just lost its last one.
    pub fn remove_consumer(self: &Arc<Self>, consumer: &Arc<Consumer>) -> bool {
        consumer.mark_cancelled();
        let mut dead = Vec::new();
        let now_unused = {
            let mut st = self.state.lock();
            st.consumers.retain(|c| !Arc::ptr_eq(c, consumer));
            st.next_consumer = 0;
            st.last_used_ms = now_ms();
            // With a single active consumer, the next in line takes over now.
            self.dispatch_locked(&mut st, now_ms(), &mut dead);
            self.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
        };
        self.dead_letter(dead);
        now_unused
    }

    /// `basic.get`: takes the next ready message, tracked as unacked unless `no_ack`.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<Got> {
        let mut dead = Vec::new();
        let got = {
            let mut st = self.state.lock();
            st.last_used_ms = now_ms();
            if self.may_expire.load(Ordering::Relaxed) {
                self.drop_expired_head(&mut st, now_ms(), &mut dead);
            }
            st.ready.pop_first().map(|(slot, mut entry)| {
                st.ready_bytes -= entry.message.body_len();
                let seq = slot.1;
                let redelivered = entry.redelivered;
                let message = entry.message.clone();
                if no_ack {
                    if entry.persisted {
                        self.forget(seq, &entry.message);
                    }
                } else {
                    entry.redelivered = true;
                    st.unacked_bytes += entry.message.body_len();
                    st.unacked.insert(seq, Unacked { slot, entry, consumer: None });
                }
                Got { seq, message, redelivered, remaining: st.ready.len() as u64 }
            })
        };
        self.dead_letter(dead);
        got
    }

    fn take_unacked(&self, st: &mut State, seq: u64) -> Option<Unacked> {
        let u = st.unacked.remove(&seq)?;
        st.unacked_bytes -= u.entry.message.body_len();
        if let Some(c) = &u.consumer {
            c.release();
        }
        Some(u)
    }

    /// Settles deliveries: acknowledged messages leave the queue (and the store).
    pub fn ack(self: &Arc<Self>, seqs: &[u64]) {
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            for &seq in seqs {
                if let Some(u) = self.take_unacked(&mut st, seq) {
                    if u.entry.persisted {
                        self.forget(seq, &u.entry.message);
                    }
                }
            }
            if !st.deleted {
                self.dispatch_locked(&mut st, now_ms(), &mut dead);
            }
        }
        self.dead_letter(dead);
    }

    /// Returns deliveries to the ready list at their original position, flagged redelivered.
    pub fn requeue(self: &Arc<Self>, seqs: &[u64]) {
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            for &seq in seqs {
                if let Some(u) = self.take_unacked(&mut st, seq) {
                    if st.deleted {
                        continue;
                    }
                    st.ready_bytes += u.entry.message.body_len();
                    st.ready.insert(u.slot, u.entry);
                }
            }
            if !st.deleted {
                self.dispatch_locked(&mut st, now_ms(), &mut dead);
            }
        }
        self.dead_letter(dead);
    }

    /// Rejects deliveries without requeue: they are dead-lettered (reason `rejected`) or dropped.
    pub fn reject(self: &Arc<Self>, seqs: &[u64]) {
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            for &seq in seqs {
                if let Some(u) = self.take_unacked(&mut st, seq) {
                    self.settle_dead(seq, u.entry, DeathReason::Rejected, &mut dead);
                }
            }
            if !st.deleted {
                self.dispatch_locked(&mut st, now_ms(), &mut dead);
            }
        }
        self.dead_letter(dead);
    }

    /// Removes every ready message; returns how many there were.
    pub fn purge(&self) -> u64 {
        let mut st = self.state.lock();
        let ready = std::mem::take(&mut st.ready);
        st.ready_bytes = 0;
        drop(st);
        let count = ready.len() as u64;
        for ((_, seq), entry) in ready {
            if entry.persisted {
                self.forget(seq, &entry.message);
            }
        }
        count
    }

    /// Marks the queue deleted, tells its consumers (consumer cancel notification) and returns
    /// the number of ready messages it held. The caller removes it from the vhost and store.
    pub(crate) fn mark_deleted(&self) -> u64 {
        let mut st = self.state.lock();
        if st.deleted {
            return 0;
        }
        st.deleted = true;
        let count = st.ready.len() as u64;
        st.ready.clear();
        st.ready_bytes = 0;
        for c in st.consumers.drain(..) {
            c.mark_cancelled();
            c.send(Outbound::Cancelled { channel: c.channel, consumer_tag: c.tag.clone() });
        }
        count
    }

    fn dead_letter(&self, dead: Vec<DeadLetter>) {
        if dead.is_empty() {
            return;
        }
        if let Some(vhost) = self.vhost.upgrade() {
            vhost.dead_letter(self, dead);
        }
    }

    pub(crate) fn is_ready_empty_and_unused(&self) -> (bool, bool) {
        let st = self.state.lock();
        (st.ready.is_empty(), st.consumers.is_empty())
    }
}
