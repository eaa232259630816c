//! Dead-lettering: a message leaving a queue by rejection, expiry or overflow is republished to
//! the queue's dead-letter exchange with an `x-death` history, written as RabbitMQ writes it so
//! that clients reading that header keep working.

use std::sync::Arc;

use crate::message::{Message, Table, Value};
use crate::queue::now_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    MaxLen,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
        }
    }
}

#[derive(Debug)]
pub struct DeadLetter {
    pub message: Arc<Message>,
    pub reason: DeathReason,
}

fn text(s: &str) -> Value {
    Value::Str(s.to_owned())
}

/// Builds the message to republish: same body and properties, `x-death` updated, routed with
/// the queue's dead-letter routing key or else the original one.
pub fn dead_lettered_message(
    original: &Message,
    queue: &str,
    reason: DeathReason,
    dlx: &str,
    routing_key: Option<&str>,
) -> Message {
    let mut properties = original.properties.clone();
    let mut headers = properties.headers.take().unwrap_or_default();
    let mut deaths = match headers.remove("x-death") {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    let same = |t: &Table| {
        t.get("queue").and_then(Value::as_str) == Some(queue)
            && t.get("reason").and_then(Value::as_str) == Some(reason.as_str())
    };
    let existing = deaths
        .iter()
        .position(|d| matches!(d, Value::Table(t) if same(t)));
    let mut entry = match existing.map(|i| deaths.remove(i)) {
        Some(Value::Table(mut t)) => {
            let count = t.get("count").and_then(Value::as_i64).unwrap_or(0) + 1;
            t.insert("count".into(), Value::I64(count));
            t
        }
        _ => {
            let mut t = Table::new();
            t.insert("count".into(), Value::I64(1));
            t.insert("reason".into(), text(reason.as_str()));
            t.insert("queue".into(), text(queue));
            t.insert("exchange".into(), text(&original.exchange));
            t.insert(
                "routing-keys".into(),
                Value::Array(vec![text(&original.routing_key)]),
            );
            t
        }
    };
    entry.insert("time".into(), Value::Timestamp(now_ms() / 1000));
    // An expired message must not expire again at its next queue (RabbitMQ moves the value).
    if reason == DeathReason::Expired {
        if let Some(exp) = properties.expiration.take() {
            entry.insert("original-expiration".into(), text(&exp));
        }
    }
    deaths.insert(0, Value::Table(entry));
    headers.insert("x-death".into(), Value::Array(deaths));
    headers
        .entry("x-first-death-reason".into())
        .or_insert_with(|| text(reason.as_str()));
    headers
        .entry("x-first-death-queue".into())
        .or_insert_with(|| text(queue));
    headers
        .entry("x-first-death-exchange".into())
        .or_insert_with(|| text(&original.exchange));
    headers.insert("x-last-death-reason".into(), text(reason.as_str()));
    headers.insert("x-last-death-queue".into(), text(queue));
    headers.insert("x-last-death-exchange".into(), text(&original.exchange));
    properties.headers = Some(headers);
    Message::new(
        dlx.to_owned(),
        routing_key.unwrap_or(&original.routing_key),
        properties,
        original.body.clone(),
    )
}

/// The queues a dead-lettered message died in, newest first, read from its `x-death` header.
#[derive(Debug, Default)]
pub struct DeathHistory {
    /// (queue, whether a client rejected it there)
    deaths: Vec<(String, bool)>,
}

impl DeathHistory {
    pub fn of(message: &Message) -> Self {
        let deaths = match message
            .properties
            .headers
            .as_ref()
            .and_then(|h| h.get("x-death"))
        {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|d| match d {
                    Value::Table(t) => Some((
                        t.get("queue").and_then(Value::as_str)?.to_owned(),
                        t.get("reason").and_then(Value::as_str)
                            == Some(DeathReason::Rejected.as_str()),
                    )),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        DeathHistory { deaths }
    }

    /// RabbitMQ's cycle rule: going into `queue` again is a cycle when the message already died
    /// there and no death since then, that one included, was a client's rejection. Such a
    /// cycle would repeat forever with nobody acting on it; a rejection means a consumer is in
    /// the loop and may stop it.
    pub fn is_cycle_into(&self, queue: &str) -> bool {
        for (q, rejected) in &self.deaths {
            if *rejected {
                return false;
            }
            if q == queue {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Properties;

    #[test]
    fn first_death_creates_history_and_repeat_counts_up() {
        let props = Properties {
            expiration: Some("100".into()),
            ..Properties::default()
        };
        let m = Message::new("ex", "rk", props, bytes::Bytes::from_static(b"x"));
        let once = dead_lettered_message(&m, "q", DeathReason::Expired, "dlx", None);
        assert_eq!(once.exchange, "dlx");
        assert_eq!(once.routing_key, "rk");
        assert_eq!(once.properties.expiration, None);
        let h = once.properties.headers.clone().unwrap_or_default();
        let Some(Value::Array(d)) = h.get("x-death") else {
            panic!("no x-death")
        };
        let Value::Table(t) = &d[0] else {
            panic!("not a table")
        };
        assert_eq!(t.get("count"), Some(&Value::I64(1)));
        assert_eq!(
            t.get("original-expiration"),
            Some(&Value::Str("100".into()))
        );
        assert_eq!(
            h.get("x-first-death-reason"),
            Some(&Value::Str("expired".into()))
        );

        let mut again = once.clone();
        again.exchange = "ex".into();
        let twice = dead_lettered_message(&again, "q", DeathReason::Expired, "dlx", Some("dead"));
        assert_eq!(twice.routing_key, "dead");
        let h = twice.properties.headers.unwrap_or_default();
        let Some(Value::Array(d)) = h.get("x-death") else {
            panic!("no x-death")
        };
        assert_eq!(d.len(), 1);
        let Value::Table(t) = &d[0] else {
            panic!("not a table")
        };
        assert_eq!(t.get("count"), Some(&Value::I64(2)));
    }

    #[test]
    fn a_cycle_is_automatic_deaths_back_to_the_same_queue() {
        let m = Message::new("ex", "rk", Properties::default(), bytes::Bytes::new());
        let in_a = dead_lettered_message(&m, "a", DeathReason::MaxLen, "dlx", None);
        let in_b = dead_lettered_message(&in_a, "b", DeathReason::Expired, "dlx", None);
        let history = DeathHistory::of(&in_b);
        assert!(history.is_cycle_into("a"));
        assert!(history.is_cycle_into("b"));
        assert!(!history.is_cycle_into("c"));

        let rejected_in_c = dead_lettered_message(&in_b, "c", DeathReason::Rejected, "dlx", None);
        let history = DeathHistory::of(&rejected_in_c);
        assert!(
            !history.is_cycle_into("a"),
            "a rejection since breaks the cycle"
        );
        assert!(!history.is_cycle_into("c"));
    }
}
