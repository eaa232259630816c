//! A queue: ready messages in order, deliveries awaiting acknowledgement, consumers.
//!
//! Each queue owns its state behind one short mutex; nothing awaits while holding it. Messages
//! are ordered by `(priority slot, seq)`, so a requeued message returns to its original place
//! and a priority queue serves higher priorities first with FIFO inside each priority. Bodies
//! of stored messages beyond the head may be paged out to the store (see `paging`); they are
//! read back with the lock released, and so is the body of a paged-out message that is
//! dead-lettered. An unacknowledged persistent delivery keeps no body either: a client that
//! takes messages and never settles them costs their summaries, not their bodies.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, MutexGuard};

use crate::broker::{CoreLimits, Counters};
use crate::consumer::{ConnectionId, Consumer, Delivery, Outbound};
use crate::consumer_set::ConsumerSet;
use crate::dead_letter::{DeadLetter, DeathReason};
use crate::error::CoreError;
use crate::hash::TagHasher;
use crate::message::{Message, Table};
use crate::paging::{Entry, Ready, Slot};
use crate::queue_config::{Overflow, QueueConfig};
use crate::queue_owner::QueueOwner;
use crate::store::{MessageSummary, Store};
use crate::vhost::VHost;

/// Milliseconds since the Unix epoch; TTLs are wall-clock so they mean the same after a restart.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The time of one queue operation, read from the clock when something first needs it and at
/// most once: only TTLs do, and most queues and messages have none, so most pushes, settles
/// and dispatches never read it.
#[derive(Default)]
struct Now(Option<u64>);

impl Now {
    fn at(ms: u64) -> Self {
        Now(Some(ms))
    }

    fn get(&mut self) -> u64 {
        *self.0.get_or_insert_with(now_ms)
    }
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
    ready: Ready,
    /// By queue sequence number, which the queue itself hands out.
    unacked: HashMap<u64, Unacked, BuildHasherDefault<TagHasher>>,
    unacked_bytes: u64,
    consumers: ConsumerSet,
    deleted: bool,
    /// For `x-expires`: when the queue was last declared, consumed from or polled.
    last_used_ms: u64,
    /// Auto-delete queues go away when their last consumer leaves, but only once they had one.
    had_consumer: bool,
    /// Bodies are being read back from the store with the lock released. Meanwhile nothing
    /// else starts a read-ahead and the paged-out head waits, so deliveries keep queue order;
    /// the reader dispatches once the bodies are in.
    reading: bool,
}

/// A message leaving the queue for good. Its store entry is forgotten, and its body read back
/// for dead-lettering if it is paged out, once the queue's lock is released.
#[derive(Debug)]
struct Dying {
    seq: u64,
    entry: Entry,
    reason: DeathReason,
}

/// How a consumer settles a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    Ack,
    Requeue,
    Reject,
}

/// The result of asking a queue to take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Accept(u64),
    /// Full with `x-overflow = reject-publish`: the publisher is told (nack).
    Reject,
    /// Full with `reject-publish-dlx`: rejected and dead-lettered.
    RejectDeadLetter,
    /// Deleted after routing found it: as if it had not matched. A queue that goes away while a
    /// message is on its way to it is no reason to refuse the message to the publisher.
    Gone,
}

/// Counters visible to management and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    pub ready: u64,
    pub unacked: u64,
    pub ready_bytes: u64,
    pub unacked_bytes: u64,
    pub consumers: u64,
    /// Ready messages whose body is paged out to the store.
    pub paged: u64,
    /// Body bytes of the ready messages held in memory.
    pub resident_bytes: u64,
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
    /// The front-end that made the queue for its own use (see `queue_owner`). Set at most once:
    /// when the queue is made, or when a front-end adopts a queue whose record predates owners.
    owner: OnceLock<QueueOwner>,
    /// The broker-wide caps for queues declared without their own (0 = none).
    limits: CoreLimits,
    /// The broker-wide message counters: deliveries, redeliveries and acknowledgements are
    /// counted here, where they happen, the same way whichever protocol the consumer speaks.
    counters: Arc<Counters>,
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
    pub owner: Option<QueueOwner>,
    pub limits: CoreLimits,
    pub counters: Arc<Counters>,
}

impl Queue {
    pub(crate) fn new(params: QueueParams, store: Arc<dyn Store>, vhost: Weak<VHost>) -> Arc<Self> {
        let may_expire = params.config.message_ttl.is_some();
        let owner = params.owner.map_or_else(OnceLock::new, OnceLock::from);
        Arc::new(Queue {
            name: params.name,
            id: params.id,
            durable: params.durable,
            auto_delete: params.auto_delete,
            exclusive_owner: params.exclusive_owner,
            arguments: params.arguments,
            config: params.config,
            owner,
            limits: params.limits,
            counters: params.counters,
            store,
            vhost,
            next_seq: AtomicU64::new(1),
            may_expire: AtomicBool::new(may_expire),
            state: Mutex::new(State {
                last_used_ms: now_ms(),
                ..State::default()
            }),
        })
    }

    /// The front-end that made the queue for its own use; `None` for a client's or an
    /// operator's queue.
    pub fn owner(&self) -> Option<&QueueOwner> {
        self.owner.get()
    }

    /// Whether `front_end` made the queue and may therefore remove it on its own initiative.
    pub fn owned_by(&self, front_end: &str) -> bool {
        self.owner().is_some_and(|o| o.front_end == front_end)
    }

    /// Records `owner` for a queue that has none; `false` if it already had one.
    pub(crate) fn adopt(&self, owner: QueueOwner) -> bool {
        self.owner.set(owner).is_ok()
    }

    fn max_length(&self) -> Option<u64> {
        let default = self.limits.max_queue_length;
        self.config.max_length.or((default > 0).then_some(default))
    }

    fn max_length_bytes(&self) -> Option<u64> {
        let default = self.limits.max_queue_bytes;
        self.config
            .max_length_bytes
            .or((default > 0).then_some(default))
    }

    fn overflow(&self) -> Overflow {
        if self.config.max_length.is_none() && self.config.max_length_bytes.is_none() {
            // The broker-wide safety caps never drop silently: they refuse the publisher.
            return Overflow::RejectPublish;
        }
        self.config.overflow
    }

    /// Body bytes of ready messages a queue keeps in memory (`None` = no limit).
    fn resident_budget(&self) -> Option<u64> {
        let budget = self.limits.queue_resident_bytes;
        (budget > 0).then_some(budget)
    }

    fn slot(&self, priority: Option<u8>, seq: u64) -> Slot {
        let priority = match self.config.max_priority {
            Some(max) => priority.unwrap_or(0).min(max),
            None => 0,
        };
        (u8::MAX - priority, seq)
    }

    pub fn stats(&self) -> QueueStats {
        let st = self.state.lock();
        QueueStats {
            ready: st.ready.len() as u64,
            unacked: st.unacked.len() as u64,
            ready_bytes: st.ready.bytes(),
            unacked_bytes: st.unacked_bytes,
            consumers: st.consumers.len() as u64,
            paged: st.ready.paged() as u64,
            resident_bytes: st.ready.resident_bytes(),
        }
    }

    /// Whether some caller holds the queue's lock now (tests look from inside store calls).
    #[cfg(test)]
    pub(crate) fn is_locked(&self) -> bool {
        self.state.is_locked()
    }

    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// First half of a publish: decides whether the queue takes the message and reserves its
    /// position. The caller then writes durable entries and calls [`Queue::push`].
    pub fn admit(&self, message: &Message) -> Admission {
        let st = self.state.lock();
        if st.deleted {
            return Admission::Gone;
        }
        let full = self
            .max_length()
            .is_some_and(|max| st.ready.len() as u64 >= max)
            || self
                .max_length_bytes()
                .is_some_and(|max| st.ready.bytes() + message.body_len() > max);
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
        let mut now = Now::default();
        let summary = MessageSummary::of(&message);
        let expires_at = self.expiry_for(summary.expiration_ms, &mut now);
        if expires_at.is_some() {
            self.may_expire.store(true, Ordering::Relaxed);
        }
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            if st.deleted {
                drop(st);
                if persisted {
                    self.forget(seq, summary.id);
                }
                return;
            }
            // Only a stored message may leave its body to the store.
            let keep = !persisted
                || st
                    .ready
                    .keeps_body(summary.body_len, self.resident_budget());
            let entry = Entry {
                message: keep.then_some(message),
                id: summary.id,
                body_len: summary.body_len,
                redelivered: false,
                expires_at,
                persisted,
            };
            st.ready.insert(self.slot(summary.priority, seq), entry);
            self.enforce_limits(&mut st, &mut dead);
            self.dispatch_reading(&mut st, &mut now, &mut dead);
        }
        self.bury(dead);
    }

    /// Re-inserts a message recovered from the store, before any consumer exists. Its body
    /// stays paged out until the queue reaches it.
    pub(crate) fn restore(&self, seq: u64, summary: MessageSummary, redelivered: bool) {
        let expires_at = self.expiry_for(summary.expiration_ms, &mut Now::default());
        if expires_at.is_some() {
            self.may_expire.store(true, Ordering::Relaxed);
        }
        let mut st = self.state.lock();
        let entry = Entry {
            message: None,
            id: summary.id,
            body_len: summary.body_len,
            redelivered,
            expires_at,
            persisted: true,
        };
        st.ready.insert(self.slot(summary.priority, seq), entry);
        let next = self.next_seq.load(Ordering::Relaxed).max(seq + 1);
        self.next_seq.store(next, Ordering::Relaxed);
    }

    /// Queue TTL and per-message `expiration`, whichever is sooner (RabbitMQ rule).
    fn expiry_for(&self, message_ttl: Option<u64>, now: &mut Now) -> Option<NonZeroU64> {
        let ttl = match (self.config.message_ttl, message_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ttl.map(|t| NonZeroU64::new(now.get().saturating_add(t)).unwrap_or(NonZeroU64::MIN))
    }

    fn enforce_limits(&self, st: &mut State, dead: &mut Vec<Dying>) {
        if self.overflow() != Overflow::DropHead {
            return;
        }
        let max_len = self.max_length();
        let max_bytes = self.max_length_bytes();
        while max_len.is_some_and(|m| st.ready.len() as u64 > m)
            || max_bytes.is_some_and(|m| st.ready.bytes() > m)
        {
            let Some(((_, seq), entry)) = st.ready.pop_first() else {
                break;
            };
            self.settle_dead(seq, entry, DeathReason::MaxLen, dead);
        }
    }

    /// Removes a message for good; [`Queue::bury`] finishes the job once the lock is released.
    fn settle_dead(&self, seq: u64, entry: Entry, reason: DeathReason, dead: &mut Vec<Dying>) {
        dead.push(Dying { seq, entry, reason });
    }

    /// Forgets messages that left the queue for good and, if the queue has a dead-letter
    /// exchange, hands them there. Runs without the lock: a paged-out body is read back here,
    /// before its entry leaves the store.
    fn bury(&self, dead: Vec<Dying>) {
        if dead.is_empty() {
            return;
        }
        let dead_letters = self.config.dead_letter_exchange.is_some();
        let mut letters = Vec::new();
        for Dying { seq, entry, reason } in dead {
            if dead_letters {
                let message = match entry.message {
                    Some(message) => Some(message),
                    None => self.read_body(seq, entry.id),
                };
                if let Some(message) = message {
                    letters.push(DeadLetter { message, reason });
                }
            }
            if entry.persisted {
                self.forget(seq, entry.id);
            }
        }
        self.dead_letter(letters);
    }

    fn forget(&self, seq: u64, message_id: u64) {
        if let Err(e) = self.store.dequeue(self.id, seq, message_id) {
            tracing::warn!(queue = %self.name, error = %e, "store dequeue failed");
        }
    }

    /// Reads a paged-out body back from the store; `None` (logged) when it cannot be read.
    fn read_body(&self, seq: u64, message_id: u64) -> Option<Arc<Message>> {
        match self.store.load_message(message_id) {
            Ok(Some(message)) => Some(message),
            Ok(None) => {
                tracing::warn!(queue = %self.name, seq, message_id, "message body missing from the store");
                None
            }
            Err(e) => {
                tracing::warn!(queue = %self.name, seq, message_id, error = %e, "cannot read message body from the store");
                None
            }
        }
    }

    /// Reads the next paged-out bodies from the head on back from the store, with the lock
    /// released meanwhile, and gives them to their entries. An entry whose body cannot be read
    /// is dropped, from the store too, rather than left to block every message behind it.
    fn read_ahead(&self, st: &mut MutexGuard<'_, State>) {
        let planned = st.ready.plan_read_ahead(self.resident_budget());
        if planned.is_empty() {
            return;
        }
        st.reading = true;
        let bodies: Vec<_> = MutexGuard::unlocked(st, || {
            planned
                .into_iter()
                .map(|(slot, id)| (slot, id, self.read_body(slot.1, id)))
                .collect()
        });
        st.reading = false;
        for (slot, id, body) in bodies {
            match body {
                Some(message) => st.ready.attach(slot, id, message),
                None => {
                    if st.ready.remove(slot, id).is_some() {
                        self.forget(slot.1, id);
                    }
                }
            }
        }
    }

    fn drop_expired_head(&self, st: &mut State, now: u64, dead: &mut Vec<Dying>) {
        while let Some(entry) = st.ready.first() {
            if entry.expires_at.is_none_or(|t| t.get() >= now) {
                break;
            }
            let Some(((_, seq), entry)) = st.ready.pop_first() else {
                break;
            };
            self.settle_dead(seq, entry, DeathReason::Expired, dead);
        }
    }

    /// Delivers ready messages with their bodies in memory to consumers with credit. Returns
    /// true when it stopped at a paged-out head that a consumer is waiting for.
    fn dispatch_locked(
        self: &Arc<Self>,
        st: &mut State,
        now: &mut Now,
        dead: &mut Vec<Dying>,
    ) -> bool {
        loop {
            if self.may_expire.load(Ordering::Relaxed) {
                self.drop_expired_head(st, now.get(), dead);
            }
            if st.ready.is_empty() || st.consumers.is_empty() {
                return false;
            }
            let Some(consumer) = st.consumers.pick(self.config.single_active_consumer) else {
                return false;
            };
            let Some(message) = st.ready.first().and_then(|head| head.message.clone()) else {
                // The head's body is on disk: the caller reads it back with the lock released.
                consumer.release();
                return true;
            };
            let Some((slot, mut entry)) = st.ready.pop_first() else {
                consumer.release();
                return false;
            };
            let seq = slot.1;
            let redelivered = entry.redelivered;
            let charge = consumer.charge(entry.body_len);
            if consumer.no_ack {
                if entry.persisted {
                    self.forget(seq, entry.id);
                }
            } else {
                if entry.persisted && !entry.redelivered {
                    if let Err(e) = self.store.mark_redelivered(self.id, seq) {
                        tracing::warn!(queue = %self.name, error = %e, "store mark_redelivered failed");
                    }
                }
                entry.redelivered = true;
                self.hold_unacked(st, slot, entry, Some(consumer.clone()));
            }
            let delivery = Delivery {
                consumer: consumer.clone(),
                queue: self.clone(),
                seq,
                message,
                redelivered,
                charge,
            };
            if consumer.send(Outbound::Deliver(delivery)) {
                self.count_delivery(redelivered);
            } else {
                // The connection is gone; its cleanup will cancel the consumer. Put the message
                // back and stop offering to this consumer.
                consumer.mark_cancelled();
                consumer.release();
                consumer.uncharge(charge);
                if let Some(u) = st.unacked.remove(&seq) {
                    st.unacked_bytes -= u.entry.body_len;
                    st.ready.insert(u.slot, u.entry);
                }
            }
        }
    }

    /// Dispatches, reading paged-out bodies back (lock released) while a consumer waits for the
    /// head and no other caller is already reading.
    fn dispatch_reading(
        self: &Arc<Self>,
        st: &mut MutexGuard<'_, State>,
        now: &mut Now,
        dead: &mut Vec<Dying>,
    ) {
        while self.dispatch_locked(st, now, dead) && !st.reading {
            self.read_ahead(st);
        }
    }

    /// Tracks a delivery until it is settled. A persistent one drops its body, which the store
    /// holds: a requeue puts it back paged out, and a rejection reads it for dead-lettering.
    fn hold_unacked(
        &self,
        st: &mut State,
        slot: Slot,
        mut entry: Entry,
        consumer: Option<Arc<Consumer>>,
    ) {
        if entry.persisted {
            entry.message = None;
        }
        st.unacked_bytes += entry.body_len;
        st.unacked.insert(
            slot.1,
            Unacked {
                slot,
                entry,
                consumer,
            },
        );
    }

    /// Counts a message handed to a consumer or to `basic.get`, and whether it had been
    /// delivered before.
    fn count_delivery(&self, redelivered: bool) {
        self.counters.count_delivery(redelivered);
    }

    /// Offers ready messages to consumers that have credit again.
    pub fn dispatch(self: &Arc<Self>) {
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            if st.deleted {
                return;
            }
            self.dispatch_reading(&mut st, &mut Now::default(), &mut dead);
        }
        self.bury(dead);
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
        let Some(expires) = self.config.expires else {
            return false;
        };
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
            if st.consumers.iter().any(|c| c.exclusive)
                || (consumer.exclusive && !st.consumers.is_empty())
            {
                return Err(CoreError::AccessRefused(format!(
                    "queue '{}' in vhost has an exclusive consumer or cannot take one",
                    self.name
                )));
            }
            st.consumers.push(consumer);
            st.had_consumer = true;
            let now = now_ms();
            st.last_used_ms = now;
            self.dispatch_reading(&mut st, &mut Now::at(now), &mut dead);
        }
        self.bury(dead);
        Ok(())
    }

    /// Removes a consumer; returns true when an auto-delete queue has just lost its last one.
    pub fn remove_consumer(self: &Arc<Self>, consumer: &Arc<Consumer>) -> bool {
        consumer.mark_cancelled();
        let mut dead = Vec::new();
        let now_unused = {
            let mut st = self.state.lock();
            st.consumers.remove(consumer);
            let now = now_ms();
            st.last_used_ms = now;
            // With a single active consumer, the next in line takes over now.
            self.dispatch_reading(&mut st, &mut Now::at(now), &mut dead);
            self.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
        };
        self.bury(dead);
        now_unused
    }

    /// `basic.get`: takes the next ready message, tracked as unacked unless `no_ack`.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<Got> {
        let mut dead = Vec::new();
        let got = self.get_reading(no_ack, &mut dead);
        self.bury(dead);
        got
    }

    fn get_reading(self: &Arc<Self>, no_ack: bool, dead: &mut Vec<Dying>) -> Option<Got> {
        let mut st = self.state.lock();
        st.last_used_ms = now_ms();
        loop {
            let mut now = Now::default();
            if self.may_expire.load(Ordering::Relaxed) {
                self.drop_expired_head(&mut st, now.get(), dead);
            }
            if st.ready.head_is_paged() && !st.reading {
                self.read_ahead(&mut st);
                // Consumers passed over while the lock was released are served first.
                self.dispatch_locked(&mut st, &mut now, dead);
                continue;
            }
            let (slot, mut entry) = st.ready.pop_first()?;
            let seq = slot.1;
            let message = match entry.message.clone() {
                Some(message) => message,
                None => {
                    // Another caller is reading ahead: this one body is read alone, the lock
                    // released too; the entry is out of the ready list, so the order holds.
                    let body = MutexGuard::unlocked(&mut st, || self.read_body(seq, entry.id));
                    match body {
                        Some(message) if !st.deleted => message,
                        Some(_) => return None,
                        None => {
                            self.forget(seq, entry.id);
                            continue;
                        }
                    }
                }
            };
            let redelivered = entry.redelivered;
            if no_ack {
                if entry.persisted {
                    self.forget(seq, entry.id);
                }
            } else {
                entry.redelivered = true;
                self.hold_unacked(&mut st, slot, entry, None);
            }
            self.count_delivery(redelivered);
            return Some(Got {
                seq,
                message,
                redelivered,
                remaining: st.ready.len() as u64,
            });
        }
    }

    fn take_unacked(&self, st: &mut State, seq: u64) -> Option<Unacked> {
        let u = st.unacked.remove(&seq)?;
        st.unacked_bytes -= u.entry.body_len;
        if let Some(c) = &u.consumer {
            c.release();
        }
        Some(u)
    }
    /// Settles deliveries as their client asked: acknowledged messages leave the queue (and the
    /// store), requeued ones return to their original position flagged redelivered, rejected
    /// ones are dead-lettered (reason `rejected`) or dropped. Credit returns to their consumers
    /// either way. Acknowledgements are counted.
    pub fn settle(self: &Arc<Self>, seqs: &[u64], how: Settlement) {
        let settled = self.settle_entries(seqs, how);
        if how == Settlement::Ack && settled > 0 {
            self.counters.acked.fetch_add(settled, Ordering::Relaxed);
        }
    }

    /// Settles deliveries that end without an acknowledgement from the client: ones that need
    /// none once written (MQTT QoS 0), and ones the front-end cannot deliver at all. They leave
    /// the queue as acknowledged ones do, but are not counted as acknowledged.
    pub fn finish(self: &Arc<Self>, seqs: &[u64]) {
        self.settle_entries(seqs, Settlement::Ack);
    }

    /// Settles the deliveries among `seqs` still awaiting settlement; returns how many there
    /// were.
    fn settle_entries(self: &Arc<Self>, seqs: &[u64], how: Settlement) -> u64 {
        let mut settled = 0;
        let mut dead = Vec::new();
        {
            let mut st = self.state.lock();
            for &seq in seqs {
                let Some(u) = self.take_unacked(&mut st, seq) else {
                    continue;
                };
                settled += 1;
                match how {
                    Settlement::Ack if u.entry.persisted => self.forget(seq, u.entry.id),
                    Settlement::Ack => {}
                    Settlement::Requeue if !st.deleted => st.ready.insert(u.slot, u.entry),
                    Settlement::Requeue => {}
                    Settlement::Reject => {
                        self.settle_dead(seq, u.entry, DeathReason::Rejected, &mut dead)
                    }
                }
            }
            if !st.deleted {
                self.dispatch_reading(&mut st, &mut Now::default(), &mut dead);
            }
        }
        self.bury(dead);
        settled
    }

    /// Settles deliveries the client acknowledged; see [`Queue::settle`].
    pub fn ack(self: &Arc<Self>, seqs: &[u64]) {
        self.settle(seqs, Settlement::Ack);
    }

    pub fn requeue(self: &Arc<Self>, seqs: &[u64]) {
        self.settle(seqs, Settlement::Requeue);
    }

    pub fn reject(self: &Arc<Self>, seqs: &[u64]) {
        self.settle(seqs, Settlement::Reject);
    }

    /// Removes every ready message; returns how many there were.
    pub fn purge(&self) -> u64 {
        let mut st = self.state.lock();
        let count = st.ready.len() as u64;
        let ready = st.ready.take();
        drop(st);
        for ((_, seq), entry) in ready {
            if entry.persisted {
                self.forget(seq, entry.id);
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
        st.ready = Ready::default();
        for c in st.consumers.drain() {
            c.mark_cancelled();
            c.send(Outbound::Cancelled {
                consumer_tag: c.tag.clone(),
            });
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
