//! Power cuts and disk errors, simulated under the body segments (see `sim`).
//!
//! sled writes and syncs its own files, which the simulation cannot reach: at a simulated cut
//! sled keeps everything it was given, while the segments keep only what was synced. These
//! tests therefore check the segment layer and the durable epoch: a message whose epoch was
//! reported durable is recovered with its body, recovery succeeds whatever tail a cut left, and
//! a failed write or fsync never lets the durable epoch pass a message that is not on disk.

mod sim;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rosetta_core::message::{Message, Properties};
use rosetta_core::store::{Epoch, QueueRecord, Store};
use rosetta_store::SledStore;
use sim::{Rng, SimFs};

const QUEUE: u64 = 1;
/// How long a test waits for something the commit thread does before calling it a failure.
const PATIENCE: Duration = Duration::from_secs(20);

fn queue() -> QueueRecord {
    QueueRecord {
        id: QUEUE,
        vhost: "/".into(),
        name: "q".into(),
        auto_delete: false,
        arguments: Default::default(),
        owner: None,
    }
}

/// The body of message `id`: derived from the id, so a body read back for the wrong id or
/// from torn bytes shows.
fn body(id: u64, size: usize) -> Bytes {
    // Built a block at a time: a byte at a time is slow in an unoptimised test build, and
    // megabyte bodies are generated and compared every round.
    let block: Vec<u8> = (0..size.min(4096))
        .map(|i| id.to_le_bytes()[i % 8] ^ (i / 8) as u8)
        .collect();
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let n = block.len().min(size - out.len());
        out.extend_from_slice(&block[..n]);
    }
    out.into()
}

fn message(id: u64, size: usize) -> Arc<Message> {
    let mut m = Message::new("ex", "key", Properties::default(), body(id, size));
    m.id = id;
    Arc::new(m)
}

/// Opens the store on `fs`, retrying while sled's threads of a store just dropped still hold
/// the database lock.
fn open(dir: &Path, fs: &SimFs) -> SledStore {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match SledStore::open_with_fs(dir, Arc::new(fs.clone())) {
            Ok(store) => return store,
            Err(e) if e.to_string().contains("lock") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("store opens after a power cut: {e}"),
        }
    }
}

/// A directory for sled's files. sled syncs them for real on every commit; in memory
/// (`/dev/shm`, where Linux has it) those syncs cost nothing, which is what lets a test run
/// thousands of rounds. The segments never touch it: they live in the simulation.
fn store_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

/// Blocks until the durable epoch reaches `epoch`.
fn wait_durable(store: &SledStore, epoch: Epoch) {
    let mut durable = store.subscribe_durable();
    store.request_sync(epoch);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime
        .block_on(async {
            tokio::time::timeout(PATIENCE, durable.wait_for(|d| *d >= epoch))
                .await
                .map(|r| r.map(drop))
        })
        .expect("the durable epoch reaches the write once the disk works")
        .expect("store alive");
}

/// A message the test put in the queue: its place, and the write's epoch.
#[derive(Clone, Copy)]
struct Put {
    seq: u64,
    epoch: Epoch,
}

/// Recovers the store and checks it against what must have survived; returns the messages
/// the queue holds now (entries whose body a cut took are dropped, as the queue would).
fn recover_and_check(
    store: &SledStore,
    must_survive: &HashMap<u64, Put>,
    sizes: &HashMap<u64, usize>,
    context: &str,
) -> HashMap<u64, Put> {
    let recovered = store
        .recover()
        .unwrap_or_else(|e| panic!("{context}: recovery fails: {e}"));
    check_recovered(store, recovered, must_survive, sizes, context)
}

/// Checks what recovery returned against what must have survived; see [`recover_and_check`].
fn check_recovered(
    store: &SledStore,
    recovered: rosetta_core::store::Recovered,
    must_survive: &HashMap<u64, Put>,
    sizes: &HashMap<u64, usize>,
    context: &str,
) -> HashMap<u64, Put> {
    let entries = recovered
        .queues
        .into_iter()
        .find(|(q, _)| q.id == QUEUE)
        .map(|(_, entries)| entries)
        .unwrap_or_else(|| panic!("{context}: the queue is lost"));
    let mut live = HashMap::new();
    for entry in entries {
        let id = entry.summary.id;
        let size = *sizes
            .get(&id)
            .unwrap_or_else(|| panic!("{context}: recovered message {id} was never sent"));
        match store.load_message(id) {
            Ok(Some(m)) => {
                assert_eq!(
                    m.body,
                    body(id, size),
                    "{context}: message {id} body differs"
                );
                live.insert(
                    id,
                    Put {
                        seq: entry.seq,
                        epoch: 0,
                    },
                );
            }
            Ok(None) | Err(_) => {
                assert!(
                    !must_survive.contains_key(&id),
                    "{context}: confirmed message {id} lost its body"
                );
                store.dequeue(QUEUE, entry.seq, id).expect("drop entry");
            }
        }
    }
    for (id, put) in must_survive {
        let found = live.get(id);
        assert!(
            found.is_some_and(|p| p.seq == put.seq),
            "{context}: confirmed message {id} (seq {}) is lost",
            put.seq
        );
    }
    live
}

/// Runs `rounds` power cuts against one store directory: each round recovers, checks, then
/// publishes, syncs and acknowledges at random (with injected write and fsync failures when
/// `faults`) until the power goes at a random file operation.
fn power_cuts(seed: u64, rounds: usize, faults: bool) -> (usize, u64) {
    let dir = store_dir();
    let mut rng = Rng::new(seed);
    let mut fs = SimFs::new(rng.next());
    let mut must_survive: HashMap<u64, Put> = HashMap::new();
    let mut sizes: HashMap<u64, usize> = HashMap::new();
    let mut next_id = 1u64;
    let mut next_seq = 1u64;
    let mut checked = 0usize;
    let mut injected = 0u64;
    {
        let store = open(dir.path(), &fs);
        store.save_queue(&queue()).expect("save queue");
        store.sync().expect("sync");
    }
    for round in 0..rounds {
        let context = format!("seed {seed} round {round}");
        let store = open(dir.path(), &fs);
        // Small journal windows in half the rounds, so cuts also land inside checkpoints.
        if rng.chance(2) {
            store.set_checkpoint_bytes(64 + rng.below(1024));
        }
        // A quarter of the cuts come during recovery itself, which replays the journal into
        // the index files and deletes it.
        let cut_in_recovery = rng.chance(4);
        if cut_in_recovery {
            fs.crash_after(1 + rng.below(8));
        }
        let recovered = match store.recover() {
            Ok(recovered) => recovered,
            Err(_) if fs.crashed() => {
                let after = fs.after_power_loss(rng.next());
                drop(store);
                fs = after;
                continue;
            }
            Err(e) => panic!("{context}: recovery fails: {e}"),
        };
        let mut live = check_recovered(&store, recovered, &must_survive, &sizes, &context);
        checked += must_survive.len();
        if !fs.crashed() {
            fs.crash_after(1 + rng.below(40));
        }
        if faults && rng.chance(2) {
            // The next write or fsync fails, once or twice; the cut may come before or after
            // the retry.
            fs.fail_next(rng.chance(2), 1 + rng.below(2));
        }
        for _ in 0..20 {
            if fs.crashed() {
                break;
            }
            match rng.below(12) {
                0..=6 => {
                    // Now and then a burst big enough to fill a segment and roll to the next.
                    let big = rng.chance(400);
                    let count = if big { 17 } else { 1 + rng.below(8) };
                    let mut last = 0;
                    for _ in 0..count {
                        let size = if big {
                            (1 << 20) + rng.below(4096) as usize
                        } else {
                            rng.below(3000) as usize
                        };
                        let (id, seq) = (next_id, next_seq);
                        next_id += 1;
                        next_seq += 1;
                        sizes.insert(id, size);
                        last = store
                            .enqueue(&message(id, size), &[(QUEUE, seq)])
                            .expect("enqueue buffers");
                        live.insert(id, Put { seq, epoch: last });
                    }
                    if rng.chance(2) {
                        // An error here is an injected failure or the cut; either way nothing
                        // is confirmed by it.
                        let _ = store.sync();
                    } else {
                        store.request_sync(last);
                    }
                }
                7..=9 => {
                    // Acknowledge about a third, so the queue stays short across rounds.
                    let victims: Vec<u64> =
                        live.keys().copied().filter(|_| rng.chance(3)).collect();
                    for id in victims {
                        if let Some(put) = live.remove(&id) {
                            store.dequeue(QUEUE, put.seq, id).expect("dequeue buffers");
                        }
                    }
                }
                _ => {
                    let _ = store.sync();
                }
            }
        }
        let durable = store.durable_epoch();
        injected += fs.injected_failures();
        assert_eq!(
            fs.reused_after_failed_sync(),
            0,
            "{context}: a segment was written or synced again after its fsync failed"
        );
        let after = fs.after_power_loss(rng.next());
        drop(store);
        fs = after;
        must_survive = live
            .into_iter()
            .filter(|(_, p)| p.epoch <= durable)
            .collect();
    }
    (checked, injected)
}

#[test]
fn every_message_reported_durable_survives_random_power_cuts() {
    let mut checked = 0;
    // 2,000 cuts, in short chains: sled's log, and with it the time to reopen, grows round by
    // round.
    for seed in 0..100 {
        checked += power_cuts(seed, 20, false).0;
    }
    assert!(checked > 0, "some confirmed messages were checked");
}

#[test]
fn injected_write_and_fsync_failures_never_lose_a_confirmed_message() {
    let (mut checked, mut injected) = (0, 0);
    // Fewer cuts: each injected failure costs the commit thread's back-off (0.1 s) in real time.
    for seed in 1000..1010 {
        let (c, i) = power_cuts(seed, 20, true);
        checked += c;
        injected += i;
    }
    assert!(checked > 0, "some confirmed messages were checked");
    assert!(injected > 0, "some failures were injected");
}

/// Publishes one message while `fail` makes the store's writes fail, then checks that its
/// epoch is not reported durable, that later writes do not move the durable epoch past it,
/// and that once the disk works again it is written and survives a power cut.
fn failed_write_is_retried(fail: impl Fn(&SimFs, bool)) {
    let dir = store_dir();
    let fs = SimFs::new(7);
    let store = open(dir.path(), &fs);
    store.save_queue(&queue()).expect("save queue");
    store.sync().expect("sync");
    let (failures_tx, failures) = std::sync::mpsc::channel();
    store.observe_failures(Arc::new(move || {
        let _ = failures_tx.send(());
    }));

    fail(&fs, true);
    let first = store
        .enqueue(&message(1, 100), &[(QUEUE, 1)])
        .expect("enqueue");
    store.request_sync(first);
    failures.recv_timeout(PATIENCE).expect("the flush fails");
    assert!(store.failure_flag().is_set(), "the failure is flagged");
    // A later write, and the retry that covers both, fail too.
    let second = store
        .enqueue(&message(2, 100), &[(QUEUE, 2)])
        .expect("enqueue");
    store.request_sync(second);
    failures.recv_timeout(PATIENCE).expect("the retry fails");
    assert!(
        store.durable_epoch() < first,
        "the durable epoch passed a write that failed"
    );

    fail(&fs, false);
    wait_durable(&store, second);
    assert!(!store.failure_flag().is_set(), "the flag clears");
    assert_eq!(
        fs.reused_after_failed_sync(),
        0,
        "a segment was written or synced again after its fsync failed"
    );
    let after = fs.after_power_loss(1);
    drop(store);
    let store = open(dir.path(), &after);
    let sizes = HashMap::from([(1, 100), (2, 100)]);
    let confirmed = HashMap::from([
        (
            1,
            Put {
                seq: 1,
                epoch: first,
            },
        ),
        (
            2,
            Put {
                seq: 2,
                epoch: second,
            },
        ),
    ]);
    let live = recover_and_check(&store, &confirmed, &sizes, "after the disk recovered");
    assert_eq!(live.len(), 2);
}

#[test]
fn a_write_that_fails_with_a_full_disk_is_never_confirmed_until_it_is_written() {
    failed_write_is_retried(SimFs::fail_writes);
}

#[test]
fn after_a_failed_fsync_the_batch_is_written_again_to_a_new_segment() {
    // The simulated fsync drops the unsynced data and the next fsync of the same file
    // succeeds: a store that retried it would confirm data the power cut then takes.
    failed_write_is_retried(SimFs::fail_syncs);
}

#[test]
fn a_cut_while_recovery_deletes_the_journals_never_brings_back_a_failed_commits_entry() {
    // A failed segment fsync leaves the failed batch's entry in the abandoned journal, whose
    // unsynced tail may still reach the disk, naming the body's first place; the retry names
    // the new place in a newer journal, and the first place's segment is deleted. Recovery
    // deletes both journals once the index files hold their changes: a power cut part way must
    // never keep the abandoned one without the newer, whose entry it would roll back to a body
    // that is gone.
    let sizes = HashMap::from([(1, 100)]);
    let confirmed = HashMap::from([(1, Put { seq: 1, epoch: 0 })]);
    for seed in 0..8 {
        for cut_at in 1..12 {
            let dir = store_dir();
            let fs = SimFs::new(seed);
            {
                let store = open(dir.path(), &fs);
                store.save_queue(&queue()).expect("save queue");
                store.sync().expect("sync");
                fs.fail_next(false, 1);
                let epoch = store
                    .enqueue(&message(1, 100), &[(QUEUE, 1)])
                    .expect("enqueue");
                wait_durable(&store, epoch);
            }
            let fs = fs.after_power_loss(seed);
            {
                let store = open(dir.path(), &fs);
                fs.crash_after(cut_at);
                let _ = store.recover();
            }
            let fs = fs.after_power_loss(seed * 100 + cut_at);
            let store = open(dir.path(), &fs);
            let context = format!("seed {seed}, power cut at operation {cut_at} of recovery");
            recover_and_check(&store, &confirmed, &sizes, &context);
        }
    }
}
