//! [MQTT-4.4.0-1]: QoS 1 messages a client did not acknowledge go out again on its next
//! connection to the same persistent session, with DUP set and their original packet ids. Raw
//! sockets, so the test sees the ids and can leave messages unacknowledged.

use std::collections::HashMap;

use bytes::Bytes;
use mqtt_proto::v5::{self, Packet};
use mqtt_proto::{v3, QoS, QosPid};

use crate::support::*;

/// A PUBLISH as received: payload, packet id, DUP.
type Got = (Vec<u8>, u16, bool);

fn publishes3(raw: &mut Raw, n: usize) -> Vec<Got> {
    (0..n)
        .map(|_| match raw.read3() {
            Ok(v3::Packet::Publish(p)) => {
                let id = p.qos_pid.pid().expect("QoS 1 has a packet id").value();
                (p.payload.to_vec(), id, p.dup)
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect()
}

fn publishes5(raw: &mut Raw, n: usize) -> Vec<Got> {
    (0..n)
        .map(|_| match raw.read5() {
            Ok(Packet::Publish(p)) => {
                let id = p.qos_pid.pid().expect("QoS 1 has a packet id").value();
                (p.payload.to_vec(), id, p.dup)
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect()
}

/// Publishes `m0`..`m{n-1}` at QoS 1 from a fresh 3.1.1 client, each acknowledged.
fn publish_numbered(port: u16, topic_name: &str, n: u16) {
    let (mut publisher, _) = raw3(port, connect3(&unique("pub"), true));
    for i in 0..n {
        publisher.send3(v3::Packet::Publish(v3::Publish {
            dup: false,
            retain: false,
            qos_pid: QosPid::Level1(pid(i + 1)),
            topic_name: topic(topic_name),
            payload: Bytes::from(format!("m{i}")),
        }));
        assert!(matches!(publisher.read3(), Ok(v3::Packet::Puback(p)) if p == pid(i + 1)));
    }
}

/// Asserts that every message of `before` came again, once, under the same packet id and with
/// DUP set.
#[track_caller]
fn same_ids_with_dup(before: &[Got], again: &[Got]) {
    let ids: HashMap<&[u8], u16> = before.iter().map(|(m, id, _)| (&m[..], *id)).collect();
    assert_eq!(again.len(), before.len());
    for (m, id, dup) in again {
        let name = String::from_utf8_lossy(m);
        assert!(*dup, "{name} resent without DUP");
        assert_eq!(
            ids.get(&m[..]),
            Some(id),
            "{name} resent under another packet id"
        );
    }
    let mut payloads: Vec<_> = again.iter().map(|(m, _, _)| m.clone()).collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), before.len(), "each message once");
}

#[test]
fn unacknowledged_qos1_messages_keep_their_packet_ids_after_a_3_1_1_reconnect() {
    let broker = broker();
    let port = port(&broker);
    let id = unique("ids311");
    let (mut sub, _) = raw3(port, connect3(&id, false));
    sub.send3(v3::Packet::Subscribe(v3::Subscribe::new(
        pid(1),
        vec![(filter("resend311/#"), QoS::Level1)],
    )));
    assert!(matches!(sub.read3(), Ok(v3::Packet::Suback(_))));
    publish_numbered(port, "resend311/t", 5);
    let got = publishes3(&mut sub, 5);
    assert!(got.iter().all(|(_, _, dup)| !dup));
    // The first two are acknowledged, so the ids left are not the ones a new connection would
    // number from 1.
    for (_, i, _) in &got[..2] {
        sub.send3(v3::Packet::Puback(pid(*i)));
    }
    sub.send3(v3::Packet::Pingreq);
    assert!(matches!(sub.read3(), Ok(v3::Packet::Pingresp)));
    let unacked = got[2..].to_vec();
    let mut ids: Vec<u16> = unacked.iter().map(|(_, i, _)| *i).collect();
    ids.sort_unstable();
    assert_ne!(
        ids,
        vec![1, 2, 3],
        "the test needs ids a fresh numbering would not give"
    );
    drop(sub); // no PUBACK, no DISCONNECT: the socket just closes

    let (mut again, ack) = raw3(port, connect3(&id, false));
    assert!(ack.session_present);
    let resent = publishes3(&mut again, 3);
    same_ids_with_dup(&unacked, &resent);
    for (_, i, _) in &resent {
        again.send3(v3::Packet::Puback(pid(*i)));
    }
    again.send3(v3::Packet::Pingreq);
    assert!(
        matches!(again.read3(), Ok(v3::Packet::Pingresp)),
        "nothing more was sent"
    );
}

fn session5(id: &str, receive_max: Option<u16>) -> v5::Connect {
    let mut c = connect5(id, false);
    c.properties.session_expiry_interval = Some(3600);
    c.properties.receive_max = receive_max;
    c
}

#[test]
fn unacknowledged_qos1_messages_keep_their_packet_ids_across_several_5_0_reconnects() {
    let broker = broker();
    let port = port(&broker);
    let id = unique("ids5");
    let (mut sub, _) = raw5(port, session5(&id, None));
    sub.send5(subscribe5(1, "resend5/#", QoS::Level1));
    suback5(&mut sub);
    publish_numbered(port, "resend5/t", 6);
    let got = publishes5(&mut sub, 6);
    sub.send5(Packet::Puback(v5::Puback::new_success(pid(got[0].1))));
    sub.send5(Packet::Pingreq);
    assert!(matches!(sub.read5(), Ok(Packet::Pingresp)));
    let unacked = got[1..].to_vec();
    drop(sub);

    // A connection that takes only two at a time: the three it does not get to keep their ids
    // reserved for the next one.
    let (mut narrow, ack) = raw5(port, session5(&id, Some(2)));
    assert!(ack.session_present);
    let two = publishes5(&mut narrow, 2);
    assert!(
        matches!(narrow.read5_within(QUIET), Err(ReadEnd::Timeout)),
        "no more than Receive Maximum in flight"
    );
    let by_payload: Vec<Got> = unacked
        .iter()
        .filter(|(m, _, _)| two.iter().any(|(n, _, _)| n == m))
        .cloned()
        .collect();
    same_ids_with_dup(&by_payload, &two);
    drop(narrow);

    // Taken over while the five are unacknowledged again: still the original ids.
    let (mut third, ack) = raw5(port, session5(&id, None));
    assert!(ack.session_present);
    let resent = publishes5(&mut third, 5);
    same_ids_with_dup(&unacked, &resent);
    let (mut fourth, ack) = raw5(port, session5(&id, None));
    assert!(ack.session_present);
    assert!(
        matches!(third.read5(), Ok(Packet::Disconnect(d)) if d.reason_code == v5::DisconnectReasonCode::SessionTakenOver)
    );
    let resent = publishes5(&mut fourth, 5);
    same_ids_with_dup(&unacked, &resent);
    for (_, i, _) in &resent {
        fourth.send5(Packet::Puback(v5::Puback::new_success(pid(*i))));
    }
    fourth.send5(Packet::Pingreq);
    assert!(
        matches!(fourth.read5(), Ok(Packet::Pingresp)),
        "nothing more was sent"
    );
}
