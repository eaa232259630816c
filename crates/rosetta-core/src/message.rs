//! The neutral message: body, properties and headers as every front-end sees them.
//!
//! Property names follow AMQP 0-9-1 basic properties because that model is the richest; the MQTT
//! and STOMP front-ends map their fields onto these (see docs/protocols.md).

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
    /// The exchange the publisher addressed (empty for the default exchange).
    pub exchange: String,
    pub routing_key: String,
    pub properties: Properties,
    pub body: Bytes,
}

impl Message {
    pub fn new(
        exchange: impl Into<String>,
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
