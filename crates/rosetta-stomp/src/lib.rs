//! STOMP 1.0, 1.1 and 1.2 front-end: the frame codec, destinations and header mapping onto the
//! core's neutral model, and a sans-IO session that turns frames into core calls.

pub mod codec;
pub mod destination;
pub mod error;
pub mod frame;
pub mod mapping;
pub mod owner;
pub mod session;

pub use error::StompError;
pub use frame::{Command, Frame, Version};
