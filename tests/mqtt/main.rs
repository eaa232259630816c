//! MQTT 3.1.1 and 5.0 against the real broker: rumqttc clients for what applications do, raw
//! sockets for exact packet sequences and bad input, kill -9 for durability, and lapin for the
//! crossings between MQTT and AMQP. paho-mqtt and the mosquitto command-line clients are tested
//! from tests/python.
//!
//! Needs the broker binary: `cargo build -p rosetta` first (`tests/run` does it).

mod support;

mod cross;
mod durability;
mod errors;
mod hostile;
mod login;
mod mosquitto;
mod order;
mod permissions;
mod resend;
mod shared;
mod v311;
mod v5;
mod websocket;
