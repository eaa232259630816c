//! What the core's paging relies on: bodies read back by id at any moment of their life in the
//! store, and recovery that rebuilds queues from entry summaries without reading bodies.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{message, open, queue};
use rosetta_core::message::{Message, Properties};
use rosetta_core::store::{MessageSummary, Store};

fn with_priority_and_ttl(id: u64, body: &str, priority: u8, ttl_ms: u64) -> Arc<Message> {
    let properties = Properties {
        delivery_mode: Some(2),
        priority: Some(priority),
        expiration: Some(ttl_ms.to_string()),
        ..Properties::default()
    };
    let mut m = Message::new("", "q", properties, Bytes::copy_from_slice(body.as_bytes()));
    m.id = id;
    Arc::new(m)
}

#[test]
fn load_message_finds_a_body_before_and_after_the_group_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.save_queue(&queue(1, "q")).expect("queue");
    store
        .enqueue(&message(1, "waiting"), &[(1, 1)])
        .expect("enqueue");
    let pending = store.load_message(1).expect("load").expect("pending body");
    assert_eq!(pending.as_ref(), message(1, "waiting").as_ref());

    store.sync().expect("sync");
    assert_eq!(store.body_count(), 1);
    let written = store.load_message(1).expect("load").expect("written body");
    assert_eq!(written.as_ref(), message(1, "waiting").as_ref());

    store.dequeue(1, 1, 1).expect("dequeue");
    store.sync().expect("sync");
    assert!(store.load_message(1).expect("load").is_none());
    assert!(store.load_message(999).expect("load").is_none());
}

#[test]
fn a_body_is_readable_at_every_moment_of_its_group_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.save_queue(&queue(1, "q")).expect("queue");
    // Each body is read repeatedly while the commit thread moves it from memory to sled, so a
    // read that falls between the two would be caught.
    for id in 1..=1000u64 {
        let epoch = store
            .enqueue(&message(id, &format!("m{id}")), &[(1, id)])
            .expect("enqueue");
        store.request_sync(epoch);
        loop {
            let durable = store.durable_epoch() >= epoch;
            let loaded = store.load_message(id).expect("load");
            assert_eq!(
                loaded.as_deref(),
                Some(message(id, &format!("m{id}")).as_ref()),
                "message {id}"
            );
            if durable {
                break;
            }
        }
    }
    assert_eq!(store.body_count(), 1000);
}

#[test]
fn recovery_returns_each_entry_summary_without_reading_bodies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = message(1, "plain");
    let urgent = with_priority_and_ttl(2, "urgent and short-lived", 9, 60_000);
    {
        let store = open(dir.path());
        store.save_queue(&queue(1, "q")).expect("queue");
        store.enqueue(&plain, &[(1, 1)]).expect("enqueue");
        store.enqueue(&urgent, &[(1, 2)]).expect("enqueue");
        store.sync().expect("sync");
        store.mark_redelivered(1, 1).expect("mark");
        store.sync().expect("sync");
    }
    // Damage the bodies: recovery must not notice, since it reads only entries.
    for segment in common::segment_files(dir.path()) {
        let len = std::fs::metadata(&segment).expect("metadata").len();
        std::fs::write(&segment, vec![0xffu8; len as usize]).expect("damage");
    }
    let store = open(dir.path());
    let r = store.recover().expect("recover");
    let entries = &r.queues[0].1;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].summary, MessageSummary::of(&plain));
    assert!(entries[0].redelivered);
    assert_eq!(
        entries[1].summary,
        MessageSummary {
            id: 2,
            body_len: 22,
            priority: Some(9),
            expiration_ms: Some(60_000)
        }
    );
    assert!(!entries[1].redelivered);
}

#[test]
fn an_entry_whose_body_was_cut_short_is_recovered_and_fails_to_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path());
        store.save_queue(&queue(1, "q")).expect("queue");
        store
            .enqueue(&message(1, "kept"), &[(1, 1)])
            .expect("enqueue");
        store
            .enqueue(&message(2, "lost"), &[(1, 2)])
            .expect("enqueue");
        store.sync().expect("sync");
    }
    // What a crash before the segment's fsync can leave: the entry on disk, the end of the
    // segment (message 2's record) not.
    let segments = common::segment_files(dir.path());
    assert_eq!(segments.len(), 1);
    let len = std::fs::metadata(&segments[0]).expect("metadata").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segments[0])
        .and_then(|f| f.set_len(len - 5))
        .expect("truncate");
    // Recovery reads no body, so it cannot tell; the queue drops the entry when it reads it.
    let store = open(dir.path());
    let r = store.recover().expect("recover");
    let ids: Vec<u64> = r.queues[0].1.iter().map(|e| e.summary.id).collect();
    assert_eq!(ids, vec![1, 2]);
    let err = store.load_message(2).expect_err("cut short");
    assert!(
        matches!(err, rosetta_core::store::StoreError::Corrupt { .. }),
        "{err}"
    );
    assert_eq!(
        store.load_message(1).expect("load").as_deref(),
        Some(message(1, "kept").as_ref())
    );
}

#[test]
fn a_layout_1_store_opens_and_its_entries_get_summaries_from_their_bodies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let urgent = with_priority_and_ttl(7, "old", 3, 5_000);
    {
        let store = open(dir.path());
        store.save_queue(&queue(1, "q")).expect("queue");
        store.enqueue(&urgent, &[(1, 1)]).expect("enqueue");
        store.sync().expect("sync");
    }
    // Rewrite what a layout 1 build wrote: the marker, the body in sled and a 9-byte entry
    // value.
    let mut value = 7u64.to_be_bytes().to_vec();
    value.push(0);
    common::forge_legacy(dir.path(), 1, &urgent, &[(common::entry_key(1, 1), value)]);
    {
        let store = open(dir.path());
        let r = store.recover().expect("recover");
        assert_eq!(r.queues[0].1[0].summary, MessageSummary::of(&urgent));
        store.mark_redelivered(1, 1).expect("mark a layout 1 entry");
        store.sync().expect("sync");
    }
    let store = open(dir.path());
    let r = store.recover().expect("recover again");
    assert!(
        r.queues[0].1[0].redelivered,
        "the flag was set in the old value"
    );
    assert_eq!(
        store.load_message(7).expect("load").as_deref(),
        Some(urgent.as_ref())
    );
    drop(store);
    let db = common::raw_open(dir.path());
    assert_eq!(
        db.get("rosetta-format").expect("get").as_deref(),
        Some(&[5u8][..])
    );
}

#[test]
fn a_layout_2_store_reads_its_bodies_from_sled_until_they_are_consumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = with_priority_and_ttl(7, "old", 3, 5_000);
    {
        let store = open(dir.path());
        store.save_queue(&queue(1, "q")).expect("queue");
        store.enqueue(&old, &[(1, 1)]).expect("enqueue");
        store.sync().expect("sync");
    }
    // Layout 2: the body in sled's `bodies` tree, a 26-byte entry value with the summary.
    let mut value = 7u64.to_be_bytes().to_vec();
    value.push(2 | 4); // has priority, has TTL
    value.extend_from_slice(&3u64.to_be_bytes());
    value.push(3);
    value.extend_from_slice(&5_000u64.to_be_bytes());
    common::forge_legacy(dir.path(), 2, &old, &[(common::entry_key(1, 1), value)]);

    let store = open(dir.path());
    let r = store.recover().expect("recover");
    assert_eq!(r.queues[0].1[0].summary, MessageSummary::of(&old));
    assert_eq!(store.body_count(), 1);
    assert_eq!(
        store.load_message(7).expect("load").as_deref(),
        Some(old.as_ref())
    );
    // New messages go to the segments beside the old body.
    store
        .enqueue(&message(8, "new"), &[(1, 2)])
        .expect("enqueue");
    store.sync().expect("sync");
    assert_eq!(store.body_count(), 2);
    assert_eq!(common::segment_files(dir.path()).len(), 1);
    store.dequeue(1, 1, 7).expect("dequeue the old one");
    store.sync().expect("sync");
    assert_eq!(store.body_count(), 1, "the old body left sled");
    assert_eq!(
        store.load_message(8).expect("load").as_deref(),
        Some(message(8, "new").as_ref())
    );
}

#[test]
fn a_store_of_an_unknown_layout_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = common::raw_open(dir.path());
        db.insert("rosetta-format", &[9u8][..]).expect("marker");
        db.flush().expect("flush");
    }
    let err = rosetta_store::SledStore::open(dir.path())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not supported"), "{err}");
}

#[test]
fn a_long_run_of_acknowledgements_is_flushed_without_anyone_asking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.save_queue(&queue(1, "q")).expect("queue");
    let n = 70_000u64;
    for id in 1..=n {
        store
            .enqueue(&message(id, "x"), &[(1, id)])
            .expect("enqueue");
    }
    store.sync().expect("sync");
    let flushes = store.flush_count();
    // Acknowledgements ask for no flush, yet a drain this long must not stay buffered.
    for id in 1..=n {
        store.dequeue(1, id, id).expect("dequeue");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.flush_count() == flushes {
        assert!(
            std::time::Instant::now() < deadline,
            "no flush after {n} buffered deletes"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        store.entry_count() < n as usize,
        "the flush wrote the deletes"
    );
}
