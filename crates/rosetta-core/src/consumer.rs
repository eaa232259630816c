//! Consumers and the path deliveries take to a connection.
//!
//! A queue pushes a [`Delivery`] into the consuming connection's outbox only while the consumer
//! holds [`Credit`]: the prefetch window for acknowledging consumers, a fixed write window for
//! auto-ack ones. Credit returns on ack (or, for auto-ack, once the frame is written), and the
//! queue is then asked to dispatch again. This bounds what sits in an outbox.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use crate::message::{Message, Table};
use crate::queue::Queue;

/// Identifies a client connection across the core (exclusive queues, consumers).
pub type ConnectionId = u64;

/// How many deliveries an auto-ack consumer may have written-but-unflushed before the queue
/// waits for the connection to catch up.
pub const AUTO_ACK_WINDOW: u32 = 1000;

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
        channel: u16,
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
}

/// What a protocol session asks for when it starts consuming.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub tag: String,
    pub channel: u16,
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
    pub channel: u16,
    pub connection: ConnectionId,
    pub no_ack: bool,
    pub exclusive: bool,
    pub arguments: Table,
    credit: Arc<Credit>,
    shared_credit: Option<Arc<Credit>>,
    outbox: UnboundedSender<Outbound>,
    cancelled: AtomicBool,
}

impl Consumer {
    pub fn new(spec: ConsumerSpec, outbox: UnboundedSender<Outbound>) -> Arc<Self> {
        let limit = if spec.no_ack {
            AUTO_ACK_WINDOW
        } else {
            spec.prefetch
        };
        Arc::new(Consumer {
            tag: spec.tag.into(),
            channel: spec.channel,
            connection: spec.connection,
            no_ack: spec.no_ack,
            exclusive: spec.exclusive,
            arguments: spec.arguments,
            credit: Credit::new(limit),
            shared_credit: if spec.no_ack {
                None
            } else {
                spec.shared_credit
            },
            outbox,
            cancelled: AtomicBool::new(false),
        })
    }

    /// Whether the consumer could take a delivery now.
    pub fn has_credit(&self) -> bool {
        !self.is_cancelled()
            && self.credit.has_room()
            && self.shared_credit.as_ref().is_none_or(|c| c.has_room())
    }

    /// Takes one unit from both the consumer's and the shared window, or neither.
    pub(crate) fn try_acquire(&self) -> bool {
        if self.is_cancelled() || !self.credit.try_acquire() {
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
