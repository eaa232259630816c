//! STOMP destinations as RabbitMQ's STOMP plugin defines them, so clients move over unchanged.
//!
//! | destination            | SEND goes to                    | SUBSCRIBE reads from                         |
//! |------------------------|---------------------------------|----------------------------------------------|
//! | `/queue/q`             | default exchange, key `q`       | durable shared queue `q`, declared on demand |
//! | `/topic/k`             | `amq.topic`, key `k`            | a new exclusive queue bound with `k` (or a durable one for a durable subscription) |
//! | `/exchange/x/k`        | exchange `x`, key `k`           | a new exclusive queue bound to `x` with `k`  |
//! | `/amq/queue/q`         | default exchange, key `q`       | existing queue `q` (never declared)          |
//! | `/temp-queue/t`        | this connection's private queue for `t` | the same private queue               |
//! | `/reply-queue/q`       | default exchange, key `q`       | existing queue `q`                           |

use crate::error::StompError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Queue(String),
    Topic(String),
    Exchange { name: String, key: String },
    AmqQueue(String),
    TempQueue(String),
    ReplyQueue(String),
}

/// The exchange the `/topic/` destinations use.
pub const TOPIC_EXCHANGE: &str = "amq.topic";

impl Destination {
    pub fn parse(text: &str) -> Result<Destination, StompError> {
        let bad = || StompError::BadDestination(text.to_owned());
        let non_empty = |s: &str| {
            if s.is_empty() {
                Err(bad())
            } else {
                Ok(s.to_owned())
            }
        };
        if let Some(q) = text.strip_prefix("/queue/") {
            return non_empty(q).map(Destination::Queue);
        }
        if let Some(k) = text.strip_prefix("/topic/") {
            return non_empty(k).map(Destination::Topic);
        }
        if let Some(rest) = text.strip_prefix("/exchange/") {
            // The key may itself hold slashes; the exchange name ends at the first one.
            let (name, key) = rest.split_once('/').unwrap_or((rest, ""));
            return Ok(Destination::Exchange {
                name: non_empty(name)?,
                key: key.to_owned(),
            });
        }
        if let Some(q) = text.strip_prefix("/amq/queue/") {
            return non_empty(q).map(Destination::AmqQueue);
        }
        if let Some(t) = text.strip_prefix("/temp-queue/") {
            return non_empty(t).map(Destination::TempQueue);
        }
        if let Some(q) = text.strip_prefix("/reply-queue/") {
            return non_empty(q).map(Destination::ReplyQueue);
        }
        Err(bad())
    }

    /// The destination a MESSAGE frame names for a message published to `exchange` with
    /// `routing_key`, whichever protocol published it (RabbitMQ's rule).
    pub fn of_message(exchange: &str, routing_key: &str) -> String {
        match exchange {
            "" => format!("/queue/{routing_key}"),
            TOPIC_EXCHANGE => format!("/topic/{routing_key}"),
            x => format!("/exchange/{x}/{routing_key}"),
        }
    }
}

/// The queue behind a durable topic subscription: derived from the subscription id (and the
/// `client-id` the client connected with, when it gave one), so reconnecting with the same id
/// finds the messages that arrived meanwhile.
pub fn durable_subscription_queue(client_id: Option<&str>, id: &str) -> String {
    match client_id {
        Some(c) => format!("stomp-subscription-{c}-{id}"),
        None => format!("stomp-subscription-{id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rabbitmq_destination_form_parses() {
        assert_eq!(
            Destination::parse("/queue/a"),
            Ok(Destination::Queue("a".into()))
        );
        assert_eq!(
            Destination::parse("/topic/a.b.#"),
            Ok(Destination::Topic("a.b.#".into()))
        );
        assert_eq!(
            Destination::parse("/exchange/x/k/with/slashes"),
            Ok(Destination::Exchange {
                name: "x".into(),
                key: "k/with/slashes".into()
            })
        );
        assert_eq!(
            Destination::parse("/exchange/amq.fanout"),
            Ok(Destination::Exchange {
                name: "amq.fanout".into(),
                key: String::new()
            })
        );
        assert_eq!(
            Destination::parse("/amq/queue/q"),
            Ok(Destination::AmqQueue("q".into()))
        );
        assert_eq!(
            Destination::parse("/temp-queue/t"),
            Ok(Destination::TempQueue("t".into()))
        );
        assert_eq!(
            Destination::parse("/reply-queue/amq.gen-x"),
            Ok(Destination::ReplyQueue("amq.gen-x".into()))
        );
    }

    #[test]
    fn unknown_and_empty_destinations_are_refused() {
        for bad in ["queue/a", "/queue/", "/topic/", "/exchange/", "/nope/a", ""] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn message_destination_follows_the_exchange() {
        assert_eq!(Destination::of_message("", "q"), "/queue/q");
        assert_eq!(Destination::of_message("amq.topic", "a.b"), "/topic/a.b");
        assert_eq!(Destination::of_message("x", "k"), "/exchange/x/k");
    }
}
