//! Codec tests: round trips of every method the broker receives or sends, frames split at every
//! byte, size limits checked from the header, and malformed input of every kind.

use amq_protocol::frame::{
    gen_frame, parse_frame, AMQPContentHeader, AMQPFrame, ProtocolVersion, WriteContext,
};
use amq_protocol::protocol::{
    basic, channel, confirm, connection, exchange, queue, tx, AMQPClass, BasicProperties,
};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use bytes::{BufMut, BytesMut};
use rosetta_amqp::codec::{
    decode_frame, decode_header, encode_content, encode_frame, CodecError, ProtocolHeader,
    FRAME_END, FRAME_MIN_SIZE, MAX_NESTING, PROTOCOL_HEADER,
};

const FRAME_MAX: u32 = 131_072;

fn arguments() -> FieldTable {
    let mut capabilities = FieldTable::default();
    capabilities.insert("publisher_confirms".into(), AMQPValue::Boolean(true));
    capabilities.insert("consumer_cancel_notify".into(), AMQPValue::Boolean(true));
    let mut t = FieldTable::default();
    t.insert("x-message-ttl".into(), AMQPValue::LongInt(60_000));
    t.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(1 << 40));
    t.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("dlx".into()),
    );
    t.insert("x-match".into(), AMQPValue::LongString("all".into()));
    t.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    t.insert(
        "list".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::ShortShortUInt(1),
            AMQPValue::Double(0.5),
            AMQPValue::Void,
        ])),
    );
    t.insert("raw".into(), AMQPValue::ByteArray(vec![0, 1, 255].into()));
    t
}

fn method(channel: u16, class: AMQPClass) -> AMQPFrame {
    AMQPFrame::Method(channel, class)
}

/// Every method a client sends to the broker, with non-default field values.
fn client_methods() -> Vec<AMQPFrame> {
    use AMQPClass::{Basic, Channel, Confirm, Connection, Exchange, Queue, Tx};
    vec![
        method(
            0,
            Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: arguments(),
                mechanism: "PLAIN".into(),
                response: LongString::from(&b"\0guest\0guest"[..]),
                locale: "en_US".into(),
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::SecureOk(connection::SecureOk {
                response: "answer".into(),
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 2047,
                frame_max: FRAME_MAX,
                heartbeat: 60,
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "Goodbye".into(),
                class_id: 0,
                method_id: 0,
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "low on memory".into(),
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
        ),
        method(1, Channel(channel::AMQPMethod::Open(channel::Open {}))),
        method(
            1,
            Channel(channel::AMQPMethod::Flow(channel::Flow { active: true })),
        ),
        method(
            1,
            Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                active: false,
            })),
        ),
        method(
            1,
            Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 406,
                reply_text: "PRECONDITION_FAILED".into(),
                class_id: 50,
                method_id: 10,
            })),
        ),
        method(
            1,
            Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        ),
        method(
            2,
            Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: "orders".into(),
                kind: "topic".into(),
                passive: false,
                durable: true,
                auto_delete: true,
                internal: false,
                nowait: true,
                arguments: arguments(),
            })),
        ),
        method(
            2,
            Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: "orders".into(),
                if_unused: true,
                nowait: false,
            })),
        ),
        method(
            2,
            Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: "dst".into(),
                source: "src".into(),
                routing_key: "a.*.#".into(),
                nowait: true,
                arguments: arguments(),
            })),
        ),
        method(
            2,
            Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
                destination: "dst".into(),
                source: "src".into(),
                routing_key: "a.*.#".into(),
                nowait: false,
                arguments: FieldTable::default(),
            })),
        ),
        method(
            3,
            Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "q".into(),
                passive: false,
                durable: true,
                exclusive: true,
                auto_delete: false,
                nowait: true,
                arguments: arguments(),
            })),
        ),
        method(
            3,
            Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: "q".into(),
                exchange: "amq.topic".into(),
                routing_key: "sensors.*".into(),
                nowait: false,
                arguments: arguments(),
            })),
        ),
        method(
            3,
            Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: "q".into(),
                nowait: true,
            })),
        ),
        method(
            3,
            Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: "q".into(),
                if_unused: true,
                if_empty: false,
                nowait: true,
            })),
        ),
        method(
            3,
            Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: "q".into(),
                exchange: "amq.topic".into(),
                routing_key: "sensors.*".into(),
                arguments: arguments(),
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 250,
                global: true,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "q".into(),
                consumer_tag: "ctag-1".into(),
                no_local: false,
                no_ack: true,
                exclusive: true,
                nowait: false,
                arguments: arguments(),
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: "ctag-1".into(),
                nowait: true,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "amq.topic".into(),
                routing_key: "sensors.t1".into(),
                mandatory: true,
                immediate: false,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Get(basic::Get {
                queue: "q".into(),
                no_ack: true,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: u64::MAX,
                multiple: true,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag: 7,
                requeue: true,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::RecoverAsync(basic::RecoverAsync {
                requeue: true,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Recover(basic::Recover {
                requeue: false,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 9,
                multiple: true,
                requeue: false,
            })),
        ),
        method(
            5,
            Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: true,
            })),
        ),
        method(6, Tx(tx::AMQPMethod::Select(tx::Select {}))),
        method(6, Tx(tx::AMQPMethod::Commit(tx::Commit {}))),
        method(6, Tx(tx::AMQPMethod::Rollback(tx::Rollback {}))),
    ]
}

/// Every method the broker sends to a client.
fn server_methods() -> Vec<AMQPFrame> {
    use AMQPClass::{Basic, Channel, Confirm, Connection, Exchange, Queue, Tx};
    vec![
        method(
            0,
            Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: arguments(),
                mechanisms: "PLAIN AMQPLAIN".into(),
                locales: "en_US".into(),
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Secure(connection::Secure {
                challenge: "challenge".into(),
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: 2047,
                frame_max: FRAME_MAX,
                heartbeat: 60,
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 501,
                reply_text: "FRAME_ERROR - bad frame".into(),
                class_id: 60,
                method_id: 40,
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "disk".into(),
            })),
        ),
        method(
            0,
            Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
        ),
        method(1, Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {}))),
        method(
            1,
            Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 404,
                reply_text: "NOT_FOUND - no queue 'q'".into(),
                class_id: 50,
                method_id: 10,
            })),
        ),
        method(
            1,
            Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        ),
        method(
            2,
            Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
        ),
        method(
            2,
            Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
        ),
        method(
            2,
            Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
        ),
        method(
            2,
            Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
        ),
        method(
            3,
            Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                queue: "amq.gen-JzTY20BRgKO-HjmUJj0wLg".into(),
                message_count: 12,
                consumer_count: 3,
            })),
        ),
        method(3, Queue(queue::AMQPMethod::BindOk(queue::BindOk {}))),
        method(
            3,
            Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                message_count: 5,
            })),
        ),
        method(
            3,
            Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                message_count: 6,
            })),
        ),
        method(3, Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {}))),
        method(4, Basic(basic::AMQPMethod::QosOk(basic::QosOk {}))),
        method(
            4,
            Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: "amq.ctag-1".into(),
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: "amq.ctag-1".into(),
                nowait: false,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                consumer_tag: "amq.ctag-1".into(),
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "amq.ctag-1".into(),
                delivery_tag: 42,
                redelivered: true,
                exchange: "amq.topic".into(),
                routing_key: "sensors.t1".into(),
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: 43,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
                message_count: 99,
            })),
        ),
        method(4, Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {}))),
        method(
            4,
            Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
                exchange: "amq.direct".into(),
                routing_key: "nowhere".into(),
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 10,
                multiple: false,
            })),
        ),
        method(
            4,
            Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 11,
                multiple: true,
                requeue: false,
            })),
        ),
        method(4, Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {}))),
        method(
            5,
            Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
        ),
        method(6, Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {}))),
        method(6, Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {}))),
        method(6, Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {}))),
    ]
}

fn all_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_content_encoding("utf-8".into())
        .with_headers(arguments())
        .with_delivery_mode(2)
        .with_priority(5)
        .with_correlation_id("c-1".into())
        .with_reply_to("replies".into())
        .with_expiration("1000".into())
        .with_message_id("m-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("event".into())
        .with_user_id("guest".into())
        .with_app_id("app".into())
        .with_cluster_id("cluster".into())
}

/// Content header and body frames, and a heartbeat.
fn content_frames() -> Vec<AMQPFrame> {
    vec![
        AMQPFrame::Header(
            7,
            AMQPContentHeader {
                class_id: 60,
                body_size: 11,
                properties: all_properties(),
            },
        ),
        AMQPFrame::Header(
            7,
            AMQPContentHeader {
                class_id: 60,
                body_size: 0,
                properties: BasicProperties::default(),
            },
        ),
        AMQPFrame::Header(
            7,
            AMQPContentHeader {
                class_id: 60,
                body_size: 1 << 33,
                properties: BasicProperties::default().with_delivery_mode(1),
            },
        ),
        AMQPFrame::Body(7, b"hello world".to_vec()),
        AMQPFrame::Body(7, Vec::new()),
        AMQPFrame::Body(65_535, (0..=255).collect()),
        AMQPFrame::Heartbeat,
    ]
}

fn every_frame() -> Vec<AMQPFrame> {
    let mut frames = client_methods();
    frames.extend(server_methods());
    frames.extend(content_frames());
    frames
}

fn encoded(frame: &AMQPFrame) -> BytesMut {
    let mut out = BytesMut::new();
    encode_frame(frame, &mut out);
    out
}

/// Encodes `frame`, decodes it back, and checks nothing is lost or left over.
fn assert_round_trip(frame: &AMQPFrame) {
    let mut buf = encoded(frame);
    let len = buf.len();
    assert_eq!(
        decode_frame(&mut buf, FRAME_MAX),
        Ok(Some(frame.clone())),
        "{frame:?}"
    );
    assert!(
        buf.is_empty(),
        "{len} bytes encoded, {} left over for {frame:?}",
        buf.len()
    );
}

#[test]
fn every_client_method_survives_a_round_trip() {
    let frames = client_methods();
    assert_eq!(frames.len(), 36);
    frames.iter().for_each(assert_round_trip);
}

#[test]
fn every_server_method_survives_a_round_trip() {
    let frames = server_methods();
    assert_eq!(frames.len(), 34);
    frames.iter().for_each(assert_round_trip);
}

#[test]
fn content_header_body_and_heartbeat_frames_survive_a_round_trip() {
    content_frames().iter().for_each(assert_round_trip);
}

#[test]
fn the_encoder_writes_the_same_bytes_as_amq_protocol() {
    for frame in every_frame() {
        let reference = gen_frame(&frame)(WriteContext::from(Vec::new())).map(|ctx| ctx.write);
        assert_eq!(
            reference.ok().as_deref(),
            Some(&encoded(&frame)[..]),
            "{frame:?}"
        );
    }
}

#[test]
fn amq_protocol_decodes_what_the_encoder_writes() {
    for frame in every_frame() {
        let bytes = encoded(&frame);
        assert_eq!(parse_frame(&bytes[..]), Ok((&[][..], frame)));
    }
}

#[test]
fn every_frame_split_at_every_byte_decodes_only_once_complete() {
    for frame in every_frame() {
        let bytes = encoded(&frame);
        for cut in 0..bytes.len() {
            let mut prefix = BytesMut::from(&bytes[..cut]);
            assert_eq!(
                decode_frame(&mut prefix, FRAME_MAX),
                Ok(None),
                "cut at {cut} of {frame:?}"
            );
            assert_eq!(prefix.len(), cut, "a partial frame must not be consumed");
        }
    }
}

#[test]
fn frames_fed_one_byte_at_a_time_come_out_in_order() {
    let frames = every_frame();
    let mut stream = BytesMut::new();
    frames.iter().for_each(|f| encode_frame(f, &mut stream));
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for &byte in stream.iter() {
        buf.put_u8(byte);
        while let Some(frame) = decode_frame(&mut buf, FRAME_MAX).ok().flatten() {
            decoded.push(frame);
        }
    }
    assert_eq!(decoded, frames);
    assert!(buf.is_empty());
}

#[test]
fn the_protocol_header_is_encoded_verbatim() {
    let mut out = BytesMut::new();
    encode_frame(
        &AMQPFrame::ProtocolHeader(ProtocolVersion::amqp_0_9_1()),
        &mut out,
    );
    assert_eq!(&out[..], &PROTOCOL_HEADER);
}

#[test]
fn the_amqp_0_9_1_header_is_accepted_and_consumed() {
    let mut buf = BytesMut::from(&PROTOCOL_HEADER[..]);
    encode_frame(&AMQPFrame::Heartbeat, &mut buf);
    assert_eq!(decode_header(&mut buf), Some(ProtocolHeader::Amqp091));
    assert_eq!(
        decode_frame(&mut buf, FRAME_MAX),
        Ok(Some(AMQPFrame::Heartbeat))
    );
}

#[test]
fn a_partial_protocol_header_waits_for_more_bytes() {
    for cut in 0..PROTOCOL_HEADER.len() {
        let mut buf = BytesMut::from(&PROTOCOL_HEADER[..cut]);
        assert_eq!(decode_header(&mut buf), None, "cut at {cut}");
        assert_eq!(buf.len(), cut);
    }
}

#[test]
fn another_protocol_header_is_reported_with_the_bytes_received() {
    // AMQP 0-8 / 0-9 as old clients send it, 0-9-0, and 1.0.
    for header in [
        &b"AMQP\x01\x01\x00\x09"[..],
        b"AMQP\x00\x00\x09\x00",
        b"AMQP\x00\x01\x00\x00",
    ] {
        let mut buf = BytesMut::from(header);
        assert_eq!(
            decode_header(&mut buf),
            Some(ProtocolHeader::Unsupported(header.to_vec().into()))
        );
    }
}

#[test]
fn a_foreign_protocol_is_reported_as_soon_as_it_diverges() {
    let mut buf = BytesMut::from(&b"G"[..]);
    assert_eq!(
        decode_header(&mut buf),
        Some(ProtocolHeader::Unsupported(b"G".to_vec().into()))
    );
    let mut buf = BytesMut::from(&b"AMQX"[..]);
    assert_eq!(
        decode_header(&mut buf),
        Some(ProtocolHeader::Unsupported(b"AMQX".to_vec().into()))
    );
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
    assert_eq!(
        decode_header(&mut buf),
        Some(ProtocolHeader::Unsupported(b"GET / HT".to_vec().into()))
    );
}

#[test]
fn an_oversized_frame_is_rejected_from_its_header_alone() {
    let mut buf = BytesMut::new();
    buf.put_u8(1);
    buf.put_u16(1);
    buf.put_u32(0x7FFF_FFFF);
    assert_eq!(
        decode_frame(&mut buf, FRAME_MAX),
        Err(CodecError::FrameTooLarge {
            size: 0x7FFF_FFFF,
            max: FRAME_MAX
        })
    );
    assert_eq!(
        CodecError::FrameTooLarge { size: 0, max: 0 }.reply_code(),
        501
    );
}

#[test]
fn frame_max_counts_the_eight_bytes_of_framing() {
    let body = vec![0u8; (FRAME_MIN_SIZE - 8) as usize];
    let fits = encoded(&AMQPFrame::Body(1, body.clone()));
    assert_eq!(fits.len(), FRAME_MIN_SIZE as usize);
    assert_eq!(
        decode_frame(&mut fits.clone(), FRAME_MIN_SIZE),
        Ok(Some(AMQPFrame::Body(1, body)))
    );
    let too_big = encoded(&AMQPFrame::Body(
        1,
        vec![0u8; (FRAME_MIN_SIZE - 7) as usize],
    ));
    assert_eq!(
        decode_frame(&mut BytesMut::from(&too_big[..7]), FRAME_MIN_SIZE),
        Err(CodecError::FrameTooLarge {
            size: FRAME_MIN_SIZE - 7,
            max: FRAME_MIN_SIZE
        })
    );
}

#[test]
fn frame_max_zero_means_no_limit() {
    let mut buf = BytesMut::from(&[3u8, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF][..]);
    assert_eq!(decode_frame(&mut buf, 0), Ok(None));
    assert_eq!(buf.len(), 7);
}

#[test]
fn garbage_is_rejected_from_its_first_byte() {
    for first in [0u8, 4, 5, 9, b'A', b'G', 0x16, 0xFF] {
        let mut buf = BytesMut::from(&[first][..]);
        assert_eq!(
            decode_frame(&mut buf, FRAME_MAX),
            Err(CodecError::UnknownFrameType { frame_type: first })
        );
    }
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
    let err = decode_frame(&mut buf, FRAME_MAX);
    assert_eq!(err.as_ref().map_err(CodecError::reply_code), Err(501));
}

#[test]
fn a_wrong_end_octet_is_a_frame_error() {
    for frame in every_frame() {
        let mut bytes = encoded(&frame);
        let last = bytes.len() - 1;
        bytes[last] = 0xCD;
        assert_eq!(
            decode_frame(&mut bytes, FRAME_MAX),
            Err(CodecError::BadFrameEnd { found: 0xCD })
        );
        assert_eq!(
            bytes.len(),
            last + 1,
            "framing errors leave the buffer alone"
        );
    }
}

/// A frame of `frame_type` on `channel` with `payload`, correctly framed.
fn raw_frame(frame_type: u8, channel: u16, payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u8(frame_type);
    buf.put_u16(channel);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    buf.put_u8(FRAME_END);
    buf
}

#[test]
fn an_unknown_class_is_not_implemented() {
    // 70 and 80 are the AMQP 0-8 file and stream classes.
    for class in [0u16, 70, 80, 100, 65_535] {
        let mut payload = class.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0, 10, 0, 0]);
        let err = decode_frame(&mut raw_frame(1, 1, &payload), FRAME_MAX);
        assert_eq!(err, Err(CodecError::UnknownClass { class_id: class }));
        assert_eq!(err.map_err(|e| e.reply_code()), Err(540));
    }
}

#[test]
fn an_unknown_method_in_a_known_class_is_an_invalid_command() {
    for (class, method) in [
        (10u16, 12u16),
        (20, 30),
        (40, 41),
        (50, 60),
        (60, 5),
        (60, 121),
        (85, 20),
        (90, 40),
    ] {
        let mut payload = class.to_be_bytes().to_vec();
        payload.extend_from_slice(&method.to_be_bytes());
        let err = decode_frame(&mut raw_frame(1, 1, &payload), FRAME_MAX);
        assert_eq!(
            err,
            Err(CodecError::UnknownMethod {
                class_id: class,
                method_id: method
            })
        );
        assert_eq!(err.map_err(|e| e.reply_code()), Err(503));
    }
}

#[test]
fn truncated_arguments_are_a_syntax_error_for_every_method_with_arguments() {
    for frame in client_methods().into_iter().chain(server_methods()) {
        let AMQPFrame::Method(channel, class) = &frame else {
            continue;
        };
        let (class_id, method_id) = (class.get_amqp_class_id(), class.get_amqp_method_id());
        let bytes = encoded(&frame);
        let payload = &bytes[7..bytes.len() - 1];
        for cut in 4..payload.len() {
            let mut buf = raw_frame(1, *channel, &payload[..cut]);
            let result = decode_frame(&mut buf, FRAME_MAX);
            assert!(
                matches!(result, Err(CodecError::Syntax { class_id: c, method_id: m, .. }) if c == class_id && m == method_id),
                "{frame:?} cut at {cut}: {result:?}"
            );
            assert_eq!(result.map_err(|e| e.reply_code()), Err(502));
            assert!(
                buf.is_empty(),
                "an undecodable method is consumed so decoding can continue"
            );
        }
    }
}

#[test]
fn malformed_method_frames_are_syntax_errors() {
    let syntax = |payload: &[u8]| {
        decode_frame(&mut raw_frame(1, 1, payload), FRAME_MAX)
            .map_err(|e| (e.reply_code(), e.failing_method()))
    };
    // Shorter than class and method ids.
    assert_eq!(syntax(&[]), Err((502, (0, 0))));
    assert_eq!(syntax(&[0, 60, 0]), Err((502, (60, 0))));
    // basic.ack with a trailing byte.
    assert_eq!(
        syntax(&[0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1, 0, 9]),
        Err((502, (60, 80)))
    );
    // basic.publish whose exchange name is not UTF-8.
    assert_eq!(
        syntax(&[0, 60, 0, 40, 0, 0, 1, 0xFF, 0, 0]),
        Err((502, (60, 40)))
    );
    // queue.declare whose arguments hold an unknown field type tag.
    assert_eq!(
        syntax(&[0, 50, 0, 10, 0, 0, 1, b'q', 0, 0, 0, 0, 3, 1, b'k', b'?']),
        Err((502, (50, 10)))
    );
    // queue.declare whose arguments table claims more bytes than the frame holds.
    assert_eq!(
        syntax(&[0, 50, 0, 10, 0, 0, 1, b'q', 0, 0, 0, 1, 0]),
        Err((502, (50, 10)))
    );
}

/// A field table whose single entry nests `depth - 1` arrays, `depth` levels in all.
fn table_nested(depth: usize) -> Vec<u8> {
    let mut value = Vec::new();
    for level in 1..depth {
        value.push(b'A');
        value.extend_from_slice(&(((depth - 1 - level) * 5) as u32).to_be_bytes());
    }
    let mut table = ((value.len() + 2) as u32).to_be_bytes().to_vec();
    table.extend_from_slice(&[1, b'k']);
    table.extend_from_slice(&value);
    table
}

#[test]
fn tables_nested_beyond_the_limit_are_rejected_in_every_method_that_carries_one() {
    for frame in client_methods().into_iter().chain(server_methods()) {
        let AMQPFrame::Method(channel, class) = &frame else {
            continue;
        };
        let (deep, ok) = (table_nested(MAX_NESTING + 1), table_nested(MAX_NESTING));
        // Re-encode the method with a marker table, then splice the nested table over it.
        let marked = |t: FieldTable| -> Option<AMQPClass> {
            let mut class = class.clone();
            match &mut class {
                AMQPClass::Connection(connection::AMQPMethod::Start(m)) => m.server_properties = t,
                AMQPClass::Connection(connection::AMQPMethod::StartOk(m)) => {
                    m.client_properties = t
                }
                AMQPClass::Exchange(exchange::AMQPMethod::Declare(m)) => m.arguments = t,
                AMQPClass::Exchange(exchange::AMQPMethod::Bind(m)) => m.arguments = t,
                AMQPClass::Exchange(exchange::AMQPMethod::Unbind(m)) => m.arguments = t,
                AMQPClass::Queue(queue::AMQPMethod::Declare(m)) => m.arguments = t,
                AMQPClass::Queue(queue::AMQPMethod::Bind(m)) => m.arguments = t,
                AMQPClass::Queue(queue::AMQPMethod::Unbind(m)) => m.arguments = t,
                AMQPClass::Basic(basic::AMQPMethod::Consume(m)) => m.arguments = t,
                _ => return None,
            }
            Some(class)
        };
        let mut marker = FieldTable::default();
        marker.insert("marker".into(), AMQPValue::LongString("~~~~~~~~".into()));
        let Some(with_marker) = marked(marker) else {
            continue;
        };
        let bytes = encoded(&AMQPFrame::Method(*channel, with_marker));
        let payload = &bytes[7..bytes.len() - 1];
        let marker_table: &[u8] = b"\x00\x00\x00\x14\x06markerS\x00\x00\x00\x08~~~~~~~~";
        let at = payload
            .windows(marker_table.len())
            .position(|w| w == marker_table)
            .expect("marker table present");
        for (table, expect_ok) in [(&deep, false), (&ok, true)] {
            let mut spliced = payload[..at].to_vec();
            spliced.extend_from_slice(table);
            spliced.extend_from_slice(&payload[at + marker_table.len()..]);
            let result = decode_frame(&mut raw_frame(1, *channel, &spliced), FRAME_MAX);
            if expect_ok {
                assert!(
                    matches!(result, Ok(Some(AMQPFrame::Method(..)))),
                    "{frame:?}: {result:?}"
                );
            } else {
                assert!(
                    matches!(
                        result,
                        Err(CodecError::Syntax {
                            reason: "field tables nested too deeply",
                            ..
                        })
                    ),
                    "{frame:?}: {result:?}"
                );
            }
        }
    }
}

#[test]
fn headers_nested_beyond_the_limit_are_rejected() {
    for content_type in [None, Some("text/plain")] {
        for content_encoding in [None, Some("gzip")] {
            for (depth, expect_ok) in [(MAX_NESTING, true), (MAX_NESTING + 1, false)] {
                let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
                let flags: u16 = 1 << 13
                    | u16::from(content_type.is_some()) << 15
                    | u16::from(content_encoding.is_some()) << 14;
                payload.extend_from_slice(&flags.to_be_bytes());
                for s in [content_type, content_encoding].into_iter().flatten() {
                    payload.push(s.len() as u8);
                    payload.extend_from_slice(s.as_bytes());
                }
                payload.extend_from_slice(&table_nested(depth));
                let result = decode_frame(&mut raw_frame(2, 1, &payload), FRAME_MAX);
                if expect_ok {
                    assert!(
                        matches!(result, Ok(Some(AMQPFrame::Header(..)))),
                        "{result:?}"
                    );
                } else {
                    assert_eq!(
                        result,
                        Err(CodecError::BadContentHeader {
                            reason: "headers nested too deeply"
                        })
                    );
                }
            }
        }
    }
}

#[test]
fn a_malformed_content_header_is_a_syntax_error() {
    let bytes = encoded(&content_frames()[0]);
    let payload = &bytes[7..bytes.len() - 1];
    for cut in 0..payload.len() {
        let result = decode_frame(&mut raw_frame(2, 7, &payload[..cut]), FRAME_MAX);
        assert!(
            matches!(result, Err(CodecError::BadContentHeader { .. })),
            "cut at {cut}: {result:?}"
        );
        assert_eq!(result.map_err(|e| e.reply_code()), Err(502));
    }
    let mut trailing = payload.to_vec();
    trailing.push(0);
    let result = decode_frame(&mut raw_frame(2, 7, &trailing), FRAME_MAX);
    assert!(
        matches!(result, Err(CodecError::BadContentHeader { .. })),
        "{result:?}"
    );
}

#[test]
fn an_invalid_heartbeat_is_a_frame_error() {
    // On a channel other than zero, or with a payload: AMQP 0-9-1 §4.2.7.
    let on_channel = encoded(&AMQPFrame::InvalidHeartbeat(3));
    assert_eq!(
        decode_frame(&mut on_channel.clone(), FRAME_MAX),
        Err(CodecError::BadHeartbeat {
            channel: 3,
            size: 0
        })
    );
    let mut with_payload = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 1][..]);
    let result = decode_frame(&mut with_payload, FRAME_MAX);
    assert_eq!(
        result,
        Err(CodecError::BadHeartbeat {
            channel: 0,
            size: 1
        })
    );
    assert_eq!(result.map_err(|e| e.reply_code()), Err(501));
}

#[test]
fn a_protocol_header_inside_the_frame_stream_is_an_unknown_frame_type() {
    let mut buf = BytesMut::from(&PROTOCOL_HEADER[..]);
    assert_eq!(
        decode_frame(&mut buf, FRAME_MAX),
        Err(CodecError::UnknownFrameType { frame_type: b'A' })
    );
}

fn deliver() -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
        consumer_tag: "ctag".into(),
        delivery_tag: 1,
        redelivered: false,
        exchange: "x".into(),
        routing_key: "k".into(),
    }))
}

/// Decodes everything in `buf`, checking each frame fits `frame_max`.
fn decode_all(mut buf: BytesMut, frame_max: u32) -> Vec<AMQPFrame> {
    let mut frames = Vec::new();
    while !buf.is_empty() {
        match decode_frame(&mut buf, frame_max) {
            Ok(Some(frame)) => frames.push(frame),
            other => panic!("{other:?} with {} bytes left", buf.len()),
        }
    }
    frames
}

#[test]
fn content_is_split_into_body_frames_that_fit_frame_max() {
    let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let mut out = BytesMut::from(&b"earlier output"[..]);
    assert_eq!(
        encode_content(9, &deliver(), &all_properties(), &body, 4096, &mut out),
        Ok(())
    );
    assert_eq!(&out[..14], b"earlier output");
    let frames = decode_all(out.split_off(14), 4096);
    assert_eq!(frames.len(), 5);
    assert_eq!(frames[0], AMQPFrame::Method(9, deliver()));
    assert_eq!(
        frames[1],
        AMQPFrame::Header(
            9,
            AMQPContentHeader {
                class_id: 60,
                body_size: 10_000,
                properties: all_properties()
            }
        )
    );
    let sizes: Vec<usize> = frames[2..]
        .iter()
        .map(|f| match f {
            AMQPFrame::Body(9, chunk) => chunk.len(),
            other => panic!("expected a body frame, got {other:?}"),
        })
        .collect();
    assert_eq!(sizes, [4088, 4088, 1824]);
    let joined: Vec<u8> = frames[2..]
        .iter()
        .flat_map(|f| match f {
            AMQPFrame::Body(_, chunk) => chunk.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(joined, body);
}

#[test]
fn a_body_that_fills_whole_frames_has_no_empty_trailing_frame() {
    let body = vec![7u8; 4088 * 2];
    let mut out = BytesMut::new();
    assert_eq!(
        encode_content(
            1,
            &deliver(),
            &BasicProperties::default(),
            &body,
            4096,
            &mut out
        ),
        Ok(())
    );
    assert_eq!(decode_all(out, 4096).len(), 4);
}

#[test]
fn empty_content_has_no_body_frame() {
    let mut out = BytesMut::new();
    assert_eq!(
        encode_content(
            1,
            &deliver(),
            &BasicProperties::default(),
            &[],
            4096,
            &mut out
        ),
        Ok(())
    );
    let frames = decode_all(out, 4096);
    assert_eq!(frames.len(), 2);
    assert!(matches!(&frames[1], AMQPFrame::Header(1, h) if h.body_size == 0));
}

#[test]
fn without_frame_max_the_body_goes_in_one_frame() {
    let body = vec![1u8; 200_000];
    let mut out = BytesMut::new();
    assert_eq!(
        encode_content(
            1,
            &deliver(),
            &BasicProperties::default(),
            &body,
            0,
            &mut out
        ),
        Ok(())
    );
    let frames = decode_all(out, 0);
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[2], AMQPFrame::Body(1, body));
}

#[test]
fn a_content_header_too_large_for_one_frame_is_refused_and_nothing_written() {
    let mut headers = FieldTable::default();
    headers.insert("big".into(), AMQPValue::LongString(vec![b'x'; 5000].into()));
    let props = BasicProperties::default().with_headers(headers);
    let mut out = BytesMut::from(&b"earlier output"[..]);
    let result = encode_content(1, &deliver(), &props, b"body", 4096, &mut out);
    assert!(
        matches!(
            result,
            Err(CodecError::ContentHeaderTooLarge { max: 4096, .. })
        ),
        "{result:?}"
    );
    assert_eq!(&out[..], b"earlier output");
    // The same header fits a larger frame.
    assert_eq!(
        encode_content(1, &deliver(), &props, b"body", FRAME_MAX, &mut out),
        Ok(())
    );
}

/// xorshift64*: deterministic, dependency-free randomness for the garbling loops.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Decodes `input` to the end or the first error, checking the decoder's invariants: it never
/// panics, only ever consumes a decoded frame, and what it decodes re-encodes stably.
fn decode_and_check(input: &[u8], frame_max: u32) {
    let mut buf = BytesMut::from(input);
    loop {
        let before = buf.len();
        match decode_frame(&mut buf, frame_max) {
            Ok(Some(frame)) => {
                assert!(buf.len() < before, "a decoded frame must consume bytes");
                let once = encoded(&frame);
                let mut again = once.clone();
                let redecoded = decode_frame(&mut again, 0);
                assert!(again.is_empty(), "re-encoded {frame:?} left bytes over");
                let twice = redecoded.ok().flatten().map(|f| encoded(&f));
                assert_eq!(
                    twice.as_deref(),
                    Some(&once[..]),
                    "{frame:?} does not re-encode stably"
                );
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "waiting for more must not consume");
                break;
            }
            Err(_) => break,
        }
    }
    let mut buf = BytesMut::from(input);
    let _ = decode_header(&mut buf);
}

#[test]
fn random_bytes_never_panic_the_decoder() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..50_000 {
        let len = rng.below(64);
        let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Bias the first byte toward valid frame types so the payload parsers get exercised.
        if let Some(first) = input.first_mut() {
            *first = [1, 2, 3, 8, *first][rng.below(5)];
        }
        decode_and_check(&input, [0, FRAME_MIN_SIZE, FRAME_MAX][rng.below(3)]);
    }
}

#[test]
fn garbled_valid_frames_never_panic_the_decoder() {
    let frames = every_frame();
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for _ in 0..50_000 {
        let mut bytes = encoded(&frames[rng.below(frames.len())]).to_vec();
        for _ in 0..=rng.below(4) {
            match rng.below(4) {
                0 => {
                    let i = rng.below(bytes.len());
                    bytes[i] = rng.next() as u8;
                }
                1 => {
                    let i = rng.below(bytes.len());
                    bytes[i] ^= 1 << rng.below(8);
                }
                2 => {
                    let i = rng.below(bytes.len() + 1);
                    bytes.insert(i, rng.next() as u8);
                }
                _ => {
                    if bytes.len() > 1 {
                        let i = rng.below(bytes.len());
                        bytes.remove(i);
                    }
                }
            }
        }
        // Keep the declared size consistent half of the time so payload parsing runs.
        if rng.below(2) == 0 && bytes.len() >= 8 {
            let size = (bytes.len() - 8) as u32;
            bytes[3..7].copy_from_slice(&size.to_be_bytes());
            let last = bytes.len() - 1;
            bytes[last] = FRAME_END;
        }
        decode_and_check(&bytes, [0, FRAME_MIN_SIZE, FRAME_MAX][rng.below(3)]);
    }
}
