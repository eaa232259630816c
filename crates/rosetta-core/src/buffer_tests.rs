//! Consumer buffer budgets and body reads outside the queue's lock, through the public core API
//! over an in-memory store.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::sync::mpsc::{self, UnboundedReceiver};

use crate::broker::{Broker, CoreLimits};
use crate::consumer::{ConsumerSpec, Outbound, Unwritten, DELIVERY_OVERHEAD};
use crate::memory_store::MemoryStore;
use crate::message::{Message, Properties, Table, Value};
use crate::queue::Queue;
use crate::store::Store;
use crate::vhost::{QueueDeclare, VHost};

const BODY: u64 = 100;
/// A consumer buffer that holds exactly three deliveries.
const THREE: u64 = 3 * (BODY + DELIVERY_OVERHEAD);

fn broker(store: &Arc<MemoryStore>, resident: u64, buffer: u64) -> (Arc<Broker>, Arc<VHost>) {
    let limits = CoreLimits {
        queue_resident_bytes: resident * BODY,
        consumer_buffer_bytes: buffer,
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
    Bytes::from(format!("{i:0width$}", width = BODY as usize))
}

fn publish(vhost: &VHost, queue: &str, i: usize, persistent: bool) {
    let properties = Properties {
        delivery_mode: Some(if persistent { 2 } else { 1 }),
        ..Properties::default()
    };
    let outcome = vhost
        .publish(Message::new("", queue, properties, body(i)))
        .expect("publish");
    assert!(outcome.routed);
}

/// An acknowledging consumer with prefetch 0 (unlimited), the AMQP and STOMP default.
fn consume(vhost: &VHost, queue: &str) -> (Arc<Queue>, UnboundedReceiver<Outbound>) {
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
    let (q, _consumer) = vhost.consume(queue, spec, tx).expect("consume");
    (q, rx)
}

/// What a connection that stops writing has in its outbox: every item, noted as unwritten.
fn take_outbox(rx: &mut UnboundedReceiver<Outbound>, unwritten: &mut Unwritten) -> Vec<Bytes> {
    let mut bodies = Vec::new();
    while let Ok(item) = rx.try_recv() {
        unwritten.note(&item);
        if let Outbound::Deliver(d) = item {
            bodies.push(d.message.body.clone());
        }
    }
    bodies
}

#[test]
fn an_unlimited_prefetch_consumer_receives_only_what_its_buffer_holds_until_it_is_written() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = broker(&store, 0, THREE);
    declare(&vhost, "q", false, Table::new());
    for i in 0..10 {
        publish(&vhost, "q", i, false);
    }
    let (q, mut rx) = consume(&vhost, "q");
    let mut unwritten = Unwritten::default();
    assert_eq!(
        take_outbox(&mut rx, &mut unwritten),
        vec![body(0), body(1), body(2)]
    );
    publish(&vhost, "q", 10, false);
    assert!(rx.try_recv().is_err(), "a spent buffer takes nothing more");
    assert_eq!(q.stats().ready, 8, "the rest waits in the queue");

    unwritten.written();
    assert_eq!(
        take_outbox(&mut rx, &mut unwritten),
        vec![body(3), body(4), body(5)]
    );
    let mut rest = Vec::new();
    loop {
        unwritten.written();
        let more = take_outbox(&mut rx, &mut unwritten);
        if more.is_empty() {
            break;
        }
        assert!(
            more.len() <= 3,
            "each written batch lets one buffer through"
        );
        rest.extend(more);
    }
    assert_eq!(rest, (6..=10).map(body).collect::<Vec<_>>());
    assert_eq!((q.stats().ready, q.stats().unacked), (0, 11));
}

#[test]
fn a_message_larger_than_the_whole_buffer_still_goes_out_alone() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = broker(&store, 0, BODY / 2);
    declare(&vhost, "q", false, Table::new());
    publish(&vhost, "q", 0, false);
    publish(&vhost, "q", 1, false);
    let (_q, mut rx) = consume(&vhost, "q");
    let mut unwritten = Unwritten::default();
    assert_eq!(take_outbox(&mut rx, &mut unwritten), vec![body(0)]);
    unwritten.written();
    assert_eq!(take_outbox(&mut rx, &mut unwritten), vec![body(1)]);
}

#[test]
fn a_stalled_consumer_leaves_a_paged_backlog_on_disk() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = broker(&store, 10, THREE);
    let q = declare(&vhost, "q", true, Table::new());
    let n = 1000;
    for i in 0..n {
        publish(&vhost, "q", i, true);
    }
    let (_q, mut rx) = consume(&vhost, "q");
    let mut unwritten = Unwritten::default();
    let mut got = take_outbox(&mut rx, &mut unwritten);
    assert_eq!(got.len(), 3);
    for i in n..n + 100 {
        publish(&vhost, "q", i, true);
    }
    assert_eq!(
        store.loads.load(Ordering::Relaxed),
        0,
        "a consumer with a spent buffer makes the queue read nothing"
    );
    assert!(rx.try_recv().is_err());

    while got.len() < n + 100 {
        unwritten.written();
        let more = take_outbox(&mut rx, &mut unwritten);
        assert!(!more.is_empty(), "written output lets more through");
        got.extend(more);
        assert!(
            q.stats().resident_bytes <= 10 * BODY,
            "read-ahead stays within the budget"
        );
    }
    assert_eq!(got, (0..n + 100).map(body).collect::<Vec<_>>());
    assert_eq!(
        store.loads.load(Ordering::Relaxed),
        (n + 100 - 10) as u64,
        "each paged-out body was read once"
    );
}

#[test]
fn unacknowledged_persistent_deliveries_keep_no_body_in_memory() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = broker(&store, 1000, 0);
    let q = declare(&vhost, "q", true, Table::new());
    for i in 0..5 {
        publish(&vhost, "q", i, true);
    }
    let (_q, mut rx) = consume(&vhost, "q");
    let mut seqs = Vec::new();
    while let Ok(Outbound::Deliver(d)) = rx.try_recv() {
        seqs.push(d.seq);
    }
    assert_eq!(seqs.len(), 5);
    for id in 1..=5 {
        assert_eq!(store.holders(id), 1, "only the store holds body {id}");
    }
    // Requeued, they come back paged out and are read again in order.
    q.requeue(&seqs);
    let mut again = Vec::new();
    while let Ok(Outbound::Deliver(d)) = rx.try_recv() {
        assert!(d.redelivered);
        again.push(d.message.body.clone());
    }
    assert_eq!(again, (0..5).map(body).collect::<Vec<_>>());
}

/// Makes every body read check whether `queue`'s lock is held; returns the flag it sets.
fn watch_lock_during_reads(
    store: &MemoryStore,
    queue: &Arc<Queue>,
) -> (Arc<AtomicBool>, Arc<AtomicU64>) {
    let locked = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let weak: Weak<Queue> = Arc::downgrade(queue);
    let (l, r) = (locked.clone(), reads.clone());
    *store.on_load.lock() = Some(Box::new(move || {
        r.fetch_add(1, Ordering::Relaxed);
        if weak.upgrade().is_some_and(|q| q.is_locked()) {
            l.store(true, Ordering::Relaxed);
        }
    }));
    (locked, reads)
}

#[test]
fn bodies_are_read_from_the_store_without_holding_the_queue_lock() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = broker(&store, 2, 0);
    let q = declare(&vhost, "q", true, Table::new());
    for i in 0..50 {
        publish(&vhost, "q", i, true);
    }
    let (locked, reads) = watch_lock_during_reads(&store, &q);
    let first = q.get(false).expect("a message");
    let second = q.get(true).expect("a message");
    assert_eq!(
        (first.message.body.clone(), second.message.body.clone()),
        (body(0), body(1))
    );
    let (_q, mut rx) = consume(&vhost, "q");
    let mut got = 0;
    while let Ok(Outbound::Deliver(d)) = rx.try_recv() {
        assert_eq!(d.message.body, body(2 + got));
        got += 1;
        q.ack(&[d.seq]);
    }
    assert_eq!(got, 48);
    assert!(
        reads.load(Ordering::Relaxed) >= 48,
        "the backlog was read back"
    );
    assert!(
        !locked.load(Ordering::Relaxed),
        "no read held the queue lock"
    );
}

#[test]
fn a_rejected_persistent_delivery_is_dead_lettered_with_its_body_read_outside_the_lock() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = broker(&store, 1000, 0);
    let mut args = Table::new();
    args.insert("x-dead-letter-exchange".into(), Value::Str(String::new()));
    args.insert("x-dead-letter-routing-key".into(), Value::Str("dlq".into()));
    let q = declare(&vhost, "q", true, args);
    let dlq = declare(&vhost, "dlq", true, Table::new());
    publish(&vhost, "q", 7, true);
    let got = q.get(false).expect("a message");
    let (locked, reads) = watch_lock_during_reads(&store, &q);
    q.reject(&[got.seq]);
    assert_eq!(
        reads.load(Ordering::Relaxed),
        1,
        "the body came back from the store"
    );
    assert!(!locked.load(Ordering::Relaxed));
    let dead = dlq.get(true).expect("dead-lettered");
    assert_eq!(dead.message.body, body(7));
}
