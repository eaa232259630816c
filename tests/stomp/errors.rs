//! Bad input: each gets one ERROR frame naming the problem, then the connection closes; other
//! clients and their messages are untouched.

use crate::support::*;
use rosetta_tests::Broker;

/// A client that holds an unacknowledged message and a subscription while others misbehave.
struct Bystander {
    client: Raw,
    queue: String,
    held: Received,
}

impl Bystander {
    fn new(broker: &Broker) -> Bystander {
        let mut client = Raw::login_12(broker.stomp_addr());
        let queue = format!("/queue/{}", unique("bystander"));
        client.subscribe("b", &queue, "client-individual");
        client.send_frame("SEND", &[("destination", &queue)], b"held");
        let held = client.expect_frame("MESSAGE");
        Bystander {
            client,
            queue,
            held,
        }
    }

    /// Still connected, still subscribed, still holding its message.
    #[track_caller]
    fn check(mut self) {
        self.client
            .send_frame("SEND", &[("destination", &self.queue)], b"after");
        assert_eq!(self.client.expect_frame("MESSAGE").body, b"after");
        self.client
            .send_with_receipt("ACK", &[("id", self.held.expect_header("ack"))], b"");
    }
}

/// Sends `bytes` after logging in and asserts one ERROR whose `message` is `summary` and whose
/// body mentions `detail`, then the close.
#[track_caller]
fn assert_refused(broker: &Broker, bytes: &[u8], summary: &str, detail: &str) {
    let mut client = Raw::login_12(broker.stomp_addr());
    client.send_bytes(bytes);
    let frames = client.expect_closed();
    assert_eq!(frames.len(), 1, "{frames:?}");
    let error = &frames[0];
    assert_eq!(error.command, "ERROR");
    assert_eq!(error.header("message"), Some(summary), "{error:?}");
    let body = String::from_utf8_lossy(&error.body);
    assert!(
        body.contains(detail),
        "ERROR body {body:?} does not mention {detail:?}"
    );
}

#[test]
fn a_frame_without_nul_within_the_size_limit_is_refused() {
    let broker = broker_with("[limits]\nmax_message_size = 1024\n");
    let bystander = Bystander::new(&broker);
    let mut bytes = b"SEND\ndestination:/queue/x\n\n".to_vec();
    bytes.extend(std::iter::repeat_n(b'x', 2000));
    assert_refused(
        &broker,
        &bytes,
        "Malformed frame",
        "no NUL frame terminator within 1024 body bytes",
    );
    bystander.check();
}

#[test]
fn an_unknown_command_is_refused() {
    let broker = broker();
    let bystander = Bystander::new(&broker);
    assert_refused(
        &broker,
        b"PUBLISH\ndestination:/queue/x\n\n\0",
        "Bad command",
        "Could not interpret command \"PUBLISH\"\n",
    );
    bystander.check();
}

#[test]
fn a_send_without_destination_is_refused() {
    let broker = broker();
    let bystander = Bystander::new(&broker);
    assert_refused(
        &broker,
        b"SEND\nreceipt:r1\n\nbody\0",
        "Missing destination",
        "'SEND' must include a 'destination' header\n",
    );
    bystander.check();
}

#[test]
fn an_ack_for_an_unknown_id_is_refused() {
    let broker = broker();
    let bystander = Bystander::new(&broker);
    assert_refused(
        &broker,
        b"ACK\nid:12345\n\n\0",
        "Message not found",
        "unknown delivery tag 12345\n",
    );
    bystander.check();
}

#[test]
fn a_bad_content_length_is_refused() {
    let broker = broker();
    let bystander = Bystander::new(&broker);
    assert_refused(
        &broker,
        b"SEND\ndestination:/queue/x\ncontent-length:lots\n\nabc\0",
        "Malformed frame",
        "content-length 'lots'",
    );
    bystander.check();
}

#[test]
fn a_header_line_without_colon_is_refused() {
    let broker = broker();
    let bystander = Bystander::new(&broker);
    assert_refused(
        &broker,
        b"SEND\ndestination /queue/x\n\n\0",
        "Malformed frame",
        "header line without a colon",
    );
    bystander.check();
}

#[test]
fn an_unknown_destination_is_refused() {
    let broker = broker();
    assert_refused(
        &broker,
        b"SEND\ndestination:/nowhere/x\n\n\0",
        "Unknown destination",
        "/nowhere/x",
    );
}

#[test]
fn subscribing_to_a_missing_amq_queue_is_refused() {
    let broker = broker();
    assert_refused(
        &broker,
        b"SUBSCRIBE\nid:1\ndestination:/amq/queue/absent\n\n\0",
        "not_found",
        "no queue 'absent' in vhost '/'",
    );
}

#[test]
fn an_error_names_the_receipt_of_the_frame_that_caused_it() {
    let broker = broker();
    let mut client = Raw::login_12(broker.stomp_addr());
    client.send_frame(
        "COMMIT",
        &[("transaction", "never-begun"), ("receipt", "c-7")],
        b"",
    );
    let error = client.expect_frame("ERROR");
    assert_eq!(error.header("receipt-id"), Some("c-7"));
    assert_eq!(error.header("message"), Some("Bad transaction"));
}

#[test]
fn a_frame_before_connect_is_refused() {
    let broker = broker();
    let mut client = Raw::open(broker.stomp_addr());
    client.send_frame("SEND", &[("destination", "/queue/x")], b"");
    let frames = client.expect_closed();
    assert_eq!(frames[0].header("message"), Some("Illegal command"));
}

#[test]
fn unacked_messages_of_a_refused_client_go_back_flagged_redelivered() {
    let broker = broker();
    let queue = format!("/queue/{}", unique("requeue"));
    let mut bad = Raw::login_12(broker.stomp_addr());
    bad.subscribe("s", &queue, "client");
    bad.send_frame("SEND", &[("destination", &queue)], b"precious");
    assert_eq!(
        bad.expect_frame("MESSAGE").header("redelivered"),
        Some("false")
    );
    bad.send_bytes(b"BOGUS\n\n\0");
    bad.expect_closed();
    let mut good = Raw::login_12(broker.stomp_addr());
    good.subscribe("s", &queue, "auto");
    let again = good.expect_frame("MESSAGE");
    assert_eq!(again.body, b"precious");
    assert_eq!(again.header("redelivered"), Some("true"));
}
