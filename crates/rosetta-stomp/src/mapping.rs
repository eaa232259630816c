//! STOMP headers <-> the core's neutral message properties, following RabbitMQ's STOMP plugin
//! (docs/protocols.md holds the full table).
//!
//! On SEND, the headers below set properties; every other header the client sends (except the
//! frame-level ones) becomes a custom header in the properties' header table, as a string.
//! On MESSAGE, properties become the same headers again, and custom headers whose values can be
//! written as text follow.

use rosetta_core::{Message, Properties, Table, Value};

use crate::codec::FrameWriter;
use crate::destination::NAME_MAX;
use crate::error::StompError;
use crate::frame::Frame;

/// Headers that belong to the frame, not the message: never copied into the header table.
const FRAME_HEADERS: [&str; 4] = ["destination", "content-length", "receipt", "transaction"];

/// Headers that set a property on SEND.
const PROPERTY_HEADERS: [&str; 13] = [
    "content-type",
    "content-encoding",
    "persistent",
    "priority",
    "correlation-id",
    "reply-to",
    "expiration",
    "expires",
    "amqp-message-id",
    "timestamp",
    "type",
    "user-id",
    "app-id",
];

fn invalid(header: &'static str, reason: impl Into<String>) -> StompError {
    StompError::InvalidHeader {
        header,
        reason: reason.into(),
    }
}

fn number<T: std::str::FromStr>(
    frame: &Frame,
    header: &'static str,
) -> Result<Option<T>, StompError> {
    frame
        .get(header)
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|_| invalid(header, format!("'{v}' is not a valid number")))
        })
        .transpose()
}

/// A boolean header (`persistent`, `durable`, `requeue`, …): `Some(true)` or `Some(false)` for
/// `true` or `false` in any case, `None` when absent or anything else. RabbitMQ's STOMP plugin
/// reads them so because some clients (Python ones writing `True`, say) capitalise them.
pub fn boolean(frame: &Frame, header: &str) -> Option<bool> {
    let value = frame.get(header)?;
    if value.eq_ignore_ascii_case("true") {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Properties for a SEND frame. `now_ms` turns an absolute `expires` into a TTL.
pub fn properties_from_send(frame: &Frame, now_ms: u64) -> Result<Properties, StompError> {
    let text = |name: &str| frame.get(name).map(str::to_owned);
    // RabbitMQ: `persistent:true` means delivery mode 2; anything else is transient.
    let delivery_mode = match (frame.get("persistent"), boolean(frame, "persistent")) {
        (_, Some(true)) => Some(2),
        (Some(_), _) => Some(1),
        (None, _) => None,
    };
    // `expiration` is RabbitMQ's relative TTL in ms; `expires` is the absolute time in ms since
    // the epoch that other brokers use, 0 meaning never. The core keeps a relative TTL.
    let expiration = match (
        number::<u64>(frame, "expiration")?,
        number::<u64>(frame, "expires")?,
    ) {
        (Some(ttl), _) => Some(ttl.to_string()),
        (None, Some(0)) | (None, None) => None,
        (None, Some(at)) => Some(at.saturating_sub(now_ms).to_string()),
    };
    let mut headers = Table::new();
    for (name, value) in &frame.headers {
        if FRAME_HEADERS.contains(&name.as_str()) || PROPERTY_HEADERS.contains(&name.as_str()) {
            continue;
        }
        // An AMQP field table's keys are short strings (AMQP 0-9-1 §4.2.5.3).
        if name.len() > NAME_MAX {
            return Err(invalid(
                "headers",
                format!(
                    "a header name of {} bytes is longer than 255 bytes",
                    name.len()
                ),
            ));
        }
        headers.insert(name.clone(), Value::Str(value.clone()));
    }
    Ok(Properties {
        content_type: text("content-type"),
        content_encoding: text("content-encoding"),
        headers: (!headers.is_empty()).then_some(headers),
        delivery_mode,
        priority: number::<u8>(frame, "priority")?,
        correlation_id: text("correlation-id"),
        reply_to: text("reply-to"),
        expiration,
        // RabbitMQ names the AMQP message id `amqp-message-id`, because a MESSAGE frame's
        // `message-id` is the server's delivery identifier (a SEND may not carry one at all).
        message_id: text("amqp-message-id"),
        timestamp: number::<u64>(frame, "timestamp")?,
        kind: text("type"),
        user_id: text("user-id"),
        app_id: text("app-id"),
        cluster_id: None,
    })
}

/// Refuses properties an AMQP consumer could not be given: AMQP 0-9-1 carries these as short
/// strings (§4.2.5.3, at most 255 bytes). Checked on the properties as they will be published,
/// after a temporary `reply-to` has been replaced by its queue.
pub fn check_short_strings(properties: &Properties) -> Result<(), StompError> {
    let p = properties;
    for (header, value) in [
        ("content-type", &p.content_type),
        ("content-encoding", &p.content_encoding),
        ("correlation-id", &p.correlation_id),
        ("reply-to", &p.reply_to),
        ("amqp-message-id", &p.message_id),
        ("type", &p.kind),
        ("user-id", &p.user_id),
        ("app-id", &p.app_id),
    ] {
        if let Some(v) = value.as_deref().filter(|v| v.len() > NAME_MAX) {
            return Err(invalid(
                header,
                format!("{} bytes is longer than 255 bytes", v.len()),
            ));
        }
    }
    Ok(())
}

/// Headers that RabbitMQ's plugin turns into the arguments of a queue it declares, and whether
/// each is a number (an AMQP long) or text. The stream ones are taken too, so the core refuses
/// them as it refuses them from AMQP rather than a client believing they apply.
const QUEUE_ARGUMENT_HEADERS: [(&str, bool); 12] = [
    ("x-message-ttl", true),
    ("x-expires", true),
    ("x-max-length", true),
    ("x-max-length-bytes", true),
    ("x-max-priority", true),
    ("x-dead-letter-exchange", false),
    ("x-dead-letter-routing-key", false),
    ("x-overflow", false),
    ("x-queue-type", false),
    ("x-max-age", false),
    ("x-stream-max-segment-size-bytes", true),
    ("x-stream-filter-size-bytes", true),
];

/// The arguments a SEND or SUBSCRIBE gives the queue the broker declares for it. Numbers become
/// integers, as RabbitMQ's plugin makes them: the core takes a length, TTL or priority only as
/// an integer (it refuses `x-max-length` as text, as RabbitMQ does), and an AMQP client
/// declaring the same queue sends integers too.
pub fn queue_arguments(frame: &Frame) -> Result<Table, StompError> {
    let mut arguments = Table::new();
    for (name, numeric) in QUEUE_ARGUMENT_HEADERS {
        let Some(value) = frame.get(name) else {
            continue;
        };
        let value = value.trim();
        let value = if numeric {
            let n = value
                .parse::<i64>()
                .map_err(|_| StompError::InvalidHeader {
                    header: name,
                    reason: format!("'{value}' is not an integer"),
                })?;
            Value::I64(n)
        } else {
            Value::Str(value.to_owned())
        };
        arguments.insert(name.to_owned(), value);
    }
    Ok(arguments)
}

/// Where [`add_message_headers`] puts a MESSAGE's headers: a [`Frame`], or a [`FrameWriter`]
/// that writes them straight to the output. Either keeps the first value of a name.
pub trait MessageHeaders {
    fn text(&mut self, name: &str, value: &str);
    fn number(&mut self, name: &str, value: u64);
}

impl MessageHeaders for Frame {
    fn text(&mut self, name: &str, value: &str) {
        self.push_header(name, value);
    }

    fn number(&mut self, name: &str, value: u64) {
        self.push_header(name, value.to_string());
    }
}

impl MessageHeaders for FrameWriter<'_> {
    fn text(&mut self, name: &str, value: &str) {
        self.header(name, value);
    }

    fn number(&mut self, name: &str, value: u64) {
        FrameWriter::number(self, name, value);
    }
}

/// Adds the message's properties and custom headers to a MESSAGE. Headers it already has
/// (subscription, message-id, …) keep their value. Only custom headers that are not text
/// already are converted on the way.
pub fn add_message_headers(to: &mut impl MessageHeaders, message: &Message) {
    let p = &message.properties;
    put(to, "content-type", p.content_type.as_deref());
    put(to, "content-encoding", p.content_encoding.as_deref());
    put(to, "persistent", p.is_persistent().then_some("true"));
    if let Some(v) = p.priority {
        to.number("priority", u64::from(v));
    }
    put(to, "correlation-id", p.correlation_id.as_deref());
    put(to, "reply-to", p.reply_to.as_deref());
    put(to, "expiration", p.expiration.as_deref());
    put(to, "amqp-message-id", p.message_id.as_deref());
    if let Some(v) = p.timestamp {
        to.number("timestamp", v);
    }
    put(to, "type", p.kind.as_deref());
    put(to, "user-id", p.user_id.as_deref());
    put(to, "app-id", p.app_id.as_deref());
    if let Some(headers) = &p.headers {
        // A custom header must never pose as framing (a stray `content-length` would cut the
        // body short for the client).
        for (name, value) in headers
            .iter()
            .filter(|(n, _)| !FRAME_HEADERS.contains(&n.as_str()))
        {
            match value {
                Value::Str(v) => to.text(name, v),
                other => put(to, name, other.to_text().as_deref()),
            }
        }
    }
}

fn put(to: &mut impl MessageHeaders, name: &str, value: Option<&str>) {
    if let Some(v) = value {
        to.text(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Command;

    fn send(headers: &[(&str, &str)]) -> Frame {
        headers
            .iter()
            .fold(Frame::new(Command::Send), |f, (n, v)| f.header(*n, *v))
    }

    #[test]
    fn send_headers_become_properties_and_the_rest_custom_headers() {
        let frame = send(&[
            ("destination", "/queue/a"),
            ("receipt", "r1"),
            ("content-type", "application/json"),
            ("persistent", "true"),
            ("priority", "7"),
            ("correlation-id", "c1"),
            ("reply-to", "/queue/replies"),
            ("expiration", "60000"),
            ("amqp-message-id", "m1"),
            ("x-trace", "abc"),
        ]);
        let p = properties_from_send(&frame, 0).expect("valid");
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert!(p.is_persistent());
        assert_eq!(p.priority, Some(7));
        assert_eq!(p.correlation_id.as_deref(), Some("c1"));
        assert_eq!(p.reply_to.as_deref(), Some("/queue/replies"));
        assert_eq!(p.expiration.as_deref(), Some("60000"));
        assert_eq!(p.message_id.as_deref(), Some("m1"));
        let headers = p.headers.expect("custom headers");
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert_eq!(headers.get("x-trace"), Some(&Value::Str("abc".into())));
    }

    #[test]
    fn boolean_headers_take_true_and_false_in_any_case() {
        for (text, want) in [
            ("true", Some(true)),
            ("True", Some(true)),
            ("TRUE", Some(true)),
            ("false", Some(false)),
            ("False", Some(false)),
            ("FALSE", Some(false)),
            ("yes", None),
            ("", None),
        ] {
            assert_eq!(
                boolean(&send(&[("durable", text)]), "durable"),
                want,
                "{text}"
            );
        }
        assert_eq!(boolean(&send(&[]), "durable"), None);
        let p = properties_from_send(&send(&[("persistent", "TRUE")]), 0).expect("valid");
        assert!(p.is_persistent());
        let p = properties_from_send(&send(&[("persistent", "False")]), 0).expect("valid");
        assert_eq!(p.delivery_mode, Some(1));
    }

    #[test]
    fn absolute_expires_becomes_a_relative_ttl() {
        let p = properties_from_send(&send(&[("expires", "1500")]), 1000).expect("valid");
        assert_eq!(p.expiration.as_deref(), Some("500"));
        let p = properties_from_send(&send(&[("expires", "900")]), 1000).expect("valid");
        assert_eq!(p.expiration.as_deref(), Some("0"));
        let p = properties_from_send(&send(&[("expires", "0")]), 1000).expect("valid");
        assert_eq!(p.expiration, None);
    }

    #[test]
    fn bad_numbers_name_their_header() {
        let err = properties_from_send(&send(&[("priority", "high")]), 0).expect_err("invalid");
        assert!(err.to_string().contains("'priority'"), "{err}");
    }

    #[test]
    fn queue_argument_headers_become_typed_arguments() {
        let frame = send(&[
            ("x-max-length", " 10"),
            ("x-message-ttl", "60000"),
            ("x-dead-letter-exchange", "dlx"),
            ("x-queue-type", "classic"),
            ("x-custom", "1"),
        ]);
        let args = queue_arguments(&frame).expect("valid");
        assert_eq!(args.len(), 4, "{args:?}");
        assert_eq!(args.get("x-max-length"), Some(&Value::I64(10)));
        assert_eq!(args.get("x-message-ttl"), Some(&Value::I64(60000)));
        assert_eq!(
            args.get("x-dead-letter-exchange"),
            Some(&Value::Str("dlx".into()))
        );
        let err = queue_arguments(&send(&[("x-expires", "soon")])).expect_err("not a number");
        assert_eq!(err.summary(), "Invalid header");
    }

    #[test]
    fn typed_amqp_headers_are_written_as_text() {
        let mut headers = Table::new();
        headers.insert("n".into(), Value::I32(-4));
        headers.insert("b".into(), Value::Bool(true));
        headers.insert("d".into(), Value::Decimal(2, 5));
        headers.insert("t".into(), Value::Table(Table::new()));
        headers.insert("content-length".into(), Value::Str("1".into()));
        let props = Properties {
            headers: Some(headers),
            message_id: Some("m".into()),
            ..Properties::default()
        };
        let message = Message::new("", "q", props, bytes::Bytes::new());
        let mut frame = Frame::new(Command::Message).header("message-id", "1");
        add_message_headers(&mut frame, &message);
        assert_eq!(frame.get("n"), Some("-4"));
        assert_eq!(frame.get("b"), Some("true"));
        assert_eq!(frame.get("d"), Some("0.05"));
        assert_eq!(frame.get("t"), None);
        assert_eq!(
            frame.get("content-length"),
            None,
            "framing headers are not taken from AMQP"
        );
        assert_eq!(frame.get("message-id"), Some("1"));
        assert_eq!(frame.get("amqp-message-id"), Some("m"));
    }

    /// A MESSAGE written header by header into the output is byte for byte the one encoded
    /// from a [`Frame`], in every version: the same escapes, the same first-wins rule for a
    /// custom header that repeats a frame header, the same `content-length`.
    #[test]
    fn a_message_written_in_place_matches_the_encoded_frame() {
        use crate::codec::{encode, with_body};
        use crate::frame::Version;
        use bytes::{Bytes, BytesMut};

        let mut headers = Table::new();
        headers.insert("subscription".into(), Value::Str("forged".into()));
        headers.insert(
            "x-colon:and\\back".into(),
            Value::Str("line\nbreak\r".into()),
        );
        headers.insert("n".into(), Value::I64(-4));
        headers.insert("t".into(), Value::Table(Table::new()));
        let props = Properties {
            content_type: Some("text/plain".into()),
            delivery_mode: Some(2),
            priority: Some(7),
            timestamp: Some(1_700_000_000),
            app_id: Some("a:b".into()),
            headers: Some(headers),
            ..Properties::default()
        };
        let body = Bytes::from_static(b"x\0y");
        for message in [
            Message::new("", "q", props, body.clone()),
            Message::new("", "q", Properties::default(), Bytes::new()),
        ] {
            for version in [Version::V1_0, Version::V1_1, Version::V1_2] {
                let mut frame = Frame::new(Command::Message)
                    .header("subscription", "s-1")
                    .header("message-id", "42");
                frame.push_header("redelivered", "false");
                add_message_headers(&mut frame, &message);
                let frame = with_body(frame, message.body.clone());
                let mut want = BytesMut::new();
                encode(&frame, version, &mut want);

                let mut got = BytesMut::from(&b"before"[..]);
                let mut writer = FrameWriter::new(Command::Message, version, &mut got);
                writer.header("subscription", "s-1");
                writer.number("message-id", 42);
                writer.header("redelivered", "false");
                add_message_headers(&mut writer, &message);
                writer.finish(&message.body);
                assert_eq!(&got[..6], b"before");
                assert_eq!(&got[6..], &want[..], "{version:?}");
            }
        }
    }

    /// Writing a MESSAGE into an output buffer with room allocates nothing for a message whose
    /// properties are text and numbers.
    #[test]
    fn a_message_into_a_warm_output_allocates_nothing() {
        use crate::frame::Version;
        use bytes::{Bytes, BytesMut};

        let props = Properties {
            content_type: Some("text/plain".into()),
            delivery_mode: Some(2),
            priority: Some(1),
            ..Properties::default()
        };
        let message = Message::new("", "q", props, Bytes::from_static(b"sixteen-byte-msg"));
        let mut out = BytesMut::with_capacity(4096);
        let used = allocation_counter::measure(|| {
            let mut writer = FrameWriter::new(Command::Message, Version::V1_2, &mut out);
            writer.header("subscription", "0");
            writer.number("message-id", 7);
            writer.header("destination", "/queue/q");
            writer.number("ack", 7);
            writer.header("redelivered", "false");
            add_message_headers(&mut writer, &message);
            writer.finish(&message.body);
        });
        assert_eq!(used.count_total, 0);
    }
}
