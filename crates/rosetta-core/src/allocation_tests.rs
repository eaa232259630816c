//! Heap allocations per routed message: publish → route → enqueue → hand to the consumer → ack,
//! counted by a counting global allocator (this test binary's only), so a change that adds one
//! on the hot path shows here. The message is built before counting starts: decoding it is the
//! front-end's work, measured by the front-ends' own tests.
//!
//! What remains per message, and why it stays: the `Arc<Message>` every queue and delivery
//! shares. Containers that grow (the queue's deque, the outbox channel's blocks) are warmed
//! first and reused after, so they count only when they really grow.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc::{self, UnboundedReceiver};

use crate::broker::{Broker, CoreLimits};
use crate::consumer::{ConsumerSpec, Outbound, Unwritten};
use crate::exchange::{Destination, AMQ_TOPIC};
use crate::memory_store::MemoryStore;
use crate::message::{Message, Properties, Table};
use crate::queue::Queue;
use crate::store::Store;
use crate::vhost::{QueueDeclare, VHost};

/// Messages counted per case, after as many to warm the containers up.
const MESSAGES: u64 = 2_000;

fn vhost() -> (Arc<Broker>, Arc<VHost>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let broker =
        Broker::open(store, &["/".to_owned()], CoreLimits::default()).expect("broker opens");
    let vhost = broker.vhost("/").expect("vhost");
    (broker, vhost)
}

/// A transient queue with one acknowledging consumer (prefetch 0, the AMQP and STOMP default).
fn queue_with_consumer(vhost: &VHost, name: &str) -> (Arc<Queue>, UnboundedReceiver<Outbound>) {
    let declare = QueueDeclare {
        name: name.into(),
        ..QueueDeclare::default()
    };
    vhost.declare_queue(declare, 1).expect("declare");
    let (tx, rx) = mpsc::unbounded_channel();
    let spec = ConsumerSpec {
        tag: "c".into(),
        connection: 1,
        no_ack: false,
        exclusive: false,
        arguments: Table::new(),
        prefetch: 0,
        shared_credit: None,
    };
    let (q, _consumer) = vhost.consume(name, spec, tx).expect("consume");
    (q, rx)
}

/// Publishes `messages` (built beforehand), and for each takes the delivery from the outbox,
/// marks it written and acks it, as a connection would. Returns allocations per message.
fn allocations_per_message(
    vhost: &VHost,
    queue: &Arc<Queue>,
    outbox: &mut UnboundedReceiver<Outbound>,
    messages: Vec<Message>,
) -> f64 {
    let count = messages.len() as f64;
    let mut unwritten = Unwritten::default();
    let mut delivered = 0u64;
    let mut run = |messages: Vec<Message>| {
        for message in messages {
            assert!(vhost.publish(message).expect("publish").routed);
            let Ok(item) = outbox.try_recv() else {
                panic!("the consumer got no delivery")
            };
            unwritten.note(&item);
            unwritten.written();
            let Outbound::Deliver(delivery) = item else {
                panic!("expected a delivery")
            };
            queue.ack(&[delivery.seq]);
            delivered += 1;
        }
    };
    let (warm_up, counted): (Vec<Message>, Vec<Message>) = {
        let mut all = messages;
        let counted = all.split_off(all.len() / 2);
        (all, counted)
    };
    run(warm_up);
    // Dropping the batch frees memory only; the measured closure allocates nothing of its own.
    let used = allocation_counter::measure(|| run(counted));
    assert_eq!(delivered as f64, count);
    assert_eq!(queue.stats().ready + queue.stats().unacked, 0);
    used.count_total as f64 / (count / 2.0)
}

fn messages(exchange: &str, key: &str) -> Vec<Message> {
    (0..2 * MESSAGES)
        .map(|i| {
            Message::new(
                exchange.to_owned(),
                key,
                Properties::default(),
                Bytes::from(i.to_be_bytes().to_vec()),
            )
        })
        .collect()
}

/// The bound each case is held to: the one `Arc<Message>`.
const MAX_PER_MESSAGE: f64 = 1.0;

#[test]
fn a_message_through_the_default_exchange_allocates_within_the_bound() {
    let (_broker, vhost) = vhost();
    let (q, mut rx) = queue_with_consumer(&vhost, "q");
    let per = allocations_per_message(&vhost, &q, &mut rx, messages("", "q"));
    assert!(
        per <= MAX_PER_MESSAGE,
        "{per:.2} allocations per message through the default exchange"
    );
}

#[test]
fn a_message_through_a_topic_binding_allocates_within_the_bound() {
    let (_broker, vhost) = vhost();
    let (q, mut rx) = queue_with_consumer(&vhost, "q");
    // Two patterns that both match (one delivery: targets are deduplicated) and one bound to
    // another queue that does not: the trie walk visits a few branches.
    let declare = QueueDeclare {
        name: "other".into(),
        ..QueueDeclare::default()
    };
    vhost.declare_queue(declare, 1).expect("declare");
    for (pattern, target) in [
        ("sensors.*.temp", "q"),
        ("sensors.#", "q"),
        ("sensors.*.humidity", "other"),
    ] {
        vhost
            .bind_deferred(
                AMQ_TOPIC,
                Destination::Queue(target.into()),
                pattern,
                Table::new(),
                1,
            )
            .expect("bind");
    }
    let per = allocations_per_message(&vhost, &q, &mut rx, messages(AMQ_TOPIC, "sensors.a.temp"));
    assert!(
        per <= MAX_PER_MESSAGE,
        "{per:.2} allocations per message through a topic exchange"
    );
}
