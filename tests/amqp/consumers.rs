//! Consumers: prefetch, round-robin, cancel, exclusivity, acknowledgements and redelivery.

use crate::support::*;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRecoverOptions, BasicRejectOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use rosetta_tests::raw::{method, Args, RawConnection};
use rosetta_tests::{shared_broker, Broker};
use std::collections::BTreeSet;
use std::sync::Arc;

fn broker() -> Arc<Broker> {
    shared_broker("amqp-consumers")
}

fn bodies(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("m{i}")).collect()
}

async fn publish_n(channel: &lapin::Channel, queue: &str, n: usize) {
    for body in bodies(n) {
        publish(channel, "", queue, &body).await;
    }
}

#[test]
fn prefetch_count_limits_unacked_deliveries_until_an_ack() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let publisher = client.confirm_channel().await;
        let queue = unique("c.prefetch");
        declare_queue(&publisher, &queue).await;
        publish_n(&publisher, &queue, 10).await;

        let channel = client.channel().await;
        channel
            .basic_qos(3, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = consume(&channel, &queue, false).await;
        let first = next_n(&mut consumer, 3).await;
        assert_eq!(
            first.iter().map(text).collect::<Vec<_>>(),
            vec!["m1", "m2", "m3"]
        );
        assert_quiet(&mut consumer).await;

        first[0]
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        let fourth = next(&mut consumer).await;
        assert_eq!(text(&fourth), "m4");
        assert_quiet(&mut consumer).await;
        assert_eq!(message_count(&client, &queue).await, 6);
    });
}

#[test]
fn per_consumer_prefetch_applies_to_each_consumer_separately() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let publisher = client.confirm_channel().await;
        let q1 = unique("c.per-consumer");
        let q2 = unique("c.per-consumer");
        declare_queue(&publisher, &q1).await;
        declare_queue(&publisher, &q2).await;
        publish_n(&publisher, &q1, 5).await;
        publish_n(&publisher, &q2, 5).await;

        let channel = client.channel().await;
        channel
            .basic_qos(2, BasicQosOptions { global: false })
            .await
            .expect("qos");
        let mut c1 = consume(&channel, &q1, false).await;
        let mut c2 = consume(&channel, &q2, false).await;
        next_n(&mut c1, 2).await;
        next_n(&mut c2, 2).await;
        assert_quiet(&mut c1).await;
        assert_quiet(&mut c2).await;
    });
}

#[test]
fn global_prefetch_is_shared_by_the_channels_consumers() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let publisher = client.confirm_channel().await;
        let q1 = unique("c.global");
        let q2 = unique("c.global");
        declare_queue(&publisher, &q1).await;
        declare_queue(&publisher, &q2).await;
        publish_n(&publisher, &q1, 5).await;
        publish_n(&publisher, &q2, 5).await;

        let channel = client.channel().await;
        channel
            .basic_qos(3, BasicQosOptions { global: true })
            .await
            .expect("qos");
        let mut c1 = consume(&channel, &q1, false).await;
        let mut c2 = consume(&channel, &q2, false).await;
        // Three in flight across both consumers, however they are split.
        let mut received = 0;
        for consumer in [&mut c1, &mut c2] {
            while let Ok(Some(Ok(_))) =
                tokio::time::timeout(QUIET, futures_lite::StreamExt::next(consumer)).await
            {
                received += 1;
            }
        }
        assert_eq!(received, 3);
    });
}

#[test]
fn consumers_on_one_queue_get_messages_round_robin() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let publisher = client.confirm_channel().await;
        let queue = unique("c.round-robin");
        declare_queue(&publisher, &queue).await;
        let ch1 = client.channel().await;
        let ch2 = client.channel().await;
        let mut c1 = consume(&ch1, &queue, true).await;
        let mut c2 = consume(&ch2, &queue, true).await;
        publish_n(&publisher, &queue, 10).await;
        let got1: Vec<String> = next_n(&mut c1, 5).await.iter().map(text).collect();
        let got2: Vec<String> = next_n(&mut c2, 5).await.iter().map(text).collect();
        assert_quiet(&mut c1).await;
        assert_quiet(&mut c2).await;
        let all: BTreeSet<String> = got1.iter().chain(got2.iter()).cloned().collect();
        assert_eq!(all, bodies(10).into_iter().collect::<BTreeSet<_>>());
        // Each consumer sees its share in publish order.
        let mut sorted1 = got1.clone();
        sorted1.sort_by_key(|b| b[1..].parse::<u32>().unwrap_or(0));
        assert_eq!(got1, sorted1);
    });
}

#[test]
fn basic_cancel_stops_deliveries_and_leaves_messages_queued() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let publisher = client.confirm_channel().await;
        let queue = unique("c.cancel");
        declare_queue(&publisher, &queue).await;
        let channel = client.channel().await;
        let mut consumer = consume(&channel, &queue, true).await;
        publish_all(&publisher, &queue, &["before"]).await;
        assert_eq!(text(&next(&mut consumer).await), "before");
        channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await
            .expect("basic.cancel");
        assert_cancelled(&mut consumer).await;
        publish_all(&publisher, &queue, &["after"]).await;
        assert_eq!(queue_counts(&client, &queue).await, Some((1, 0)));
    });
}

#[test]
fn deleting_a_queue_cancels_its_consumers_with_a_notification() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let admin = client.channel().await;
        let queue = unique("c.cancel-notify");
        declare_queue(&admin, &queue).await;
        let channel = client.channel().await;
        let mut consumer = consume(&channel, &queue, false).await;
        admin
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("queue.delete");
        // The broker sends basic.cancel (consumer_cancel_notify); the stream ends cleanly.
        assert_cancelled(&mut consumer).await;
        // The channel stays open.
        assert!(channel.status().connected());
        declare_queue(&channel, &unique("c.after-cancel")).await;
    });
}

#[test]
fn exclusive_consumer_blocks_other_consumers_with_access_refused() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let queue = unique("c.exclusive");
        declare_queue(&channel, &queue).await;
        let _exclusive = consume_with(
            &channel,
            &queue,
            BasicConsumeOptions {
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await;
        let other = client.channel().await;
        let result = other
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_code(result, code::ACCESS_REFUSED);
    });
}

#[test]
fn exclusive_consume_is_refused_while_another_consumer_exists() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let queue = unique("c.exclusive-late");
        declare_queue(&channel, &queue).await;
        let _plain = consume(&channel, &queue, false).await;
        let other = client.channel().await;
        let result = other
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        assert_code(result, code::ACCESS_REFUSED);
    });
}

/// Spoken on the raw wire: lapin keeps its own table of consumers by tag and has reported the
/// second consume as Ok without the broker's answer reaching the test.
#[test]
fn duplicate_consumer_tag_on_a_channel_is_not_allowed() {
    let broker = broker();
    let queue = unique("c.dup-tag");
    let mut raw = RawConnection::connect(broker.amqp_addr()).expect("connect");
    raw.handshake().expect("handshake");
    raw.open_channel(1).expect("channel.open");
    raw.send_method(
        1,
        method::QUEUE_DECLARE,
        Args::new()
            .u16(0)
            .shortstr(&queue)
            .bits(&[false, false, false, true, false])
            .table(&Vec::new()),
    )
    .expect("queue.declare");
    raw.expect_method(method::QUEUE_DECLARE_OK, WAIT)
        .expect("queue.declare-ok");
    let consume = || {
        Args::new()
            .u16(0)
            .shortstr(&queue)
            .shortstr("same-tag")
            .bits(&[false, false, false, false])
            .table(&Vec::new())
    };
    raw.send_method(1, method::BASIC_CONSUME, consume())
        .expect("first basic.consume");
    raw.expect_method(method::BASIC_CONSUME_OK, WAIT)
        .expect("first consume-ok");
    raw.send_method(1, method::BASIC_CONSUME, consume())
        .expect("second basic.consume");
    // RabbitMQ: connection error 530 NOT_ALLOWED ("attempt to reuse consumer tag").
    let close = raw.expect_connection_close(WAIT).expect("connection.close");
    assert_eq!(close.reply_code, code::NOT_ALLOWED, "{close:?}");
    assert_eq!((close.class_id, close.method_id), method::BASIC_CONSUME);
    assert!(close.reply_text.contains("same-tag"), "{close:?}");
}

#[test]
fn nack_with_requeue_redelivers_in_original_order_flagged_redelivered() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let publisher = client.confirm_channel().await;
        let queue = unique("c.nack-requeue");
        declare_queue(&publisher, &queue).await;
        publish_n(&publisher, &queue, 3).await;
        let channel = client.channel().await;
        let mut consumer = consume(&channel, &queue, false).await;
        let first = next_n(&mut consumer, 3).await;
        assert!(first.iter().all(|d| !d.redelivered));
        channel
            .basic_nack(
                first[2].delivery_tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await
            .expect("nack");
        let again = next_n(&mut consumer, 3).await;
        assert_eq!(
            again.iter().map(text).collect::<Vec<_>>(),
            vec!["m1", "m2", "m3"]
        );
        assert!(
            again.iter().all(|d| d.redelivered),
            "redelivered flag missing"
        );
    });
}

#[test]
fn reject_with_requeue_puts_the_message_back_at_its_place() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("c.reject-requeue");
        declare_queue(&channel, &queue).await;
        publish_n(&channel, &queue, 3).await;
        let message = get(&channel, &queue, false).await.expect("m1");
        assert_eq!(text(&message.delivery), "m1");
        message
            .delivery
            .acker
            .reject(BasicRejectOptions { requeue: true })
            .await
            .expect("reject");
        assert_eq!(
            drain_flagged(&channel, &queue).await,
            vec![
                ("m1".to_string(), true),
                ("m2".to_string(), false),
                ("m3".to_string(), false)
            ]
        );
    });
}

async fn hold_three_of_four(
    client: &Client,
    queue: &str,
) -> (lapin::Channel, Vec<lapin::message::Delivery>) {
    let publisher = client.confirm_channel().await;
    declare_queue(&publisher, queue).await;
    publish_n(&publisher, queue, 4).await;
    let channel = client.channel().await;
    channel
        .basic_qos(3, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = consume(&channel, queue, false).await;
    let held = next_n(&mut consumer, 3).await;
    (channel, held)
}

#[test]
fn closing_a_channel_requeues_its_unacked_messages_in_order() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let queue = unique("c.channel-close");
        let (channel, held) = hold_three_of_four(&client, &queue).await;
        assert_eq!(
            held.iter().map(text).collect::<Vec<_>>(),
            vec!["m1", "m2", "m3"]
        );
        channel
            .close(200, "bye".into())
            .await
            .expect("channel.close");
        wait_for_count(&client, &queue, 4).await;
        let reader = client.channel().await;
        assert_eq!(
            drain_flagged(&reader, &queue).await,
            vec![
                ("m1".to_string(), true),
                ("m2".to_string(), true),
                ("m3".to_string(), true),
                ("m4".to_string(), false)
            ]
        );
    });
}

#[test]
fn closing_a_connection_requeues_its_unacked_messages_in_order() {
    let broker = broker();
    run(async {
        let consumer_client = connect(&broker).await;
        let queue = unique("c.connection-close");
        let (_channel, _held) = hold_three_of_four(&consumer_client, &queue).await;
        consumer_client.close().await;
        let client = connect(&broker).await;
        wait_for_count(&client, &queue, 4).await;
        let reader = client.channel().await;
        assert_eq!(
            drain_flagged(&reader, &queue).await,
            vec![
                ("m1".to_string(), true),
                ("m2".to_string(), true),
                ("m3".to_string(), true),
                ("m4".to_string(), false)
            ]
        );
    });
}

#[test]
fn dropped_tcp_connection_requeues_unacked_messages() {
    let broker = broker();
    run(async {
        let queue = unique("c.tcp-drop");
        {
            let client = connect(&broker).await;
            let publisher = client.confirm_channel().await;
            declare_queue(&publisher, &queue).await;
            publish_n(&publisher, &queue, 2).await;
        }
        // A raw client takes a message and vanishes without closing anything.
        {
            use rosetta_tests::raw::{Args, RawConnection, REPLY_DEADLINE};
            let mut raw = RawConnection::connect(broker.amqp_addr()).expect("tcp");
            raw.handshake().expect("handshake");
            raw.open_channel(1).expect("channel");
            // basic.get: reserved u16, queue shortstr, no-ack bit
            raw.send_method(
                1,
                (60, 70),
                Args::new().u16(0).shortstr(&queue).bits(&[false]),
            )
            .expect("basic.get");
            let reply = raw.read_method(REPLY_DEADLINE).expect("get-ok");
            assert_eq!(reply.method_id(), Some((60, 71)), "expected basic.get-ok");
        }
        let client = connect(&broker).await;
        wait_for_count(&client, &queue, 2).await;
        let reader = client.channel().await;
        assert_eq!(
            drain_flagged(&reader, &queue).await,
            vec![("m1".to_string(), true), ("m2".to_string(), false)]
        );
    });
}

#[test]
fn ack_with_multiple_settles_every_earlier_delivery() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let publisher = client.confirm_channel().await;
        let queue = unique("c.ack-multiple");
        declare_queue(&publisher, &queue).await;
        publish_n(&publisher, &queue, 5).await;
        let channel = client.channel().await;
        let mut consumer = consume(&channel, &queue, false).await;
        let held = next_n(&mut consumer, 5).await;
        channel
            .basic_ack(held[2].delivery_tag, BasicAckOptions { multiple: true })
            .await
            .expect("ack multiple");
        channel.close(200, "bye".into()).await.expect("close");
        wait_for_count(&client, &queue, 2).await;
        let reader = client.channel().await;
        assert_eq!(
            drain_flagged(&reader, &queue).await,
            vec![("m4".to_string(), true), ("m5".to_string(), true)]
        );
    });
}

#[test]
fn nack_with_multiple_and_no_requeue_discards_every_earlier_delivery() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let publisher = client.confirm_channel().await;
        let queue = unique("c.nack-multiple");
        declare_queue(&publisher, &queue).await;
        publish_n(&publisher, &queue, 4).await;
        let channel = client.channel().await;
        let mut consumer = consume(&channel, &queue, false).await;
        let held = next_n(&mut consumer, 4).await;
        channel
            .basic_nack(
                held[2].delivery_tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: false,
                },
            )
            .await
            .expect("nack multiple");
        channel.close(200, "bye".into()).await.expect("close");
        wait_for_count(&client, &queue, 1).await;
        let reader = client.channel().await;
        assert_eq!(drain(&reader, &queue).await, vec!["m4"]);
    });
}

#[test]
fn basic_recover_with_requeue_redelivers_unacked_messages() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("c.recover");
        declare_queue(&channel, &queue).await;
        publish_n(&channel, &queue, 3).await;
        let first = get(&channel, &queue, false).await.expect("m1");
        let second = get(&channel, &queue, false).await.expect("m2");
        assert_eq!(
            (text(&first.delivery), text(&second.delivery)),
            ("m1".into(), "m2".into())
        );
        channel
            .basic_recover(BasicRecoverOptions { requeue: true })
            .await
            .expect("basic.recover");
        wait_for_count(&client, &queue, 3).await;
        assert_eq!(
            drain_flagged(&channel, &queue).await,
            vec![
                ("m1".to_string(), true),
                ("m2".to_string(), true),
                ("m3".to_string(), false)
            ]
        );
    });
}

#[test]
fn acking_an_unknown_delivery_tag_closes_the_channel_with_precondition_failed() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        channel
            .basic_ack(999, BasicAckOptions::default())
            .await
            .expect("ack is asynchronous");
        assert_eq!(client.next_error_code().await, code::PRECONDITION_FAILED);
    });
}

#[test]
fn no_ack_consumer_messages_are_gone_once_delivered() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let publisher = client.confirm_channel().await;
        let queue = unique("c.no-ack");
        declare_queue(&publisher, &queue).await;
        publish_n(&publisher, &queue, 3).await;
        let channel = client.channel().await;
        let mut consumer = consume(&channel, &queue, true).await;
        let got = next_n(&mut consumer, 3).await;
        assert_eq!(
            got.iter().map(text).collect::<Vec<_>>(),
            vec!["m1", "m2", "m3"]
        );
        channel.close(200, "bye".into()).await.expect("close");
        assert_eq!(queue_counts(&client, &queue).await, Some((0, 0)));
    });
}

#[test]
fn deliveries_carry_exchange_routing_key_and_increasing_tags() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let publisher = client.confirm_channel().await;
        let queue = unique("c.tags");
        declare_queue(&publisher, &queue).await;
        publish_n(&publisher, &queue, 3).await;
        let channel = client.channel().await;
        let mut consumer = consume(&channel, &queue, false).await;
        let got = next_n(&mut consumer, 3).await;
        let tags: Vec<u64> = got.iter().map(|d| d.delivery_tag).collect();
        assert_eq!(tags, vec![1, 2, 3], "delivery tags start at 1 per channel");
        for delivery in &got {
            assert_eq!(delivery.exchange.as_str(), "");
            assert_eq!(delivery.routing_key.as_str(), queue);
        }
    });
}
