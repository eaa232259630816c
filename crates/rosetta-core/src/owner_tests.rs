//! Queue owners: a front-end's queues carry it across a restart, and a front-end deletes only
//! the queues it owns, whatever the others are called.

use std::sync::Arc;

use crate::broker::{Broker, CoreLimits};
use crate::memory_store::MemoryStore;
use crate::queue::Queue;
use crate::queue_owner::QueueOwner;
use crate::store::Store;
use crate::vhost::{QueueDeclare, VHost};

fn open(store: &Arc<MemoryStore>) -> (Arc<Broker>, Arc<VHost>) {
    let dyn_store: Arc<dyn Store> = store.clone();
    let broker =
        Broker::open(dyn_store, &["/".to_owned()], CoreLimits::default()).expect("broker opens");
    let vhost = broker.vhost("/").expect("vhost");
    (broker, vhost)
}

fn durable(name: &str) -> QueueDeclare {
    QueueDeclare {
        name: name.into(),
        durable: true,
        ..QueueDeclare::default()
    }
}

#[test]
fn a_queue_keeps_its_owner_across_a_restart_and_a_declared_one_has_none() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = open(&store);
    let owner = QueueOwner::client("mqtt", "c1");
    vhost
        .declare_owned_queue(durable("session"), 1, owner.clone())
        .expect("owned queue");
    vhost
        .declare_queue(durable("plain"), 1)
        .expect("plain queue");

    let (_broker, vhost) = open(&store);
    let session = vhost.queue("session").expect("session queue restored");
    assert_eq!(session.owner(), Some(&owner));
    assert!(session.owned_by("mqtt"));
    assert!(!session.owned_by("stomp"));
    let plain = vhost.queue("plain").expect("plain queue restored");
    assert_eq!(plain.owner(), None);
    assert!(!plain.owned_by("mqtt"));
}

#[test]
fn a_front_end_deletes_only_the_queues_it_owns() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = open(&store);
    vhost.declare_queue(durable("by-a-client"), 1).expect("q");
    vhost
        .declare_owned_queue(durable("by-stomp"), 1, QueueOwner::front_end("stomp"))
        .expect("q");
    vhost
        .declare_owned_queue(durable("by-mqtt"), 1, QueueOwner::front_end("mqtt"))
        .expect("q");

    for name in ["by-a-client", "by-stomp", "missing"] {
        let deleted = vhost.delete_owned_queue(name, "mqtt", 0).expect("no error");
        assert_eq!(deleted, None, "{name}");
    }
    assert!(vhost.queue("by-a-client").is_some());
    assert!(vhost.queue("by-stomp").is_some());

    let deleted = vhost
        .delete_owned_queue("by-mqtt", "mqtt", 0)
        .expect("deleted");
    assert!(deleted.is_some_and(|d| d.durable_at.is_some()));
    assert!(vhost.queue("by-mqtt").is_none());
    let (_broker, vhost) = open(&store);
    assert!(vhost.queue("by-mqtt").is_none(), "its record went too");
    assert!(vhost.queue("by-a-client").is_some());
}

#[test]
fn declaring_an_existing_queue_for_a_front_end_does_not_make_it_the_owner() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = open(&store);
    vhost.declare_queue(durable("taken"), 1).expect("q");
    vhost
        .declare_owned_queue(durable("taken"), 2, QueueOwner::client("mqtt", "c"))
        .expect("an equivalent declaration succeeds");
    assert_eq!(vhost.queue("taken").expect("q").owner(), None);
    assert_eq!(
        vhost.delete_owned_queue("taken", "mqtt", 0).expect("ok"),
        None
    );
}

#[test]
fn queues_made_before_owners_are_adopted_once_per_front_end() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = open(&store);
    // As a store written before queues carried an owner holds them.
    for name in ["session", "stomp-sub", "by-a-client"] {
        vhost.declare_queue(durable(name), 1).expect("q");
    }
    let mqtt = QueueOwner::client("mqtt", "c");
    let claim_session = |q: &Queue| (q.name == "session").then(|| mqtt.clone());
    assert_eq!(
        vhost
            .adopt_queues_made_before_owners("mqtt", claim_session)
            .expect("adopted"),
        1
    );
    // Once only: a second pass of the same front-end claims nothing, whatever it picks.
    assert_eq!(
        vhost
            .adopt_queues_made_before_owners("mqtt", |_| Some(mqtt.clone()))
            .expect("no error"),
        0
    );
    let stomp = QueueOwner::front_end("stomp");
    let claim_stomp = |q: &Queue| (q.name.starts_with("stomp-")).then(|| stomp.clone());
    assert_eq!(
        vhost
            .adopt_queues_made_before_owners("stomp", claim_stomp)
            .expect("adopted"),
        1
    );

    let (_broker, vhost) = open(&store);
    assert_eq!(vhost.queue("session").expect("q").owner(), Some(&mqtt));
    assert_eq!(vhost.queue("stomp-sub").expect("q").owner(), Some(&stomp));
    assert_eq!(vhost.queue("by-a-client").expect("q").owner(), None);
    for front_end in ["mqtt", "stomp"] {
        let claimed = vhost
            .adopt_queues_made_before_owners(front_end, |_| Some(QueueOwner::front_end(front_end)))
            .expect("no error");
        assert_eq!(claimed, 0, "{front_end} adopted after its first start");
    }
    assert_eq!(vhost.queue("by-a-client").expect("q").owner(), None);
}

#[test]
fn a_queue_declared_after_the_first_start_is_never_adopted() {
    let store = Arc::new(MemoryStore::default());
    let (_broker, vhost) = open(&store);
    let owner = QueueOwner::front_end("mqtt");
    assert_eq!(
        vhost
            .adopt_queues_made_before_owners("mqtt", |_| Some(owner.clone()))
            .expect("nothing to adopt"),
        0
    );
    vhost
        .declare_queue(durable("mqtt-subscription-x"), 1)
        .expect("q");

    let (_broker, vhost) = open(&store);
    assert_eq!(
        vhost
            .adopt_queues_made_before_owners("mqtt", |_| Some(owner.clone()))
            .expect("no error"),
        0
    );
    assert_eq!(vhost.queue("mqtt-subscription-x").expect("q").owner(), None);
}
