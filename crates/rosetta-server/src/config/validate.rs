//! Rules that the types alone cannot express, checked after parsing.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;

use rosetta_core::auth::{PasswordHash, Tag};

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
                 hash-password`)"
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

/// A `tls_listen` needs `[tls]`; client certificates need the authorities to check them with.
fn tls(config: &Config) -> Result<(), Violation> {
    let Some(tls) = &config.tls else {
        for (section, tls_listen) in [
            ("amqp", config.amqp.tls_listen),
            ("mqtt", config.mqtt.tls_listen),
            ("stomp", config.stomp.tls_listen),
            ("http", config.http.tls_listen),
        ] {
            if tls_listen.is_some() {
                return Err(violation(
                    KeyPath::new(section, "tls_listen"),
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
    let active: Vec<(KeyPath, SocketAddr)> = plain
        .into_iter()
        .chain(tls)
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
