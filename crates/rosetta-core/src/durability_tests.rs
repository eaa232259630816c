//! Durable metadata changes never fsync on the caller's thread: each hands back the epoch its
//! reply must wait for and asks the group committer for it, so a front-end running on an async
//! worker thread holds the reply instead of blocking every connection scheduled there.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::broker::{Broker, CoreLimits};
use crate::exchange::Destination;
use crate::memory_store::MemoryStore;
use crate::message::Table;
use crate::store::{Epoch, Store};
use crate::vhost::{ExchangeDeclare, QueueDeclare, VHost};

fn open() -> (Arc<MemoryStore>, Arc<Broker>, Arc<VHost>) {
    let store = Arc::new(MemoryStore::default());
    let dyn_store: Arc<dyn Store> = store.clone();
    let broker =
        Broker::open(dyn_store, &["/".to_owned()], CoreLimits::default()).expect("broker opens");
    let vhost = broker.vhost("/").expect("vhost");
    (store, broker, vhost)
}

/// The change was written, its epoch is the latest write, and its fsync was requested.
fn assert_deferred(store: &MemoryStore, epoch: Option<Epoch>, what: &str) {
    let epoch = epoch.unwrap_or_else(|| panic!("{what} returned no epoch to wait for"));
    assert_eq!(
        epoch,
        store.current_epoch(),
        "{what} waits for its own write"
    );
    assert!(
        store.requested.load(Ordering::SeqCst) >= epoch,
        "{what} did not ask the group committer for its epoch"
    );
}

fn durable_exchange(name: &str) -> ExchangeDeclare {
    ExchangeDeclare {
        name: name.into(),
        kind: "direct".into(),
        durable: true,
        ..ExchangeDeclare::default()
    }
}

fn durable_queue(name: &str) -> QueueDeclare {
    QueueDeclare {
        name: name.into(),
        durable: true,
        ..QueueDeclare::default()
    }
}

#[test]
fn durable_declares_binds_and_deletes_return_their_epoch_without_a_blocking_sync() {
    let (store, _broker, vhost) = open();

    let epoch = vhost.declare_exchange(durable_exchange("x")).expect("x");
    assert_deferred(&store, epoch, "exchange.declare");
    let declared = vhost.declare_queue(durable_queue("q"), 1).expect("q");
    assert_deferred(&store, declared.durable_at, "queue.declare");
    let epoch = vhost
        .bind_deferred("x", Destination::Queue("q".into()), "k", Table::new(), 1)
        .expect("bound");
    assert_deferred(&store, epoch, "queue.bind");
    let epoch = vhost
        .unbind_deferred("x", Destination::Queue("q".into()), "k", &Table::new(), 1)
        .expect("unbound");
    assert_deferred(&store, epoch, "queue.unbind");
    let deleted = vhost.delete_queue("q", false, false, 1).expect("deleted");
    assert_deferred(&store, deleted.durable_at, "queue.delete");
    let epoch = vhost.delete_exchange("x", false).expect("deleted");
    assert_deferred(&store, epoch, "exchange.delete");

    assert_eq!(store.blocking_syncs.load(Ordering::SeqCst), 0);
}

#[test]
fn changes_that_write_nothing_durable_have_nothing_to_wait_for() {
    let (store, _broker, vhost) = open();
    vhost.declare_exchange(durable_exchange("x")).expect("x");
    vhost.declare_queue(durable_queue("q"), 1).expect("q");

    let again = vhost
        .declare_exchange(durable_exchange("x"))
        .expect("again");
    assert_eq!(
        again, None,
        "redeclaring an existing exchange writes nothing"
    );
    let again = vhost.declare_queue(durable_queue("q"), 1).expect("again");
    assert_eq!(
        again.durable_at, None,
        "redeclaring an existing queue writes nothing"
    );
    let transient = vhost
        .declare_queue(
            QueueDeclare {
                name: "t".into(),
                ..QueueDeclare::default()
            },
            1,
        )
        .expect("t");
    assert_eq!(transient.durable_at, None);
    let deleted = vhost.delete_queue("t", false, false, 1).expect("deleted");
    assert_eq!(deleted.durable_at, None);

    assert_eq!(store.blocking_syncs.load(Ordering::SeqCst), 0);
}

#[test]
fn deleting_a_queue_removes_the_auto_delete_exchange_it_empties_without_a_blocking_sync() {
    let (store, _broker, vhost) = open();
    vhost
        .declare_exchange(ExchangeDeclare {
            auto_delete: true,
            ..durable_exchange("x")
        })
        .expect("x");
    vhost.declare_queue(durable_queue("q"), 1).expect("q");
    vhost
        .bind_deferred("x", Destination::Queue("q".into()), "k", Table::new(), 1)
        .expect("bound");

    let deleted = vhost.delete_queue("q", false, false, 1).expect("deleted");

    assert!(
        vhost.exchange("x").is_none(),
        "the auto-delete exchange went too"
    );
    assert_deferred(&store, deleted.durable_at, "queue.delete");
    assert_eq!(store.blocking_syncs.load(Ordering::SeqCst), 0);
}
