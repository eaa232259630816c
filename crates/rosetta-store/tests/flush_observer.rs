//! The flush observer hears about every group-commit flush, so the server can export fsync
//! latency without the store knowing about metrics.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{message, open, queue};
use rosetta_core::store::Store;

#[test]
fn every_flush_is_reported_to_the_observer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let observed = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&observed);
    store.observe_flushes(Arc::new(move |_elapsed| {
        counter.fetch_add(1, Ordering::SeqCst);
    }));
    let flushes_before = store.flush_count();

    store.save_queue(&queue(1, "q")).expect("queue");
    store.sync().expect("sync");
    store
        .enqueue(&message(1, "body"), &[(1, 1)])
        .expect("enqueue");
    store.sync().expect("sync");

    let flushes = store.flush_count() - flushes_before;
    assert!(
        flushes >= 2,
        "two syncs of new writes need two flushes, saw {flushes}"
    );
    assert_eq!(observed.load(Ordering::SeqCst), flushes);
}
