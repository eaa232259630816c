//! Persistence: a RECEIPT for a persistent SEND means the message survives a crash.

use rosetta_tests::Broker;

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

/// Reads frames until the RECEIPT for `receipt`, skipping any others (deliveries).
fn until_receipt(client: &mut Raw, receipt: &str) {
    loop {
        let frame = client.read_frame();
        match frame.command.as_str() {
            "RECEIPT" if frame.header("receipt-id") == Some(receipt) => return,
            "MESSAGE" => {}
            _ => panic!("expected RECEIPT {receipt}, got {frame:?}"),
        }
    }
}

/// An AMQP channel to the broker (the connection must be kept while the channel is used).
async fn amqp_channel(broker: &Broker) -> (lapin::Connection, lapin::Channel) {
    let conn =
        lapin::Connection::connect(&broker.amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("AMQP connect");
    let channel = conn.create_channel().await.expect("channel");
    (conn, channel)
}

#[test]
fn an_amqp_queue_named_like_a_durable_subscription_survives_a_restart_and_a_durable_unsubscribe() {
    let mut broker = broker();
    // RabbitMQ's name for durable subscription `declared` on `/topic/declared.t`: base64url of
    // Erlang's md5(term_to_binary({"declared.t", "declared"})).
    let id = "declared";
    let queue = "stomp-subscription-gWOLk4oDP-PVjwPMMf6RrQ".to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (_conn, channel) = amqp_channel(&broker).await;
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        channel
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("queue.declare");
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                b"kept",
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "{confirm:?}");
    });
    broker.kill9();
    broker.restart();

    // A durable subscription with that id reads the queue, then ends for good: STOMP did not
    // make the queue, so the queue stays, and the message it was handed goes back.
    let mut client = Raw::login_12(broker.stomp_addr());
    let topic = "/topic/declared.t";
    client.send_frame(
        "SUBSCRIBE",
        &[
            ("id", id),
            ("destination", topic),
            ("durable", "true"),
            ("ack", "client"),
            ("receipt", "subscribed"),
        ],
        b"",
    );
    until_receipt(&mut client, "subscribed");
    client.send_frame(
        "UNSUBSCRIBE",
        &[("id", id), ("durable", "true"), ("receipt", "unsubscribed")],
        b"",
    );
    until_receipt(&mut client, "unsubscribed");
    client.send_with_receipt("DISCONNECT", &[], b"");
    drop(client);

    runtime.block_on(async {
        let (_conn, channel) = amqp_channel(&broker).await;
        // The message goes back to the queue once the STOMP connection is gone.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let got = channel
                .basic_get(
                    queue.as_str().into(),
                    lapin::options::BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap_or_else(|e| panic!("{queue} is gone: {e:?}"));
            if let Some(got) = got {
                assert_eq!(&got.delivery.data[..], b"kept");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the message never came back to {queue}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
}
