//! The delivery bookkeeping every protocol front-end keeps: which deliveries its client has not
//! settled yet, under the protocol's own tag (an AMQP delivery tag, a STOMP ack id, an MQTT
//! packet id), and how settling them reaches their queues.
//!
//! The ledger only finds deliveries and hands them to their queues in batches, one call per
//! queue in delivery order; what a tag the ledger does not know means (AMQP's 406, STOMP's
//! ERROR, nothing in MQTT) and which deliveries one acknowledgement covers (AMQP `multiple`,
//! STOMP `client` mode, MQTT's QoS 2 steps) stay with the front-end, which is told what was
//! found.
//!
//! Its storage is kept from one delivery to the next (a ring in delivery order and a hash index
//! that both keep their capacity), so that once a connection's window is full, recording and
//! settling a delivery allocates nothing; a B-tree would allocate and free a node every few
//! deliveries as the window slides.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash};
use std::sync::Arc;

use crate::consumer::{Consumer, Delivery};
use crate::hash::TagHasher;
use crate::queue::{Queue, Settlement};

/// One unsettled delivery: the queue entry it came from, and what the front-end keeps with it.
#[derive(Debug)]
pub struct Unsettled<X> {
    /// The queue and sequence number of the entry to settle; `None` for a delivery no queue
    /// holds, or one whose entry was settled while its tag stays in use
    /// ([`Ledger::settle_entry`]).
    pub source: Option<(Arc<Queue>, u64)>,
    pub extra: X,
}

/// Unsettled deliveries by the protocol's tag, in the order they were recorded.
///
/// Where tags grow with every delivery (AMQP, STOMP), "up to and including a tag" is "delivered
/// no later than it" ([`Ledger::settle_up_to`]). Tags may also be reused once settled (MQTT's
/// packet ids); only that range makes no sense for them.
#[derive(Debug)]
pub struct Ledger<K, X = ()> {
    /// Deliveries in the order they were recorded; a settled one leaves a gap until every one
    /// before it is settled too, or until gaps outnumber deliveries and are squeezed out. The
    /// front is never a gap.
    order: VecDeque<(K, Option<Unsettled<X>>)>,
    /// Where each unsettled tag is in `order`, counted from the first delivery ever recorded.
    /// Every tag is one the broker handed out, and each delivery looks its tag up several
    /// times, so the index hashes with the cheap unkeyed hasher.
    index: HashMap<K, u64, BuildHasherDefault<TagHasher>>,
    /// The position of `order`'s front, in the same count.
    front: u64,
}

impl<K: Hash + Eq + Copy, X> Default for Ledger<K, X> {
    fn default() -> Self {
        Ledger {
            order: VecDeque::new(),
            index: HashMap::default(),
            front: 0,
        }
    }
}

/// Gaps `order` may hold beyond one per delivery before they are squeezed out.
const SPARE_GAPS: usize = 32;

impl<K: Hash + Eq + Copy, X> Ledger<K, X> {
    /// Records a delivery the client is to settle under `tag`.
    pub fn insert(&mut self, tag: K, queue: Arc<Queue>, seq: u64, extra: X) {
        self.record(tag, Some((queue, seq)), extra);
    }

    /// Records a tag the client is to settle with no queue entry behind it: a message no queue
    /// held (MQTT's retained messages), or an exchange resumed after its entry was settled.
    pub fn hold(&mut self, tag: K, extra: X) {
        self.record(tag, None, extra);
    }

    fn record(&mut self, tag: K, source: Option<(Arc<Queue>, u64)>, extra: X) {
        let at = self.front + self.order.len() as u64;
        self.order
            .push_back((tag, Some(Unsettled { source, extra })));
        // A tag recorded again replaces its delivery, as in a map.
        if let Some(old) = self.index.insert(tag, at) {
            if let Some(slot) = self.order.get_mut(self.position(old)) {
                slot.1 = None;
            }
            self.tidy();
        }
    }

    /// Where the delivery recorded at `at` is in `order`.
    fn position(&self, at: u64) -> usize {
        usize::try_from(at - self.front).unwrap_or(usize::MAX)
    }

    fn slot(&self, tag: K) -> Option<usize> {
        self.index.get(&tag).map(|at| self.position(*at))
    }

    pub fn get(&self, tag: K) -> Option<&Unsettled<X>> {
        let i = self.slot(tag)?;
        self.order.get(i)?.1.as_ref()
    }

    pub fn get_mut(&mut self, tag: K) -> Option<&mut Unsettled<X>> {
        let i = self.slot(tag)?;
        self.order.get_mut(i)?.1.as_mut()
    }

    pub fn contains(&self, tag: K) -> bool {
        self.index.contains_key(&tag)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The unsettled deliveries in the order they were recorded.
    pub fn iter(&self) -> impl Iterator<Item = (K, &Unsettled<X>)> {
        self.order
            .iter()
            .filter_map(|(tag, u)| u.as_ref().map(|u| (*tag, u)))
    }

    /// Settles the delivery under `tag` as `how`, and frees the tag; false, settling nothing,
    /// when no delivery is unsettled under it.
    pub fn settle(&mut self, tag: K, how: Settlement) -> bool {
        match self.take(tag) {
            Some(u) => {
                if let Some((queue, seq)) = u.source {
                    queue.settle(&[seq], how);
                }
                true
            }
            None => false,
        }
    }

    /// Settles the queue entry of the delivery under `tag` as `how` but keeps the tag in use,
    /// for an exchange that goes on once the client has the message (MQTT QoS 2 between PUBREC
    /// and PUBCOMP); `None` when no delivery is unsettled under it.
    pub fn settle_entry(&mut self, tag: K, how: Settlement) -> Option<&mut X> {
        let u = self.get_mut(tag)?;
        if let Some((queue, seq)) = u.source.take() {
            queue.settle(&[seq], how);
        }
        Some(&mut u.extra)
    }

    /// Settles as `how` every delivery up to and including `tag` whose `extra` passes `keep`;
    /// returns how many there were.
    pub fn settle_up_to(&mut self, tag: K, keep: impl Fn(&X) -> bool, how: Settlement) -> usize
    where
        K: Ord,
    {
        let mut batch = Batch::default();
        let mut count = 0;
        for (k, slot) in self.order.iter_mut() {
            if *k > tag {
                break;
            }
            if !slot.as_ref().is_some_and(|u| keep(&u.extra)) {
                continue;
            }
            if let Some(u) = slot.take() {
                self.index.remove(k);
                count += 1;
                if let Some((queue, seq)) = u.source {
                    batch.push(queue, seq);
                }
            }
        }
        self.tidy();
        batch.settle(how);
        count
    }

    /// Every unsettled delivery goes back to its queue, in delivery order, flagged redelivered
    /// (a channel or connection that ends, AMQP `basic.recover`); returns how many there were.
    pub fn requeue_all(&mut self) -> usize {
        let count = self.index.len();
        self.index.clear();
        self.front += self.order.len() as u64;
        let mut batch = Batch::default();
        for (_, u) in self.order.drain(..) {
            if let Some((queue, seq)) = u.and_then(|u| u.source) {
                batch.push(queue, seq);
            }
        }
        batch.settle(Settlement::Requeue);
        count
    }

    /// Removes the delivery under `tag`, leaving a gap.
    fn take(&mut self, tag: K) -> Option<Unsettled<X>> {
        let i = self.slot(tag)?;
        self.index.remove(&tag);
        let u = self.order.get_mut(i).and_then(|(_, u)| u.take());
        self.tidy();
        u
    }

    /// Drops the gaps at the front, and squeezes out the rest once they outnumber deliveries
    /// (a delivery left unsettled at the front while later ones are settled).
    fn tidy(&mut self) {
        while self.order.front().is_some_and(|(_, u)| u.is_none()) {
            self.order.pop_front();
            self.front += 1;
        }
        if self.order.len() <= 2 * self.index.len() + SPARE_GAPS {
            return;
        }
        self.order.retain(|(_, u)| u.is_some());
        for (i, (tag, _)) in self.order.iter().enumerate() {
            if let Some(at) = self.index.get_mut(tag) {
                *at = self.front + i as u64;
            }
        }
    }
}
/// Queue entries to settle together, grouped by queue in the order they were added, so that
/// a burst costs one call (and one lock) per queue rather than one per delivery.
#[derive(Debug, Default)]
pub struct Batch {
    groups: Vec<(Arc<Queue>, Vec<u64>)>,
}

impl Batch {
    pub fn push(&mut self, queue: Arc<Queue>, seq: u64) {
        match self.groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &queue)) {
            Some((_, seqs)) => seqs.push(seq),
            None => self.groups.push((queue, vec![seq])),
        }
    }

    /// Settles every entry as the client asked ([`Queue::settle`]).
    pub fn settle(self, how: Settlement) {
        for (queue, seqs) in self.groups {
            queue.settle(&seqs, how);
        }
    }

    /// Settles every entry as needing no acknowledgement ([`Queue::finish`]).
    pub fn finish(self) {
        for (queue, seqs) in self.groups {
            queue.finish(&seqs);
        }
    }
}

/// Pacing of auto-ack consumers: a delivery that needs no acknowledgement gives its credit
/// back once written, but its queue is asked for more only after the output has reached the
/// socket, so the socket, not the outbox, sets the pace.
#[derive(Debug, Default)]
pub struct AutoAck {
    to_dispatch: Vec<Arc<Queue>>,
}

impl AutoAck {
    /// An auto-ack delivery from `queue` to `consumer` was written (or given up).
    pub fn written(&mut self, consumer: &Consumer, queue: &Arc<Queue>) {
        consumer.release();
        if !self.to_dispatch.iter().any(|q| Arc::ptr_eq(q, queue)) {
            self.to_dispatch.push(queue.clone());
        }
    }

    /// The output was written: the queues that gave credit back deliver more.
    pub fn flushed(&mut self) {
        for queue in std::mem::take(&mut self.to_dispatch) {
            queue.dispatch();
        }
    }
}

/// Whether `delivery` is for `live`, the consumer the front-end still holds under the
/// delivery's name. A delivery can arrive after its consumer ended (a cancel, a closed
/// channel, a new subscription under the same name), since the queue sent it before.
pub fn is_for(delivery: &Delivery, live: Option<&Arc<Consumer>>) -> bool {
    live.is_some_and(|c| Arc::ptr_eq(c, &delivery.consumer))
}

/// Gives back a delivery the front-end will not send: to its queue, flagged redelivered, unless
/// its consumer needs no acknowledgement, in which case the queue has already let it go.
pub fn give_back(delivery: &Delivery) {
    if !delivery.consumer.no_ack {
        delivery.queue.requeue(&[delivery.seq]);
    }
}
