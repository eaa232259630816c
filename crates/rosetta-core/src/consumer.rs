//! Consumers and the path deliveries take to a connection.
//!
//! A queue pushes a [`Delivery`] into the consuming connection's outbox only while the consumer
//! holds [`Credit`]: the prefetch window for acknowledging consumers, a fixed write window for
//! auto-ack ones. Credit returns on ack (or, for auto-ack, once the frame is written), and the
//! queue is then asked to dispatch again. This bounds what sits in an outbox by count.
//!
//! Bytes are bounded too, whatever the prefetch (0, unlimited, is the AMQP and STOMP default):
//! each delivery is charged to its consumer's buffer budget when the queue hands it over, and
//! the charge stays until the connection has written it to the socket ([`Unwritten`]). A
//! consumer whose budget is spent gets nothing more; its messages stay ready in the queue (on
//! disk when paged out), so a client that stops reading its socket costs its budget and no
//! more. The budget is per consumer rather than per connection so that the release that makes
//! room names the one queue to wake, and consumers of one connection do not starve each other.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use crate::error::CoreError;
use crate::message::{Message, Table};
use crate::queue::Queue;

/// Identifies a client connection across the core (exclusive queues, consumers).
pub type ConnectionId = u64;

/// How many deliveries an auto-ack consumer may have written-but-unflushed before the queue
/// waits for the connection to catch up.
pub const AUTO_ACK_WINDOW: u32 = 1000;

/// What a delivery costs a consumer's buffer beyond its body: the frames around it and its
/// bookkeeping. It also bounds how many empty messages one budget lets through.
pub const DELIVERY_OVERHEAD: u64 = 256;

/// A count of deliveries in flight against a limit (0 = unlimited).
#[derive(Debug, Default)]
pub struct Credit {
    limit: AtomicU32,
    used: AtomicU32,
}

impl Credit {
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(Credit {
            limit: AtomicU32::new(limit),
            used: AtomicU32::new(0),
        })
    }

    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Release);
    }

    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    pub fn in_use(&self) -> u32 {
        self.used.load(Ordering::Acquire)
    }

    fn try_acquire(&self) -> bool {
        let limit = self.limit();
        if limit == 0 {
            self.used.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < limit).then_some(u + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        // Saturating: a release after a limit change must never wrap.
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(1))
            });
    }

    fn has_room(&self) -> bool {
        let limit = self.limit();
        limit == 0 || self.in_use() < limit
    }
}

/// What a connection's outbox receives from queues.
#[derive(Debug)]
pub enum Outbound {
    Deliver(Delivery),
    /// The queue was deleted under the consumer (RabbitMQ's consumer cancel notification).
    Cancelled {
        consumer_tag: Arc<str>,
    },
    /// The broker tells the connection to close, from outside its own task.
    Close(CloseReason),
}

/// Why the broker closes a connection from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A newer connection claimed the same client identity (an MQTT client id); the old one must
    /// go so that one identity has one connection.
    TakenOver,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::TakenOver => "client identity taken over by a newer connection",
        }
    }
}

/// One message handed to one consumer. The connection assigns the protocol's delivery tag.
#[derive(Debug)]
pub struct Delivery {
    pub consumer: Arc<Consumer>,
    pub queue: Arc<Queue>,
    /// The entry's position in its queue; acks and requeues name it.
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// Bytes charged to the consumer's buffer until the connection has written the delivery.
    pub charge: u64,
}

/// The consumer argument that sets a consumer's priority (RabbitMQ's consumer priorities).
pub const PRIORITY_ARGUMENT: &str = "x-priority";

/// A consumer's priority from its arguments: any integer, 0 when absent. A queue offers its
/// messages to its highest-priority consumers that can take one, lower ones only while every
/// higher one is blocked.
fn priority_of(arguments: &Table) -> Result<i64, CoreError> {
    match arguments.get(PRIORITY_ARGUMENT) {
        None => Ok(0),
        Some(v) => v.as_i64().ok_or_else(|| CoreError::InvalidArgument {
            name: PRIORITY_ARGUMENT.to_owned(),
            reason: "expected an integer".to_owned(),
        }),
    }
}

/// What a protocol session asks for when it starts consuming.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Names the consumer to the front-end that made it, which gets it back with every
    /// delivery and cancel notification; the core never reads it.
    pub tag: String,
    pub connection: ConnectionId,
    pub no_ack: bool,
    pub exclusive: bool,
    pub arguments: Table,
    /// Per-consumer prefetch (0 = unlimited); ignored for auto-ack consumers.
    pub prefetch: u32,
    /// A prefetch shared by all consumers of a channel (AMQP `basic.qos` with global=true).
    pub shared_credit: Option<Arc<Credit>>,
}

#[derive(Debug)]
pub struct Consumer {
    pub tag: Arc<str>,
    pub connection: ConnectionId,
    pub no_ack: bool,
    pub exclusive: bool,
    pub arguments: Table,
    /// From `x-priority` (0 by default); higher numbers are served first.
    pub priority: i64,
    credit: Arc<Credit>,
    shared_credit: Option<Arc<Credit>>,
    outbox: UnboundedSender<Outbound>,
    cancelled: AtomicBool,
    /// Bytes of deliveries handed to the connection and not yet written (see [`Unwritten`]).
    buffered: AtomicU64,
    /// What `buffered` may reach before the queue stops offering (0 = no limit).
    buffer_budget: u64,
}

impl Consumer {
    /// A consumer whose unwritten deliveries may hold `buffer_budget` bytes (0 = no limit).
    /// Refuses an `x-priority` that is not an integer.
    pub fn new(
        spec: ConsumerSpec,
        outbox: UnboundedSender<Outbound>,
        buffer_budget: u64,
    ) -> Result<Arc<Self>, CoreError> {
        let priority = priority_of(&spec.arguments)?;
        let limit = if spec.no_ack {
            AUTO_ACK_WINDOW
        } else {
            spec.prefetch
        };
        Ok(Arc::new(Consumer {
            tag: spec.tag.into(),
            connection: spec.connection,
            no_ack: spec.no_ack,
            exclusive: spec.exclusive,
            arguments: spec.arguments,
            priority,
            credit: Credit::new(limit),
            shared_credit: if spec.no_ack {
                None
            } else {
                spec.shared_credit
            },
            outbox,
            cancelled: AtomicBool::new(false),
            buffered: AtomicU64::new(0),
            buffer_budget,
        }))
    }

    /// Whether the consumer could take a delivery now.
    pub fn has_credit(&self) -> bool {
        !self.is_cancelled()
            && self.buffer_has_room()
            && self.credit.has_room()
            && self.shared_credit.as_ref().is_none_or(|c| c.has_room())
    }

    /// Takes one unit from both the consumer's and the shared window, or neither.
    pub(crate) fn try_acquire(&self) -> bool {
        if self.is_cancelled() || !self.buffer_has_room() || !self.credit.try_acquire() {
            return false;
        }
        if let Some(shared) = &self.shared_credit {
            if !shared.try_acquire() {
                self.credit.release();
                return false;
            }
        }
        true
    }

    /// Returns one unit of credit: after an ack, a requeue, or (auto-ack) a completed write.
    pub fn release(&self) {
        self.credit.release();
        if let Some(shared) = &self.shared_credit {
            shared.release();
        }
    }

    /// Changes the per-consumer prefetch (`basic.qos` after `basic.consume`).
    pub fn set_prefetch(&self, limit: u32) {
        if !self.no_ack {
            self.credit.set_limit(limit);
        }
    }

    /// Whether another delivery may be handed over: while anything of the budget is left, so a
    /// message larger than the whole budget still goes out, alone.
    fn buffer_has_room(&self) -> bool {
        self.buffer_budget == 0 || self.buffered.load(Ordering::SeqCst) < self.buffer_budget
    }

    /// Charges a delivery handed to the connection; returns the charge it must give back.
    pub(crate) fn charge(&self, body_len: u64) -> u64 {
        let charge = body_len.saturating_add(DELIVERY_OVERHEAD);
        self.buffered.fetch_add(charge, Ordering::SeqCst);
        charge
    }

    /// Gives back the charge of a delivery the connection has written (or dropped). True when
    /// this made room in a spent budget: the queue stopped offering to this consumer and must
    /// be asked to dispatch again. Exactly one release crosses back under the budget after the
    /// queue saw it spent, so no wake-up is lost and none is repeated per delivery.
    pub fn uncharge(&self, charge: u64) -> bool {
        let before = self
            .buffered
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                Some(b.saturating_sub(charge))
            })
            .unwrap_or(0);
        self.buffer_budget != 0
            && before >= self.buffer_budget
            && before.saturating_sub(charge) < self.buffer_budget
    }

    pub fn unacked(&self) -> u32 {
        self.credit.in_use()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    pub(crate) fn mark_cancelled(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    /// Pushes into the connection's outbox; false if the connection is gone.
    pub(crate) fn send(&self, item: Outbound) -> bool {
        self.outbox.send(item).is_ok()
    }
}

/// Deliveries a connection has taken from its outbox and not yet written to its socket. Their
/// charges stay on their consumers until [`Unwritten::written`], which the connection calls once
/// the output that holds them is on the socket (or was given up).
#[derive(Debug, Default)]
pub struct Unwritten {
    /// Consecutive deliveries of one consumer share an entry: a burst costs one push.
    charges: Vec<(Arc<Consumer>, Arc<Queue>, u64)>,
}

impl Unwritten {
    /// Records the charge of an item about to be turned into output.
    pub fn note(&mut self, item: &Outbound) {
        let Outbound::Deliver(d) = item else {
            return;
        };
        if d.charge == 0 {
            return;
        }
        match self.charges.last_mut() {
            Some((consumer, _, charge)) if Arc::ptr_eq(consumer, &d.consumer) => {
                *charge += d.charge
            }
            _ => self
                .charges
                .push((d.consumer.clone(), d.queue.clone(), d.charge)),
        }
    }

    /// Gives every recorded charge back, and asks the queues of consumers that regained room
    /// to dispatch again.
    pub fn written(&mut self) {
        let mut wake: Vec<Arc<Queue>> = Vec::new();
        for (consumer, queue, charge) in self.charges.drain(..) {
            if consumer.uncharge(charge) && !wake.iter().any(|q| Arc::ptr_eq(q, &queue)) {
                wake.push(queue);
            }
        }
        for queue in wake {
            queue.dispatch();
        }
    }
}
