//! One pass over every queue of every virtual host, summing what the overview and the metrics
//! report, while the caller sees each queue's numbers on the way.

use rosetta_core::queue::QueueStats;
use rosetta_core::{Broker, Queue, VHost};

/// Broker-wide sums at one instant (each queue is read under its own lock, so the sums are not
/// one atomic snapshot; each term is).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueTotals {
    pub queues: u64,
    pub consumers: u64,
    pub ready: u64,
    pub unacked: u64,
    pub ready_bytes: u64,
    pub unacked_bytes: u64,
}

/// Calls `each` for every queue and returns the sums.
pub(crate) fn walk_queues(
    broker: &Broker,
    mut each: impl FnMut(&VHost, &Queue, &QueueStats),
) -> QueueTotals {
    let mut totals = QueueTotals::default();
    for vhost in broker.vhosts() {
        for queue in vhost.queues() {
            let stats = queue.stats();
            totals.queues += 1;
            totals.consumers += stats.consumers;
            totals.ready += stats.ready;
            totals.unacked += stats.unacked;
            totals.ready_bytes += stats.ready_bytes;
            totals.unacked_bytes += stats.unacked_bytes;
            each(&vhost, &queue, &stats);
        }
    }
    totals
}

/// Exchanges across all virtual hosts, the predeclared ones included.
pub(crate) fn exchange_count(broker: &Broker) -> u64 {
    broker
        .vhosts()
        .iter()
        .map(|v| v.exchanges().len() as u64)
        .sum()
}
