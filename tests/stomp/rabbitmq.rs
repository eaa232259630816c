//! Behaviour that follows RabbitMQ's STOMP plugin where the STOMP specification leaves room or
//! says otherwise, so clients and tests written against RabbitMQ pass unchanged.

use crate::support::*;

#[test]
fn connected_carries_heart_beat_0_0_when_the_client_offered_none() {
    let broker = broker();
    for accept in [None, Some("1.1"), Some("1.2")] {
        let (_client, connected) = Raw::login(broker.stomp_addr(), accept);
        assert_eq!(
            connected.header("heart-beat"),
            Some("0,0"),
            "{accept:?}: {connected:?}"
        );
    }
    // `0,0` offers nothing either.
    let mut client = Raw::open(broker.stomp_addr());
    client.send_frame(
        "CONNECT",
        &[
            ("accept-version", "1.2"),
            ("host", "/"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("heart-beat", "0,0"),
        ],
        b"",
    );
    assert_eq!(
        client.expect_frame("CONNECTED").header("heart-beat"),
        Some("0,0")
    );
}

#[test]
fn stray_nuls_between_frames_are_skipped() {
    let broker = broker();
    let mut client = Raw::login_12(broker.stomp_addr());
    let queue = format!("/queue/{}", unique("nuls"));
    client.send_bytes(b"\0\0\n\0");
    client.subscribe("s", &queue, "auto");
    let mut bytes = b"\0SEND\ndestination:".to_vec();
    bytes.extend_from_slice(queue.as_bytes());
    bytes.extend_from_slice(b"\n\none\0\0\0\r\n\0SEND\ndestination:");
    bytes.extend_from_slice(queue.as_bytes());
    bytes.extend_from_slice(b"\n\ntwo\0\0");
    client.send_bytes(&bytes);
    assert_eq!(client.expect_frame("MESSAGE").body, b"one");
    assert_eq!(client.expect_frame("MESSAGE").body, b"two");
    client.send_with_receipt("DISCONNECT", &[], b"");
}

#[test]
fn boolean_headers_accept_true_and_false_in_any_case() {
    let broker = broker();
    let topic = format!("/topic/{}", unique("bool"));
    let id = unique("durable");
    let mut client = Raw::login_12(broker.stomp_addr());
    client.send_with_receipt(
        "SUBSCRIBE",
        &[("id", &id), ("destination", &topic), ("durable", "True")],
        b"",
    );
    // Durable: the subscription's queue outlives the UNSUBSCRIBE and collects what follows.
    client.send_with_receipt("UNSUBSCRIBE", &[("id", &id)], b"");
    client.send_with_receipt(
        "SEND",
        &[("destination", &topic), ("persistent", "TRUE")],
        b"kept",
    );
    client.send_frame(
        "SUBSCRIBE",
        &[
            ("id", &id),
            ("destination", &topic),
            ("durable", "TRUE"),
            ("ack", "client"),
        ],
        b"",
    );
    let message = client.expect_frame("MESSAGE");
    assert_eq!(message.body, b"kept");
    assert_eq!(message.header("persistent"), Some("true"));
    // `requeue:FALSE` drops the message: nothing comes back.
    client.send_with_receipt(
        "NACK",
        &[("id", message.expect_header("ack")), ("requeue", "FALSE")],
        b"",
    );
    client.expect_silence();
    client.send_with_receipt("UNSUBSCRIBE", &[("id", &id), ("durable", "tRuE")], b"");
}

#[test]
fn a_stomp_1_0_client_may_use_client_individual_and_nack() {
    let broker = broker();
    let (mut client, connected) = Raw::login(broker.stomp_addr(), None);
    assert_eq!(connected.header("version"), Some("1.0"));
    let queue = format!("/queue/{}", unique("v10ci"));
    client.send_with_receipt(
        "SUBSCRIBE",
        &[("destination", &queue), ("ack", "client-individual")],
        b"",
    );
    client.send_frame("SEND", &[("destination", &queue)], b"a");
    client.send_frame("SEND", &[("destination", &queue)], b"b");
    let a = client.expect_frame("MESSAGE");
    let b = client.expect_frame("MESSAGE");
    // Individual, not cumulative: acknowledging the second leaves the first outstanding.
    client.send_with_receipt("ACK", &[("message-id", b.expect_header("message-id"))], b"");
    client.send_with_receipt(
        "NACK",
        &[("message-id", a.expect_header("message-id"))],
        b"",
    );
    let again = client.expect_frame("MESSAGE");
    assert_eq!(again.body, b"a");
    assert_eq!(again.header("redelivered"), Some("true"));
}

#[test]
fn a_stomp_1_2_ack_or_nack_without_id_is_refused_with_missing_header() {
    let broker = broker();
    for command in ["ACK", "NACK"] {
        let mut client = Raw::login_12(broker.stomp_addr());
        let queue = format!("/queue/{}", unique("noid"));
        client.subscribe("s", &queue, "client");
        client.send_frame("SEND", &[("destination", &queue)], b"x");
        let message = client.expect_frame("MESSAGE");
        // 1.0's `message-id` does not stand in for `id` on 1.2.
        client.send_frame(
            command,
            &[
                ("message-id", message.expect_header("message-id")),
                ("subscription", "s"),
            ],
            b"",
        );
        let frames = client.expect_closed();
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0].command, "ERROR");
        assert_eq!(
            frames[0].header("message"),
            Some("Missing header"),
            "{command}"
        );
    }
}

#[test]
fn a_send_with_message_id_is_refused_before_the_destination_is_checked() {
    let broker = broker();
    for destination in ["/queue/fine", "/nowhere/x"] {
        let mut client = Raw::login_12(broker.stomp_addr());
        client.send_frame(
            "SEND",
            &[
                ("destination", destination),
                ("message-id", "m-1"),
                ("receipt", "r"),
            ],
            b"x",
        );
        let frames = client.expect_closed();
        assert_eq!(frames.len(), 1, "{frames:?}");
        let error = &frames[0];
        assert_eq!(error.command, "ERROR");
        assert_eq!(error.header("message"), Some("Invalid header"));
        assert_eq!(error.header("receipt-id"), Some("r"));
        assert!(
            error
                .body
                .starts_with(b"'message-id' is not allowed on 'SEND'.\n"),
            "{:?}",
            String::from_utf8_lossy(&error.body)
        );
    }
}

#[test]
fn a_message_sent_to_an_exchange_without_key_names_that_destination() {
    let broker = broker();
    let mut client = Raw::login_12(broker.stomp_addr());
    client.subscribe("f", "/exchange/amq.fanout", "auto");
    client.send_frame("SEND", &[("destination", "/exchange/amq.fanout")], b"all");
    let message = client.expect_frame("MESSAGE");
    assert_eq!(message.body, b"all");
    assert_eq!(message.header("destination"), Some("/exchange/amq.fanout"));
}
