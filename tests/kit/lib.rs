//! Test kit: starts the real `rosetta` binary on ephemeral ports with a temporary data directory,
//! and offers the small helpers the integration tests share.
//!
//! - [`Broker`] / [`BrokerBuilder`]: spawn, find the listening ports in the log, kill, stop,
//!   restart on the same data directory.
//! - [`shared_broker`]: one broker shared by the tests of a module while any of them runs.
//! - [`wait_until`] / [`eventually`]: wait for a condition with a deadline instead of sleeping.
//! - [`raw`]: hand-built AMQP 0-9-1 frames over a plain `TcpStream`, for bad-input tests.
//! - [`Access`]: users and their permissions, as configuration for the permission tests.
//! - [`mqtt3`]: a minimal MQTT 3.1.1 client over any blocking stream (TCP, TLS, WebSocket), and
//!   [`publishes_missed_by_an_early_subscriber`], the race MQTT's order of input decides.
//! - [`metric`]: one series from the broker's `/metrics`.
//!
//! The kit never builds the broker: `cargo build -p rosetta` (or `tests/run`) does that first.
//! Set `ROSETTA_TEST_ECHO=1` to see the broker's log live on stderr; a test that panics while it
//! holds a [`Broker`] prints the broker's log anyway.

mod access;
mod broker;
mod config;
mod logscan;
mod metrics;
pub mod mqtt3;
mod order_race;
pub mod raw;
mod wait;

#[cfg(test)]
mod selftest;

pub use access::Access;
pub use broker::{broker_binary, shared_broker, workspace_root, Broker, BrokerBuilder};
pub use config::ConfigFile;
pub use logscan::{parse_listener, strip_ansi};
pub use metrics::metric;
pub use order_race::{input_order_timeouts, publishes_missed_by_an_early_subscriber};
pub use wait::{eventually, wait_until};
