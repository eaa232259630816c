//! The broker-wide message counters move where the core publishes, delivers and settles, so
//! every front-end gets the same counts without counting anything itself.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::broker::{Broker, CoreLimits};
use crate::consumer::{ConsumerSpec, Delivery, Outbound};
use crate::memory_store::MemoryStore;
use crate::message::{Message, Properties, Table};
use crate::queue::Queue;
use crate::store::Store;
use crate::vhost::{QueueDeclare, VHost};

fn open() -> (Arc<Broker>, Arc<VHost>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let broker =
        Broker::open(store, &["/".to_owned()], CoreLimits::default()).expect("broker opens");
    let vhost = broker.vhost("/").expect("vhost");
    (broker, vhost)
}

fn declare(vhost: &VHost, name: &str) -> Arc<Queue> {
    vhost
        .declare_queue(
            QueueDeclare {
                name: name.into(),
                ..QueueDeclare::default()
            },
            1,
        )
        .expect("queue declared");
    vhost.queue(name).expect("queue")
}

fn publish(vhost: &VHost, queue: &str) {
    let message = Message::new("", queue, Properties::default(), Bytes::from_static(b"m"));
    vhost.publish(message).expect("published");
}

fn consume(vhost: &VHost, queue: &str, no_ack: bool) -> UnboundedReceiver<Outbound> {
    let (tx, rx) = unbounded_channel();
    let spec = ConsumerSpec {
        tag: format!("c-{queue}"),
        connection: 1,
        no_ack,
        exclusive: false,
        arguments: Table::new(),
        prefetch: 0,
        shared_credit: None,
    };
    vhost.consume(queue, spec, tx).expect("consume");
    rx
}

fn next_delivery(rx: &mut UnboundedReceiver<Outbound>) -> Delivery {
    match rx.try_recv() {
        Ok(Outbound::Deliver(d)) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// (published, delivered, redelivered, acked, unroutable)
fn counts(broker: &Broker) -> (u64, u64, u64, u64, u64) {
    let c = broker.counters();
    (
        c.published.load(Ordering::Relaxed),
        c.delivered.load(Ordering::Relaxed),
        c.redelivered.load(Ordering::Relaxed),
        c.acked.load(Ordering::Relaxed),
        c.unroutable.load(Ordering::Relaxed),
    )
}

#[test]
fn publishes_are_counted_by_the_vhost_and_unroutable_ones_too() {
    let (broker, vhost) = open();
    declare(&vhost, "q");
    publish(&vhost, "q");
    publish(&vhost, "nowhere");
    assert_eq!(counts(&broker), (2, 0, 0, 0, 1));
}

#[test]
fn a_consumer_delivery_its_redelivery_and_its_acknowledgement_are_counted_by_the_queue() {
    let (broker, vhost) = open();
    declare(&vhost, "q");
    let mut rx = consume(&vhost, "q", false);
    publish(&vhost, "q");
    let first = next_delivery(&mut rx);
    assert!(!first.redelivered);
    assert_eq!(counts(&broker), (1, 1, 0, 0, 0));

    first.queue.requeue(&[first.seq]);
    let again = next_delivery(&mut rx);
    assert!(again.redelivered);
    assert_eq!(
        counts(&broker),
        (1, 2, 1, 0, 0),
        "requeued, delivered again"
    );

    again.queue.ack(&[again.seq]);
    assert_eq!(counts(&broker), (1, 2, 1, 1, 0));
    again.queue.ack(&[again.seq]);
    assert_eq!(
        counts(&broker),
        (1, 2, 1, 1, 0),
        "a delivery already settled is not counted twice"
    );
}

#[test]
fn basic_get_deliveries_count_like_consumer_deliveries() {
    let (broker, vhost) = open();
    let q = declare(&vhost, "q");
    publish(&vhost, "q");
    let got = q.get(false).expect("a message");
    q.requeue(&[got.seq]);
    let again = q.get(true).expect("the message again");
    assert!(again.redelivered);
    assert!(q.get(false).is_none());
    assert_eq!(counts(&broker), (1, 2, 1, 0, 0));
}

#[test]
fn rejections_requeues_and_deliveries_finished_without_an_ack_are_not_acknowledgements() {
    let (broker, vhost) = open();
    let q = declare(&vhost, "q");
    for _ in 0..3 {
        publish(&vhost, "q");
    }
    let a = q.get(false).expect("a");
    let b = q.get(false).expect("b");
    let c = q.get(false).expect("c");
    q.reject(&[a.seq]);
    q.requeue(&[b.seq]);
    q.finish(&[c.seq]);
    let stats = q.stats();
    assert_eq!((stats.ready, stats.unacked), (1, 0), "only b is left");
    assert_eq!(counts(&broker).3, 0);
}

#[test]
fn an_auto_ack_consumer_delivery_is_counted_once_and_never_as_acknowledged() {
    let (broker, vhost) = open();
    declare(&vhost, "q");
    let mut rx = consume(&vhost, "q", true);
    publish(&vhost, "q");
    let d = next_delivery(&mut rx);
    d.consumer.release();
    assert_eq!(counts(&broker), (1, 1, 0, 0, 0));
}

#[test]
fn a_delivery_to_a_consumer_whose_connection_is_gone_is_not_counted() {
    let (broker, vhost) = open();
    declare(&vhost, "q");
    let rx = consume(&vhost, "q", false);
    drop(rx);
    publish(&vhost, "q");
    let q = vhost.queue("q").expect("queue");
    assert_eq!(q.stats().ready, 1, "the message stays in the queue");
    assert_eq!(counts(&broker), (1, 0, 0, 0, 0));
}
