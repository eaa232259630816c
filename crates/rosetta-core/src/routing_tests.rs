//! Routing and dead-lettering through the public core API, shaped the way a hostile client
//! would shape them: cycles, long chains, many bindings, and the per-vhost limits.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::broker::{Broker, CoreLimits};
use crate::error::CoreError;
use crate::exchange::Destination;
use crate::memory_store::MemoryStore;
use crate::message::{Message, Properties, Table, Value};
use crate::store::Store;
use crate::vhost::{ExchangeDeclare, QueueDeclare, VHost, MAX_EXCHANGE_HOPS, MAX_KEY_BYTES};

fn open(limits: CoreLimits) -> (Arc<Broker>, Arc<VHost>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let broker = Broker::open(store, &["/".to_owned()], limits).expect("broker opens");
    let vhost = broker.vhost("/").expect("vhost");
    (broker, vhost)
}

fn exchange(vhost: &VHost, name: &str, kind: &str, arguments: Table) {
    vhost
        .declare_exchange(ExchangeDeclare {
            name: name.into(),
            kind: kind.into(),
            arguments,
            ..ExchangeDeclare::default()
        })
        .expect("exchange declared");
}

fn queue(vhost: &VHost, name: &str, arguments: Table) {
    vhost
        .declare_queue(
            QueueDeclare {
                name: name.into(),
                arguments,
                ..QueueDeclare::default()
            },
            1,
        )
        .expect("queue declared");
}

fn bind(vhost: &VHost, source: &str, queue: &str, key: &str) -> Result<(), CoreError> {
    vhost
        .bind_deferred(
            source,
            Destination::Queue(queue.into()),
            key,
            Table::new(),
            1,
        )
        .map(drop)
}

fn bind_exchange(vhost: &VHost, source: &str, destination: &str) {
    vhost
        .bind_deferred(
            source,
            Destination::Exchange(destination.into()),
            "",
            Table::new(),
            1,
        )
        .expect("exchange bound");
}

fn args(pairs: &[(&str, Value)]) -> Table {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn message(exchange: &str, key: &str) -> Message {
    Message::new(
        exchange.to_owned(),
        key,
        Properties::default(),
        Bytes::from_static(b"m"),
    )
}

fn ready(vhost: &VHost, name: &str) -> u64 {
    vhost.queue(name).expect("queue").stats().ready
}

#[test]
fn a_dead_letter_cycle_between_two_full_queues_is_broken_and_counted() {
    let (broker, vhost) = open(CoreLimits::default());
    exchange(&vhost, "dA", "fanout", Table::new());
    exchange(&vhost, "dB", "fanout", Table::new());
    let full_to = |dlx: &str| {
        args(&[
            ("x-max-length", Value::I64(0)),
            ("x-dead-letter-exchange", Value::Str(dlx.into())),
        ])
    };
    queue(&vhost, "A", full_to("dB"));
    queue(&vhost, "B", full_to("dA"));
    bind(&vhost, "dA", "A", "").expect("bound");
    bind(&vhost, "dB", "B", "").expect("bound");

    let outcome = vhost.publish(message("dA", "")).expect("publish returns");
    assert!(outcome.routed);
    assert_eq!(ready(&vhost, "A"), 0);
    assert_eq!(ready(&vhost, "B"), 0);
    let counters = broker.counters();
    assert_eq!(counters.dead_lettered.load(Ordering::Relaxed), 1, "A -> B");
    assert_eq!(
        counters.dead_letter_dropped.load(Ordering::Relaxed),
        1,
        "B -> A"
    );
}

#[test]
fn a_rejection_in_the_history_lets_a_message_return_to_its_queue() {
    let (_broker, vhost) = open(CoreLimits::default());
    exchange(&vhost, "dlx", "fanout", Table::new());
    queue(
        &vhost,
        "work",
        args(&[("x-dead-letter-exchange", Value::Str("dlx".into()))]),
    );
    bind(&vhost, "dlx", "work", "").expect("bound");
    vhost.publish(message("", "work")).expect("published");
    let q = vhost.queue("work").expect("queue");
    let got = q.get(false).expect("a message");
    q.settle(&[got.seq], crate::Settlement::Reject);
    assert_eq!(
        ready(&vhost, "work"),
        1,
        "a client's rejection is not a cycle"
    );
}

#[test]
fn a_long_chain_of_dead_letter_queues_is_followed_without_recursion() {
    // Each queue is full at once and hands the message to the next through the default
    // exchange: a thousand nested republishes would overflow a worker's stack if done
    // recursively. The first death is the publish's own; the other 999 fit the cascade budget.
    const CHAIN: usize = 1_000;
    let (_broker, vhost) = open(CoreLimits::default());
    for i in 0..CHAIN {
        queue(
            &vhost,
            &format!("q{i}"),
            args(&[
                ("x-max-length", Value::I64(0)),
                ("x-dead-letter-exchange", Value::Str(String::new())),
                (
                    "x-dead-letter-routing-key",
                    Value::Str(format!("q{}", i + 1)),
                ),
            ]),
        );
    }
    queue(&vhost, &format!("q{CHAIN}"), Table::new());
    vhost.publish(message("", "q0")).expect("published");
    assert_eq!(ready(&vhost, &format!("q{CHAIN}")), 1);
}

#[test]
fn a_fan_out_of_full_queues_dead_lettering_to_each_other_stops_at_the_cascade_budget() {
    // Every queue dead-letters into a fanout bound to all the others: without a budget the
    // deaths multiply as n!.
    let (broker, vhost) = open(CoreLimits::default());
    exchange(&vhost, "ring", "fanout", Table::new());
    for i in 0..8 {
        let name = format!("r{i}");
        queue(
            &vhost,
            &name,
            args(&[
                ("x-max-length", Value::I64(0)),
                ("x-dead-letter-exchange", Value::Str("ring".into())),
            ]),
        );
        bind(&vhost, "ring", &name, "").expect("bound");
    }
    vhost.publish(message("ring", "")).expect("published");
    assert!(
        broker
            .counters()
            .dead_letter_dropped
            .load(Ordering::Relaxed)
            > 0
    );
}

#[test]
fn exchange_to_exchange_routing_stops_at_the_hop_limit_and_survives_cycles() {
    let (_broker, vhost) = open(CoreLimits::default());
    let hops = MAX_EXCHANGE_HOPS + 5;
    for i in 0..=hops {
        exchange(&vhost, &format!("e{i}"), "fanout", Table::new());
    }
    for i in 0..hops {
        bind_exchange(&vhost, &format!("e{i}"), &format!("e{}", i + 1));
    }
    // A cycle back to the start costs one visit per exchange, not a loop.
    bind_exchange(&vhost, &format!("e{hops}"), "e0");
    queue(&vhost, "near", Table::new());
    queue(&vhost, "far", Table::new());
    bind(&vhost, &format!("e{}", MAX_EXCHANGE_HOPS), "near", "").expect("bound");
    bind(&vhost, &format!("e{hops}"), "far", "").expect("bound");
    vhost.publish(message("e0", "")).expect("published");
    assert_eq!(ready(&vhost, "near"), 1);
    assert_eq!(ready(&vhost, "far"), 0, "past the hop limit");
}

#[test]
fn an_alternate_exchange_cycle_ends() {
    let ae = |to: &str| args(&[("alternate-exchange", Value::Str(to.into()))]);
    let (_broker, vhost) = open(CoreLimits::default());
    exchange(&vhost, "x", "direct", ae("y"));
    exchange(&vhost, "y", "direct", ae("x"));
    queue(&vhost, "q", Table::new());
    bind(&vhost, "y", "q", "k").expect("bound");
    assert!(
        !vhost
            .publish(message("x", "other"))
            .expect("published")
            .routed
    );
    assert!(vhost.publish(message("x", "k")).expect("published").routed);
    assert_eq!(ready(&vhost, "q"), 1);
}

#[test]
fn a_hundred_thousand_topic_bindings_route_each_key_to_its_own_queue() {
    const N: usize = 100_000;
    let (_broker, vhost) = open(CoreLimits::default());
    let q = |i: usize| format!("s{}", i % 100);
    for i in 0..100 {
        queue(&vhost, &q(i), Table::new());
    }
    for i in 0..N {
        bind(&vhost, "amq.topic", &q(i), &format!("dev.{i}.t")).expect("bound");
    }
    let topic = vhost.exchange("amq.topic").expect("amq.topic");
    assert_eq!(topic.binding_count(), N);
    assert!(
        vhost
            .publish(message("amq.topic", "dev.4242.t"))
            .expect("published")
            .routed
    );
    assert_eq!(ready(&vhost, "s42"), 1);
    for i in 0..N {
        vhost
            .unbind_deferred(
                "amq.topic",
                Destination::Queue(q(i)),
                &format!("dev.{i}.t"),
                &Table::new(),
                1,
            )
            .expect("unbound");
    }
    assert_eq!(topic.binding_count(), 0);
}

#[test]
fn deleting_a_queue_removes_only_its_bindings() {
    let (_broker, vhost) = open(CoreLimits::default());
    queue(&vhost, "a", Table::new());
    queue(&vhost, "b", Table::new());
    for key in ["x", "y.*", "#"] {
        bind(&vhost, "amq.topic", "a", key).expect("bound");
        bind(&vhost, "amq.topic", "b", key).expect("bound");
    }
    bind(&vhost, "amq.direct", "a", "x").expect("bound");
    vhost.delete_queue("a", false, false, 1).expect("deleted");
    assert_eq!(vhost.exchange("amq.topic").expect("ex").binding_count(), 3);
    assert_eq!(vhost.exchange("amq.direct").expect("ex").binding_count(), 0);
    vhost
        .publish(message("amq.topic", "y.z"))
        .expect("published");
    assert_eq!(
        ready(&vhost, "b"),
        1,
        "y.* and # both match, delivered once"
    );
}

#[test]
fn the_queue_exchange_and_binding_limits_refuse_one_more() {
    let (_broker, vhost) = open(CoreLimits {
        max_queues: 2,
        max_exchanges: 6,
        max_bindings: 2,
        ..CoreLimits::default()
    });
    queue(&vhost, "a", Table::new());
    queue(&vhost, "b", Table::new());
    let third = vhost.declare_queue(
        QueueDeclare {
            name: "c".into(),
            ..QueueDeclare::default()
        },
        1,
    );
    assert!(
        matches!(third, Err(CoreError::LimitReached(_))),
        "{third:?}"
    );
    // Five predeclared exchanges leave room for one.
    exchange(&vhost, "mine", "direct", Table::new());
    let seventh = vhost.declare_exchange(ExchangeDeclare {
        name: "more".into(),
        kind: "direct".into(),
        ..ExchangeDeclare::default()
    });
    assert!(matches!(seventh, Err(CoreError::LimitReached(_))));
    bind(&vhost, "amq.direct", "a", "1").expect("bound");
    bind(&vhost, "amq.direct", "b", "2").expect("bound");
    assert!(matches!(
        bind(&vhost, "amq.direct", "b", "3"),
        Err(CoreError::LimitReached(_))
    ));
    // Deleting a queue gives its bindings back.
    vhost.delete_queue("a", false, false, 1).expect("deleted");
    bind(&vhost, "amq.direct", "b", "3").expect("room again");
}

#[test]
fn keys_longer_than_a_short_string_are_refused() {
    let (_broker, vhost) = open(CoreLimits::default());
    queue(&vhost, "q", Table::new());
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    assert!(matches!(
        bind(&vhost, "amq.topic", "q", &long),
        Err(CoreError::LimitReached(_))
    ));
    assert!(matches!(
        vhost.publish(message("amq.topic", &long)),
        Err(CoreError::LimitReached(_))
    ));
    bind(&vhost, "amq.topic", "q", &"k".repeat(MAX_KEY_BYTES)).expect("255 bytes fit");
    let named = |name: String| {
        vhost.declare_exchange(ExchangeDeclare {
            name,
            kind: "direct".into(),
            ..ExchangeDeclare::default()
        })
    };
    assert!(matches!(
        named(long.clone()),
        Err(CoreError::LimitReached(_))
    ));
    let queue = vhost.declare_queue(
        QueueDeclare {
            name: long,
            ..QueueDeclare::default()
        },
        1,
    );
    assert!(matches!(queue, Err(CoreError::LimitReached(_))));
}

#[test]
fn a_queue_deleted_while_a_message_is_on_its_way_neither_takes_nor_refuses_it() {
    let (_broker, vhost) = open(CoreLimits::default());
    queue(&vhost, "leaving", Table::new());
    let stale = vhost.queue("leaving").expect("queue");
    vhost
        .delete_queue("leaving", false, false, 1)
        .expect("deleted");
    let m = message("", "leaving");
    assert!(matches!(stale.admit(&m), crate::queue::Admission::Gone));
}
