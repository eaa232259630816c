//! Shared subscriptions whose members are offline (MQTT 5.0 §4.8.2: the subscription exists
//! while a session holds it): the queue keeps collecting messages while a persistent member
//! session lives, across a broker restart too, and goes with the last session holding it.

use std::collections::BTreeSet;

use bytes::Bytes;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};

use lapin::{BasicProperties, Confirmation};
use mqtt_proto::v5::{self, Packet};
use mqtt_proto::{QoS, QosPid};

use crate::support::*;

fn persistent(id: &str, clean_start: bool) -> v5::Connect {
    let mut c = connect5(id, clean_start);
    c.properties.session_expiry_interval = Some(3600);
    c
}

/// The filter of a fresh share group and the queue it fills.
fn share(prefix: &str) -> (String, String) {
    let group = unique("crew");
    (
        format!("$share/{group}/{prefix}/#"),
        format!("mqtt-shared-{group}/{prefix}/#"),
    )
}

/// Connects `id`'s persistent session, subscribes it to `filter`, and disconnects normally.
fn join_and_leave(port: u16, id: &str, filter: &str) {
    let (mut member, _) = raw5(port, persistent(id, true));
    member.send5(subscribe5(1, filter, QoS::Level1));
    assert!(suback5(&mut member)
        .iter()
        .all(|c| *c == v5::SubscribeReasonCode::GrantedQoS1));
    member.send5(Packet::Disconnect(v5::Disconnect::new_normal()));
    assert!(member.closed_silently());
}

/// Reads `n` QoS 1 PUBLISHes, acknowledging each; returns their payloads.
fn take(member: &mut Raw, n: usize) -> BTreeSet<Vec<u8>> {
    let mut got = BTreeSet::new();
    for _ in 0..n {
        match member.read5() {
            Ok(Packet::Publish(p)) => {
                got.insert(p.payload.to_vec());
                let i = p.qos_pid.pid().expect("QoS 1");
                member.send5(Packet::Puback(v5::Puback::new_success(i)));
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    assert!(
        matches!(member.read5_within(QUIET), Err(ReadEnd::Timeout)),
        "nothing beyond the {n} messages"
    );
    got
}

fn numbered(n: usize) -> BTreeSet<Vec<u8>> {
    (0..n).map(|i| format!("m{i}").into_bytes()).collect()
}

#[test]
fn a_shared_subscription_collects_messages_while_all_its_members_are_offline() {
    const N: u16 = 10;
    let broker = broker();
    let port = port(&broker);
    let (filter, queue) = share("offline");
    let (a, b) = (unique("a"), unique("b"));
    join_and_leave(port, &a, &filter);
    join_and_leave(port, &b, &filter);

    let (mut publisher, _) = raw5(port, connect5(&unique("pub"), true));
    for i in 0..N {
        publisher.send5(Packet::Publish(v5::Publish::new(
            QosPid::Level1(pid(i + 1)),
            topic(&format!("offline/{i}")),
            Bytes::from(format!("m{i}")),
        )));
        match publisher.read5() {
            // Not 0x10 No Matching Subscribers: the queue is there to take it.
            Ok(Packet::Puback(ack)) => {
                assert_eq!(ack.reason_code, v5::PubackReasonCode::Success)
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    let (mut member, ack) = raw5(port, persistent(&a, false));
    assert!(ack.session_present);
    assert_eq!(take(&mut member, usize::from(N)), numbered(usize::from(N)));

    // One member unsubscribes: the other, offline, still holds the subscription.
    member.send5(Packet::Unsubscribe(v5::Unsubscribe::new(
        pid(2),
        vec![crate::support::filter(&filter)],
    )));
    assert!(matches!(member.read5(), Ok(Packet::Unsuback(_))));
    run({
        let queue = queue.clone();
        let broker = &broker;
        async move {
            let conn = amqp_connection(broker).await;
            assert!(queue_exists(&conn, &queue).await, "queue kept for b");
        }
    });
    // The last holder starts clean: its session, and with it the queue, is gone before CONNACK.
    let (_b, ack) = raw5(port, persistent(&b, true));
    assert!(!ack.session_present);
    run(async move {
        let conn = amqp_connection(&broker).await;
        assert!(
            !queue_exists(&conn, &queue).await,
            "the last session holding the subscription took the queue with it"
        );
    });
}

#[test]
fn a_shared_queue_of_offline_persistent_members_survives_a_restart() {
    const N: usize = 5;
    let mut broker = broker();
    let (filter, queue) = share("restart");
    let member = unique("m");
    join_and_leave(port(&broker), &member, &filter);
    run({
        let broker = &broker;
        async move {
            let channel = amqp(broker).await;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .expect("confirm.select");
            for i in 0..N {
                let confirm = channel
                    .basic_publish(
                        "amq.topic".into(),
                        format!("restart.{i}").as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        format!("m{i}").as_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .expect("publish")
                    .await
                    .expect("confirm");
                assert!(
                    matches!(confirm, Confirmation::Ack(None)),
                    "routed and confirmed: {confirm:?}"
                );
            }
        }
    });
    broker.kill9();
    broker.restart();
    let port = port(&broker);

    let (mut back, ack) = raw5(port, persistent(&member, false));
    assert!(ack.session_present);
    assert_eq!(take(&mut back, N), numbered(N));
    // The session ends (expiry 0 on DISCONNECT): it was the last holder.
    let mut bye = v5::Disconnect::new_normal();
    bye.properties.session_expiry_interval = Some(0);
    back.send5(Packet::Disconnect(bye));
    assert!(back.closed_silently());
    run(async move { wait_queue(&broker, &queue, false).await });
}

#[test]
fn a_shared_queue_only_clean_sessions_held_goes_with_the_last_of_them() {
    let broker = broker();
    let port = port(&broker);
    let (filter, queue) = share("clean");
    let (mut a, _) = raw5(port, connect5(&unique("a"), true));
    a.send5(subscribe5(1, &filter, QoS::Level1));
    suback5(&mut a);
    let (mut b, _) = raw5(port, connect5(&unique("b"), true));
    b.send5(subscribe5(1, &filter, QoS::Level1));
    suback5(&mut b);
    drop(a);
    let (mut publisher, _) = raw5(port, connect5(&unique("pub"), true));
    publisher.send5(Packet::Publish(v5::Publish::new(
        QosPid::Level1(pid(1)),
        topic("clean/x"),
        Bytes::from_static(b"m0"),
    )));
    assert!(matches!(publisher.read5(), Ok(Packet::Puback(_))));
    assert_eq!(take(&mut b, 1), numbered(1), "the member left gets it");
    run({
        let broker = &broker;
        let queue = queue.clone();
        async move {
            let conn = amqp_connection(broker).await;
            assert!(queue_exists(&conn, &queue).await, "b still holds the queue");
        }
    });
    drop(b);
    run(async move { wait_queue(&broker, &queue, false).await });
}
