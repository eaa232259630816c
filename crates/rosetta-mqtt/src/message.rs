//! The MQTT application message, and its mapping onto the core's neutral message.
//!
//! | MQTT 5.0                  | core / AMQP 0-9-1                                              |
//! |---------------------------|----------------------------------------------------------------|
//! | topic `a/b`               | exchange `amq.topic`, routing key `a.b` (see [`crate::topic`]) |
//! | QoS 0 / QoS 1, 2          | `delivery_mode` 1 / 2, and header `x-mqtt-publish-qos`         |
//! | RETAIN                    | header `x-mqtt-retain` = true (only when set)                  |
//! | user properties           | headers, text values; a repeated name becomes an array         |
//! | Content Type              | `content_type`                                                 |
//! | Response Topic            | `reply_to`, as a routing key                                   |
//! | Correlation Data          | `correlation_id` if UTF-8 of at most 255 bytes, else header `x-mqtt-correlation-data` (bytes) |
//! | Payload Format Indicator  | header `x-mqtt-payload-format-indicator`                       |
//! | Message Expiry Interval   | `expiration` (milliseconds) and `timestamp` (publish time)     |
//!
//! Towards MQTT 5.0 subscribers, headers become user properties: text as is, numbers and
//! booleans as their decimal or `true`/`false` text, arrays as one property per element; nested
//! tables and opaque bytes that are not UTF-8 are left out. Headers named `x-mqtt-…` are this
//! mapping's own and are never shown as user properties.

use bytes::Bytes;
use mqtt_proto::v5::{LastWill, Publish, PublishProperties, UserProperty};
use mqtt_proto::{QoS, QosPid, TopicName};
use rosetta_core::{Message, Properties, Table, Value, AMQ_TOPIC};

use crate::error::MqttError;
use crate::record::{Reader, Writer};
use crate::topic::{key_to_topic, key_to_topic_into, topic_to_key};

pub const HEADER_QOS: &str = "x-mqtt-publish-qos";
pub const HEADER_RETAIN: &str = "x-mqtt-retain";
/// Set only by clients that hold a No Local subscription, so they do not receive their own
/// publishes (MQTT 5.0 §3.8.3.1).
pub const HEADER_CLIENT_ID: &str = "x-mqtt-client-id";
pub const HEADER_PAYLOAD_FORMAT: &str = "x-mqtt-payload-format-indicator";
pub const HEADER_CORRELATION: &str = "x-mqtt-correlation-data";
const INTERNAL_PREFIX: &str = "x-mqtt-";
/// The longest AMQP short string, the limit of `correlation_id`.
const SHORT_STRING_MAX: usize = 255;

/// Properties of an application message (MQTT 5.0 §3.3.2.3); MQTT 3 messages leave them empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppProperties {
    pub payload_utf8: Option<bool>,
    /// When the message expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: Option<u64>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

/// A will (MQTT 5.0 §3.1.2.5): the message, its Will Delay Interval, and its Message Expiry
/// Interval, which runs from when the will is published rather than from CONNECT.
#[derive(Debug, Clone, PartialEq)]
pub struct Will {
    message: AppMessage,
    pub delay_secs: u32,
    expiry_secs: Option<u32>,
}

impl Will {
    pub fn new(w: &LastWill) -> Self {
        let wp = &w.properties;
        let message = AppMessage {
            topic: w.topic_name.to_string(),
            qos: w.qos,
            retain: w.retain,
            payload: w.payload.clone(),
            props: AppProperties {
                payload_utf8: wp.payload_is_utf8,
                expires_at_ms: None,
                content_type: wp.content_type.as_deref().map(str::to_owned),
                response_topic: wp.response_topic.as_deref().map(str::to_owned),
                correlation_data: wp.correlation_data.clone(),
                user_properties: user_properties(&wp.user_properties),
            },
        };
        Will {
            message,
            delay_secs: wp.delay_interval.unwrap_or(0),
            expiry_secs: wp.message_expiry_interval,
        }
    }

    /// The topic the will is published to.
    pub fn topic(&self) -> &str {
        &self.message.topic
    }

    /// The message as published at `at_ms`.
    pub fn published_at(&self, at_ms: u64) -> AppMessage {
        let mut m = self.message.clone();
        m.props.expires_at_ms = expires_at(self.expiry_secs, at_ms);
        m
    }
}

/// A message as MQTT sees it: from a PUBLISH, a will, the retained store or the core.
#[derive(Debug, Clone, PartialEq)]
pub struct AppMessage {
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    pub payload: Bytes,
    pub props: AppProperties,
}

fn qos_from(n: i64) -> QoS {
    match n {
        i64::MIN..=0 => QoS::Level0,
        1 => QoS::Level1,
        _ => QoS::Level2,
    }
}

fn expires_at(interval_secs: Option<u32>, now_ms: u64) -> Option<u64> {
    interval_secs.map(|s| now_ms.saturating_add(u64::from(s) * 1000))
}

fn user_properties(list: &[UserProperty]) -> Vec<(String, String)> {
    list.iter()
        .map(|p| (p.name.to_string(), p.value.to_string()))
        .collect()
}

impl AppMessage {
    /// From a PUBLISH whose topic (possibly given by alias) is `topic`.
    pub fn from_publish(p: &Publish, topic: String, now_ms: u64) -> Self {
        let pp = &p.properties;
        AppMessage {
            topic,
            qos: p.qos_pid.qos(),
            retain: p.retain,
            payload: p.payload.clone(),
            props: AppProperties {
                payload_utf8: pp.payload_is_utf8,
                expires_at_ms: expires_at(pp.message_expiry_interval, now_ms),
                content_type: pp.content_type.as_deref().map(str::to_owned),
                response_topic: pp.response_topic.as_deref().map(str::to_owned),
                correlation_data: pp.correlation_data.clone(),
                user_properties: user_properties(&pp.user_properties),
            },
        }
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.props.expires_at_ms.is_some_and(|t| t <= now_ms)
    }

    /// The core message published to `amq.topic`. `publisher` stamps the client id for No Local.
    pub fn to_core(&self, publisher: Option<&str>, now_ms: u64) -> Message {
        let mut headers = Table::new();
        for (name, value) in &self.props.user_properties {
            let value = Value::Str(value.clone());
            match headers.get_mut(name) {
                Some(Value::Array(values)) => values.push(value),
                Some(existing) => {
                    let first = std::mem::replace(existing, Value::Void);
                    *existing = Value::Array(vec![first, value]);
                }
                None => {
                    headers.insert(name.clone(), value);
                }
            }
        }
        headers.insert(HEADER_QOS.into(), Value::U8(self.qos as u8));
        if self.retain {
            headers.insert(HEADER_RETAIN.into(), Value::Bool(true));
        }
        if let Some(id) = publisher {
            headers.insert(HEADER_CLIENT_ID.into(), Value::Str(id.to_owned()));
        }
        if let Some(utf8) = self.props.payload_utf8 {
            headers.insert(HEADER_PAYLOAD_FORMAT.into(), Value::U8(u8::from(utf8)));
        }
        let mut correlation_id = None;
        if let Some(data) = &self.props.correlation_data {
            match std::str::from_utf8(data) {
                Ok(text) if text.len() <= SHORT_STRING_MAX => {
                    correlation_id = Some(text.to_owned())
                }
                _ => {
                    headers.insert(HEADER_CORRELATION.into(), Value::Bytes(data.clone()));
                }
            }
        }
        let ttl = self.props.expires_at_ms.map(|t| t.saturating_sub(now_ms));
        let properties = Properties {
            content_type: self.props.content_type.clone(),
            headers: Some(headers),
            delivery_mode: Some(if self.qos == QoS::Level0 { 1 } else { 2 }),
            correlation_id,
            reply_to: self.props.response_topic.as_deref().map(topic_to_key),
            expiration: ttl.map(|t| t.to_string()),
            timestamp: ttl.map(|_| now_ms / 1000),
            ..Properties::default()
        };
        Message::new(
            AMQ_TOPIC,
            topic_to_key(&self.topic),
            properties,
            self.payload.clone(),
        )
    }

    /// The message as MQTT sees a core message, whichever protocol published it. Its topic is
    /// written into `topic`, cleared first, whose memory a caller may keep from one message to
    /// the next.
    pub fn from_core(m: &Message, now_ms: u64, mut topic: String) -> Self {
        let p = &m.properties;
        // The mapping's own headers are picked out in the pass that collects the user
        // properties, rather than each looked up in the table on every delivery.
        let (mut qos, mut retain, mut format, mut correlation) = (None, None, None, None);
        let mut user_properties = Vec::new();
        for (name, value) in p.headers.iter().flatten() {
            match name.as_str() {
                HEADER_QOS => qos = Some(value),
                HEADER_RETAIN => retain = Some(value),
                HEADER_PAYLOAD_FORMAT => format = Some(value),
                HEADER_CORRELATION => correlation = Some(value),
                own if own.starts_with(INTERNAL_PREFIX) => {}
                _ => match value {
                    Value::Array(values) => {
                        user_properties.extend(
                            values
                                .iter()
                                .filter_map(Value::to_text)
                                .map(|v| (name.clone(), v)),
                        );
                    }
                    other => user_properties.extend(other.to_text().map(|v| (name.clone(), v))),
                },
            }
        }
        let qos = match qos.and_then(Value::as_i64) {
            Some(n) => qos_from(n),
            // RabbitMQ's rule for AMQP publishers: persistent messages go out at QoS 1.
            None if p.is_persistent() => QoS::Level1,
            None => QoS::Level0,
        };
        let correlation_data = match correlation {
            Some(Value::Bytes(b)) => Some(b.clone()),
            _ => p
                .correlation_id
                .as_ref()
                .map(|c| Bytes::copy_from_slice(c.as_bytes())),
        };
        let start_ms = p.timestamp.map_or(now_ms, |s| s.saturating_mul(1000));
        topic.clear();
        key_to_topic_into(&m.routing_key, &mut topic);
        AppMessage {
            topic,
            qos,
            retain: matches!(retain, Some(Value::Bool(true))),
            payload: m.body.clone(),
            props: AppProperties {
                payload_utf8: format.and_then(Value::as_i64).map(|n| n == 1),
                expires_at_ms: p.expiration_ms().map(|ttl| start_ms.saturating_add(ttl)),
                content_type: p.content_type.clone(),
                response_topic: p.reply_to.as_deref().map(key_to_topic),
                correlation_data,
                user_properties,
            },
        }
    }

    /// Whether the message came from the client `id` (for No Local).
    pub fn published_by(m: &Message, id: &str) -> bool {
        m.properties
            .header(HEADER_CLIENT_ID)
            .and_then(Value::as_str)
            == Some(id)
    }

    /// The MQTT 5.0 properties for sending at `now_ms`; `None` once expired. The expiry
    /// interval sent is what is left of it ([MQTT-3.3.2-6]). Subscription identifiers, of
    /// which a PUBLISH may carry several, are added by [`crate::codec::encode_publish`].
    pub fn publish_properties(&self, now_ms: u64) -> Option<PublishProperties> {
        let remaining = match self.props.expires_at_ms {
            Some(t) if t <= now_ms => return None,
            Some(t) => Some(u32::try_from((t - now_ms).div_ceil(1000)).unwrap_or(u32::MAX)),
            None => None,
        };
        Some(PublishProperties {
            payload_is_utf8: self.props.payload_utf8,
            message_expiry_interval: remaining,
            topic_alias: None,
            // A response topic that is not a valid topic name (from an AMQP reply-to) is left out.
            response_topic: self
                .props
                .response_topic
                .as_deref()
                .and_then(|t| TopicName::try_from(t).ok()),
            correlation_data: self.props.correlation_data.clone(),
            user_properties: self
                .props
                .user_properties
                .iter()
                .map(|(n, v)| UserProperty {
                    name: n.as_str().into(),
                    value: v.as_str().into(),
                })
                .collect(),
            subscription_id: None,
            content_type: self.props.content_type.as_deref().map(Into::into),
        })
    }

    /// A PUBLISH packet carrying this message; `topic` may be empty when an alias stands for it.
    pub fn to_publish(
        &self,
        topic: TopicName,
        qos_pid: QosPid,
        dup: bool,
        retain: bool,
        properties: PublishProperties,
    ) -> Publish {
        Publish {
            dup,
            retain,
            qos_pid,
            topic_name: topic,
            payload: self.payload.clone(),
            properties,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let p = &self.props;
        let mut w = Writer::new();
        w.str(&self.topic)
            .u8(self.qos as u8)
            .u8(u8::from(self.retain))
            .bytes(&self.payload);
        w.u8(match p.payload_utf8 {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        });
        w.opt_u64(p.expires_at_ms)
            .opt_str(p.content_type.as_deref())
            .opt_str(p.response_topic.as_deref());
        w.opt_bytes(p.correlation_data.as_deref());
        w.u32(u32::try_from(p.user_properties.len()).unwrap_or(u32::MAX));
        for (n, v) in &p.user_properties {
            w.str(n).str(v);
        }
        w.finish()
    }

    pub fn decode(data: &[u8], what: &'static str) -> Result<Self, MqttError> {
        let mut r = Reader::new(data, what)?;
        let m = Self::read(&mut r)?;
        r.end()?;
        Ok(m)
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, MqttError> {
        let topic = r.str()?;
        let qos =
            QoS::from_u8(r.u8()?).map_err(|e| MqttError::corrupt("message", e.to_string()))?;
        let retain = r.u8()? != 0;
        let payload = r.bytes()?;
        let payload_utf8 = match r.u8()? {
            0 => None,
            1 => Some(false),
            _ => Some(true),
        };
        let expires_at_ms = r.opt_u64()?;
        let content_type = r.opt_str()?;
        let response_topic = r.opt_str()?;
        let correlation_data = r.opt_bytes()?;
        let n = r.u32()?;
        let mut user_properties = Vec::new();
        for _ in 0..n {
            user_properties.push((r.str()?, r.str()?));
        }
        Ok(AppMessage {
            topic,
            qos,
            retain,
            payload,
            props: AppProperties {
                payload_utf8,
                expires_at_ms,
                content_type,
                response_topic,
                correlation_data,
                user_properties,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AppMessage {
        AppMessage {
            topic: "home/v1.2/temp".into(),
            qos: QoS::Level2,
            retain: true,
            payload: Bytes::from_static(b"21.5"),
            props: AppProperties {
                payload_utf8: Some(true),
                expires_at_ms: Some(1_000_060_000),
                content_type: Some("text/plain".into()),
                response_topic: Some("reply/here".into()),
                correlation_data: Some(Bytes::from_static(b"\xff\x00")),
                user_properties: vec![
                    ("k".into(), "1".into()),
                    ("k".into(), "2".into()),
                    ("site".into(), "x".into()),
                ],
            },
        }
    }

    #[test]
    fn an_mqtt_message_survives_the_trip_through_the_core() {
        let m = sample();
        let core = m.to_core(None, 1_000_000_000);
        assert_eq!(core.exchange, "amq.topic");
        assert_eq!(core.routing_key, "home.v1%2E2.temp");
        assert_eq!(core.properties.delivery_mode, Some(2));
        assert_eq!(core.properties.reply_to.as_deref(), Some("reply.here"));
        assert_eq!(core.properties.expiration.as_deref(), Some("60000"));
        assert_eq!(
            core.properties.header("k"),
            Some(&Value::Array(vec![
                Value::Str("1".into()),
                Value::Str("2".into())
            ]))
        );
        let back = AppMessage::from_core(&core, 1_000_000_000, String::new());
        assert_eq!(back, m);
    }

    #[test]
    fn amqp_headers_become_user_properties_and_persistence_becomes_qos_1() {
        let mut headers = Table::new();
        headers.insert("n".into(), Value::I32(-4));
        headers.insert("flag".into(), Value::Bool(true));
        headers.insert("nested".into(), Value::Table(Table::new()));
        headers.insert("x-mqtt-retain".into(), Value::Bool(false));
        let props = Properties {
            headers: Some(headers),
            delivery_mode: Some(2),
            correlation_id: Some("c1".into()),
            ..Properties::default()
        };
        let m = AppMessage::from_core(
            &Message::new("amq.topic", "x.y", props, Bytes::from_static(b"hi")),
            5,
            String::new(),
        );
        assert_eq!(m.topic, "x/y");
        assert_eq!(m.qos, QoS::Level1);
        assert!(!m.retain);
        assert_eq!(
            m.props.user_properties,
            vec![
                ("flag".to_owned(), "true".to_owned()),
                ("n".to_owned(), "-4".to_owned())
            ]
        );
        assert_eq!(m.props.correlation_data.as_deref(), Some(&b"c1"[..]));
    }

    #[test]
    fn amqp_decimals_and_array_elements_become_user_properties_as_text() {
        let mut headers = Table::new();
        headers.insert("price".into(), Value::Decimal(2, 12_345));
        headers.insert(
            "tags".into(),
            Value::Array(vec![
                Value::Str("a".into()),
                Value::Decimal(1, 5),
                Value::Table(Table::new()),
                Value::Void,
            ]),
        );
        let props = Properties {
            headers: Some(headers),
            ..Properties::default()
        };
        let m = AppMessage::from_core(
            &Message::new(AMQ_TOPIC, "x", props, Bytes::from_static(b"hi")),
            5,
            String::new(),
        );
        assert_eq!(
            m.props.user_properties,
            vec![
                ("price".to_owned(), "123.45".to_owned()),
                ("tags".to_owned(), "a".to_owned()),
                ("tags".to_owned(), "0.5".to_owned()),
            ]
        );
    }

    #[test]
    fn expiry_counts_down_and_expired_messages_have_no_properties() {
        let m = sample();
        let props = m.publish_properties(1_000_000_000).expect("live");
        assert_eq!(props.message_expiry_interval, Some(60));
        let later = m.publish_properties(1_000_059_001).expect("live");
        assert_eq!(later.message_expiry_interval, Some(1));
        assert!(m.publish_properties(1_000_060_000).is_none());
    }

    #[test]
    fn stored_messages_decode_to_what_was_encoded() {
        let m = sample();
        assert_eq!(
            AppMessage::decode(&m.encode(), "retained").expect("decodes"),
            m
        );
        let bytes = m.encode();
        assert!(AppMessage::decode(&bytes[..bytes.len() - 1], "retained").is_err());
    }
}
