//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4).
//!
//! Values that already live elsewhere (queue depths in the queues, message counters in the core,
//! connections in the connection table) are read at scrape time and written straight out as
//! text. Per-queue series in particular are never registered: with 100,000 queues a registry of
//! gauges (or a collector building one metric object per series) would allocate hundreds of
//! thousands of objects per scrape, whereas writing lines into one buffer costs a few
//! milliseconds (docs/operations.md has the measurement). Instruments updated as things happen
//! (byte counters, the fsync histogram, process metrics) come from the prometheus registry.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::http::totals::{exchange_count, walk_queues};
use crate::state::ServerState;

/// Per-queue series: metric name and help text; one line per queue each.
const QUEUE_READY: (&str, &str) = (
    "rosetta_queue_messages_ready",
    "Messages ready for delivery, per queue.",
);
const QUEUE_UNACKED: (&str, &str) = (
    "rosetta_queue_messages_unacked",
    "Messages delivered and awaiting acknowledgement, per queue.",
);
const QUEUE_BYTES: (&str, &str) = (
    "rosetta_queue_messages_bytes",
    "Body bytes of the queue's messages, ready and unacknowledged, per queue.",
);

/// Renders every metric. Takes the queue locks one at a time, never all at once.
pub(crate) fn render(state: &ServerState) -> String {
    let broker = &state.broker;
    let mut ready = String::new();
    let mut unacked = String::new();
    let mut bytes = String::new();
    let mut labels = String::new();
    let totals = walk_queues(broker, |vhost, queue, stats| {
        // Escaped once, written three times.
        queue_labels(&mut labels, &vhost.name, &queue.name);
        sample(&mut ready, QUEUE_READY.0, &labels, stats.ready);
        sample(&mut unacked, QUEUE_UNACKED.0, &labels, stats.unacked);
        sample(
            &mut bytes,
            QUEUE_BYTES.0,
            &labels,
            stats.ready_bytes + stats.unacked_bytes,
        );
    });
    let connections = state.connections.totals();
    let counters = broker.counters();

    let mut out = String::with_capacity(ready.len() + unacked.len() + bytes.len() + 16 * 1024);
    header(
        &mut out,
        "rosetta_build_info",
        "gauge",
        "Always 1; the version label names the running build.",
    );
    let _ = writeln!(
        out,
        "rosetta_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );

    header(
        &mut out,
        "rosetta_connections",
        "gauge",
        "Open client connections, by protocol.",
    );
    for (protocol, n) in &connections.connections {
        let _ = writeln!(out, "rosetta_connections{{protocol=\"{protocol}\"}} {n}");
    }
    gauge(
        &mut out,
        "rosetta_channels",
        "Open channels (AMQP; MQTT and STOMP have none).",
        connections.channels,
    );
    gauge(
        &mut out,
        "rosetta_consumers",
        "Consumers across all queues.",
        totals.consumers,
    );
    gauge(
        &mut out,
        "rosetta_queues",
        "Queues across all virtual hosts.",
        totals.queues,
    );
    gauge(
        &mut out,
        "rosetta_exchanges",
        "Exchanges across all virtual hosts, predeclared ones included.",
        exchange_count(broker),
    );
    gauge(
        &mut out,
        "rosetta_messages_ready",
        "Messages ready for delivery, all queues.",
        totals.ready,
    );
    gauge(
        &mut out,
        "rosetta_messages_unacked",
        "Messages awaiting acknowledgement, all queues.",
        totals.unacked,
    );
    gauge(
        &mut out,
        "rosetta_resource_alarm",
        "1 while memory or disk is past its limit and publishers are blocked.",
        u64::from(*state.alarm.borrow()),
    );
    gauge(
        &mut out,
        "rosetta_store_disk_bytes",
        "Bytes the durable store occupies on disk.",
        broker.store().size_on_disk(),
    );

    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    counter(
        &mut out,
        "rosetta_messages_published_total",
        "Messages received from publishers, all protocols.",
        load(&counters.published),
    );
    counter(
        &mut out,
        "rosetta_messages_delivered_total",
        "Messages delivered to consumers, all protocols.",
        load(&counters.delivered),
    );
    counter(
        &mut out,
        "rosetta_messages_acked_total",
        "Deliveries acknowledged by consumers.",
        load(&counters.acked),
    );
    counter(
        &mut out,
        "rosetta_messages_redelivered_total",
        "Deliveries flagged as redelivered.",
        load(&counters.redelivered),
    );
    counter(
        &mut out,
        "rosetta_messages_dead_lettered_total",
        "Messages republished to a dead-letter exchange.",
        load(&counters.dead_lettered),
    );
    counter(
        &mut out,
        "rosetta_messages_dead_letter_dropped_total",
        "Dead letters dropped to break a dead-letter cycle or end a runaway cascade.",
        load(&counters.dead_letter_dropped),
    );
    counter(
        &mut out,
        "rosetta_messages_unroutable_total",
        "Published messages that matched no queue.",
        load(&counters.unroutable),
    );

    for ((name, help), lines) in [
        (QUEUE_READY, ready),
        (QUEUE_UNACKED, unacked),
        (QUEUE_BYTES, bytes),
    ] {
        header(&mut out, name, "gauge", help);
        out.push_str(&lines);
    }
    if let Err(e) = state.metrics.encode(&mut out) {
        tracing::warn!(error = %e, "cannot encode registered metrics");
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

/// Replaces `labels` with `{vhost="...",queue="..."}`.
fn queue_labels(labels: &mut String, vhost: &str, queue: &str) {
    labels.clear();
    labels.push_str("{vhost=\"");
    push_label_value(labels, vhost);
    labels.push_str("\",queue=\"");
    push_label_value(labels, queue);
    labels.push_str("\"}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: u64) {
    out.push_str(name);
    out.push_str(labels);
    let _ = writeln!(out, " {value}");
}

/// Label values escape backslash, double quote and line feed (text format 0.0.4); queue names
/// may contain any of them.
fn push_label_value(out: &mut String, value: &str) {
    if !value.contains(['\\', '"', '\n']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        let mut labels = String::from("left over");
        queue_labels(&mut labels, "/", "a\\b\"c\nd");
        let mut out = String::new();
        sample(&mut out, "m", &labels, 7);
        assert_eq!(out, "m{vhost=\"/\",queue=\"a\\\\b\\\"c\\nd\"} 7\n");
    }

    #[test]
    fn plain_label_values_are_copied_as_they_are() {
        let mut labels = String::new();
        queue_labels(&mut labels, "v", "orders.eu-west");
        let mut out = String::new();
        sample(&mut out, "m", &labels, 0);
        assert_eq!(out, "m{vhost=\"v\",queue=\"orders.eu-west\"} 0\n");
    }
}
