//! Persistence: a RECEIPT for a persistent SEND means the message survives a crash.

use crate::support::*;

#[test]
fn receipted_persistent_messages_survive_kill_9() {
    let mut broker = broker();
    let queue = format!("/queue/{}", unique("crash"));
    let mut client = Raw::login_12(broker.stomp_addr());
    for i in 0..50 {
        let body = format!("persistent {i}");
        client.send_with_receipt(
            "SEND",
            &[("destination", &queue), ("persistent", "true")],
            body.as_bytes(),
        );
    }
    // Transient messages to the same durable queue do not survive, as in RabbitMQ.
    client.send_with_receipt("SEND", &[("destination", &queue)], b"transient");
    broker.kill9();
    broker.restart();
    let mut client = Raw::login_12(broker.stomp_addr());
    client.subscribe("s", &queue, "client-individual");
    for i in 0..50 {
        let message = client.expect_frame("MESSAGE");
        assert_eq!(
            String::from_utf8_lossy(&message.body),
            format!("persistent {i}")
        );
        assert_eq!(message.header("persistent"), Some("true"));
        client.send_frame("ACK", &[("id", message.expect_header("ack"))], b"");
    }
    client.expect_silence();
}

#[test]
fn a_durable_topic_subscription_keeps_messages_across_a_disconnect() {
    let broker = broker();
    let topic = format!("/topic/{}", unique("durable"));
    let mut first = Raw::login_12(broker.stomp_addr());
    first.send_with_receipt(
        "SUBSCRIBE",
        &[
            ("id", "keep"),
            ("destination", &topic),
            ("durable", "true"),
            ("auto-delete", "false"),
        ],
        b"",
    );
    first.send_with_receipt("DISCONNECT", &[], b"");
    let mut sender = Raw::login_12(broker.stomp_addr());
    sender.send_with_receipt(
        "SEND",
        &[("destination", &topic), ("persistent", "true")],
        b"while away",
    );
    let mut back = Raw::login_12(broker.stomp_addr());
    // The same id with `durable:true` again finds the subscription's queue (RabbitMQ's rule).
    back.send_with_receipt(
        "SUBSCRIBE",
        &[("id", "keep"), ("destination", &topic), ("durable", "true")],
        b"",
    );
    let message = back.expect_frame("MESSAGE");
    assert_eq!(message.body, b"while away");
    assert_eq!(message.header("subscription"), Some("keep"));
    assert_eq!(message.header("destination"), Some(topic.as_str()));
}

#[test]
fn unsubscribe_with_durable_ends_a_durable_subscription() {
    let broker = broker();
    let topic = format!("/topic/{}", unique("ended"));
    let mut client = Raw::login_12(broker.stomp_addr());
    let durable = [
        ("id", "gone"),
        ("destination", topic.as_str()),
        ("durable", "true"),
    ];
    client.send_with_receipt("SUBSCRIBE", &durable, b"");
    client.send_with_receipt("UNSUBSCRIBE", &[("id", "gone"), ("durable", "true")], b"");
    client.send_with_receipt("SEND", &[("destination", &topic)], b"to nobody");
    client.send_with_receipt("SUBSCRIBE", &durable, b"");
    client.expect_silence();
}

#[test]
fn persistent_sends_before_a_receipted_disconnect_survive_kill_9_and_the_connection_closes() {
    let mut broker = broker();
    let queue = format!("/queue/{}", unique("bye"));
    let mut client = Raw::login_12(broker.stomp_addr());
    for i in 0..20 {
        // No receipt of their own: only DISCONNECT's receipt vouches for them.
        let body = format!("persistent {i}");
        client.send_frame(
            "SEND",
            &[("destination", &queue), ("persistent", "true")],
            body.as_bytes(),
        );
    }
    client.send_frame("DISCONNECT", &[("receipt", "bye")], b"");
    let receipt = client.expect_frame("RECEIPT");
    assert_eq!(receipt.header("receipt-id"), Some("bye"));
    let after = client.expect_closed();
    assert!(
        after.is_empty(),
        "nothing follows the DISCONNECT receipt: {after:?}"
    );
    broker.kill9();
    broker.restart();
    let mut client = Raw::login_12(broker.stomp_addr());
    client.subscribe("s", &queue, "client-individual");
    for i in 0..20 {
        let message = client.expect_frame("MESSAGE");
        assert_eq!(
            String::from_utf8_lossy(&message.body),
            format!("persistent {i}")
        );
        client.send_frame("ACK", &[("id", message.expect_header("ack"))], b"");
    }
    client.expect_silence();
}
