//! Hostile MQTT clients: topics too long for an AMQP routing key, topics and filters too deep,
//! floods of filters and subscriptions. Each is refused with its protocol's code, and the broker
//! still serves another client promptly afterwards.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use mqtt_proto::v5::{self, Packet, PubackReasonCode, PubrecReasonCode, SubscribeReasonCode};
use mqtt_proto::{v3, QoS, QosPid};

use crate::support::*;

/// How long another client's publish and receive round trip may take while the broker deals
/// with a hostile one.
const PROMPT: Duration = Duration::from_secs(5);

/// A topic of 300 bytes: its routing key cannot travel in an AMQP short string.
fn long_topic() -> String {
    format!("long/{}", "x".repeat(295))
}

/// A fresh subscriber and publisher exchange one QoS 1 message; panics unless it arrives within
/// [`PROMPT`] of the start.
#[track_caller]
fn round_trip(port: u16) {
    let started = Instant::now();
    let t = unique("alive");
    let (mut sub, _) = raw5(port, connect5(&unique("alive-sub"), true));
    sub.send5(subscribe5(1, &t, QoS::Level1));
    assert_eq!(suback5(&mut sub), [SubscribeReasonCode::GrantedQoS1]);
    let (mut publisher, _) = raw5(port, connect5(&unique("alive-pub"), true));
    publisher.send5(Packet::Publish(v5::Publish::new(
        QosPid::Level1(pid(1)),
        topic(&t),
        Bytes::from_static(b"ping"),
    )));
    match sub.read5_within(PROMPT) {
        Ok(Packet::Publish(p)) => assert_eq!(p.payload, Bytes::from_static(b"ping")),
        other => panic!("round trip failed: {other:?}"),
    }
    let took = started.elapsed();
    assert!(took < PROMPT, "round trip took {took:?}");
}

/// A 5.0 SUBSCRIBE of `filters` at QoS 0.
fn subscribe_many5(id: u16, filters: &[String]) -> Packet {
    let topics = filters
        .iter()
        .map(|f| (filter(f), v5::SubscriptionOptions::new(QoS::Level0)))
        .collect();
    Packet::Subscribe(v5::Subscribe::new(pid(id), topics))
}

fn flood_filters(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("flood/{i}/+")).collect()
}

#[test]
fn a_300_byte_topic_is_refused_with_0x90_and_an_amqp_consumer_of_hash_keeps_receiving() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let conn = amqp_connection(&broker).await;
        let channel = conn.create_channel().await.expect("channel");
        let queue = unique("all");
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare");
        channel
            .queue_bind(
                queue.as_str().into(),
                "amq.topic".into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "all".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");

        // 5.0, QoS 1 and 2: the one message is refused and the connection stays.
        let (mut v5_client, _) = raw5(port, connect5(&unique("long5"), true));
        v5_client.send5(Packet::Publish(v5::Publish::new(
            QosPid::Level1(pid(1)),
            topic(&long_topic()),
            Bytes::from_static(b"too long"),
        )));
        match v5_client.read5() {
            Ok(Packet::Puback(a)) => assert_eq!(a.reason_code, PubackReasonCode::TopicNameInvalid),
            other => panic!("expected PUBACK 0x90, got {other:?}"),
        }
        v5_client.send5(Packet::Publish(v5::Publish::new(
            QosPid::Level2(pid(2)),
            topic(&long_topic()),
            Bytes::from_static(b"too long"),
        )));
        match v5_client.read5() {
            Ok(Packet::Pubrec(r)) => assert_eq!(r.reason_code, PubrecReasonCode::TopicNameInvalid),
            other => panic!("expected PUBREC 0x90, got {other:?}"),
        }
        v5_client.send5(Packet::Publish(v5::Publish::new(
            QosPid::Level1(pid(3)),
            topic("short/after"),
            Bytes::from_static(b"fine"),
        )));
        match v5_client.read5() {
            Ok(Packet::Puback(a)) => assert_eq!(a.reason_code, PubackReasonCode::Success),
            other => panic!("the 5.0 client lost its connection: {other:?}"),
        }

        // 5.0, QoS 0: nothing to answer with, so DISCONNECT 0x90.
        v5_client.send5(Packet::Publish(v5::Publish::new(
            QosPid::Level0,
            topic(&long_topic()),
            Bytes::from_static(b"too long"),
        )));
        match v5_client.until_closed5().as_slice() {
            [Packet::Disconnect(d)] => {
                assert_eq!(d.reason_code, v5::DisconnectReasonCode::TopicNameInvalid)
            }
            other => panic!("expected DISCONNECT 0x90, got {other:?}"),
        }

        // 3.1.1 has no code for it: the connection is closed.
        let (mut v3_client, _) = raw3(port, connect3(&unique("long3"), true));
        v3_client.send3(v3::Packet::Publish(v3::Publish::new(
            QosPid::Level1(pid(1)),
            topic(&long_topic()),
            Bytes::from_static(b"too long"),
        )));
        assert!(v3_client.closed_silently(), "3.1.1 connection left open");

        // The AMQP consumer got only the message it can carry, and is still connected.
        let delivery = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("the AMQP consumer got nothing")
            .expect("consumer stream ended")
            .expect("delivery");
        assert_eq!(delivery.routing_key.as_str(), "short.after");
        assert_eq!(delivery.data, b"fine");
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
        assert!(conn.status().connected(), "the AMQP connection was lost");
        round_trip(port);
    });
}

#[test]
fn a_will_with_a_300_byte_topic_is_refused_at_connect() {
    let broker = broker();
    let port = port(&broker);
    let mut c5 = connect5(&unique("will5"), true);
    c5.last_will = Some(v5::LastWill {
        qos: QoS::Level0,
        retain: false,
        topic_name: topic(&long_topic()),
        payload: Bytes::from_static(b"bye"),
        properties: v5::WillProperties::default(),
    });
    let (mut raw, ack) = {
        let mut raw = Raw::connect(port);
        raw.send5(Packet::Connect(c5));
        match raw.read5() {
            Ok(Packet::Connack(ack)) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    };
    assert_eq!(ack.reason_code, v5::ConnectReasonCode::TopicNameInvalid);
    assert!(raw.closed_silently());

    let mut c3 = connect3(&unique("will3"), true);
    c3.last_will = Some(v3::LastWill {
        qos: QoS::Level0,
        retain: false,
        topic_name: topic(&long_topic()),
        message: Bytes::from_static(b"bye"),
    });
    let mut raw = Raw::connect(port);
    raw.send3(v3::Packet::Connect(c3));
    assert!(
        raw.closed_silently(),
        "3.1.1 CONNECT with a long will topic accepted"
    );
    round_trip(port);
}

#[test]
fn fifty_thousand_filters_in_one_subscribe_are_refused_past_the_limit_promptly() {
    let broker = broker();
    let port = port(&broker);
    let filters = flood_filters(50_000);
    let started = Instant::now();
    let (mut flood, _) = raw5(port, connect5(&unique("flood5"), true));
    flood.send5(subscribe_many5(1, &filters));
    let codes = suback5(&mut flood);
    assert!(
        started.elapsed() < PROMPT,
        "SUBACK took {:?}",
        started.elapsed()
    );
    assert_eq!(codes.len(), 50_000);
    // The documented default of `max_filters_per_subscribe`.
    assert!(codes[..1000]
        .iter()
        .all(|c| *c == SubscribeReasonCode::GrantedQoS0));
    assert!(codes[1000..]
        .iter()
        .all(|c| *c == SubscribeReasonCode::QuotaExceeded));

    // 3.1.1 reads every refusal as 0x80.
    let (mut flood3, _) = raw3(port, connect3(&unique("flood3"), true));
    let topics = filters
        .iter()
        .take(2000)
        .map(|f| (filter(f), QoS::Level0))
        .collect();
    flood3.send3(v3::Packet::Subscribe(v3::Subscribe::new(pid(1), topics)));
    match flood3.read3() {
        Ok(v3::Packet::Suback(s)) => {
            assert!(s.topics[..1000]
                .iter()
                .all(|c| *c == v3::SubscribeReturnCode::MaxLevel0));
            assert!(s.topics[1000..]
                .iter()
                .all(|c| *c == v3::SubscribeReturnCode::Failure));
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    round_trip(port);
}

#[test]
fn fifty_thousand_filters_under_raised_limits_are_all_taken_without_stalling_others() {
    let broker = broker_with("max_subscriptions = 100000\nmax_filters_per_subscribe = 100000\n");
    let port = port(&broker);
    let filters = flood_filters(50_000);
    let (mut flood, _) = raw5(port, connect5(&unique("flood"), true));
    let sent = Instant::now();
    flood.send5(subscribe_many5(1, &filters));
    // While the broker binds them, others are served.
    round_trip(port);
    // Binding costs the same for the last filter as for the first: the whole SUBSCRIBE is
    // answered promptly (quadratic insertion took tens of seconds).
    let codes = match flood.read5_within(PROMPT.saturating_sub(sent.elapsed())) {
        Ok(Packet::Suback(s)) => s.topics,
        other => panic!("expected SUBACK, got {other:?}"),
    };
    assert_eq!(codes.len(), 50_000);
    assert!(codes.iter().all(|c| *c == SubscribeReasonCode::GrantedQoS0));
    round_trip(port);

    // The last of the filters routes.
    let (mut publisher, _) = raw5(port, connect5(&unique("flood-pub"), true));
    publisher.send5(Packet::Publish(v5::Publish::new(
        QosPid::Level1(pid(1)),
        topic("flood/49999/x"),
        Bytes::from_static(b"last"),
    )));
    match flood.read5_within(PROMPT) {
        Ok(Packet::Publish(p)) => assert_eq!(p.payload, Bytes::from_static(b"last")),
        other => panic!("the flooding subscriber got {other:?}"),
    }
}

#[test]
fn a_session_past_max_subscriptions_gets_quota_exceeded_and_keeps_the_others() {
    let broker = broker_with("max_subscriptions = 3\n");
    let port = port(&broker);
    let (mut sub, _) = raw5(port, connect5(&unique("few"), true));
    sub.send5(subscribe_many5(1, &["few/a".into(), "few/b".into()]));
    assert_eq!(suback5(&mut sub).len(), 2);
    // Resubscribing to a held filter replaces it and does not count again.
    sub.send5(subscribe_many5(
        2,
        &["few/a".into(), "few/c".into(), "few/d".into()],
    ));
    assert_eq!(
        suback5(&mut sub),
        [
            SubscribeReasonCode::GrantedQoS0,
            SubscribeReasonCode::GrantedQoS0,
            SubscribeReasonCode::QuotaExceeded
        ]
    );
    let (mut publisher, _) = raw5(port, connect5(&unique("few-pub"), true));
    for t in ["few/d", "few/c"] {
        publisher.send5(Packet::Publish(v5::Publish::new(
            QosPid::Level0,
            topic(t),
            Bytes::from(t),
        )));
    }
    match sub.read5() {
        Ok(Packet::Publish(p)) => assert_eq!(&*p.topic_name, "few/c", "few/d was refused"),
        other => panic!("expected the message to few/c, got {other:?}"),
    }

    // 3.1.1: return code 0x80 for the one past the limit.
    let (mut sub3, _) = raw3(port, connect3(&unique("few3"), true));
    let topics = ["x/1", "x/2", "x/3", "x/4"]
        .iter()
        .map(|f| (filter(f), QoS::Level1))
        .collect();
    sub3.send3(v3::Packet::Subscribe(v3::Subscribe::new(pid(1), topics)));
    match sub3.read3() {
        Ok(v3::Packet::Suback(s)) => assert_eq!(
            s.topics,
            [
                v3::SubscribeReturnCode::MaxLevel1,
                v3::SubscribeReturnCode::MaxLevel1,
                v3::SubscribeReturnCode::MaxLevel1,
                v3::SubscribeReturnCode::Failure
            ]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    round_trip(port);
}

#[test]
fn topics_and_filters_deeper_than_max_topic_levels_are_refused() {
    let broker = broker_with("max_topic_levels = 4\n");
    let port = port(&broker);
    let (mut client, _) = raw5(port, connect5(&unique("deep"), true));
    client.send5(subscribe_many5(
        1,
        &[
            "a/b/c/+".into(),
            "a/b/c/d/#".into(),
            "$share/g/a/b/c/d/e".into(),
        ],
    ));
    assert_eq!(
        suback5(&mut client),
        [
            SubscribeReasonCode::GrantedQoS0,
            SubscribeReasonCode::TopicFilterInvalid,
            SubscribeReasonCode::TopicFilterInvalid
        ]
    );
    client.send5(Packet::Publish(v5::Publish::new(
        QosPid::Level1(pid(2)),
        topic("a/b/c/d/e"),
        Bytes::from_static(b"deep"),
    )));
    match client.read5() {
        Ok(Packet::Puback(a)) => assert_eq!(a.reason_code, PubackReasonCode::TopicNameInvalid),
        other => panic!("expected PUBACK 0x90, got {other:?}"),
    }
    client.send5(Packet::Publish(v5::Publish::new(
        QosPid::Level1(pid(3)),
        topic("a/b/c/d"),
        Bytes::from_static(b"four"),
    )));
    let mut got_message = false;
    let mut got_ack = false;
    while !(got_message && got_ack) {
        match client.read5() {
            Ok(Packet::Publish(p)) => {
                assert_eq!(p.payload, Bytes::from_static(b"four"));
                got_message = true;
            }
            Ok(Packet::Puback(a)) => {
                assert_eq!(a.reason_code, PubackReasonCode::Success);
                got_ack = true;
            }
            other => panic!("expected the four-level message and its PUBACK, got {other:?}"),
        }
    }

    let (mut client3, _) = raw3(port, connect3(&unique("deep3"), true));
    client3.send3(v3::Packet::Publish(v3::Publish::new(
        QosPid::Level0,
        topic("a/b/c/d/e"),
        Bytes::from_static(b"deep"),
    )));
    assert!(client3.closed_silently(), "3.1.1 connection left open");
    round_trip(port);
}

#[test]
fn retained_messages_for_a_wildcard_subscription_wait_for_the_clients_receive_maximum() {
    let broker = broker();
    let port = port(&broker);
    let (mut publisher, _) = raw5(port, connect5(&unique("keeper"), true));
    for n in 1..=10u16 {
        let mut p = v5::Publish::new(
            QosPid::Level1(pid(n)),
            topic(&format!("kept/{n}")),
            Bytes::from(format!("m{n}")),
        );
        p.retain = true;
        publisher.send5(Packet::Publish(p));
        assert!(matches!(publisher.read5(), Ok(Packet::Puback(_))));
    }
    let mut connect = connect5(&unique("window"), true);
    connect.properties.receive_max = Some(2);
    let (mut sub, _) = raw5(port, connect);
    sub.send5(subscribe5(1, "kept/#", QoS::Level1));
    assert_eq!(suback5(&mut sub), [SubscribeReasonCode::GrantedQoS1]);
    let mut received = Vec::new();
    for _ in 0..2 {
        match sub.read5() {
            Ok(Packet::Publish(p)) => {
                assert!(p.retain, "[MQTT-3.3.1-8]");
                received.push(p);
            }
            other => panic!("expected a retained PUBLISH, got {other:?}"),
        }
    }
    // [MQTT-3.3.4-9]: no more than Receive Maximum unacknowledged QoS 1 messages.
    assert_eq!(sub.read5_within(QUIET), Err(ReadEnd::Timeout));
    let mut all = received.len();
    while all < 10 {
        let p = received.remove(0);
        let id = p.qos_pid.pid().expect("QoS 1 has a packet id");
        sub.send5(Packet::Puback(v5::Puback::new_success(id)));
        match sub.read5() {
            Ok(Packet::Publish(p)) => received.push(p),
            other => panic!("expected the next retained PUBLISH, got {other:?}"),
        }
        all += 1;
    }
    round_trip(port);
}

#[test]
fn under_an_alarm_a_first_publish_waits_unread_while_subscribers_are_still_served() {
    // One byte of memory: the alarm is on from the start and never clears.
    let broker = broker_with("[limits]\nmemory_limit = 1\n");
    assert!(
        broker.wait_for_log("resource alarm: publishers paused", WAIT),
        "the alarm was raised"
    );
    let port = port(&broker);
    let t = unique("held");
    let (mut sub, _) = raw5(port, connect5(&unique("held-sub"), true));
    sub.send5(subscribe5(1, &t, QoS::Level1));
    assert_eq!(
        suback5(&mut sub),
        [SubscribeReasonCode::GrantedQoS1],
        "a client that only subscribes is still read"
    );

    let (mut publisher, _) = raw5(port, connect5(&unique("held-pub"), true));
    publisher.send5(Packet::Publish(v5::Publish::new(
        QosPid::Level1(pid(1)),
        topic(&t),
        Bytes::from_static(b"first"),
    )));
    assert!(
        matches!(publisher.read5_within(QUIET), Err(ReadEnd::Timeout)),
        "the first PUBLISH got no PUBACK under the alarm"
    );
    assert!(
        matches!(sub.read5_within(QUIET), Err(ReadEnd::Timeout)),
        "the first PUBLISH was not routed under the alarm"
    );
}

#[test]
fn a_persistent_session_subscribing_a_thousand_filters_is_acknowledged_once_durable_without_stalling_others(
) {
    // Each filter of a persistent session is a durable binding. SUBACK waits for the store's
    // durable point instead of an fsync per filter on the connection's worker thread, and what
    // it acknowledged survives a kill.
    let mut broker = broker();
    let port = port(&broker);
    let id = unique("many-durable");
    let persistent = || {
        let mut c = connect5(&id, false);
        c.properties.session_expiry_interval = Some(3600);
        c
    };
    let filters: Vec<String> = (0..1_000).map(|i| format!("durable/{i}/+")).collect();
    let (mut session, _) = raw5(port, persistent());
    session.send5(subscribe_many5(1, &filters));
    round_trip(port);
    let codes = match session.read5_within(PROMPT) {
        Ok(Packet::Suback(s)) => s.topics,
        other => panic!("expected SUBACK, got {other:?}"),
    };
    assert_eq!(codes.len(), 1_000);
    assert!(codes.iter().all(|c| *c == SubscribeReasonCode::GrantedQoS0));

    broker.kill9();
    broker.restart();
    let port = super::support::port(&broker);
    let (mut resumed, connack) = raw5(port, persistent());
    assert!(connack.session_present, "the session survived the kill");
    let (mut publisher, _) = raw5(port, connect5(&unique("many-durable-pub"), true));
    publisher.send5(Packet::Publish(v5::Publish::new(
        QosPid::Level1(pid(1)),
        topic("durable/999/x"),
        Bytes::from_static(b"kept"),
    )));
    match resumed.read5_within(PROMPT) {
        Ok(Packet::Publish(p)) => assert_eq!(p.payload, Bytes::from_static(b"kept")),
        other => panic!("the last acknowledged filter did not route after the kill: {other:?}"),
    }
}
