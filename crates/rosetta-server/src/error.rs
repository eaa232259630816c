//! The server crate's one error type: what can stop the broker from starting or running.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for {protocol} on {addr}: {source}")]
    Bind {
        protocol: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("data directory {path}: {reason}")]
    Storage { path: String, reason: String },
    #[error("recovery failed: {0}")]
    Recovery(#[from] rosetta_core::CoreError),
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("mqtt: {0}")]
    Mqtt(#[from] rosetta_mqtt::MqttError),
    /// A `[tls]` file that cannot be used; `key` names the setting (`cert_file`, ...).
    #[error("tls {key} {}: {reason}", path.display())]
    TlsFile {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("tls: {0}")]
    Tls(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}
