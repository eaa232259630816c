//! AMQP 0-9-1 front-end: the frame codec, conversions between the wire types and the core's
//! neutral message model, and the crate's error type.

pub mod codec;
pub mod convert;
pub mod error;
pub mod session;

pub use error::AmqpError;
