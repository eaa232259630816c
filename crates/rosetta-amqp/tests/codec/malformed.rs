//! Oversized, garbled and malformed frames: the right error, never a panic.

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic, connection, exchange, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::{BufMut, BytesMut};
use rosetta_amqp::codec::{decode_frame, CodecError, FRAME_MIN_SIZE, MAX_NESTING, PROTOCOL_HEADER};

use crate::frames::{client_methods, content_frames, every_frame, server_methods};
use crate::{encoded, raw_frame, FRAME_MAX};

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
