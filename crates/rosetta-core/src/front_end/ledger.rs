//! The delivery bookkeeping every protocol front-end keeps: which deliveries its client has not
//! settled yet, under the protocol's own tag (an AMQP delivery tag, a STOMP ack id), and how
//! settling them reaches their queues.
//!
//! The ledger only finds deliveries and hands them to their queues in batches, one call per
//! queue in delivery order; what a tag the ledger does not know means (AMQP's 406, STOMP's
//! ERROR) and which deliveries one acknowledgement covers (AMQP `multiple`, STOMP `client`
//! mode) stay with the front-end, which is told what was found.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::consumer::{Consumer, Delivery};
use crate::queue::{Queue, Settlement};

/// One unsettled delivery: the queue entry it came from, and what the front-end keeps with it.
#[derive(Debug)]
pub struct Unsettled<X> {
    pub queue: Arc<Queue>,
    pub seq: u64,
    pub extra: X,
}

/// Unsettled deliveries by the protocol's tag, which grows with every delivery, so "up to and
/// including a tag" is "delivered no later than it".
#[derive(Debug)]
pub struct Ledger<K, X = ()> {
    entries: BTreeMap<K, Unsettled<X>>,
}

impl<K: Ord + Copy, X> Default for Ledger<K, X> {
    fn default() -> Self {
        Ledger {
            entries: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Copy, X> Ledger<K, X> {
    /// Records a delivery the client is to settle under `tag`.
    pub fn insert(&mut self, tag: K, queue: Arc<Queue>, seq: u64, extra: X) {
        self.entries.insert(tag, Unsettled { queue, seq, extra });
    }

    pub fn get(&self, tag: K) -> Option<&Unsettled<X>> {
        self.entries.get(&tag)
    }

    pub fn contains(&self, tag: K) -> bool {
        self.entries.contains_key(&tag)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Settles the delivery under `tag` as `how`; false, settling nothing, when no delivery
    /// is unsettled under it.
    pub fn settle(&mut self, tag: K, how: Settlement) -> bool {
        match self.entries.remove(&tag) {
            Some(u) => {
                u.queue.settle(&[u.seq], how);
                true
            }
            None => false,
        }
    }

    /// Settles as `how` every delivery up to and including `tag` whose `extra` passes `keep`;
    /// returns how many there were.
    pub fn settle_up_to(&mut self, tag: K, keep: impl Fn(&X) -> bool, how: Settlement) -> usize {
        let tags: Vec<K> = self
            .entries
            .range(..=tag)
            .filter(|(_, u)| keep(&u.extra))
            .map(|(k, _)| *k)
            .collect();
        let mut batch = Batch::default();
        for k in &tags {
            if let Some(u) = self.entries.remove(k) {
                batch.push(u.queue, u.seq);
            }
        }
        batch.settle(how);
        tags.len()
    }

    /// Every unsettled delivery goes back to its queue, in delivery order, flagged redelivered
    /// (a channel or connection that ends, AMQP `basic.recover`); returns how many there were.
    pub fn requeue_all(&mut self) -> usize {
        let entries = std::mem::take(&mut self.entries);
        let count = entries.len();
        let mut batch = Batch::default();
        for (_, u) in entries {
            batch.push(u.queue, u.seq);
        }
        batch.settle(Settlement::Requeue);
        count
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
