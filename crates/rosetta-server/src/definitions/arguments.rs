//! Argument tables (queue, exchange and binding `arguments`) as JSON, both ways: the
//! management API and definitions files write them as JSON objects, the core keeps them as
//! AMQP field tables.

use rosetta_core::{Table, Value};
use serde_json::{json, Map, Value as Json};

pub(crate) fn table_json(table: &Table) -> Json {
    Json::Object(table_map(table))
}

pub(crate) fn table_map(table: &Table) -> Map<String, Json> {
    table
        .iter()
        .map(|(k, v)| (k.clone(), value_json(v)))
        .collect()
}

fn value_json(value: &Value) -> Json {
    match value {
        Value::Bool(b) => json!(b),
        Value::I8(n) => json!(n),
        Value::U8(n) => json!(n),
        Value::I16(n) => json!(n),
        Value::U16(n) => json!(n),
        Value::I32(n) => json!(n),
        Value::U32(n) => json!(n),
        Value::I64(n) => json!(n),
        Value::F32(n) => json!(n),
        Value::F64(n) => json!(n),
        Value::Decimal(scale, unscaled) => {
            json!(f64::from(*unscaled) / 10f64.powi(i32::from(*scale)))
        }
        Value::Str(s) => json!(s),
        Value::Bytes(b) => json!(String::from_utf8_lossy(b)),
        Value::Timestamp(t) => json!(t),
        Value::Table(t) => table_json(t),
        Value::Array(items) => Json::Array(items.iter().map(value_json).collect()),
        Value::Void => Json::Null,
    }
}

/// A JSON object as a field table, typed as RabbitMQ's management plugin types it: whole
/// numbers are signed 64-bit (`long`), other numbers doubles, text long strings.
pub(crate) fn json_table(map: &Map<String, Json>) -> Table {
    map.iter()
        .map(|(k, v)| (k.clone(), json_value(v)))
        .collect()
}

fn json_value(value: &Json) -> Value {
    match value {
        Json::Null => Value::Void,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::I64(i),
            (None, Some(f)) => Value::F64(f),
            // A u64 above i64::MAX: no field table type holds it exactly.
            (None, None) => Value::Str(n.to_string()),
        },
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(json_value).collect()),
        Json::Object(map) => Value::Table(json_table(map)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_become_json() {
        let mut t = Table::new();
        t.insert("x-max-length".into(), Value::I64(10));
        t.insert("x-dead-letter-exchange".into(), Value::Str("dlx".into()));
        t.insert(
            "nested".into(),
            Value::Array(vec![Value::Bool(true), Value::Void]),
        );
        assert_eq!(
            table_json(&t),
            json!({"x-max-length": 10, "x-dead-letter-exchange": "dlx", "nested": [true, null]})
        );
    }

    #[test]
    fn json_arguments_come_back_as_they_went() {
        let original = json!({
            "x-message-ttl": 60000,
            "x-dead-letter-exchange": "dlx",
            "ratio": 0.5,
            "flags": [true, null],
            "inner": {"depth": -3},
        });
        let Json::Object(map) = &original else {
            unreachable!("an object literal")
        };
        let table = json_table(map);
        assert_eq!(table["x-message-ttl"], Value::I64(60000));
        assert_eq!(table_json(&table), original);
    }
}
