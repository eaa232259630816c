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

use rosetta_core::AMQ_TOPIC;

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

/// Longest exchange name, queue name or routing key: an AMQP 0-9-1 short string (§4.2.5.3)
/// carries them to AMQP consumers, and RabbitMQ refuses longer ones.
pub const NAME_MAX: usize = 255;

/// Refuses a name or key that no AMQP peer could be told.
pub fn bounded(what: &'static str, name: &str) -> Result<(), StompError> {
    if name.len() > NAME_MAX {
        return Err(StompError::NameTooLong {
            what,
            len: name.len(),
        });
    }
    Ok(())
}

impl Destination {
    pub fn parse(text: &str) -> Result<Destination, StompError> {
        let bad = || StompError::BadDestination(text.to_owned());
        let name = |what: &'static str, s: &str| {
            if s.is_empty() {
                return Err(bad());
            }
            bounded(what, s)?;
            Ok(s.to_owned())
        };
        if let Some(q) = text.strip_prefix("/queue/") {
            return name("queue name", q).map(Destination::Queue);
        }
        if let Some(k) = text.strip_prefix("/topic/") {
            return name("routing key", k).map(Destination::Topic);
        }
        if let Some(rest) = text.strip_prefix("/exchange/") {
            // The key may itself hold slashes; the exchange name ends at the first one.
            let (exchange, key) = rest.split_once('/').unwrap_or((rest, ""));
            bounded("routing key", key)?;
            return Ok(Destination::Exchange {
                name: name("exchange name", exchange)?,
                key: key.to_owned(),
            });
        }
        if let Some(q) = text.strip_prefix("/amq/queue/") {
            return name("queue name", q).map(Destination::AmqQueue);
        }
        // The temporary queue's own name is the server's, but the client's part names it in
        // MESSAGE frames and reply-to headers, so it is held to the same bound.
        if let Some(t) = text.strip_prefix("/temp-queue/") {
            return name("temporary queue name", t).map(Destination::TempQueue);
        }
        if let Some(q) = text.strip_prefix("/reply-queue/") {
            return name("queue name", q).map(Destination::ReplyQueue);
        }
        Err(bad())
    }

    /// The destination a MESSAGE frame names for a message published to `exchange` with
    /// `routing_key`, whichever protocol published it (RabbitMQ's rule). An empty key on another
    /// exchange gives `/exchange/<x>`, the form a SEND without a key uses, so a client sees the
    /// destination it sent to.
    pub fn of_message(exchange: &str, routing_key: &str) -> String {
        match (exchange, routing_key) {
            ("", key) => format!("/queue/{key}"),
            (AMQ_TOPIC, key) => format!("/topic/{key}"),
            (x, "") => format!("/exchange/{x}"),
            (x, key) => format!("/exchange/{x}/{key}"),
        }
    }
}

/// Prefix of every durable subscription's queue (RabbitMQ's naming). A name only: whether a
/// queue is STOMP's is told by its owner (see `owner`).
pub const DURABLE_SUBSCRIPTION_PREFIX: &str = "stomp-subscription-";

/// The queue behind a durable topic subscription: derived from the subscription id (and the
/// `client-id` the client connected with, when it gave one), so reconnecting with the same id
/// finds the messages that arrived meanwhile. Refused when the name would be too long for a
/// queue name.
pub fn durable_subscription_queue(client_id: Option<&str>, id: &str) -> Result<String, StompError> {
    let name = match client_id {
        Some(c) => format!("{DURABLE_SUBSCRIPTION_PREFIX}{c}-{id}"),
        None => format!("{DURABLE_SUBSCRIPTION_PREFIX}{id}"),
    };
    bounded("durable subscription queue name", &name)?;
    Ok(name)
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
    fn names_and_keys_past_a_short_string_are_refused() {
        let max = "q".repeat(NAME_MAX);
        let over = "q".repeat(NAME_MAX + 1);
        for prefix in [
            "/queue/",
            "/topic/",
            "/amq/queue/",
            "/temp-queue/",
            "/reply-queue/",
        ] {
            assert!(
                Destination::parse(&format!("{prefix}{max}")).is_ok(),
                "{prefix}"
            );
            assert!(
                matches!(
                    Destination::parse(&format!("{prefix}{over}")),
                    Err(StompError::NameTooLong { len: 256, .. })
                ),
                "{prefix}"
            );
        }
        assert!(Destination::parse(&format!("/exchange/{max}/{max}")).is_ok());
        assert!(Destination::parse(&format!("/exchange/{over}/k")).is_err());
        assert!(Destination::parse(&format!("/exchange/x/{over}")).is_err());
        assert!(durable_subscription_queue(Some("c"), &"i".repeat(200)).is_ok());
        assert!(durable_subscription_queue(Some(&"c".repeat(100)), &"i".repeat(200)).is_err());
    }

    #[test]
    fn message_destination_follows_the_exchange() {
        assert_eq!(Destination::of_message("", "q"), "/queue/q");
        assert_eq!(Destination::of_message("amq.topic", "a.b"), "/topic/a.b");
        assert_eq!(Destination::of_message("x", "k"), "/exchange/x/k");
        assert_eq!(
            Destination::of_message("amq.fanout", ""),
            "/exchange/amq.fanout"
        );
    }
}
