//! Paging through the public core API (broker, vhost, queue) over an in-memory store.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::broker::{Broker, CoreLimits};
use crate::consumer::{ConsumerSpec, Outbound};
use crate::memory_store::MemoryStore;
use crate::message::{Message, Properties, Table, Value};
use crate::paging::{Entry, Ready, READ_AHEAD};
use crate::queue::Queue;
use crate::store::Store;
use crate::vhost::{QueueDeclare, VHost};

const BODY: usize = 100;

/// A broker whose queues keep `resident` messages of [`BODY`] bytes in memory.
fn broker(store: &Arc<MemoryStore>, resident: u64) -> (Arc<Broker>, Arc<VHost>) {
    let limits = CoreLimits {
        queue_resident_bytes: resident * BODY as u64,
        ..CoreLimits::default()
    };
    let dyn_store: Arc<dyn Store> = store.clone();
    let broker = Broker::open(dyn_store, &["/".to_owned()], limits).expect("broker opens");
    let vhost = broker.vhost("/").expect("vhost");
    (broker, vhost)
}

fn declare(vhost: &VHost, name: &str, durable: bool, arguments: Table) -> Arc<Queue> {
    let d = QueueDeclare {
        name: name.into(),
        durable,
        arguments,
        ..QueueDeclare::default()
    };
    vhost.declare_queue(d, 1).expect("declare");
    vhost.queue(name).expect("queue")
}

fn body(i: usize) -> Bytes {
    Bytes::from(format!("{i:0width$}", width = BODY))
}

fn publish(vhost: &VHost, queue: &str, i: usize, persistent: bool, priority: Option<u8>) {
    let properties = Properties {
        delivery_mode: Some(if persistent { 2 } else { 1 }),
        priority,
        ..Properties::default()
    };
    let outcome = vhost
        .publish(Message::new("", queue, properties, body(i)))
        .expect("publish");
    assert!(outcome.routed);
}

/// Takes every message with `basic.get`, acknowledging each, and returns the bodies in order.
fn drain(queue: &Arc<Queue>) -> Vec<Bytes> {
    let mut out = Vec::new();
    while let Some(got) = queue.get(false) {
        out.push(got.message.body.clone());
        queue.ack(&[got.seq]);
    }
    out
}

#[test]
fn a_queue_over_its_resident_budget_keeps_bodies_only_for_its_head() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = broker(&store, 10);
    let q = declare(&vhost, "backlog", true, Table::new());
    for i in 0..50 {
        publish(&vhost, "backlog", i, true, None);
    }
    let stats = q.stats();
    assert_eq!(stats.ready, 50);
    assert_eq!(
        stats.ready_bytes,
        50 * BODY as u64,
        "every message still counts its bytes"
    );
    assert_eq!(stats.paged, 40);
    assert_eq!(stats.resident_bytes, 10 * BODY as u64);
    // Message ids start at 1 in publish order: the first ten are shared with the queue, the
    // rest are held by the store alone.
    for id in 1..=10 {
        assert_eq!(store.holders(id), 2, "message {id} is resident");
    }
    for id in 11..=50 {
        assert_eq!(store.holders(id), 1, "message {id} is paged out");
    }
}

#[test]
fn draining_a_paged_queue_returns_every_message_in_order_with_its_body() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = broker(&store, 10);
    let q = declare(&vhost, "backlog", true, Table::new());
    let n = 3 * READ_AHEAD + 7;
    for i in 0..n {
        publish(&vhost, "backlog", i, true, None);
    }
    let mut got = Vec::new();
    let mut bytes = q.stats().ready_bytes;
    while let Some(m) = q.get(false) {
        bytes -= BODY as u64;
        let stats = q.stats();
        assert_eq!(stats.ready_bytes, bytes);
        assert_eq!(stats.unacked_bytes, BODY as u64);
        assert!(
            stats.resident_bytes <= 10 * BODY as u64,
            "read-ahead stays within the budget"
        );
        got.push(m.message.body.clone());
        q.ack(&[m.seq]);
    }
    assert_eq!(got, (0..n).map(body).collect::<Vec<_>>());
    assert_eq!(q.stats().unacked_bytes, 0);
    assert!(
        store.entries.lock().is_empty(),
        "every entry left the store"
    );
    assert!(store.bodies.lock().is_empty());
}

#[test]
fn a_consumer_receives_a_paged_backlog_in_order() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = broker(&store, 5);
    declare(&vhost, "backlog", true, Table::new());
    let n = READ_AHEAD + 50;
    for i in 0..n {
        publish(&vhost, "backlog", i, true, None);
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = ConsumerSpec {
        tag: "c".into(),
        connection: 1,
        no_ack: false,
        exclusive: false,
        arguments: Table::new(),
        prefetch: 20,
        shared_credit: None,
    };
    let (q, _consumer) = vhost.consume("backlog", spec, tx).expect("consume");
    let mut got = Vec::new();
    while got.len() < n {
        let Ok(Outbound::Deliver(d)) = rx.try_recv() else {
            panic!("delivery {} missing", got.len())
        };
        got.push(d.message.body.clone());
        q.ack(&[d.seq]);
    }
    assert_eq!(got, (0..n).map(body).collect::<Vec<_>>());
    assert_eq!(q.stats().ready, 0);
}

#[test]
fn transient_messages_and_unstored_queues_keep_their_bodies() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = broker(&store, 2);
    let durable = declare(&vhost, "durable", true, Table::new());
    let plain = declare(&vhost, "plain", false, Table::new());
    for i in 0..20 {
        publish(&vhost, "durable", i, false, None);
        publish(&vhost, "plain", i, true, None);
    }
    for q in [&durable, &plain] {
        let stats = q.stats();
        assert_eq!(
            (stats.paged, stats.resident_bytes),
            (0, 20 * BODY as u64),
            "{}",
            q.name
        );
    }
    assert_eq!(drain(&durable), (0..20).map(body).collect::<Vec<_>>());
}

#[test]
fn a_body_that_cannot_be_read_is_dropped_and_the_queue_moves_on() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = broker(&store, 2);
    let q = declare(&vhost, "q", true, Table::new());
    for i in 0..10 {
        publish(&vhost, "q", i, true, None);
    }
    // Ids are 1-based: message 5 carries body 4, and is paged out.
    store.lose_body(5);
    let expected: Vec<Bytes> = (0..10).filter(|&i| i != 4).map(body).collect();
    assert_eq!(drain(&q), expected);
    assert!(
        store.entries.lock().is_empty(),
        "the unreadable entry left the store too"
    );
}

#[test]
fn recovered_entries_stay_on_disk_until_the_queue_reaches_them() {
    let store = Arc::new(MemoryStore::default());
    {
        let (_broker, vhost) = broker(&store, 1000);
        declare(&vhost, "q", true, Table::new());
        for i in 0..(2 * READ_AHEAD) {
            publish(&vhost, "q", i, true, None);
        }
    }
    let (broker2, vhost) = broker(&store, 1000);
    let q = vhost.queue("q").expect("recovered queue");
    let stats = q.stats();
    assert_eq!(
        (stats.ready, stats.paged, stats.resident_bytes),
        (2 * READ_AHEAD as u64, 2 * READ_AHEAD as u64, 0)
    );
    assert_eq!(stats.ready_bytes, (2 * READ_AHEAD * BODY) as u64);
    assert_eq!(
        store.loads.load(Ordering::Relaxed),
        0,
        "recovery read no body"
    );

    let first = q.get(false).expect("a message");
    assert_eq!(first.message.body, body(0));
    assert_eq!(
        store.loads.load(Ordering::Relaxed),
        READ_AHEAD as u64,
        "one read-ahead batch"
    );
    assert_eq!(q.stats().paged, READ_AHEAD as u64);
    q.ack(&[first.seq]);
    assert_eq!(drain(&q), (1..2 * READ_AHEAD).map(body).collect::<Vec<_>>());
    drop(broker2);
}

#[test]
fn a_paged_priority_queue_still_serves_higher_priorities_first() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = broker(&store, 3);
    let args = Table::from([("x-max-priority".to_owned(), Value::I64(9))]);
    let q = declare(&vhost, "prio", true, args);
    for i in 0..10 {
        publish(&vhost, "prio", i, true, Some(1));
    }
    for i in 10..15 {
        publish(&vhost, "prio", i, true, Some(5));
    }
    assert!(q.stats().paged > 0);
    let expected: Vec<Bytes> = (10..15).chain(0..10).map(body).collect();
    assert_eq!(drain(&q), expected);
}

#[test]
fn a_paged_message_dropped_from_the_head_is_dead_lettered_with_its_body() {
    let store = Arc::new(MemoryStore::default());
    // A budget below one body: every persistent message is paged out at once.
    let limits = CoreLimits {
        queue_resident_bytes: 1,
        ..CoreLimits::default()
    };
    let dyn_store: Arc<dyn Store> = store.clone();
    let broker = Broker::open(dyn_store, &["/".to_owned()], limits).expect("broker");
    let vhost = broker.vhost("/").expect("vhost");
    let dead = declare(&vhost, "dead", true, Table::new());
    let args = Table::from([
        ("x-max-length".to_owned(), Value::I64(2)),
        (
            "x-dead-letter-exchange".to_owned(),
            Value::Str(String::new()),
        ),
        (
            "x-dead-letter-routing-key".to_owned(),
            Value::Str("dead".into()),
        ),
    ]);
    let q = declare(&vhost, "short", true, args);
    for i in 0..3 {
        publish(&vhost, "short", i, true, None);
    }
    assert_eq!(q.stats().ready, 2);
    assert_eq!(drain(&dead), vec![body(0)]);
    assert_eq!(drain(&q), vec![body(1), body(2)]);
}

#[test]
fn the_ready_list_pops_in_slot_order_whatever_the_insert_order() {
    let mut ready = Ready::default();
    let entry = |id| Entry {
        message: None,
        id,
        body_len: 10,
        expires_at: None,
        redelivered: false,
        persisted: true,
    };
    // Appends, reinserts before and inside the appended run, and two priority classes.
    let slots = [
        (255, 5),
        (255, 6),
        (255, 9),
        (255, 1),
        (255, 7),
        (250, 8),
        (255, 3),
        (255, 10),
        (250, 2),
        (255, 11),
    ];
    for slot in slots {
        ready.insert(slot, entry(slot.1));
    }
    assert_eq!((ready.len(), ready.bytes(), ready.paged()), (10, 100, 10));
    let mut popped = Vec::new();
    while let Some((slot, e)) = ready.pop_first() {
        assert_eq!(e.id, slot.1);
        popped.push(slot);
    }
    let mut expected = slots.to_vec();
    expected.sort();
    assert_eq!(popped, expected);
    assert_eq!((ready.len(), ready.bytes(), ready.paged()), (0, 0, 0));
}

#[test]
fn requeued_deliveries_return_to_their_place_in_a_paged_queue() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = broker(&store, 3);
    let q = declare(&vhost, "q", true, Table::new());
    for i in 0..20 {
        publish(&vhost, "q", i, true, None);
    }
    let got: Vec<_> = (0..6).map(|_| q.get(false).expect("message")).collect();
    // Requeue the second and the fifth, acknowledge the rest.
    q.requeue(&[got[4].seq, got[1].seq]);
    q.ack(&[got[0].seq, got[2].seq, got[3].seq, got[5].seq]);
    let expected: Vec<Bytes> = [1, 4].into_iter().chain(6..20).map(body).collect();
    assert_eq!(drain(&q), expected);
}
