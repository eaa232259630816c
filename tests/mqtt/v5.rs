//! MQTT 5.0: properties, expiry, No Local, shared subscriptions, subscription identifiers,
//! retain options, topic aliases, session expiry, wills with delay, reason codes, flow control.

use std::time::Duration;

use bytes::Bytes;
use mqtt_proto::v5::{self, Packet, UserProperty};
use mqtt_proto::{QoS, QosPid};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS as Q;

use crate::support::*;

fn publish5(t: &str, qos_pid: QosPid, payload: &'static [u8]) -> v5::Publish {
    v5::Publish::new(qos_pid, topic(t), Bytes::from_static(payload))
}

#[test]
fn message_properties_reach_the_subscriber() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let mut sub = V5::connect(port, &unique("sub")).await;
        sub.subscribe("props/t", Q::AtLeastOnce).await;
        let mut publisher = V5::connect(port, &unique("pub")).await;
        let properties = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(3600),
            response_topic: Some("props/reply".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
            user_properties: vec![
                ("site".into(), "a".into()),
                ("site".into(), "b".into()),
                ("k".into(), "v".into()),
            ],
            content_type: Some("text/plain".into()),
            ..PublishProperties::default()
        };
        publisher
            .client
            .publish_with_properties("props/t", Q::AtLeastOnce, false, "hello", properties)
            .await
            .expect("publish");
        publisher.completed().await;
        let got = sub.publish().await;
        let p = got.properties.expect("properties");
        assert_eq!(p.payload_format_indicator, Some(1));
        let expiry = p.message_expiry_interval.expect("expiry interval");
        assert!(expiry > 3590 && expiry <= 3600, "{expiry}");
        assert_eq!(p.response_topic.as_deref(), Some("props/reply"));
        assert_eq!(p.correlation_data.as_deref(), Some(&b"\x00\x01corr"[..]));
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        let mut users = p.user_properties.clone();
        users.sort();
        assert_eq!(
            users,
            vec![
                ("k".to_owned(), "v".to_owned()),
                ("site".to_owned(), "a".to_owned()),
                ("site".to_owned(), "b".to_owned())
            ]
        );
    });
}

#[test]
fn an_expired_message_is_not_delivered() {
    let broker = broker();
    let port = port(&broker);
    let id = unique("late-reader");
    let mut c = connect5(&id, true);
    c.properties.session_expiry_interval = Some(300);
    let (mut reader, _) = raw5(port, c);
    reader.send5(subscribe5(1, "expiring/t", QoS::Level1));
    suback5(&mut reader);
    reader.send5(Packet::Disconnect(v5::Disconnect::new_normal()));
    drop(reader);

    let (mut publisher, _) = raw5(port, connect5(&unique("pub"), true));
    let mut short = publish5("expiring/t", QosPid::Level1(pid(1)), b"short");
    short.properties.message_expiry_interval = Some(1);
    publisher.send5(Packet::Publish(short));
    let mut long = publish5("expiring/t", QosPid::Level1(pid(2)), b"long");
    long.properties.message_expiry_interval = Some(600);
    publisher.send5(Packet::Publish(long));
    assert!(matches!(publisher.read5(), Ok(Packet::Puback(_))));
    assert!(matches!(publisher.read5(), Ok(Packet::Puback(_))));
    std::thread::sleep(Duration::from_millis(2100));

    let (mut reader, ack) = raw5(port, connect5(&id, false));
    assert!(ack.session_present);
    match reader.read5() {
        Ok(Packet::Publish(p)) => {
            assert_eq!(&p.payload[..], b"long", "the expired message was skipped");
            let left = p
                .properties
                .message_expiry_interval
                .expect("expiry interval");
            assert!(
                (590..600).contains(&left),
                "the interval counts down: {left}"
            );
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    assert!(matches!(reader.read5_within(QUIET), Err(ReadEnd::Timeout)));
}

#[test]
fn no_local_subscriptions_do_not_receive_their_own_messages() {
    let broker = broker();
    let port = port(&broker);
    let (mut client, _) = raw5(port, connect5(&unique("self"), true));
    let mut options = v5::SubscriptionOptions::new(QoS::Level0);
    options.no_local = true;
    client.send5(Packet::Subscribe(v5::Subscribe::new(
        pid(1),
        vec![(filter("nolocal/t"), options)],
    )));
    suback5(&mut client);
    let (mut other, _) = raw5(port, connect5(&unique("other"), true));
    other.send5(subscribe5(1, "nolocal/t", QoS::Level0));
    suback5(&mut other);

    client.send5(Packet::Publish(publish5(
        "nolocal/t",
        QosPid::Level0,
        b"mine",
    )));
    match other.read5() {
        Ok(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"mine"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    assert!(
        matches!(client.read5_within(QUIET), Err(ReadEnd::Timeout)),
        "own message came back"
    );
    let (mut third, _) = raw5(port, connect5(&unique("third"), true));
    third.send5(Packet::Publish(publish5(
        "nolocal/t",
        QosPid::Level0,
        b"theirs",
    )));
    match client.read5() {
        Ok(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"theirs"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[test]
fn a_shared_subscription_gives_each_message_to_one_member() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let group = unique("g");
        let shared = format!("$share/{group}/jobs/+");
        let mut a = V5::connect(port, &unique("a")).await;
        a.subscribe(&shared, Q::AtLeastOnce).await;
        let mut b = V5::connect(port, &unique("b")).await;
        b.subscribe(&shared, Q::AtLeastOnce).await;
        let mut publisher = V5::connect(port, &unique("pub")).await;
        for i in 0..10 {
            publisher
                .client
                .publish(format!("jobs/{i}"), Q::AtLeastOnce, false, format!("{i}"))
                .await
                .expect("publish");
            publisher.completed().await;
        }
        let mut seen = Vec::new();
        let (mut from_a, mut from_b) = (0, 0);
        while seen.len() < 10 {
            tokio::select! {
                Some(Ok(rumqttc::v5::mqttbytes::v5::Packet::Publish(p))) = a.next_incoming(WAIT) => { seen.push(p.payload.clone()); from_a += 1; }
                Some(Ok(rumqttc::v5::mqttbytes::v5::Packet::Publish(p))) = b.next_incoming(WAIT) => { seen.push(p.payload.clone()); from_b += 1; }
                else => panic!("shared messages stopped after {}", seen.len()),
            }
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 10, "each message exactly once");
        assert!(
            from_a > 0 && from_b > 0,
            "both members took messages: {from_a} / {from_b}"
        );
        a.no_publish().await;
        b.no_publish().await;
    });
}

#[test]
fn subscription_identifiers_come_back_with_matching_messages() {
    let broker = broker();
    let port = port(&broker);
    let (mut client, _) = raw5(port, connect5(&unique("ids"), true));
    let mut sub = v5::Subscribe::new(
        pid(1),
        vec![(filter("ids/#"), v5::SubscriptionOptions::new(QoS::Level0))],
    );
    sub.properties.subscription_id = Some(42.try_into().expect("id"));
    client.send5(Packet::Subscribe(sub));
    suback5(&mut client);
    client.send5(Packet::Publish(publish5("ids/x", QosPid::Level0, b"x")));
    match client.read5() {
        Ok(Packet::Publish(p)) => {
            assert_eq!(p.properties.subscription_id.map(|v| v.value()), Some(42))
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[test]
fn a_message_matching_several_subscriptions_carries_all_their_identifiers() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let mut sub = V5::connect(port, &unique("ids")).await;
        for (filter, id) in [("ids/#", 1), ("ids/+/x", 2), ("ids/a/x", 0), ("other/#", 4)] {
            let properties = rumqttc::v5::mqttbytes::v5::SubscribeProperties {
                id: (id != 0).then_some(id),
                user_properties: Vec::new(),
            };
            sub.client
                .subscribe_with_properties(filter, Q::AtLeastOnce, properties)
                .await
                .expect("subscribe request");
            sub.suback().await;
        }
        let mut publisher = V5::connect(port, &unique("pub")).await;
        publisher
            .client
            .publish("ids/a/x", Q::AtLeastOnce, false, "both")
            .await
            .expect("publish");
        publisher.completed().await;
        let p = sub.publish().await;
        assert_eq!(&p.payload[..], b"both");
        let mut ids = p.properties.expect("properties").subscription_identifiers;
        ids.sort_unstable();
        // The subscription without an identifier and the one that does not match add none.
        assert_eq!(
            ids,
            vec![1, 2],
            "one PUBLISH with the ids of both matching subscriptions"
        );
        sub.no_publish().await;
    });
}

#[test]
fn retain_as_published_and_retain_handling_are_honoured() {
    let broker = broker();
    let port = port(&broker);
    let (mut publisher, _) = raw5(port, connect5(&unique("pub"), true));
    let mut retained = publish5("rap/t", QosPid::Level1(pid(1)), b"kept");
    retained.retain = true;
    publisher.send5(Packet::Publish(retained));
    assert!(matches!(publisher.read5(), Ok(Packet::Puback(_))));

    let (mut client, _) = raw5(port, connect5(&unique("rh"), true));
    let subscribe = |id: u16, rap: bool, handling: v5::RetainHandling| {
        let mut o = v5::SubscriptionOptions::new(QoS::Level1);
        o.retain_as_published = rap;
        o.retain_handling = handling;
        Packet::Subscribe(v5::Subscribe::new(pid(id), vec![(filter("rap/t"), o)]))
    };
    // Retain Handling 2: nothing on subscribe.
    client.send5(subscribe(1, true, v5::RetainHandling::DoNotSend));
    suback5(&mut client);
    assert!(matches!(client.read5_within(QUIET), Err(ReadEnd::Timeout)));
    // Retain Handling 1: nothing, since the subscription exists already.
    client.send5(subscribe(
        2,
        true,
        v5::RetainHandling::SendAtSubscribeIfNotExist,
    ));
    suback5(&mut client);
    assert!(matches!(client.read5_within(QUIET), Err(ReadEnd::Timeout)));
    // Retain Handling 0: sent, with RETAIN.
    client.send5(subscribe(3, true, v5::RetainHandling::SendAtSubscribe));
    suback5(&mut client);
    match client.read5() {
        Ok(Packet::Publish(p)) => {
            assert!(p.retain);
            if let QosPid::Level1(id) = p.qos_pid {
                client.send5(Packet::Puback(v5::Puback::new_success(id)));
            }
        }
        other => panic!("expected the retained PUBLISH, got {other:?}"),
    }
    // Retain As Published: a live retained publish keeps its flag.
    let mut again = publish5("rap/t", QosPid::Level0, b"live");
    again.retain = true;
    publisher.send5(Packet::Publish(again));
    match client.read5() {
        Ok(Packet::Publish(p)) => assert!(p.retain && &p.payload[..] == b"live"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[test]
fn topic_aliases_work_in_both_directions() {
    let broker = broker();
    let port = port(&broker);
    let mut c = connect5(&unique("alias"), true);
    c.properties.topic_alias_max = Some(5);
    let (mut client, ack) = raw5(port, c);
    assert_eq!(ack.properties.topic_alias_max, Some(10));
    client.send5(subscribe5(1, "alias/long/topic/name", QoS::Level0));
    suback5(&mut client);
    // Client to server: define alias 3, then use it with an empty topic.
    let mut first = publish5("alias/long/topic/name", QosPid::Level0, b"one");
    first.properties.topic_alias = Some(3);
    client.send5(Packet::Publish(first));
    let mut second = publish5("", QosPid::Level0, b"two");
    second.properties.topic_alias = Some(3);
    client.send5(Packet::Publish(second));
    // Server to client: the first message carries topic and alias, the next only the alias.
    let (a, b) = match (client.read5(), client.read5()) {
        (Ok(Packet::Publish(a)), Ok(Packet::Publish(b))) => (a, b),
        other => panic!("expected two PUBLISHes, got {other:?}"),
    };
    assert_eq!(
        (&*a.topic_name, &a.payload[..]),
        ("alias/long/topic/name", &b"one"[..])
    );
    let alias = a
        .properties
        .topic_alias
        .expect("the broker assigned an alias");
    assert!((1..=5).contains(&alias));
    assert_eq!(
        (&*b.topic_name, b.properties.topic_alias, &b.payload[..]),
        ("", Some(alias), &b"two"[..])
    );
}

#[test]
fn an_out_of_range_topic_alias_is_a_disconnect_with_0x94() {
    let broker = broker();
    let (mut client, _) = raw5(port(&broker), connect5(&unique("alias"), true));
    let mut p = publish5("t", QosPid::Level0, b"x");
    p.properties.topic_alias = Some(11);
    client.send5(Packet::Publish(p));
    match client.until_closed5().as_slice() {
        [Packet::Disconnect(d)] => {
            assert_eq!(d.reason_code, v5::DisconnectReasonCode::TopicAliasInvalid)
        }
        other => panic!("expected DISCONNECT 0x94, got {other:?}"),
    }
}

#[test]
fn a_session_ends_after_its_expiry_interval() {
    let broker = broker();
    let port = port(&broker);
    let id = unique("short-lived");
    let mut c = connect5(&id, true);
    c.properties.session_expiry_interval = Some(1);
    let (mut client, _) = raw5(port, c.clone());
    client.send5(subscribe5(1, "short/t", QoS::Level1));
    suback5(&mut client);
    client.send5(Packet::Disconnect(v5::Disconnect::new_normal()));
    drop(client);
    let (_, ack) = raw5(port, connect5(&id, false));
    assert!(ack.session_present, "resumed within the interval");
    // That connection asked for no expiry, so its session ends when it closes; a session with
    // an interval of one second is gone a second after.
    let (mut again, _) = raw5(port, c);
    again.send5(Packet::Disconnect(v5::Disconnect::new_normal()));
    drop(again);
    std::thread::sleep(Duration::from_millis(2500));
    let (_, ack) = raw5(port, connect5(&id, false));
    assert!(!ack.session_present, "the session expired");
}

#[test]
fn connack_tells_the_assigned_client_id_and_the_server_limits() {
    let broker = broker_with("max_keep_alive = 20\nmax_inflight = 7\nmax_packet_size = 2048\n");
    let mut c = connect5("", true);
    c.keep_alive = 0;
    c.properties.request_response_info = Some(true);
    let (_, ack) = raw5(port(&broker), c);
    assert_eq!(ack.reason_code, v5::ConnectReasonCode::Success);
    let p = ack.properties;
    assert!(p
        .assigned_client_id
        .as_deref()
        .is_some_and(|id| !id.is_empty()));
    assert_eq!(
        p.server_keep_alive,
        Some(20),
        "keep-alive 0 is above the maximum"
    );
    assert_eq!(p.receive_max, Some(7));
    assert_eq!(p.max_packet_size, Some(2048));
    assert!(p.response_info.is_some());
}

#[test]
fn a_delayed_will_waits_and_is_cancelled_by_a_reconnect() {
    let broker = broker();
    let port = port(&broker);
    let (mut watcher, _) = raw5(port, connect5(&unique("watch"), true));
    watcher.send5(subscribe5(1, "dwill/#", QoS::Level0));
    suback5(&mut watcher);
    let will = |t: &str| {
        let mut w = v5::LastWill::new(QoS::Level0, topic(t), Bytes::from_static(b"bye"));
        w.properties.delay_interval = Some(1);
        w
    };
    // Cancelled: the client comes back within the delay.
    let id = unique("back");
    let mut c = connect5(&id, true);
    c.properties.session_expiry_interval = Some(60);
    c.last_will = Some(will("dwill/back"));
    let (client, _) = raw5(port, c);
    drop(client);
    let (_back, _) = raw5(port, connect5(&id, false));
    // Sent after the delay: the client stays away.
    let mut c = connect5(&unique("away"), true);
    c.properties.session_expiry_interval = Some(60);
    c.last_will = Some(will("dwill/away"));
    let (client, _) = raw5(port, c);
    let dropped = std::time::Instant::now();
    drop(client);
    match watcher.read5() {
        Ok(Packet::Publish(p)) => {
            assert_eq!(&*p.topic_name, "dwill/away");
            assert!(
                dropped.elapsed() >= Duration::from_millis(900),
                "sent before its delay"
            );
        }
        other => panic!("expected the will, got {other:?}"),
    }
    assert!(
        matches!(watcher.read5_within(QUIET), Err(ReadEnd::Timeout)),
        "the cancelled will was sent"
    );
}

#[test]
fn disconnect_with_will_message_sends_the_will() {
    let broker = broker();
    let port = port(&broker);
    let (mut watcher, _) = raw5(port, connect5(&unique("watch"), true));
    watcher.send5(subscribe5(1, "wwill/#", QoS::Level0));
    suback5(&mut watcher);
    let mut c = connect5(&unique("leaver"), true);
    c.last_will = Some(v5::LastWill::new(
        QoS::Level0,
        topic("wwill/t"),
        Bytes::from_static(b"bye"),
    ));
    let (mut client, _) = raw5(port, c);
    client.send5(Packet::Disconnect(v5::Disconnect::new(
        v5::DisconnectReasonCode::DisconnectWithWillMessage,
    )));
    assert!(matches!(watcher.read5(), Ok(Packet::Publish(p)) if &*p.topic_name == "wwill/t"));
}

#[test]
fn enhanced_authentication_is_refused_with_bad_authentication_method() {
    let broker = broker();
    let mut raw = Raw::connect(port(&broker));
    let mut c = connect5(&unique("scram"), true);
    c.properties.auth_method = Some("SCRAM-SHA-1".into());
    raw.send5(Packet::Connect(c));
    match raw.until_closed5().as_slice() {
        [Packet::Connack(ack)] => assert_eq!(ack.reason_code, v5::ConnectReasonCode::BadAuthMethod),
        other => panic!("expected CONNACK 0x8C, got {other:?}"),
    }
}

#[test]
fn bad_credentials_get_0x86() {
    let broker = broker();
    let mut raw = Raw::connect(port(&broker));
    let mut c = connect5(&unique("intruder"), true);
    c.password = Some(Bytes::from_static(b"nope"));
    raw.send5(Packet::Connect(c));
    match raw.until_closed5().as_slice() {
        [Packet::Connack(ack)] => assert_eq!(
            ack.reason_code,
            v5::ConnectReasonCode::BadUserNameOrPassword
        ),
        other => panic!("expected CONNACK 0x86, got {other:?}"),
    }
}

#[test]
fn a_takeover_tells_the_old_connection_0x8e() {
    let broker = broker();
    let port = port(&broker);
    let id = unique("taken");
    let (mut old, _) = raw5(port, connect5(&id, true));
    let (_new, _) = raw5(port, connect5(&id, true));
    match old.until_closed5().as_slice() {
        [Packet::Disconnect(d)] => {
            assert_eq!(d.reason_code, v5::DisconnectReasonCode::SessionTakenOver)
        }
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
}

#[test]
fn a_repeated_qos2_publish_is_routed_once_even_across_a_reconnect() {
    let broker = broker();
    let port = port(&broker);
    let (mut sub, _) = raw5(port, connect5(&unique("sub"), true));
    sub.send5(subscribe5(1, "once/t", QoS::Level0));
    suback5(&mut sub);

    let id = unique("exactly-once");
    let mut c = connect5(&id, true);
    c.properties.session_expiry_interval = Some(60);
    let (mut publisher, _) = raw5(port, c);
    publisher.send5(Packet::Publish(publish5(
        "once/t",
        QosPid::Level2(pid(7)),
        b"once",
    )));
    assert!(matches!(publisher.read5(), Ok(Packet::Pubrec(r)) if r.pid == pid(7)));
    drop(publisher); // PUBREC "lost": the client will send the PUBLISH again

    let (mut publisher, ack) = raw5(port, connect5(&id, false));
    assert!(ack.session_present);
    let mut dup = publish5("once/t", QosPid::Level2(pid(7)), b"once");
    dup.dup = true;
    publisher.send5(Packet::Publish(dup));
    assert!(matches!(publisher.read5(), Ok(Packet::Pubrec(r)) if r.pid == pid(7)));
    publisher.send5(Packet::Pubrel(v5::Pubrel::new_success(pid(7))));
    match publisher.read5() {
        Ok(Packet::Pubcomp(c)) => assert_eq!(
            (c.pid, c.reason_code),
            (pid(7), v5::PubcompReasonCode::Success)
        ),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    assert!(matches!(sub.read5(), Ok(Packet::Publish(p)) if &p.payload[..] == b"once"));
    assert!(
        matches!(sub.read5_within(QUIET), Err(ReadEnd::Timeout)),
        "delivered twice"
    );
}

#[test]
fn receive_maximum_limits_unacknowledged_deliveries() {
    let broker = broker();
    let port = port(&broker);
    let mut c = connect5(&unique("slow"), true);
    c.properties.receive_max = Some(2);
    let (mut client, _) = raw5(port, c);
    client.send5(subscribe5(1, "flow/t", QoS::Level1));
    suback5(&mut client);
    let (mut publisher, _) = raw5(port, connect5(&unique("pub"), true));
    for i in 1..=5 {
        publisher.send5(Packet::Publish(publish5(
            "flow/t",
            QosPid::Level1(pid(i)),
            b"m",
        )));
        assert!(matches!(publisher.read5(), Ok(Packet::Puback(_))));
    }
    let mut ids = Vec::new();
    for _ in 0..2 {
        match client.read5() {
            Ok(Packet::Publish(p)) => ids.extend(p.qos_pid.pid()),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    assert!(
        matches!(client.read5_within(QUIET), Err(ReadEnd::Timeout)),
        "more than Receive Maximum in flight"
    );
    client.send5(Packet::Puback(v5::Puback::new_success(ids[0])));
    assert!(
        matches!(client.read5(), Ok(Packet::Publish(_))),
        "an acknowledgement lets the next one through"
    );
}

#[test]
fn publishing_above_receive_maximum_is_a_disconnect_with_0x93() {
    let broker = broker_with("max_inflight = 2\n");
    // QoS 2 publishes never released with PUBREL stay in flight.
    let (mut client, _) = raw5(port(&broker), connect5(&unique("greedy"), true));
    let mut sent = 0u16;
    let got = loop {
        sent += 1;
        let mut p = publish5("greedy/t", QosPid::Level2(pid(sent)), b"m");
        p.properties.user_properties.push(UserProperty {
            name: "n".into(),
            value: sent.to_string().into(),
        });
        client.send5(Packet::Publish(p));
        if sent == 3 {
            break client.until_closed5();
        }
    };
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason_code == v5::DisconnectReasonCode::ReceiveMaximumExceeded),
        "{got:?}"
    );
}

#[test]
fn an_outgoing_qos2_exchange_resumes_with_its_packet_id_after_a_reconnect() {
    let broker = broker();
    let port = port(&broker);
    let id = unique("qos2-reader");
    let session = |clean: bool| {
        let mut c = connect5(&id, clean);
        c.properties.session_expiry_interval = Some(600);
        c
    };
    let (mut reader, _) = raw5(port, session(true));
    reader.send5(subscribe5(1, "q2/t", QoS::Level2));
    suback5(&mut reader);
    let (mut publisher, _) = raw5(port, connect5(&unique("pub"), true));
    publisher.send5(Packet::Publish(publish5(
        "q2/t",
        QosPid::Level1(pid(1)),
        b"first",
    )));
    assert!(matches!(publisher.read5(), Ok(Packet::Puback(_))));

    // Received but not acknowledged: sent again, with DUP.
    match reader.read5() {
        Ok(Packet::Publish(p)) => assert!(!p.dup),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    drop(reader);
    let (mut reader, ack) = raw5(port, session(false));
    assert!(ack.session_present);
    match reader.read5() {
        Ok(Packet::Publish(p)) => {
            assert!(p.dup && &p.payload[..] == b"first");
            let QosPid::Level1(again) = p.qos_pid else {
                panic!("QoS 1 as published")
            };
            reader.send5(Packet::Puback(v5::Puback::new_success(again)));
        }
        other => panic!("expected the PUBLISH again, got {other:?}"),
    }
    // Packets are handled in order: once PINGRESP is back, so is the PUBACK.
    reader.send5(Packet::Pingreq);
    assert!(matches!(reader.read5(), Ok(Packet::Pingresp)));

    // QoS 2: received (PUBREC sent) but not completed: PUBREL comes again after a reconnect.
    publisher.send5(Packet::Publish(publish5(
        "q2/t",
        QosPid::Level2(pid(2)),
        b"second",
    )));
    assert!(matches!(publisher.read5(), Ok(Packet::Pubrec(_))));
    publisher.send5(Packet::Pubrel(v5::Pubrel::new_success(pid(2))));
    assert!(matches!(publisher.read5(), Ok(Packet::Pubcomp(_))));
    let second_id = match reader.read5() {
        Ok(Packet::Publish(p)) => {
            assert_eq!(p.qos_pid.qos(), QoS::Level2);
            p.qos_pid.pid().expect("packet id")
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    // First time: drop before PUBREC, so the PUBLISH itself comes again, same id.
    drop(reader);
    let (mut reader, _) = raw5(port, session(false));
    match reader.read5() {
        // [MQTT-4.4.0-1]: a QoS 2 PUBLISH is resent with its original packet id.
        Ok(Packet::Publish(p)) => assert_eq!((p.qos_pid.pid(), p.dup), (Some(second_id), true)),
        other => panic!("expected the QoS 2 PUBLISH again, got {other:?}"),
    }
    reader.send5(Packet::Pubrec(v5::Pubrec::new_success(second_id)));
    assert!(matches!(reader.read5(), Ok(Packet::Pubrel(r)) if r.pid == second_id));
    // Then drop before PUBCOMP: the PUBREL comes again, and not the message.
    drop(reader);
    let (mut reader, _) = raw5(port, session(false));
    assert!(matches!(reader.read5(), Ok(Packet::Pubrel(r)) if r.pid == second_id));
    reader.send5(Packet::Pubcomp(v5::Pubcomp::new_success(second_id)));
    assert!(
        matches!(reader.read5_within(QUIET), Err(ReadEnd::Timeout)),
        "delivered again after PUBREC"
    );
}

#[test]
fn one_subscribe_grants_each_filter_its_qos_and_unsubscribe_reports_each() {
    let broker = broker();
    let port = port(&broker);
    let (mut client, _) = raw5(port, connect5(&unique("multi"), true));
    let topics = vec![
        (filter("m/a"), v5::SubscriptionOptions::new(QoS::Level0)),
        (filter("m/+/c"), v5::SubscriptionOptions::new(QoS::Level2)),
        (
            filter(&format!("$share/{}/m/#", unique("g"))),
            v5::SubscriptionOptions::new(QoS::Level1),
        ),
    ];
    client.send5(Packet::Subscribe(v5::Subscribe::new(pid(1), topics)));
    assert_eq!(
        suback5(&mut client),
        vec![
            v5::SubscribeReasonCode::GrantedQoS0,
            v5::SubscribeReasonCode::GrantedQoS2,
            v5::SubscribeReasonCode::GrantedQoS1
        ]
    );
    client.send5(Packet::Unsubscribe(v5::Unsubscribe::new(
        pid(2),
        vec![filter("m/a"), filter("m/never")],
    )));
    match client.read5() {
        Ok(Packet::Unsuback(u)) => assert_eq!(
            u.topics,
            vec![
                v5::UnsubscribeReasonCode::Success,
                v5::UnsubscribeReasonCode::NoSubscriptionExisted
            ]
        ),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
}
