//! What Mosquitto's users rely on: the `$SYS/broker/...` topics, a DISCONNECT the client can
//! read before the socket closes, and a SUBSCRIBE taking effect before another connection's
//! PUBLISH read at the same moment (over TLS and WebSocket in tests/tls/mqtt.rs and
//! websocket.rs, with misbehaving clients around in order.rs).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use mqtt_proto::v5::{self, DisconnectReasonCode};
use mqtt_proto::{QoS, QosPid};
use rosetta_tests::{input_order_timeouts, publishes_missed_by_an_early_subscriber};

use crate::support::*;

/// Updated every second, so a test sees a second round quickly.
const EVERY_SECOND: &str = "sys_interval = 1\n";

/// A test of a payload's format.
type Format = fn(&str) -> bool;

/// The topics Mosquitto's dashboards read, each with a test of its payload's format.
const SYS_TOPICS: [(&str, Format); 22] = [
    ("$SYS/broker/version", |p| p.starts_with("rosetta version ")),
    ("$SYS/broker/uptime", |p| {
        p.strip_suffix(" seconds").is_some_and(is_count)
    }),
    ("$SYS/broker/clients/connected", is_count),
    ("$SYS/broker/clients/total", is_count),
    ("$SYS/broker/clients/disconnected", is_count),
    ("$SYS/broker/clients/maximum", is_count),
    ("$SYS/broker/messages/received", is_count),
    ("$SYS/broker/messages/sent", is_count),
    ("$SYS/broker/bytes/received", is_count),
    ("$SYS/broker/bytes/sent", is_count),
    ("$SYS/broker/subscriptions/count", is_count),
    ("$SYS/broker/retained messages/count", is_count),
    ("$SYS/broker/store/messages/count", is_count),
    ("$SYS/broker/load/messages/received/1min", is_load),
    ("$SYS/broker/load/messages/received/5min", is_load),
    ("$SYS/broker/load/messages/received/15min", is_load),
    ("$SYS/broker/load/messages/sent/1min", is_load),
    ("$SYS/broker/load/messages/sent/5min", is_load),
    ("$SYS/broker/load/messages/sent/15min", is_load),
    ("$SYS/broker/load/bytes/received/1min", is_load),
    ("$SYS/broker/load/bytes/sent/5min", is_load),
    ("$SYS/broker/load/bytes/sent/15min", is_load),
];

fn is_count(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
}

/// Mosquitto's "%.2f".
fn is_load(p: &str) -> bool {
    p.split_once('.')
        .is_some_and(|(whole, cents)| is_count(whole) && cents.len() == 2 && is_count(cents))
}

/// Collects PUBLISHes until every topic in `wanted` was seen: by topic, the latest payload and
/// whether one of them came as a retained message (live updates of a topic may arrive on
/// either side of its retained copy).
async fn collect(client: &mut V4, wanted: &[&str]) -> HashMap<String, (String, bool)> {
    let mut seen: HashMap<String, (String, bool)> = HashMap::new();
    while !wanted.iter().all(|t| seen.contains_key(*t)) {
        let p = client.publish().await;
        let payload = String::from_utf8(p.payload.to_vec()).expect("UTF-8 payload");
        let entry = seen.entry(p.topic.clone()).or_default();
        entry.0 = payload;
        entry.1 |= p.retain;
    }
    seen
}

/// Mosquitto always delivers it: one thread goes through its ready sockets in the order their
/// data arrived. Rosetta handles connections in parallel, and the runtime may run B's task
/// first, so MQTT input is taken up in the order the reactor woke the connections and the
/// kernel holds it (crates/rosetta-server/src/connection/input_order.rs): B's PUBLISH waits
/// until A's SUBSCRIBE, woken earlier or still unread in A's socket, is in place. It never had
/// to wait so long that it gave up.
#[test]
fn publishes_read_together_with_a_subscribe_reach_it() {
    let broker = broker_with_http("");
    let port = port(&broker);
    let mut a = mqtt3_tcp(port, &unique("early-sub"));
    let mut b = mqtt3_tcp(port, &unique("prompt-pub"));
    let missed = publishes_missed_by_an_early_subscriber(&mut a, &mut b, &unique("race"), ROUNDS);
    assert_eq!(missed, 0, "missed in {missed} of {ROUNDS} rounds");
    assert_eq!(input_order_timeouts(broker.http_addr()), 0.0);
}

#[test]
fn sys_topics_are_retained_with_mosquittos_names_and_formats() {
    let broker = broker_with(EVERY_SECOND);
    let port = port(&broker);
    run(async move {
        // Once a round has been published, the whole tree is retained for whoever subscribes
        // later, as with Mosquitto. The probe waits for every topic of the first round: one
        // topic alone may come before the rest of its round is published.
        let names: Vec<&str> = SYS_TOPICS.iter().map(|(t, _)| *t).collect();
        let mut probe = V4::connect(port, &unique("probe"), true).await;
        probe.subscribe("$SYS/#", rumqttc::QoS::AtMostOnce).await;
        collect(&mut probe, &names).await;
        let mut watcher = V4::connect(port, &unique("sys"), true).await;
        watcher.subscribe("$SYS/#", rumqttc::QoS::AtMostOnce).await;
        let seen = collect(&mut watcher, &names).await;
        for (topic, well_formed) in SYS_TOPICS {
            let (payload, retained) = &seen[topic];
            assert!(
                *retained,
                "{topic} was not sent as a retained message: {seen:?}"
            );
            assert!(well_formed(payload), "{topic} = {payload:?}");
        }
        // Every interval brings what changed, the uptime at least, as live messages; by the
        // second one after the watcher connected, both clients are counted.
        let mut connected = seen["$SYS/broker/clients/connected"].0.clone();
        let mut rounds = 0;
        while rounds < 2 {
            let p = watcher.publish().await;
            let payload = String::from_utf8_lossy(&p.payload).into_owned();
            match p.topic.as_str() {
                "$SYS/broker/uptime" => {
                    assert!(!p.retain, "a live update is not flagged retained");
                    rounds += 1;
                }
                "$SYS/broker/clients/connected" => connected = payload,
                _ => {}
            }
        }
        assert_eq!(connected, "2");
    });
}

#[test]
fn wildcards_at_the_start_do_not_match_sys_topics_but_sys_filters_do() {
    let broker = broker_with(EVERY_SECOND);
    let port = port(&broker);
    run(async move {
        let mut everything = V4::connect(port, &unique("hash"), true).await;
        everything.subscribe("#", rumqttc::QoS::AtMostOnce).await;
        let mut levels = V4::connect(port, &unique("plus"), true).await;
        levels
            .subscribe("+/broker/uptime", rumqttc::QoS::AtMostOnce)
            .await;
        let mut sys = V4::connect(port, &unique("sys"), true).await;
        sys.subscribe("$SYS/broker/+", rumqttc::QoS::AtMostOnce)
            .await;
        // Two rounds of updates reach the $SYS subscriber...
        collect(&mut sys, &["$SYS/broker/uptime"]).await;
        loop {
            if !sys.publish().await.retain {
                break;
            }
        }
        // ...and none of them the leading wildcards, which still match other topics.
        let t = unique("plain");
        let mut publisher = V4::connect(port, &unique("pub"), true).await;
        publisher
            .send(&t, rumqttc::QoS::AtLeastOnce, false, b"hello")
            .await;
        let got = everything.publish().await;
        assert_eq!(got.topic, t, "'#' received {got:?}");
        everything.no_publish().await;
        levels.no_publish().await;
    });
}

#[test]
fn amqp_sees_sys_only_when_bound_to_the_sys_exchange() {
    let broker = broker_with(EVERY_SECOND);
    let port = port(&broker);
    run(async move {
        let channel = amqp(&broker).await;
        let declare = |name: String| {
            let channel = channel.clone();
            async move {
                channel
                    .queue_declare(
                        name.as_str().into(),
                        lapin::options::QueueDeclareOptions {
                            exclusive: true,
                            ..Default::default()
                        },
                        lapin::types::FieldTable::default(),
                    )
                    .await
                    .expect("queue.declare");
                name
            }
        };
        let all = declare(unique("all")).await;
        let status = declare(unique("status")).await;
        // `mqtt.sys` exists from the start when MQTT is on.
        for (queue, exchange, key) in [
            (&all, "amq.topic", "#"),
            (&status, "mqtt.sys", "$SYS.broker.uptime"),
        ] {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.into(),
                    key.into(),
                    Default::default(),
                    lapin::types::FieldTable::default(),
                )
                .await
                .expect("queue.bind");
        }
        let got = amqp_get(&channel, &status).await;
        assert!(
            String::from_utf8_lossy(&got.delivery.data).ends_with(" seconds"),
            "{:?}",
            got.delivery.data
        );
        let mut plain = V4::connect(port, &unique("pub"), true).await;
        let marker = unique("marker");
        plain
            .send(&marker, rumqttc::QoS::AtLeastOnce, false, b"m")
            .await;
        // amq.topic's '#' gets the client's message and nothing of $SYS before it.
        let first = amqp_get(&channel, &all).await;
        assert_eq!(first.delivery.routing_key.as_str(), marker);
    });
}

#[test]
fn sys_interval_0_publishes_no_status() {
    let broker = broker_with("sys_interval = 0\n");
    let port = port(&broker);
    run(async move {
        let mut watcher = V4::connect(port, &unique("sys"), true).await;
        let codes = watcher.subscribe("$SYS/#", rumqttc::QoS::AtMostOnce).await;
        assert_eq!(
            codes,
            vec![rumqttc::SubscribeReasonCode::Success(
                rumqttc::QoS::AtMostOnce
            )]
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        watcher.no_publish().await;
    });
}

#[test]
fn a_client_publish_to_sys_is_dropped() {
    let broker = broker_with("sys_interval = 0\n");
    let port = port(&broker);
    let (mut watcher, _) = raw5(port, connect5(&unique("sys-watch"), true));
    watcher.send5(subscribe5(1, "$SYS/#", QoS::Level1));
    suback5(&mut watcher);
    let (mut client, _) = raw5(port, connect5(&unique("spoofer"), true));
    let mut spoof = v5::Publish::new(
        QosPid::Level1(pid(7)),
        topic("$SYS/broker/uptime"),
        Bytes::from_static(b"1 seconds"),
    );
    spoof.retain = true;
    client.send5(v5::Packet::Publish(spoof));
    // Answered, as Mosquitto answers a publish it refuses, so the client does not resend it.
    match client.read5() {
        Ok(v5::Packet::Puback(ack)) => {
            assert_eq!(ack.reason_code, v5::PubackReasonCode::NotAuthorized)
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert_eq!(
        watcher.read5_within(QUIET),
        Err(ReadEnd::Timeout),
        "a client's $SYS message was routed"
    );
    // Nor was it retained.
    let (mut late, _) = raw5(port, connect5(&unique("sys-late"), true));
    late.send5(subscribe5(1, "$SYS/broker/uptime", QoS::Level1));
    suback5(&mut late);
    assert_eq!(late.read5_within(QUIET), Err(ReadEnd::Timeout));
    // The connection stays usable.
    client.send5(v5::Packet::Pingreq);
    assert!(matches!(client.read5(), Ok(v5::Packet::Pingresp)));
}

/// A client whose writes are still arriving when the broker disconnects it (here: QoS 2
/// publishes past Receive Maximum) reads the DISCONNECT 0x93, can still write (what a client
/// does before it reads the reason) and then sees an orderly end of the stream: the broker
/// shuts its side and reads and drops what follows for a moment before it closes. Closing at
/// once, with the client's bytes unread, sends a reset instead, which fails the client's next
/// write (most clients then report a broken connection and never read the reason) and can
/// destroy the DISCONNECT itself.
#[test]
fn the_disconnect_reason_reaches_a_client_that_keeps_writing() {
    let broker = broker_with("max_inflight = 2\n");
    let port = port(&broker);
    let publish = |n: u16| {
        let p = v5::Publish::new(
            QosPid::Level2(pid(n)),
            topic("flood/t"),
            Bytes::from_static(b"0123456789"),
        );
        v5::Packet::Publish(p)
            .encode()
            .expect("encode")
            .as_ref()
            .to_vec()
    };
    for round in 0..5 {
        let (client, _) = raw5(port, connect5(&unique("flood"), true));
        let (mut stream, mut input) = client.into_parts();
        // QoS 2 publishes never released stay in flight: the third is one too many, and the
        // rest are more than the broker reads before it decides.
        let burst: Vec<u8> = (1..=200).flat_map(publish).collect();
        stream.write_all(&burst).expect("write the burst");
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        let mut got = Vec::new();
        let mut wrote_after = None;
        let end = loop {
            while let Some(len) = packet_len(&input).filter(|len| input.len() >= *len) {
                let bytes: Vec<u8> = input.drain(..len).collect();
                let packet = v5::Packet::decode(&bytes)
                    .expect("a valid 5.0 packet")
                    .expect("a whole packet");
                if matches!(packet, v5::Packet::Disconnect(_)) {
                    wrote_after = Some(stream.write_all(&publish(201)));
                }
                got.push(packet);
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) => break Ok(()),
                Ok(n) => input.extend_from_slice(&chunk[..n]),
                Err(e) => break Err(e),
            }
        };
        assert!(
            matches!(got.last(), Some(v5::Packet::Disconnect(d)) if d.reason_code == DisconnectReasonCode::ReceiveMaximumExceeded),
            "round {round}: the client read {got:?}"
        );
        assert!(
            matches!(wrote_after, Some(Ok(()))),
            "round {round}: the write after the DISCONNECT: {wrote_after:?}"
        );
        assert!(
            end.is_ok(),
            "round {round}: the stream ended with {end:?}, not an orderly close"
        );
    }
}
