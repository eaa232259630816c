//! Conversions between `amq-protocol`'s wire types and the core's neutral message model.
//!
//! Everything an AMQP client can send survives a round trip unchanged, with one exception: a
//! long string (`S`) that is not valid UTF-8 becomes [`Value::Bytes`], which is sent back as a
//! byte array (`x`). The core keeps one variant for opaque bytes, and RabbitMQ clients encode
//! binary values as byte arrays anyway.
//!
//! Values that came from other protocols can exceed AMQP's limits: a short string (table keys and
//! most properties) holds at most 255 bytes. Such a key or property is left out of the AMQP
//! message rather than truncated into a different value.

use amq_protocol::frame::GenError;
use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use bytes::{BufMut, Bytes, BytesMut};
use rosetta_core::{Properties, Table, Value};

use crate::codec;

/// Converts an AMQP field table into a core table.
pub fn table_from_amqp(table: &FieldTable) -> Table {
    table
        .into_iter()
        .map(|(key, value)| (key.as_str().to_owned(), value_from_amqp(value)))
        .collect()
}

/// Converts a core table into an AMQP field table, leaving out keys longer than 255 bytes.
pub fn table_to_amqp(table: &Table) -> FieldTable {
    let mut out = FieldTable::default();
    for (key, value) in table {
        match ShortString::try_new(key.as_str()) {
            Ok(key) => {
                out.insert(key, value_to_amqp(value));
            }
            Err(_) => tracing::debug!(
                key_len = key.len(),
                "header name too long for an AMQP field table; left out"
            ),
        }
    }
    out
}

/// Converts one AMQP field value into a core value.
pub fn value_from_amqp(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(v) => Value::Bool(*v),
        AMQPValue::ShortShortInt(v) => Value::I8(*v),
        AMQPValue::ShortShortUInt(v) => Value::U8(*v),
        AMQPValue::ShortInt(v) => Value::I16(*v),
        AMQPValue::ShortUInt(v) => Value::U16(*v),
        AMQPValue::LongInt(v) => Value::I32(*v),
        AMQPValue::LongUInt(v) => Value::U32(*v),
        AMQPValue::LongLongInt(v) => Value::I64(*v),
        AMQPValue::Float(v) => Value::F32(*v),
        AMQPValue::Double(v) => Value::F64(*v),
        AMQPValue::DecimalValue(d) => Value::Decimal(d.scale, d.value),
        // Never decoded from the wire (RabbitMQ reads the `s` tag as a short int), but a value
        // built in code may hold one.
        AMQPValue::ShortString(s) => Value::Str(s.as_str().to_owned()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => Value::Str(text.to_owned()),
            Err(_) => Value::Bytes(Bytes::copy_from_slice(s.as_bytes())),
        },
        AMQPValue::FieldArray(a) => {
            Value::Array(a.as_slice().iter().map(value_from_amqp).collect())
        }
        AMQPValue::Timestamp(t) => Value::Timestamp(*t),
        AMQPValue::FieldTable(t) => Value::Table(table_from_amqp(t)),
        AMQPValue::ByteArray(b) => Value::Bytes(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Void => Value::Void,
    }
}

/// Converts one core value into an AMQP field value.
pub fn value_to_amqp(value: &Value) -> AMQPValue {
    match value {
        Value::Bool(v) => AMQPValue::Boolean(*v),
        Value::I8(v) => AMQPValue::ShortShortInt(*v),
        Value::U8(v) => AMQPValue::ShortShortUInt(*v),
        Value::I16(v) => AMQPValue::ShortInt(*v),
        Value::U16(v) => AMQPValue::ShortUInt(*v),
        Value::I32(v) => AMQPValue::LongInt(*v),
        Value::U32(v) => AMQPValue::LongUInt(*v),
        Value::I64(v) => AMQPValue::LongLongInt(*v),
        Value::F32(v) => AMQPValue::Float(*v),
        Value::F64(v) => AMQPValue::Double(*v),
        Value::Decimal(scale, value) => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        // Text goes out as a long string: the field-table short string tag is ambiguous (RabbitMQ
        // reads `s` as a short int), and long strings are what RabbitMQ sends for text headers.
        Value::Str(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(b.as_ref())),
        Value::Timestamp(t) => AMQPValue::Timestamp(*t),
        Value::Table(t) => AMQPValue::FieldTable(table_to_amqp(t)),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(value_to_amqp).collect::<Vec<_>>(),
        )),
        Value::Void => AMQPValue::Void,
    }
}

/// Converts AMQP basic properties (a content header) into core properties. Takes them by value
/// because the decoded header is not needed afterwards.
pub fn properties_from_amqp(props: BasicProperties) -> Properties {
    let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.as_str().to_owned());
    Properties {
        content_type: text(props.content_type()),
        content_encoding: text(props.content_encoding()),
        headers: props.headers().as_ref().map(table_from_amqp),
        delivery_mode: *props.delivery_mode(),
        priority: *props.priority(),
        correlation_id: text(props.correlation_id()),
        reply_to: text(props.reply_to()),
        expiration: text(props.expiration()),
        message_id: text(props.message_id()),
        timestamp: *props.timestamp(),
        kind: text(props.kind()),
        user_id: text(props.user_id()),
        app_id: text(props.app_id()),
        cluster_id: text(props.cluster_id()),
    }
}

/// Converts core properties into AMQP basic properties, leaving out any string property longer
/// than the 255 bytes a short string holds.
pub fn properties_to_amqp(props: &Properties) -> BasicProperties {
    let mut out = BasicProperties::default();
    if let Some(v) = short_string("content-type", &props.content_type) {
        out = out.with_content_type(v);
    }
    if let Some(v) = short_string("content-encoding", &props.content_encoding) {
        out = out.with_content_encoding(v);
    }
    if let Some(v) = &props.headers {
        out = out.with_headers(table_to_amqp(v));
    }
    if let Some(v) = props.delivery_mode {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = props.priority {
        out = out.with_priority(v);
    }
    if let Some(v) = short_string("correlation-id", &props.correlation_id) {
        out = out.with_correlation_id(v);
    }
    if let Some(v) = short_string("reply-to", &props.reply_to) {
        out = out.with_reply_to(v);
    }
    if let Some(v) = short_string("expiration", &props.expiration) {
        out = out.with_expiration(v);
    }
    if let Some(v) = short_string("message-id", &props.message_id) {
        out = out.with_message_id(v);
    }
    if let Some(v) = props.timestamp {
        out = out.with_timestamp(v);
    }
    if let Some(v) = short_string("type", &props.kind) {
        out = out.with_type(v);
    }
    if let Some(v) = short_string("user-id", &props.user_id) {
        out = out.with_user_id(v);
    }
    if let Some(v) = short_string("app-id", &props.app_id) {
        out = out.with_app_id(v);
    }
    if let Some(v) = short_string("cluster-id", &props.cluster_id) {
        out = out.with_cluster_id(v);
    }
    out
}

fn short_string(property: &'static str, value: &Option<String>) -> Option<ShortString> {
    fitting(property, value).map(ShortString::from)
}

/// `value` if a short string holds it; a longer one is left out of the AMQP message.
fn fitting<'a>(property: &'static str, value: &'a Option<String>) -> Option<&'a str> {
    let value = value.as_deref()?;
    if value.len() <= usize::from(u8::MAX) {
        return Some(value);
    }
    tracing::debug!(
        property,
        len = value.len(),
        "property too long for an AMQP short string; left out"
    );
    None
}

/// One property field as the content header carries it.
enum Field<'a> {
    Short(&'a str),
    Octet(u8),
    Timestamp(u64),
    Headers(&'a Table),
}

/// Writes `props` as a content header's property flags and fields (AMQP 0-9-1 §4.2.6.1): the
/// bytes `amq-protocol` writes for [`properties_to_amqp`], straight from the core's values, so
/// a delivery without headers builds no owned copy of its properties. Headers still go
/// through [`table_to_amqp`].
pub fn put_properties(props: &Properties, out: &mut BytesMut) -> Result<(), GenError> {
    // In flag order: the first field is flagged by bit 15, the next by bit 14, and so on.
    let fields = [
        fitting("content-type", &props.content_type).map(Field::Short),
        fitting("content-encoding", &props.content_encoding).map(Field::Short),
        props.headers.as_ref().map(Field::Headers),
        props.delivery_mode.map(Field::Octet),
        props.priority.map(Field::Octet),
        fitting("correlation-id", &props.correlation_id).map(Field::Short),
        fitting("reply-to", &props.reply_to).map(Field::Short),
        fitting("expiration", &props.expiration).map(Field::Short),
        fitting("message-id", &props.message_id).map(Field::Short),
        props.timestamp.map(Field::Timestamp),
        fitting("type", &props.kind).map(Field::Short),
        fitting("user-id", &props.user_id).map(Field::Short),
        fitting("app-id", &props.app_id).map(Field::Short),
        fitting("cluster-id", &props.cluster_id).map(Field::Short),
    ];
    let flags = fields
        .iter()
        .enumerate()
        .filter(|(_, f)| f.is_some())
        .fold(0u16, |flags, (i, _)| flags | 1 << (15 - i));
    out.put_u16(flags);
    for field in fields.into_iter().flatten() {
        match field {
            Field::Short(s) => codec::put_short_string(out, s)?,
            Field::Octet(v) => out.put_u8(v),
            Field::Timestamp(t) => out.put_u64(t),
            Field::Headers(h) => codec::put_field_table(out, &table_to_amqp(h))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry per field value type a client can put on the wire, plus nesting.
    fn every_wire_value() -> FieldTable {
        let mut inner = FieldTable::default();
        inner.insert("n".into(), AMQPValue::LongInt(-7));
        inner.insert("s".into(), AMQPValue::LongString("inner".into()));
        let array = FieldArray::from(vec![
            AMQPValue::Boolean(false),
            AMQPValue::LongString("x".into()),
            AMQPValue::FieldTable(inner.clone()),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Void])),
        ]);
        let mut t = FieldTable::default();
        t.insert("bool".into(), AMQPValue::Boolean(true));
        t.insert("i8".into(), AMQPValue::ShortShortInt(-8));
        t.insert("u8".into(), AMQPValue::ShortShortUInt(250));
        t.insert("i16".into(), AMQPValue::ShortInt(-16_000));
        t.insert("u16".into(), AMQPValue::ShortUInt(65_000));
        t.insert("i32".into(), AMQPValue::LongInt(-2_000_000_000));
        t.insert("u32".into(), AMQPValue::LongUInt(4_000_000_000));
        t.insert("i64".into(), AMQPValue::LongLongInt(i64::MIN));
        t.insert("f32".into(), AMQPValue::Float(1.5));
        t.insert("f64".into(), AMQPValue::Double(-2.25e300));
        t.insert(
            "decimal".into(),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 12_345,
            }),
        );
        t.insert("text".into(), AMQPValue::LongString("héllo".into()));
        t.insert("empty".into(), AMQPValue::LongString("".into()));
        t.insert(
            "bytes".into(),
            AMQPValue::ByteArray(vec![0, 159, 255].into()),
        );
        t.insert("array".into(), AMQPValue::FieldArray(array));
        t.insert("ts".into(), AMQPValue::Timestamp(1_700_000_000));
        t.insert("table".into(), AMQPValue::FieldTable(inner));
        t.insert("void".into(), AMQPValue::Void);
        t
    }

    fn every_property() -> BasicProperties {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("gzip".into())
            .with_headers(every_wire_value())
            .with_delivery_mode(2)
            .with_priority(9)
            .with_correlation_id("corr-1".into())
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_expiration("60000".into())
            .with_message_id("msg-1".into())
            .with_timestamp(1_700_000_001)
            .with_type("order.created".into())
            .with_user_id("guest".into())
            .with_app_id("shop".into())
            .with_cluster_id("c1".into())
    }

    #[test]
    fn every_wire_value_survives_a_round_trip_through_the_core() {
        let amqp = every_wire_value();
        assert_eq!(table_to_amqp(&table_from_amqp(&amqp)), amqp);
    }

    #[test]
    fn wire_values_map_to_the_matching_core_variants() {
        let table = table_from_amqp(&every_wire_value());
        assert_eq!(table["bool"], Value::Bool(true));
        assert_eq!(table["i8"], Value::I8(-8));
        assert_eq!(table["u8"], Value::U8(250));
        assert_eq!(table["i16"], Value::I16(-16_000));
        assert_eq!(table["u16"], Value::U16(65_000));
        assert_eq!(table["i32"], Value::I32(-2_000_000_000));
        assert_eq!(table["u32"], Value::U32(4_000_000_000));
        assert_eq!(table["i64"], Value::I64(i64::MIN));
        assert_eq!(table["f32"], Value::F32(1.5));
        assert_eq!(table["f64"], Value::F64(-2.25e300));
        assert_eq!(table["decimal"], Value::Decimal(2, 12_345));
        assert_eq!(table["text"], Value::Str("héllo".into()));
        assert_eq!(table["empty"], Value::Str(String::new()));
        assert_eq!(
            table["bytes"],
            Value::Bytes(Bytes::from_static(&[0, 159, 255]))
        );
        assert_eq!(table["ts"], Value::Timestamp(1_700_000_000));
        assert_eq!(table["void"], Value::Void);
        let Value::Table(inner) = &table["table"] else {
            panic!("nested table lost: {:?}", table["table"])
        };
        assert_eq!(inner["n"], Value::I32(-7));
        assert_eq!(inner["s"], Value::Str("inner".into()));
        let Value::Array(array) = &table["array"] else {
            panic!("array lost: {:?}", table["array"])
        };
        assert_eq!(array.len(), 4);
        assert_eq!(array[0], Value::Bool(false));
        assert_eq!(array[1], Value::Str("x".into()));
        assert!(matches!(array[2], Value::Table(ref t) if t.len() == 2));
        assert_eq!(array[3], Value::Array(vec![Value::Void]));
    }

    #[test]
    fn every_core_value_survives_a_round_trip_through_amqp() {
        let mut nested = Table::new();
        nested.insert(
            "deep".into(),
            Value::Array(vec![Value::I64(1), Value::Str("two".into())]),
        );
        let mut table = Table::new();
        for (key, value) in [
            ("bool", Value::Bool(false)),
            ("i8", Value::I8(i8::MIN)),
            ("u8", Value::U8(u8::MAX)),
            ("i16", Value::I16(i16::MIN)),
            ("u16", Value::U16(u16::MAX)),
            ("i32", Value::I32(i32::MIN)),
            ("u32", Value::U32(u32::MAX)),
            ("i64", Value::I64(i64::MAX)),
            ("f32", Value::F32(-0.5)),
            ("f64", Value::F64(1e-300)),
            ("decimal", Value::Decimal(255, u32::MAX)),
            ("str", Value::Str("ünïcode".into())),
            ("bytes", Value::Bytes(Bytes::from_static(b"\xff\x00"))),
            ("ts", Value::Timestamp(u64::MAX)),
            ("table", Value::Table(nested)),
            ("array", Value::Array(vec![])),
            ("void", Value::Void),
        ] {
            table.insert(key.into(), value);
        }
        assert_eq!(table_from_amqp(&table_to_amqp(&table)), table);
    }

    #[test]
    fn text_goes_out_as_a_long_string_and_bytes_as_a_byte_array() {
        assert_eq!(
            value_to_amqp(&Value::Str("a".into())),
            AMQPValue::LongString("a".into())
        );
        assert_eq!(
            value_to_amqp(&Value::Bytes(Bytes::from_static(b"a"))),
            AMQPValue::ByteArray(b"a".to_vec().into())
        );
    }

    #[test]
    fn a_long_string_that_is_not_utf8_becomes_bytes() {
        let value = AMQPValue::LongString(vec![0xC3, 0x28].into());
        assert_eq!(
            value_from_amqp(&value),
            Value::Bytes(Bytes::from_static(&[0xC3, 0x28]))
        );
    }

    #[test]
    fn a_short_string_value_becomes_text() {
        assert_eq!(
            value_from_amqp(&AMQPValue::ShortString("s".into())),
            Value::Str("s".into())
        );
    }

    #[test]
    fn every_property_survives_a_round_trip_through_the_core() {
        let amqp = every_property();
        assert_eq!(
            properties_to_amqp(&properties_from_amqp(amqp.clone())),
            amqp
        );
        assert_eq!(
            properties_to_amqp(&properties_from_amqp(BasicProperties::default())),
            BasicProperties::default()
        );
    }

    #[test]
    fn properties_map_field_by_field() {
        let core = properties_from_amqp(every_property());
        assert_eq!(core.content_type.as_deref(), Some("application/json"));
        assert_eq!(core.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(
            core.headers.as_ref().map(Table::len),
            Some(every_wire_value().inner().len())
        );
        assert_eq!(core.delivery_mode, Some(2));
        assert_eq!(core.priority, Some(9));
        assert_eq!(core.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(core.reply_to.as_deref(), Some("amq.rabbitmq.reply-to"));
        assert_eq!(core.expiration.as_deref(), Some("60000"));
        assert_eq!(core.message_id.as_deref(), Some("msg-1"));
        assert_eq!(core.timestamp, Some(1_700_000_001));
        assert_eq!(core.kind.as_deref(), Some("order.created"));
        assert_eq!(core.user_id.as_deref(), Some("guest"));
        assert_eq!(core.app_id.as_deref(), Some("shop"));
        assert_eq!(core.cluster_id.as_deref(), Some("c1"));
        assert_eq!(
            properties_from_amqp(BasicProperties::default()),
            Properties::default()
        );
    }

    #[test]
    fn values_too_long_for_a_short_string_are_left_out() {
        let long = "k".repeat(256);
        let mut table = Table::new();
        table.insert(long.clone(), Value::Bool(true));
        table.insert("ok".into(), Value::Bool(true));
        let amqp = table_to_amqp(&table);
        assert_eq!(amqp.inner().len(), 1);
        assert!(amqp.contains_key("ok"));

        let props = Properties {
            content_type: Some(long),
            message_id: Some("k".repeat(255)),
            ..Properties::default()
        };
        let amqp = properties_to_amqp(&props);
        assert_eq!(amqp.content_type(), &None);
        assert_eq!(
            amqp.message_id().as_ref().map(|s| s.as_str().len()),
            Some(255)
        );
    }

    /// A delivery written from the message's own fields is byte for byte the one written
    /// through amq-protocol's values, whatever properties it carries.
    #[test]
    fn a_delivery_written_in_place_matches_amq_protocol_encoding() {
        use amq_protocol::protocol::{basic, AMQPClass};

        use crate::codec::{encode_content, encode_server_content, ServerContent};

        let long = "x".repeat(300);
        let cases = [
            Properties::default(),
            properties_from_amqp(every_property()),
            Properties {
                content_type: Some(long.clone()),
                priority: Some(3),
                app_id: Some("a".into()),
                headers: Some(Table::new()),
                ..Properties::default()
            },
        ];
        for (i, props) in cases.iter().enumerate() {
            // A body over two frames at the smallest frame-max, and an empty one.
            for body in [&[7u8; 5000][..], b""] {
                let deliver = ServerContent::Deliver {
                    consumer_tag: "ctag",
                    delivery_tag: 42,
                    redelivered: i % 2 == 1,
                    exchange: "amq.topic",
                    routing_key: "a.b",
                };
                let get_ok = ServerContent::GetOk {
                    delivery_tag: 43,
                    redelivered: true,
                    exchange: "",
                    routing_key: "q",
                    message_count: 7,
                };
                let owned = [
                    AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                        consumer_tag: "ctag".into(),
                        delivery_tag: 42,
                        redelivered: i % 2 == 1,
                        exchange: "amq.topic".into(),
                        routing_key: "a.b".into(),
                    })),
                    AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                        delivery_tag: 43,
                        redelivered: true,
                        exchange: "".into(),
                        routing_key: "q".into(),
                        message_count: 7,
                    })),
                ];
                for (borrowed, owned) in [deliver, get_ok].into_iter().zip(owned) {
                    let mut want = BytesMut::new();
                    encode_content(1, &owned, &properties_to_amqp(props), body, 4096, &mut want)
                        .expect("encodes");
                    let mut got = BytesMut::new();
                    encode_server_content(
                        1,
                        borrowed,
                        |out| put_properties(props, out),
                        body,
                        4096,
                        &mut got,
                    )
                    .expect("encodes");
                    assert_eq!(got, want, "case {i}, {} body bytes", body.len());
                }
            }
        }
    }

    #[test]
    fn a_name_longer_than_a_short_string_writes_nothing() {
        use crate::codec::{encode_server_content, ServerContent};

        let long = "k".repeat(256);
        let mut out = BytesMut::from(&b"before"[..]);
        let refused = encode_server_content(
            1,
            ServerContent::Deliver {
                consumer_tag: &long,
                delivery_tag: 1,
                redelivered: false,
                exchange: "",
                routing_key: "q",
            },
            |out| put_properties(&Properties::default(), out),
            b"body",
            4096,
            &mut out,
        );
        assert!(refused.is_err());
        assert_eq!(&out[..], b"before");
    }
}
