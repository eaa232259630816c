//! Publisher confirms, mandatory returns, and transactions.

use crate::support::*;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::BasicProperties;
use rosetta_tests::{shared_broker, Broker};
use std::sync::Arc;

fn broker() -> Arc<Broker> {
    shared_broker("amqp-confirms-tx")
}

fn mandatory() -> BasicPublishOptions {
    BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    }
}

#[test]
fn confirm_select_makes_every_publish_acked() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        assert!(channel.status().confirm());
        let queue = unique("ct.confirms");
        declare_queue(&channel, &queue).await;
        let mut pending = Vec::new();
        for i in 0..200 {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    format!("m{i}").as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .expect("publish");
            pending.push(confirm);
        }
        for confirm in pending {
            let confirmation = tokio::time::timeout(WAIT, confirm)
                .await
                .expect("confirm in time")
                .expect("confirm");
            assert!(confirmation.is_ack(), "{confirmation:?}");
        }
        let returned = channel
            .wait_for_confirms()
            .await
            .expect("wait_for_confirms");
        assert!(returned.is_empty());
        assert_eq!(message_count(&client, &queue).await, 200);
    });
}

#[test]
fn unroutable_message_is_confirmed_without_a_return_when_not_mandatory() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let confirmation = publish_props(
            &channel,
            "amq.direct",
            &unique("ct.nobody"),
            b"lost",
            BasicProperties::default(),
        )
        .await;
        assert!(confirmation.is_ack());
        assert!(confirmation.take_message().is_none());
    });
}

#[test]
fn mandatory_unroutable_message_is_returned_before_its_ack() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let key = unique("ct.unroutable");
        let confirmation = publish_opts(
            &channel,
            "amq.direct",
            &key,
            mandatory(),
            b"bounce",
            BasicProperties::default().with_message_id("id-1".into()),
        )
        .await;
        assert!(confirmation.is_ack(), "{confirmation:?}");
        // lapin attaches a basic.return to the confirmation only if it arrived before the ack.
        let returned = confirmation
            .take_message()
            .expect("basic.return before basic.ack");
        assert_eq!(returned.reply_code, code::NO_ROUTE);
        assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
        assert_eq!(returned.delivery.exchange.as_str(), "amq.direct");
        assert_eq!(returned.delivery.routing_key.as_str(), key);
        assert_eq!(returned.delivery.data, b"bounce");
        assert_eq!(
            returned
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str()),
            Some("id-1")
        );
    });
}

#[test]
fn mandatory_unroutable_message_is_returned_without_confirms() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let key = unique("ct.unroutable-plain");
        channel
            .basic_publish(
                "".into(),
                key.as_str().into(),
                mandatory(),
                b"bounce",
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        // A synchronous round trip after the publish: the return is sent before its reply.
        declare_queue(&channel, &unique("ct.sync")).await;
        let returned = channel
            .wait_for_confirms()
            .await
            .expect("returned messages");
        assert_eq!(returned.len(), 1, "{returned:?}");
        assert_eq!(returned[0].reply_code, code::NO_ROUTE);
        assert_eq!(returned[0].delivery.routing_key.as_str(), key);
        assert_eq!(returned[0].delivery.data, b"bounce");
    });
}

#[test]
fn mandatory_routable_message_is_not_returned() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("ct.routable");
        declare_queue(&channel, &queue).await;
        let confirmation = publish_opts(
            &channel,
            "",
            &queue,
            mandatory(),
            b"fine",
            BasicProperties::default(),
        )
        .await;
        assert!(confirmation.is_ack());
        assert!(confirmation.take_message().is_none());
        assert_eq!(drain(&channel, &queue).await, vec!["fine"]);
    });
}

#[test]
fn transactional_publishes_are_visible_only_after_commit() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let setup = client.channel().await;
        let queue = unique("ct.tx-commit");
        declare_queue(&setup, &queue).await;
        let tx = client.channel().await;
        tx.tx_select().await.expect("tx.select");
        publish_all(&tx, &queue, &["1", "2", "3"]).await;
        // A synchronous method on the tx channel: the publishes have reached the broker.
        declare_queue(&tx, &queue).await;
        assert_eq!(
            message_count(&client, &queue).await,
            0,
            "uncommitted messages visible"
        );
        tx.tx_commit().await.expect("tx.commit");
        assert_eq!(message_count(&client, &queue).await, 3);
        assert_eq!(drain(&setup, &queue).await, vec!["1", "2", "3"]);
    });
}

#[test]
fn transaction_rollback_discards_publishes() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let setup = client.channel().await;
        let queue = unique("ct.tx-rollback");
        declare_queue(&setup, &queue).await;
        let tx = client.channel().await;
        tx.tx_select().await.expect("tx.select");
        publish_all(&tx, &queue, &["discarded"]).await;
        tx.tx_rollback().await.expect("tx.rollback");
        tx.tx_commit().await.expect("empty commit");
        assert_eq!(message_count(&client, &queue).await, 0);
        // The channel stays transactional and usable.
        publish_all(&tx, &queue, &["kept"]).await;
        tx.tx_commit().await.expect("tx.commit");
        assert_eq!(drain(&setup, &queue).await, vec!["kept"]);
    });
}

#[test]
fn acks_inside_a_transaction_take_effect_on_commit() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let setup = client.confirm_channel().await;
        let queue = unique("ct.tx-acks");
        declare_queue(&setup, &queue).await;
        publish_all(&setup, &queue, &["a", "b"]).await;

        // Acked then rolled back: the acks are forgotten, so closing the channel requeues.
        let tx = client.channel().await;
        tx.tx_select().await.expect("tx.select");
        for _ in 0..2 {
            let message = get(&tx, &queue, false).await.expect("message");
            tx.basic_ack(message.delivery.delivery_tag, BasicAckOptions::default())
                .await
                .expect("ack");
        }
        tx.tx_rollback().await.expect("tx.rollback");
        tx.close(200, "bye".into()).await.expect("close");
        wait_for_count(&client, &queue, 2).await;

        // Acked then committed: gone for good.
        let tx = client.channel().await;
        tx.tx_select().await.expect("tx.select");
        for _ in 0..2 {
            let message = get(&tx, &queue, false).await.expect("message");
            tx.basic_ack(message.delivery.delivery_tag, BasicAckOptions::default())
                .await
                .expect("ack");
        }
        tx.tx_commit().await.expect("tx.commit");
        tx.close(200, "bye".into()).await.expect("close");
        assert_eq!(queue_counts(&client, &queue).await, Some((0, 0)));
    });
}

#[test]
fn tx_commit_without_tx_select_fails_with_precondition_failed() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        assert_code(channel.tx_commit().await, code::PRECONDITION_FAILED);
    });
}

#[test]
fn tx_select_on_a_confirm_channel_is_refused() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        assert_code(channel.tx_select().await, code::PRECONDITION_FAILED);
    });
}
