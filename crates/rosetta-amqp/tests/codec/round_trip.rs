//! Encode then decode, whole and split at every byte; the protocol header.

use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame, ProtocolVersion, WriteContext};
use bytes::{BufMut, BytesMut};
use rosetta_amqp::codec::{
    decode_frame, decode_header, encode_frame, ProtocolHeader, PROTOCOL_HEADER,
};

use crate::frames::{client_methods, content_frames, every_frame, server_methods};
use crate::{encoded, FRAME_MAX};

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
