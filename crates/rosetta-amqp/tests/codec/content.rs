//! A content-carrying method with its header and body split at frame-max.

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, AMQPClass, BasicProperties};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::BytesMut;
use rosetta_amqp::codec::{encode_content, CodecError};

use crate::frames::all_properties;
use crate::{decode_all, FRAME_MAX};

fn deliver() -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
        consumer_tag: "ctag".into(),
        delivery_tag: 1,
        redelivered: false,
        exchange: "x".into(),
        routing_key: "k".into(),
    }))
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
