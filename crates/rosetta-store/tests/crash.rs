//! A process killed with SIGKILL at an arbitrary instant leaves a store that opens and holds
//! every message that was synced before the kill.
//!
//! The test re-runs its own binary as the writer: the child sees `CHILD_ENV`, writes and syncs
//! a batch, announces it, then keeps writing (and occasionally flushing) until it is killed.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{message, open, queue};
use rosetta_core::store::{MessageSummary, Store};

const CHILD_ENV: &str = "ROSETTA_STORE_CRASH_CHILD_DIR";
const TEST_NAME: &str = "synced_messages_survive_repeated_kill_nine";
const SYNCED_PER_ROUND: u64 = 200;
const ROUNDS: usize = 5;
const QUEUE_ID: u64 = 1;

#[test]
fn synced_messages_survive_repeated_kill_nine() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let mut synced: Vec<u64> = Vec::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", TEST_NAME, "--nocapture"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut announced = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read child output");
            if let Some(rest) = line.strip_prefix("synced ") {
                announced = Some(parse_announcement(rest));
                break;
            }
        }
        let (count, first) =
            announced.unwrap_or_else(|| panic!("round {round}: child exited before syncing"));
        assert_eq!(count, SYNCED_PER_ROUND);
        synced.extend(first..first + count);

        // Let it get well into unsynced writes (and an in-flight flush or two) before the kill.
        std::thread::sleep(Duration::from_millis(50 + 37 * round as u64));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap child");

        let store = open(dir.path());
        let r = store.recover().expect("store recovers after kill");
        let (_, entries) = r
            .queues
            .iter()
            .find(|(q, _)| q.id == QUEUE_ID)
            .expect("queue survives");
        let present: std::collections::HashSet<u64> =
            entries.iter().map(|e| e.summary.id).collect();
        for id in &synced {
            assert!(
                present.contains(id),
                "round {round}: synced message {id} lost"
            );
        }
        eprintln!(
            "round {round}: {} entries recovered, {} synced",
            entries.len(),
            synced.len()
        );
        for e in entries {
            let id = e.summary.id;
            let stored = store.load_message(id).expect("load").expect("body");
            assert_eq!(stored.as_ref(), message(id, &body(id)).as_ref());
            assert_eq!(e.summary, MessageSummary::of(&stored));
        }
    }
}

fn parse_announcement(rest: &str) -> (u64, u64) {
    let mut parts = rest.split_whitespace();
    let count = parts.next().and_then(|p| p.parse().ok()).expect("count");
    let first = parts
        .next()
        .and_then(|p| p.strip_prefix("first="))
        .and_then(|p| p.parse().ok())
        .expect("first id");
    (count, first)
}

fn body(id: u64) -> String {
    format!("message {id} {}", "x".repeat((id % 97) as usize))
}

/// Runs in the child process until the parent kills it.
fn child(dir: &Path) {
    let store = open(dir);
    let recovered = store.recover().expect("child recovers");
    store.save_queue(&queue(QUEUE_ID, "crash")).expect("queue");
    let first = recovered.max_message_id + 1;
    for id in first..first + SYNCED_PER_ROUND {
        store
            .enqueue(&message(id, &body(id)), &[(QUEUE_ID, id)])
            .expect("enqueue");
    }
    store.sync().expect("sync");
    println!("synced {SYNCED_PER_ROUND} first={first}");

    // Unsynced churn: enqueues, dequeues of unsynced messages, redelivery marks and flush
    // requests, so the kill lands in the middle of all kinds of writes.
    let mut id = first + SYNCED_PER_ROUND;
    loop {
        let epoch = store
            .enqueue(&message(id, &body(id)), &[(QUEUE_ID, id)])
            .expect("enqueue");
        let (dequeue, mark, flush) = (id % 3, id % 5, id % 64);
        if dequeue == 0 {
            store.dequeue(QUEUE_ID, id, id).expect("dequeue");
        }
        if mark == 0 {
            store.mark_redelivered(QUEUE_ID, id).expect("mark");
        }
        if flush == 0 {
            store.request_sync(epoch);
        }
        id += 1;
    }
}
