//! Codec tests: round trips of every method the broker receives or sends, frames split at every
//! byte, size limits checked from the header, malformed input of every kind, and content
//! splitting.

mod content;
mod frames;
mod garbled;
mod malformed;
mod round_trip;

use amq_protocol::frame::AMQPFrame;
use bytes::{BufMut, BytesMut};
use rosetta_amqp::codec::{decode_frame, encode_frame, FRAME_END};

/// The frame-max most tests decode with (RabbitMQ's default).
pub(crate) const FRAME_MAX: u32 = 131_072;

pub(crate) fn encoded(frame: &AMQPFrame) -> BytesMut {
    let mut out = BytesMut::new();
    encode_frame(frame, &mut out);
    out
}

/// A frame of `frame_type` on `channel` with `payload`, correctly framed.
pub(crate) fn raw_frame(frame_type: u8, channel: u16, payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u8(frame_type);
    buf.put_u16(channel);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    buf.put_u8(FRAME_END);
    buf
}

/// Decodes everything in `buf`, checking each frame fits `frame_max`.
pub(crate) fn decode_all(mut buf: BytesMut, frame_max: u32) -> Vec<AMQPFrame> {
    let mut frames = Vec::new();
    while !buf.is_empty() {
        match decode_frame(&mut buf, frame_max) {
            Ok(Some(frame)) => frames.push(frame),
            other => panic!("{other:?} with {} bytes left", buf.len()),
        }
    }
    frames
}
