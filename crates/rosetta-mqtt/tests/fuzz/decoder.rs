//! The packet decoder against random bytes and mutated valid packets, fed whole and split at
//! random points, as a first packet (CONNECT) and as the packets of a connected 3.1, 3.1.1 or
//! 5.0 client. Whatever the input: no panic, the same packets and error however it is split,
//! every accepted packet encodes again without panicking, and no decode call allocates more
//! than a small multiple of the bytes it was given.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use mqtt_proto::v5::{self, Packet};
use mqtt_proto::{v3, Pid, Protocol, QoS, QosPid, TopicFilter, TopicName};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use rosetta_mqtt::codec::{decode, decode_connect, encode};
use rosetta_mqtt::MqttError;

use crate::config;
use crate::mutate::{self, Mutation};

/// Bytes a decode call may allocate per byte of input: a decoded packet costs more than its
/// encoding (a four-byte topic filter becomes a shared string and its options), never more.
const PER_INPUT_BYTE: u64 = 64;
/// Bytes a decode call may allocate whatever the input: error messages and bookkeeping. Far
/// below the packet limits, so reserving for an announced length is caught.
const SLACK: u64 = 2048;

const PROTOCOLS: [Protocol; 3] = [Protocol::V310, Protocol::V311, Protocol::V500];

/// Packet limits: tight, the size of real packets, and the server's default.
fn max_packet_size() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![64u32, 4096, 1 << 20, 16 << 20])
}

/// Each packet as its Debug rendering, then the error that stopped decoding, if any.
type Decoded = (Vec<String>, Option<String>);

/// Runs one decode call, failing the case if it allocated more than the input justifies.
fn measured<T>(len: usize, decode: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let mut result = None;
    let used = allocation_counter::measure(|| result = Some(decode()));
    prop_assert!(
        used.bytes_max <= PER_INPUT_BYTE * len as u64 + SLACK,
        "decoding {len} bytes allocated {} bytes at once",
        used.bytes_max
    );
    Ok(result.expect("the closure ran"))
}

/// Every packet of a connected client in `input`, arriving in pieces cut at `cuts`.
fn decode_in_pieces(
    input: &[u8],
    cuts: &[Index],
    protocol: Protocol,
    max: u32,
) -> Result<Decoded, TestCaseError> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
    cuts.push(input.len());
    cuts.sort_unstable();
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut from = 0;
    for cut in cuts {
        buf.extend_from_slice(&input[from..cut]);
        from = cut;
        loop {
            match measured(buf.len(), || decode(&mut buf, protocol, max))? {
                Ok(Some(packet)) => {
                    // The server's encoder must not panic on anything the decoder produces.
                    let _ = encode(&packet, protocol);
                    packets.push(format!("{packet:?}"));
                }
                Ok(None) => break,
                Err(e) => return Ok((packets, Some(e.to_string()))),
            }
        }
    }
    Ok((packets, None))
}

/// The first packet of a connection, arriving in pieces cut at `cuts`.
fn connect_in_pieces(input: &[u8], cuts: &[Index], max: u32) -> Result<String, TestCaseError> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
    cuts.push(input.len());
    cuts.sort_unstable();
    let mut buf = BytesMut::new();
    let mut from = 0;
    for cut in cuts {
        buf.extend_from_slice(&input[from..cut]);
        from = cut;
        match measured(buf.len(), || decode_connect(&mut buf, max))? {
            Ok(None) => {}
            other => return Ok(format!("{other:?}")),
        }
    }
    Ok("incomplete".to_owned())
}

/// The properties every input must have.
fn check(input: &[u8], cuts: &[Index], max: u32) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        connect_in_pieces(input, &[], max)?,
        connect_in_pieces(input, cuts, max)?,
        "the first packet decodes differently when split"
    );
    for protocol in PROTOCOLS {
        let whole = decode_in_pieces(input, &[], protocol, max)?;
        let pieces = decode_in_pieces(input, cuts, protocol, max)?;
        prop_assert_eq!(whole, pieces, "the input decodes differently when split");
    }
    Ok(())
}

fn pid(n: u16) -> Pid {
    Pid::try_from(n).expect("pid")
}

fn topic(name: &str) -> TopicName {
    TopicName::try_from(name).expect("topic")
}

fn filter(name: &str) -> TopicFilter {
    TopicFilter::try_from(name).expect("filter")
}

fn v5_bytes(packet: &Packet) -> Vec<u8> {
    packet.encode().expect("encode").as_ref().to_vec()
}

fn v3_bytes(packet: &v3::Packet) -> Vec<u8> {
    packet.encode().expect("encode").as_ref().to_vec()
}

/// Encoded packets of both directions and every protocol version: what clients send, written
/// by the protocol library, and what the server sends, written by the codec.
fn corpus() -> Vec<Vec<u8>> {
    let mut connect5 = v5::Connect::new(Arc::from("client"), 30);
    connect5.username = Some(Arc::from("guest"));
    connect5.password = Some(Bytes::from_static(b"guest"));
    connect5.properties.session_expiry_interval = Some(60);
    connect5.properties.user_properties.push(v5::UserProperty {
        name: "k".into(),
        value: "v".into(),
    });
    connect5.last_will = Some(v5::LastWill::new(
        QoS::Level1,
        topic("will/t"),
        Bytes::from_static(b"gone"),
    ));
    let mut connect3 = v3::Connect::new(Arc::from("client"), 30);
    connect3.username = Some(Arc::from("guest"));
    connect3.password = Some(Bytes::from_static(b"guest"));
    connect3.last_will = Some(v3::LastWill::new(
        QoS::Level2,
        topic("will/t"),
        Bytes::from_static(b"gone"),
    ));
    let mut connect31 = connect3.clone();
    connect31.protocol = Protocol::V310;
    let mut publish5 = v5::Publish::new(
        QosPid::Level2(pid(7)),
        topic("a/b"),
        Bytes::from_static(b"payload"),
    );
    publish5.properties.topic_alias = Some(1);
    publish5.properties.content_type = Some("text/plain".into());
    publish5.properties.message_expiry_interval = Some(30);
    let filters = vec![
        (filter("a/+"), v5::SubscriptionOptions::new(QoS::Level1)),
        (
            filter("$share/g/#"),
            v5::SubscriptionOptions::new(QoS::Level2),
        ),
    ];
    let client5 = [
        Packet::Connect(connect5),
        Packet::Publish(publish5),
        Packet::Puback(v5::Puback::new_success(pid(1))),
        Packet::Pubrec(v5::Pubrec::new_success(pid(2))),
        Packet::Pubrel(v5::Pubrel::new_success(pid(3))),
        Packet::Pubcomp(v5::Pubcomp::new_success(pid(4))),
        Packet::Subscribe(v5::Subscribe::new(pid(5), filters)),
        Packet::Unsubscribe(v5::Unsubscribe::new(pid(6), vec![filter("a/+")])),
        Packet::Pingreq,
        Packet::Disconnect(v5::Disconnect::new_normal()),
        Packet::Auth(v5::Auth::new_success()),
    ];
    let client3 = [
        v3::Packet::Connect(connect3),
        v3::Packet::Connect(connect31),
        v3::Packet::Publish(v3::Publish::new(
            QosPid::Level1(pid(8)),
            topic("a/c"),
            Bytes::from_static(b"x"),
        )),
        v3::Packet::Puback(pid(1)),
        v3::Packet::Pubrel(pid(3)),
        v3::Packet::Subscribe(v3::Subscribe::new(pid(5), vec![(filter("#"), QoS::Level0)])),
        v3::Packet::Unsubscribe(v3::Unsubscribe::new(pid(6), vec![filter("#")])),
        v3::Packet::Pingreq,
        v3::Packet::Disconnect,
    ];
    let server = [
        Packet::Connack(v5::Connack::new(true, v5::ConnectReasonCode::Success)),
        Packet::Suback(v5::Suback::new(
            pid(5),
            vec![
                v5::SubscribeReasonCode::GrantedQoS1,
                v5::SubscribeReasonCode::NotAuthorized,
            ],
        )),
        Packet::Unsuback(v5::Unsuback::new(
            pid(6),
            vec![v5::UnsubscribeReasonCode::Success],
        )),
        Packet::Pingresp,
        Packet::Disconnect(v5::Disconnect::new(
            v5::DisconnectReasonCode::ServerShuttingDown,
        )),
    ];
    let mut corpus: Vec<Vec<u8>> = client5.iter().map(v5_bytes).collect();
    corpus.extend(client3.iter().map(v3_bytes));
    for protocol in [Protocol::V311, Protocol::V500] {
        for packet in &server {
            let bytes = encode(packet, protocol).expect("encode");
            if !bytes.is_empty() {
                corpus.push(bytes);
            }
        }
    }
    corpus
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn arbitrary_bytes_never_panic_nor_allocate_beyond_their_length(
        input in prop::collection::vec(any::<u8>(), 0..1024),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
        max in max_packet_size(),
    ) {
        check(&input, &cuts, max)?;
    }

    #[test]
    fn mutated_valid_packets_never_panic_nor_allocate_what_they_announce(
        picks in prop::collection::vec(any::<Index>(), 1..6),
        mutations in prop::collection::vec(mutate::mutation(), 1..5),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
        max in max_packet_size(),
    ) {
        let corpus = corpus();
        let mut input: Vec<u8> = picks.iter().flat_map(|p| corpus[p.index(corpus.len())].clone()).collect();
        for m in &mutations {
            mutate::apply(&mut input, m, &corpus);
        }
        check(&input, &cuts, max)?;
    }
}

#[test]
fn a_packet_announcing_the_largest_size_allocates_nothing_for_it() {
    // Five bytes announcing a packet just under the limit, as a first CONNECT and as a later
    // PUBLISH: the decoder waits for the rest without making room for it (it may never come).
    let max = 16 << 20;
    let announce = [0xfa, 0xff, 0xff, 0x07];
    let mut connect = BytesMut::from(&[&[0x10][..], &announce].concat()[..]);
    let used = allocation_counter::measure(|| {
        assert!(matches!(decode_connect(&mut connect, max), Ok(None)));
    });
    assert!(used.bytes_max <= SLACK, "CONNECT: {} bytes", used.bytes_max);
    for protocol in PROTOCOLS {
        let mut publish = BytesMut::from(&[&[0x30][..], &announce].concat()[..]);
        let used = allocation_counter::measure(|| {
            assert!(matches!(decode(&mut publish, protocol, max), Ok(None)));
        });
        assert!(used.bytes_max <= SLACK, "PUBLISH: {} bytes", used.bytes_max);
    }
}

#[test]
fn the_mutations_reach_the_remaining_length_they_aim_at() {
    // Guards the fuzzer itself: the second packet's Remaining Length is rewritten in place,
    // and a length past the largest becomes a malformed five-byte integer the decoder refuses.
    let corpus = corpus();
    let first = corpus[2].clone();
    let mut input = [first.clone(), corpus[3].clone()].concat();
    mutate::apply(&mut input, &Mutation::Announce(1, u32::MAX), &corpus);
    assert_eq!(input[..first.len()], first[..]);
    assert_eq!(
        input[first.len() + 1..first.len() + 6],
        [0xff, 0xff, 0xff, 0xff, 0x7f]
    );
    let mut buf = BytesMut::from(&input[..]);
    assert!(matches!(
        decode(&mut buf, Protocol::V500, 1 << 20),
        Ok(Some(_))
    ));
    assert!(matches!(
        decode(&mut buf, Protocol::V500, 1 << 20),
        Err(MqttError::Malformed(_))
    ));
}
