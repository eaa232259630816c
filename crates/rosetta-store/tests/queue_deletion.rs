//! Deleting a queue settles every entry it holds, once: entries acknowledged afterwards release
//! nothing more, and the deletion's work does not hold up other queues.

mod common;

use common::{message, open, queue};
use rosetta_core::store::Store;

#[test]
fn acking_an_entry_of_a_deleted_queue_keeps_a_body_another_queue_still_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path());
        store.save_queue(&queue(1, "auto-delete")).expect("queue 1");
        store.save_queue(&queue(2, "durable")).expect("queue 2");
        // Fanned out to both queues: one body, two references.
        store
            .enqueue(&message(7, "shared body"), &[(1, 1), (2, 1)])
            .expect("enqueue");
        store.sync().expect("sync");

        // Queue 1 is deleted while its consumer still holds the delivery, which is then acked.
        store.delete_queue("/", "auto-delete", 1).expect("delete");
        store.dequeue(1, 1, 7).expect("late ack");
        store.sync().expect("sync");

        let body = store
            .load_message(7)
            .expect("load")
            .expect("queue 2 still holds the body");
        assert_eq!(&body.body[..], b"shared body");
        assert_eq!(store.body_count(), 1);
    }

    let store = open(dir.path());
    let recovered = store.recover().expect("recover");
    let names: Vec<_> = recovered
        .queues
        .iter()
        .map(|(q, _)| q.name.as_str())
        .collect();
    assert_eq!(names, ["durable"]);
    let entries = &recovered.queues[0].1;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].summary.id, 7);
    let body = store
        .load_message(7)
        .expect("load")
        .expect("body survives the restart");
    assert_eq!(&body.body[..], b"shared body");
}

/// Entries of the queue to delete; every `SHARED_EVERY`th message also goes to a second queue.
const LONG_QUEUE: u64 = 200_000;
const SHARED_EVERY: u64 = 1_000;

/// Fills queue 1 with [`LONG_QUEUE`] written entries, some shared with queue 2.
fn long_queue_and_a_neighbour(store: &rosetta_store::SledStore) {
    store.save_queue(&queue(1, "long")).expect("queue 1");
    store.save_queue(&queue(2, "neighbour")).expect("queue 2");
    for id in 1..=LONG_QUEUE {
        let targets: &[(u64, u64)] = if id % SHARED_EVERY == 0 {
            &[(1, id), (2, id)]
        } else {
            &[(1, id)]
        };
        store.enqueue(&message(id, "x"), targets).expect("enqueue");
    }
    store.sync().expect("sync");
    assert_eq!(
        store.entry_count() as u64,
        LONG_QUEUE + LONG_QUEUE / SHARED_EVERY
    );
}

#[test]
fn deleting_a_long_queue_leaves_its_entries_to_the_commit_thread_and_releases_each_body_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    long_queue_and_a_neighbour(&store);

    store.delete_queue("/", "long", 1).expect("delete");
    // Nothing asked for a commit yet, so had the caller's thread done the scan, the entries
    // would be gone already; they are all still there.
    assert_eq!(
        store.entry_count() as u64,
        LONG_QUEUE + LONG_QUEUE / SHARED_EVERY
    );
    // Another queue's publish goes through while the deletion is outstanding.
    store
        .enqueue(&message(LONG_QUEUE + 1, "after"), &[(2, LONG_QUEUE + 1)])
        .expect("publish to the neighbour");

    // The commit thread removes the entries over several commits, each asking for the next.
    let kept = LONG_QUEUE / SHARED_EVERY + 1;
    for _ in 0..=LONG_QUEUE / 1_000 {
        store.sync().expect("sync");
        if store.entry_count() as u64 == kept {
            break;
        }
    }
    assert_eq!(
        store.entry_count() as u64,
        kept,
        "only the neighbour's entries remain"
    );
    assert_eq!(
        store.body_count() as u64,
        kept,
        "shared bodies stay, the rest go"
    );
    let shared = store
        .load_message(SHARED_EVERY)
        .expect("load")
        .expect("a body the neighbour holds");
    assert_eq!(&shared.body[..], b"x");
}

#[test]
fn a_queue_deleted_before_its_entries_are_all_removed_stays_deleted_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path());
        long_queue_and_a_neighbour(&store);
        store.delete_queue("/", "long", 1).expect("delete");
        // Makes the deletion durable and removes a first part of the entries only.
        store.sync().expect("sync");
    }

    let files_of_the_deleted_queue = || {
        std::fs::read_dir(dir.path().join("index"))
            .expect("index directory")
            .filter(|e| {
                let name = e.as_ref().expect("entry").file_name();
                name.to_string_lossy().starts_with("0000000000000001-")
            })
            .count()
    };
    assert!(
        files_of_the_deleted_queue() > 2,
        "the store stopped with most of the deleted queue's entries still on disk"
    );
    let store = open(dir.path());
    let recovered = store.recover().expect("recover");
    assert_eq!(files_of_the_deleted_queue(), 0);
    let names: Vec<_> = recovered
        .queues
        .iter()
        .map(|(q, _)| q.name.as_str())
        .collect();
    assert_eq!(names, ["neighbour"]);
    assert_eq!(
        recovered.queues[0].1.len() as u64,
        LONG_QUEUE / SHARED_EVERY
    );
    store.sync().expect("sync");
    assert_eq!(store.entry_count() as u64, LONG_QUEUE / SHARED_EVERY);
    assert_eq!(store.body_count() as u64, LONG_QUEUE / SHARED_EVERY);
    let shared = store
        .load_message(SHARED_EVERY)
        .expect("load")
        .expect("a body the neighbour holds");
    assert_eq!(&shared.body[..], b"x");
}
