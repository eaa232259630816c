//! RabbitMQ's permissions over AMQP: `[[permissions]]` (configure, write, read per user and
//! virtual host) and `[[topic_permissions]]` (routing keys on a topic exchange), each operation
//! allowed and refused with RabbitMQ's reply codes and texts.

use crate::support::*;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, ExchangeBindOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Error, ErrorKind, ExchangeKind};
use rosetta_tests::raw::{method, Args, HandshakeError, RawConnection, REPLY_DEADLINE};
use rosetta_tests::{Access, Broker};

/// admin may do anything; bob may configure `bob.*`, write to `bob.*` and `amq.topic`, read
/// from `bob.*` and `amq.topic`, and on `amq.topic` use only `sensors.*` keys; carol has no
/// permission on `/` at all.
fn broker() -> Broker {
    let bob = r"^(bob\..*|amq\.topic)$";
    let access = Access::admin_and_carol()
        .user("bob")
        .permissions("bob", r"^bob\.", bob, bob)
        .topic_permissions("bob", "amq.topic", r"^sensors\.", r"^sensors\.");
    Broker::start_with(access.toml())
}

async fn login(broker: &Broker, user: &str) -> Client {
    connect_url(&format!("amqp://{user}:{user}@{}/%2f", broker.amqp_addr())).await
}

/// The text of a 403 the broker closed the channel with.
#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Ok(value) => panic!("expected ACCESS_REFUSED, got Ok({value:?})"),
        Err(error) => match error.kind() {
            ErrorKind::ProtocolError(e) if e.get_id() == code::ACCESS_REFUSED => {
                e.get_message().to_string()
            }
            _ => panic!("expected ACCESS_REFUSED, got {error:?}"),
        },
    }
}

fn bob_refused(kind: &str, name: &str) -> String {
    format!("ACCESS_REFUSED - access to {kind} '{name}' in vhost '/' refused for user 'bob'")
}

/// A queue made by admin, which bob may not touch.
async fn admin_queue(broker: &Broker) -> String {
    let admin = login(broker, "admin").await;
    let channel = admin.channel().await;
    let name = unique("shared");
    declare_queue(&channel, &name).await;
    publish(&channel, "", &name, "for admin").await;
    name
}

#[test]
fn a_user_without_permissions_on_the_vhost_is_refused_at_connection_open() {
    let broker = broker();
    let mut raw = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
    match raw.handshake_with("carol", "carol", 0) {
        Err(HandshakeError::Closed(close)) => {
            assert_eq!(close.reply_code, code::NOT_ALLOWED, "{close:?}");
            assert_eq!(
                close.reply_text,
                "NOT_ALLOWED - access to vhost '/' refused for user 'carol'"
            );
            assert_eq!((close.class_id, close.method_id), (10, 40));
        }
        other => panic!("carol opened '/': {other:?}"),
    }
    // Her password was right: the login itself is not what failed.
    let mut bob = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
    bob.handshake_with("bob", "bob", 0)
        .expect("bob may open '/'");
}

#[test]
fn configure_covers_declare_and_delete_of_queues_and_exchanges() {
    let broker = broker();
    run(async {
        let shared = admin_queue(&broker).await;
        let bob = login(&broker, "bob").await;
        let channel = bob.channel().await;
        declare_queue(&channel, "bob.q").await;
        declare_exchange(&channel, "bob.x", ExchangeKind::Direct).await;

        let denied = channel
            .queue_declare(
                "other".into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(refused(denied), bob_refused("queue", "other"));
        // A server-named queue is checked under the name it would get.
        let channel = bob.channel().await;
        let denied = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await;
        let text = refused(denied);
        assert!(
            text.starts_with("ACCESS_REFUSED - access to queue 'amq.gen-"),
            "{text}"
        );
        // A passive declare creates nothing and needs no permission.
        let channel = bob.channel().await;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let found = channel
            .queue_declare(shared.as_str().into(), passive, FieldTable::default())
            .await
            .expect("passive declare of admin's queue");
        assert_eq!(found.message_count(), 1);

        let denied = channel
            .queue_delete(shared.as_str().into(), QueueDeleteOptions::default())
            .await;
        assert_eq!(refused(denied), bob_refused("queue", &shared));
        let channel = bob.channel().await;
        let denied = channel
            .exchange_declare(
                "x".into(),
                ExchangeKind::Fanout,
                Default::default(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(refused(denied), bob_refused("exchange", "x"));
        let channel = bob.channel().await;
        let denied = channel
            .exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default())
            .await;
        assert_eq!(refused(denied), bob_refused("exchange", "amq.direct"));

        let channel = bob.channel().await;
        channel
            .queue_delete("bob.q".into(), QueueDeleteOptions::default())
            .await
            .expect("bob deletes his queue");
        channel
            .exchange_delete("bob.x".into(), ExchangeDeleteOptions::default())
            .await
            .expect("bob deletes his exchange");
        let admin = login(&broker, "admin").await;
        assert!(queue_exists(&admin, &shared).await, "admin's queue stays");
        bob.close().await;
    });
}

/// Sends `basic.publish` on a raw channel as bob and returns the `channel.close` it gets.
fn raw_publish_refusal(broker: &Broker, exchange: &str, key: &str) -> String {
    let mut raw = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
    raw.handshake_with("bob", "bob", 0).expect("bob logs in");
    raw.open_channel(1).expect("channel");
    raw.send_method(
        1,
        method::BASIC_PUBLISH,
        Args::new()
            .u16(0)
            .shortstr(exchange)
            .shortstr(key)
            .bits(&[false, false]),
    )
    .expect("basic.publish");
    let close = raw
        .expect_channel_close(1, REPLY_DEADLINE)
        .expect("the publish is refused with channel.close");
    assert_eq!(close.reply_code, code::ACCESS_REFUSED, "{close:?}");
    assert_eq!((close.class_id, close.method_id), method::BASIC_PUBLISH);
    close.reply_text
}

#[test]
fn write_covers_publishing_and_the_default_exchange_is_amq_default() {
    let broker = broker();
    assert_eq!(
        raw_publish_refusal(&broker, "", "bob.q"),
        bob_refused("exchange", "amq.default")
    );
    assert_eq!(
        raw_publish_refusal(&broker, "amq.direct", "k"),
        bob_refused("exchange", "amq.direct")
    );
    run(async {
        let bob = login(&broker, "bob").await;
        let channel = bob.confirm_channel().await;
        declare_queue(&channel, "bob.in").await;
        declare_exchange(&channel, "bob.x", ExchangeKind::Fanout).await;
        bind_queue(&channel, "bob.in", "bob.x", "").await;
        publish(&channel, "bob.x", "", "allowed").await;
        assert_eq!(drain(&channel, "bob.in").await, vec!["allowed"]);
        bob.close().await;
    });
}

#[test]
fn topic_permissions_check_routing_keys_on_amq_topic() {
    let broker = broker();
    assert_eq!(
        raw_publish_refusal(&broker, "amq.topic", "alarms.kitchen"),
        "ACCESS_REFUSED - write access to topic 'alarms.kitchen' in exchange 'amq.topic' in \
         vhost '/' refused for user 'bob'"
    );
    run(async {
        let bob = login(&broker, "bob").await;
        let channel = bob.confirm_channel().await;
        declare_queue(&channel, "bob.sensors").await;
        bind_queue(&channel, "bob.sensors", "amq.topic", "sensors.#").await;
        publish(&channel, "amq.topic", "sensors.kitchen", "21.5").await;
        assert_eq!(drain(&channel, "bob.sensors").await, vec!["21.5"]);

        let denied = channel
            .queue_bind(
                "bob.sensors".into(),
                "amq.topic".into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(
            refused(denied),
            "ACCESS_REFUSED - read access to topic '#' in exchange 'amq.topic' in vhost '/' \
             refused for user 'bob'"
        );
        bob.close().await;
    });
}

#[test]
fn bindings_need_write_on_the_destination_and_read_on_the_source() {
    let broker = broker();
    run(async {
        let shared = admin_queue(&broker).await;
        let bob = login(&broker, "bob").await;
        let channel = bob.channel().await;
        declare_queue(&channel, "bob.b").await;
        declare_exchange(&channel, "bob.src", ExchangeKind::Direct).await;
        declare_exchange(&channel, "bob.dst", ExchangeKind::Direct).await;
        bind_queue(&channel, "bob.b", "bob.src", "k").await;
        channel
            .exchange_bind(
                "bob.dst".into(),
                "bob.src".into(),
                "k".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("exchange.bind between bob's exchanges");

        let bind = |channel: Channel, queue: String, exchange: &'static str| async move {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.into(),
                    "k".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        };
        // Read on the source exchange.
        let denied = bind(bob.channel().await, "bob.b".into(), "amq.direct").await;
        assert_eq!(refused(denied), bob_refused("exchange", "amq.direct"));
        // Write on the destination queue.
        let denied = bind(bob.channel().await, shared.clone(), "bob.src").await;
        assert_eq!(refused(denied), bob_refused("queue", &shared));
        // exchange.bind: write on the destination exchange.
        let denied = bob
            .channel()
            .await
            .exchange_bind(
                "amq.fanout".into(),
                "bob.src".into(),
                "k".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(refused(denied), bob_refused("exchange", "amq.fanout"));
        bob.close().await;
    });
}

#[test]
fn read_covers_consume_get_and_purge() {
    let broker = broker();
    run(async {
        let shared = admin_queue(&broker).await;
        let bob = login(&broker, "bob").await;
        let denied = bob
            .channel()
            .await
            .basic_consume(
                shared.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(refused(denied), bob_refused("queue", &shared));
        let denied = bob
            .channel()
            .await
            .basic_get(shared.as_str().into(), BasicGetOptions { no_ack: true })
            .await;
        assert_eq!(refused(denied), bob_refused("queue", &shared));
        let denied = bob
            .channel()
            .await
            .queue_purge(shared.as_str().into(), QueuePurgeOptions::default())
            .await;
        assert_eq!(refused(denied), bob_refused("queue", &shared));
        let admin = login(&broker, "admin").await;
        assert_eq!(message_count(&admin, &shared).await, 1, "nothing was taken");

        let channel = bob.confirm_channel().await;
        declare_queue(&channel, "bob.r").await;
        bind_queue(&channel, "bob.r", "amq.topic", "sensors.r").await;
        publish(&channel, "amq.topic", "sensors.r", "one").await;
        publish(&channel, "amq.topic", "sensors.r", "two").await;
        let got = get(&channel, "bob.r", true).await.expect("basic.get");
        assert_eq!(text(&got.delivery), "one");
        let mut consumer = consume(&channel, "bob.r", true).await;
        assert_eq!(text(&next(&mut consumer).await), "two");
        channel
            .queue_purge("bob.r".into(), QueuePurgeOptions::default())
            .await
            .expect("bob purges his queue");
        bob.close().await;
    });
}

#[test]
fn an_alternate_or_dead_letter_exchange_needs_write_on_it() {
    let broker = broker();
    run(async {
        let bob = login(&broker, "bob").await;
        let with = |key: &str, value: &str| table(&[(key, long_str(value))]);
        let denied = bob
            .channel()
            .await
            .exchange_declare(
                "bob.ae".into(),
                ExchangeKind::Direct,
                Default::default(),
                with("alternate-exchange", "amq.fanout"),
            )
            .await;
        assert_eq!(refused(denied), bob_refused("exchange", "amq.fanout"));
        let denied = bob
            .channel()
            .await
            .queue_declare(
                "bob.dl".into(),
                QueueDeclareOptions::default(),
                with("x-dead-letter-exchange", "amq.direct"),
            )
            .await;
        assert_eq!(refused(denied), bob_refused("exchange", "amq.direct"));

        let channel = bob.channel().await;
        declare_exchange(&channel, "bob.dlx", ExchangeKind::Fanout).await;
        channel
            .queue_declare(
                "bob.dl".into(),
                QueueDeclareOptions::default(),
                with("x-dead-letter-exchange", "bob.dlx"),
            )
            .await
            .expect("a dead-letter exchange bob may write to");
        channel
            .exchange_declare(
                "bob.ae".into(),
                ExchangeKind::Direct,
                Default::default(),
                with("alternate-exchange", "bob.dlx"),
            )
            .await
            .expect("an alternate exchange bob may write to");
        bob.close().await;
    });
}
