//! MQTT 3.1, 3.1.1 and 5.0 front-end: the packet codec, the mapping of topics and messages onto
//! the core (`amq.topic`, RabbitMQ's conventions), retained messages, durable sessions, and the
//! sans-IO session the server's connection task drives.

pub mod codec;
pub mod error;
pub mod message;
mod persist;
mod record;
mod retained;
pub mod session;
mod state;
pub mod sys;
pub mod topic;

pub use error::MqttError;
pub use session::Session;
pub use state::{MqttConfig, MqttState};
