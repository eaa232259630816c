//! Bodies are stored once per message and go with their last queue entry.

mod common;

use common::{message, open, queue};
use rosetta_core::store::{MessageSummary, Store};

#[test]
fn fan_out_to_three_queues_stores_one_body_until_the_last_dequeue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    for id in 1..=3 {
        store
            .save_queue(&queue(id, &format!("q{id}")))
            .expect("queue");
    }
    store
        .enqueue(&message(42, "hello"), &[(1, 10), (2, 20), (3, 30)])
        .expect("enqueue");
    store.sync().expect("sync");
    assert_eq!(store.body_count(), 1);
    assert_eq!(store.entry_count(), 3);

    store.dequeue(1, 10, 42).expect("dequeue 1");
    store.dequeue(2, 20, 42).expect("dequeue 2");
    store.sync().expect("sync");
    assert_eq!(store.body_count(), 1, "one queue still holds the message");
    store.dequeue(3, 30, 42).expect("dequeue 3");
    store.sync().expect("sync");
    assert_eq!(store.body_count(), 0);
    assert_eq!(store.entry_count(), 0);

    // A repeated dequeue is harmless.
    store.dequeue(3, 30, 42).expect("dequeue again");
}

#[test]
fn a_message_acknowledged_before_the_commit_never_reaches_the_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.save_queue(&queue(1, "q")).expect("queue");
    store
        .enqueue(&message(1, "fast"), &[(1, 1)])
        .expect("enqueue");
    store
        .enqueue(&message(2, "slow"), &[(1, 2)])
        .expect("enqueue");
    store.dequeue(1, 1, 1).expect("dequeue");
    store.sync().expect("sync");
    assert_eq!(
        store.body_count(),
        1,
        "only the message still queued was written"
    );
    assert_eq!(store.entry_count(), 1);
    store.mark_redelivered(1, 2).expect("mark");
    store.dequeue(1, 2, 2).expect("dequeue");
    store.sync().expect("sync");
    assert_eq!(store.body_count(), 0);
    assert_eq!(store.entry_count(), 0);
}

#[test]
fn recovered_queues_share_one_message_and_keep_seq_order_and_redelivery() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path());
        store.save_queue(&queue(1, "a")).expect("queue");
        store.save_queue(&queue(2, "b")).expect("queue");
        // Seqs chosen so byte order and numeric order would differ for little-endian keys.
        store
            .enqueue(&message(5, "shared"), &[(1, 256), (2, 1)])
            .expect("enqueue");
        store
            .enqueue(&message(6, "first"), &[(1, 1)])
            .expect("enqueue");
        store
            .enqueue(&message(7, "second"), &[(1, 2)])
            .expect("enqueue");
        store.mark_redelivered(1, 2).expect("mark");
        store.sync().expect("sync");
    }
    let store = open(dir.path());
    let r = store.recover().expect("recover");
    assert_eq!(r.max_message_id, 7);
    assert_eq!(r.max_queue_id, 2);
    let (qa, a) = &r.queues[0];
    let (qb, b) = &r.queues[1];
    assert_eq!((qa.name.as_str(), qb.name.as_str()), ("a", "b"));
    assert_eq!(a.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 256]);
    assert_eq!(
        a.iter().map(|e| e.redelivered).collect::<Vec<_>>(),
        vec![false, true, false]
    );
    assert_eq!(a[2].summary, MessageSummary::of(&message(5, "shared")));
    assert_eq!(b[0].summary, a[2].summary, "both entries name the one body");
    let body = store.load_message(5).expect("load").expect("stored body");
    assert_eq!(body.as_ref(), message(5, "shared").as_ref());

    // Reference counts were rebuilt: the shared body goes only with its second entry.
    store.dequeue(1, 256, 5).expect("dequeue");
    store.sync().expect("sync");
    assert_eq!(store.body_count(), 3);
    store.dequeue(2, 1, 5).expect("dequeue");
    store.sync().expect("sync");
    assert_eq!(store.body_count(), 2);
}

#[test]
fn delete_queue_removes_its_entries_and_orphaned_bodies_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.save_queue(&queue(1, "doomed")).expect("queue");
    store.save_queue(&queue(2, "kept")).expect("queue");
    store
        .enqueue(&message(1, "only in doomed"), &[(1, 1)])
        .expect("enqueue");
    store
        .enqueue(&message(2, "in both"), &[(1, 2), (2, 1)])
        .expect("enqueue");
    store
        .enqueue(&message(3, "only in kept"), &[(2, 2)])
        .expect("enqueue");
    store.sync().expect("sync");
    assert_eq!(store.body_count(), 3);

    store.delete_queue("/", "doomed", 1).expect("delete");
    store.sync().expect("sync");
    assert_eq!(store.body_count(), 2);
    assert_eq!(store.entry_count(), 2);

    let r = store.recover().expect("recover");
    assert_eq!(r.queues.len(), 1);
    let ids: Vec<u64> = r.queues[0].1.iter().map(|e| e.summary.id).collect();
    assert_eq!(ids, vec![2, 3]);
}

#[test]
fn recovery_drops_orphan_bodies_and_skips_entries_without_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path());
        store.save_queue(&queue(1, "q")).expect("queue");
        store
            .enqueue(&message(1, "kept"), &[(1, 1)])
            .expect("enqueue");
    }
    // Forge what a crash between two writes could leave in an older layout, which kept
    // entries in sled: a body with no entry, an entry with no body, and an entry of a queue
    // that was being deleted. Recovery moves the good entries into the queue index.
    {
        let db = common::raw_open(dir.path());
        let bodies = db.open_tree("bodies").expect("tree");
        let entries = db.open_tree("entries").expect("tree");
        bodies
            .insert(
                9u64.to_be_bytes(),
                rosetta_store::codec::encode_message(&message(9, "orphan")),
            )
            .expect("insert");
        let mut dangling = [0u8; 16];
        dangling[..8].copy_from_slice(&1u64.to_be_bytes());
        dangling[8..].copy_from_slice(&2u64.to_be_bytes());
        let mut value = 77u64.to_be_bytes().to_vec();
        value.push(0);
        entries.insert(dangling, value.clone()).expect("insert");
        let mut foreign = [0u8; 16];
        foreign[..8].copy_from_slice(&5u64.to_be_bytes());
        entries.insert(foreign, value).expect("insert");
        db.flush().expect("flush");
    }
    let store = open(dir.path());
    let r = store.recover().expect("recover opens despite leftovers");
    assert_eq!(r.queues[0].1.len(), 1);
    assert_eq!(r.queues[0].1[0].summary.id, 1);
    assert_eq!(r.max_message_id, 77);
    store.sync().expect("sync");
    assert_eq!(store.body_count(), 1, "orphan body removed");
    assert_eq!(store.entry_count(), 1, "dangling entries removed");
}

#[test]
fn a_corrupt_body_is_reported_when_read_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path());
        store.save_queue(&queue(1, "q")).expect("queue");
        store.enqueue(&message(1, "x"), &[(1, 1)]).expect("enqueue");
    }
    // Flip a byte of the body inside its record: the checksum catches it.
    let segments = common::segment_files(dir.path());
    let mut bytes = std::fs::read(&segments[0]).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&segments[0], bytes).expect("damage");
    let store = open(dir.path());
    let r = store
        .recover()
        .expect("recovery reads entries, not bodies, so it opens");
    assert_eq!(r.queues[0].1.len(), 1);
    let err = store.load_message(1).expect_err("corrupt body");
    assert!(
        matches!(err, rosetta_core::store::StoreError::Corrupt { .. }),
        "{err}"
    );
    // Copied aside, with where it was, once however often it is read.
    store.load_message(1).expect_err("still corrupt");
    assert_eq!(store.quarantined_records(), 1);
    let files: Vec<_> = std::fs::read_dir(dir.path().join("quarantine"))
        .expect("quarantine directory")
        .map(|e| std::fs::read(e.expect("entry").path()).expect("read"))
        .collect();
    assert_eq!(files.len(), 1);
    let text = String::from_utf8_lossy(&files[0]);
    assert!(
        text.contains("offset 0") && text.contains("(message 1)"),
        "{text}"
    );
}

#[test]
fn segments_whose_bodies_are_all_consumed_are_deleted_by_the_next_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.save_queue(&queue(1, "q")).expect("queue");
    let big = "x".repeat(1024 * 1024);
    for id in 1..=40u64 {
        store
            .enqueue(&message(id, &big), &[(1, id)])
            .expect("enqueue");
        // One commit per message, as under a slow consumer: every body reaches a segment.
        store.sync().expect("sync");
    }
    let written = common::segment_files(dir.path()).len();
    assert!(written >= 3, "40 MiB fill several segments, got {written}");
    for id in 1..=39u64 {
        store.dequeue(1, id, id).expect("dequeue");
    }
    store.sync().expect("sync");
    let left = common::segment_files(dir.path()).len();
    assert_eq!(left, 1, "only the segment holding message 40 is left");
    assert_eq!(
        store.load_message(40).expect("load").as_deref(),
        Some(message(40, &big).as_ref())
    );
}

#[test]
fn recovery_deletes_segments_no_entry_refers_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path());
        store.save_queue(&queue(1, "q")).expect("queue");
        store
            .enqueue(&message(1, "orphaned"), &[(1, 1)])
            .expect("enqueue");
        store.sync().expect("sync");
    }
    assert_eq!(common::segment_files(dir.path()).len(), 1);
    // A crash can leave a segment whose entries never reached the journal.
    for sub in ["journal", "index"] {
        std::fs::remove_dir_all(dir.path().join(sub)).expect("remove entries");
    }
    let store = open(dir.path());
    let r = store.recover().expect("recover");
    assert!(r.queues[0].1.is_empty());
    assert!(common::segment_files(dir.path()).is_empty());
    assert_eq!(store.body_count(), 0);
}

#[test]
fn entries_at_or_below_a_delivered_written_entry_recover_redelivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path());
        store.save_queue(&queue(1, "q")).expect("queue");
        store.save_queue(&queue(2, "other")).expect("queue");
        for seq in 1..=3u64 {
            store
                .enqueue(&message(seq, "m"), &[(1, seq)])
                .expect("enqueue");
        }
        store
            .enqueue(&message(4, "elsewhere"), &[(2, 1)])
            .expect("enqueue");
        store.sync().expect("sync");
        // Written entries: the delivery raises queue 1's watermark, not the entry value.
        store.mark_redelivered(1, 2).expect("mark");
        store.sync().expect("sync");
    }
    let flags = |store: &rosetta_store::SledStore| {
        let r = store.recover().expect("recover");
        r.queues
            .iter()
            .map(|(_, entries)| entries.iter().map(|e| e.redelivered).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    let store = open(dir.path());
    assert_eq!(
        flags(&store),
        vec![vec![true, true, false], vec![false]],
        "seq 1 may have been delivered before seq 2, so it is flagged too; seq 3 was not"
    );
    store.sync().expect("sync");
    drop(store);
    // Recovery folded the watermark into the entries: a second restart agrees.
    let store = open(dir.path());
    assert_eq!(flags(&store), vec![vec![true, true, false], vec![false]]);
}
