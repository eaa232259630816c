//! Bad input closes the offending connection with the right code, and never disturbs others.

use bytes::Bytes;
use mqtt_proto::v5::{self, DisconnectReasonCode, Packet};
use mqtt_proto::{v3, QoS, QosPid};

use crate::support::*;

/// Sends `bytes` on a connected 5.0 client and expects DISCONNECT with `reason`, then close.
#[track_caller]
fn expect_disconnect(port: u16, bytes: &[u8], reason: DisconnectReasonCode) {
    let (mut client, _) = raw5(port, connect5(&unique("bad"), true));
    client.send(bytes);
    match client.until_closed5().as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason_code, reason),
        other => panic!("expected DISCONNECT {reason:?}, got {other:?}"),
    }
}

/// Sends `bytes` on a connected 3.1.1 client and expects the connection closed.
#[track_caller]
fn expect_closed3(port: u16, bytes: &[u8]) {
    let mut client = Raw::connect(port);
    client.send3(v3::Packet::Connect(connect3(&unique("bad3"), true)));
    assert!(matches!(client.read3(), Ok(v3::Packet::Connack(_))));
    client.send(bytes);
    assert!(client.closed_silently(), "3.1.1 connection left open");
}

#[test]
fn a_malformed_packet_is_a_disconnect_with_0x81() {
    let broker = broker();
    let port = port(&broker);
    // SUBSCRIBE whose topic filter length runs past the packet.
    let bad = [0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x09, b'a'];
    expect_disconnect(port, &bad, DisconnectReasonCode::MalformedPacket);
    expect_closed3(port, &[0x82, 0x05, 0x00, 0x01, 0x00, 0x09, b'a']);
    // A remaining length of five bytes.
    expect_disconnect(
        port,
        &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
        DisconnectReasonCode::MalformedPacket,
    );
}

#[test]
fn qos_3_is_a_disconnect_with_0x81() {
    let broker = broker();
    let port = port(&broker);
    // PUBLISH with both QoS bits set: topic "t", payload "x".
    let qos3 = [0x36, 0x06, 0x00, 0x01, b't', 0x00, 0x01, b'x'];
    expect_disconnect(port, &qos3, DisconnectReasonCode::MalformedPacket);
    expect_closed3(port, &qos3);
}

#[test]
fn a_publish_to_a_wildcard_topic_is_a_disconnect_with_0x90() {
    let broker = broker();
    let port = port(&broker);
    // PUBLISH QoS 0 to "a/#" (5.0: with an empty property block).
    expect_disconnect(
        port,
        &[0x30, 0x07, 0x00, 0x03, b'a', b'/', b'#', 0x00, b'x'],
        DisconnectReasonCode::TopicNameInvalid,
    );
    expect_closed3(port, &[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'+', b'x']);
}

#[test]
fn a_packet_over_the_maximum_size_is_a_disconnect_with_0x95_before_its_body_arrives() {
    let broker = broker_with("max_packet_size = 1024\n");
    let port = port(&broker);
    // Only the fixed header of a 4000-byte PUBLISH: the broker must not wait for the body.
    expect_disconnect(
        port,
        &[0x30, 0xa0, 0x1f],
        DisconnectReasonCode::PacketTooLarge,
    );
    expect_closed3(port, &[0x30, 0xa0, 0x1f]);
}

#[test]
fn a_second_connect_is_a_disconnect_with_0x82() {
    let broker = broker();
    let port = port(&broker);
    let again = Packet::Connect(connect5("again", true))
        .encode()
        .expect("encode");
    expect_disconnect(port, again.as_ref(), DisconnectReasonCode::ProtocolError);
    let again3 = v3::Packet::Connect(connect3("again3", true))
        .encode()
        .expect("encode");
    expect_closed3(port, again3.as_ref());
}

#[test]
fn an_unsupported_protocol_level_gets_return_code_1() {
    let broker = broker();
    let mut raw = Raw::connect(port(&broker));
    // CONNECT "MQTT" level 6.
    raw.send(&[
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3c, 0x00, 0x00,
    ]);
    match raw.read3() {
        Ok(v3::Packet::Connack(ack)) => {
            assert_eq!(ack.code, v3::ConnectReturnCode::UnacceptableProtocolVersion)
        }
        other => panic!("expected CONNACK 0x01, got {other:?}"),
    }
    assert!(raw.closed_silently());
}

#[test]
fn a_wrong_protocol_name_or_a_first_packet_other_than_connect_closes_at_once() {
    let broker = broker();
    let port = port(&broker);
    let mut raw = Raw::connect(port);
    raw.send(&[
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'X', b'X', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00,
    ]);
    assert!(raw.closed_silently(), "[MQTT-3.1.2-1]");
    let mut raw = Raw::connect(port);
    raw.send(&[0xc0, 0x00]); // PINGREQ first
    assert!(raw.closed_silently(), "[MQTT-3.1.0-1]");
    let mut raw = Raw::connect(port);
    raw.send(b"GET / HTTP/1.1\r\n\r\n");
    assert!(raw.closed_silently());
}

#[test]
fn bad_clients_do_not_disturb_others_or_lose_their_messages() {
    let broker = broker();
    let port = port(&broker);
    let mut sub = v5::Subscribe::new(
        pid(1),
        vec![(filter("calm/t"), v5::SubscriptionOptions::new(QoS::Level1))],
    );
    sub.properties.subscription_id = None;
    let (mut calm, _) = raw5(port, connect5(&unique("calm"), true));
    calm.send5(Packet::Subscribe(sub));
    suback5(&mut calm);
    let (mut publisher, _) = raw5(port, connect5(&unique("pub"), true));
    for (i, bad) in [
        &[0x36u8, 0x06, 0x00, 0x01, b't', 0x00, 0x01, b'x'][..],
        &[0x30, 0x07, 0x00, 0x03, b'a', b'/', b'#', 0x00, b'x'],
        &[0xf0, 0x02, 0x19, 0x00],
    ]
    .into_iter()
    .enumerate()
    {
        let (mut bad_client, _) = raw5(port, connect5(&unique("bad"), true));
        bad_client.send(bad);
        let n = u16::try_from(i + 1).expect("small");
        publisher.send5(Packet::Publish(v5::Publish::new(
            QosPid::Level1(pid(n)),
            topic("calm/t"),
            Bytes::from(format!("m{n}")),
        )));
        assert!(matches!(publisher.read5(), Ok(Packet::Puback(_))));
        match calm.read5() {
            Ok(Packet::Publish(p)) => {
                assert_eq!(p.payload, Bytes::from(format!("m{n}")));
                if let Some(id) = p.qos_pid.pid() {
                    calm.send5(Packet::Puback(v5::Puback::new_success(id)));
                }
            }
            other => panic!("the calm subscriber lost message {n}: {other:?}"),
        }
        assert!(!bad_client.until_closed5().is_empty());
    }
}
