//! The front-ends' delivery ledger against real queues over an in-memory store.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc::{self, UnboundedReceiver};

use crate::broker::{Broker, CoreLimits};
use crate::consumer::{Consumer, ConsumerSpec, Delivery, Outbound};
use crate::front_end::ledger::{give_back, is_for, AutoAck, Batch, Ledger};
use crate::memory_store::MemoryStore;
use crate::message::{Message, Properties, Table};
use crate::queue::{Queue, Settlement};
use crate::store::Store;
use crate::vhost::{QueueDeclare, VHost};

fn vhost() -> (Arc<Broker>, Arc<VHost>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let broker =
        Broker::open(store, &["/".to_owned()], CoreLimits::default()).expect("broker opens");
    let vhost = broker.vhost("/").expect("vhost");
    (broker, vhost)
}

/// A queue holding `count` messages, consumed by an acknowledging consumer (`no_ack` false)
/// or an auto-ack one; returns the queue, the consumer and the deliveries it was sent.
fn consumed(
    vhost: &VHost,
    name: &str,
    count: usize,
    no_ack: bool,
) -> (Arc<Queue>, Arc<Consumer>, UnboundedReceiver<Outbound>) {
    let declare = QueueDeclare {
        name: name.into(),
        ..QueueDeclare::default()
    };
    vhost.declare_queue(declare, 1).expect("declare");
    for i in 0..count {
        let body = Bytes::from(format!("{name}{i}"));
        vhost
            .publish(Message::new("", name, Properties::default(), body))
            .expect("publish");
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let spec = ConsumerSpec {
        tag: name.into(),
        connection: 1,
        no_ack,
        exclusive: false,
        arguments: Table::new(),
        prefetch: 0,
        shared_credit: None,
    };
    let (queue, consumer) = vhost.consume(name, spec, tx).expect("consume");
    (queue, consumer, rx)
}

fn deliveries(rx: &mut UnboundedReceiver<Outbound>) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Ok(item) = rx.try_recv() {
        if let Outbound::Deliver(d) = item {
            out.push(d);
        }
    }
    out
}

/// (ready, unacknowledged) of `queue`.
fn counts(queue: &Queue) -> (u64, u64) {
    let stats = queue.stats();
    (stats.ready, stats.unacked)
}

/// Records `ds` in the ledger under tags from `first`, each with `extra`.
fn record<X: Copy>(ledger: &mut Ledger<u64, X>, first: u64, ds: &[Delivery], extra: X) {
    for (i, d) in ds.iter().enumerate() {
        ledger.insert(first + i as u64, d.queue.clone(), d.seq, extra);
    }
}

#[test]
fn settling_one_tag_settles_that_delivery_alone() {
    let (_broker, vhost) = vhost();
    let (queue, _c, mut rx) = consumed(&vhost, "q", 3, false);
    let mut ledger = Ledger::default();
    record(&mut ledger, 1, &deliveries(&mut rx), ());
    assert!(ledger.settle(2, Settlement::Ack));
    assert_eq!(counts(&queue), (0, 2));
    assert_eq!(ledger.len(), 2);
    assert!(ledger.contains(1) && !ledger.contains(2) && ledger.contains(3));
}

#[test]
fn an_unknown_or_already_settled_tag_is_reported_and_settles_nothing() {
    let (_broker, vhost) = vhost();
    let (queue, _c, mut rx) = consumed(&vhost, "q", 2, false);
    let mut ledger = Ledger::default();
    record(&mut ledger, 1, &deliveries(&mut rx), ());
    assert!(!ledger.settle(7, Settlement::Ack));
    assert!(ledger.settle(1, Settlement::Ack));
    assert!(!ledger.settle(1, Settlement::Ack), "a tag settles once");
    assert_eq!(ledger.settle_up_to(0, |_| true, Settlement::Ack), 0);
    assert_eq!(counts(&queue), (0, 1));
    assert!(ledger.get(2).is_some_and(|u| u
        .source
        .as_ref()
        .is_some_and(|(q, _)| Arc::ptr_eq(q, &queue))));
}

#[test]
fn settling_up_to_a_tag_takes_it_and_every_earlier_one() {
    let (_broker, vhost) = vhost();
    let (queue, _c, mut rx) = consumed(&vhost, "q", 5, false);
    let mut ledger = Ledger::default();
    record(&mut ledger, 1, &deliveries(&mut rx), ());
    assert!(ledger.settle(2, Settlement::Ack));
    // 1, 3 and 4: the gap 2 left is no obstacle.
    assert_eq!(ledger.settle_up_to(4, |_| true, Settlement::Ack), 3);
    assert_eq!(counts(&queue), (0, 1));
    assert!(ledger.contains(5));
    assert_eq!(ledger.settle_up_to(u64::MAX, |_| true, Settlement::Ack), 1);
    assert!(ledger.is_empty());
    assert_eq!(counts(&queue), (0, 0));
}

#[test]
fn settling_up_to_a_tag_can_keep_to_one_subscription() {
    let (_broker, vhost) = vhost();
    let (a, _ca, mut rx_a) = consumed(&vhost, "a", 2, false);
    let (b, _cb, mut rx_b) = consumed(&vhost, "b", 2, false);
    let mut ledger = Ledger::default();
    let (da, db) = (deliveries(&mut rx_a), deliveries(&mut rx_b));
    // Interleaved: a1 b1 a2 b2 under tags 1 to 4.
    ledger.insert(1, da[0].queue.clone(), da[0].seq, 'a');
    ledger.insert(2, db[0].queue.clone(), db[0].seq, 'b');
    ledger.insert(3, da[1].queue.clone(), da[1].seq, 'a');
    ledger.insert(4, db[1].queue.clone(), db[1].seq, 'b');
    assert_eq!(ledger.settle_up_to(3, |s| *s == 'a', Settlement::Ack), 2);
    assert_eq!((counts(&a), counts(&b)), ((0, 0), (0, 2)));
    assert_eq!(ledger.len(), 2);
}

#[test]
fn a_settlement_reaches_each_queue_in_one_batch_in_delivery_order() {
    let (_broker, vhost) = vhost();
    let (a, ca, mut rx_a) = consumed(&vhost, "a", 3, false);
    let (b, _cb, mut rx_b) = consumed(&vhost, "b", 2, false);
    let mut ledger = Ledger::default();
    let (da, db) = (deliveries(&mut rx_a), deliveries(&mut rx_b));
    ledger.insert(1, da[0].queue.clone(), da[0].seq, ());
    ledger.insert(2, db[0].queue.clone(), db[0].seq, ());
    ledger.insert(3, da[1].queue.clone(), da[1].seq, ());
    ledger.insert(4, db[1].queue.clone(), db[1].seq, ());
    ledger.insert(5, da[2].queue.clone(), da[2].seq, ());
    // Requeued, the messages come back to the consumer in their original order, redelivered.
    assert_eq!(ledger.settle_up_to(5, |_| true, Settlement::Requeue), 5);
    let again = deliveries(&mut rx_a);
    let seqs: Vec<u64> = again.iter().map(|d| d.seq).collect();
    assert_eq!(seqs, da.iter().map(|d| d.seq).collect::<Vec<_>>());
    assert!(again.iter().all(|d| d.redelivered));
    assert_eq!(counts(&b), (0, 2), "b's consumer took them back");
    assert_eq!(ca.unacked(), 3);

    let mut batch = Batch::default();
    for d in again.iter().chain(&deliveries(&mut rx_b)) {
        batch.push(d.queue.clone(), d.seq);
    }
    batch.finish();
    assert_eq!((counts(&a), counts(&b)), ((0, 0), (0, 0)));
}

#[test]
fn requeue_all_gives_every_delivery_back_redelivered() {
    let (_broker, vhost) = vhost();
    let (queue, consumer, mut rx) = consumed(&vhost, "q", 3, false);
    let mut ledger = Ledger::default();
    record(&mut ledger, 1, &deliveries(&mut rx), ());
    vhost.cancel(&queue, &consumer);
    assert_eq!(ledger.requeue_all(), 3);
    assert!(ledger.is_empty());
    assert_eq!(counts(&queue), (3, 0));
    assert_eq!(ledger.requeue_all(), 0);
}

#[test]
fn an_auto_ack_delivery_gives_credit_back_when_written_and_more_comes_after_the_flush() {
    let (_broker, vhost) = vhost();
    let (queue, consumer, mut rx) = consumed(&vhost, "q", 0, true);
    for i in 0..3 {
        vhost
            .publish(Message::new(
                "",
                "q",
                Properties::default(),
                Bytes::from(format!("{i}")),
            ))
            .expect("publish");
    }
    let ds = deliveries(&mut rx);
    assert_eq!((ds.len(), consumer.unacked()), (3, 3));
    let mut auto = AutoAck::default();
    for d in &ds {
        auto.written(&d.consumer, &d.queue);
    }
    assert_eq!(consumer.unacked(), 0);
    auto.flushed();
    assert_eq!(counts(&queue), (0, 0));
}

#[test]
fn a_delivery_for_a_consumer_that_ended_goes_back_unless_it_was_auto_ack() {
    let (_broker, vhost) = vhost();
    let (queue, consumer, mut rx) = consumed(&vhost, "q", 1, false);
    let d = deliveries(&mut rx).pop().expect("a delivery");
    assert!(is_for(&d, Some(&consumer)));
    assert!(!is_for(&d, None));
    vhost.cancel(&queue, &consumer);
    give_back(&d);
    assert_eq!(counts(&queue), (1, 0));

    let (auto, auto_consumer, mut auto_rx) = consumed(&vhost, "auto", 1, true);
    let d = deliveries(&mut auto_rx).pop().expect("a delivery");
    vhost.cancel(&auto, &auto_consumer);
    give_back(&d);
    assert_eq!(
        counts(&auto),
        (0, 0),
        "an auto-ack delivery is already gone"
    );
}

#[test]
fn a_held_tag_has_no_queue_entry_and_settling_it_only_frees_the_tag() {
    let (_broker, vhost) = vhost();
    let (queue, consumer, mut rx) = consumed(&vhost, "q", 1, false);
    let mut ledger = Ledger::default();
    record(&mut ledger, 1, &deliveries(&mut rx), 'q');
    ledger.hold(2, 'r');
    assert_eq!(ledger.len(), 2);
    assert!(ledger
        .get(2)
        .is_some_and(|u| u.source.is_none() && u.extra == 'r'));
    assert!(ledger.settle(2, Settlement::Ack));
    assert!(!ledger.contains(2));
    assert_eq!(counts(&queue), (0, 1), "the queue's delivery is untouched");
    ledger.hold(3, 'r');
    vhost.cancel(&queue, &consumer);
    // Both count; only the one with a queue entry goes back to it.
    assert_eq!(ledger.requeue_all(), 2);
    assert!(ledger.is_empty());
    assert_eq!(counts(&queue), (1, 0));
}

#[test]
fn settling_the_entry_of_a_delivery_keeps_its_tag_in_use_until_the_tag_is_settled() {
    let (_broker, vhost) = vhost();
    let (queue, _c, mut rx) = consumed(&vhost, "q", 2, false);
    let mut ledger = Ledger::default();
    record(&mut ledger, 1, &deliveries(&mut rx), 0u8);
    assert!(ledger.settle_entry(9, Settlement::Ack).is_none());
    let extra = ledger.settle_entry(1, Settlement::Ack).expect("tag 1");
    *extra = 2;
    assert_eq!(counts(&queue), (0, 1), "the entry is acknowledged");
    assert!(ledger
        .get(1)
        .is_some_and(|u| u.source.is_none() && u.extra == 2));
    assert_eq!(ledger.len(), 2, "the tag is still in use");
    // Requeued now, it has nothing to give back; settled, it frees the tag alone.
    assert!(ledger.settle(1, Settlement::Requeue));
    assert_eq!(counts(&queue), (0, 1));
    assert!(!ledger.contains(1));
    if let Some(u) = ledger.get_mut(2) {
        u.extra = 7;
    }
    assert!(ledger.get(2).is_some_and(|u| u.extra == 7));
}

#[test]
fn deliveries_are_iterated_in_the_order_recorded_whatever_their_tags() {
    let mut ledger: Ledger<u16, char> = Ledger::default();
    // Packet ids wrap around and are reused once free, so the order is not theirs.
    for (tag, extra) in [(65_535, 'a'), (1, 'b'), (7, 'c'), (2, 'd')] {
        ledger.hold(tag, extra);
    }
    assert!(ledger.settle(1, Settlement::Ack));
    ledger.hold(1, 'e');
    let seen: Vec<(u16, char)> = ledger.iter().map(|(tag, u)| (tag, u.extra)).collect();
    assert_eq!(seen, [(65_535, 'a'), (7, 'c'), (2, 'd'), (1, 'e')]);
    assert!(ledger.get(1).is_some_and(|u| u.extra == 'e'));
    // Recorded again while in use, a tag's delivery is replaced and moves to the end.
    ledger.hold(7, 'f');
    let seen: Vec<(u16, char)> = ledger.iter().map(|(tag, u)| (tag, u.extra)).collect();
    assert_eq!(seen, [(65_535, 'a'), (2, 'd'), (1, 'e'), (7, 'f')]);
    assert_eq!(ledger.len(), 4);
}

#[test]
fn settling_up_to_a_tag_still_works_after_earlier_settlements_left_gaps() {
    let mut ledger: Ledger<u64, bool> = Ledger::default();
    // Tag 1 stays; 2 to 200 come and go one by one, then 201 to 210 are outstanding.
    ledger.hold(1, false);
    for tag in 2..=200 {
        ledger.hold(tag, true);
        assert!(ledger.settle(tag, Settlement::Ack));
    }
    for tag in 201..=210 {
        ledger.hold(tag, true);
    }
    assert!(ledger.get(1).is_some() && ledger.get(205).is_some());
    assert_eq!(ledger.settle_up_to(205, |keep| *keep, Settlement::Ack), 5);
    let left: Vec<u64> = ledger.iter().map(|(tag, _)| tag).collect();
    assert_eq!(left, [1, 206, 207, 208, 209, 210]);
}

/// A connection's window of unsettled deliveries slides by one with each delivery and
/// acknowledgement: `window` outstanding, the oldest settled as each new one is recorded,
/// optionally behind one `stuck` delivery the client never settles. Returns the allocations
/// of the `4 * rounds` steps after the first `rounds`: storage that grew with the deliveries
/// would double at least twice in them.
///
/// A hash table reused this way may still grow once, whenever the slots its removals left
/// marked run out while it is more than half full; after that it only tidies in place. So
/// however long the run, one allocation at most.
fn slide(ledger: &mut Ledger<u16, ()>, window: u16, rounds: u32, stuck: bool) -> u64 {
    let mut next: u16 = 1;
    let mut step = |ledger: &mut Ledger<u16, ()>| {
        ledger.hold(next, ());
        let oldest = next.wrapping_sub(window);
        if oldest != 0 && !(stuck && oldest == 1) {
            ledger.settle(oldest, Settlement::Ack);
        }
        next = next.checked_add(1).unwrap_or(2);
    };
    for _ in 0..rounds {
        step(ledger);
    }
    let used = allocation_counter::measure(|| {
        for _ in 0..4 * rounds {
            step(ledger);
        }
    });
    used.count_total
}

#[test]
fn once_its_window_is_full_the_ledger_records_and_settles_without_allocating() {
    for window in [1, 12, 100, 1_000] {
        let mut ledger = Ledger::default();
        let allocations = slide(&mut ledger, window, 10_000, false);
        assert!(allocations <= 1, "window {window}: {allocations}");
        assert_eq!(ledger.len(), usize::from(window));
    }
}

#[test]
fn a_delivery_never_settled_does_not_make_the_ledger_grow_with_the_ones_after_it() {
    let mut ledger = Ledger::default();
    let allocations = slide(&mut ledger, 10, 10_000, true);
    assert!(allocations <= 1, "{allocations}");
    assert!(ledger.contains(1));
    assert_eq!(ledger.len(), 11);
}
