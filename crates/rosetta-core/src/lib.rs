//! Rosetta's protocol-neutral core: the message model, exchanges and bindings, queues and
//! consumers, virtual hosts, and the storage contract. No protocol, socket or storage engine is
//! known here; front-ends translate their frames into calls on [`Broker`] and [`VHost`].

#[cfg(test)]
mod allocation_tests;
pub mod auth;
pub mod broker;
#[cfg(test)]
mod buffer_tests;
pub mod consumer;
mod consumer_set;
#[cfg(test)]
mod counter_tests;
pub mod dead_letter;
#[cfg(test)]
mod durability_tests;
pub mod durable;
pub mod error;
pub mod exchange;
pub mod front_end;
mod hash;
mod headers_match;
#[cfg(test)]
mod ledger_tests;
#[cfg(test)]
mod memory_store;
pub mod message;
#[cfg(test)]
mod owner_tests;
mod paging;
pub mod queue;
pub mod queue_config;
pub mod queue_owner;
mod record_texts;
#[cfg(test)]
mod routing_tests;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topic;
pub mod vhost;

pub use auth::{AuthFailure, Directory, Grant, User, Users};
pub use broker::{Broker, CoreLimits, Counters};
pub use consumer::{
    CloseReason, ConnectionId, Consumer, ConsumerSpec, Credit, Delivery, Outbound, Unwritten,
};
pub use error::CoreError;
pub use exchange::{Destination, AMQ_TOPIC};
pub use hash::TagHasher;
pub use message::{Message, Properties, Table, Value};
pub use queue::{Queue, Settlement};
pub use queue_owner::QueueOwner;
pub use vhost::{
    ExchangeDeclare, PublishOutcome, QueueDeclare, QueueDeclared, QueueDeleted, VHost,
};
