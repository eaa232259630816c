//! The crate's error type. Every error a client can cause ends in one ERROR frame followed by
//! closing the connection (STOMP 1.2 ERROR); the frame's `message` header is the error's short
//! summary and its body the explanation. That mapping lives here and nowhere else.

use rosetta_core::CoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StompError {
    /// The command line names no STOMP command.
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    /// A header line has no colon separating name and value.
    #[error("header line without a colon: '{0}'")]
    MissingColon(String),
    /// A backslash escape STOMP does not define for this version (STOMP 1.2 Value Encoding:
    /// undefined escapes are a fatal protocol error).
    #[error("undefined escape sequence '\\{0}' in header")]
    BadEscape(char),
    /// A header name or value, or the command line, is not UTF-8.
    #[error("header is not valid UTF-8")]
    NotUtf8,
    /// A NUL octet inside the command line or headers.
    #[error("NUL octet inside the frame's headers")]
    NulInHeaders,
    #[error("content-length '{0}' is not a non-negative integer")]
    BadContentLength(String),
    /// The octet after `content-length` body octets is not the NUL that ends a frame.
    #[error("frame body not terminated by NUL after content-length {0}")]
    MissingNul(usize),
    #[error("frame body exceeds {max} bytes")]
    BodyTooLarge { max: usize },
    /// A frame without `content-length` whose NUL terminator did not arrive within the limit.
    #[error("no NUL frame terminator within {max} body bytes")]
    NoTerminator { max: usize },
    #[error("more than {max} headers")]
    TooManyHeaders { max: usize },
    #[error("header line longer than {max} bytes")]
    HeaderTooLong { max: usize },

    /// A required header is absent.
    #[error("missing '{header}' header on {command}")]
    MissingHeader {
        command: &'static str,
        header: &'static str,
    },
    /// A header the command may not carry.
    #[error("'{header}' is not allowed on '{command}'.")]
    HeaderNotAllowed {
        command: &'static str,
        header: &'static str,
    },
    /// A header has a value this server cannot use.
    #[error("invalid '{header}' header: {reason}")]
    InvalidHeader {
        header: &'static str,
        reason: String,
    },
    #[error("unknown destination '{0}'")]
    BadDestination(String),
    /// An exchange name, queue name or routing key longer than an AMQP short string.
    #[error("{what} of {len} bytes is longer than 255 bytes")]
    NameTooLong { what: &'static str, len: usize },
    /// A frame that is valid STOMP but not in this connection's state.
    #[error("{0}")]
    Unexpected(String),
    #[error("supported protocol versions are 1.0, 1.1 and 1.2")]
    UnsupportedVersion,
    #[error("access refused for user '{0}'")]
    AccessRefused(String),
    #[error("subscription '{0}' already exists")]
    DuplicateSubscription(String),
    #[error("no subscription '{0}'")]
    UnknownSubscription(String),
    /// ACK or NACK naming nothing this connection has outstanding.
    #[error("no outstanding message with id '{0}'")]
    UnknownAckId(String),
    #[error("no transaction '{0}'")]
    UnknownTransaction(String),
    #[error("transaction '{0}' already started")]
    DuplicateTransaction(String),
    /// One more frame would take an open transaction past `max_transaction_frames` or
    /// `max_transaction_bytes`; the transaction is dropped.
    #[error("transaction '{id}' would hold more than {limit}; it has been aborted")]
    TransactionTooLarge { id: String, limit: String },
    #[error("more than {max} transactions open at once")]
    TooManyTransactions { max: usize },
    /// One more SUBSCRIBE than `max_consumers_per_channel` allows.
    #[error("more than {max} subscriptions on one connection")]
    TooManySubscriptions { max: usize },
    /// The core refused an operation (missing queue, locked queue, store failure).
    #[error("{0}")]
    Core(String),
}

impl From<CoreError> for StompError {
    fn from(e: CoreError) -> Self {
        StompError::Core(e.to_string())
    }
}

impl StompError {
    /// The ERROR frame's `message` header: a short summary, like RabbitMQ's.
    pub fn summary(&self) -> &'static str {
        match self {
            StompError::UnknownCommand(_)
            | StompError::MissingColon(_)
            | StompError::BadEscape(_)
            | StompError::NotUtf8
            | StompError::NulInHeaders
            | StompError::BadContentLength(_)
            | StompError::MissingNul(_)
            | StompError::BodyTooLarge { .. }
            | StompError::NoTerminator { .. }
            | StompError::TooManyHeaders { .. }
            | StompError::HeaderTooLong { .. } => "Malformed frame",
            // RabbitMQ's STOMP plugin words an ACK or NACK that names no message so.
            StompError::MissingHeader {
                command: "ACK" | "NACK",
                ..
            } => "Missing header",
            StompError::MissingHeader { .. }
            | StompError::InvalidHeader { .. }
            | StompError::HeaderNotAllowed { .. } => "Invalid header",
            StompError::BadDestination(_) => "Unknown destination",
            StompError::NameTooLong { .. } => "Invalid destination",
            StompError::Unexpected(_) => "Unexpected frame",
            StompError::UnsupportedVersion => "Version not supported",
            StompError::AccessRefused(_) => "Access refused",
            StompError::DuplicateSubscription(_) | StompError::UnknownSubscription(_) => {
                "Invalid subscription"
            }
            StompError::UnknownAckId(_) => "Invalid message id",
            StompError::UnknownTransaction(_) | StompError::DuplicateTransaction(_) => {
                "Invalid transaction"
            }
            StompError::TransactionTooLarge { .. } => "Transaction too large",
            StompError::TooManyTransactions { .. } => "Transaction limit exceeded",
            StompError::TooManySubscriptions { .. } => "Subscription limit exceeded",
            StompError::Core(_) => "Operation refused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_errors_are_told_apart_from_protocol_errors() {
        assert_eq!(
            StompError::MissingColon("x".into()).summary(),
            "Malformed frame"
        );
        assert_eq!(
            StompError::NoTerminator { max: 3 }.summary(),
            "Malformed frame"
        );
        assert_eq!(
            StompError::UnknownAckId("7".into()).summary(),
            "Invalid message id"
        );
        assert_eq!(
            StompError::MissingHeader {
                command: "NACK",
                header: "id"
            }
            .summary(),
            "Missing header"
        );
        assert_eq!(
            StompError::MissingHeader {
                command: "SEND",
                header: "destination"
            }
            .summary(),
            "Invalid header"
        );
        assert_eq!(
            StompError::UnknownCommand("FOO".into()).to_string(),
            "unknown command 'FOO'"
        );
    }
}
