//! Dead-lettering: rejected, nacked, expired and overflowing messages move to the queue's
//! dead-letter exchange with RabbitMQ's `x-death` and `x-first-death-*` headers.

use crate::support::*;
use lapin::options::{BasicNackOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use rosetta_tests::{shared_broker, Broker};
use std::sync::Arc;

fn broker() -> Arc<Broker> {
    shared_broker("amqp-dead-letter")
}

/// A fanout dead-letter exchange with one queue bound: `(exchange, queue)`.
async fn dead_letter_target(channel: &Channel) -> (String, String) {
    let dlx = unique("q.dlx");
    let dlq = unique("q.dlq");
    declare_exchange(channel, &dlx, ExchangeKind::Fanout).await;
    declare_queue(channel, &dlq).await;
    bind_queue(channel, &dlq, &dlx, "").await;
    (dlx, dlq)
}

/// A direct exchange with `queue` bound as `k`: messages published there carry exchange and
/// routing key into `x-death`.
async fn source_exchange(channel: &Channel, queue: &str) -> String {
    let source = unique("q.src");
    declare_exchange(channel, &source, ExchangeKind::Direct).await;
    bind_queue(channel, queue, &source, "k").await;
    source
}

#[test]
fn max_length_with_reject_publish_dlx_nacks_and_dead_letters() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let (dlx, dlq) = dead_letter_target(&channel).await;
        let queue = unique("q.reject-publish-dlx");
        declare_with(
            &channel,
            &queue,
            table(&[
                ("x-max-length", int(1)),
                ("x-overflow", long_str("reject-publish-dlx")),
                ("x-dead-letter-exchange", long_str(&dlx)),
            ]),
        )
        .await;
        let first = publish_props(&channel, "", &queue, b"kept", BasicProperties::default()).await;
        let second = publish_props(
            &channel,
            "",
            &queue,
            b"rejected",
            BasicProperties::default(),
        )
        .await;
        assert!(first.is_ack());
        assert!(second.is_nack());
        assert_eq!(drain(&channel, &queue).await, vec!["kept"]);
        let dead = get(&channel, &dlq, true)
            .await
            .expect("dead-lettered message");
        assert_eq!(text(&dead.delivery), "rejected");
        let death = first_x_death(&dead.delivery);
        assert_eq!(text_header(&death, "reason"), "maxlen");
        assert_eq!(text_header(&death, "queue"), queue);
    });
}

/// The `x-death` entries of a dead-lettered delivery.
fn x_deaths(delivery: &lapin::message::Delivery) -> Vec<FieldTable> {
    let headers = headers(delivery);
    match header(&headers, "x-death") {
        Some(AMQPValue::FieldArray(array)) => array
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("x-death entry is not a table: {other:?}"),
            })
            .collect(),
        other => panic!("x-death missing or not an array: {other:?} in {headers:?}"),
    }
}

fn first_x_death(delivery: &lapin::message::Delivery) -> FieldTable {
    x_deaths(delivery)
        .into_iter()
        .next()
        .expect("x-death has no entry")
}

/// Checks one `x-death` entry and the `x-first-death-*` headers for a message that died once.
#[track_caller]
fn assert_died_once(
    delivery: &lapin::message::Delivery,
    reason: &str,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) {
    let deaths = x_deaths(delivery);
    assert_eq!(deaths.len(), 1, "{deaths:?}");
    let death = &deaths[0];
    assert_eq!(
        header(death, "count").and_then(as_int),
        Some(1),
        "{death:?}"
    );
    assert_eq!(text_header(death, "reason"), reason);
    assert_eq!(text_header(death, "queue"), queue);
    assert_eq!(text_header(death, "exchange"), exchange);
    match header(death, "routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => {
            let keys: Vec<String> = keys.as_slice().iter().filter_map(as_text).collect();
            assert_eq!(keys, vec![routing_key.to_string()]);
        }
        other => panic!("routing-keys missing or not an array: {other:?}"),
    }
    assert!(
        matches!(header(death, "time"), Some(AMQPValue::Timestamp(t)) if *t > 1_600_000_000),
        "time missing or not a timestamp: {death:?}"
    );
    let headers = headers(delivery);
    assert_eq!(text_header(&headers, "x-first-death-reason"), reason);
    assert_eq!(text_header(&headers, "x-first-death-queue"), queue);
    assert_eq!(text_header(&headers, "x-first-death-exchange"), exchange);
}

async fn dead_letter_source(
    channel: &Channel,
    dlx: &str,
    extra: &[(&str, AMQPValue)],
) -> (String, String) {
    let queue = unique("q.dl-source");
    let mut args = vec![("x-dead-letter-exchange", long_str(dlx))];
    args.extend(extra.iter().cloned());
    declare_with(channel, &queue, table(&args)).await;
    let source = source_exchange(channel, &queue).await;
    (queue, source)
}

#[test]
fn rejected_message_is_dead_lettered_with_x_death() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let (dlx, dlq) = dead_letter_target(&channel).await;
        let (queue, source) = dead_letter_source(&channel, &dlx, &[]).await;
        let props = BasicProperties::default().with_headers(table(&[("app", long_str("kept"))]));
        publish_props(&channel, &source, "k", b"bad", props).await;
        let message = get(&channel, &queue, false).await.expect("message");
        message
            .delivery
            .acker
            .reject(BasicRejectOptions { requeue: false })
            .await
            .expect("reject");
        let dead = get_eventually(&channel, &dlq, true).await;
        assert_eq!(text(&dead.delivery), "bad");
        assert_died_once(&dead.delivery, "rejected", &queue, &source, "k");
        // The message's own headers are kept.
        assert_eq!(text_header(&headers(&dead.delivery), "app"), "kept");
        assert_eq!(drain(&channel, &queue).await, Vec::<String>::new());
    });
}

#[test]
fn nacked_message_is_dead_lettered_with_reason_rejected() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let (dlx, dlq) = dead_letter_target(&channel).await;
        let (queue, source) = dead_letter_source(&channel, &dlx, &[]).await;
        publish(&channel, &source, "k", "nacked").await;
        let mut consumer = consume(&channel, &queue, false).await;
        let delivery = next(&mut consumer).await;
        delivery
            .acker
            .nack(BasicNackOptions {
                requeue: false,
                multiple: false,
            })
            .await
            .expect("nack");
        wait_for_count(&client, &dlq, 1).await;
        let dead = get(&channel, &dlq, true).await.expect("dead-lettered");
        assert_died_once(&dead.delivery, "rejected", &queue, &source, "k");
    });
}

#[test]
fn expired_message_is_dead_lettered_with_reason_expired() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let (dlx, dlq) = dead_letter_target(&channel).await;
        let (queue, source) =
            dead_letter_source(&channel, &dlx, &[("x-message-ttl", int(100))]).await;
        publish(&channel, &source, "k", "too late").await;
        wait_for_count(&client, &dlq, 1).await;
        let dead = get(&channel, &dlq, true).await.expect("dead-lettered");
        assert_eq!(text(&dead.delivery), "too late");
        assert_died_once(&dead.delivery, "expired", &queue, &source, "k");
        // The per-queue TTL is not carried as an expiration property.
        assert!(dead.delivery.properties.expiration().is_none());
    });
}

#[test]
fn message_dropped_by_max_length_is_dead_lettered_with_reason_maxlen() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let (dlx, dlq) = dead_letter_target(&channel).await;
        let (queue, source) = dead_letter_source(&channel, &dlx, &[("x-max-length", int(1))]).await;
        publish(&channel, &source, "k", "oldest").await;
        publish(&channel, &source, "k", "newest").await;
        wait_for_count(&client, &dlq, 1).await;
        let dead = get(&channel, &dlq, true).await.expect("dead-lettered");
        assert_eq!(text(&dead.delivery), "oldest");
        assert_died_once(&dead.delivery, "maxlen", &queue, &source, "k");
        assert_eq!(drain(&channel, &queue).await, vec!["newest"]);
    });
}

#[test]
fn dead_letter_routing_key_replaces_the_routing_key() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let dlx = unique("q.dlx-direct");
        declare_exchange(&channel, &dlx, ExchangeKind::Direct).await;
        let dlq = unique("q.dlq-direct");
        declare_queue(&channel, &dlq).await;
        bind_queue(&channel, &dlq, &dlx, "dead").await;
        let (queue, source) = dead_letter_source(
            &channel,
            &dlx,
            &[("x-dead-letter-routing-key", long_str("dead"))],
        )
        .await;
        publish(&channel, &source, "k", "rerouted").await;
        let message = get(&channel, &queue, false).await.expect("message");
        message
            .delivery
            .acker
            .reject(BasicRejectOptions { requeue: false })
            .await
            .expect("reject");
        wait_for_count(&client, &dlq, 1).await;
        let dead = get(&channel, &dlq, true).await.expect("dead-lettered");
        assert_eq!(dead.delivery.routing_key.as_str(), "dead");
        assert_eq!(dead.delivery.exchange.as_str(), dlx);
        // x-death keeps the original routing key.
        assert_died_once(&dead.delivery, "rejected", &queue, &source, "k");
    });
}

#[test]
fn x_death_count_grows_when_a_message_dies_again_in_the_same_queue() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("q.dl-loop");
        // Dead-letters back into itself through the default exchange.
        declare_with(
            &channel,
            &queue,
            table(&[
                ("x-dead-letter-exchange", long_str("")),
                ("x-dead-letter-routing-key", long_str(&queue)),
            ]),
        )
        .await;
        publish_all(&channel, &queue, &["phoenix"]).await;
        for round in 1..=2 {
            let message = get_eventually(&channel, &queue, false).await;
            if round == 2 {
                let deaths = x_deaths(&message.delivery);
                assert_eq!(deaths.len(), 1, "{deaths:?}");
                assert_eq!(header(&deaths[0], "count").and_then(as_int), Some(1));
            }
            message
                .delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await
                .expect("reject");
        }
        let message = get_eventually(&channel, &queue, true).await;
        let deaths = x_deaths(&message.delivery);
        assert_eq!(
            deaths.len(),
            1,
            "same queue and reason share one entry: {deaths:?}"
        );
        assert_eq!(
            header(&deaths[0], "count").and_then(as_int),
            Some(2),
            "{deaths:?}"
        );
    });
}
