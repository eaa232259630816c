//! RabbitMQ's permission model: per user and virtual host, three patterns over resource names
//! (`configure`, `write`, `read`), and per user, virtual host and topic exchange, two patterns
//! over routing keys.
//!
//! Patterns keep RabbitMQ's meaning so that permissions move over unchanged: a regular
//! expression searched anywhere in the name (Erlang's `re:run`, unanchored, so `^` and `$`
//! matter), and an empty pattern matches nothing.

use std::collections::HashMap;
use std::fmt;

use regex::{Regex, RegexBuilder};

/// Largest compiled program one pattern may have. RabbitMQ patterns are short (`.*`,
/// `^app\.`); the bound keeps a hostile one (`(a{1000}){1000}`) from taking memory.
const PATTERN_SIZE_LIMIT: usize = 256 * 1024;
/// Largest lazy-DFA cache one pattern keeps per thread that matches with it.
const PATTERN_DFA_LIMIT: usize = 256 * 1024;

/// A permission pattern. Cloning shares the compiled program.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    /// `None` for the empty pattern, which matches nothing.
    regex: Option<Regex>,
}

/// Why a pattern does not compile: the regex engine's explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(String);

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, PatternError> {
        if source.is_empty() {
            return Ok(Pattern::nothing());
        }
        let regex = RegexBuilder::new(source)
            .size_limit(PATTERN_SIZE_LIMIT)
            .dfa_size_limit(PATTERN_DFA_LIMIT)
            .build()
            .map_err(|e| PatternError(one_line(&e)))?;
        Ok(Pattern {
            source: source.to_owned(),
            regex: Some(regex),
        })
    }

    /// `.*`: every name.
    pub fn everything() -> Pattern {
        Pattern::new(".*").expect("`.*` compiles")
    }

    /// The empty pattern: no name.
    pub fn nothing() -> Pattern {
        Pattern {
            source: String::new(),
            regex: None,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern occurs anywhere in `name`.
    pub fn matches(&self, name: &str) -> bool {
        self.regex.as_ref().is_some_and(|r| r.is_match(name))
    }
}

/// The regex engine's explanation on one line: a syntax error's last line says what is wrong
/// (the lines before it repeat the pattern and point at the place).
fn one_line(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map_or_else(
            || text.split_whitespace().collect::<Vec<_>>().join(" "),
            str::to_owned,
        )
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// What a user may do in one virtual host (`rabbitmqctl set_permissions`).
#[derive(Debug, Clone, PartialEq)]
pub struct Permission {
    /// Declare and delete queues and exchanges.
    pub configure: Pattern,
    /// Publish to exchanges; bind queues and exchanges as destinations.
    pub write: Pattern,
    /// Consume, get and purge from queues; bind from exchanges.
    pub read: Pattern,
}

impl Permission {
    /// `.*` three times: what RabbitMQ's default user gets.
    pub fn full() -> Permission {
        Permission {
            configure: Pattern::everything(),
            write: Pattern::everything(),
            read: Pattern::everything(),
        }
    }

    pub(crate) fn pattern(&self, access: Access) -> &Pattern {
        match access {
            Access::Configure => &self.configure,
            Access::Write => &self.write,
            Access::Read => &self.read,
        }
    }
}

/// What a user may do with routing keys on one topic exchange of a virtual host
/// (`rabbitmqctl set_topic_permissions`).
#[derive(Debug, Clone, PartialEq)]
pub struct TopicPermission {
    pub exchange: String,
    /// Routing keys the user may publish with.
    pub write: Pattern,
    /// Binding keys the user may bind a queue with.
    pub read: Pattern,
}

/// The three kinds of access RabbitMQ tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Configure,
    Write,
    Read,
}

impl Access {
    pub fn name(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

/// What a permission pattern is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Queue,
    Exchange,
}

impl Resource {
    pub fn name(self) -> &'static str {
        match self {
            Resource::Queue => "queue",
            Resource::Exchange => "exchange",
        }
    }
}

/// The default exchange's name for permissions: it has none in the protocol, RabbitMQ matches
/// patterns against this one.
pub const DEFAULT_EXCHANGE: &str = "amq.default";

/// The name patterns are matched against: `""` for an exchange is the default one.
pub(crate) fn resource_name(kind: Resource, name: &str) -> &str {
    match (kind, name) {
        (Resource::Exchange, "") => DEFAULT_EXCHANGE,
        _ => name,
    }
}

/// Every permission and topic permission, by virtual host and user.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Permissions {
    /// vhost → user → permission.
    entries: HashMap<String, HashMap<String, Permission>>,
    /// vhost → user → topic permissions, one per exchange.
    topics: HashMap<String, HashMap<String, Vec<TopicPermission>>>,
}

impl Permissions {
    /// Full permissions (`.*` three times) for every one of `users` on every one of `vhosts`.
    pub fn full_access<'a>(
        users: impl IntoIterator<Item = &'a str>,
        vhosts: &[&str],
    ) -> Permissions {
        let mut permissions = Permissions::default();
        for user in users {
            for vhost in vhosts {
                permissions.set(user, vhost, Permission::full());
            }
        }
        permissions
    }

    /// Sets (or replaces) `user`'s permission in `vhost`.
    pub fn set(&mut self, user: &str, vhost: &str, permission: Permission) {
        self.entries
            .entry(vhost.to_owned())
            .or_default()
            .insert(user.to_owned(), permission);
    }

    /// Removes `user`'s permission in `vhost` (and with it access to the virtual host).
    pub fn clear(&mut self, user: &str, vhost: &str) -> Option<Permission> {
        self.entries.get_mut(vhost)?.remove(user)
    }

    /// Sets (or replaces) `user`'s topic permission for `topic.exchange` in `vhost`.
    pub fn set_topic(&mut self, user: &str, vhost: &str, topic: TopicPermission) {
        let list = self
            .topics
            .entry(vhost.to_owned())
            .or_default()
            .entry(user.to_owned())
            .or_default();
        list.retain(|t| t.exchange != topic.exchange);
        list.push(topic);
    }

    /// Removes `user`'s topic permission for `exchange` in `vhost`.
    pub fn clear_topic(&mut self, user: &str, vhost: &str, exchange: &str) -> bool {
        let Some(list) = self.topics.get_mut(vhost).and_then(|u| u.get_mut(user)) else {
            return false;
        };
        let before = list.len();
        list.retain(|t| t.exchange != exchange);
        list.len() != before
    }

    /// `user`'s permission in `vhost`; without one the user may not use the virtual host.
    pub fn get(&self, user: &str, vhost: &str) -> Option<&Permission> {
        self.entries.get(vhost)?.get(user)
    }

    /// `user`'s topic permission for `exchange` in `vhost`; without one, any routing key goes.
    pub fn topic(&self, user: &str, vhost: &str, exchange: &str) -> Option<&TopicPermission> {
        self.topics
            .get(vhost)?
            .get(user)?
            .iter()
            .find(|t| t.exchange == exchange)
    }

    /// Every permission as (user, vhost, permission).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &Permission)> {
        self.entries.iter().flat_map(|(vhost, users)| {
            users
                .iter()
                .map(move |(user, p)| (user.as_str(), vhost.as_str(), p))
        })
    }

    /// Every topic permission as (user, vhost, topic permission).
    pub fn topic_iter(&self) -> impl Iterator<Item = (&str, &str, &TopicPermission)> {
        self.topics.iter().flat_map(|(vhost, users)| {
            users.iter().flat_map(move |(user, list)| {
                list.iter().map(move |t| (user.as_str(), vhost.as_str(), t))
            })
        })
    }

    /// Whether no permission is set at all.
    pub fn is_empty(&self) -> bool {
        self.entries.values().all(HashMap::is_empty)
    }
}

/// RabbitMQ's refusal of a virtual host (AMQP 530 NOT_ALLOWED).
pub fn vhost_refusal(user: &str, vhost: &str) -> String {
    format!("access to vhost '{vhost}' refused for user '{user}'")
}

/// RabbitMQ's refusal of a queue or exchange (AMQP 403 ACCESS_REFUSED).
pub(crate) fn resource_refusal(kind: Resource, name: &str, vhost: &str, user: &str) -> String {
    format!(
        "access to {} '{}' in vhost '{vhost}' refused for user '{user}'",
        kind.name(),
        resource_name(kind, name)
    )
}

/// RabbitMQ's refusal of a routing or binding key (AMQP 403 ACCESS_REFUSED).
pub(crate) fn topic_refusal(
    access: Access,
    key: &str,
    exchange: &str,
    vhost: &str,
    user: &str,
) -> String {
    format!(
        "{} access to topic '{key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'",
        access.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(source: &str) -> Pattern {
        Pattern::new(source).expect("valid pattern")
    }

    #[test]
    fn patterns_match_anywhere_unless_anchored() {
        assert!(p("foo").matches("foo"));
        assert!(p("foo").matches("a.foo.b"));
        assert!(!p("^foo$").matches("a.foo.b"));
        assert!(p("^foo").matches("foo.bar"));
        assert!(!p("^foo").matches("xfoo"));
        assert!(p("^sensors\\..*").matches("sensors.kitchen.temp"));
        assert!(!p("^sensors\\..*").matches("sensorsX"));
        assert!(p(".*").matches(""));
        assert!(p("^$").matches(""));
        assert!(!p("^$").matches("q"));
    }

    #[test]
    fn the_empty_pattern_matches_nothing_not_even_the_empty_name() {
        let empty = p("");
        assert!(!empty.matches(""));
        assert!(!empty.matches("anything"));
        assert_eq!(empty, Pattern::nothing());
    }

    #[test]
    fn invalid_and_oversized_patterns_are_refused() {
        let unclosed = Pattern::new("(").expect_err("unclosed group");
        assert_eq!(unclosed.to_string(), "unclosed group");
        assert!(Pattern::new("[a-").is_err());
        let huge = Pattern::new("(a{1000}){1000}").expect_err("too big to compile");
        assert!(huge.to_string().contains("size limit"), "{huge}");
    }

    #[test]
    fn the_default_exchange_is_named_amq_default() {
        assert_eq!(resource_name(Resource::Exchange, ""), DEFAULT_EXCHANGE);
        assert_eq!(resource_name(Resource::Queue, ""), "");
        assert_eq!(
            resource_refusal(Resource::Exchange, "", "/", "bob"),
            "access to exchange 'amq.default' in vhost '/' refused for user 'bob'"
        );
        assert_eq!(
            topic_refusal(Access::Write, "k", "amq.topic", "/", "bob"),
            "write access to topic 'k' in exchange 'amq.topic' in vhost '/' refused for user 'bob'"
        );
    }

    #[test]
    fn entries_are_kept_per_user_and_vhost_and_replaced() {
        let mut perms = Permissions::default();
        assert!(perms.is_empty());
        perms.set("alice", "/", Permission::full());
        assert!(perms.get("alice", "/").is_some());
        assert!(perms.get("alice", "other").is_none());
        assert!(perms.get("bob", "/").is_none());
        let topic = |write: &str| TopicPermission {
            exchange: "amq.topic".into(),
            write: p(write),
            read: p(".*"),
        };
        perms.set_topic("alice", "/", topic("^a"));
        perms.set_topic("alice", "/", topic("^b"));
        let t = perms.topic("alice", "/", "amq.topic").expect("topic");
        assert_eq!(t.write.as_str(), "^b");
        assert_eq!(perms.topic_iter().count(), 1);
        assert!(perms.clear_topic("alice", "/", "amq.topic"));
        assert!(perms.topic("alice", "/", "amq.topic").is_none());
        assert!(perms.clear("alice", "/").is_some());
        assert!(perms.is_empty());
    }
}
