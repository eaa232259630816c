//! AMQP 0-9-1 behaviour of the real broker, driven by the lapin client (and hand-built frames
//! for bad input). The expected behaviour is RabbitMQ 3.x's, so existing clients move over
//! unchanged.
//!
//! Needs the broker binary: `cargo build -p rosetta` first (`tests/run` does it).

mod support;

mod alarm;
mod confirms_tx;
mod connection;
mod consumers;
mod dead_letter;
mod durability;
mod errors;
mod exchanges;
mod extensions;
mod full_disk;
mod hostile;
mod login;
mod paging;
mod permissions;
mod queues;
mod slow_consumer;
