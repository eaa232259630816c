//! The core's one error type. Each kind mirrors a class of failure every protocol can express
//! (AMQP reply codes, MQTT reason codes, STOMP ERROR frames); each front-end maps them in one place.

use crate::store::StoreError;

#[derive(Debug)]
pub enum CoreError {
    /// The named entity does not exist (AMQP 404).
    NotFound(String),
    /// The client may not do this (AMQP 403).
    AccessRefused(String),
    /// The entity is in exclusive use by another connection (AMQP 405).
    ResourceLocked(String),
    /// The request contradicts the entity's state or definition (AMQP 406).
    PreconditionFailed(String),
    /// An argument has an invalid value (AMQP 406 on declare, as RabbitMQ does).
    InvalidArgument { name: String, reason: String },
    /// The client named an exchange type this broker does not have (AMQP 503 COMMAND_INVALID).
    UnknownExchangeType(String),
    /// A configured limit was reached (AMQP 506 RESOURCE_ERROR).
    ResourceLimit(String),
    /// A configured per-virtual-host limit (queues, exchanges, bindings) or a key longer than
    /// the protocols can carry. AMQP answers 406 on the channel, as RabbitMQ answers a declare
    /// past its queue limit; MQTT says Quota exceeded, STOMP sends an ERROR frame.
    LimitReached(String),
    /// The store failed; the operation may not be durable (AMQP 541 INTERNAL_ERROR).
    Store(StoreError),
}

impl CoreError {
    /// The failure's AMQP reply name (`NOT_FOUND`, `PRECONDITION_FAILED`, …) and its
    /// explanation, apart, for protocols that carry them in separate fields; `Display` joins
    /// them with " - ", as AMQP's reply text does.
    pub fn parts(&self) -> (&'static str, String) {
        match self {
            CoreError::NotFound(t) => ("NOT_FOUND", t.clone()),
            CoreError::AccessRefused(t) => ("ACCESS_REFUSED", t.clone()),
            CoreError::ResourceLocked(t) => ("RESOURCE_LOCKED", t.clone()),
            CoreError::PreconditionFailed(t) | CoreError::LimitReached(t) => {
                ("PRECONDITION_FAILED", t.clone())
            }
            CoreError::InvalidArgument { name, reason } => (
                "PRECONDITION_FAILED",
                format!("invalid arg '{name}': {reason}"),
            ),
            CoreError::UnknownExchangeType(t) => {
                ("COMMAND_INVALID", format!("unknown exchange type '{t}'"))
            }
            CoreError::ResourceLimit(t) => ("RESOURCE_ERROR", t.clone()),
            CoreError::Store(e) => ("INTERNAL_ERROR", e.to_string()),
        }
    }
}

impl std::fmt::Display for CoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, explanation) = self.parts();
        write!(f, "{name} - {explanation}")
    }
}

impl std::error::Error for CoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CoreError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        CoreError::Store(e)
    }
}
