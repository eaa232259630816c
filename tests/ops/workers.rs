//! `[server] worker_threads`: the broker runs client connections on that many threads, and says
//! so when it starts.

use std::time::Duration;

use rosetta_tests::BrokerBuilder;

#[test]
fn the_broker_runs_as_many_worker_threads_as_configured() {
    for n in [1, 3] {
        let broker = BrokerBuilder::new()
            .config(&format!("[server]\nworker_threads = {n}\n"))
            .start();
        assert!(
            broker.wait_for_log(&format!("workers={n}"), Duration::from_secs(10)),
            "worker_threads = {n}: {}",
            broker.log()
        );
    }
}
