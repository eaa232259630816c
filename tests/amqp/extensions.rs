//! RabbitMQ's AMQP extensions that applications rely on: consumer priorities (`x-priority`),
//! direct reply-to (`amq.rabbitmq.reply-to`), `connection.update-secret`, and queue types
//! (`x-queue-type`) with the queue arguments a classic queue here cannot honour.

use crate::support::*;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use rosetta_tests::raw::{Args, RawConnection, REPLY_DEADLINE};
use rosetta_tests::{shared_broker, Broker};
use std::sync::Arc;

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

fn broker() -> Arc<Broker> {
    shared_broker("amqp-extensions")
}

fn priority(p: i32) -> FieldTable {
    table(&[("x-priority", int(p))])
}

fn ack_mode() -> BasicConsumeOptions {
    BasicConsumeOptions::default()
}

fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    }
}

fn texts(deliveries: &[lapin::message::Delivery]) -> Vec<String> {
    deliveries.iter().map(text).collect()
}

/// A channel whose consumers each hold at most `prefetch` unacknowledged deliveries.
async fn channel_with_prefetch(client: &Client, prefetch: u16) -> Channel {
    let channel = client.channel().await;
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await
        .expect("basic.qos");
    channel
}

/// Publishes and waits for the confirm (or the channel error) without asserting either.
async fn try_publish(
    channel: &Channel,
    routing_key: &str,
    options: BasicPublishOptions,
    properties: BasicProperties,
) -> Result<lapin::Confirmation, lapin::Error> {
    let confirm = channel
        .basic_publish(
            "".into(),
            routing_key.into(),
            options,
            b"request",
            properties,
        )
        .await?;
    tokio::time::timeout(WAIT, confirm)
        .await
        .expect("no confirm or channel error in time")
}

#[test]
fn a_lower_priority_consumer_gets_messages_only_while_the_higher_one_is_at_its_prefetch_limit() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let publisher = client.confirm_channel().await;
        let queue = unique("x.priority");
        declare_queue(&publisher, &queue).await;

        // The low consumer subscribes first, so arrival order cannot explain the result.
        let low_channel = channel_with_prefetch(&client, 100).await;
        let mut low = consume_with(&low_channel, &queue, ack_mode(), priority(-5)).await;
        let high_channel = channel_with_prefetch(&client, 3).await;
        let mut high = consume_with(&high_channel, &queue, ack_mode(), priority(10)).await;

        publish_all(&publisher, &queue, &["m1", "m2", "m3"]).await;
        let first = next_n(&mut high, 3).await;
        assert_eq!(texts(&first), ["m1", "m2", "m3"]);
        assert_quiet(&mut low).await;

        // The high consumer is blocked now: the rest go to the low one.
        publish_all(&publisher, &queue, &["m4", "m5"]).await;
        assert_eq!(texts(&next_n(&mut low, 2).await), ["m4", "m5"]);
        assert_quiet(&mut high).await;

        // One ack makes the high consumer active again, and it is preferred again. The ack and
        // the next publish share the connection, so the broker handles them in that order.
        first[0]
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        publish_all(&publisher, &queue, &["m6"]).await;
        assert_eq!(text(&next(&mut high).await), "m6");
        assert_quiet(&mut low).await;
        client.close().await;
    });
}

#[test]
fn consumers_of_the_highest_priority_share_round_robin_and_lower_ones_wait() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let publisher = client.confirm_channel().await;
        let queue = unique("x.priority-rr");
        declare_queue(&publisher, &queue).await;
        let channel = client.channel().await;
        let mut a = consume_with(&channel, &queue, no_ack(), priority(5)).await;
        let mut b = consume_with(&channel, &queue, no_ack(), priority(5)).await;
        let mut default = consume_with(&channel, &queue, no_ack(), FieldTable::default()).await;

        publish_all(&publisher, &queue, &["m1", "m2", "m3", "m4"]).await;
        let got_a = texts(&next_n(&mut a, 2).await);
        let got_b = texts(&next_n(&mut b, 2).await);
        let mut all = [got_a.clone(), got_b.clone()].concat();
        all.sort();
        assert_eq!(all, ["m1", "m2", "m3", "m4"]);
        assert_ne!(got_a, got_b, "each takes its turn");
        assert_quiet(&mut default).await;
        client.close().await;
    });
}

#[test]
fn a_priority_that_is_not_an_integer_is_refused() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let queue = unique("x.priority-bad");
        declare_queue(&channel, &queue).await;
        let result = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                ack_mode(),
                table(&[("x-priority", long_str("high"))]),
            )
            .await;
        assert_code(result, code::PRECONDITION_FAILED);
    });
}

/// An RPC server on its own connection: answers each request on `queue` with `reply:<body>`
/// to the request's reply-to, keeping the correlation id; returns the reply-to it saw.
async fn serve_one(server: &Client, queue: &str) -> String {
    let channel = server.confirm_channel().await;
    let mut requests = consume(&channel, queue, false).await;
    let request = next(&mut requests).await;
    let reply_to = request
        .properties
        .reply_to()
        .as_ref()
        .map(|s| s.to_string())
        .expect("request has a reply-to");
    let mut properties = BasicProperties::default();
    if let Some(id) = request.properties.correlation_id() {
        properties = properties.with_correlation_id(id.clone());
    }
    let body = format!("reply:{}", text(&request));
    publish_props(&channel, "", &reply_to, body.as_bytes(), properties).await;
    request
        .acker
        .ack(BasicAckOptions::default())
        .await
        .expect("ack request");
    reply_to
}

#[test]
fn direct_reply_to_carries_an_rpc_reply_between_two_connections() {
    let broker = broker();
    run(async {
        let server = connect(&broker).await;
        let rpc = unique("x.rpc");
        declare_queue(&server.channel().await, &rpc).await;

        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let mut replies = consume_with(&channel, REPLY_TO, no_ack(), FieldTable::default()).await;
        let properties = BasicProperties::default()
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id("call-1".into());
        let confirmation = try_publish(&channel, &rpc, BasicPublishOptions::default(), properties)
            .await
            .expect("request published");
        assert!(confirmation.is_ack(), "{confirmation:?}");

        let reply_to = serve_one(&server, &rpc).await;
        assert!(
            reply_to.starts_with("amq.rabbitmq.reply-to.") && reply_to.len() > REPLY_TO.len() + 16,
            "reply-to rewritten to an address with a token: {reply_to}"
        );

        let reply = next(&mut replies).await;
        assert_eq!(text(&reply), "reply:request");
        assert_eq!(
            reply
                .properties
                .correlation_id()
                .as_ref()
                .map(|s| s.as_str()),
            Some("call-1")
        );
        assert_eq!(reply.routing_key.as_str(), reply_to);
        assert_quiet(&mut replies).await;

        // The address is declarable passively while its consumer lasts, as with RabbitMQ.
        let declared = server
            .channel()
            .await
            .queue_declare(
                reply_to.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare of the address");
        assert_eq!(declared.consumer_count(), 1);
        client.close().await;
        server.close().await;
    });
}

#[test]
fn consuming_direct_replies_with_acknowledgements_is_refused() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let result = channel
            .basic_consume(
                REPLY_TO.into(),
                "".into(),
                ack_mode(),
                FieldTable::default(),
            )
            .await;
        assert_code(result, code::PRECONDITION_FAILED);
    });
}

#[test]
fn a_request_naming_direct_reply_to_without_a_reply_consumer_is_refused() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let queue = unique("x.rpc-no-consumer");
        let channel = client.confirm_channel().await;
        declare_queue(&channel, &queue).await;
        let properties = BasicProperties::default().with_reply_to(REPLY_TO.into());
        let result =
            try_publish(&channel, &queue, BasicPublishOptions::default(), properties).await;
        assert_code(result, code::PRECONDITION_FAILED);
        assert_eq!(message_count(&client, &queue).await, 0);
    });
}

#[test]
fn a_reply_to_a_vanished_consumer_is_dropped_or_returned_when_mandatory() {
    let broker = broker();
    run(async {
        let server = connect(&broker).await;
        let rpc = unique("x.rpc-vanished");
        declare_queue(&server.channel().await, &rpc).await;

        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let replies = consume_with(&channel, REPLY_TO, no_ack(), FieldTable::default()).await;
        let properties = BasicProperties::default().with_reply_to(REPLY_TO.into());
        try_publish(&channel, &rpc, BasicPublishOptions::default(), properties)
            .await
            .expect("request published");
        let mut requests = consume(&server.channel().await, &rpc, true).await;
        let request = next(&mut requests).await;
        let reply_to = request.properties.reply_to().clone().expect("reply-to");

        channel
            .basic_cancel(replies.tag(), BasicCancelOptions::default())
            .await
            .expect("basic.cancel");

        let responder = server.confirm_channel().await;
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirmation = try_publish(
            &responder,
            reply_to.as_str(),
            mandatory,
            BasicProperties::default(),
        )
        .await
        .expect("reply published");
        assert!(confirmation.is_ack(), "{confirmation:?}");
        let returned = confirmation
            .take_message()
            .expect("a mandatory reply to a gone consumer is returned");
        assert_eq!(returned.reply_code, code::NO_ROUTE);
        let confirmation = try_publish(
            &responder,
            reply_to.as_str(),
            BasicPublishOptions::default(),
            BasicProperties::default(),
        )
        .await
        .expect("reply published");
        assert!(confirmation.is_ack(), "{confirmation:?}");
        assert!(
            confirmation.take_message().is_none(),
            "dropped, not returned"
        );

        let gone = server
            .channel()
            .await
            .queue_declare(
                reply_to.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        assert_code(gone, code::NOT_FOUND);
        client.close().await;
        server.close().await;
    });
}

/// `connection.update-secret` (10.70) with `secret`, on a raw connection past the handshake.
fn update_secret(broker: &Broker, secret: &str) -> RawConnection {
    let mut raw = RawConnection::connect(broker.amqp_addr()).expect("connect");
    raw.handshake().expect("handshake");
    raw.send_method(
        0,
        (10, 70),
        Args::new()
            .longstr(secret.as_bytes())
            .shortstr("token refresh"),
    )
    .expect("connection.update-secret");
    raw
}

#[test]
fn update_secret_with_the_users_password_is_answered_and_the_connection_carries_on() {
    let broker = broker();
    let mut raw = update_secret(&broker, "guest");
    let ok = raw
        .expect_method((10, 71), REPLY_DEADLINE)
        .expect("connection.update-secret-ok");
    assert_eq!(ok.channel, 0);
    raw.open_channel(1).expect("the connection is still usable");
}

#[test]
fn update_secret_with_a_wrong_secret_closes_the_connection_with_access_refused() {
    let broker = broker();
    let mut raw = update_secret(&broker, "not-the-password");
    let close = raw
        .expect_connection_close(REPLY_DEADLINE)
        .expect("connection.close");
    assert_eq!(close.reply_code, code::ACCESS_REFUSED);
    assert_eq!((close.class_id, close.method_id), (10, 70));
    assert!(close.reply_text.starts_with("ACCESS_REFUSED"), "{close:?}");
}

async fn declare_typed(
    channel: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    queue_type: &str,
) -> Result<lapin::Queue, lapin::Error> {
    channel
        .queue_declare(
            name.into(),
            options,
            table(&[("x-queue-type", long_str(queue_type))]),
        )
        .await
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

#[test]
fn classic_is_the_only_queue_type_unless_configured() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let classic = unique("x.classic");
        declare_typed(&channel, &classic, durable(), "classic")
            .await
            .expect("classic accepted");
        for queue_type in ["quorum", "stream", "mirrored"] {
            let channel = client.channel().await;
            let result = declare_typed(&channel, &unique("x.typed"), durable(), queue_type).await;
            let error = result.expect_err(queue_type);
            assert_eq!(
                code_of(&error),
                Some(code::PRECONDITION_FAILED),
                "{error:?}"
            );
            let text = format!("{error:?}");
            assert!(text.contains(queue_type), "{text}");
        }
    });
}

#[test]
fn queue_arguments_a_classic_queue_cannot_honour_are_refused_and_hints_accepted() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        for (name, value) in [
            ("x-delivery-limit", int(5)),
            ("x-consumer-timeout", int(60_000)),
            ("x-max-age", long_str("7D")),
            ("x-queue-mode", long_str("sideways")),
            ("x-dead-letter-strategy", long_str("at-least-once")),
        ] {
            let channel = client.channel().await;
            let result = channel
                .queue_declare(
                    unique("x.args").as_str().into(),
                    QueueDeclareOptions::default(),
                    table(&[(name, value)]),
                )
                .await;
            assert_code(result, code::PRECONDITION_FAILED);
        }
        let channel = client.channel().await;
        declare_with(
            &channel,
            &unique("x.hints"),
            table(&[
                ("x-queue-mode", long_str("lazy")),
                ("x-queue-version", int(2)),
                ("x-queue-leader-locator", long_str("client-local")),
            ]),
        )
        .await;
    });
}

#[test]
fn a_configured_broker_takes_durable_quorum_queues_as_classic_ones() {
    let broker = Broker::start_with("[amqp]\naccept_queue_types = [\"quorum\"]\n");
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("x.quorum");
        declare_typed(&channel, &queue, durable(), "quorum")
            .await
            .expect("durable quorum queue accepted");
        publish_persistent(&channel, &queue, "kept").await;
        assert_eq!(drain(&channel, &queue).await, ["kept"]);

        let refused = [
            QueueDeclareOptions::default(),
            QueueDeclareOptions {
                exclusive: true,
                ..durable()
            },
            QueueDeclareOptions {
                auto_delete: true,
                ..durable()
            },
        ];
        for options in refused {
            let channel = client.channel().await;
            let result = declare_typed(&channel, &unique("x.quorum-bad"), options, "quorum").await;
            assert_code(result, code::PRECONDITION_FAILED);
        }
        let channel = client.channel().await;
        let result = declare_typed(&channel, &unique("x.stream"), durable(), "stream").await;
        assert_code(result, code::PRECONDITION_FAILED);
        client.close().await;
    });
}

#[test]
fn the_reply_consumer_address_routes_only_from_the_default_exchange() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let mut replies = consume_with(&channel, REPLY_TO, no_ack(), FieldTable::default()).await;
        let rpc = unique("x.rpc-exchange");
        declare_queue(&channel, &rpc).await;
        let properties = BasicProperties::default().with_reply_to(REPLY_TO.into());
        try_publish(&channel, &rpc, BasicPublishOptions::default(), properties)
            .await
            .expect("request published");
        let request = get(&channel, &rpc, true).await.expect("request");
        let reply_to: ShortString = request
            .delivery
            .properties
            .reply_to()
            .clone()
            .expect("reply-to");
        let confirmation = publish_props(
            &channel,
            "amq.direct",
            reply_to.as_str(),
            b"wrong way",
            BasicProperties::default(),
        )
        .await;
        assert!(confirmation.is_ack());
        assert_quiet(&mut replies).await;
        publish(&channel, "", reply_to.as_str(), "right way").await;
        assert_eq!(text(&next(&mut replies).await), "right way");
        client.close().await;
    });
}

/// One STOMP frame over a plain socket, and the next frame the broker sends back.
fn stomp_exchange(stream: &mut std::net::TcpStream, frame: &str) -> String {
    use std::io::{Read, Write};
    stream
        .write_all(frame.as_bytes())
        .expect("write STOMP frame");
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        stream.read_exact(&mut byte).expect("read STOMP frame");
        match byte[0] {
            0 => break,
            // Heart-beats between frames.
            b'\n' if reply.is_empty() => {}
            b => reply.push(b),
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn a_stomp_responder_replies_to_an_amqp_requester_through_direct_reply_to() {
    let broker = Broker::start_with("[stomp]\nenabled = true\nlisten = \"127.0.0.1:0\"\n");
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let mut replies = consume_with(&channel, REPLY_TO, no_ack(), FieldTable::default()).await;
        let rpc = unique("x.rpc-stomp");
        declare_queue(&channel, &rpc).await;
        let properties = BasicProperties::default().with_reply_to(REPLY_TO.into());
        try_publish(&channel, &rpc, BasicPublishOptions::default(), properties)
            .await
            .expect("request published");
        let request = get(&channel, &rpc, true).await.expect("request");
        let reply_to = request
            .delivery
            .properties
            .reply_to()
            .clone()
            .expect("reply-to");

        let addr = broker.stomp_addr();
        let destination = format!("/queue/{}", reply_to.as_str());
        tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).expect("STOMP connect");
            stream.set_read_timeout(Some(WAIT)).expect("read timeout");
            let connected = stomp_exchange(
                &mut stream,
                "CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0",
            );
            assert!(connected.starts_with("CONNECTED"), "{connected}");
            let receipt = stomp_exchange(
                &mut stream,
                &format!("SEND\ndestination:{destination}\nreceipt:r1\n\nfrom stomp\0"),
            );
            assert!(receipt.starts_with("RECEIPT"), "{receipt}");
        })
        .await
        .expect("STOMP responder");
        assert_eq!(text(&next(&mut replies).await), "from stomp");
        client.close().await;
    });
}
