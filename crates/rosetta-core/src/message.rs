//! The neutral message: body, properties and headers as every front-end sees them.
//!
//! Property names follow AMQP 0-9-1 basic properties because that model is the richest; the MQTT
//! and STOMP front-ends map their fields onto these (see docs/protocols.md).

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;

/// A header table. Ordered so that encodings are deterministic.
pub type Table = BTreeMap<String, Value>;

/// A typed header value, the union of what AMQP field tables can carry.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    /// AMQP decimal: scale and unscaled value.
    Decimal(u8, u32),
    /// Text (AMQP short or long string).
    Str(String),
    /// Opaque bytes (AMQP byte array, or a long string that is not UTF-8).
    Bytes(Bytes),
    /// Seconds since the Unix epoch.
    Timestamp(u64),
    Table(Table),
    Array(Vec<Value>),
    Void,
}

impl Value {
    /// The value as text, if it is text or bytes that are valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is any integer type.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::U8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            Value::Timestamp(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as text, for protocols whose headers are strings (STOMP headers, MQTT 5 User
    /// Properties), following RabbitMQ's conversion of AMQP 0-9-1 headers: simple values become
    /// their string representation; tables and arrays have none, and neither do void and bytes
    /// that are not UTF-8. Integers and timestamps (seconds) are written in decimal, booleans
    /// as `true` and `false`, floats in their shortest exact form. An AMQP decimal is its
    /// unscaled value divided by ten to the power of its scale, written exactly: value 12345,
    /// scale 2 is `123.45`. The unscaled value is unsigned, as AMQP 0-9-1 defines it
    /// (`decimal-value = scale long-uint`) and RabbitMQ reads it.
    pub fn to_text(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.clone()),
            Value::Bytes(b) => std::str::from_utf8(b).ok().map(str::to_owned),
            Value::Bool(b) => Some(b.to_string()),
            Value::I8(n) => Some(n.to_string()),
            Value::U8(n) => Some(n.to_string()),
            Value::I16(n) => Some(n.to_string()),
            Value::U16(n) => Some(n.to_string()),
            Value::I32(n) => Some(n.to_string()),
            Value::U32(n) => Some(n.to_string()),
            Value::I64(n) => Some(n.to_string()),
            Value::Timestamp(n) => Some(n.to_string()),
            Value::F32(f) => Some(f.to_string()),
            Value::F64(f) => Some(f.to_string()),
            Value::Decimal(scale, unscaled) => Some(decimal_text(*scale, *unscaled)),
            Value::Table(_) | Value::Array(_) | Value::Void => None,
        }
    }
}

/// `unscaled / 10^scale`, exactly, with as many fraction digits as the scale says.
fn decimal_text(scale: u8, unscaled: u32) -> String {
    let digits = unscaled.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    // At least one digit before the point: 5 at scale 2 is 0.05.
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{int}.{frac}")
}

/// Message properties (AMQP 0-9-1 `basic` content header fields).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Option<Table>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as a decimal string (AMQP convention).
    pub expiration: Option<String>,
    pub message_id: Option<String>,
    pub timestamp: Option<u64>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
    pub cluster_id: Option<String>,
}

impl Properties {
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == Some(2)
    }

    /// The per-message TTL in milliseconds; `None` when absent or not a valid number.
    pub fn expiration_ms(&self) -> Option<u64> {
        self.expiration.as_deref().and_then(|e| e.parse().ok())
    }

    pub fn header(&self, name: &str) -> Option<&Value> {
        self.headers.as_ref().and_then(|h| h.get(name))
    }
}

/// One published message. Shared between queues as `Arc<Message>`, so the body is stored once.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Broker-wide identity, assigned when the message enters the broker; the store keys the
    /// body by it so a message routed to several durable queues is written once.
    pub id: u64,
    /// The exchange the publisher addressed (empty for the default exchange). Borrowed when
    /// it is a name the broker knows at build time (`amq.topic` for MQTT, the default
    /// exchange), so most messages carry it without an allocation of their own.
    pub exchange: Cow<'static, str>,
    pub routing_key: String,
    pub properties: Properties,
    pub body: Bytes,
}

impl Message {
    pub fn new(
        exchange: impl Into<Cow<'static, str>>,
        routing_key: impl Into<String>,
        properties: Properties,
        body: Bytes,
    ) -> Self {
        Message {
            id: 0,
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            properties,
            body,
        }
    }

    /// Bytes counted against queue length limits (`x-max-length-bytes` counts bodies only,
    /// as RabbitMQ does).
    pub fn body_len(&self) -> u64 {
        self.body.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: Value) -> Option<String> {
        value.to_text()
    }

    #[test]
    fn decimals_are_their_unscaled_value_over_ten_to_the_scale_written_exactly() {
        assert_eq!(text(Value::Decimal(2, 12_345)).as_deref(), Some("123.45"));
        assert_eq!(text(Value::Decimal(2, 5)).as_deref(), Some("0.05"));
        assert_eq!(text(Value::Decimal(3, 1_000)).as_deref(), Some("1.000"));
        assert_eq!(text(Value::Decimal(1, 0)).as_deref(), Some("0.0"));
        assert_eq!(
            text(Value::Decimal(10, 42)).as_deref(),
            Some("0.0000000042")
        );
        assert_eq!(
            text(Value::Decimal(0, u32::MAX)).as_deref(),
            Some("4294967295")
        );
        assert_eq!(
            text(Value::Decimal(4, u32::MAX)).as_deref(),
            Some("429496.7295")
        );
        let tiny = text(Value::Decimal(255, 1)).expect("text");
        assert_eq!(tiny.len(), 257, "0, the point, 255 fraction digits");
        assert!(tiny.starts_with("0.000") && tiny.ends_with("01"), "{tiny}");
    }

    #[test]
    fn a_decimal_of_scale_zero_is_a_whole_number() {
        assert_eq!(text(Value::Decimal(0, 12_345)).as_deref(), Some("12345"));
        assert_eq!(text(Value::Decimal(0, 0)).as_deref(), Some("0"));
    }

    #[test]
    fn integers_keep_their_sign_and_full_range() {
        assert_eq!(text(Value::I8(-4)).as_deref(), Some("-4"));
        assert_eq!(text(Value::I16(i16::MIN)).as_deref(), Some("-32768"));
        assert_eq!(
            text(Value::I32(-2_147_483_648)).as_deref(),
            Some("-2147483648")
        );
        assert_eq!(
            text(Value::I64(i64::MIN)).as_deref(),
            Some("-9223372036854775808")
        );
        assert_eq!(text(Value::U8(255)).as_deref(), Some("255"));
        assert_eq!(text(Value::U16(65_535)).as_deref(), Some("65535"));
        assert_eq!(text(Value::U32(u32::MAX)).as_deref(), Some("4294967295"));
    }

    #[test]
    fn floats_are_written_in_their_shortest_exact_form_negative_ones_too() {
        assert_eq!(text(Value::F64(1.5)).as_deref(), Some("1.5"));
        assert_eq!(text(Value::F64(-0.25)).as_deref(), Some("-0.25"));
        assert_eq!(text(Value::F32(-3.0)).as_deref(), Some("-3"));
        assert_eq!(text(Value::F32(0.1)).as_deref(), Some("0.1"));
    }

    #[test]
    fn timestamps_are_seconds_since_the_epoch_over_the_whole_range() {
        assert_eq!(
            text(Value::Timestamp(1_700_000_000)).as_deref(),
            Some("1700000000")
        );
        assert_eq!(
            text(Value::Timestamp(u64::MAX)).as_deref(),
            Some("18446744073709551615")
        );
    }

    #[test]
    fn text_booleans_and_utf8_bytes_are_written_as_they_are() {
        assert_eq!(text(Value::Str("abc".into())).as_deref(), Some("abc"));
        assert_eq!(text(Value::Str(String::new())).as_deref(), Some(""));
        assert_eq!(text(Value::Bool(true)).as_deref(), Some("true"));
        assert_eq!(text(Value::Bool(false)).as_deref(), Some("false"));
        assert_eq!(
            text(Value::Bytes(Bytes::from_static("é".as_bytes()))).as_deref(),
            Some("é")
        );
    }

    #[test]
    fn tables_arrays_void_and_binary_have_no_text() {
        let mut nested = Table::new();
        nested.insert("n".into(), Value::I32(1));
        assert_eq!(text(Value::Table(nested.clone())), None);
        assert_eq!(text(Value::Table(Table::new())), None);
        assert_eq!(
            text(Value::Array(vec![
                Value::Str("a".into()),
                Value::Table(nested)
            ])),
            None
        );
        assert_eq!(text(Value::Array(Vec::new())), None);
        assert_eq!(text(Value::Void), None);
        assert_eq!(text(Value::Bytes(Bytes::from_static(&[0xff, 0xfe]))), None);
    }
}
