//! Operating the broker: the HTTP endpoint (Prometheus metrics, health checks, management
//! API), graceful shutdown on SIGTERM (and what each protocol's clients are told then), and
//! logging, against the real binary.
//!
//! Needs the broker binary: `cargo build -p rosetta` first (`tests/run` does it).

#[path = "../mqtt/support.rs"]
mod mqtt_support;
#[path = "../amqp/support.rs"]
mod support;

mod http;

mod api;
mod definitions;
mod goodbye;
mod health;
mod logs;
mod metrics;
mod shutdown;
mod users;
mod vhosts;
mod workers;
