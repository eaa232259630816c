//! MQTT 3.1.1 with rumqttc: QoS 0, 1 and 2, wildcards, retained messages, persistent sessions,
//! takeover, wills and keep-alive.

use std::time::Duration;

use mqtt_proto::v3;
use rumqttc::{LastWill, QoS};

use crate::support::*;

#[test]
fn every_qos_reaches_a_wildcard_subscriber() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let mut sub = V4::connect(port, &unique("sub"), true).await;
        let codes = sub.subscribe("sensors/+/temp", QoS::ExactlyOnce).await;
        assert_eq!(
            codes,
            vec![rumqttc::SubscribeReasonCode::Success(QoS::ExactlyOnce)]
        );
        let mut publisher = V4::connect(port, &unique("pub"), true).await;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            publisher
                .send(
                    &format!("sensors/s{i}/temp"),
                    qos,
                    false,
                    format!("m{i}").as_bytes(),
                )
                .await;
            let got = sub.publish().await;
            assert_eq!(got.topic, format!("sensors/s{i}/temp"));
            assert_eq!(&got.payload[..], format!("m{i}").as_bytes());
            assert_eq!(got.qos, qos);
            assert!(!got.retain && !got.dup);
        }
        publisher
            .send("sensors/x/humidity", QoS::AtLeastOnce, false, b"no")
            .await;
        sub.no_publish().await;
    });
}

#[test]
fn delivered_qos_is_the_lower_of_published_and_granted() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let mut sub = V4::connect(port, &unique("sub"), true).await;
        sub.subscribe("qos/cap", QoS::AtLeastOnce).await;
        let mut publisher = V4::connect(port, &unique("pub"), true).await;
        publisher
            .send("qos/cap", QoS::ExactlyOnce, false, b"2")
            .await;
        assert_eq!(sub.publish().await.qos, QoS::AtLeastOnce);
        publisher
            .send("qos/cap", QoS::AtMostOnce, false, b"0")
            .await;
        assert_eq!(sub.publish().await.qos, QoS::AtMostOnce);
    });
}

#[test]
fn retained_messages_reach_exact_and_wildcard_subscribers_until_cleared() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let mut publisher = V4::connect(port, &unique("pub"), true).await;
        publisher
            .send("home/kitchen/temp", QoS::AtLeastOnce, true, b"21")
            .await;
        for f in ["home/kitchen/temp", "home/+/temp", "home/#", "#"] {
            let mut sub = V4::connect(port, &unique("sub"), true).await;
            sub.subscribe(f, QoS::AtLeastOnce).await;
            let got = sub.publish().await;
            assert_eq!(&got.payload[..], b"21", "filter {f}");
            assert!(
                got.retain,
                "a retained message sent on subscribe keeps RETAIN (filter {f})"
            );
        }
        // Forwarded live, the RETAIN flag is cleared ([MQTT-3.3.1-9]).
        let mut live = V4::connect(port, &unique("live"), true).await;
        live.subscribe("home/hall/temp", QoS::AtLeastOnce).await;
        publisher
            .send("home/hall/temp", QoS::AtLeastOnce, true, b"19")
            .await;
        assert!(!live.publish().await.retain);
        // An empty retained payload clears the topic.
        publisher
            .send("home/kitchen/temp", QoS::AtLeastOnce, true, b"")
            .await;
        let mut late = V4::connect(port, &unique("late"), true).await;
        late.subscribe("home/kitchen/#", QoS::AtLeastOnce).await;
        late.no_publish().await;
    });
}

#[test]
fn leading_wildcards_do_not_match_dollar_topics() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let mut all = V4::connect(port, &unique("all"), true).await;
        all.subscribe("#", QoS::AtLeastOnce).await;
        let mut plus = V4::connect(port, &unique("plus"), true).await;
        plus.subscribe("+/broker/load", QoS::AtLeastOnce).await;
        // A `$` topic clients may publish to: `$SYS` is the broker's own (tests/mqtt/mosquitto.rs).
        let mut sys = V4::connect(port, &unique("sys"), true).await;
        sys.subscribe("$app/#", QoS::AtLeastOnce).await;
        let mut publisher = V4::connect(port, &unique("pub"), true).await;
        publisher
            .send("$app/broker/load", QoS::AtLeastOnce, true, b"0.5")
            .await;
        assert_eq!(&sys.publish().await.payload[..], b"0.5");
        all.no_publish().await;
        plus.no_publish().await;
        // Nor as retained messages on subscribe.
        let mut late = V4::connect(port, &unique("late"), true).await;
        late.subscribe("#", QoS::AtLeastOnce).await;
        late.no_publish().await;
    });
}

#[test]
fn a_persistent_session_keeps_subscriptions_and_queues_messages_while_offline() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let id = unique("persistent");
        let mut first = V4::connect(port, &id, false).await;
        assert!(!first.session_present);
        first.subscribe("offline/#", QoS::ExactlyOnce).await;
        first.disconnect().await;

        let mut publisher = V4::connect(port, &unique("pub"), true).await;
        publisher
            .send("offline/a", QoS::AtLeastOnce, false, b"one")
            .await;
        publisher
            .send("offline/b", QoS::ExactlyOnce, false, b"two")
            .await;

        let mut back = V4::connect(port, &id, false).await;
        assert!(
            back.session_present,
            "session present after reconnecting to a persistent session"
        );
        let a = back.publish().await;
        let b = back.publish().await;
        assert_eq!((&a.payload[..], a.qos), (&b"one"[..], QoS::AtLeastOnce));
        assert_eq!((&b.payload[..], b.qos), (&b"two"[..], QoS::ExactlyOnce));
        // The subscription itself survived too.
        publisher
            .send("offline/c", QoS::AtLeastOnce, false, b"three")
            .await;
        assert_eq!(&back.publish().await.payload[..], b"three");
    });
}

#[test]
fn a_clean_session_discards_the_previous_session() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let id = unique("cleaned");
        let mut first = V4::connect(port, &id, false).await;
        first.subscribe("discard/#", QoS::AtLeastOnce).await;
        first.disconnect().await;
        let mut publisher = V4::connect(port, &unique("pub"), true).await;
        publisher
            .send("discard/x", QoS::AtLeastOnce, false, b"lost")
            .await;

        let mut clean = V4::connect(port, &id, true).await;
        assert!(!clean.session_present);
        clean.no_publish().await;
        clean.disconnect().await;
        let resumed = V4::connect(port, &id, false).await;
        assert!(
            !resumed.session_present,
            "the clean session ended with its connection"
        );
    });
}

#[test]
fn an_unacknowledged_message_is_sent_again_with_dup_after_reconnect() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let id = unique("redeliver");
        let mut options = v4_options(port, &id);
        options.set_clean_session(false).set_manual_acks(true);
        let mut first = V4::with(options.clone()).await;
        first.subscribe("redo", QoS::AtLeastOnce).await;
        let mut publisher = V4::connect(port, &unique("pub"), true).await;
        publisher
            .send("redo", QoS::AtLeastOnce, false, b"again")
            .await;
        let got = first.publish().await;
        assert!(!got.dup);
        drop(first); // no PUBACK, no DISCONNECT

        let mut second = V4::with(options).await;
        assert!(second.session_present);
        let again = second.publish().await;
        assert_eq!(&again.payload[..], b"again");
        assert!(again.dup, "a resent PUBLISH has DUP set");
        second.client.ack(&again).await.expect("ack");
    });
}

#[test]
fn a_second_connection_with_the_same_client_id_takes_over() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let id = unique("twin");
        let mut old = V4::connect(port, &id, false).await;
        old.subscribe("twin/t", QoS::AtLeastOnce).await;
        let mut new = V4::connect(port, &id, false).await;
        assert!(new.session_present);
        old.closed().await;
        let mut publisher = V4::connect(port, &unique("pub"), true).await;
        publisher
            .send("twin/t", QoS::AtLeastOnce, false, b"to the new one")
            .await;
        assert_eq!(&new.publish().await.payload[..], b"to the new one");
    });
}

#[test]
fn the_will_is_published_when_the_connection_drops_but_not_after_disconnect() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let mut watcher = V4::connect(port, &unique("watch"), true).await;
        watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

        let mut options = v4_options(port, &unique("dies"));
        options.set_last_will(LastWill::new("wills/dies", "gone", QoS::AtLeastOnce, false));
        let dying = V4::with(options).await;
        drop(dying);
        let will = watcher.publish().await;
        assert_eq!(
            (will.topic.as_str(), &will.payload[..]),
            ("wills/dies", &b"gone"[..])
        );

        let mut options = v4_options(port, &unique("polite"));
        options.set_last_will(LastWill::new(
            "wills/polite",
            "gone",
            QoS::AtLeastOnce,
            false,
        ));
        V4::with(options).await.disconnect().await;
        watcher.no_publish().await;
    });
}

#[test]
fn unsubscribe_stops_delivery() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let mut sub = V4::connect(port, &unique("sub"), true).await;
        sub.subscribe("unsub/t", QoS::AtLeastOnce).await;
        sub.client
            .unsubscribe("unsub/t")
            .await
            .expect("unsubscribe");
        loop {
            match sub.next_incoming(WAIT).await {
                Some(Ok(rumqttc::Packet::UnsubAck(_))) => break,
                Some(Ok(_)) => continue,
                other => panic!("no UNSUBACK: {other:?}"),
            }
        }
        let mut publisher = V4::connect(port, &unique("pub"), true).await;
        publisher
            .send("unsub/t", QoS::AtLeastOnce, false, b"x")
            .await;
        sub.no_publish().await;
    });
}

#[test]
fn a_wrong_password_is_refused_with_return_code_4() {
    let broker = broker();
    let mut raw = Raw::connect(port(&broker));
    let mut c = connect3("bad-login", true);
    c.password = Some(bytes::Bytes::from_static(b"wrong"));
    raw.send3(v3::Packet::Connect(c));
    match raw.read3() {
        Ok(v3::Packet::Connack(ack)) => {
            assert_eq!(ack.code, v3::ConnectReturnCode::BadUserNameOrPassword)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert!(raw.closed_silently());
}

#[test]
fn an_empty_client_id_needs_a_clean_session() {
    let broker = broker();
    let port = port(&broker);
    let mut raw = Raw::connect(port);
    raw.send3(v3::Packet::Connect(connect3("", true)));
    match raw.read3() {
        Ok(v3::Packet::Connack(ack)) => assert_eq!(ack.code, v3::ConnectReturnCode::Accepted),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let mut raw = Raw::connect(port);
    raw.send3(v3::Packet::Connect(connect3("", false)));
    match raw.read3() {
        // [MQTT-3.1.3-8]
        Ok(v3::Packet::Connack(ack)) => {
            assert_eq!(ack.code, v3::ConnectReturnCode::IdentifierRejected)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn a_client_silent_past_one_and_a_half_keep_alives_is_disconnected() {
    let broker = broker();
    let mut raw = Raw::connect(port(&broker));
    let mut c = connect3(&unique("sleepy"), true);
    c.keep_alive = 1;
    raw.send3(v3::Packet::Connect(c));
    assert!(matches!(raw.read3(), Ok(v3::Packet::Connack(_))));
    let started = std::time::Instant::now();
    assert!(raw.closed_silently(), "the broker closes a silent client");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "closed after {:?}, before 1.5 keep-alives",
        started.elapsed()
    );

    // A client that pings in time stays connected.
    let mut raw = Raw::connect(port(&broker));
    let mut c = connect3(&unique("awake"), true);
    c.keep_alive = 1;
    raw.send3(v3::Packet::Connect(c));
    assert!(matches!(raw.read3(), Ok(v3::Packet::Connack(_))));
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(700));
        raw.send3(v3::Packet::Pingreq);
        assert!(matches!(raw.read3(), Ok(v3::Packet::Pingresp)));
    }
}
