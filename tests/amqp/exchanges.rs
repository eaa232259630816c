//! Exchange types and exchange management.

use crate::support::*;
use lapin::options::{
    BasicPublishOptions, ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    ExchangeUnbindOptions, QueueBindOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use rosetta_tests::{shared_broker, Broker};
use std::collections::BTreeMap;
use std::sync::Arc;

fn broker() -> Arc<Broker> {
    shared_broker("amqp-exchanges")
}

async fn declare_exchange_with(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
    options: ExchangeDeclareOptions,
    args: FieldTable,
) {
    channel
        .exchange_declare(name.into(), kind, options, args)
        .await
        .unwrap_or_else(|e| panic!("exchange.declare {name}: {e:?}"));
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            args,
        )
        .await
        .unwrap_or_else(|e| panic!("queue.bind {queue} -> {exchange} ({key}): {e:?}"));
}

fn passive() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// Declares one queue per binding key on `exchange`, publishes every routing key (body = the
/// key), and returns what each queue received, by binding key.
async fn route(
    channel: &Channel,
    exchange: &str,
    binding_keys: &[&str],
    routing_keys: &[&str],
) -> BTreeMap<String, Vec<String>> {
    let mut queues = Vec::new();
    for key in binding_keys {
        let queue = unique("ex.route");
        declare_queue(channel, &queue).await;
        bind(channel, &queue, exchange, key, FieldTable::default()).await;
        queues.push((key.to_string(), queue));
    }
    for key in routing_keys {
        publish(channel, exchange, key, key).await;
    }
    let mut out = BTreeMap::new();
    for (key, queue) in queues {
        out.insert(key, drain(channel, &queue).await);
    }
    out
}

fn expect(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
        .collect()
}

#[test]
fn direct_exchange_routes_on_exact_routing_key() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let exchange = unique("ex.direct");
        declare_exchange(&channel, &exchange, ExchangeKind::Direct).await;
        let got = route(
            &channel,
            &exchange,
            &["black", "green", "orange"],
            &["orange", "black", "green", "red", "black.x", "black"],
        )
        .await;
        assert_eq!(
            got,
            expect(&[
                ("black", &["black", "black"]),
                ("green", &["green"]),
                ("orange", &["orange"]),
            ])
        );
    });
}

#[test]
fn direct_exchange_delivers_once_to_a_queue_bound_with_two_keys() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let exchange = unique("ex.direct2");
        declare_exchange(&channel, &exchange, ExchangeKind::Direct).await;
        let queue = unique("ex.q");
        declare_queue(&channel, &queue).await;
        bind(&channel, &queue, &exchange, "a", FieldTable::default()).await;
        bind(&channel, &queue, &exchange, "b", FieldTable::default()).await;
        // Binding twice with the same key is idempotent.
        bind(&channel, &queue, &exchange, "a", FieldTable::default()).await;
        publish(&channel, &exchange, "a", "to-a").await;
        publish(&channel, &exchange, "b", "to-b").await;
        assert_eq!(drain(&channel, &queue).await, vec!["to-a", "to-b"]);
    });
}

#[test]
fn fanout_exchange_copies_to_every_bound_queue_whatever_the_key() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let exchange = unique("ex.fanout");
        declare_exchange(&channel, &exchange, ExchangeKind::Fanout).await;
        let got = route(&channel, &exchange, &["x", "y", ""], &["k1", "", "x"]).await;
        let all: &[&str] = &["k1", "", "x"];
        assert_eq!(got, expect(&[("x", all), ("y", all), ("", all)]));
    });
}

#[test]
fn topic_exchange_matches_star_and_hash_wildcards() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let exchange = unique("ex.topic");
        declare_exchange(&channel, &exchange, ExchangeKind::Topic).await;
        let keys = [
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "quick.orange.fox",
            "lazy.brown.fox",
            "lazy",
            "a.b",
            "a.x.y.b",
            "a",
            "z",
            "x.z",
            "quick.orange.new.rabbit",
        ];
        let got = route(
            &channel,
            &exchange,
            &[
                "*.orange.*",
                "*.*.rabbit",
                "lazy.#",
                "a.#.b",
                "a.*",
                "#.z",
                "*",
                "#",
            ],
            &keys,
        )
        .await;
        assert_eq!(
            got,
            expect(&[
                (
                    "*.orange.*",
                    &[
                        "quick.orange.rabbit",
                        "lazy.orange.elephant",
                        "quick.orange.fox"
                    ]
                ),
                ("*.*.rabbit", &["quick.orange.rabbit"]),
                // `#` also matches zero words: `lazy.#` takes `lazy`.
                (
                    "lazy.#",
                    &["lazy.orange.elephant", "lazy.brown.fox", "lazy"]
                ),
                ("a.#.b", &["a.b", "a.x.y.b"]),
                ("a.*", &["a.b"]),
                ("#.z", &["z", "x.z"]),
                ("*", &["lazy", "a", "z"]),
                ("#", &keys),
            ])
        );
    });
}

#[test]
fn topic_binding_without_wildcards_matches_only_the_exact_key() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let exchange = unique("ex.topic-exact");
        declare_exchange(&channel, &exchange, ExchangeKind::Topic).await;
        let got = route(
            &channel,
            &exchange,
            &["a.b"],
            &["a.b", "a.b.c", "a", "b.a.b"],
        )
        .await;
        assert_eq!(got, expect(&[("a.b", &["a.b"])]));
    });
}

fn hdrs(pairs: &[(&str, &str)]) -> FieldTable {
    let pairs: Vec<(&str, AMQPValue)> = pairs.iter().map(|(k, v)| (*k, long_str(v))).collect();
    table(&pairs)
}

#[test]
fn headers_exchange_matches_all_any_and_their_with_x_variants() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let exchange = unique("ex.headers");
        declare_exchange(&channel, &exchange, ExchangeKind::Headers).await;
        let bindings: Vec<(&str, FieldTable)> = vec![
            (
                "all",
                hdrs(&[("x-match", "all"), ("color", "red"), ("size", "big")]),
            ),
            (
                "any",
                hdrs(&[("x-match", "any"), ("color", "red"), ("size", "big")]),
            ),
            (
                "all-with-x",
                hdrs(&[("x-match", "all-with-x"), ("color", "red"), ("x-tag", "t1")]),
            ),
            (
                "any-with-x",
                hdrs(&[
                    ("x-match", "any-with-x"),
                    ("x-tag", "t1"),
                    ("shape", "round"),
                ]),
            ),
            // Binding arguments starting with `x-` are ignored by `all` and `any`.
            (
                "all-ignores-x",
                hdrs(&[("x-match", "all"), ("color", "red"), ("x-tag", "t1")]),
            ),
            (
                "any-ignores-x",
                hdrs(&[("x-match", "any"), ("x-tag", "t1"), ("shape", "round")]),
            ),
        ];
        let mut queues = Vec::new();
        for (name, args) in bindings {
            let queue = unique("ex.hq");
            declare_queue(&channel, &queue).await;
            bind(&channel, &queue, &exchange, "", args).await;
            queues.push((name, queue));
        }
        let messages: Vec<(&str, FieldTable)> = vec![
            ("m1", hdrs(&[("color", "red"), ("size", "big")])),
            ("m2", hdrs(&[("color", "red")])),
            ("m3", hdrs(&[("size", "big"), ("shape", "round")])),
            ("m4", hdrs(&[("color", "red"), ("x-tag", "t1")])),
            ("m5", hdrs(&[("x-tag", "t1")])),
            ("m6", hdrs(&[("color", "blue"), ("size", "small")])),
        ];
        for (body, headers) in messages {
            let props = BasicProperties::default().with_headers(headers);
            let confirmation =
                publish_props(&channel, &exchange, "ignored", body.as_bytes(), props).await;
            assert!(confirmation.is_ack());
        }
        let mut got = BTreeMap::new();
        for (name, queue) in queues {
            got.insert(name.to_string(), drain(&channel, &queue).await);
        }
        assert_eq!(
            got,
            expect(&[
                ("all", &["m1"]),
                ("any", &["m1", "m2", "m3", "m4"]),
                ("all-with-x", &["m4"]),
                ("any-with-x", &["m3", "m4", "m5"]),
                ("all-ignores-x", &["m1", "m2", "m4"]),
                ("any-ignores-x", &["m3"]),
            ])
        );
    });
}

#[test]
fn headers_binding_defaults_to_all_and_compares_values() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let exchange = unique("ex.headers-default");
        declare_exchange(&channel, &exchange, ExchangeKind::Headers).await;
        let queue = unique("ex.hq");
        declare_queue(&channel, &queue).await;
        bind(
            &channel,
            &queue,
            &exchange,
            "",
            hdrs(&[("a", "1"), ("b", "2")]),
        )
        .await;
        for (body, headers) in [
            ("both", hdrs(&[("a", "1"), ("b", "2"), ("c", "3")])),
            ("one", hdrs(&[("a", "1")])),
            ("wrong-value", hdrs(&[("a", "1"), ("b", "3")])),
        ] {
            let props = BasicProperties::default().with_headers(headers);
            publish_props(&channel, &exchange, "", body.as_bytes(), props).await;
        }
        assert_eq!(drain(&channel, &queue).await, vec!["both"]);
    });
}

#[test]
fn default_exchange_routes_to_the_queue_named_by_the_routing_key() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let q1 = unique("ex.default");
        let q2 = unique("ex.default");
        declare_queue(&channel, &q1).await;
        declare_queue(&channel, &q2).await;
        publish(&channel, "", &q1, "one").await;
        publish(&channel, "", &q2, "two").await;
        publish(&channel, "", "no-such-queue-here", "lost").await;
        assert_eq!(drain(&channel, &q1).await, vec!["one"]);
        assert_eq!(drain(&channel, &q2).await, vec!["two"]);
    });
}

#[test]
fn binding_a_queue_to_the_default_exchange_is_refused() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let queue = unique("ex.default-bind");
        declare_queue(&channel, &queue).await;
        let result = channel
            .queue_bind(
                queue.as_str().into(),
                "".into(),
                "k".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_code(result, code::ACCESS_REFUSED);
    });
}

#[test]
fn predeclared_amq_exchanges_exist() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        for (name, kind) in [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            channel
                .exchange_declare(name.into(), kind, passive(), FieldTable::default())
                .await
                .unwrap_or_else(|e| panic!("passive declare of {name}: {e:?}"));
        }
        // And they route like their type.
        let channel = client.confirm_channel().await;
        let queue = unique("ex.amq-topic");
        declare_queue(&channel, &queue).await;
        bind(
            &channel,
            &queue,
            "amq.topic",
            "sensors.*",
            FieldTable::default(),
        )
        .await;
        publish(&channel, "amq.topic", "sensors.t1", "21.5").await;
        assert_eq!(drain(&channel, &queue).await, vec!["21.5"]);
    });
}

#[test]
fn declaring_an_exchange_with_the_amq_prefix_is_refused() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let result = channel
            .exchange_declare(
                "amq.foo".into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_code(result, code::ACCESS_REFUSED);
        assert!(!channel.status().connected(), "channel should be closed");
    });
}

#[test]
fn redeclaring_an_exchange_with_another_type_closes_the_channel_with_precondition_failed() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let exchange = unique("ex.redeclare");
        declare_exchange(&channel, &exchange, ExchangeKind::Direct).await;
        // The same declaration again is fine.
        declare_exchange(&channel, &exchange, ExchangeKind::Direct).await;
        let result = channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_code(result, code::PRECONDITION_FAILED);
        assert!(!channel.status().connected(), "channel should be closed");
        // A closed channel refuses further work; the connection and other channels go on.
        let queue = unique("ex.after");
        assert!(channel
            .queue_declare(
                queue.as_str().into(),
                Default::default(),
                FieldTable::default()
            )
            .await
            .is_err());
        let other = client.channel().await;
        declare_queue(&other, &queue).await;
    });
}

#[test]
fn redeclaring_an_exchange_with_another_durability_is_refused() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let exchange = unique("ex.redeclare-durable");
        declare_exchange(&channel, &exchange, ExchangeKind::Topic).await;
        let result = channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        assert_code(result, code::PRECONDITION_FAILED);
    });
}

#[test]
fn passive_declare_of_a_missing_exchange_fails_with_not_found() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let result = channel
            .exchange_declare(
                unique("ex.missing").as_str().into(),
                ExchangeKind::Direct,
                passive(),
                FieldTable::default(),
            )
            .await;
        assert_code(result, code::NOT_FOUND);
    });
}

#[test]
fn publishing_to_a_missing_exchange_closes_the_channel_with_not_found() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        channel
            .basic_publish(
                unique("ex.nowhere").as_str().into(),
                "k".into(),
                BasicPublishOptions::default(),
                b"lost",
                BasicProperties::default(),
            )
            .await
            .expect("publish is asynchronous");
        assert_eq!(client.next_error_code().await, code::NOT_FOUND);
    });
}

#[test]
fn internal_exchange_refuses_direct_publishes_but_routes_through_an_exchange_binding() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let internal = unique("ex.internal");
        let front = unique("ex.front");
        declare_exchange_with(
            &channel,
            &internal,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                internal: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
        declare_exchange(&channel, &front, ExchangeKind::Fanout).await;
        let queue = unique("ex.internal-q");
        declare_queue(&channel, &queue).await;
        bind(&channel, &queue, &internal, "#", FieldTable::default()).await;
        channel
            .exchange_bind(
                internal.as_str().into(),
                front.as_str().into(),
                "".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("exchange.bind");
        publish(&channel, &front, "any.key", "via front").await;
        assert_eq!(drain(&channel, &queue).await, vec!["via front"]);

        let direct = client.channel().await;
        direct
            .basic_publish(
                internal.as_str().into(),
                "any.key".into(),
                BasicPublishOptions::default(),
                b"direct",
                BasicProperties::default(),
            )
            .await
            .expect("publish is asynchronous");
        assert_eq!(client.next_error_code().await, code::ACCESS_REFUSED);
        assert_eq!(drain(&channel, &queue).await, Vec::<String>::new());
    });
}

#[test]
fn alternate_exchange_receives_messages_the_main_exchange_cannot_route() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let alternate = unique("ex.ae");
        let main = unique("ex.main");
        declare_exchange(&channel, &alternate, ExchangeKind::Fanout).await;
        declare_exchange_with(
            &channel,
            &main,
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            table(&[("alternate-exchange", long_str(&alternate))]),
        )
        .await;
        let routed = unique("ex.routed");
        let unrouted = unique("ex.unrouted");
        declare_queue(&channel, &routed).await;
        declare_queue(&channel, &unrouted).await;
        bind(&channel, &routed, &main, "k", FieldTable::default()).await;
        bind(&channel, &unrouted, &alternate, "", FieldTable::default()).await;

        publish(&channel, &main, "k", "normal").await;
        // Mandatory is satisfied by the alternate exchange: no basic.return.
        let confirmation = publish_opts(
            &channel,
            &main,
            "other",
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            b"stray",
            BasicProperties::default(),
        )
        .await;
        assert!(confirmation.is_ack());
        assert!(
            confirmation.take_message().is_none(),
            "message was returned"
        );
        assert_eq!(drain(&channel, &routed).await, vec!["normal"]);
        assert_eq!(drain(&channel, &unrouted).await, vec!["stray"]);
    });
}

#[test]
fn exchange_to_exchange_binding_routes_until_unbound() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let source = unique("ex.src");
        let destination = unique("ex.dst");
        declare_exchange(&channel, &source, ExchangeKind::Topic).await;
        declare_exchange(&channel, &destination, ExchangeKind::Fanout).await;
        let queue = unique("ex.e2e-q");
        declare_queue(&channel, &queue).await;
        bind(&channel, &queue, &destination, "", FieldTable::default()).await;
        channel
            .exchange_bind(
                destination.as_str().into(),
                source.as_str().into(),
                "a.*".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("exchange.bind");
        publish(&channel, &source, "a.b", "match").await;
        publish(&channel, &source, "b.b", "no match").await;
        assert_eq!(drain(&channel, &queue).await, vec!["match"]);

        channel
            .exchange_unbind(
                destination.as_str().into(),
                source.as_str().into(),
                "a.*".into(),
                ExchangeUnbindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("exchange.unbind");
        publish(&channel, &source, "a.b", "after unbind").await;
        assert_eq!(drain(&channel, &queue).await, Vec::<String>::new());
    });
}

#[test]
fn queue_unbind_stops_routing() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let exchange = unique("ex.unbind");
        declare_exchange(&channel, &exchange, ExchangeKind::Direct).await;
        let queue = unique("ex.unbind-q");
        declare_queue(&channel, &queue).await;
        bind(&channel, &queue, &exchange, "k", FieldTable::default()).await;
        publish(&channel, &exchange, "k", "before").await;
        channel
            .queue_unbind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "k".into(),
                FieldTable::default(),
            )
            .await
            .expect("queue.unbind");
        publish(&channel, &exchange, "k", "after").await;
        assert_eq!(drain(&channel, &queue).await, vec!["before"]);
    });
}

#[test]
fn exchange_delete_if_unused_refuses_while_bound_and_succeeds_after_unbind() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let exchange = unique("ex.delete");
        declare_exchange(&channel, &exchange, ExchangeKind::Direct).await;
        let queue = unique("ex.delete-q");
        declare_queue(&channel, &queue).await;
        bind(&channel, &queue, &exchange, "k", FieldTable::default()).await;
        let if_unused = ExchangeDeleteOptions {
            if_unused: true,
            ..ExchangeDeleteOptions::default()
        };
        let result = channel
            .exchange_delete(exchange.as_str().into(), if_unused)
            .await;
        assert_code(result, code::PRECONDITION_FAILED);

        let channel = client.channel().await;
        channel
            .queue_unbind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "k".into(),
                FieldTable::default(),
            )
            .await
            .expect("queue.unbind");
        channel
            .exchange_delete(exchange.as_str().into(), if_unused)
            .await
            .expect("exchange.delete if-unused on an unbound exchange");
        let result = channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Direct,
                passive(),
                FieldTable::default(),
            )
            .await;
        assert_code(result, code::NOT_FOUND);
    });
}

#[test]
fn deleting_an_exchange_removes_its_bindings() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let exchange = unique("ex.delete-bindings");
        declare_exchange(&channel, &exchange, ExchangeKind::Fanout).await;
        let queue = unique("ex.delete-bindings-q");
        declare_queue(&channel, &queue).await;
        bind(&channel, &queue, &exchange, "", FieldTable::default()).await;
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .expect("exchange.delete");
        // Re-created with the same name, it has no bindings.
        declare_exchange(&channel, &exchange, ExchangeKind::Fanout).await;
        publish(&channel, &exchange, "", "after re-create").await;
        assert_eq!(drain(&channel, &queue).await, Vec::<String>::new());
        assert!(
            queue_exists(&client, &queue).await,
            "the queue itself stays"
        );
    });
}
