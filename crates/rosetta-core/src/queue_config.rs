//! Queue arguments (`x-…`) parsed and validated once, at declare time, with RabbitMQ's rules.

use crate::error::CoreError;
use crate::message::{Table, Value};

/// What a queue does when it is full (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    #[default]
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueConfig {
    pub message_ttl: Option<u64>,
    pub expires: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub max_priority: Option<u8>,
    pub single_active_consumer: bool,
}

fn invalid(name: &str, reason: impl Into<String>) -> CoreError {
    CoreError::InvalidArgument {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

fn non_negative(args: &Table, name: &str) -> Result<Option<u64>, CoreError> {
    match args.get(name) {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Ok(Some(n as u64)),
            Some(n) => Err(invalid(name, format!("{n} is negative"))),
            None => Err(invalid(name, "expected an integer")),
        },
    }
}

fn string(args: &Table, name: &str) -> Result<Option<String>, CoreError> {
    match args.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(|s| Some(s.to_owned()))
            .ok_or_else(|| invalid(name, "expected a string")),
    }
}

impl QueueConfig {
    pub fn parse(args: &Table) -> Result<Self, CoreError> {
        let expires = non_negative(args, "x-expires")?;
        if expires == Some(0) {
            return Err(invalid("x-expires", "must be positive"));
        }
        let overflow = match string(args, "x-overflow")?.as_deref() {
            None | Some("drop-head") => Overflow::DropHead,
            Some("reject-publish") => Overflow::RejectPublish,
            Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
            Some(other) => return Err(invalid("x-overflow", format!("unknown mode '{other}'"))),
        };
        let max_priority = match non_negative(args, "x-max-priority")? {
            None => None,
            Some(p) if p <= 255 => Some(p as u8),
            Some(p) => return Err(invalid("x-max-priority", format!("{p} is above 255"))),
        };
        let single_active_consumer = match args.get("x-single-active-consumer") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("x-single-active-consumer", "expected a boolean")),
        };
        let dead_letter_exchange = string(args, "x-dead-letter-exchange")?;
        let dead_letter_routing_key = string(args, "x-dead-letter-routing-key")?;
        if dead_letter_routing_key.is_some() && dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "requires x-dead-letter-exchange",
            ));
        }
        Ok(QueueConfig {
            message_ttl: non_negative(args, "x-message-ttl")?,
            expires,
            max_length: non_negative(args, "x-max-length")?,
            max_length_bytes: non_negative(args, "x-max-length-bytes")?,
            overflow,
            dead_letter_exchange,
            dead_letter_routing_key,
            max_priority,
            single_active_consumer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, Value)]) -> Table {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn parses_every_supported_argument() {
        let c = QueueConfig::parse(&args(&[
            ("x-message-ttl", Value::I32(500)),
            ("x-expires", Value::I64(1000)),
            ("x-max-length", Value::I16(3)),
            ("x-max-length-bytes", Value::U32(100)),
            ("x-overflow", Value::Str("reject-publish-dlx".into())),
            ("x-dead-letter-exchange", Value::Str("dlx".into())),
            ("x-dead-letter-routing-key", Value::Str("dead".into())),
            ("x-max-priority", Value::U8(10)),
            ("x-single-active-consumer", Value::Bool(true)),
        ]))
        .expect("valid");
        assert_eq!(c.message_ttl, Some(500));
        assert_eq!(c.expires, Some(1000));
        assert_eq!(c.max_length, Some(3));
        assert_eq!(c.max_length_bytes, Some(100));
        assert_eq!(c.overflow, Overflow::RejectPublishDlx);
        assert_eq!(c.dead_letter_exchange.as_deref(), Some("dlx"));
        assert_eq!(c.dead_letter_routing_key.as_deref(), Some("dead"));
        assert_eq!(c.max_priority, Some(10));
        assert!(c.single_active_consumer);
    }

    #[test]
    fn rejects_invalid_values() {
        assert!(QueueConfig::parse(&args(&[("x-message-ttl", Value::I32(-1))])).is_err());
        assert!(QueueConfig::parse(&args(&[("x-message-ttl", Value::Str("x".into()))])).is_err());
        assert!(QueueConfig::parse(&args(&[("x-expires", Value::I32(0))])).is_err());
        assert!(QueueConfig::parse(&args(&[("x-overflow", Value::Str("nope".into()))])).is_err());
        assert!(QueueConfig::parse(&args(&[("x-max-priority", Value::I32(256))])).is_err());
        assert!(QueueConfig::parse(&args(&[(
            "x-dead-letter-routing-key",
            Value::Str("k".into())
        )]))
        .is_err());
    }
}
