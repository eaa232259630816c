//! AMQP 0-9-1 framing: the protocol header, then frames in and frames out.
//!
//! Pure: bytes in, frames out, no I/O. The frame header is parsed here so that the size limit is
//! enforced before any payload is buffered; the payload is then handed to `amq-protocol`'s
//! parsers, whose failures are mapped onto the AMQP reply codes through [`CodecError`].

use std::io;

use amq_protocol::frame::parsing::parse_content_header;
use amq_protocol::frame::{AMQPFrame, BackToTheBuffer, GenError, GenResult, WriteContext};
use amq_protocol::protocol::basic::gen_properties;
use amq_protocol::protocol::{basic, gen_class, parse_class, AMQPClass, BasicProperties};
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::FieldTable;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The codec's errors are the crate's error type; this name reads better at codec call sites.
pub type CodecError = crate::error::AmqpError;

/// The protocol header a client opens with, and the one the server answers an unsupported
/// header with (AMQP 0-9-1 §4.2.2).
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// Frame type octets (AMQP 0-9-1 §4.2.3 and the `frame-*` constants).
pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
/// The octet that closes every frame (AMQP 0-9-1 constant `frame-end`).
pub const FRAME_END: u8 = 0xCE;

/// Type (1), channel (2) and payload size (4).
pub const FRAME_HEADER_SIZE: usize = 7;
/// Bytes a frame adds around its payload: the 7-byte header and the end octet. `frame-max`
/// counts them (AMQP 0-9-1 §4.2.3, connection.tune frame-max).
pub const FRAME_OVERHEAD: u32 = 8;
/// The smallest frame-max a peer may negotiate, and the limit that applies until tuning is
/// done (AMQP 0-9-1 constant `frame-min-size`).
pub const FRAME_MIN_SIZE: u32 = 4096;

/// Deepest nesting of field tables and arrays accepted in one frame (the outermost table counts
/// as one level).
///
/// The decoder recurses once per level, at a cost of roughly 32 KiB of stack per level, so
/// without a bound a frame of nested empty arrays (5 bytes a level) would overflow the 2 MiB
/// stack of a connection task, before authentication even. 16 levels stay under 600 KiB;
/// clients nest two or three (client-properties holding capabilities is two).
pub const MAX_NESTING: usize = 16;

/// Class id of `basic`, the only class with content in AMQP 0-9-1.
const BASIC_CLASS: u16 = 60;
/// The methods of the basic class that arrive once per message.
const BASIC_PUBLISH: u16 = 40;
const BASIC_ACK: u16 = 80;

/// The outcome of reading the protocol header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolHeader {
    /// `AMQP 0 0 9 1`: proceed with `connection.start`.
    Amqp091,
    /// Anything else, holding the bytes examined (at most 8). The server must write
    /// [`PROTOCOL_HEADER`] and close the socket (AMQP 0-9-1 §4.2.2).
    Unsupported(Bytes),
}

/// Reads the protocol header that opens every connection.
///
/// Returns `None` while the bytes so far are a prefix of [`PROTOCOL_HEADER`], and
/// `Unsupported` as soon as they cannot be one, without waiting for all 8 bytes. Consumes the
/// bytes it examined.
pub fn decode_header(buf: &mut BytesMut) -> Option<ProtocolHeader> {
    let n = buf.len().min(PROTOCOL_HEADER.len());
    if buf[..n] != PROTOCOL_HEADER[..n] {
        return Some(ProtocolHeader::Unsupported(buf.split_to(n).freeze()));
    }
    if n < PROTOCOL_HEADER.len() {
        return None;
    }
    buf.advance(n);
    Some(ProtocolHeader::Amqp091)
}

/// Decodes one frame from the front of `buf`.
///
/// `frame_max` is the negotiated maximum frame size including the 8 bytes of framing; 0 means
/// no limit (use [`FRAME_MIN_SIZE`] until `connection.tune-ok` has been received rather than
/// 0, so that an unauthenticated peer cannot make the server buffer 4 GiB).
///
/// Returns `Ok(None)` until the whole frame, end octet included, is buffered; the buffer is then
/// advanced past exactly that frame. Heartbeats decode as [`AMQPFrame::Heartbeat`]; this
/// function never yields `ProtocolHeader` or `InvalidHeartbeat` frames.
///
/// On error the connection must be closed with [`CodecError::reply_code`]. Errors that leave
/// the framing intact (unknown class or method, malformed arguments or content header) consume
/// the offending frame, so the caller may keep decoding while it waits for
/// `connection.close-ok`; framing errors leave the buffer untouched because nothing after them
/// can be trusted.
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<AMQPFrame>, CodecError> {
    let Some(&frame_type) = buf.first() else {
        return Ok(None);
    };
    // Rejected from the first octet so that garbage (an HTTP request, a TLS hello) fails fast.
    if !matches!(
        frame_type,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(CodecError::UnknownFrameType { frame_type });
    }
    if buf.len() < FRAME_HEADER_SIZE {
        return Ok(None);
    }
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);

    // AMQP 0-9-1 §4.2.3: a peer must not send frames larger than the negotiated frame-max;
    // checked from the header alone so an oversized frame is never buffered.
    if frame_max != 0 && u64::from(size) + u64::from(FRAME_OVERHEAD) > u64::from(frame_max) {
        return Err(CodecError::FrameTooLarge {
            size,
            max: frame_max,
        });
    }
    // AMQP 0-9-1 §4.2.7: heartbeat frames have channel zero and no payload; anything else is
    // an invalid heartbeat, answered with frame-error.
    if frame_type == FRAME_HEARTBEAT && (channel != 0 || size != 0) {
        return Err(CodecError::BadHeartbeat { channel, size });
    }

    let Some(total) = usize::try_from(size)
        .ok()
        .and_then(|s| s.checked_add(FRAME_OVERHEAD as usize))
    else {
        return Err(CodecError::FrameTooLarge {
            size,
            max: frame_max,
        });
    };
    if buf.len() < total {
        // No room is made for the announced rest: memory follows the bytes that arrive (the
        // reader grows the buffer as they do), so seven header bytes on each of many
        // connections cannot hold a frame-max of memory apiece.
        return Ok(None);
    }
    let end = buf[total - 1];
    if end != FRAME_END {
        return Err(CodecError::BadFrameEnd { found: end });
    }

    let payload = &buf[FRAME_HEADER_SIZE..total - 1];
    let frame = match frame_type {
        FRAME_METHOD => decode_method(channel, payload),
        FRAME_HEADER => decode_content_header(channel, payload),
        FRAME_BODY => Ok(AMQPFrame::Body(channel, payload.to_vec())),
        _ => Ok(AMQPFrame::Heartbeat),
    };
    buf.advance(total);
    frame.map(Some)
}

fn decode_method(channel: u16, payload: &[u8]) -> Result<AMQPFrame, CodecError> {
    let (class_id, method_id) = match *payload {
        [c0, c1, m0, m1, ..] => (u16::from_be_bytes([c0, c1]), u16::from_be_bytes([m0, m1])),
        [c0, c1, ..] => {
            let class_id = u16::from_be_bytes([c0, c1]);
            return Err(CodecError::Syntax {
                class_id,
                method_id: 0,
                reason: "method frame too short",
            });
        }
        _ => {
            return Err(CodecError::Syntax {
                class_id: 0,
                method_id: 0,
                reason: "method frame too short",
            })
        }
    };
    if !is_known_class(class_id) {
        return Err(CodecError::UnknownClass { class_id });
    }
    if !is_known_method(class_id, method_id) {
        return Err(CodecError::UnknownMethod {
            class_id,
            method_id,
        });
    }
    if let Some(class) = decode_per_message(class_id, method_id, &payload[4..]) {
        return Ok(AMQPFrame::Method(channel, class));
    }
    let syntax = |reason| CodecError::Syntax {
        class_id,
        method_id,
        reason,
    };
    if let Some(prefix) = table_prefix(class_id, method_id) {
        if !nesting_within_limit(prefix, &payload[4..]) {
            return Err(syntax("field tables nested too deeply"));
        }
    }
    match parse_class(payload) {
        Ok(([], class)) => Ok(AMQPFrame::Method(channel, class)),
        Ok(_) => Err(syntax("trailing bytes after the method arguments")),
        Err(_) => Err(syntax("truncated or malformed method arguments")),
    }
}

/// `basic.publish` and `basic.ack`, which arrive once per message, decoded as `amq-protocol`
/// decodes them but without the allocations its flag parsing makes. `None` for anything but
/// well-formed arguments, which the caller hands to the generic parser for its verdict.
fn decode_per_message(class_id: u16, method_id: u16, args: &[u8]) -> Option<AMQPClass> {
    let method = match (class_id, method_id) {
        (BASIC_CLASS, BASIC_PUBLISH) => {
            // reserved-1, exchange, routing-key, then the bits mandatory and immediate.
            let (_, rest) = args.split_first_chunk::<2>()?;
            let (exchange, rest) = short_str(rest)?;
            let (routing_key, rest) = short_str(rest)?;
            let [bits] = *rest else { return None };
            basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                mandatory: bits & 1 != 0,
                immediate: bits & 2 != 0,
            })
        }
        (BASIC_CLASS, BASIC_ACK) => {
            // delivery-tag, then the bit multiple.
            let (tag, rest) = args.split_first_chunk::<8>()?;
            let [bits] = *rest else { return None };
            basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: u64::from_be_bytes(*tag),
                multiple: bits & 1 != 0,
            })
        }
        _ => return None,
    };
    Some(AMQPClass::Basic(method))
}

/// A short string's text off the front of `input`, if it is there whole and UTF-8.
fn short_str(input: &[u8]) -> Option<(&str, &[u8])> {
    let (&len, rest) = input.split_first()?;
    let (text, rest) = rest.split_at_checked(usize::from(len))?;
    Some((std::str::from_utf8(text).ok()?, rest))
}

fn decode_content_header(channel: u16, payload: &[u8]) -> Result<AMQPFrame, CodecError> {
    // class-id (2), weight (2), body-size (8), then property flags and the properties, of which
    // content-type and content-encoding (short strings) precede the headers table.
    if let Some((flags, props)) = payload.get(12..).and_then(<[u8]>::split_first_chunk::<2>) {
        let flags = u16::from_be_bytes(*flags);
        let before_headers: &[Skip] = match (flags & 1 << 15 != 0, flags & 1 << 14 != 0) {
            (true, true) => &[Skip::ShortStr, Skip::ShortStr],
            (true, false) | (false, true) => &[Skip::ShortStr],
            (false, false) => &[],
        };
        if flags & 1 << 13 != 0 && !nesting_within_limit(before_headers, props) {
            return Err(CodecError::BadContentHeader {
                reason: "headers nested too deeply",
            });
        }
    }
    match parse_content_header(payload) {
        Ok(([], header)) => Ok(AMQPFrame::Header(channel, header)),
        Ok(_) => Err(CodecError::BadContentHeader {
            reason: "trailing bytes after the properties",
        }),
        Err(_) => Err(CodecError::BadContentHeader {
            reason: "truncated or malformed properties",
        }),
    }
}

/// Classes `amq-protocol` can decode (AMQP 0-9-1 plus RabbitMQ's `confirm`).
fn is_known_class(class_id: u16) -> bool {
    matches!(class_id, 10 | 20 | 30 | 40 | 50 | 60 | 85 | 90)
}

/// Methods `amq-protocol` can decode, per class, as listed in the AMQP 0-9-1 specification
/// (with RabbitMQ's extensions: exchange.bind/unbind, basic.nack, connection.blocked/unblocked
/// and update-secret, confirm).
fn is_known_method(class_id: u16, method_id: u16) -> bool {
    let methods: &[u16] = match class_id {
        10 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70, 71],
        20 => &[10, 11, 20, 21, 40, 41],
        30 => &[10, 11],
        40 => &[10, 11, 20, 21, 30, 31, 40, 51],
        50 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51],
        60 => &[
            10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
        ],
        85 => &[10, 11],
        90 => &[10, 11, 20, 21, 30, 31],
        _ => &[],
    };
    methods.contains(&method_id)
}

/// A field to step over on the way to a method's field table.
#[derive(Debug, Clone, Copy)]
enum Skip {
    /// A fixed number of octets (integers, packed bits).
    Fixed(usize),
    /// A short string: one length octet and that many bytes.
    ShortStr,
}

/// For the methods that carry a field table, the arguments that precede it (after the class
/// and method ids), following the AMQP 0-9-1 method definitions.
fn table_prefix(class_id: u16, method_id: u16) -> Option<&'static [Skip]> {
    use Skip::{Fixed, ShortStr};
    Some(match (class_id, method_id) {
        // connection.start: version-major, version-minor, server-properties
        (10, 10) => &[Fixed(2)],
        // connection.start-ok: client-properties first
        (10, 11) => &[],
        // exchange.declare: reserved-1, exchange, type, 5 bits, arguments
        (40, 10) => &[Fixed(2), ShortStr, ShortStr, Fixed(1)],
        // exchange.bind / exchange.unbind: reserved-1, destination, source, routing-key, no-wait
        // queue.bind: reserved-1, queue, exchange, routing-key, no-wait
        (40, 30) | (40, 40) | (50, 20) => &[Fixed(2), ShortStr, ShortStr, ShortStr, Fixed(1)],
        // queue.declare: reserved-1, queue, 5 bits, arguments
        (50, 10) => &[Fixed(2), ShortStr, Fixed(1)],
        // queue.unbind: reserved-1, queue, exchange, routing-key, arguments (no bits)
        (50, 50) => &[Fixed(2), ShortStr, ShortStr, ShortStr],
        // basic.consume: reserved-1, queue, consumer-tag, 4 bits, arguments
        (60, 20) => &[Fixed(2), ShortStr, ShortStr, Fixed(1)],
        _ => return None,
    })
}

/// Steps over `fields` at the front of `input`; `None` if `input` is too short.
fn skip_all<'a>(fields: &[Skip], mut input: &'a [u8]) -> Option<&'a [u8]> {
    for field in fields {
        let n = match *field {
            Skip::Fixed(n) => n,
            Skip::ShortStr => 1 + usize::from(*input.first()?),
        };
        input = input.get(n..)?;
    }
    Some(input)
}

/// Splits a long-length-prefixed block (field table, array, long string) off the front.
fn take_long_prefixed<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = input.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    let block = rest.get(..len)?;
    *input = &rest[len..];
    Some(block)
}

/// Whether the field table found after `prefix` in `input` nests tables and arrays at most
/// [`MAX_NESTING`] deep.
///
/// A pre-flight walk without recursion, so that the recursive parser only ever sees bounded
/// nesting. It mirrors the type tags `amq-protocol` accepts (RabbitMQ's: `s` is a short int,
/// `x` a byte array). Malformed input yields `true`: the real parser will reject it, and this
/// walk only has to find excessive depth.
fn nesting_within_limit(prefix: &[Skip], input: &[u8]) -> bool {
    let Some(mut rest) = skip_all(prefix, input) else {
        return true;
    };
    let Some(table) = take_long_prefixed(&mut rest) else {
        return true;
    };
    // Each open container: its unread bytes and whether its entries carry names (tables) or
    // not (arrays).
    let mut open: Vec<(&[u8], bool)> = vec![(table, true)];
    while let Some((data, is_table)) = open.last_mut() {
        if data.is_empty() {
            open.pop();
            continue;
        }
        if *is_table {
            let Some(after_name) = skip_all(&[Skip::ShortStr], data) else {
                return true;
            };
            *data = after_name;
        }
        let Some((&tag, after_tag)) = data.split_first() else {
            return true;
        };
        *data = after_tag;
        let width = match tag {
            b't' | b'b' | b'B' => 1,
            b's' | b'u' | b'U' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'V' => 0,
            b'S' | b'x' => {
                if take_long_prefixed(data).is_none() {
                    return true;
                }
                0
            }
            b'F' | b'A' => {
                let Some(inner) = take_long_prefixed(data) else {
                    return true;
                };
                if open.len() >= MAX_NESTING {
                    return false;
                }
                open.push((inner, tag == b'F'));
                continue;
            }
            _ => return true,
        };
        let Some(after_value) = data.get(width..) else {
            return true;
        };
        *data = after_value;
    }
    true
}

/// Appends one frame to `out`.
///
/// Encoding into memory cannot fail for frames built from `amq-protocol` types; a body larger
/// than 4 GiB, which a single frame cannot carry, is written as several body frames.
pub fn encode_frame(frame: &AMQPFrame, out: &mut BytesMut) {
    match frame {
        AMQPFrame::ProtocolHeader(version) => {
            out.put_slice(b"AMQP\x00");
            out.put_slice(&[version.major, version.minor, version.revision]);
        }
        AMQPFrame::Method(channel, method) => encode_method(*channel, method, out),
        AMQPFrame::Header(channel, header) => {
            encode_content_header(
                *channel,
                header.class_id,
                header.body_size,
                gen_amqp_properties(&header.properties),
                out,
            );
        }
        AMQPFrame::Body(channel, body) if body.is_empty() => encode_body_frame(*channel, body, out),
        AMQPFrame::Body(channel, body) => encode_body(*channel, body, u32::MAX as usize, out),
        AMQPFrame::Heartbeat => encode_heartbeat(0, out),
        // Never produced by the decoder; written as is so tests can provoke the error.
        AMQPFrame::InvalidHeartbeat(channel) => encode_heartbeat(*channel, out),
    }
}

/// Appends a content-carrying method (`basic.publish`, `basic.deliver`, `basic.get-ok`,
/// `basic.return`) with its content header and body, the body split into frames that fit
/// `frame_max` (AMQP 0-9-1 §4.2.6). An empty body has no body frames.
///
/// `frame_max` as in [`decode_frame`]; values below [`FRAME_MIN_SIZE`] other than 0 are raised to
/// it, since no peer may negotiate less. Fails, leaving `out` as it was, if the content header
/// (which cannot be split) does not fit one frame.
pub fn encode_content(
    channel: u16,
    method: &AMQPClass,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: u32,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    encode_content_parts(
        channel,
        |out| {
            encode_method(channel, method, out);
            Ok(())
        },
        gen_amqp_properties(properties),
        body,
        frame_max,
        out,
    )
}

/// A content method the server sends once per message, its fields borrowed from the message
/// and the consumer: written straight to the output, where amq-protocol's values would copy
/// every name into an owned string first.
#[derive(Debug, Clone, Copy)]
pub enum ServerContent<'a> {
    /// `basic.deliver` (60, 60).
    Deliver {
        consumer_tag: &'a str,
        delivery_tag: u64,
        redelivered: bool,
        exchange: &'a str,
        routing_key: &'a str,
    },
    /// `basic.get-ok` (60, 71).
    GetOk {
        delivery_tag: u64,
        redelivered: bool,
        exchange: &'a str,
        routing_key: &'a str,
        message_count: u32,
    },
}

/// Appends `method` with a content header whose properties `properties` writes (flags, then
/// the fields they announce: see [`put_short_string`] and [`put_field_table`]) and the body,
/// framed as [`encode_content`] does. Fails, leaving `out` as it was, when a name is longer
/// than a short string or the content header does not fit one frame.
pub fn encode_server_content(
    channel: u16,
    method: ServerContent<'_>,
    properties: impl FnOnce(&mut BytesMut) -> Result<(), GenError>,
    body: &[u8],
    frame_max: u32,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    encode_content_parts(
        channel,
        |out| {
            let start = begin_frame(FRAME_METHOD, channel, out);
            put_server_content(method, out).map_err(|e| match e {
                GenError::BufferTooBig(len) => CodecError::NameTooLong { len },
                // Writing to memory fails in no other way.
                _ => CodecError::NameTooLong { len: 0 },
            })?;
            finish_frame(start, Ok(()), out);
            Ok(())
        },
        properties,
        body,
        frame_max,
        out,
    )
}

fn put_server_content(method: ServerContent<'_>, out: &mut BytesMut) -> Result<(), GenError> {
    out.put_u16(BASIC_CLASS);
    match method {
        ServerContent::Deliver {
            consumer_tag,
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
        } => {
            out.put_u16(60);
            put_short_string(out, consumer_tag)?;
            out.put_u64(delivery_tag);
            out.put_u8(u8::from(redelivered));
            put_short_string(out, exchange)?;
            put_short_string(out, routing_key)
        }
        ServerContent::GetOk {
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            message_count,
        } => {
            out.put_u16(71);
            out.put_u64(delivery_tag);
            out.put_u8(u8::from(redelivered));
            put_short_string(out, exchange)?;
            put_short_string(out, routing_key)?;
            out.put_u32(message_count);
            Ok(())
        }
    }
}

/// Appends an AMQP short string: a length octet and at most 255 bytes.
pub fn put_short_string(out: &mut BytesMut, value: &str) -> Result<(), GenError> {
    let len = u8::try_from(value.len()).map_err(|_| GenError::BufferTooBig(value.len()))?;
    out.put_u8(len);
    out.put_slice(value.as_bytes());
    Ok(())
}

/// Appends a field table, length-prefixed.
pub fn put_field_table(out: &mut BytesMut, table: &FieldTable) -> Result<(), GenError> {
    gen_field_table(table)(WriteContext::from(Sink::Out(out))).map(drop)
}

/// The framing every content method shares: method frame (written whole by `method`), content
/// header frame, body frames. On failure `out` is left as it was.
fn encode_content_parts(
    channel: u16,
    method: impl FnOnce(&mut BytesMut) -> Result<(), CodecError>,
    properties: impl FnOnce(&mut BytesMut) -> Result<(), GenError>,
    body: &[u8],
    frame_max: u32,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    let max_frame = if frame_max == 0 {
        u64::from(u32::MAX) + u64::from(FRAME_OVERHEAD)
    } else {
        u64::from(frame_max.max(FRAME_MIN_SIZE))
    };
    let max_payload = usize::try_from(max_frame - u64::from(FRAME_OVERHEAD)).unwrap_or(usize::MAX);
    let start = out.len();
    let body_frames = body.len().div_ceil(max_payload);
    // Method and header are small; reserve them a guess and the body exactly.
    out.reserve(256 + body.len() + body_frames * FRAME_OVERHEAD as usize);

    if let Err(e) = method(out) {
        out.truncate(start);
        return Err(e);
    }
    let header_start = out.len();
    encode_content_header(channel, BASIC_CLASS, body.len() as u64, properties, out);
    let header_size = out.len() - header_start;
    if header_size as u64 > max_frame {
        out.truncate(start);
        return Err(CodecError::ContentHeaderTooLarge {
            size: header_size,
            max: frame_max,
        });
    }
    encode_body(channel, body, max_payload, out);
    Ok(())
}

fn encode_method(channel: u16, method: &AMQPClass, out: &mut BytesMut) {
    let start = begin_frame(FRAME_METHOD, channel, out);
    let generated = gen_class(method)(WriteContext::from(Sink::Out(&mut *out))).map(drop);
    finish_frame(start, generated, out);
}

/// Writes a content header frame whose properties (flags and fields) `properties` writes.
fn encode_content_header(
    channel: u16,
    class_id: u16,
    body_size: u64,
    properties: impl FnOnce(&mut BytesMut) -> Result<(), GenError>,
    out: &mut BytesMut,
) {
    let start = begin_frame(FRAME_HEADER, channel, out);
    // class-id, weight (always 0, AMQP 0-9-1 §4.2.6.1), body-size, then the properties.
    out.put_u16(class_id);
    out.put_u16(0);
    out.put_u64(body_size);
    let generated = properties(out);
    finish_frame(start, generated, out);
}

fn gen_amqp_properties(
    properties: &BasicProperties,
) -> impl FnOnce(&mut BytesMut) -> Result<(), GenError> + '_ {
    |out| gen_properties(properties)(WriteContext::from(Sink::Out(out))).map(drop)
}

/// Writes `body` as body frames of at most `max_payload` bytes each, copying it once; an empty
/// body yields no frame.
fn encode_body(channel: u16, body: &[u8], max_payload: usize, out: &mut BytesMut) {
    for chunk in body.chunks(max_payload.clamp(1, u32::MAX as usize)) {
        encode_body_frame(channel, chunk, out);
    }
}

/// Writes one body frame; `chunk` is at most 4 GiB (callers split with [`encode_body`]).
fn encode_body_frame(channel: u16, chunk: &[u8], out: &mut BytesMut) {
    out.put_u8(FRAME_BODY);
    out.put_u16(channel);
    out.put_u32(chunk.len() as u32);
    out.put_slice(chunk);
    out.put_u8(FRAME_END);
}

fn encode_heartbeat(channel: u16, out: &mut BytesMut) {
    out.put_u8(FRAME_HEARTBEAT);
    out.put_u16(channel);
    out.put_u32(0);
    out.put_u8(FRAME_END);
}

/// Writes a frame header with a zero size, to be patched by [`finish_frame`]; returns where the
/// frame starts.
fn begin_frame(frame_type: u8, channel: u16, out: &mut BytesMut) -> usize {
    let start = out.len();
    out.put_u8(frame_type);
    out.put_u16(channel);
    out.put_u32(0);
    start
}

/// Patches the payload size into the frame begun at `start` and closes it.
fn finish_frame(start: usize, generated: Result<(), GenError>, out: &mut BytesMut) {
    let payload_start = start + FRAME_HEADER_SIZE;
    let size = out.len() - payload_start;
    match (generated, u32::try_from(size)) {
        (Ok(()), Ok(size)) => {
            out[start + 3..payload_start].copy_from_slice(&size.to_be_bytes());
            out.put_u8(FRAME_END);
        }
        (generated, _) => {
            // Unreachable in practice: writing to memory cannot fail and no amq-protocol value
            // reaches 4 GiB. Drop the partial frame rather than emit a corrupt stream.
            let frame_type = out[start];
            out.truncate(start);
            tracing::error!(frame_type, size, error = ?generated.err(), "failed to encode an AMQP frame");
        }
    }
}

/// The `Write` target handed to `amq-protocol`'s generators: the output buffer itself, or a
/// small scratch area for the length prefixes they write after the fact (field tables and
/// arrays are preceded by their size).
enum Sink<'a> {
    Out(&'a mut BytesMut),
    Prefix { bytes: [u8; 8], len: usize },
}

impl io::Write for Sink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Out(out) => {
                out.extend_from_slice(data);
                Ok(data.len())
            }
            Sink::Prefix { bytes, len } => {
                let n = data.len().min(bytes.len() - *len);
                bytes[*len..*len + n].copy_from_slice(&data[..n]);
                *len += n;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BackToTheBuffer for Sink<'_> {
    /// Reserves `reserved` bytes, runs `gen` after them, then lets `before` fill them in (with
    /// the length `gen` produced).
    fn reserve_write_use<
        Tmp,
        Gen: Fn(WriteContext<Self>) -> Result<(WriteContext<Self>, Tmp), GenError>,
        Before: Fn(WriteContext<Self>, Tmp) -> GenResult<Self>,
    >(
        s: WriteContext<Self>,
        reserved: usize,
        gen: &Gen,
        before: &Before,
    ) -> Result<WriteContext<Self>, GenError> {
        let WriteContext { write, position } = s;
        let Sink::Out(out) = write else {
            // Prefixes are plain integers; they never contain a length-prefixed block.
            return Err(GenError::InvalidOffset);
        };
        let slot = out.len();
        out.put_bytes(0, reserved);
        let (after, tmp) = gen(WriteContext {
            write: Sink::Out(out),
            position: position + reserved as u64,
        })?;
        let prefix = before(
            WriteContext {
                write: Sink::Prefix {
                    bytes: [0; 8],
                    len: 0,
                },
                position,
            },
            tmp,
        )?;
        let (Sink::Out(out), Sink::Prefix { bytes, len }) = (after.write, prefix.write) else {
            return Err(GenError::InvalidOffset);
        };
        if len != reserved {
            return Err(GenError::BufferTooBig(reserved.abs_diff(len)));
        }
        out[slot..slot + reserved].copy_from_slice(&bytes[..reserved]);
        Ok(WriteContext {
            write: Sink::Out(out),
            position: after.position,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_arrays(depth: usize) -> Vec<u8> {
        // An array containing an array containing ... an empty array: each level is the tag and
        // the length of the levels inside it.
        let mut value = Vec::with_capacity(depth * 5);
        for level in 1..=depth {
            value.push(b'A');
            value.extend_from_slice(&(((depth - level) * 5) as u32).to_be_bytes());
        }
        value
    }

    /// A field table holding one entry `k` whose value is `depth` nested arrays.
    fn table_with_depth(depth: usize) -> Vec<u8> {
        let mut entry = vec![1, b'k'];
        entry.extend_from_slice(&nested_arrays(depth));
        let mut table = (entry.len() as u32).to_be_bytes().to_vec();
        table.extend_from_slice(&entry);
        table
    }

    #[test]
    fn nesting_walk_counts_the_outer_table_as_one_level() {
        // The outer table plus MAX_NESTING - 1 arrays is exactly the limit.
        assert!(nesting_within_limit(
            &[],
            &table_with_depth(MAX_NESTING - 1)
        ));
        assert!(!nesting_within_limit(&[], &table_with_depth(MAX_NESTING)));
    }

    #[test]
    fn nesting_walk_steps_over_every_scalar_type() {
        let mut entries = Vec::new();
        for (tag, width) in [
            (b't', 1),
            (b'b', 1),
            (b'B', 1),
            (b's', 2),
            (b'u', 2),
            (b'U', 2),
            (b'I', 4),
            (b'i', 4),
            (b'f', 4),
            (b'D', 5),
            (b'l', 8),
            (b'L', 8),
            (b'd', 8),
            (b'T', 8),
            (b'V', 0),
        ] {
            entries.extend_from_slice(&[1, b'k', tag]);
            entries.extend(std::iter::repeat_n(b'A', width));
        }
        for tag in [b'S', b'x'] {
            entries.extend_from_slice(&[1, b'k', tag, 0, 0, 0, 2, b'F', b'F']);
        }
        entries.extend_from_slice(&[1, b'k']);
        entries.extend_from_slice(&nested_arrays(MAX_NESTING));
        let mut table = (entries.len() as u32).to_be_bytes().to_vec();
        table.extend_from_slice(&entries);
        // Only the nested arrays at the end count, and they are one level too deep.
        assert!(!nesting_within_limit(&[], &table));
    }

    #[test]
    fn deeply_nested_client_properties_are_rejected_without_recursing() {
        let depth = 200_000;
        let mut payload = vec![0, 10, 0, 11];
        payload.extend_from_slice(&table_with_depth(depth));
        payload.extend_from_slice(b"\x05PLAIN\x00\x00\x00\x00\x05en_US");
        let mut frame = BytesMut::new();
        frame.put_u8(FRAME_METHOD);
        frame.put_u16(0);
        frame.put_u32(payload.len() as u32);
        frame.put_slice(&payload);
        frame.put_u8(FRAME_END);
        assert_eq!(
            decode_frame(&mut frame, 0),
            Err(CodecError::Syntax {
                class_id: 10,
                method_id: 11,
                reason: "field tables nested too deeply"
            })
        );
    }

    #[test]
    fn the_parser_survives_the_deepest_nesting_allowed_on_a_small_stack() {
        let mut payload = vec![0, 10, 0, 11];
        payload.extend_from_slice(&table_with_depth(MAX_NESTING - 1));
        payload.extend_from_slice(b"\x05PLAIN\x00\x00\x00\x00\x05en_US");
        let mut frame = BytesMut::new();
        frame.put_u8(FRAME_METHOD);
        frame.put_u16(0);
        frame.put_u32(payload.len() as u32);
        frame.put_slice(&payload);
        frame.put_u8(FRAME_END);
        // Half the default thread (and tokio worker) stack.
        let decoded = std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(move || decode_frame(&mut frame, 0))
            .map(|handle| handle.join());
        assert!(matches!(decoded, Ok(Ok(Ok(Some(AMQPFrame::Method(0, _)))))));
    }

    #[test]
    fn known_methods_match_what_the_parser_decodes() {
        // Every method id listed as known parses (given enough zeroed argument bytes), and the
        // ids next to them do not.
        for class_id in [10u16, 20, 30, 40, 50, 60, 85, 90] {
            for method_id in 0..=200u16 {
                let mut payload = class_id.to_be_bytes().to_vec();
                payload.extend_from_slice(&method_id.to_be_bytes());
                payload.extend_from_slice(&[0; 64]);
                let parsed = parse_class(&payload[..]).is_ok();
                assert_eq!(
                    parsed,
                    is_known_method(class_id, method_id),
                    "{class_id}.{method_id}"
                );
            }
        }
    }

    #[test]
    fn publish_and_ack_decode_as_the_generic_parser_decodes_them() {
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for bits in 0..=255u8 {
            cases.push([&[0, 60, 0, 40, 0, 0, 1, b'x', 2, b'r', b'k'][..], &[bits]].concat());
            cases.push([&[0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 1, 2][..], &[bits]].concat());
        }
        // Truncated, trailing bytes, not UTF-8, the longest names.
        let long = [
            &[0, 60, 0, 40, 0, 0, 255][..],
            &[b'e'; 255],
            &[255],
            &[b'k'; 255],
            &[3],
        ];
        cases.push(long.concat());
        cases.push(vec![0, 60, 0, 40, 0, 0, 0, 0]);
        cases.push(vec![0, 60, 0, 40, 0, 0, 0, 0, 0, 0]);
        cases.push(vec![0, 60, 0, 40, 0, 0, 1, 0xff, 0, 0]);
        cases.push(vec![0, 60, 0, 40, 0, 0, 2, b'x']);
        cases.push(vec![0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1]);
        cases.push(vec![0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
        for payload in cases {
            let fast = decode_per_message(60, payload[3].into(), &payload[4..]);
            let generic = match parse_class(&payload[..]) {
                Ok(([], class)) => Some(class),
                _ => None,
            };
            assert_eq!(fast, generic, "{payload:?}");
        }
    }

    #[test]
    fn prefix_sink_refuses_more_than_it_holds() {
        let mut sink = Sink::Prefix {
            bytes: [0; 8],
            len: 6,
        };
        assert_eq!(io::Write::write(&mut sink, &[1, 2, 3]).ok(), Some(2));
        assert_eq!(io::Write::write(&mut sink, &[4]).ok(), Some(0));
    }
}
