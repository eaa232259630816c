//! Queue declaration, arguments (TTL, expiry, limits, priorities, single active consumer),
//! purge, delete, basic.get. Dead-lettering is in `dead_letter.rs`.

use crate::support::*;
use lapin::options::{
    BasicCancelOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use rosetta_tests::{shared_broker, Broker};
use std::sync::Arc;
use std::time::Duration;

fn broker() -> Arc<Broker> {
    shared_broker("amqp-queues")
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    }
}

#[test]
fn server_named_queue_gets_an_amq_gen_name() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = declare(
            &channel,
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
        let name = queue.name().as_str().to_string();
        assert!(name.starts_with("amq.gen-"), "{name}");
        assert!(name.len() > "amq.gen-".len(), "{name}");
        publish(&channel, "", &name, "hi").await;
        assert_eq!(drain(&channel, &name).await, vec!["hi"]);
        let other = declare(
            &channel,
            "",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
        assert_ne!(other.name().as_str(), name);
    });
}

#[test]
fn declaring_a_queue_with_the_amq_prefix_is_refused() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let result = channel
            .queue_declare(
                "amq.my-queue".into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_code(result, code::ACCESS_REFUSED);
    });
}

#[test]
fn redeclaring_a_queue_with_different_arguments_fails_with_precondition_failed() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let queue = unique("q.redeclare");
        declare_with(&channel, &queue, table(&[("x-max-length", int(5))])).await;
        declare_with(&channel, &queue, table(&[("x-max-length", int(5))])).await;
        let result = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                table(&[("x-max-length", int(6))]),
            )
            .await;
        assert_code(result, code::PRECONDITION_FAILED);

        let channel = client.channel().await;
        let result = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                table(&[("x-max-length", int(5))]),
            )
            .await;
        assert_code(result, code::PRECONDITION_FAILED);
    });
}

#[test]
fn passive_declare_of_a_missing_queue_fails_with_not_found() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let result = channel
            .queue_declare(
                unique("q.missing").as_str().into(),
                passive(),
                FieldTable::default(),
            )
            .await;
        assert_code(result, code::NOT_FOUND);
    });
}

#[test]
fn exclusive_queue_is_locked_to_its_connection_and_deleted_with_it() {
    let broker = broker();
    run(async {
        let owner = connect(&broker).await;
        let owner_channel = owner.channel().await;
        let queue = unique("q.exclusive");
        declare(
            &owner_channel,
            &queue,
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        )
        .await;

        let other = connect(&broker).await;
        let channel = other.channel().await;
        assert_code(
            channel
                .queue_declare(queue.as_str().into(), passive(), FieldTable::default())
                .await,
            code::RESOURCE_LOCKED,
        );
        let channel = other.channel().await;
        assert_code(
            channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    Default::default(),
                    FieldTable::default(),
                )
                .await,
            code::RESOURCE_LOCKED,
        );
        let channel = other.channel().await;
        assert_code(
            channel
                .basic_get(queue.as_str().into(), Default::default())
                .await,
            code::RESOURCE_LOCKED,
        );
        let channel = other.channel().await;
        assert_code(
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await,
            code::RESOURCE_LOCKED,
        );

        // The owner still uses it.
        publish_all(&owner_channel, &queue, &["mine"]).await;
        assert_eq!(drain(&owner_channel, &queue).await, vec!["mine"]);

        owner.close().await;
        let gone =
            rosetta_tests::eventually(WAIT, || async { !queue_exists(&other, &queue).await }).await;
        assert!(gone, "exclusive queue survived its connection");
    });
}

#[test]
fn auto_delete_queue_is_deleted_after_its_last_consumer_cancels() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let queue = unique("q.auto-delete");
        declare(
            &channel,
            &queue,
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
        let first = consume(&channel, &queue, true).await;
        let second = consume(&channel, &queue, true).await;
        // Never-consumed auto-delete queues stay; so does one with a consumer left.
        channel
            .basic_cancel(first.tag(), BasicCancelOptions::default())
            .await
            .expect("cancel first");
        assert!(
            queue_exists(&client, &queue).await,
            "deleted while a consumer remained"
        );
        channel
            .basic_cancel(second.tag(), BasicCancelOptions::default())
            .await
            .expect("cancel second");
        let gone =
            rosetta_tests::eventually(WAIT, || async { !queue_exists(&client, &queue).await })
                .await;
        assert!(gone, "auto-delete queue survived its last consumer");
    });
}

#[test]
fn queue_message_ttl_expires_messages() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("q.ttl");
        declare_with(&channel, &queue, table(&[("x-message-ttl", int(1500))])).await;
        publish_all(&channel, &queue, &["short-lived"]).await;
        assert_eq!(message_count(&client, &queue).await, 1);
        wait_for_count(&client, &queue, 0).await;
        assert!(get(&channel, &queue, true).await.is_none());
    });
}

#[test]
fn per_message_expiration_drops_only_that_message() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("q.expiration");
        declare_queue(&channel, &queue).await;
        let expiring = BasicProperties::default().with_expiration("300".into());
        publish_props(&channel, "", &queue, b"expiring", expiring).await;
        publish_all(&channel, &queue, &["lasting"]).await;
        wait_for_count(&client, &queue, 1).await;
        assert_eq!(drain(&channel, &queue).await, vec!["lasting"]);
    });
}

#[test]
fn unused_queue_with_x_expires_is_deleted() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let queue = unique("q.expires");
        declare_with(&channel, &queue, table(&[("x-expires", int(300))])).await;
        // Poll less often than the expiry, in case a passive declare counts as use.
        let end = tokio::time::Instant::now() + WAIT;
        let mut gone = false;
        while tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(700)).await;
            if !queue_exists(&client, &queue).await {
                gone = true;
                break;
            }
        }
        assert!(gone, "queue with x-expires=300 still exists after {WAIT:?}");
    });
}

#[test]
fn max_length_drops_the_oldest_messages_by_default() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("q.max-length");
        declare_with(&channel, &queue, table(&[("x-max-length", int(2))])).await;
        publish_all(&channel, &queue, &["1", "2", "3", "4"]).await;
        assert_eq!(message_count(&client, &queue).await, 2);
        assert_eq!(drain(&channel, &queue).await, vec!["3", "4"]);
    });
}

#[test]
fn max_length_with_reject_publish_nacks_new_messages() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("q.reject-publish");
        declare_with(
            &channel,
            &queue,
            table(&[
                ("x-max-length", int(2)),
                ("x-overflow", long_str("reject-publish")),
            ]),
        )
        .await;
        let mut acks = Vec::new();
        for body in ["1", "2", "3"] {
            let confirmation = publish_props(
                &channel,
                "",
                &queue,
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await;
            acks.push(confirmation.is_ack());
        }
        assert_eq!(acks, vec![true, true, false]);
        assert_eq!(drain(&channel, &queue).await, vec!["1", "2"]);
        // Room again: publishes are accepted.
        let confirmation =
            publish_props(&channel, "", &queue, b"4", BasicProperties::default()).await;
        assert!(confirmation.is_ack());
    });
}

#[test]
fn max_length_bytes_drops_the_oldest_messages() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("q.max-bytes");
        declare_with(&channel, &queue, table(&[("x-max-length-bytes", int(10))])).await;
        publish_all(&channel, &queue, &["aaaa", "bbbb", "cccc"]).await;
        assert_eq!(drain(&channel, &queue).await, vec!["bbbb", "cccc"]);
    });
}

#[test]
fn higher_priority_messages_are_delivered_first() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("q.priority");
        declare_with(&channel, &queue, table(&[("x-max-priority", int(10))])).await;
        for (body, priority) in [
            ("p1", Some(1)),
            ("p5a", Some(5)),
            ("p9", Some(9)),
            ("none", None),
            ("p5b", Some(5)),
        ] {
            let mut props = BasicProperties::default();
            if let Some(priority) = priority {
                props = props.with_priority(priority);
            }
            publish_props(&channel, "", &queue, body.as_bytes(), props).await;
        }
        assert_eq!(
            drain(&channel, &queue).await,
            vec!["p9", "p5a", "p5b", "p1", "none"]
        );
    });
}

#[test]
fn single_active_consumer_gets_everything_until_it_cancels() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let publisher = client.confirm_channel().await;
        let queue = unique("q.sac");
        declare_with(
            &publisher,
            &queue,
            table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
        )
        .await;
        let first_channel = client.channel().await;
        let second_channel = client.channel().await;
        let mut first = consume(&first_channel, &queue, false).await;
        let mut second = consume(&second_channel, &queue, false).await;
        publish_all(&publisher, &queue, &["1", "2", "3"]).await;
        for expected in ["1", "2", "3"] {
            let delivery = next(&mut first).await;
            assert_eq!(text(&delivery), expected);
            delivery.acker.ack(Default::default()).await.expect("ack");
        }
        assert_quiet(&mut second).await;
        first_channel
            .basic_cancel(first.tag(), BasicCancelOptions::default())
            .await
            .expect("cancel");
        publish_all(&publisher, &queue, &["4", "5"]).await;
        for expected in ["4", "5"] {
            let delivery = next(&mut second).await;
            assert_eq!(text(&delivery), expected);
            delivery.acker.ack(Default::default()).await.expect("ack");
        }
    });
}

#[test]
fn purge_removes_ready_messages_and_returns_their_count() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("q.purge");
        declare_queue(&channel, &queue).await;
        publish_all(&channel, &queue, &["1", "2", "3", "4", "5"]).await;
        // One message is out for delivery: purge leaves it alone.
        let reader = client.channel().await;
        let held = get(&reader, &queue, false).await.expect("message");
        assert_eq!(text(&held.delivery), "1");
        let purged = channel
            .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
            .await
            .expect("queue.purge");
        assert_eq!(purged, 4);
        assert_eq!(message_count(&client, &queue).await, 0);
        reader.close(200, "bye".into()).await.expect("close");
        wait_for_count(&client, &queue, 1).await;
        assert_eq!(drain(&channel, &queue).await, vec!["1"]);
    });
}

#[test]
fn queue_delete_if_empty_and_if_unused_are_enforced() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("q.delete");
        declare_queue(&channel, &queue).await;
        publish_all(&channel, &queue, &["x", "y"]).await;

        let attempt = client.channel().await;
        let result = attempt
            .queue_delete(
                queue.as_str().into(),
                QueueDeleteOptions {
                    if_empty: true,
                    ..QueueDeleteOptions::default()
                },
            )
            .await;
        assert_code(result, code::PRECONDITION_FAILED);

        let consumer_channel = client.channel().await;
        let _consumer = consume(&consumer_channel, &queue, false).await;
        let attempt = client.channel().await;
        let result = attempt
            .queue_delete(
                queue.as_str().into(),
                QueueDeleteOptions {
                    if_unused: true,
                    ..QueueDeleteOptions::default()
                },
            )
            .await;
        assert_code(result, code::PRECONDITION_FAILED);
        assert!(queue_exists(&client, &queue).await);
        consumer_channel
            .close(200, "bye".into())
            .await
            .expect("close");

        let deleter = client.channel().await;
        let count = deleter
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("queue.delete");
        assert!(count <= 2, "delete-ok counted {count} messages");
        assert!(!queue_exists(&client, &queue).await);
        // Deleting a queue that does not exist is not an error.
        deleter
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("queue.delete of a missing queue");
    });
}

#[test]
fn queue_delete_returns_the_message_count() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("q.delete-count");
        declare_queue(&channel, &queue).await;
        publish_all(&channel, &queue, &["a", "b", "c"]).await;
        let count = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("queue.delete");
        assert_eq!(count, 3);
    });
}

#[test]
fn declare_ok_reports_ready_messages_and_consumers() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("q.counts");
        let ok = declare_queue(&channel, &queue).await;
        assert_eq!((ok.message_count(), ok.consumer_count()), (0, 0));
        publish_all(&channel, &queue, &["1", "2", "3"]).await;
        let ok = declare_queue(&channel, &queue).await;
        assert_eq!((ok.message_count(), ok.consumer_count()), (3, 0));

        let consumer_channel = client.channel().await;
        consumer_channel
            .basic_qos(1, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = consume(&consumer_channel, &queue, false).await;
        let _held = next(&mut consumer).await;
        // Unacknowledged messages are not "ready".
        let ok = channel
            .queue_declare(queue.as_str().into(), passive(), FieldTable::default())
            .await
            .expect("passive declare");
        assert_eq!((ok.message_count(), ok.consumer_count()), (2, 1));
    });
}

#[test]
fn basic_get_returns_messages_in_order_then_get_empty() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("q.get");
        declare_queue(&channel, &queue).await;
        assert!(
            get(&channel, &queue, true).await.is_none(),
            "get-empty expected"
        );
        publish_all(&channel, &queue, &["1", "2", "3"]).await;
        let first = get(&channel, &queue, true).await.expect("first");
        assert_eq!(text(&first.delivery), "1");
        assert_eq!(first.message_count, 2, "get-ok counts the messages left");
        assert!(!first.delivery.redelivered);
        assert_eq!(first.delivery.routing_key.as_str(), queue);
        assert_eq!(first.delivery.exchange.as_str(), "");
        let second = get(&channel, &queue, false).await.expect("second");
        assert_eq!(text(&second.delivery), "2");
        assert_eq!(second.message_count, 1);
        second
            .delivery
            .acker
            .ack(Default::default())
            .await
            .expect("ack");
        assert_eq!(drain(&channel, &queue).await, vec!["3"]);
        assert!(
            get(&channel, &queue, true).await.is_none(),
            "get-empty expected"
        );
    });
}

#[test]
fn basic_get_on_a_missing_queue_fails_with_not_found() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        assert_code(
            channel
                .basic_get(unique("q.nope").as_str().into(), Default::default())
                .await,
            code::NOT_FOUND,
        );
    });
}

#[test]
fn message_properties_and_headers_survive_the_round_trip() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("q.props");
        declare_queue(&channel, &queue).await;
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_correlation_id("corr-1".into())
            .with_reply_to("replies".into())
            .with_message_id("msg-1".into())
            .with_timestamp(1_700_000_000)
            .with_type("greeting".into())
            .with_app_id("tests".into())
            .with_priority(3)
            .with_headers(table(&[
                ("s", long_str("text")),
                ("i", int(-42)),
                ("l", long(1 << 40)),
                ("b", AMQPValue::Boolean(true)),
            ]));
        publish_props(&channel, "", &queue, b"{}", props.clone()).await;
        let message = get(&channel, &queue, true).await.expect("message");
        let got = &message.delivery.properties;
        assert_eq!(got.content_type(), props.content_type());
        assert_eq!(got.content_encoding(), props.content_encoding());
        assert_eq!(got.correlation_id(), props.correlation_id());
        assert_eq!(got.reply_to(), props.reply_to());
        assert_eq!(got.message_id(), props.message_id());
        assert_eq!(got.timestamp(), props.timestamp());
        assert_eq!(got.kind(), props.kind());
        assert_eq!(got.app_id(), props.app_id());
        assert_eq!(got.priority(), props.priority());
        let headers = headers(&message.delivery);
        assert_eq!(text_header(&headers, "s"), "text");
        assert_eq!(header(&headers, "i").and_then(as_int), Some(-42));
        assert_eq!(header(&headers, "l").and_then(as_int), Some(1 << 40));
        assert_eq!(header(&headers, "b"), Some(&AMQPValue::Boolean(true)));
    });
}
