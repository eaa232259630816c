//! The order of MQTT input across connections holds while other clients misbehave: a connection
//! stuck writing to a client that stopped reading, or one flooding SUBSCRIBE and UNSUBSCRIBE,
//! holds no other connection's input back, and a publisher streaming input never waits for its
//! own (no input waits until the broker gives up on the order,
//! `rosetta_mqtt_input_order_timeouts_total`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use rosetta_tests::mqtt3::{self, Packet};
use rosetta_tests::{input_order_timeouts, metric, publishes_missed_by_an_early_subscriber};

use crate::support::*;

/// The stuck subscriber's messages: large, so that filling its buffers takes few.
const PAYLOAD: usize = 64 * 1024;
/// Bytes of deliveries a connection may hold unwritten (`consumer_buffer_bytes`' default).
const CONSUMER_BUFFER: usize = 1 << 20;

/// The most the kernel holds of what the broker writes to a loopback client that reads
/// nothing: the broker's send buffer and the client's receive buffer, each at most its
/// autotuning limit.
fn kernel_buffers_at_most() -> usize {
    let limit = |path: &str| -> usize {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
            .unwrap_or_else(|| panic!("no buffer limit in {path}"))
    };
    limit("/proc/sys/net/ipv4/tcp_wmem") + limit("/proc/sys/net/ipv4/tcp_rmem")
}

/// Client S subscribes, then never reads its socket again. P publishes to S's topic more than
/// the kernel's buffers towards S and S's share of the broker's memory can hold, so the rest
/// waits in S's queue and S's connection task waits in a write for good. Meanwhile A and B
/// run the race of mosquitto.rs: a connection waiting on a full socket holds no ticket, so no
/// publish waits for it.
#[test]
fn a_subscriber_that_stops_reading_holds_no_other_input_back() {
    let broker = broker_with_http("");
    let port = port(&broker);
    let http = broker.http_addr();
    let stuck_id = unique("stuck");
    let stuck_topic = unique("stuck/t");
    let mut stuck = mqtt3_tcp(port, &stuck_id);
    stuck.send(&mqtt3::subscribe(1, &stuck_topic, 0));
    assert!(matches!(stuck.read(), Packet::Suback { id: 1, codes } if codes == [0]));
    let series = |metric_name: &str| {
        format!("{metric_name}{{vhost=\"/\",queue=\"mqtt-subscription-{stuck_id}\"}}")
    };
    let (ready, unacked) = (
        series("rosetta_queue_messages_ready"),
        series("rosetta_queue_messages_unacked"),
    );
    let value = |series: &str| metric(http, series).unwrap_or_else(|| panic!("no {series}"));

    let mut publisher = mqtt3_tcp(port, &unique("filler"));
    let message = mqtt3::publish(&stuck_topic, &vec![b's'; PAYLOAD]);
    let count = (kernel_buffers_at_most() + CONSUMER_BUFFER) / PAYLOAD + 16;
    for _ in 0..count {
        publisher.send(&message);
    }
    // PINGRESP comes once every message before the PINGREQ was routed.
    publisher.send(&mqtt3::pingreq());
    assert_eq!(publisher.read(), Packet::Other(13), "PINGRESP");
    assert_eq!(input_order_timeouts(http), 0.0, "while S's buffers filled");
    let held = value(&ready);
    assert!(
        held >= 1.0 && value(&unacked) >= 1.0,
        "{count} messages of {PAYLOAD} bytes published, {held} wait in the queue of a \
         subscriber that reads nothing"
    );

    let mut a = mqtt3_tcp(port, &unique("early-sub"));
    let mut b = mqtt3_tcp(port, &unique("prompt-pub"));
    let missed = publishes_missed_by_an_early_subscriber(&mut a, &mut b, &unique("race"), ROUNDS);
    assert_eq!(missed, 0, "missed in {missed} of {ROUNDS} rounds");
    assert_eq!(input_order_timeouts(http), 0.0);
    // S is still stuck: its connection holds deliveries it cannot write, and its queue the
    // rest (S's connection took some while it filled the kernel's buffers, perhaps).
    let (still_held, unwritten) = (value(&ready), value(&unacked));
    assert!(
        (1.0..=held).contains(&still_held) && unwritten >= 1.0,
        "the stuck subscriber's queue went from {held} to {still_held} messages, \
         {unwritten} unwritten"
    );
}

/// Subscribe and unsubscribe pairs the flooding client sends in one write before it reads
/// their acknowledgements: input that changes routing, each read holding its ticket until all
/// of its packets are handled.
const WINDOW: u16 = 10;
/// The most pairs it sends, should the race take unexpectedly long.
const MOST_PAIRS: u32 = 50_000;

/// Client F subscribes and unsubscribes a filter matching the race's topics as fast as the
/// broker acknowledges, many packets per read, from before the race starts until it ends, while
/// A and B run it: routing changes take effect in their turn without holding publishers back
/// until the order is given up.
#[test]
fn a_client_flooding_subscribe_and_unsubscribe_holds_no_other_input_back() {
    let broker = broker_with_http("");
    let port = port(&broker);
    let base = unique("flooded-race");
    let mut flooder = mqtt3_tcp(port, &unique("flooder"));
    let filter = format!("{base}/+");
    let race_over = Arc::new(AtomicBool::new(false));
    let (started, flooding) = mpsc::channel();
    let flood = thread::spawn({
        let race_over = race_over.clone();
        move || {
            let mut pairs = 0;
            while !race_over.load(Ordering::Relaxed) && pairs < MOST_PAIRS {
                // Packet ids 1 to 65534, a subscribe's odd and its unsubscribe's the next.
                let ids: Vec<u16> = (0..2 * u32::from(WINDOW))
                    .map(|i| ((2 * pairs + i) % 65534 + 1) as u16)
                    .collect();
                let burst: Vec<u8> = ids
                    .chunks(2)
                    .flat_map(|pair| {
                        [
                            mqtt3::subscribe(pair[0], &filter, 0),
                            mqtt3::unsubscribe(pair[1], &filter),
                        ]
                    })
                    .flatten()
                    .collect();
                flooder.send(&burst);
                let mut acked = ids.iter();
                while let Some(expected) = acked.as_slice().first() {
                    match flooder.read() {
                        Packet::Suback { id, .. } | Packet::Unsuback { id } => {
                            assert_eq!(id, *expected, "acknowledgements out of order");
                            acked.next();
                        }
                        // The race's messages, while subscribed.
                        Packet::Publish { .. } => {}
                        other => panic!("expected SUBACK or UNSUBACK, got {other:?}"),
                    }
                }
                pairs += u32::from(WINDOW);
                let _ = started.send(());
            }
            pairs
        }
    });
    flooding
        .recv_timeout(WAIT)
        .expect("the flood's first acknowledgements");

    let mut a = mqtt3_tcp(port, &unique("early-sub"));
    let mut b = mqtt3_tcp(port, &unique("prompt-pub"));
    let missed = publishes_missed_by_an_early_subscriber(&mut a, &mut b, &base, ROUNDS);
    race_over.store(true, Ordering::Relaxed);
    let pairs = flood
        .join()
        .expect("every subscribe and unsubscribe acknowledged");
    assert_eq!(
        missed, 0,
        "missed in {missed} of {ROUNDS} rounds, with {pairs} pairs flooded"
    );
    assert_eq!(input_order_timeouts(broker.http_addr()), 0.0);
}

/// A publisher sending faster than the broker reads, or messages larger than one read: its
/// socket has more input as soon as a read is done, and that input takes a ticket (it arrived
/// before whatever other connections read next). The input being handled came before it, so it
/// never waits for it: no publish gives up waiting, and none waits 100 ms for its own
/// connection.
#[test]
fn a_publisher_streaming_never_waits_for_its_own_later_input() {
    let broker = broker_with_http("");
    let port = port(&broker);
    let mut publisher = mqtt3_tcp(port, &unique("streamer"));
    let topic = unique("nobody/listens");
    for (size, count) in [(10, 2000), (PAYLOAD, 32)] {
        let message = mqtt3::publish(&topic, &vec![b's'; size]);
        let burst: Vec<u8> = std::iter::repeat_n(message, count).flatten().collect();
        publisher.send(&burst);
        // PINGRESP comes once everything before the PINGREQ was handled.
        publisher.send(&mqtt3::pingreq());
        assert_eq!(publisher.read(), Packet::Other(13), "PINGRESP");
        assert_eq!(
            input_order_timeouts(broker.http_addr()),
            0.0,
            "after {count} messages of {size} bytes"
        );
    }
}
