//! MQTT topics onto AMQP routing keys, and MQTT's own filter matching.
//!
//! A topic `a/b/c` becomes routing key `a.b.c` on `amq.topic`, and a filter `a/+/#` becomes binding
//! key `a.*.#`, as RabbitMQ does, so AMQP and MQTT clients meet on the same exchange. Unlike
//! RabbitMQ, a topic level may contain `.`: each level is escaped before the levels are joined,
//! `%` as `%25`, `.` as `%2E` and `*` as `%2A` (a literal `*` is a valid MQTT level but an AMQP
//! wildcard). The mapping is therefore one-to-one and every topic survives the round trip;
//! topics without those three characters map exactly as in RabbitMQ. In the other direction an
//! AMQP word is unescaped, and a `/` inside a word (impossible from MQTT) becomes a level
//! separator.

/// Prefix of a shared subscription's filter (MQTT 5.0 §4.8.2).
pub const SHARE_PREFIX: &str = "$share/";

fn escape_level(level: &str, out: &mut String) {
    for c in level.chars() {
        match c {
            '%' => out.push_str("%25"),
            '.' => out.push_str("%2E"),
            '*' => out.push_str("%2A"),
            c => out.push(c),
        }
    }
}

fn unescape_word(word: &str, out: &mut String) {
    let mut rest = word;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let code = rest.get(pos + 1..pos + 3);
        let decoded = match code.map(str::to_ascii_uppercase).as_deref() {
            Some("25") => Some('%'),
            Some("2E") => Some('.'),
            Some("2A") => Some('*'),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[pos + 3..];
            }
            // Not one of our escapes (an AMQP publisher's own `%`): kept as written.
            None => {
                out.push('%');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
}

/// The routing key for an MQTT topic name.
pub fn topic_to_key(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len() + 8);
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        escape_level(level, &mut out);
    }
    out
}

/// The MQTT topic name for a routing key.
pub fn key_to_topic(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for (i, word) in key.split('.').enumerate() {
        if i > 0 {
            out.push('/');
        }
        unescape_word(word, &mut out);
    }
    out
}

/// The binding key for an MQTT topic filter (without any `$share/group/` prefix).
pub fn filter_to_binding(filter: &str) -> String {
    let mut out = String::with_capacity(filter.len() + 8);
    for (i, level) in filter.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        match level {
            "+" => out.push('*'),
            "#" => out.push('#'),
            literal => escape_level(literal, &mut out),
        }
    }
    out
}

/// Whether `filter` matches `topic` by MQTT's rules (MQTT 5.0 §4.7), including that a filter
/// starting with a wildcard does not match a topic starting with `$` ([MQTT-4.7.2-1]). The core's
/// AMQP matcher does not know that rule, so sessions apply this to every delivery.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        match f {
            // `#` also matches the parent level: `a/#` matches `a` ([MQTT-4.7.1-2]).
            "#" => return true,
            "+" => {
                if levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

/// A subscription's filter: plain, or shared by a group of sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    /// The share name of a `$share/{name}/{filter}` subscription.
    pub group: Option<&'a str>,
    /// The filter messages are matched against.
    pub filter: &'a str,
}

/// Splits a shared subscription's filter. The share name must be non-empty and hold no `/`,
/// `+` or `#`, and a filter must follow ([MQTT-4.8.2-1], [MQTT-4.8.2-2]).
pub fn parse_filter(full: &str) -> Option<ParsedFilter<'_>> {
    let Some(rest) = full.strip_prefix(SHARE_PREFIX) else {
        return Some(ParsedFilter {
            group: None,
            filter: full,
        });
    };
    let (group, filter) = rest.split_once('/')?;
    if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
        return None;
    }
    Some(ParsedFilter {
        group: Some(group),
        filter,
    })
}

/// Prefix of every session's queue (RabbitMQ's naming, so operators recognise it).
pub const SESSION_QUEUE_PREFIX: &str = "mqtt-subscription-";
/// Prefix of every shared subscription's queue.
pub const SHARED_QUEUE_PREFIX: &str = "mqtt-shared-";

/// The queue of a session.
pub fn session_queue(client_id: &str) -> String {
    format!("{SESSION_QUEUE_PREFIX}{client_id}")
}

/// The queue a shared subscription's members consume from. A share name holds no `/`, so the
/// first `/` after the prefix separates it from the filter and no two subscriptions collide.
pub fn shared_queue(group: &str, filter: &str) -> String {
    format!("{SHARED_QUEUE_PREFIX}{group}/{filter}")
}

/// The queue of a subscription if it is a shared one (`$share/{group}/{filter}`).
pub fn shared_queue_of(subscription: &str) -> Option<String> {
    match parse_filter(subscription)? {
        ParsedFilter {
            group: Some(group),
            filter,
        } => Some(shared_queue(group, filter)),
        ParsedFilter { group: None, .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_map_to_dotted_keys_as_rabbitmq_does() {
        assert_eq!(topic_to_key("a/b/c"), "a.b.c");
        assert_eq!(topic_to_key("/a//b/"), ".a..b.");
        assert_eq!(key_to_topic("x.y"), "x/y");
        assert_eq!(filter_to_binding("a/+/#"), "a.*.#");
        assert_eq!(filter_to_binding("#"), "#");
        assert_eq!(filter_to_binding("+/+"), "*.*");
    }

    #[test]
    fn dots_stars_and_percents_in_levels_survive_the_round_trip() {
        for topic in [
            "v1.2/x",
            "a*b/c",
            "100%/25%2E",
            "a.b.c",
            "$SYS/broker/load",
            "%",
            "%2",
        ] {
            let key = topic_to_key(topic);
            assert_eq!(key_to_topic(&key), topic, "key {key}");
        }
        assert_eq!(topic_to_key("v1.2/x"), "v1%2E2.x");
        assert_eq!(filter_to_binding("v1.2/+"), "v1%2E2.*");
        assert_eq!(filter_to_binding("a*b/#"), "a%2Ab.#");
    }

    #[test]
    fn amqp_keys_with_foreign_percents_and_slashes_still_map() {
        assert_eq!(key_to_topic("a%zz.b"), "a%zz/b");
        assert_eq!(key_to_topic("a/b.c"), "a/b/c");
        assert_eq!(key_to_topic("v1%2e2"), "v1.2");
    }

    #[test]
    fn filters_match_like_mqtt() {
        assert!(matches("a/b/c", "a/b/c"));
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(matches("+", ""));
        assert!(matches("+/+", "/x"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
    }

    #[test]
    fn leading_wildcards_do_not_match_dollar_topics() {
        assert!(!matches("#", "$SYS/load"));
        assert!(!matches("+/load", "$SYS/load"));
        assert!(matches("$SYS/#", "$SYS/load"));
        assert!(matches("$SYS/+", "$SYS/load"));
    }

    #[test]
    fn shared_filters_split_into_group_and_filter() {
        assert_eq!(
            parse_filter("a/b"),
            Some(ParsedFilter {
                group: None,
                filter: "a/b"
            })
        );
        assert_eq!(
            parse_filter("$share/g/a/#"),
            Some(ParsedFilter {
                group: Some("g"),
                filter: "a/#"
            })
        );
        assert_eq!(parse_filter("$share//a"), None);
        assert_eq!(parse_filter("$share/g"), None);
        assert_eq!(parse_filter("$share/g+/a"), None);
        assert_eq!(parse_filter("$share/g/"), None);
    }
}
