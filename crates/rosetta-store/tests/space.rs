//! Disk space follows the messages still queued: queue index files go when their entries are
//! settled, the journal is cut at each checkpoint, and sparse body segments are compacted.

mod common;

use std::time::{Duration, Instant};

use common::{message, open, queue, segment_files};
use rosetta_core::store::Store;

fn index_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("index"))
        .map(|list| list.count())
        .unwrap_or(0)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("directory")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum()
}

/// Index files of queue 1 wholly below seq `below` (8,192 slots each).
fn index_files_below(dir: &std::path::Path, below: u64) -> usize {
    (0..below / 8192)
        .filter(|n| {
            dir.join("index")
                .join(format!("0000000000000001-{n:08x}.idx"))
                .exists()
        })
        .count()
}

#[test]
fn a_drained_backlog_leaves_no_index_file_and_a_short_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.save_queue(&queue(1, "q")).expect("queue");
    let n = 150_000u64;
    for id in 1..=n {
        store
            .enqueue(&message(id, "x"), &[(1, id)])
            .expect("enqueue");
    }
    store.sync().expect("sync");
    // 150,000 puts are several journal windows: some went into index files already.
    assert!(index_files(dir.path()) > 0, "a backlog reaches the index");
    for id in 1..=n {
        store.dequeue(1, id, id).expect("dequeue");
    }
    store.sync().expect("sync");
    // The settles are another window; the checkpoint that ends it deletes the files (the
    // entries in flight below keep the last one or two).
    let mut next = n + 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while index_files_below(dir.path(), n) > 0 {
        assert!(Instant::now() < deadline, "index files never went");
        // Synced before they are settled, so each reaches the journal.
        for id in next..next + 1_000 {
            store
                .enqueue(&message(id, "x"), &[(1, id)])
                .expect("enqueue");
        }
        store.sync().expect("sync");
        for id in next..next + 1_000 {
            store.dequeue(1, id, id).expect("dequeue");
        }
        store.sync().expect("sync");
        next += 1_000;
    }
    store.sync().expect("sync");
    assert_eq!(store.entry_count(), 0);
    assert!(index_files(dir.path()) <= 2);
    // What is left: at most the two index files of the entries in flight, less than one
    // window of journal, and the segment being appended to.
    assert!(dir_bytes(&dir.path().join("index")) <= 2 * 8192 * 48);
    assert!(dir_bytes(&dir.path().join("journal")) <= 4 * 1024 * 1024 + 100_000);
    assert!(segment_files(dir.path()).len() <= 1);
    drop(store);
    let store = open(dir.path());
    let r = store.recover().expect("recover");
    assert!(r.queues[0].1.is_empty());
}

#[test]
fn sparse_segments_are_compacted_and_moved_bodies_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = "x".repeat(1024 * 1024);
    let kept: Vec<u64> = (1..=40u64).filter(|id| id % 5 == 0).collect();
    {
        let store = open(dir.path());
        store.save_queue(&queue(1, "q")).expect("queue");
        for id in 1..=40u64 {
            let body = format!("{id}{big}");
            store
                .enqueue(&message(id, &body), &[(1, id)])
                .expect("enqueue");
            store.sync().expect("sync");
        }
        let before = segment_files(dir.path());
        assert!(before.len() >= 3, "40 MiB fill several segments");
        for id in (1..=40u64).filter(|id| !kept.contains(id)) {
            store.dequeue(1, id, id).expect("dequeue");
        }
        store.sync().expect("sync");
        // A fifth of each full segment is live: once nothing has been released from them for
        // a while, the commit thread copies the survivors and deletes the old segments.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = segment_files(dir.path());
            if now.iter().all(|p| !before[..before.len() - 1].contains(p)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "segments {now:?} were not compacted"
            );
            store
                .enqueue(&message(1000, "tick"), &[(1, 1000)])
                .expect("enqueue");
            store.sync().expect("sync");
            store.dequeue(1, 1000, 1000).expect("dequeue");
            std::thread::sleep(Duration::from_millis(200));
        }
        for id in &kept {
            let m = store.load_message(*id).expect("load").expect("present");
            assert!(m.body.starts_with(format!("{id}x").as_bytes()));
        }
    }
    let store = open(dir.path());
    let r = store.recover().expect("recover");
    let ids: Vec<u64> = r.queues[0].1.iter().map(|e| e.summary.id).collect();
    assert_eq!(ids, kept);
    for id in &kept {
        let m = store.load_message(*id).expect("load").expect("present");
        assert_eq!(m.body.len(), big.len() + id.to_string().len());
    }
    drop(store);
    let report = rosetta_store::check::check(dir.path()).expect("check");
    assert!(report.is_clean(), "{report}");
}
