//! Metadata records survive a restart, and opening refuses unusable paths clearly.

mod common;

use common::{open, queue};
use rosetta_core::message::{Table, Value};
use rosetta_core::queue_owner::QueueOwner;
use rosetta_core::store::{BindingRecord, ExchangeRecord, Store, StoreError};
use rosetta_store::SledStore;

fn exchange(name: &str) -> ExchangeRecord {
    let mut arguments = Table::new();
    arguments.insert("alternate-exchange".into(), Value::Str("ae".into()));
    ExchangeRecord {
        vhost: "/".into(),
        name: name.into(),
        kind: "topic".into(),
        auto_delete: false,
        internal: true,
        arguments,
    }
}

fn binding(key: &str, match_all: bool) -> BindingRecord {
    let mut arguments = Table::new();
    arguments.insert(
        "x-match".into(),
        Value::Str(if match_all { "all" } else { "any" }.into()),
    );
    BindingRecord {
        vhost: "/".into(),
        source: "logs".into(),
        destination: "q1".into(),
        destination_is_queue: true,
        routing_key: key.into(),
        arguments,
    }
}

#[test]
fn every_record_kind_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = queue(7, "q1");
    q.arguments.insert("x-max-length".into(), Value::I64(10));
    {
        let store = open(dir.path());
        store.save_exchange(&exchange("logs")).expect("exchange");
        store.save_exchange(&exchange("gone")).expect("exchange");
        store.delete_exchange("/", "gone").expect("delete exchange");
        store.save_queue(&q).expect("queue");
        store.save_queue(&queue(9, "deleted")).expect("queue");
        store.delete_queue("/", "deleted", 9).expect("delete queue");
        store.save_binding(&binding("a.*", true)).expect("binding");
        store
            .save_binding(&binding("a.*", false))
            .expect("binding differing only in arguments");
        store.save_binding(&binding("b.#", true)).expect("binding");
        store
            .delete_binding(&binding("b.#", true))
            .expect("delete binding");
        store.sync().expect("sync");
    }
    let store = open(dir.path());
    let r = store.recover().expect("recover");
    assert_eq!(r.exchanges, vec![exchange("logs")]);
    assert_eq!(r.queues.len(), 1);
    assert_eq!(r.queues[0].0, q);
    assert!(r.queues[0].1.is_empty());
    assert_eq!(r.max_queue_id, 7);
    assert_eq!(r.bindings.len(), 2);
    assert!(r.bindings.contains(&binding("a.*", true)));
    assert!(r.bindings.contains(&binding("a.*", false)));
}

#[test]
fn queue_owners_survive_reopen_and_a_rewritten_record_takes_its_new_owner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut session = queue(1, "mqtt-subscription-c1");
    session.owner = Some(QueueOwner::client("mqtt", "c1"));
    let mut shared = queue(2, "mqtt-shared-g/f");
    shared.owner = Some(QueueOwner::front_end("mqtt"));
    let declared = queue(3, "mqtt-subscription-c2");
    let mut adopted = queue(4, "stomp-subscription-s");
    {
        let store = open(dir.path());
        for q in [&session, &shared, &declared, &adopted] {
            store.save_queue(q).expect("queue");
        }
        adopted.owner = Some(QueueOwner::front_end("stomp"));
        store.save_queue(&adopted).expect("queue saved again");
        store.sync().expect("sync");
    }
    let store = open(dir.path());
    let mut queues: Vec<_> = store
        .recover()
        .expect("recover")
        .queues
        .into_iter()
        .map(|(q, _)| q)
        .collect();
    queues.sort_by_key(|q| q.id);
    assert_eq!(queues, vec![session, shared, declared, adopted]);
}

#[test]
fn saving_a_record_twice_keeps_one_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.save_exchange(&exchange("logs")).expect("exchange");
    store
        .save_exchange(&exchange("logs"))
        .expect("exchange again");
    store.save_binding(&binding("k", true)).expect("binding");
    store
        .save_binding(&binding("k", true))
        .expect("binding again");
    let r = store.recover().expect("recover");
    assert_eq!(r.exchanges.len(), 1);
    assert_eq!(r.bindings.len(), 1);
}

#[test]
fn deleting_a_queue_by_an_old_id_keeps_the_redeclared_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.save_queue(&queue(1, "q")).expect("queue");
    store.save_queue(&queue(2, "q")).expect("redeclared");
    store.delete_queue("/", "q", 1).expect("delete old");
    let r = store.recover().expect("recover");
    assert_eq!(r.queues.len(), 1);
    assert_eq!(r.queues[0].0.id, 2);
}

#[test]
fn opening_a_file_path_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write file");
    let err = SledStore::open(&file).err().expect("a file is not a store");
    assert!(
        matches!(&err, StoreError::Engine(m) if m.contains("not a directory")),
        "{err}"
    );

    let nested = file.join("below");
    assert!(SledStore::open(&nested).is_err());
}

#[test]
fn open_creates_missing_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a").join("b");
    let store = open(&path);
    assert!(path.is_dir());
    store.save_queue(&queue(1, "q")).expect("queue");
    store.sync().expect("sync");
    assert!(store.size_on_disk() > 0);
}
