//! kill -9: persistent sessions, queued messages, QoS 2 state and retained messages survive a
//! crash, and an acknowledged publish is never lost.

use bytes::Bytes;
use mqtt_proto::v5::{self, Packet};
use mqtt_proto::{QoS, QosPid};

use crate::support::*;

fn session(id: &str, clean: bool) -> v5::Connect {
    let mut c = connect5(id, clean);
    c.properties.session_expiry_interval = Some(3600);
    c
}

#[test]
fn sessions_queued_messages_and_retained_messages_survive_kill_9() {
    let mut broker = broker();
    let id = unique("survivor");
    let (mut client, _) = raw5(port(&broker), session(&id, true));
    client.send5(subscribe5(1, "crash/#", QoS::Level2));
    suback5(&mut client);
    client.send5(Packet::Disconnect(v5::Disconnect::new_normal()));
    drop(client);

    let (mut publisher, _) = raw5(port(&broker), connect5(&unique("pub"), true));
    publisher.send5(Packet::Publish(v5::Publish::new(
        QosPid::Level1(pid(1)),
        topic("crash/q1"),
        Bytes::from_static(b"one"),
    )));
    assert!(matches!(publisher.read5(), Ok(Packet::Puback(_))));
    publisher.send5(Packet::Publish(v5::Publish::new(
        QosPid::Level2(pid(2)),
        topic("crash/q2"),
        Bytes::from_static(b"two"),
    )));
    assert!(matches!(publisher.read5(), Ok(Packet::Pubrec(_))));
    publisher.send5(Packet::Pubrel(v5::Pubrel::new_success(pid(2))));
    assert!(matches!(publisher.read5(), Ok(Packet::Pubcomp(_))));
    let mut retained = v5::Publish::new(
        QosPid::Level1(pid(3)),
        topic("kept/config"),
        Bytes::from_static(b"v1"),
    );
    retained.retain = true;
    publisher.send5(Packet::Publish(retained));
    assert!(matches!(publisher.read5(), Ok(Packet::Puback(_))));

    broker.kill9();
    broker.restart();

    let (mut client, ack) = raw5(port(&broker), session(&id, false));
    assert!(ack.session_present, "the session survived the crash");
    let mut got = Vec::new();
    for _ in 0..2 {
        match client.read5() {
            Ok(Packet::Publish(p)) => {
                got.push((p.topic_name.to_string(), p.qos_pid.qos()));
                match p.qos_pid {
                    QosPid::Level1(i) => client.send5(Packet::Puback(v5::Puback::new_success(i))),
                    QosPid::Level2(i) => client.send5(Packet::Pubrec(v5::Pubrec::new_success(i))),
                    QosPid::Level0 => {}
                }
            }
            other => panic!("expected a queued PUBLISH, got {other:?}"),
        }
    }
    assert_eq!(
        got,
        vec![
            ("crash/q1".to_owned(), QoS::Level1),
            ("crash/q2".to_owned(), QoS::Level2)
        ]
    );
    // The subscription survived as well.
    let (mut publisher, _) = raw5(port(&broker), connect5(&unique("pub"), true));
    publisher.send5(Packet::Publish(v5::Publish::new(
        QosPid::Level0,
        topic("crash/live"),
        Bytes::from_static(b"live"),
    )));
    loop {
        match client.read5() {
            Ok(Packet::Publish(p)) => {
                assert_eq!(&*p.topic_name, "crash/live");
                break;
            }
            Ok(Packet::Pubrel(r)) => client.send5(Packet::Pubcomp(v5::Pubcomp::new_success(r.pid))),
            other => panic!("expected the live PUBLISH, got {other:?}"),
        }
    }
    let (mut reader, _) = raw5(port(&broker), connect5(&unique("reader"), true));
    reader.send5(subscribe5(1, "kept/+", QoS::Level0));
    suback5(&mut reader);
    assert!(
        matches!(reader.read5(), Ok(Packet::Publish(p)) if p.retain && &p.payload[..] == b"v1")
    );
}

#[test]
fn an_acknowledged_publish_is_never_lost_to_kill_9() {
    let mut broker = broker();
    let id = unique("durable-reader");
    let (mut client, _) = raw5(port(&broker), session(&id, true));
    client.send5(subscribe5(1, "acked/t", QoS::Level1));
    suback5(&mut client);
    client.send5(Packet::Disconnect(v5::Disconnect::new_normal()));
    drop(client);
    let mut acked = 0u16;
    for round in 0..3u16 {
        let (mut publisher, _) = raw5(port(&broker), connect5(&unique("pub"), true));
        for i in 1..=20u16 {
            publisher.send5(Packet::Publish(v5::Publish::new(
                QosPid::Level1(pid(i)),
                topic("acked/t"),
                Bytes::from(format!("{round}-{i}")),
            )));
        }
        // Kill right after the last PUBACK: each one promised the message was on disk.
        for _ in 1..=20 {
            assert!(matches!(publisher.read5(), Ok(Packet::Puback(_))));
            acked += 1;
        }
        broker.kill9();
        broker.restart();
    }
    let (mut client, ack) = raw5(port(&broker), session(&id, false));
    assert!(ack.session_present);
    let mut received = 0u16;
    while received < acked {
        match client.read5() {
            Ok(Packet::Publish(p)) => {
                received += 1;
                if let Some(i) = p.qos_pid.pid() {
                    client.send5(Packet::Puback(v5::Puback::new_success(i)));
                }
            }
            other => {
                panic!("{received} of {acked} acknowledged messages came back; then {other:?}")
            }
        }
    }
}

#[test]
fn a_qos2_exchange_cut_by_kill_9_completes_exactly_once() {
    let mut broker = broker();
    let (mut sub, _) = raw5(port(&broker), session(&unique("sub"), true));
    sub.send5(subscribe5(1, "exact/t", QoS::Level0));
    suback5(&mut sub);
    let sub_id = unique("exact-sub");
    let (mut durable_sub, _) = raw5(port(&broker), session(&sub_id, true));
    durable_sub.send5(subscribe5(1, "exact/t", QoS::Level2));
    suback5(&mut durable_sub);
    durable_sub.send5(Packet::Disconnect(v5::Disconnect::new_normal()));
    drop(durable_sub);
    drop(sub);

    let id = unique("exact-pub");
    let (mut publisher, _) = raw5(port(&broker), session(&id, true));
    publisher.send5(Packet::Publish(v5::Publish::new(
        QosPid::Level2(pid(9)),
        topic("exact/t"),
        Bytes::from_static(b"one"),
    )));
    assert!(matches!(publisher.read5(), Ok(Packet::Pubrec(_))));
    broker.kill9();
    broker.restart();

    // The publisher did not see PUBREC as far as it knows: it sends the PUBLISH again.
    let (mut publisher, ack) = raw5(port(&broker), session(&id, false));
    assert!(ack.session_present);
    let mut again = v5::Publish::new(
        QosPid::Level2(pid(9)),
        topic("exact/t"),
        Bytes::from_static(b"one"),
    );
    again.dup = true;
    publisher.send5(Packet::Publish(again));
    assert!(matches!(publisher.read5(), Ok(Packet::Pubrec(r)) if r.pid == pid(9)));
    publisher.send5(Packet::Pubrel(v5::Pubrel::new_success(pid(9))));
    assert!(
        matches!(publisher.read5(), Ok(Packet::Pubcomp(c)) if c.reason_code == v5::PubcompReasonCode::Success)
    );

    let (mut reader, _) = raw5(port(&broker), session(&sub_id, false));
    match reader.read5() {
        Ok(Packet::Publish(p)) => {
            assert_eq!(&p.payload[..], b"one");
            if let Some(i) = p.qos_pid.pid() {
                reader.send5(Packet::Pubrec(v5::Pubrec::new_success(i)));
            }
        }
        other => panic!("expected the message once, got {other:?}"),
    }
    loop {
        match reader.read5_within(QUIET) {
            Ok(Packet::Pubrel(r)) => reader.send5(Packet::Pubcomp(v5::Pubcomp::new_success(r.pid))),
            Ok(Packet::Publish(p)) => panic!("delivered twice: {p:?}"),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
}

#[test]
fn queues_only_clean_sessions_used_do_not_outlive_a_crash() {
    let mut broker = broker();
    let group = unique("crew");
    let (mut member, _) = raw5(port(&broker), connect5(&unique("member"), true));
    member.send5(subscribe5(1, &format!("$share/{group}/jobs"), QoS::Level1));
    suback5(&mut member);
    let (mut publisher, _) = raw5(port(&broker), connect5(&unique("pub"), true));
    publisher.send5(Packet::Publish(v5::Publish::new(
        QosPid::Level1(pid(1)),
        topic("jobs"),
        Bytes::from_static(b"j"),
    )));
    assert!(matches!(publisher.read5(), Ok(Packet::Puback(_))));
    broker.kill9();
    broker.restart();
    let shared_queue = format!("mqtt-shared-{group}/jobs");
    run(async move {
        let channel = amqp(&broker).await;
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let gone = channel
            .queue_declare(
                shared_queue.as_str().into(),
                passive,
                lapin::types::FieldTable::default(),
            )
            .await;
        assert!(
            gone.is_err(),
            "the shared queue of a clean session survived the crash"
        );
    });
}

#[test]
fn queues_an_amqp_client_declares_with_mqtt_names_keep_their_messages_across_a_restart() {
    let mut broker = broker();
    // Named as MQTT names a session's queue and a shared subscription's queue, but declared by
    // an AMQP client: no MQTT session uses them, and MQTT did not make them.
    let queues = [
        format!("mqtt-subscription-{}", unique("declared")),
        format!("mqtt-shared-{}/jobs", unique("declared")),
    ];
    run(async {
        let channel = amqp(&broker).await;
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        for queue in &queues {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await
                .expect("queue.declare");
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    lapin::options::BasicPublishOptions::default(),
                    b"kept",
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            assert!(confirm.is_ack(), "{queue}: {confirm:?}");
        }
    });
    broker.kill9();
    broker.restart();
    run(async {
        let conn = amqp_connection(&broker).await;
        for queue in &queues {
            assert!(
                queue_exists(&conn, queue).await,
                "{queue} was removed at startup"
            );
        }
        let channel = amqp(&broker).await;
        for queue in &queues {
            let got = amqp_get(&channel, queue).await;
            assert_eq!(&got.delivery.data[..], b"kept", "{queue}");
        }
    });
}
