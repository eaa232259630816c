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
    assert!(ledger.get(2).is_some_and(|u| Arc::ptr_eq(&u.queue, &queue)));
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
