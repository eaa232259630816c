//! The core's one error type. Each kind mirrors a class of failure every protocol can express
//! (AMQP reply codes, MQTT reason codes, STOMP ERROR frames); each front-end maps them in one place.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The named entity does not exist (AMQP 404).
    #[error("NOT_FOUND - {0}")]
    NotFound(String),
    /// The client may not do this (AMQP 403).
    #[error("ACCESS_REFUSED - {0}")]
    AccessRefused(String),
    /// The entity is in exclusive use by another connection (AMQP 405).
    #[error("RESOURCE_LOCKED - {0}")]
    ResourceLocked(String),
    /// The request contradicts the entity's state or definition (AMQP 406).
    #[error("PRECONDITION_FAILED - {0}")]
    PreconditionFailed(String),
    /// An argument has an invalid value (AMQP 406 on declare, as RabbitMQ does).
    #[error("PRECONDITION_FAILED - invalid arg '{name}': {reason}")]
    InvalidArgument { name: String, reason: String },
    /// The client named an exchange type this broker does not have (AMQP 503 COMMAND_INVALID).
    #[error("COMMAND_INVALID - unknown exchange type '{0}'")]
    UnknownExchangeType(String),
    /// A configured limit was reached (AMQP 506 RESOURCE_ERROR).
    #[error("RESOURCE_ERROR - {0}")]
    ResourceLimit(String),
    /// A configured per-virtual-host limit (queues, exchanges, bindings) or a key longer than
    /// the protocols can carry. AMQP answers 406 on the channel, as RabbitMQ answers a declare
    /// past its queue limit; MQTT says Quota exceeded, STOMP sends an ERROR frame.
    #[error("PRECONDITION_FAILED - {0}")]
    LimitReached(String),
    /// The store failed; the operation may not be durable (AMQP 541 INTERNAL_ERROR).
    #[error("INTERNAL_ERROR - {0}")]
    Store(#[from] StoreError),
}
