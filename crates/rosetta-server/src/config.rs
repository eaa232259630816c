//! `broker.toml`: the broker's configuration.
//!
//! Parsing is strict (unknown keys are errors) so that a misspelt key is reported instead of
//! silently leaving its default in place. Every error names the key and, when it can be found in
//! the text, its line.

mod default_user;
mod listen;
mod locate;
#[cfg(test)]
mod tests;
mod validate;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use rosetta_core::auth::{
    Directory, HashError, PasswordHash, Permission, Tag, User as CoreUser, Users,
};
use serde::Deserialize;

/// The default configuration: the repository's `broker.toml`, embedded so the binary runs without
/// any file and `print-default-config` shows exactly what the defaults are.
pub const DEFAULT_TOML: &str = include_str!("../../../broker.toml");

/// A configuration that cannot be used. Displays as one line naming the file, line and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}{}: {message}", locate::at_line(*.line))]
    Invalid {
        /// Where the text came from, usually the file path.
        origin: String,
        /// 1-based line of the offending key, when it could be located.
        line: Option<usize>,
        /// Dotted path of the offending key (`amqp.listen`, `users[1].name`), when known.
        key: Option<String>,
        /// What is wrong, already naming the key.
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub amqp: AmqpConfig,
    pub mqtt: MqttConfig,
    pub stomp: StompConfig,
    pub http: HttpConfig,
    pub users: Vec<User>,
    pub vhosts: Vec<VHostConfig>,
    /// `[[permissions]]`: what each user may do in each virtual host. None at all (left out)
    /// gives every user full permissions everywhere, as before permissions existed.
    #[serde(default)]
    pub permissions: Vec<PermissionConfig>,
    /// `[[topic_permissions]]`: which routing keys a user may use on a topic exchange.
    #[serde(default)]
    pub topic_permissions: Vec<TopicPermissionConfig>,
    pub limits: Limits,
    pub log: LogConfig,
    /// Certificates for the `tls_listen` listeners; absent, no listener speaks TLS.
    pub tls: Option<TlsConfig>,
}

/// `[tls]`: the server's certificate and key, and how client certificates are checked. Paths
/// are relative to the working directory. Read at startup and again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM: the server's certificate first, then the intermediates.
    pub cert_file: PathBuf,
    /// PEM: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM: the certificate authorities client certificates are verified against.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Ask clients for a certificate and verify any they present against `ca_file`.
    #[serde(default)]
    pub verify_peer: bool,
    /// With `verify_peer`, refuse clients that present no certificate.
    #[serde(default)]
    pub fail_if_no_peer_cert: bool,
    /// Which part of a verified client certificate names the user who logs in with it (AMQP
    /// `EXTERNAL`, `[mqtt]` and `[stomp]` `ssl_cert_login`).
    #[serde(default)]
    pub ssl_cert_login_from: CertLoginFrom,
}

/// RabbitMQ's `ssl_cert_login_from`: the user name a client certificate stands for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertLoginFrom {
    /// The subject's common name (CN).
    #[default]
    CommonName,
    /// The whole subject in RFC 4514 form, most specific part first: `CN=app,O=Acme,C=DE`.
    DistinguishedName,
}

/// The daemon itself, whatever the protocols.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Seconds connections get, after SIGTERM or SIGINT, to close before the broker flushes the
    /// store and exits anyway.
    pub shutdown_timeout: u64,
    /// Threads that run client connections and routing; 0 means one per core (or
    /// `TOKIO_WORKER_THREADS`, when set).
    pub worker_threads: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub path: PathBuf,
}

/// `[http]`: the endpoint for metrics, health checks and the management API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub enabled: bool,
    #[serde(deserialize_with = "listen::deserialize")]
    pub listen: SocketAddr,
    /// The same service over TLS; absent, none.
    #[serde(deserialize_with = "listen::deserialize_some")]
    pub tls_listen: Option<SocketAddr>,
    /// `/metrics` asks for HTTP basic auth of a user with a management tag. Off by default, as
    /// RabbitMQ's Prometheus endpoint; health checks stay open either way.
    pub metrics_auth: bool,
}

/// The AMQP listener. Its fields repeat [`HttpConfig`]'s because `serde(flatten)` would
/// disable `deny_unknown_fields`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    pub enabled: bool,
    #[serde(deserialize_with = "listen::deserialize")]
    pub listen: SocketAddr,
    /// The same listener over TLS (`[tls]`); absent, none.
    #[serde(deserialize_with = "listen::deserialize_some")]
    pub tls_listen: Option<SocketAddr>,
    /// Seconds proposed in `connection.tune`; 0 disables heartbeats.
    pub heartbeat: u16,
    /// Queue types besides classic that `queue.declare` (`x-queue-type`) takes, as durable
    /// classic queues; empty (the default) refuses them with 406.
    pub accept_queue_types: Vec<AcceptedQueueType>,
    /// Over TLS, the SASL mechanism `EXTERNAL` is offered: the client logs in as the user its
    /// verified client certificate names (`[tls] ssl_cert_login_from`).
    pub ssl_cert_login: bool,
}

/// A queue type a classic queue can stand in for on a single node. Streams cannot (their
/// consumers read by offset and acknowledgements remove nothing), so they are not listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceptedQueueType {
    Quorum,
}

/// The STOMP listener and its frame limits (its fields repeat [`HttpConfig`]'s, as
/// [`AmqpConfig`]'s do). Bodies are bounded by `limits.max_message_size`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StompConfig {
    pub enabled: bool,
    #[serde(deserialize_with = "listen::deserialize")]
    pub listen: SocketAddr,
    /// The same listener over TLS (`[tls]`); absent, none.
    #[serde(deserialize_with = "listen::deserialize_some")]
    pub tls_listen: Option<SocketAddr>,
    /// STOMP over WebSocket (path `/ws`, RabbitMQ's Web STOMP port); `false` turns it off.
    #[serde(deserialize_with = "listen::deserialize_or_off")]
    pub ws_listen: Option<SocketAddr>,
    /// STOMP over WebSocket over TLS (`[tls]`); absent, none.
    #[serde(deserialize_with = "listen::deserialize_some")]
    pub ws_tls_listen: Option<SocketAddr>,
    /// Web origins whose pages may open a WebSocket (the upgrade's `Origin` header); empty
    /// accepts any.
    pub ws_allowed_origins: Vec<String>,
    /// Heart-beat interval in milliseconds offered in CONNECTED for both directions; 0 disables.
    pub heartbeat_ms: u32,
    /// Most header lines one frame may carry.
    pub max_headers: u32,
    /// Longest header line in bytes.
    pub max_header_length: u32,
    /// A CONNECT without `login` and `passcode` over TLS logs in as the user its verified client
    /// certificate names (`[tls] ssl_cert_login_from`).
    pub ssl_cert_login: bool,
}

/// The MQTT listener and its limits (its fields repeat [`HttpConfig`]'s, as
/// [`AmqpConfig`]'s do).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    pub enabled: bool,
    #[serde(deserialize_with = "listen::deserialize")]
    pub listen: SocketAddr,
    /// The same listener over TLS (`[tls]`); absent, none.
    #[serde(deserialize_with = "listen::deserialize_some")]
    pub tls_listen: Option<SocketAddr>,
    /// MQTT over WebSocket (path `/ws`, RabbitMQ's Web MQTT port); `false` turns it off.
    #[serde(deserialize_with = "listen::deserialize_or_off")]
    pub ws_listen: Option<SocketAddr>,
    /// MQTT over WebSocket over TLS (`[tls]`); absent, none.
    #[serde(deserialize_with = "listen::deserialize_some")]
    pub ws_tls_listen: Option<SocketAddr>,
    /// Web origins whose pages may open a WebSocket (the upgrade's `Origin` header); empty
    /// accepts any.
    pub ws_allowed_origins: Vec<String>,
    /// The virtual host MQTT clients use.
    pub vhost: String,
    /// Largest packet accepted, in bytes, fixed header included.
    pub max_packet_size: u32,
    /// QoS 1 and 2 messages in flight per direction (announced as Receive Maximum).
    pub max_inflight: u16,
    /// Topic aliases a 5.0 client may use (Topic Alias Maximum); 0 allows none.
    pub topic_alias_max: u16,
    /// Longest keep-alive granted, in seconds; 0 grants what clients ask.
    pub max_keep_alive: u16,
    /// Most retained topics kept; 0 = no limit.
    pub max_retained: u32,
    /// Accept a CONNECT without a user name (shown as user `anonymous`).
    pub allow_anonymous: bool,
    /// A CONNECT without user name and password over TLS logs in as the user its verified
    /// client certificate names (`[tls] ssl_cert_login_from`), before `allow_anonymous` is
    /// considered.
    pub ssl_cert_login: bool,
    /// Most subscriptions one session may hold; 0 = no limit.
    pub max_subscriptions: u32,
    /// Most topic filters one SUBSCRIBE may carry; 0 = no limit.
    pub max_filters_per_subscribe: u32,
    /// Most levels (`/`-separated words) in a topic name or filter; 0 = no limit.
    pub max_topic_levels: u32,
    /// Seconds between updates of the `$SYS/broker/...` topics; 0 publishes none.
    pub sys_interval: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// The password in plain text, hashed when the configuration is loaded. Exactly one of
    /// `password` and `password_hash` is set.
    #[serde(default)]
    pub password: Option<String>,
    /// The password hashed in RabbitMQ's format, as `rosetta hash-password` prints it. Empty
    /// (as RabbitMQ exports such users) for a user without a password, who can log in only
    /// with a client certificate.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Management roles: `administrator`, `management`, `monitoring`; `none` stands for no
    /// role.
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub loopback_only: Option<bool>,
}

/// Why a user's password is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialError {
    Missing,
    Both,
    EmptyPassword,
    Hash(HashError),
}

/// What `tags` may hold besides the core's tags: RabbitMQ's word for a user without any.
pub const NO_TAG: &str = "none";

impl User {
    /// RabbitMQ's rule, kept so clients move over unchanged: unless told otherwise, only `guest`
    /// is confined to loopback, because its password is public.
    pub fn is_loopback_only(&self) -> bool {
        self.loopback_only.unwrap_or(self.name == "guest")
    }

    /// The stored password: `password_hash` read, or `password` hashed with a fresh salt.
    pub fn credential(&self) -> Result<PasswordHash, CredentialError> {
        match (&self.password, &self.password_hash) {
            (None, None) => Err(CredentialError::Missing),
            (Some(_), Some(_)) => Err(CredentialError::Both),
            (Some(plain), None) if plain.is_empty() => Err(CredentialError::EmptyPassword),
            (Some(plain), None) => Ok(PasswordHash::new(plain)),
            (None, Some(hash)) => PasswordHash::parse(hash).map_err(CredentialError::Hash),
        }
    }

    /// The user's tags; `none` and duplicates drop out. The first name that is no tag comes
    /// back as the error.
    pub fn tag_set(&self) -> Result<Vec<Tag>, &str> {
        let mut tags = Vec::new();
        for name in &self.tags {
            match Tag::from_name(name) {
                Some(tag) if !tags.contains(&tag) => tags.push(tag),
                Some(_) => {}
                None if name == NO_TAG => {}
                None => return Err(name.as_str()),
            }
        }
        Ok(tags)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VHostConfig {
    pub name: String,
}

/// One `[[permissions]]` entry, `rabbitmqctl set_permissions -p VHOST USER CONF WRITE READ`:
/// regular expressions over queue and exchange names (unanchored; empty matches nothing).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionConfig {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// One `[[topic_permissions]]` entry, `rabbitmqctl set_topic_permissions -p VHOST USER EXCHANGE
/// WRITE READ`: regular expressions over routing keys on one topic exchange.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicPermissionConfig {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub frame_max: u32,
    pub channel_max: u16,
    /// 0 = unlimited.
    pub max_connections: u32,
    pub max_message_size: u64,
    /// Default cap for queues declared without `x-max-length`; 0 = unlimited.
    pub max_queue_length: u64,
    /// Default cap for queues declared without `x-max-length-bytes`; 0 = unlimited.
    pub max_queue_bytes: u64,
    /// Body bytes of ready persistent messages each durable queue keeps in memory; the rest wait
    /// on disk only. 0 = keep everything in memory.
    pub queue_resident_bytes: u64,
    /// Bytes of deliveries each consumer may have handed to its connection and not yet written
    /// to the socket; past it the queue keeps the messages until the client reads. 0 = no limit.
    pub consumer_buffer_bytes: u64,
    /// Publishers are blocked while memory use is above this many bytes.
    pub memory_limit: u64,
    /// Publishers are blocked while free disk space is below this many bytes.
    pub disk_free_limit: u64,
    /// Consumers (AMQP) or subscriptions (STOMP) one channel may hold; 0 = no limit.
    pub max_consumers_per_channel: u32,
    /// Queues per virtual host; 0 = no limit.
    pub max_queues: u32,
    /// Exchanges per virtual host, the predeclared ones included; 0 = no limit.
    pub max_exchanges: u32,
    /// Bindings per virtual host; 0 = no limit.
    pub max_bindings: u32,
    /// Frames (publishes, sends, acks) one open transaction may hold (AMQP tx, STOMP BEGIN);
    /// 0 = no limit.
    pub max_transaction_frames: u32,
    /// Message body bytes one open transaction may hold; 0 = no limit.
    pub max_transaction_bytes: u64,
    /// Milliseconds a refused login waits before it is answered; 0 answers at once.
    pub failed_login_delay_ms: u32,
    /// Milliseconds a connection's socket may take no byte of its output before the connection
    /// is closed; 0 = wait for ever.
    pub send_timeout_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Filter directives; `RUST_LOG` overrides them.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The smallest `frame_max` AMQP 0-9-1 allows (`frame-min-size`, connection.tune).
pub const FRAME_MIN_SIZE: u32 = 4096;

impl Config {
    /// Parses and validates configuration text. `origin` names the text in error messages
    /// (usually the file path).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|err| locate::parse_error(text, origin, &err))?;
        validate::validate(&config).map_err(|v| locate::violation_error(text, origin, v))?;
        Ok(config)
    }

    /// The users as the core checks them: plain passwords hashed, tags read. Fails only for a
    /// configuration that did not come through [`Config::from_toml_str`] or [`Config::load`].
    pub fn core_users(&self) -> Result<Users, ConfigError> {
        let users = self
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let (password, tags) = validate::user(i, u)
                    .map_err(|v| locate::violation_error("", "configuration", v))?;
                let user = CoreUser {
                    name: u.name.clone(),
                    password,
                    loopback_only: u.is_loopback_only(),
                };
                Ok((user, tags))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Users::tagged(users))
    }

    /// Whether no `[[permissions]]` entry is configured, so every user has full permissions on
    /// every virtual host (see [`Config::core_directory`]).
    pub fn permissions_are_implicit(&self) -> bool {
        self.permissions.is_empty()
    }

    /// The users and their permissions as the core checks them. Without any `[[permissions]]`
    /// entry every user (and `anonymous`, when MQTT allows it) gets full permissions on every
    /// configured virtual host, so configurations written before permissions existed keep
    /// working. Fails only for a configuration that was not validated.
    pub fn core_directory(&self) -> Result<Directory, ConfigError> {
        let users = self.core_users()?;
        let mut permissions = validate::permissions(self)
            .map_err(|v| locate::violation_error("", "configuration", v))?;
        if self.permissions_are_implicit() {
            let anonymous = self
                .mqtt
                .allow_anonymous
                .then_some(rosetta_mqtt::session::ANONYMOUS);
            let vhosts: Vec<&str> = self.vhosts.iter().map(|v| v.name.as_str()).collect();
            for user in self.users.iter().map(|u| u.name.as_str()).chain(anonymous) {
                for vhost in &vhosts {
                    permissions.set(user, vhost, Permission::full());
                }
            }
        }
        Ok(Directory::new(users, permissions))
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text, &path.display().to_string())
    }
}

fn any_ipv4(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: any_ipv4(15692),
            tls_listen: None,
            metrics_auth: false,
        }
    }
}

/// The default user's password, "guest", as `rosetta hash-password` prints it.
const GUEST_PASSWORD_HASH: &str = "X4oRw9o9N874fnCe3LFRCwXJRaK4oG66dZJ3NTkjWEki0F3E";

// The defaults below must match broker.toml; a unit test parses DEFAULT_TOML and compares.
impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            storage: StorageConfig::default(),
            amqp: AmqpConfig::default(),
            mqtt: MqttConfig::default(),
            stomp: StompConfig::default(),
            http: HttpConfig::default(),
            users: vec![User {
                name: "guest".into(),
                password: None,
                password_hash: Some(GUEST_PASSWORD_HASH.into()),
                tags: vec!["administrator".into()],
                loopback_only: Some(true),
            }],
            vhosts: vec![VHostConfig { name: "/".into() }],
            permissions: vec![PermissionConfig {
                user: "guest".into(),
                vhost: "/".into(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            }],
            topic_permissions: Vec::new(),
            limits: Limits::default(),
            log: LogConfig::default(),
            tls: None,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            shutdown_timeout: 5,
            worker_threads: 0,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: PathBuf::from("./data"),
        }
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            enabled: true,
            listen: any_ipv4(5672),
            tls_listen: None,
            heartbeat: 60,
            accept_queue_types: Vec::new(),
            ssl_cert_login: false,
        }
    }
}

impl Default for StompConfig {
    fn default() -> Self {
        StompConfig {
            enabled: true,
            listen: any_ipv4(61613),
            tls_listen: None,
            ws_listen: Some(any_ipv4(15674)),
            ws_tls_listen: None,
            ws_allowed_origins: Vec::new(),
            heartbeat_ms: 10_000,
            max_headers: 1000,
            max_header_length: 65_536,
            ssl_cert_login: false,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            enabled: true,
            listen: any_ipv4(1883),
            tls_listen: None,
            ws_listen: Some(any_ipv4(15675)),
            ws_tls_listen: None,
            ws_allowed_origins: Vec::new(),
            vhost: "/".into(),
            max_packet_size: 16 * 1024 * 1024,
            max_inflight: 100,
            topic_alias_max: 10,
            max_keep_alive: 0,
            max_retained: 100_000,
            allow_anonymous: false,
            ssl_cert_login: false,
            max_subscriptions: 10_000,
            max_filters_per_subscribe: 1_000,
            max_topic_levels: 128,
            sys_interval: 10,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_max: 131_072,
            channel_max: 2047,
            max_connections: 10_000,
            max_message_size: 128 * 1024 * 1024,
            max_queue_length: 0,
            max_queue_bytes: 0,
            queue_resident_bytes: 8 * 1024 * 1024,
            consumer_buffer_bytes: 1024 * 1024,
            memory_limit: 512 * 1024 * 1024,
            // Room for the largest message plus a commit batch: a write that finds the disk
            // full is retried rather than lost, but publishers should be paused before that.
            disk_free_limit: 192 * 1024 * 1024,
            max_consumers_per_channel: 10_000,
            max_queues: 1_000_000,
            max_exchanges: 10_000,
            max_bindings: 1_000_000,
            max_transaction_frames: 10_000,
            max_transaction_bytes: 128 * 1024 * 1024,
            failed_login_delay_ms: 1000,
            send_timeout_ms: 30_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}
