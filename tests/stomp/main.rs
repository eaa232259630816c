//! STOMP behaviour of the real broker over raw sockets: framing edge cases, heart-beats,
//! versions 1.0 to 1.2, bad input, and durability. stomp.py tests (tests/python) cover the
//! client-library view and the crossings with AMQP.
//!
//! Needs the broker binary: `cargo build -p rosetta` first (`tests/run` does it).

mod support;

mod durability;
mod errors;
mod framing;
mod hostile;
mod permissions;
mod rabbitmq;
mod websocket;
