//! Queue arguments (`x-…`) parsed and validated once, at declare time, with RabbitMQ's rules.
//!
//! An argument a client relies on is either honoured or refused, never silently ignored:
//! arguments of RabbitMQ's replicated queue types that change what a queue does
//! (`x-delivery-limit`, stream retention) and per-queue consumer timeouts are refused, while
//! hints that change nothing a client can observe on one node (classic queue mode and version,
//! leader placement, replica counts, in-memory limits) are accepted and checked for sense.

use crate::error::CoreError;
use crate::message::{Table, Value};
use crate::vhost::MAX_KEY_BYTES;

/// What a queue does when it is full (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    #[default]
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

/// The queue type a client asked for (`x-queue-type`). Every queue here is a classic one; a
/// quorum queue is one only where the broker is configured to take it as a durable classic
/// queue (`VHost::declare_queue` decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
    Stream,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
            QueueType::Stream => "stream",
        }
    }
}

/// Arguments refused whatever their value, with why: each asks for something a classic queue
/// here does not do, and a client setting it relies on that.
const UNSUPPORTED: [(&str, &str); 6] = [
    (
        "x-delivery-limit",
        "delivery limits (quorum queues) are not supported",
    ),
    (
        "x-consumer-timeout",
        "per-queue consumer timeouts are not supported",
    ),
    ("x-max-age", "stream retention is not supported"),
    (
        "x-stream-max-segment-size-bytes",
        "stream arguments are not supported",
    ),
    (
        "x-stream-filter-size-bytes",
        "stream arguments are not supported",
    ),
    (
        "x-initial-cluster-size",
        "stream arguments are not supported",
    ),
];

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
    pub queue_type: QueueType,
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

/// The arguments that change nothing observable on a single node, checked for sense.
fn check_hints(args: &Table) -> Result<(), CoreError> {
    match string(args, "x-queue-mode")?.as_deref() {
        // Bodies beyond a queue's resident budget are paged out either way.
        None | Some("default" | "lazy") => {}
        Some(other) => return Err(invalid("x-queue-mode", format!("unknown mode '{other}'"))),
    }
    match non_negative(args, "x-queue-version")? {
        None | Some(1 | 2) => {}
        Some(v) => return Err(invalid("x-queue-version", format!("unknown version {v}"))),
    }
    for placement in ["x-queue-master-locator", "x-queue-leader-locator"] {
        string(args, placement)?;
    }
    for count in [
        "x-quorum-initial-group-size",
        "x-max-in-memory-length",
        "x-max-in-memory-bytes",
    ] {
        non_negative(args, count)?;
    }
    match string(args, "x-dead-letter-strategy")?.as_deref() {
        None | Some("at-most-once") => Ok(()),
        Some("at-least-once") => Err(invalid(
            "x-dead-letter-strategy",
            "at-least-once dead-lettering is not supported",
        )),
        Some(other) => Err(invalid(
            "x-dead-letter-strategy",
            format!("unknown strategy '{other}'"),
        )),
    }
}

impl QueueConfig {
    /// The arguments of a declare: every argument a client may rely on is checked.
    pub fn parse(args: &Table) -> Result<Self, CoreError> {
        if let Some((name, why)) = UNSUPPORTED
            .iter()
            .find(|(name, _)| args.contains_key(*name))
        {
            return Err(invalid(name, *why));
        }
        check_hints(args)?;
        // Dead letters are republished to this exchange with this key, and neither may be
        // longer than an AMQP short string; recovered queues keep whatever they were given.
        for name in ["x-dead-letter-exchange", "x-dead-letter-routing-key"] {
            if let Some(len) = string(args, name)?
                .map(|s| s.len())
                .filter(|&l| l > MAX_KEY_BYTES)
            {
                return Err(invalid(
                    name,
                    format!("{len} bytes is longer than {MAX_KEY_BYTES}"),
                ));
            }
        }
        match string(args, "x-queue-type")?.as_deref() {
            None | Some("classic" | "quorum" | "stream") => {}
            Some(other) => {
                return Err(invalid(
                    "x-queue-type",
                    format!("unknown queue type '{other}'"),
                ))
            }
        }
        Self::read(args)
    }

    /// The arguments of a queue that already exists (recovered from the store): what it does
    /// is read from them, and arguments a declare would refuse today do not lose the queue.
    pub(crate) fn read(args: &Table) -> Result<Self, CoreError> {
        let queue_type = match args.get("x-queue-type").and_then(Value::as_str) {
            Some("quorum") => QueueType::Quorum,
            Some("stream") => QueueType::Stream,
            _ => QueueType::Classic,
        };
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
            queue_type,
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
    fn queue_types_and_arguments_a_classic_queue_cannot_honour() {
        let typed = |t: &str| QueueConfig::parse(&args(&[("x-queue-type", Value::Str(t.into()))]));
        assert_eq!(
            typed("classic").expect("classic").queue_type,
            QueueType::Classic
        );
        assert_eq!(
            typed("quorum").expect("parsed").queue_type,
            QueueType::Quorum
        );
        assert!(typed("mirrored").is_err());
        let delivery_limit = args(&[("x-delivery-limit", Value::I32(3))]);
        assert!(QueueConfig::parse(&delivery_limit).is_err());
        // A queue stored with it before it was refused still comes back.
        assert!(QueueConfig::read(&delivery_limit).is_ok());
        assert!(QueueConfig::parse(&args(&[("x-queue-mode", Value::Str("lazy".into()))])).is_ok());
        assert!(QueueConfig::parse(&args(&[("x-queue-version", Value::I32(3))])).is_err());
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

    #[test]
    fn dead_letter_names_past_a_short_string_are_refused() {
        for name in ["x-dead-letter-exchange", "x-dead-letter-routing-key"] {
            let with = |len: usize| {
                let mut a = args(&[("x-dead-letter-exchange", Value::Str("dlx".into()))]);
                a.insert(name.into(), Value::Str("d".repeat(len)));
                QueueConfig::parse(&a)
            };
            assert!(with(MAX_KEY_BYTES).is_ok(), "{name}");
            let err = with(MAX_KEY_BYTES + 1).expect_err(name);
            assert_eq!(
                err.to_string(),
                format!("PRECONDITION_FAILED - invalid arg '{name}': 256 bytes is longer than 255"),
            );
        }
    }
}
