//! Hostile STOMP clients: each tries one way to crash, freeze or starve the broker, is refused
//! or held back, and another client is still served promptly afterwards.

use crate::support::*;
use rosetta_tests::Broker;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a subscribe, send and receive may take on a broker that is not starved.
const PROMPT: Duration = Duration::from_secs(3);

/// A fresh client subscribes to `destination`, sends to it and receives what it sent, all
/// within [`PROMPT`].
#[track_caller]
fn round_trip(broker: &Broker, destination: &str) {
    let started = Instant::now();
    let mut client = Raw::login_12(broker.stomp_addr());
    client.subscribe("rt", destination, "auto");
    let body = unique("ping");
    client.send_frame("SEND", &[("destination", destination)], body.as_bytes());
    let got = client
        .read_frame_within(PROMPT)
        .unwrap_or_else(|end| panic!("no MESSAGE on {destination}: {end:?}"));
    assert_eq!(got.command, "MESSAGE", "{got:?}");
    assert_eq!(got.body, body.as_bytes());
    assert!(
        started.elapsed() < PROMPT,
        "round trip took {:?}",
        started.elapsed()
    );
}

/// Sends `command` after logging in and asserts the ERROR that refuses it, then the close.
#[track_caller]
fn assert_refused(broker: &Broker, command: &str, headers: &[(&str, &str)], summary: &str) {
    let mut client = Raw::login_12(broker.stomp_addr());
    client.send_frame(command, headers, b"");
    let frames = client.expect_closed();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].command, "ERROR", "{frames:?}");
    assert_eq!(frames[0].header("message"), Some(summary), "{frames:?}");
}

#[test]
fn a_header_block_trickled_a_byte_at_a_time_is_handled_while_another_client_is_served() {
    let broker = broker();
    let queue = format!("/queue/{}", unique("trickle"));
    let mut reader = Raw::login_12(broker.stomp_addr());
    reader.subscribe("r", &queue, "auto");
    // About 60 KB of headers, the broker's default limits allow it.
    let names: Vec<String> = (0..900).map(|i| format!("x-header-{i:04}")).collect();
    let value = "v".repeat(52);
    let mut headers: Vec<(&str, &str)> =
        names.iter().map(|n| (n.as_str(), value.as_str())).collect();
    headers.push(("destination", &queue));
    headers.push(("receipt", "trickled"));

    let done = AtomicBool::new(false);
    let served_meanwhile = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let trickler = s.spawn(|| {
            let mut client = Raw::login_12(broker.stomp_addr());
            client.send_frame_bytewise("SEND", &headers, b"slow");
            let receipt = client.expect_frame("RECEIPT");
            done.store(true, Ordering::SeqCst);
            receipt
        });
        while !done.load(Ordering::SeqCst) {
            round_trip(&broker, &format!("/queue/{}", unique("meanwhile")));
            if !done.load(Ordering::SeqCst) {
                served_meanwhile.fetch_add(1, Ordering::SeqCst);
            }
        }
        let receipt = trickler.join().expect("trickling client");
        assert_eq!(receipt.header("receipt-id"), Some("trickled"));
    });
    assert!(
        served_meanwhile.load(Ordering::SeqCst) > 0,
        "no other client was served while the header block trickled in"
    );
    let got = reader.expect_frame("MESSAGE");
    assert_eq!(got.body, b"slow");
    assert_eq!(got.header("x-header-0899"), Some(value.as_str()));
}

#[test]
fn destinations_and_names_past_255_bytes_get_an_error_and_others_are_served() {
    let broker = broker();
    let long = "n".repeat(300);
    let refused: [(&str, String); 5] = [
        ("SEND", format!("/queue/{long}")),
        ("SEND", format!("/exchange/amq.topic/{long}")),
        ("SEND", format!("/topic/{long}")),
        ("SUBSCRIBE", format!("/topic/{long}")),
        ("SUBSCRIBE", format!("/queue/{long}")),
    ];
    for (command, destination) in &refused {
        assert_refused(
            &broker,
            command,
            &[("destination", destination), ("id", "s")],
            "Invalid destination",
        );
    }
    // A temporary reply queue named past the bound, and a property AMQP carries as a short
    // string.
    let reply_to = format!("/temp-queue/{long}");
    assert_refused(
        &broker,
        "SEND",
        &[("destination", "/queue/ok"), ("reply-to", &reply_to)],
        "Invalid destination",
    );
    assert_refused(
        &broker,
        "SEND",
        &[("destination", "/queue/ok"), ("correlation-id", &long)],
        "Invalid header",
    );
    // Exactly 255 bytes is a valid name.
    round_trip(&broker, &format!("/queue/{}", "q".repeat(255)));
    round_trip(&broker, &format!("/topic/{}", "k".repeat(255)));
}

#[test]
fn a_transaction_past_max_transaction_frames_gets_an_error_and_nothing_of_it_is_delivered() {
    let broker = broker_with("[limits]\nmax_transaction_frames = 5\n");
    let queue = format!("/queue/{}", unique("tx"));
    let mut reader = Raw::login_12(broker.stomp_addr());
    reader.subscribe("r", &queue, "auto");

    let mut client = Raw::login_12(broker.stomp_addr());
    client.send_with_receipt("BEGIN", &[("transaction", "t")], b"");
    for _ in 0..5 {
        client.send_frame(
            "SEND",
            &[("destination", &queue), ("transaction", "t")],
            b"x",
        );
    }
    client.send_frame(
        "SEND",
        &[("destination", &queue), ("transaction", "t")],
        b"x",
    );
    client.send_frame("COMMIT", &[("transaction", "t")], b"");
    let frames = client.expect_closed();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].header("message"), Some("Transaction too large"));
    reader.expect_silence();
    round_trip(&broker, &format!("/queue/{}", unique("after-tx")));
}

#[test]
fn a_transaction_past_max_transaction_bytes_gets_an_error_and_nothing_of_it_is_delivered() {
    let broker = broker_with("[limits]\nmax_transaction_bytes = 4096\n");
    let queue = format!("/queue/{}", unique("txb"));
    let mut reader = Raw::login_12(broker.stomp_addr());
    reader.subscribe("r", &queue, "auto");

    let mut client = Raw::login_12(broker.stomp_addr());
    client.send_with_receipt("BEGIN", &[("transaction", "t")], b"");
    let body = vec![b'b'; 3000];
    // No receipt: a SEND held in a transaction is answered only at COMMIT (RabbitMQ's rule).
    client.send_frame(
        "SEND",
        &[("destination", &queue), ("transaction", "t")],
        &body,
    );
    client.send_frame(
        "SEND",
        &[("destination", &queue), ("transaction", "t")],
        &body,
    );
    client.send_frame("COMMIT", &[("transaction", "t")], b"");
    let frames = client.expect_closed();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].header("message"), Some("Transaction too large"));
    reader.expect_silence();
    round_trip(&broker, &format!("/queue/{}", unique("after-tx")));
}

#[test]
fn too_many_open_transactions_get_an_error() {
    let broker = broker();
    let mut client = Raw::login_12(broker.stomp_addr());
    let ids: Vec<String> = (0..16).map(|i| format!("t{i}")).collect();
    for id in &ids {
        client.send_with_receipt("BEGIN", &[("transaction", id)], b"");
    }
    client.send_frame("BEGIN", &[("transaction", "one-too-many")], b"");
    let frames = client.expect_closed();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(
        frames[0].header("message"),
        Some("Transaction limit exceeded")
    );
    round_trip(&broker, &format!("/queue/{}", unique("after-tx")));
}

/// One byte: the broker is always above it, so the memory alarm is on from the start.
const ALWAYS_ALARMED: &str = "[limits]\nmemory_limit = 1\n";

#[test]
fn a_send_inside_a_transaction_under_a_raised_alarm_is_paused() {
    let broker = broker_with(ALWAYS_ALARMED);
    let queue = format!("/queue/{}", unique("alarm"));
    let mut reader = Raw::login_12(broker.stomp_addr());
    reader.subscribe("r", &queue, "auto");

    let mut client = Raw::login_12(broker.stomp_addr());
    // Opening a transaction publishes nothing and is answered.
    client.send_with_receipt("BEGIN", &[("transaction", "t")], b"");
    client.send_frame(
        "SEND",
        &[
            ("destination", &queue),
            ("transaction", "t"),
            ("receipt", "held"),
        ],
        b"x",
    );
    client.send_frame("COMMIT", &[("transaction", "t"), ("receipt", "c")], b"");
    client.expect_silence();
    reader.expect_silence();

    // A plain SEND from a client that never published before waits as well.
    let mut first = Raw::login_12(broker.stomp_addr());
    first.send_frame("SEND", &[("destination", &queue), ("receipt", "p")], b"y");
    first.expect_silence();
    reader.expect_silence();

    // The alarm holds publishers only: a new client is still served what does not publish.
    let started = Instant::now();
    let mut other = Raw::login_12(broker.stomp_addr());
    other.subscribe("o", &format!("/queue/{}", unique("consumer")), "auto");
    other.send_with_receipt("BEGIN", &[("transaction", "u")], b"");
    other.send_with_receipt("ABORT", &[("transaction", "u")], b"");
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
}

#[test]
fn one_subscription_past_max_consumers_per_channel_gets_an_error() {
    let broker = broker_with("[limits]\nmax_consumers_per_channel = 3\n");
    let mut client = Raw::login_12(broker.stomp_addr());
    for i in 0..3 {
        client.subscribe(&format!("s{i}"), &format!("/topic/t{i}"), "auto");
    }
    client.send_frame(
        "SUBSCRIBE",
        &[("id", "s3"), ("destination", "/topic/t3")],
        b"",
    );
    let frames = client.expect_closed();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(
        frames[0].header("message"),
        Some("Subscription limit exceeded")
    );
    round_trip(&broker, &format!("/queue/{}", unique("after-subs")));
}

#[test]
fn a_subscribe_or_send_past_the_vhost_queue_limit_gets_an_error() {
    let broker = broker_with("[limits]\nmax_queues = 1\n");
    let queue = format!("/queue/{}", unique("only"));
    let mut client = Raw::login_12(broker.stomp_addr());
    client.subscribe("s", &queue, "auto");
    client.send_with_receipt("UNSUBSCRIBE", &[("id", "s")], b"");
    // A topic subscription needs a queue of its own, and /queue/ declares one on demand.
    assert_refused(
        &broker,
        "SUBSCRIBE",
        &[("id", "t"), ("destination", "/topic/t")],
        "precondition_failed",
    );
    assert_refused(
        &broker,
        "SEND",
        &[("destination", &format!("/queue/{}", unique("more")))],
        "precondition_failed",
    );
    round_trip(&broker, &queue);
}
