//! The process-wide tracing subscriber: readable text for people, JSON for log collectors, always
//! on stderr so stdout stays free for command output.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `config.level`.
///
/// Only the first call in a process installs anything; later calls (tests that start several
/// brokers in one process) leave the existing subscriber in place.
pub fn init(config: &LogConfig) {
    let (filter, rejected_env) = filter(config);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match config.format {
        // Colour codes only help a person at a terminal; in files and pipes they are noise.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    if installed.is_ok() {
        if let Some(reason) = rejected_env {
            tracing::warn!(%reason, level = %config.level, "ignoring invalid RUST_LOG, using log.level");
        }
    }
}

/// The filter to use, and why `RUST_LOG` was ignored if it was set but unusable. A bad
/// `RUST_LOG` must not stop the broker, so it falls back to the configured level.
fn filter(config: &LogConfig) -> (EnvFilter, Option<String>) {
    let mut rejected = None;
    if std::env::var_os(EnvFilter::DEFAULT_ENV).is_some_and(|v| !v.is_empty()) {
        match EnvFilter::try_from_default_env() {
            Ok(filter) => return (filter, None),
            Err(err) => rejected = Some(err.to_string()),
        }
    }
    // log.level was validated with the config; "info" only covers a LogConfig built by hand.
    let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    (filter, rejected)
}
