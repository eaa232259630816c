//! The codec wrapper: every client packet of 3.1.1 and 5.0 decodes to what was encoded, input
//! split at every byte decodes the same, sizes are judged from the fixed header, 5.0 replies
//! are encoded in 3.x form for 3.x clients, and a PUBLISH carries several subscription
//! identifiers.

use bytes::{Bytes, BytesMut};
use mqtt_proto::v5::{self, Packet};
use mqtt_proto::{v3, Pid, Protocol, QoS, QosPid, TopicFilter, TopicName};
use rosetta_mqtt::codec::{decode, decode_connect, encode, encode_publish};
use rosetta_mqtt::MqttError;

const MAX: u32 = 1 << 20;

fn pid(n: u16) -> Pid {
    Pid::try_from(n).expect("pid")
}

fn publish5() -> v5::Publish {
    let mut p = v5::Publish::new(
        QosPid::Level2(pid(9)),
        TopicName::try_from("a/b").expect("topic"),
        Bytes::from_static(b"payload"),
    );
    p.properties.user_properties.push(v5::UserProperty {
        name: "k".into(),
        value: "v".into(),
    });
    p.properties.message_expiry_interval = Some(30);
    p.properties.content_type = Some("text/plain".into());
    p
}

fn client_packets5() -> Vec<Packet> {
    let filter = TopicFilter::try_from("a/+/#").expect("filter");
    vec![
        Packet::Publish(publish5()),
        Packet::Puback(v5::Puback::new_success(pid(1))),
        Packet::Pubrec(v5::Pubrec::new(
            pid(2),
            v5::PubrecReasonCode::NoMatchingSubscribers,
        )),
        Packet::Pubrel(v5::Pubrel::new_success(pid(3))),
        Packet::Pubcomp(v5::Pubcomp::new_success(pid(4))),
        Packet::Subscribe(v5::Subscribe::new(
            pid(5),
            vec![(filter.clone(), v5::SubscriptionOptions::new(QoS::Level1))],
        )),
        Packet::Unsubscribe(v5::Unsubscribe::new(pid(6), vec![filter])),
        Packet::Pingreq,
        Packet::Disconnect(v5::Disconnect::new(
            v5::DisconnectReasonCode::DisconnectWithWillMessage,
        )),
    ]
}

fn bytes_of(p: &Packet) -> Vec<u8> {
    p.encode().expect("encode").as_ref().to_vec()
}

#[test]
fn every_client_packet_of_5_0_decodes_to_what_was_encoded() {
    for packet in client_packets5() {
        let mut input = BytesMut::from(&bytes_of(&packet)[..]);
        let got = decode(&mut input, Protocol::V500, MAX)
            .expect("decodes")
            .expect("complete");
        assert_eq!(got, packet);
        assert!(input.is_empty());
    }
}

#[test]
fn client_packets_of_3_1_1_decode_to_their_5_0_counterparts() {
    let topic = TopicName::try_from("a/b").expect("topic");
    let filter = TopicFilter::try_from("a/#").expect("filter");
    let cases = vec![
        (
            v3::Packet::Publish(v3::Publish::new(
                QosPid::Level1(pid(3)),
                topic.clone(),
                Bytes::from_static(b"x"),
            )),
            "Publish",
        ),
        (v3::Packet::Puback(pid(3)), "Puback"),
        (v3::Packet::Pubrel(pid(4)), "Pubrel"),
        (
            v3::Packet::Subscribe(v3::Subscribe::new(
                pid(5),
                vec![(filter.clone(), QoS::Level2)],
            )),
            "Subscribe",
        ),
        (
            v3::Packet::Unsubscribe(v3::Unsubscribe::new(pid(6), vec![filter])),
            "Unsubscribe",
        ),
        (v3::Packet::Pingreq, "Pingreq"),
        (v3::Packet::Disconnect, "Disconnect"),
    ];
    for (packet, kind) in cases {
        let mut input = BytesMut::from(packet.encode().expect("encode").as_ref());
        let got = decode(&mut input, Protocol::V311, MAX)
            .expect("decodes")
            .expect("complete");
        assert!(format!("{got:?}").starts_with(kind), "{kind}: {got:?}");
        if let Packet::Subscribe(s) = &got {
            let options = s.topics[0].1;
            assert_eq!(options.max_qos, QoS::Level2);
            assert!(
                !options.retain_as_published,
                "3.x subscriptions clear RETAIN on forwarding"
            );
        }
        if let Packet::Publish(p) = &got {
            assert_eq!(
                (p.qos_pid, &p.payload[..]),
                (QosPid::Level1(pid(3)), &b"x"[..])
            );
        }
    }
}

#[test]
fn input_split_at_every_byte_decodes_the_same() {
    let mut all = Vec::new();
    for p in client_packets5() {
        all.extend(bytes_of(&p));
    }
    for cut in 0..all.len() {
        let mut input = BytesMut::from(&all[..cut]);
        let mut got = Vec::new();
        while let Some(p) = decode(&mut input, Protocol::V500, MAX).expect("decodes") {
            got.push(p);
        }
        input.extend_from_slice(&all[cut..]);
        while let Some(p) = decode(&mut input, Protocol::V500, MAX).expect("decodes") {
            got.push(p);
        }
        assert_eq!(got, client_packets5(), "cut at {cut}");
    }
}

#[test]
fn a_packet_is_refused_for_its_size_from_the_fixed_header_alone() {
    // A PUBLISH announcing 2 MiB, of which only the header has arrived.
    let mut input = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x80, 0x01][..]);
    match decode(&mut input, Protocol::V500, MAX) {
        Err(MqttError::TooLarge { size, max }) => assert_eq!((size, max), (5 + (1 << 21), MAX)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let exact = bytes_of(&Packet::Publish(publish5()));
    let limit = u32::try_from(exact.len()).expect("small");
    let mut input = BytesMut::from(&exact[..]);
    assert!(decode(&mut input, Protocol::V500, limit)
        .expect("at the limit")
        .is_some());
    let mut input = BytesMut::from(&exact[..]);
    assert!(matches!(
        decode(&mut input, Protocol::V500, limit - 1),
        Err(MqttError::TooLarge { .. })
    ));
}

#[test]
fn malformed_packets_are_errors() {
    let cases: &[&[u8]] = &[
        // Remaining length of five bytes.
        &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
        // PUBLISH with QoS 3.
        &[0x36, 0x06, 0x00, 0x01, b't', 0x00, 0x01, b'x'],
        // PUBACK with a byte more than its fields (3.1.1).
        &[0x40, 0x03, 0x00, 0x01, 0x00],
        // PINGREQ with a body.
        &[0xc0, 0x01, 0x00],
        // SUBSCRIBE with reserved flags wrong.
        &[0x80, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
        // Packet type 0.
        &[0x00, 0x00],
    ];
    for bad in cases {
        let mut input = BytesMut::from(*bad);
        assert!(
            decode(&mut input, Protocol::V311, MAX).is_err(),
            "{bad:?} decoded"
        );
    }
    let mut wildcard = BytesMut::from(&[0x30u8, 0x06, 0x00, 0x03, b'a', b'/', b'#', b'x'][..]);
    assert!(matches!(
        decode(&mut wildcard, Protocol::V311, MAX),
        Err(MqttError::TopicNameInvalid(_))
    ));
}

fn connect_bytes(name: &[u8], level: u8) -> Vec<u8> {
    let mut body = vec![0x00, u8::try_from(name.len()).expect("short")];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, 0x02, 0x00, 0x3c]);
    if level == 5 {
        body.push(0x00); // no properties
    }
    body.extend_from_slice(&[0x00, 0x02, b'i', b'd']);
    let mut out = vec![0x10, u8::try_from(body.len()).expect("short")];
    out.extend(body);
    out
}

#[test]
fn connect_tells_the_protocol_version() {
    for (name, level, protocol) in [
        (&b"MQIsdp"[..], 3, Protocol::V310),
        (b"MQTT", 4, Protocol::V311),
        (b"MQTT", 5, Protocol::V500),
    ] {
        let mut input = BytesMut::from(&connect_bytes(name, level)[..]);
        let (got, connect) = decode_connect(&mut input, MAX)
            .expect("readable")
            .expect("complete");
        assert_eq!(got, protocol);
        let connect = connect.expect("valid CONNECT");
        assert_eq!(
            (&*connect.client_id, connect.clean_start, connect.keep_alive),
            ("id", true, 60)
        );
    }
    let mut input = BytesMut::from(&connect_bytes(b"MQTT", 6)[..]);
    assert!(matches!(
        decode_connect(&mut input, MAX),
        Err(MqttError::UnsupportedVersion(6))
    ));
    let mut input = BytesMut::from(&connect_bytes(b"HTTP", 4)[..]);
    assert!(matches!(
        decode_connect(&mut input, MAX),
        Err(MqttError::ProtocolName(_))
    ));
    let mut input = BytesMut::from(&[0xc0u8, 0x00][..]);
    assert!(matches!(
        decode_connect(&mut input, MAX),
        Err(MqttError::NotConnect)
    ));
    let mut partial = BytesMut::from(&connect_bytes(b"MQTT", 4)[..5]);
    assert!(decode_connect(&mut partial, MAX)
        .expect("no error yet")
        .is_none());
}

#[test]
fn replies_are_encoded_in_3_x_form_for_3_x_clients() {
    let suback = Packet::Suback(v5::Suback::new(
        pid(5),
        vec![
            v5::SubscribeReasonCode::GrantedQoS1,
            v5::SubscribeReasonCode::TopicFilterInvalid,
        ],
    ));
    let bytes = encode(&suback, Protocol::V311).expect("encode");
    assert_eq!(bytes, vec![0x90, 0x04, 0x00, 0x05, 0x01, 0x80]);
    let connack = Packet::Connack(v5::Connack::new(
        false,
        v5::ConnectReasonCode::BadUserNameOrPassword,
    ));
    assert_eq!(
        encode(&connack, Protocol::V311).expect("encode"),
        vec![0x20, 0x02, 0x00, 0x04]
    );
    let disconnect = Packet::Disconnect(v5::Disconnect::new(
        v5::DisconnectReasonCode::SessionTakenOver,
    ));
    assert!(
        encode(&disconnect, Protocol::V311)
            .expect("encode")
            .is_empty(),
        "3.x has no server DISCONNECT"
    );
    let publish = Packet::Publish(publish5());
    let v3_bytes = encode(&publish, Protocol::V311).expect("encode");
    let decoded = v3::Packet::decode(&v3_bytes)
        .expect("valid 3.1.1")
        .expect("complete");
    assert!(
        matches!(decoded, v3::Packet::Publish(p) if &p.payload[..] == b"payload" && p.qos_pid == QosPid::Level2(pid(9)))
    );
}

/// A 5.0 PUBLISH read byte by byte, independently of the codec crate (which accepts one
/// Subscription Identifier only): its Remaining Length, subscription identifiers in order, the
/// other properties' identifiers, and its payload.
struct ReadPublish {
    remaining: usize,
    ids: Vec<usize>,
    others: Vec<u8>,
    payload: Vec<u8>,
}

fn var_int(bytes: &[u8], at: &mut usize) -> usize {
    let mut value = 0;
    for i in 0..4 {
        let byte = bytes[*at];
        *at += 1;
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("variable byte integer longer than four bytes");
}

fn two(bytes: &[u8], at: &mut usize) -> usize {
    let n = usize::from(u16::from_be_bytes([bytes[*at], bytes[*at + 1]]));
    *at += 2;
    n
}

fn read_publish(bytes: &[u8]) -> ReadPublish {
    assert_eq!(bytes[0] >> 4, 3, "a PUBLISH");
    let mut at = 1;
    let remaining = var_int(bytes, &mut at);
    assert_eq!(
        at + remaining,
        bytes.len(),
        "Remaining Length covers the rest"
    );
    let topic_len = two(bytes, &mut at);
    at += topic_len;
    if (bytes[0] >> 1) & 3 > 0 {
        two(bytes, &mut at);
    }
    let properties_len = var_int(bytes, &mut at);
    let end = at + properties_len;
    let (mut ids, mut others) = (Vec::new(), Vec::new());
    while at < end {
        let id = bytes[at];
        at += 1;
        match id {
            0x0B => ids.push(var_int(bytes, &mut at)),
            // Payload Format Indicator: a byte.
            0x01 => at += 1,
            // Message Expiry Interval: four bytes.
            0x02 => at += 4,
            // Content Type: a string.
            0x03 => at += two(bytes, &mut at),
            // User Property: two strings.
            0x26 => {
                at += two(bytes, &mut at);
                at += two(bytes, &mut at);
            }
            other => panic!("unexpected property {other:#x}"),
        }
        if id != 0x0B {
            others.push(id);
        }
    }
    assert_eq!(at, end, "Property Length covers the properties exactly");
    ReadPublish {
        remaining,
        ids,
        others,
        payload: bytes[at..].to_vec(),
    }
}

#[test]
fn a_publish_carries_every_subscription_identifier_given() {
    let ids = [5, 300, 2_000_000];
    let bytes = encode_publish(publish5(), &ids, Protocol::V500).expect("encode");
    let read = read_publish(&bytes);
    assert_eq!(read.ids, vec![5, 300, 2_000_000]);
    let mut others = read.others.clone();
    others.sort_unstable();
    assert_eq!(
        others,
        vec![0x02, 0x03, 0x26],
        "the other properties are kept"
    );
    assert_eq!(read.payload, b"payload");
    // Each identifier adds its property byte and its Variable Byte Integer (1, 2 and 3 bytes).
    let plain = bytes_of(&Packet::Publish(publish5()));
    assert_eq!(bytes.len(), plain.len() + (1 + 1) + (1 + 2) + (1 + 3));
    assert_eq!(read.remaining, bytes.len() - 2);
}

#[test]
fn one_subscription_identifier_is_what_the_codec_crate_itself_writes() {
    let mut with_one = publish5();
    with_one.properties.subscription_id = Some(42.try_into().expect("id"));
    let ours = encode_publish(publish5(), &[42], Protocol::V500).expect("encode");
    let theirs = Packet::Publish(with_one.clone());
    let decoded = Packet::decode(&ours).expect("valid").expect("complete");
    assert_eq!(decoded, theirs);
    assert_eq!(ours.len(), bytes_of(&theirs).len());
    // No identifier: exactly the plain encoding.
    assert_eq!(
        encode_publish(publish5(), &[], Protocol::V500).expect("encode"),
        bytes_of(&Packet::Publish(publish5()))
    );
}

#[test]
fn identifiers_that_grow_the_remaining_length_past_one_byte_are_counted() {
    // 114 bytes of payload and 8 of variable header make 122; three one-byte identifiers add
    // 6 and push the Remaining Length to 128, which takes two bytes.
    let mut p = v5::Publish::new(
        QosPid::Level1(pid(7)),
        TopicName::try_from("t").expect("topic"),
        Bytes::from(vec![b'x'; 114]),
    );
    p.properties.payload_is_utf8 = Some(true);
    let plain = bytes_of(&Packet::Publish(p.clone()));
    assert_eq!(plain[1] & 0x80, 0, "one-byte Remaining Length before");
    let bytes = encode_publish(p, &[1, 2, 3], Protocol::V500).expect("encode");
    assert_eq!(bytes[1] & 0x80, 0x80, "two-byte Remaining Length after");
    let read = read_publish(&bytes);
    assert_eq!(read.ids, vec![1, 2, 3]);
    assert_eq!(read.others, vec![0x01]);
    assert_eq!(read.payload, vec![b'x'; 114]);
    assert_eq!(bytes.len(), plain.len() + 6 + 1);
}

#[test]
fn subscription_identifiers_are_left_out_for_3_x_and_checked_for_range() {
    let v3_bytes = encode_publish(publish5(), &[1, 2], Protocol::V311).expect("encode");
    assert_eq!(
        v3_bytes,
        encode(&Packet::Publish(publish5()), Protocol::V311).expect("encode")
    );
    assert!(encode_publish(publish5(), &[0], Protocol::V500).is_err());
    assert!(encode_publish(publish5(), &[268_435_456], Protocol::V500).is_err());
}

/// A delivery's PUBLISH is written straight after what the output already holds, byte for byte
/// the packet `encode` gives, in both protocol forms and at every QoS.
#[test]
fn a_publish_is_appended_to_the_output_as_encode_writes_it() {
    use rosetta_mqtt::codec::encode_publish_into;

    for protocol in [Protocol::V311, Protocol::V500] {
        for qos_pid in [
            QosPid::Level0,
            QosPid::Level1(pid(7)),
            QosPid::Level2(pid(8)),
        ] {
            let mut p = publish5();
            p.qos_pid = qos_pid;
            p.dup = qos_pid != QosPid::Level0;
            p.retain = true;
            let mut out = BytesMut::from(&b"before"[..]);
            let size = encode_publish_into(p.clone(), &[], protocol, &mut out).expect("encode");
            let alone = encode(&Packet::Publish(p), protocol).expect("encode");
            assert_eq!(size, alone.len());
            assert_eq!(&out[..6], b"before");
            assert_eq!(&out[6..], &alone[..], "{protocol:?} {qos_pid:?}");
        }
    }
}

/// Encoding a delivery into an output buffer with room allocates nothing: the packet is not
/// built in a buffer of its own first.
#[test]
fn a_publish_into_a_warm_output_allocates_nothing() {
    use rosetta_mqtt::codec::encode_publish_into;

    let mut out = BytesMut::with_capacity(4096);
    for protocol in [Protocol::V311, Protocol::V500] {
        let p = v5::Publish::new(
            QosPid::Level1(pid(1)),
            TopicName::try_from("sensors/a/temp").expect("topic"),
            Bytes::from_static(b"sixteen-byte-msg"),
        );
        let used = allocation_counter::measure(|| {
            encode_publish_into(p, &[], protocol, &mut out).expect("encode");
        });
        assert_eq!(used.count_total, 0, "{protocol:?}");
        out.clear();
    }
}

/// A delivery becomes an MQTT message without an allocation once the session's topic buffer
/// is warm: the topic is written into it, and the payload is shared.
#[test]
fn a_core_message_becomes_an_mqtt_message_in_a_warm_topic_buffer_without_allocating() {
    use rosetta_core::{Message, Properties, AMQ_TOPIC};
    use rosetta_mqtt::message::AppMessage;

    let core = Message::new(
        AMQ_TOPIC,
        "sensors.a%2Eb.temp",
        Properties::default(),
        Bytes::from_static(b"sixteen-byte-msg"),
    );
    let mut buffer = String::with_capacity(64);
    for _ in 0..2 {
        let mut message = None;
        let used = allocation_counter::measure(|| {
            message = Some(AppMessage::from_core(&core, 0, std::mem::take(&mut buffer)));
        });
        let message = message.expect("converted");
        assert_eq!(message.topic, "sensors/a.b/temp");
        assert_eq!(used.count_total, 0);
        buffer = message.topic;
    }
}

/// Acknowledgements written straight into the output are byte for byte what the codec crate
/// writes: with reason codes and properties in 5.0, the packet id alone in 3.1.1.
#[test]
fn acks_are_appended_to_the_output_as_the_codec_crate_writes_them() {
    use rosetta_mqtt::codec::encode_into;

    let mut with_reason_string = v5::Puback::new(pid(8), v5::PubackReasonCode::QuotaExceeded);
    with_reason_string.properties.reason_string = Some("full".into());
    let acks = [
        (
            Packet::Puback(v5::Puback::new_success(pid(1))),
            v3::Packet::Puback(pid(1)),
        ),
        (
            Packet::Puback(with_reason_string),
            v3::Packet::Puback(pid(8)),
        ),
        (
            Packet::Pubrec(v5::Pubrec::new(
                pid(2),
                v5::PubrecReasonCode::NoMatchingSubscribers,
            )),
            v3::Packet::Pubrec(pid(2)),
        ),
        (
            Packet::Pubrel(v5::Pubrel::new(
                pid(3),
                v5::PubrelReasonCode::PacketIdentifierNotFound,
            )),
            v3::Packet::Pubrel(pid(3)),
        ),
        (
            Packet::Pubcomp(v5::Pubcomp::new_success(pid(4))),
            v3::Packet::Pubcomp(pid(4)),
        ),
    ];
    for (packet, v3_packet) in acks {
        for (protocol, expected) in [
            (Protocol::V500, bytes_of(&packet)),
            (
                Protocol::V311,
                v3_packet.encode().expect("encode").as_ref().to_vec(),
            ),
        ] {
            let mut out = BytesMut::from(&b"before"[..]);
            encode_into(&packet, protocol, &mut out).expect("encode");
            assert_eq!(&out[..6], b"before");
            assert_eq!(&out[6..], &expected[..], "{protocol:?} {packet:?}");
            assert_eq!(
                encode(&packet, protocol).expect("encode"),
                expected,
                "{protocol:?} {packet:?}"
            );
        }
    }
}

/// The acknowledgement of each publish is written into an output with room without allocating.
#[test]
fn an_ack_into_a_warm_output_allocates_nothing() {
    use rosetta_mqtt::codec::encode_into;

    let mut out = BytesMut::with_capacity(4096);
    for protocol in [Protocol::V311, Protocol::V500] {
        for packet in [
            Packet::Puback(v5::Puback::new_success(pid(1))),
            Packet::Puback(v5::Puback::new(
                pid(2),
                v5::PubackReasonCode::NoMatchingSubscribers,
            )),
            Packet::Pubrec(v5::Pubrec::new_success(pid(3))),
        ] {
            let used = allocation_counter::measure(|| {
                encode_into(&packet, protocol, &mut out).expect("encode");
            });
            assert_eq!(used.count_total, 0, "{protocol:?} {packet:?}");
        }
        out.clear();
    }
}

#[test]
fn routing_effects_are_read_from_fixed_headers_alone() {
    use rosetta_mqtt::codec::{routing_effects, RoutingEffects};
    let filter = TopicFilter::try_from("a/#").expect("filter");
    let subscribe = bytes_of(&Packet::Subscribe(v5::Subscribe::new(
        pid(3),
        vec![(filter.clone(), v5::SubscriptionOptions::new(QoS::Level1))],
    )));
    let unsubscribe = bytes_of(&Packet::Unsubscribe(v5::Unsubscribe::new(
        pid(4),
        vec![filter],
    )));
    // A PUBLISH whose payload holds bytes that look like a SUBSCRIBE header: bodies are skipped.
    let mut tricky = publish5();
    tricky.payload = Bytes::from_static(&[0x82, 0x01, 0x00]);
    let publish = bytes_of(&Packet::Publish(tricky));
    let puback = bytes_of(&Packet::Puback(v5::Puback::new_success(pid(1))));
    let effects = |parts: &[&[u8]]| routing_effects(&parts.concat());
    let none = RoutingEffects::default();
    assert_eq!(effects(&[]), none);
    assert_eq!(effects(&[&puback, &puback]), none);
    assert_eq!(
        effects(&[&puback, &publish]),
        RoutingEffects {
            publishes: true,
            subscribes: false
        }
    );
    assert_eq!(
        effects(&[&subscribe]),
        RoutingEffects {
            publishes: false,
            subscribes: true
        }
    );
    assert!(effects(&[&unsubscribe]).subscribes);
    assert_eq!(
        effects(&[&publish, &unsubscribe]),
        RoutingEffects {
            publishes: true,
            subscribes: true
        }
    );
    // A DISCONNECT may publish a will; a CONNECT may take a session and its subscriptions over.
    let disconnect = bytes_of(&Packet::Disconnect(v5::Disconnect::new(
        v5::DisconnectReasonCode::DisconnectWithWillMessage,
    )));
    assert!(effects(&[&disconnect]).publishes);
    assert!(effects(&[&connect_bytes(b"MQTT", 4)]).subscribes);
    // A header cut short may still be a PUBLISH.
    assert!(effects(&[&puback, &[0x40]]).publishes);
    assert!(effects(&[&[0x30, 0xff]]).publishes);
    // A whole PUBLISH header announcing more than is buffered is a PUBLISH all the same.
    assert!(effects(&[&publish[..4]]).publishes);
}
