//! Rules that the types alone cannot express, checked after parsing.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;

use rosetta_core::auth::{PasswordHash, Pattern, Permission, Permissions, Tag, TopicPermission};

use super::{Config, CredentialError, User, FRAME_MIN_SIZE, NO_TAG};

/// Where a key lives: `limits.frame_max`, `users[1].name`, or a top-level `users`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeyPath {
    pub table: Option<&'static str>,
    /// Position within an array of tables (`[[users]]`).
    pub index: Option<usize>,
    pub key: &'static str,
}

impl KeyPath {
    fn new(table: &'static str, key: &'static str) -> Self {
        KeyPath {
            table: Some(table),
            index: None,
            key,
        }
    }

    fn top(key: &'static str) -> Self {
        KeyPath {
            table: None,
            index: None,
            key,
        }
    }

    fn item(table: &'static str, index: usize, key: &'static str) -> Self {
        KeyPath {
            table: Some(table),
            index: Some(index),
            key,
        }
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match (self.table, self.index) {
            (None, _) => f.write_str(self.key),
            (Some(table), None) => write!(f, "{table}.{}", self.key),
            (Some(table), Some(i)) => write!(f, "{table}[{i}].{}", self.key),
        }
    }
}

#[derive(Debug)]
pub(super) struct Violation {
    pub key: KeyPath,
    pub message: String,
}

fn violation(key: KeyPath, message: impl Into<String>) -> Violation {
    Violation {
        key,
        message: message.into(),
    }
}

pub(super) fn validate(config: &Config) -> Result<(), Violation> {
    if config.limits.frame_max < FRAME_MIN_SIZE {
        return Err(violation(
            KeyPath::new("limits", "frame_max"),
            format!(
                "must be at least {FRAME_MIN_SIZE}, got {}",
                config.limits.frame_max
            ),
        ));
    }
    // A STOMP frame needs a command line and at least a `destination` header.
    for (key, value) in [
        ("max_headers", config.stomp.max_headers),
        ("max_header_length", config.stomp.max_header_length),
    ] {
        if value == 0 {
            return Err(violation(KeyPath::new("stomp", key), "must be at least 1"));
        }
    }
    unique_names("users", config.users.iter().map(|u| u.name.as_str()))?;
    users(config)?;
    if config.limits.failed_login_delay_ms > MAX_FAILED_LOGIN_DELAY_MS {
        return Err(violation(
            KeyPath::new("limits", "failed_login_delay_ms"),
            format!(
                "must be at most {MAX_FAILED_LOGIN_DELAY_MS} (a client waits no longer than that \
                 for its handshake), got {}",
                config.limits.failed_login_delay_ms
            ),
        ));
    }
    unique_names("vhosts", config.vhosts.iter().map(|v| v.name.as_str()))?;
    permissions(config)?;
    tls(config)?;
    listeners_distinct(config)?;
    if let Err(err) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        return Err(violation(
            KeyPath::new("log", "level"),
            format!("invalid log filter `{}`: {err}", config.log.level),
        ));
    }
    Ok(())
}

/// The longest `limits.failed_login_delay_ms`: the handshake timeout.
const MAX_FAILED_LOGIN_DELAY_MS: u32 = 10_000;

/// Each user has one usable password and known tags.
fn users(config: &Config) -> Result<(), Violation> {
    for (i, entry) in config.users.iter().enumerate() {
        user(i, entry)?;
    }
    Ok(())
}

/// The password hash and tags of `users[i]`, or what is wrong with them.
pub(super) fn user(i: usize, user: &User) -> Result<(PasswordHash, Vec<Tag>), Violation> {
    let password = user.credential().map_err(|e| {
        let (key, message) = match e {
            CredentialError::Missing => (
                "password",
                "required: set `password` (plain text) or `password_hash` (from `rosetta \
                 hash-password`; `\"\"` for a user who logs in only with a client certificate)"
                    .to_owned(),
            ),
            CredentialError::Both => (
                "password_hash",
                "set either `password` or `password_hash`, not both".to_owned(),
            ),
            CredentialError::EmptyPassword => ("password", "must not be empty".to_owned()),
            CredentialError::Hash(why) => (
                "password_hash",
                format!(
                    "not a password hash in RabbitMQ's format (base64 of a 4-byte salt and a \
                     SHA-256 digest, as `rosetta hash-password` prints): {why}"
                ),
            ),
        };
        violation(KeyPath::item("users", i, key), message)
    })?;
    let tags = user.tag_set().map_err(|unknown| {
        let known: Vec<&str> = Tag::ALL.iter().map(|t| t.name()).chain([NO_TAG]).collect();
        violation(
            KeyPath::item("users", i, "tags"),
            format!(
                "unknown tag `{unknown}`, expected one of `{}`",
                known.join("`, `")
            ),
        )
    })?;
    Ok((password, tags))
}

/// `[[permissions]]` and `[[topic_permissions]]` compiled: each names a configured user (or
/// `anonymous` when MQTT lets clients in without a user name) and virtual host, once, with
/// patterns that compile.
pub(super) fn permissions(config: &Config) -> Result<Permissions, Violation> {
    let mut permissions = Permissions::default();
    for (i, p) in config.permissions.iter().enumerate() {
        const TABLE: &str = "permissions";
        known_user_and_vhost(config, TABLE, i, &p.user, &p.vhost)?;
        if permissions.get(&p.user, &p.vhost).is_some() {
            return Err(violation(
                KeyPath::item(TABLE, i, "vhost"),
                format!(
                    "user `{}` already has permissions on vhost `{}`; one entry per user and vhost",
                    p.user, p.vhost
                ),
            ));
        }
        let permission = Permission {
            configure: pattern(TABLE, i, "configure", &p.configure)?,
            write: pattern(TABLE, i, "write", &p.write)?,
            read: pattern(TABLE, i, "read", &p.read)?,
        };
        permissions.set(&p.user, &p.vhost, permission);
    }
    for (i, t) in config.topic_permissions.iter().enumerate() {
        const TABLE: &str = "topic_permissions";
        known_user_and_vhost(config, TABLE, i, &t.user, &t.vhost)?;
        if t.exchange.is_empty() {
            return Err(violation(
                KeyPath::item(TABLE, i, "exchange"),
                "must name a topic exchange",
            ));
        }
        if permissions.topic(&t.user, &t.vhost, &t.exchange).is_some() {
            return Err(violation(
                KeyPath::item(TABLE, i, "exchange"),
                format!(
                    "user `{}` already has topic permissions on exchange `{}` in vhost `{}`",
                    t.user, t.exchange, t.vhost
                ),
            ));
        }
        let topic = TopicPermission {
            exchange: t.exchange.clone(),
            write: pattern(TABLE, i, "write", &t.write)?,
            read: pattern(TABLE, i, "read", &t.read)?,
        };
        permissions.set_topic(&t.user, &t.vhost, topic);
    }
    Ok(permissions)
}

fn known_user_and_vhost(
    config: &Config,
    table: &'static str,
    i: usize,
    user: &str,
    vhost: &str,
) -> Result<(), Violation> {
    let anonymous = config.mqtt.allow_anonymous && user == rosetta_mqtt::session::ANONYMOUS;
    if !anonymous && !config.users.iter().any(|u| u.name == user) {
        return Err(violation(
            KeyPath::item(table, i, "user"),
            format!("unknown user `{user}`: not one of the [[users]]"),
        ));
    }
    if !config.vhosts.iter().any(|v| v.name == vhost) {
        return Err(violation(
            KeyPath::item(table, i, "vhost"),
            format!("unknown vhost `{vhost}`: not one of the [[vhosts]]"),
        ));
    }
    Ok(())
}

fn pattern(
    table: &'static str,
    i: usize,
    key: &'static str,
    source: &str,
) -> Result<Pattern, Violation> {
    Pattern::new(source).map_err(|e| {
        violation(
            KeyPath::item(table, i, key),
            format!("invalid regular expression `{source}`: {e}"),
        )
    })
}

/// At least one entry, none with an empty name, no name twice.
fn unique_names<'a>(
    table: &'static str,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), Violation> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, name) in names.enumerate() {
        let key = KeyPath::item(table, i, "name");
        if name.is_empty() {
            return Err(violation(key, "must not be empty"));
        }
        if let Some(first) = seen.insert(name, i) {
            return Err(violation(
                key,
                format!("duplicate name `{name}` (already used by {table}[{first}])"),
            ));
        }
    }
    if seen.is_empty() {
        return Err(violation(
            KeyPath::top(table),
            "at least one entry is required",
        ));
    }
    Ok(())
}

/// A `tls_listen` (or `ws_tls_listen`) needs `[tls]`; client certificates need the
/// authorities to check them with.
fn tls(config: &Config) -> Result<(), Violation> {
    // A certificate names a user only once it is verified.
    let verified = config.tls.as_ref().is_some_and(|tls| tls.verify_peer);
    for (section, on) in [
        ("amqp", config.amqp.ssl_cert_login),
        ("mqtt", config.mqtt.ssl_cert_login),
        ("stomp", config.stomp.ssl_cert_login),
    ] {
        if on && !verified {
            return Err(violation(
                KeyPath::new(section, "ssl_cert_login"),
                "has no effect without `[tls] verify_peer = true`",
            ));
        }
    }
    let Some(tls) = &config.tls else {
        for (section, key, tls_listen) in [
            ("amqp", "tls_listen", config.amqp.tls_listen),
            ("mqtt", "tls_listen", config.mqtt.tls_listen),
            ("stomp", "tls_listen", config.stomp.tls_listen),
            ("http", "tls_listen", config.http.tls_listen),
            ("mqtt", "ws_tls_listen", config.mqtt.ws_tls_listen),
            ("stomp", "ws_tls_listen", config.stomp.ws_tls_listen),
        ] {
            if tls_listen.is_some() {
                return Err(violation(
                    KeyPath::new(section, key),
                    "needs a [tls] section with `cert_file` and `key_file`",
                ));
            }
        }
        return Ok(());
    };
    if tls.verify_peer && tls.ca_file.is_none() {
        return Err(violation(
            KeyPath::new("tls", "verify_peer"),
            "needs `ca_file`, the certificate authorities client certificates are verified against",
        ));
    }
    if tls.fail_if_no_peer_cert && !tls.verify_peer {
        return Err(violation(
            KeyPath::new("tls", "fail_if_no_peer_cert"),
            "has no effect without `verify_peer = true`",
        ));
    }
    Ok(())
}

/// Two enabled listeners cannot bind the same port when their addresses overlap. A wildcard
/// address overlaps every address of the port (and `[::]` usually covers IPv4 too), so that counts
/// as a clash. Port 0 asks the OS for a free port and never clashes.
fn listeners_distinct(config: &Config) -> Result<(), Violation> {
    let plain = [
        ("amqp", config.amqp.enabled, config.amqp.listen),
        ("mqtt", config.mqtt.enabled, config.mqtt.listen),
        ("stomp", config.stomp.enabled, config.stomp.listen),
        ("http", config.http.enabled, config.http.listen),
    ]
    .map(|(section, enabled, addr)| (KeyPath::new(section, "listen"), enabled, Some(addr)));
    let tls = [
        ("amqp", config.amqp.enabled, config.amqp.tls_listen),
        ("mqtt", config.mqtt.enabled, config.mqtt.tls_listen),
        ("stomp", config.stomp.enabled, config.stomp.tls_listen),
        ("http", config.http.enabled, config.http.tls_listen),
    ]
    .map(|(section, enabled, addr)| (KeyPath::new(section, "tls_listen"), enabled, addr));
    let websocket = [
        (
            "mqtt",
            "ws_listen",
            config.mqtt.enabled,
            config.mqtt.ws_listen,
        ),
        (
            "mqtt",
            "ws_tls_listen",
            config.mqtt.enabled,
            config.mqtt.ws_tls_listen,
        ),
        (
            "stomp",
            "ws_listen",
            config.stomp.enabled,
            config.stomp.ws_listen,
        ),
        (
            "stomp",
            "ws_tls_listen",
            config.stomp.enabled,
            config.stomp.ws_tls_listen,
        ),
    ]
    .map(|(section, key, enabled, addr)| (KeyPath::new(section, key), enabled, addr));
    let active: Vec<(KeyPath, SocketAddr)> = plain
        .into_iter()
        .chain(tls)
        .chain(websocket)
        .filter_map(|(key, enabled, addr)| {
            addr.filter(|a| enabled && a.port() != 0).map(|a| (key, a))
        })
        .collect();
    for (j, (name, addr)) in active.iter().enumerate() {
        for (other, other_addr) in &active[..j] {
            let overlap = addr.ip() == other_addr.ip()
                || addr.ip().is_unspecified()
                || other_addr.ip().is_unspecified();
            if addr.port() == other_addr.port() && overlap {
                return Err(violation(
                    *name,
                    format!("{addr} clashes with {other} ({other_addr})"),
                ));
            }
        }
    }
    Ok(())
}
