//! Publishes the broker's status on MQTT's `$SYS/broker/...` topics every
//! `[mqtt] sys_interval` seconds, from counters the broker keeps anyway (the byte counters of
//! the metrics, the core's message counters, the queues' depths).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rosetta_mqtt::sys::{Counters, SysTree};
use rosetta_mqtt::MqttState;
use tokio::sync::watch;

use crate::state::ServerState;

/// Publishes until shutdown, the first time at once. A round walks the queues and the MQTT
/// sessions, so it runs on the blocking pool, away from the connections' workers.
pub(crate) async fn publish(
    mqtt: Arc<MqttState>,
    state: Arc<ServerState>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tree = SysTree::new(env!("CARGO_PKG_VERSION"), Instant::now());
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let (mqtt, state) = (mqtt.clone(), state.clone());
        // The tree goes to the blocking thread and comes back with the round.
        let round = tokio::task::spawn_blocking(move || {
            let changed = tree.sample(Instant::now(), counters(&state), mqtt.status_clients());
            mqtt.publish_status(changed);
            tree
        });
        match round.await {
            Ok(back) => tree = back,
            Err(e) => {
                tracing::error!(error = %e, "publishing the $SYS topics failed; they are no longer updated");
                return;
            }
        }
    }
}

/// The broker-wide totals `$SYS` reports.
fn counters(state: &ServerState) -> Counters {
    let core = state.broker.counters();
    let (bytes_received, bytes_sent) = state.metrics.bytes_total();
    let mut counters = Counters {
        messages_received: core.published.load(Ordering::Relaxed),
        messages_sent: core.delivered.load(Ordering::Relaxed),
        bytes_received,
        bytes_sent,
        ..Counters::default()
    };
    for vhost in state.broker.vhosts() {
        for queue in vhost.queues() {
            let stats = queue.stats();
            counters.queued_messages += stats.ready + stats.unacked;
            counters.queued_bytes += stats.ready_bytes + stats.unacked_bytes;
        }
    }
    counters
}
