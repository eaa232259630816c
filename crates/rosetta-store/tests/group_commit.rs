//! Many writers share few fsyncs, and what was synced survives a reopen.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{message, open, queue};
use rosetta_core::store::Store;

const THREADS: u64 = 8;
const WRITES_PER_THREAD: u64 = 50;

#[test]
fn concurrent_writers_share_flushes_and_all_become_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(dir.path()));
    store.save_queue(&queue(1, "q")).expect("queue");
    let flushes_before = store.flush_count();
    let barrier = Arc::new(Barrier::new(THREADS as usize));

    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..WRITES_PER_THREAD {
                    let id = 1 + t * WRITES_PER_THREAD + i;
                    let epoch = store
                        .enqueue(&message(id, "payload"), &[(1, id)])
                        .expect("enqueue");
                    store.request_sync(epoch);
                    let mut durable = store.subscribe_durable();
                    // The watch is the async path; here it is polled from a plain thread.
                    while *durable.borrow_and_update() < epoch {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    assert!(store.durable_epoch() >= epoch);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread");
    }

    let writes = THREADS * WRITES_PER_THREAD;
    let flushes = store.flush_count() - flushes_before;
    assert!(flushes >= 1);
    assert!(
        flushes < writes,
        "{flushes} flushes for {writes} writes: no grouping happened"
    );
    assert_eq!(store.entry_count() as u64, writes);
}

#[test]
fn sync_blocks_until_durable_and_is_free_when_nothing_is_pending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.sync().expect("nothing to sync");
    assert_eq!(store.flush_count(), 0);

    let epoch = store.save_queue(&queue(1, "q")).expect("queue");
    assert_eq!(store.current_epoch(), epoch);
    store.sync().expect("sync");
    assert!(store.durable_epoch() >= epoch);
    assert_eq!(store.flush_count(), 1);
    assert_eq!(*store.subscribe_durable().borrow(), store.durable_epoch());

    // Already durable: no new flush.
    store.request_sync(epoch);
    store.sync().expect("sync");
    assert_eq!(store.flush_count(), 1);
}

#[test]
fn many_threads_calling_sync_share_flushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(dir.path()));
    store.save_queue(&queue(1, "q")).expect("queue");
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..WRITES_PER_THREAD {
                    let id = 1 + t * WRITES_PER_THREAD + i;
                    let epoch = store
                        .enqueue(&message(id, "p"), &[(1, id)])
                        .expect("enqueue");
                    store.sync().expect("sync");
                    assert!(store.durable_epoch() >= epoch);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("sync thread");
    }
    assert!(store.flush_count() < THREADS * WRITES_PER_THREAD + 1);
}

#[tokio::test(flavor = "current_thread")]
async fn the_durable_watch_wakes_an_async_waiter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let mut durable = store.subscribe_durable();
    let epoch = store.save_queue(&queue(1, "q")).expect("queue");
    store.request_sync(epoch);
    let reached =
        tokio::time::timeout(Duration::from_secs(10), durable.wait_for(|e| *e >= epoch)).await;
    assert!(
        matches!(reached, Ok(Ok(_))),
        "durable epoch never reached {epoch}"
    );
}

#[test]
fn reopen_after_drop_sees_synced_and_cleanly_shut_down_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path());
        store.save_queue(&queue(1, "q")).expect("queue");
        for id in 1..=100 {
            store
                .enqueue(&message(id, "synced"), &[(1, id)])
                .expect("enqueue");
        }
        store.sync().expect("sync");
        // Not synced explicitly: the flush on drop covers these.
        for id in 101..=110 {
            store
                .enqueue(&message(id, "flushed on drop"), &[(1, id)])
                .expect("enqueue");
        }
    }
    let store = open(dir.path());
    let r = store.recover().expect("recover");
    let seqs: Vec<u64> = r.queues[0].1.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=110).collect::<Vec<_>>());
    assert_eq!(r.max_message_id, 110);
}
