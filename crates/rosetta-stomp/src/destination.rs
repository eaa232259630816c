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

use std::fmt;

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

/// The segments after a destination kind's prefix, as RabbitMQ quotes them in "is not a valid
/// destination" errors: each preceded by a slash, nothing for none.
fn quoted(rest: &[&str]) -> String {
    rest.iter().map(|s| format!("/{s}")).collect()
}

/// A segment with `%2F` turned into the `/` it stands for: a literal slash would start a new
/// segment (RabbitMQ's escaping; no other escape is decoded).
fn unescape(segment: &str) -> String {
    segment.replace("%2F", "/")
}

/// Writes `name` with the escaping RabbitMQ applies in a MESSAGE's `destination`: `/` and
/// `%`, and bytes outside printable ASCII, as `%XX`, so the name stays one segment.
fn write_escaped(f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
    // Bytes that need no escape are printable ASCII: a run of them starts and ends on char
    // boundaries, so it is written as text whole.
    let mut run = 0;
    for (i, b) in name.bytes().enumerate() {
        if matches!(b, b'/' | b'%') || !(32..=127).contains(&b) {
            if run < i {
                f.write_str(&name[run..i])?;
            }
            write!(f, "%{b:02X}")?;
            run = i + 1;
        }
    }
    if run < name.len() {
        f.write_str(&name[run..])?;
    }
    Ok(())
}

/// The destination a MESSAGE frame names, written out when displayed: see
/// [`Destination::of_message`].
pub struct MessageDestination<'a> {
    exchange: &'a str,
    routing_key: &'a str,
}

impl fmt::Display for MessageDestination<'_> {
    /// Piece by piece rather than through a format string: a MESSAGE frame writes one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.exchange, self.routing_key) {
            ("", key) => {
                f.write_str("/queue/")?;
                write_escaped(f, key)
            }
            (AMQ_TOPIC, key) => {
                f.write_str("/topic/")?;
                write_escaped(f, key)
            }
            (x, "") => {
                f.write_str("/exchange/")?;
                write_escaped(f, x)
            }
            (x, key) => {
                f.write_str("/exchange/")?;
                write_escaped(f, x)?;
                f.write_str("/")?;
                write_escaped(f, key)
            }
        }
    }
}

impl Destination {
    /// Parses a `destination` header as RabbitMQ's plugin does: split on every `/`, so a queue,
    /// topic, temporary or `/amq/queue/` name is exactly one segment and an exchange
    /// destination at most two (name and key); a `/` inside a name is written `%2F`. A bare
    /// name without any slash is a queue.
    pub fn parse(text: &str) -> Result<Destination, StompError> {
        // Every destination a SEND names in the usual forms has at most four segments: those
        // stay on the stack, and only longer ones are gathered in a vector.
        let mut inline = [""; 4];
        let mut parts = text.split('/');
        let mut n = 0;
        for (slot, segment) in inline.iter_mut().zip(&mut parts) {
            *slot = segment;
            n += 1;
        }
        let spilled: Vec<&str>;
        let segments = match parts.next() {
            None => &inline[..n],
            Some(more) => {
                spilled = inline.into_iter().chain([more]).chain(parts).collect();
                &spilled[..]
            }
        };
        match segments {
            [""] => Err(StompError::BlankDestination),
            [name] => one_name("queue name", name).map(Destination::Queue),
            ["", "queue", rest @ ..] => single("queue", "queue name", rest).map(Destination::Queue),
            ["", "topic", rest @ ..] => {
                single("topic", "routing key", rest).map(Destination::Topic)
            }
            ["", "amq", "queue", rest @ ..] => {
                single("amqqueue", "queue name", rest).map(Destination::AmqQueue)
            }
            // The temporary queue's own name is the server's, but the client's part names it in
            // MESSAGE frames and reply-to headers, so it is held to the same bound.
            ["", "temp-queue", rest @ ..] => {
                single("temp_queue", "temporary queue name", rest).map(Destination::TempQueue)
            }
            // A reply queue is named by the server that made it, slashes and all.
            ["", "reply-queue", _, ..] => match &text["/reply-queue/".len()..] {
                "" => Err(StompError::InvalidDestination {
                    kind: "reply_queue",
                    rest: "/".to_owned(),
                }),
                name => one_name("queue name", name).map(Destination::ReplyQueue),
            },
            ["", "exchange", rest @ ..] => match rest {
                [name] if !name.is_empty() => Ok(Destination::Exchange {
                    name: one_name("exchange name", name)?,
                    key: String::new(),
                }),
                [name, key] if !name.is_empty() => {
                    let key = unescape(key);
                    bounded("routing key", &key)?;
                    Ok(Destination::Exchange {
                        name: one_name("exchange name", name)?,
                        key,
                    })
                }
                _ => Err(StompError::InvalidDestination {
                    kind: "exchange",
                    rest: quoted(rest),
                }),
            },
            _ => Err(StompError::UnknownDestination(text.to_owned())),
        }
    }

    /// The destination a MESSAGE frame names for a message published to `exchange` with
    /// `routing_key`, whichever protocol published it (RabbitMQ's rule, escaping included). An
    /// empty key on another exchange gives `/exchange/<x>`, the form a SEND without a key uses,
    /// so a client sees the destination it sent to.
    pub fn of_message<'a>(exchange: &'a str, routing_key: &'a str) -> MessageDestination<'a> {
        MessageDestination {
            exchange,
            routing_key,
        }
    }
}

/// A name of one segment, decoded and bounded.
fn one_name(what: &'static str, segment: &str) -> Result<String, StompError> {
    let name = unescape(segment);
    bounded(what, &name)?;
    Ok(name)
}

/// The one non-empty segment a destination of `kind` takes after its prefix.
fn single(kind: &'static str, what: &'static str, rest: &[&str]) -> Result<String, StompError> {
    match rest {
        [name] if !name.is_empty() => one_name(what, name),
        _ => Err(StompError::InvalidDestination {
            kind,
            rest: quoted(rest),
        }),
    }
}

/// Prefix of every durable subscription's queue (RabbitMQ's naming). A name only: whether a
/// queue is STOMP's is told by its owner (see `owner`).
pub const DURABLE_SUBSCRIPTION_PREFIX: &str = "stomp-subscription-";

/// The queue behind a durable topic or exchange subscription, named as RabbitMQ's plugin names
/// it in its 3.x to 4.1 releases: the prefix, then the MD5 of the Erlang external term
/// `{Key, Id}` in unpadded URL-safe base64, where the key (after `%2F` decoding) and the id are
/// Erlang strings of the header's bytes, as that plugin's frame parser keeps header values. The
/// same key and id always give the same queue, so a client reconnecting finds the messages that
/// arrived meanwhile, and a queue made by RabbitMQ for the same subscription (say, from exported
/// definitions) is the one used here; the same id on another key is another queue.
pub fn durable_subscription_queue(key: &str, id: &str) -> String {
    use base64::Engine as _;
    use md5::Digest as _;
    // term_to_binary({Key, Id}): version 131, SMALL_TUPLE_EXT of arity 2, then each string.
    let mut term = vec![131, 104, 2];
    for part in [key, id] {
        erlang_string(&mut term, part.as_bytes());
    }
    let digest = md5::Md5::digest(&term);
    format!(
        "{DURABLE_SUBSCRIPTION_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

/// A list of bytes in Erlang's external term format, as `term_to_binary` writes it: NIL_EXT
/// when empty, STRING_EXT (16-bit length) up to 65535 bytes, a LIST_EXT of SMALL_INTEGER_EXT
/// elements beyond.
fn erlang_string(term: &mut Vec<u8>, bytes: &[u8]) {
    match u16::try_from(bytes.len()) {
        Ok(0) => term.push(106),
        Ok(len) => {
            term.push(107);
            term.extend_from_slice(&len.to_be_bytes());
            term.extend_from_slice(bytes);
        }
        Err(_) => {
            term.push(108);
            term.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            for &b in bytes {
                term.extend_from_slice(&[97, b]);
            }
            term.push(106);
        }
    }
}

/// The name this server gave a durable subscription's queue before it named them as RabbitMQ
/// does: from the connection's `client-id`, if any, and the subscription id. Such queues are
/// still found, so subscriptions made then keep their messages across the upgrade.
pub fn legacy_durable_subscription_queue(client_id: Option<&str>, id: &str) -> String {
    match client_id {
        Some(c) => format!("{DURABLE_SUBSCRIPTION_PREFIX}{c}-{id}"),
        None => format!("{DURABLE_SUBSCRIPTION_PREFIX}{id}"),
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
            Destination::parse("/exchange/x/k%2Fwith%2Fslashes"),
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
            Destination::parse("/reply-queue/amq.gen-x/y"),
            Ok(Destination::ReplyQueue("amq.gen-x/y".into()))
        );
        assert_eq!(
            Destination::parse("/queue/a%2Fb"),
            Ok(Destination::Queue("a/b".into()))
        );
        assert_eq!(
            Destination::parse("bare"),
            Ok(Destination::Queue("bare".into()))
        );
    }

    #[test]
    fn extra_or_empty_segments_are_invalid_as_rabbitmq_quotes_them() {
        let invalid = |kind: &'static str, rest: &str| {
            Err(StompError::InvalidDestination {
                kind,
                rest: rest.to_owned(),
            })
        };
        assert_eq!(Destination::parse("/queue/a/b"), invalid("queue", "/a/b"));
        assert_eq!(Destination::parse("/queue/"), invalid("queue", "/"));
        assert_eq!(Destination::parse("/queue"), invalid("queue", ""));
        assert_eq!(Destination::parse("/topic/a/b"), invalid("topic", "/a/b"));
        assert_eq!(
            Destination::parse("/exchange/x/k/z"),
            invalid("exchange", "/x/k/z")
        );
        assert_eq!(Destination::parse("/exchange/"), invalid("exchange", "/"));
        assert_eq!(
            Destination::parse("/amq/queue/a/b"),
            invalid("amqqueue", "/a/b")
        );
        assert_eq!(
            Destination::parse("/temp-queue/a/b"),
            invalid("temp_queue", "/a/b")
        );
        assert_eq!(Destination::parse(""), Err(StompError::BlankDestination));
        for unknown in ["queue/a", "/nope/a", "/reply-queue"] {
            assert_eq!(
                Destination::parse(unknown),
                Err(StompError::UnknownDestination(unknown.into()))
            );
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
    }

    #[test]
    fn message_destination_follows_the_exchange_and_escapes_names() {
        assert_eq!(Destination::of_message("", "q").to_string(), "/queue/q");
        assert_eq!(
            Destination::of_message("amq.topic", "a.b").to_string(),
            "/topic/a.b"
        );
        assert_eq!(
            Destination::of_message("x", "k").to_string(),
            "/exchange/x/k"
        );
        assert_eq!(
            Destination::of_message("amq.fanout", "").to_string(),
            "/exchange/amq.fanout"
        );
        assert_eq!(
            Destination::of_message("", "a/b%c").to_string(),
            "/queue/a%2Fb%25c"
        );
        assert_eq!(
            Destination::of_message("", "é").to_string(),
            "/queue/%C3%A9"
        );
    }

    #[test]
    fn durable_subscription_queues_are_named_as_rabbitmq_names_them() {
        // Erlang/OTP's base64:encode(erlang:md5(term_to_binary({Key, Id}))) for these strings
        // ("" is NIL_EXT, a non-ASCII key is its UTF-8 bytes).
        for (key, id, hash) in [
            ("a.b", "sub-1", "e6Xjufs-rtPy9mbcqlG1tg"),
            ("", "sub-1", "0boHRiIfbeDsqf_dc4kNsA"),
            ("a.b", "", "SPYhl-wZ5RnQOqFf5i7oFw"),
            ("k/with/slashes", "s", "j9vE7CtaetW6_bqkxLYg1A"),
            ("\u{e9}", "s", "AzDrgDrtJ1F6WW_iUxYiHA"),
        ] {
            assert_eq!(
                durable_subscription_queue(key, id),
                format!("stomp-subscription-{hash}"),
                "{key:?} {id:?}"
            );
        }
        let name = durable_subscription_queue("a.b", "sub-1");
        assert_ne!(name, durable_subscription_queue("a.c", "sub-1"));
        assert_ne!(name, durable_subscription_queue("a.b", "sub-2"));
        // The key and id are length-prefixed, so moving bytes between them is another term.
        assert_ne!(
            durable_subscription_queue("ab", "c"),
            durable_subscription_queue("a", "bc")
        );
    }

    #[test]
    fn long_ids_are_erlang_lists_past_a_string_ext() {
        let mut term = Vec::new();
        erlang_string(&mut term, &[7; 65_536]);
        assert_eq!(&term[..5], &[108, 0, 1, 0, 0]);
        assert_eq!(&term[5..7], &[97, 7]);
        assert_eq!(term.last(), Some(&106));
        assert_eq!(term.len(), 5 + 2 * 65_536 + 1);
    }
}
