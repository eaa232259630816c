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

use rosetta_core::QueueOwner;

/// Prefix of a shared subscription's filter (MQTT 5.0 §4.8.2).
pub const SHARE_PREFIX: &str = "$share/";

/// The first level of the broker's status topics (`$SYS/broker/...`), which only the broker
/// publishes.
pub const SYS_LEVEL: &str = "$SYS";

/// The exchange `$SYS` topics are published on and their filters bind to, rather than
/// `amq.topic`: AMQP queues bound to `amq.topic` with `#` and MQTT sessions subscribed to `#`
/// would otherwise collect the broker's status every interval (and MQTT would drop it at
/// delivery, [MQTT-4.7.2-1]). An AMQP client that wants the status binds a queue here.
pub const SYS_EXCHANGE: &str = "mqtt.sys";

/// Whether a topic name or filter (without `$share/{group}/`) is in the `$SYS` tree.
pub fn is_sys(name: &str) -> bool {
    name.strip_prefix(SYS_LEVEL)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The exchange a topic's messages go through and a filter binds to.
pub fn exchange_for(name: &str) -> &'static str {
    if is_sys(name) {
        SYS_EXCHANGE
    } else {
        rosetta_core::AMQ_TOPIC
    }
}

/// The escape of a byte that may not stand as itself in an AMQP word.
fn escape(b: u8) -> Option<&'static str> {
    match b {
        b'%' => Some("%25"),
        b'.' => Some("%2E"),
        b'*' => Some("%2A"),
        _ => None,
    }
}

/// Appends `text` with every byte `map` replaces replaced. The runs between them are copied
/// whole: topics rarely hold any, and the bytes replaced are ASCII, so a run always ends on a
/// character boundary.
fn push_mapped(text: &str, out: &mut String, map: impl Fn(u8) -> Option<&'static str>) {
    let mut rest = text;
    while let Some((pos, replacement)) = rest
        .bytes()
        .enumerate()
        .find_map(|(i, b)| map(b).map(|r| (i, r)))
    {
        out.push_str(&rest[..pos]);
        out.push_str(replacement);
        rest = &rest[pos + 1..];
    }
    out.push_str(rest);
}

fn escape_level(level: &str, out: &mut String) {
    push_mapped(level, out, escape);
}

/// The character an escape at the start of `code` (the bytes after a `%`) stands for.
fn unescape(code: &[u8]) -> Option<char> {
    match code.get(..2)? {
        b"25" => Some('%'),
        b"2E" | b"2e" => Some('.'),
        b"2A" | b"2a" => Some('*'),
        _ => None,
    }
}

/// The longest routing or binding key: an AMQP short string, which carries keys to AMQP
/// consumers, holds at most 255 bytes (AMQP 0-9-1 §4.2.5.3), and RabbitMQ refuses longer ones.
pub const KEY_MAX: usize = 255;

/// Why the front-end refuses a topic name or filter (without `$share/{group}/`) whose syntax
/// is valid: its key would not fit an AMQP short string, or it is deeper than `max_levels`
/// (0 = no limit). `None` when it is accepted.
pub fn refusal(name: &str, max_levels: usize) -> Option<String> {
    // Every publish is checked, so one pass over the bytes counts both the escaped characters,
    // which take three bytes of key instead of one, and the level separators. A wildcard level
    // maps to one byte.
    let (mut escaped, mut separators) = (0usize, 0usize);
    for b in name.bytes() {
        escaped += usize::from(escape(b).is_some());
        separators += usize::from(b == b'/');
    }
    let len = name.len() + 2 * escaped;
    if len > KEY_MAX {
        return Some(format!(
            "topic maps to a routing key of {len} bytes, more than {KEY_MAX}"
        ));
    }
    let levels = separators + 1;
    if max_levels > 0 && levels > max_levels {
        return Some(format!(
            "topic has {levels} levels, more than the limit of {max_levels}"
        ));
    }
    None
}

/// Whether a filter (without `$share/{group}/`) holds a wildcard.
pub fn has_wildcard(filter: &str) -> bool {
    filter.split('/').any(|level| level == "+" || level == "#")
}

/// The topics a filter can match all start with this text: its levels up to the first
/// wildcard, without the separator after them (`a/#` also matches `a`).
pub fn literal_prefix(filter: &str) -> &str {
    let mut end = 0usize;
    for level in filter.split('/') {
        if level == "+" || level == "#" {
            return &filter[..end.saturating_sub(1)];
        }
        end += level.len() + 1;
    }
    filter
}

/// The routing key for an MQTT topic name.
pub fn topic_to_key(topic: &str) -> String {
    // Most topics hold nothing to escape: only their separators change, byte for byte.
    if !topic.bytes().any(|b| escape(b).is_some()) {
        return topic.replace('/', ".");
    }
    let mut out = String::with_capacity(topic.len() + 8);
    push_mapped(topic, &mut out, |b| {
        if b == b'/' {
            Some(".")
        } else {
            escape(b)
        }
    });
    out
}

/// The MQTT topic name for a routing key. A `%` that starts none of our escapes (an AMQP
/// publisher's own) is kept as written.
pub fn key_to_topic(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    key_to_topic_into(key, &mut out);
    out
}

/// [`key_to_topic`], appended to `out`: a buffer kept from one delivery to the next makes the
/// topic without an allocation.
pub fn key_to_topic_into(key: &str, out: &mut String) {
    out.reserve(key.len());
    // Most keys escape nothing, and are short: their words are copied between the separators
    // a plain scan finds (a searcher costs more than it saves on a few dozen bytes).
    if !key.contains('%') {
        let mut start = 0;
        for (i, b) in key.bytes().enumerate() {
            if b == b'.' {
                out.push_str(&key[start..i]);
                out.push('/');
                start = i + 1;
            }
        }
        out.push_str(&key[start..]);
        return;
    }
    let mut rest = key;
    while let Some(pos) = rest.bytes().position(|b| b == b'.' || b == b'%') {
        out.push_str(&rest[..pos]);
        let after = &rest.as_bytes()[pos + 1..];
        let (c, used) = match rest.as_bytes()[pos] {
            b'.' => ('/', 1),
            _ => unescape(after).map_or(('%', 1), |c| (c, 3)),
        };
        out.push(c);
        rest = &rest[pos + used..];
    }
    out.push_str(rest);
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
    // Equal, they match whatever wildcards the filter holds: the usual case of a subscription
    // to the very topic published, settled by one comparison.
    if filter == topic {
        return true;
    }
    // Compared byte by byte, level by level: a delivery is matched against every subscription
    // of its session. `next` is where the topic's next level starts, `None` once its last
    // level was taken.
    let topic = topic.as_bytes();
    let mut next = Some(0);
    for f in filter.as_bytes().split(|&b| b == b'/') {
        // `#` also matches the parent level: `a/#` matches `a` ([MQTT-4.7.1-2]).
        if f == b"#" {
            return true;
        }
        let Some(start) = next else {
            return false;
        };
        let rest = &topic[start..];
        let end = rest.iter().position(|&b| b == b'/');
        if f != b"+" && f != &rest[..end.unwrap_or(rest.len())] {
            return false;
        }
        next = end.map(|e| start + e + 1);
    }
    next.is_none()
}

/// A set of filters matched against many topics at once: a trie over levels, so that a topic
/// costs the trie nodes along its levels rather than one [`matches`] per filter.
#[derive(Debug, Default)]
pub struct FilterSet<'a> {
    nodes: Vec<FilterNode<'a>>,
}

#[derive(Debug, Default)]
struct FilterNode<'a> {
    literal: std::collections::HashMap<&'a str, usize>,
    plus: Option<usize>,
    /// Filters ending in `#` here.
    hash: Vec<usize>,
    /// Filters ending here.
    end: Vec<usize>,
}

impl<'a> FilterSet<'a> {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn child(&mut self, node: usize, level: &'a str) -> usize {
        let next = self.nodes.len();
        let slot = match level {
            "+" => self.nodes[node].plus.get_or_insert(next),
            literal => self.nodes[node].literal.entry(literal).or_insert(next),
        };
        let child = *slot;
        if child == next {
            self.nodes.push(FilterNode::default());
        }
        child
    }

    /// Adds `filter`, reported as `id` by [`FilterSet::matching`].
    pub fn insert(&mut self, filter: &'a str, id: usize) {
        if self.nodes.is_empty() {
            self.nodes.push(FilterNode::default());
        }
        let mut node = 0;
        for level in filter.split('/') {
            if level == "#" {
                self.nodes[node].hash.push(id);
                return;
            }
            node = self.child(node, level);
        }
        self.nodes[node].end.push(id);
    }

    /// The ids of the filters matching `topic`, by the rules of [`matches`], into `out`.
    pub fn matching(&self, topic: &str, out: &mut Vec<usize>) {
        if self.nodes.is_empty() {
            return;
        }
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        let mut stack = vec![(0usize, 0usize)];
        while let Some((n, depth)) = stack.pop() {
            let node = &self.nodes[n];
            // [MQTT-4.7.2-1]: a filter starting with a wildcard does not match a `$` topic.
            let wild = !(dollar && depth == 0);
            if wild {
                // `#` matches the parent level too ([MQTT-4.7.1-2]).
                out.extend_from_slice(&node.hash);
            }
            let Some(level) = levels.get(depth) else {
                out.extend_from_slice(&node.end);
                continue;
            };
            if let Some(&c) = node.literal.get(level) {
                stack.push((c, depth + 1));
            }
            if let Some(c) = node.plus.filter(|_| wild) {
                stack.push((c, depth + 1));
            }
        }
    }
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

/// Prefix of every session's queue (RabbitMQ's naming, so operators recognise it). A name
/// only: whether a queue is MQTT's is told by its owner ([`OWNER`]), since a client of another
/// protocol may declare a queue of any name.
pub const SESSION_QUEUE_PREFIX: &str = "mqtt-subscription-";
/// Prefix of every shared subscription's queue.
pub const SHARED_QUEUE_PREFIX: &str = "mqtt-shared-";

/// The owner the MQTT front-end records on the queues it makes, and the only queues it ever
/// deletes.
pub const OWNER: &str = "mqtt";

/// The owner of a session's queue: MQTT, for that client.
pub fn session_queue_owner(client_id: &str) -> QueueOwner {
    QueueOwner::client(OWNER, client_id)
}

/// The owner of a shared subscription's queue: MQTT, for no client in particular (it serves
/// every member session).
pub fn shared_queue_owner() -> QueueOwner {
    QueueOwner::front_end(OWNER)
}

/// The queue of a session.
pub fn session_queue(client_id: &str) -> String {
    format!("{SESSION_QUEUE_PREFIX}{client_id}")
}

/// Whether `queue` is [`session_queue`]`(client_id)`, told without building the name (it is
/// asked for every delivery).
pub fn is_session_queue(queue: &str, client_id: &str) -> bool {
    queue
        .strip_prefix(SESSION_QUEUE_PREFIX)
        .is_some_and(|id| id == client_id)
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
    fn empty_levels_are_levels_when_matching() {
        assert!(matches("a/+", "a/"));
        assert!(!matches("a/+", "a"));
        assert!(matches("a/+/b", "a//b"));
        assert!(matches("+/+", "/"));
        assert!(!matches("+", "/"));
        assert!(matches("/", "/"));
        assert!(!matches("a/", "a"));
        assert!(!matches("a", "a/"));
        assert!(matches("#", ""));
        assert!(matches("a/b/#", "a/b"));
        assert!(!matches("a/b/#", "a"));
        assert!(!matches("a/bc", "a/b"));
        assert!(!matches("a/b", "a/bc"));
        // Only a whole level is a wildcard.
        assert!(!matches("a+/b", "ax/b"));
        assert!(matches("a+/b", "a+/b"));
        assert!(matches("caf\u{e9}/+", "caf\u{e9}/x"));
    }

    #[test]
    fn leading_wildcards_do_not_match_dollar_topics() {
        assert!(!matches("#", "$SYS/load"));
        assert!(!matches("+/load", "$SYS/load"));
        assert!(matches("$SYS/#", "$SYS/load"));
        assert!(matches("$SYS/+", "$SYS/load"));
    }

    #[test]
    fn only_the_sys_tree_goes_through_the_sys_exchange() {
        assert!(is_sys("$SYS/broker/uptime"));
        assert!(is_sys("$SYS/#"));
        assert!(is_sys("$SYS"));
        assert!(!is_sys("$SYSTEM/x"));
        assert!(!is_sys("#"));
        assert!(!is_sys("a/$SYS"));
        assert_eq!(exchange_for("$SYS/broker/load/#"), SYS_EXCHANGE);
        assert_eq!(exchange_for("+/broker"), rosetta_core::AMQ_TOPIC);
    }

    #[test]
    fn keys_longer_than_a_short_string_and_deep_topics_are_refused() {
        assert_eq!(refusal(&"a".repeat(255), 0), None);
        assert!(refusal(&"a".repeat(256), 0).is_some());
        // Escapes count: 100 dots become 300 bytes of key.
        assert!(refusal(&".".repeat(100), 0).is_some());
        assert_eq!(refusal("a/b/c", 3), None);
        assert!(refusal("a/b/c/d", 3).is_some());
        assert!(refusal("+/+/+/#", 3).is_some());
        assert_eq!(refusal("a/b/c/d", 0), None);
    }

    #[test]
    fn literal_prefixes_stop_at_the_first_wildcard() {
        assert_eq!(literal_prefix("a/b/+/c"), "a/b");
        assert_eq!(literal_prefix("a/#"), "a");
        assert_eq!(literal_prefix("#"), "");
        assert_eq!(literal_prefix("+/x"), "");
        assert_eq!(literal_prefix("a/b"), "a/b");
        assert!(has_wildcard("a/+"));
        assert!(!has_wildcard("a+/b#"));
    }

    #[test]
    fn a_filter_set_matches_as_each_filter_does() {
        let filters = [
            "a/b/c", "a/+/c", "a/#", "#", "+/+", "+", "$SYS/#", "$SYS/+", "a/b", "+/b/#",
        ];
        let mut set = FilterSet::default();
        for (i, f) in filters.iter().enumerate() {
            set.insert(f, i);
        }
        for topic in [
            "a/b/c",
            "a",
            "a/b",
            "x/y",
            "",
            "/x",
            "$SYS/load",
            "a/b/c/d",
            "q/b",
        ] {
            let mut found = Vec::new();
            set.matching(topic, &mut found);
            found.sort_unstable();
            let expected: Vec<usize> = (0..filters.len())
                .filter(|&i| matches(filters[i], topic))
                .collect();
            assert_eq!(found, expected, "topic {topic:?}");
        }
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
