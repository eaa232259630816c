//! Framing against the real broker: bodies holding NULs, frames split at every byte, heart-beats
//! both ways, header escaping, and clients of each protocol version.

use crate::support::*;
use std::time::Duration;

#[test]
fn nul_octets_in_a_body_survive_when_content_length_is_given() {
    let broker = broker();
    let mut client = Raw::login_12(broker.stomp_addr());
    let queue = format!("/queue/{}", unique("nul"));
    client.subscribe("s1", &queue, "auto");
    let body = b"\0head\0\0tail\0";
    client.send_frame(
        "SEND",
        &[
            ("destination", &queue),
            ("content-length", &body.len().to_string()),
        ],
        body,
    );
    let message = client.expect_frame("MESSAGE");
    assert_eq!(message.body, body);
    assert_eq!(message.header("content-length"), Some("12"));
}

#[test]
fn frames_written_one_byte_at_a_time_are_understood() {
    let broker = broker();
    let mut client = Raw::open(broker.stomp_addr());
    client.send_frame_bytewise(
        "CONNECT",
        &[
            ("accept-version", "1.2"),
            ("host", "/"),
            ("login", "guest"),
            ("passcode", "guest"),
        ],
        b"",
    );
    client.expect_frame("CONNECTED");
    let queue = format!("/queue/{}", unique("bytewise"));
    client.send_frame_bytewise(
        "SUBSCRIBE",
        &[("id", "0"), ("destination", &queue), ("receipt", "sub")],
        b"",
    );
    assert_eq!(
        client.expect_frame("RECEIPT").header("receipt-id"),
        Some("sub")
    );
    client.send_frame_bytewise(
        "SEND",
        &[("destination", &queue), ("content-length", "3")],
        b"a\0b",
    );
    client.send_frame_bytewise("SEND", &[("destination", &queue)], b"no length");
    assert_eq!(client.expect_frame("MESSAGE").body, b"a\0b");
    assert_eq!(client.expect_frame("MESSAGE").body, b"no length");
}

#[test]
fn heartbeat_eols_between_frames_are_ignored() {
    let broker = broker();
    let mut client = Raw::login_12(broker.stomp_addr());
    let queue = format!("/queue/{}", unique("eols"));
    client.send_bytes(b"\n\n\r\n");
    client.subscribe("s", &queue, "auto");
    let mut bytes = b"\n\r\nSEND\ndestination:".to_vec();
    bytes.extend_from_slice(queue.as_bytes());
    bytes.extend_from_slice(b"\n\none\0\n\n\nSEND\r\ndestination:");
    bytes.extend_from_slice(queue.as_bytes());
    bytes.extend_from_slice(b"\r\n\r\ntwo\0\r\n");
    client.send_bytes(&bytes);
    assert_eq!(client.expect_frame("MESSAGE").body, b"one");
    assert_eq!(client.expect_frame("MESSAGE").body, b"two");
}

#[test]
fn broker_sends_heartbeats_and_drops_a_silent_client() {
    let broker = broker_with("heartbeat_ms = 200\n");
    let mut client = Raw::open(broker.stomp_addr());
    client.send_frame(
        "CONNECT",
        &[
            ("accept-version", "1.2"),
            ("host", "/"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("heart-beat", "300,300"),
        ],
        b"",
    );
    let connected = client.expect_frame("CONNECTED");
    assert_eq!(connected.header("heart-beat"), Some("200,200"));
    // The broker sends at max(200, 300) ms; the client, having promised 300 ms, stays silent
    // and must be dropped after about twice that.
    let frames = client.expect_closed();
    assert!(frames.is_empty(), "{frames:?}");
    assert!(
        client.heartbeats >= 1,
        "no heart-beat EOL before the broker gave up"
    );
    assert!(broker.wait_for_log("client silent past its heartbeat", Duration::from_secs(5)));
}

#[test]
fn a_client_that_keeps_beating_stays_connected() {
    let broker = broker_with("heartbeat_ms = 200\n");
    let mut client = Raw::open(broker.stomp_addr());
    client.send_frame(
        "CONNECT",
        &[
            ("accept-version", "1.2"),
            ("host", "/"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("heart-beat", "200,0"),
        ],
        b"",
    );
    client.expect_frame("CONNECTED");
    for _ in 0..10 {
        client.send_bytes(b"\n");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Still alive: a receipt comes back, and the broker sent no heart-beats (cy = 0).
    client.send_with_receipt("DISCONNECT", &[], b"");
    assert_eq!(client.heartbeats, 0);
}

#[test]
fn a_stomp_1_0_client_gets_version_1_0_and_headers_verbatim() {
    let broker = broker();
    let (mut client, connected) = Raw::login(broker.stomp_addr(), None);
    assert_eq!(connected.header("version"), Some("1.0"));
    assert_eq!(
        connected.header("heart-beat"),
        Some("0,0"),
        "RabbitMQ answers every version, 1.0 included"
    );
    let queue = format!("/queue/{}", unique("v10"));
    // 1.0: no id (the destination names the subscription), no escaping.
    client.send_with_receipt(
        "SUBSCRIBE",
        &[("destination", &queue), ("ack", "client")],
        b"",
    );
    client.send_frame(
        "SEND",
        &[("destination", &queue), ("x-raw", "a\\cb")],
        b"hello",
    );
    let message = client.expect_frame("MESSAGE");
    assert_eq!(message.header("subscription"), Some(queue.as_str()));
    assert_eq!(message.header("x-raw"), Some("a\\cb"));
    assert_eq!(message.header("ack"), None, "the ack header is new in 1.2");
    let id = message.expect_header("message-id").to_owned();
    client.send_with_receipt("ACK", &[("message-id", &id)], b"");
}

#[test]
fn a_stomp_1_1_client_acks_with_message_id_and_subscription() {
    let broker = broker();
    let (mut client, connected) = Raw::login(broker.stomp_addr(), Some("1.0,1.1"));
    assert_eq!(connected.header("version"), Some("1.1"));
    let queue = format!("/queue/{}", unique("v11"));
    client.subscribe("sub-1", &queue, "client-individual");
    client.send_frame(
        "SEND",
        &[("destination", &queue), ("x-esc", "a\\cb\\nc")],
        b"m",
    );
    let message = client.expect_frame("MESSAGE");
    // Escaped on the way in, escaped again on the way out.
    assert_eq!(message.header("x-esc"), Some("a\\cb\\nc"));
    let id = message.expect_header("message-id").to_owned();
    client.send_with_receipt(
        "ACK",
        &[("message-id", &id), ("subscription", "sub-1")],
        b"",
    );
    // Acknowledged: a second ACK of the same message is an error.
    client.send_frame(
        "ACK",
        &[("message-id", &id), ("subscription", "sub-1")],
        b"",
    );
    assert_eq!(
        client.expect_frame("ERROR").header("message"),
        Some("Message not found")
    );
}

#[test]
fn a_stomp_1_2_client_acks_with_the_ack_header() {
    let broker = broker();
    let (mut client, connected) = Raw::login(broker.stomp_addr(), Some("1.1,1.2"));
    assert_eq!(connected.header("version"), Some("1.2"));
    assert!(connected.header("session").is_some());
    assert!(connected.expect_header("server").starts_with("Rosetta/"));
    let queue = format!("/queue/{}", unique("v12"));
    client.subscribe("s", &queue, "client");
    client.send_frame("SEND", &[("destination", &queue)], b"1");
    client.send_frame("SEND", &[("destination", &queue)], b"2");
    let first = client.expect_frame("MESSAGE");
    let second = client.expect_frame("MESSAGE");
    assert_eq!(first.header("redelivered"), Some("false"));
    // Cumulative: acknowledging the second settles the first too.
    client.send_with_receipt("ACK", &[("id", second.expect_header("ack"))], b"");
    client.send_frame("ACK", &[("id", first.expect_header("ack"))], b"");
    assert_eq!(
        client.expect_frame("ERROR").header("message"),
        Some("Message not found")
    );
}

#[test]
fn a_host_that_names_no_virtual_host_means_the_default_one() {
    let broker = broker();
    let mut client = Raw::open(broker.stomp_addr());
    client.send_frame(
        "CONNECT",
        &[
            ("accept-version", "1.2"),
            ("host", "127.0.0.1"),
            ("login", "guest"),
            ("passcode", "guest"),
        ],
        b"",
    );
    client.expect_frame("CONNECTED");
    let queue = format!("/queue/{}", unique("host"));
    client.subscribe("s", &queue, "auto");
    client.send_frame("SEND", &[("destination", &queue)], b"x");
    assert_eq!(client.expect_frame("MESSAGE").body, b"x");
}

#[test]
fn wrong_credentials_get_an_error_frame_and_the_connection_closes() {
    let broker = broker();
    let mut client = Raw::open(broker.stomp_addr());
    client.send_frame(
        "CONNECT",
        &[
            ("accept-version", "1.2"),
            ("host", "/"),
            ("login", "guest"),
            ("passcode", "nope"),
        ],
        b"",
    );
    let frames = client.expect_closed();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].command, "ERROR");
    assert_eq!(frames[0].header("message"), Some("Bad CONNECT"));
}

#[test]
fn an_unsupported_version_is_refused_naming_the_supported_ones() {
    let broker = broker();
    let mut client = Raw::open(broker.stomp_addr());
    client.send_frame("CONNECT", &[("accept-version", "2.0"), ("host", "/")], b"");
    let frames = client.expect_closed();
    assert_eq!(frames[0].command, "ERROR");
    assert_eq!(frames[0].header("version"), Some("1.0,1.1,1.2"));
}
