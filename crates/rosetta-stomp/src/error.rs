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

    /// A frame other than CONNECT (or STOMP) before the client logged in.
    #[error("a frame before CONNECT")]
    NotLoggedIn,
    /// A required header is absent.
    #[error("missing '{header}' header on {command}")]
    MissingHeader {
        command: &'static str,
        header: &'static str,
    },
    /// SUBSCRIBE or UNSUBSCRIBE with `durable` (or `persistent`) but no `id` to name the
    /// subscription by.
    #[error("a durable subscription without 'id'")]
    DurableWithoutId,
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
    /// ACK or NACK whose id is not one this server hands out.
    #[error("'{command}' names no valid '{header}'")]
    InvalidAckId {
        command: &'static str,
        header: &'static str,
    },
    /// A destination of none of the known kinds.
    #[error("unknown destination '{0}'")]
    UnknownDestination(String),
    /// A destination of a known kind with the wrong number of segments, or an empty one;
    /// `rest` is what followed the kind's prefix, as RabbitMQ quotes it.
    #[error("'{rest}' is not a valid {kind} destination")]
    InvalidDestination { kind: &'static str, rest: String },
    /// A destination header with nothing in it.
    #[error("empty destination")]
    BlankDestination,
    /// An exchange name, queue name or routing key longer than an AMQP short string.
    #[error("{what} of {len} bytes is longer than 255 bytes")]
    NameTooLong { what: &'static str, len: usize },
    /// A frame that is valid STOMP but not in this connection's state.
    #[error("{0}")]
    Unexpected(String),
    #[error("supported protocol versions are 1.0, 1.1 and 1.2")]
    UnsupportedVersion,
    /// Wrong login or passcode.
    #[error("access refused for user '{0}'")]
    AccessRefused(String),
    /// A loopback-only user connecting from elsewhere.
    #[error("user '{0}' may only connect over loopback")]
    LoopbackOnly(String),
    /// `host` names a virtual host that does not exist.
    #[error("no virtual host '{0}'")]
    VhostDenied(String),
    /// A SUBSCRIBE reusing a live subscription's consumer tag (RabbitMQ's `T_<id>`, or
    /// `Q_<destination>` for a subscription without id).
    #[error("subscription '{0}' already exists")]
    DuplicateSubscription(String),
    /// UNSUBSCRIBE naming no subscription; holds RabbitMQ's description of it (`id='x'`).
    #[error("no subscription {0}")]
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
    /// One more `/temp-queue/` name than `max_consumers_per_channel` allows.
    #[error("more than {max} temporary queues on one connection")]
    TooManyTempQueues { max: usize },
    /// The core refused an operation (missing queue or exchange, locked queue, limits, store
    /// failure): `name` is the AMQP error's name as RabbitMQ's plugin puts it in `message`
    /// (`not_found`, `precondition_failed`, …), `text` its explanation.
    #[error("{name}: {text}")]
    Refused { name: &'static str, text: String },
    /// Any other refusal the session decides itself.
    #[error("{0}")]
    Core(String),
}

impl From<CoreError> for StompError {
    fn from(e: CoreError) -> Self {
        let name = match &e {
            CoreError::NotFound(_) => "not_found",
            CoreError::AccessRefused(_) => "access_refused",
            CoreError::ResourceLocked(_) => "resource_locked",
            CoreError::PreconditionFailed(_)
            | CoreError::InvalidArgument { .. }
            | CoreError::LimitReached(_) => "precondition_failed",
            CoreError::UnknownExchangeType(_) => "command_invalid",
            CoreError::ResourceLimit(_) => "resource_error",
            CoreError::Store(_) => "internal_error",
        };
        // `message` already names the fault, so the body is the explanation alone.
        let (_, text) = e.parts();
        StompError::Refused { name, text }
    }
}

/// Every destination prefix, as RabbitMQ lists them when it refuses an unknown one.
const DESTINATION_KINDS: &str = "/temp-queue, /exchange, /topic, /queue, /amq/queue, /reply-queue/";

/// The versions this server speaks, as the ERROR frame's `version` header and the version
/// mismatch's body name them.
pub const SUPPORTED_VERSIONS: &str = "1.0,1.1,1.2";

impl StompError {
    /// The ERROR frame's `message` header: RabbitMQ's STOMP plugin's wording for the same
    /// fault, so clients that match on it move over unchanged.
    pub fn summary(&self) -> &'static str {
        match self {
            StompError::MissingColon(_)
            | StompError::BadEscape(_)
            | StompError::NotUtf8
            | StompError::NulInHeaders
            | StompError::BadContentLength(_)
            | StompError::MissingNul(_)
            | StompError::BodyTooLarge { .. }
            | StompError::NoTerminator { .. }
            | StompError::TooManyHeaders { .. }
            | StompError::HeaderTooLong { .. } => "Malformed frame",
            StompError::UnknownCommand(_) => "Bad command",
            StompError::NotLoggedIn => "Illegal command",
            StompError::MissingHeader {
                header: "destination",
                ..
            } => "Missing destination",
            StompError::MissingHeader {
                header: "transaction",
                ..
            } => "Missing transaction",
            StompError::MissingHeader {
                command: "UNSUBSCRIBE",
                ..
            } => "Missing destination or id",
            StompError::MissingHeader { .. } => "Missing header",
            StompError::DurableWithoutId => "Missing Header",
            StompError::InvalidHeader { .. }
            | StompError::HeaderNotAllowed { .. }
            | StompError::InvalidAckId { .. } => "Invalid header",
            StompError::UnknownDestination(_) => "Unknown destination",
            StompError::InvalidDestination { .. }
            | StompError::BlankDestination
            | StompError::NameTooLong { .. } => "Invalid destination",
            StompError::Unexpected(_) => "Unexpected frame",
            StompError::UnsupportedVersion => "Version mismatch",
            StompError::AccessRefused(_)
            | StompError::LoopbackOnly(_)
            | StompError::VhostDenied(_) => "Bad CONNECT",
            StompError::DuplicateSubscription(_) => "Duplicated subscription identifier",
            StompError::UnknownSubscription(_) => "No subscription found",
            StompError::UnknownAckId(_) => "Message not found",
            StompError::UnknownTransaction(_) | StompError::DuplicateTransaction(_) => {
                "Bad transaction"
            }
            StompError::TransactionTooLarge { .. } => "Transaction too large",
            StompError::TooManyTransactions { .. } => "Transaction limit exceeded",
            StompError::TooManySubscriptions { .. } => "Subscription limit exceeded",
            StompError::TooManyTempQueues { .. } => "Temporary queue limit exceeded",
            StompError::Refused { name, .. } => name,
            StompError::Core(_) => "Operation refused",
        }
    }

    /// The ERROR frame's body: RabbitMQ's explanation where its plugin has one for the fault
    /// (Erlang's `~p` quoting included, so `'SEND'` and `<<"id">>` read as there), ours
    /// otherwise.
    pub fn body(&self) -> String {
        match self {
            StompError::UnknownCommand(command) => {
                format!("Could not interpret command \"{command}\"\n")
            }
            StompError::NotLoggedIn => "You must log in using CONNECT first".to_owned(),
            StompError::MissingHeader {
                command: "UNSUBSCRIBE",
                header: "id",
            } => "UNSUBSCRIBE must include a 'destination' or 'id' header".to_owned(),
            StompError::MissingHeader {
                command: command @ ("ACK" | "NACK"),
                header,
            } => format!("'{command}' must include the <<\"{header}\">> header\n"),
            StompError::MissingHeader { command, header } => {
                format!("'{command}' must include a '{header}' header\n")
            }
            StompError::DurableWithoutId => {
                "Header 'id' is required for durable subscriptions".to_owned()
            }
            StompError::HeaderNotAllowed { .. } => format!("{self}\n"),
            StompError::InvalidAckId { command, header } => {
                format!("'{command}' must include a valid <<\"{header}\">> header\n")
            }
            StompError::UnknownDestination(text) => format!(
                "'{text}' is not a valid destination.\nValid destination types are: {DESTINATION_KINDS}.\n"
            ),
            StompError::InvalidDestination { .. } => format!("{self}\n"),
            StompError::BlankDestination => "Destination cannot be blank".to_owned(),
            StompError::UnsupportedVersion => format!("Supported versions are {SUPPORTED_VERSIONS}\n"),
            StompError::AccessRefused(user) => format!("Access refused for user '{user}'"),
            StompError::LoopbackOnly(_) => "non-loopback access denied".to_owned(),
            StompError::VhostDenied(vhost) => format!("Virtual host '{vhost}' access denied"),
            StompError::DuplicateSubscription(tag) => {
                format!("A subscription identified by '{tag}' already exists.")
            }
            StompError::UnknownSubscription(description) => format!(
                "UNSUBSCRIBE must refer to an existing subscription.\nSubscription to <<\"{description}\">> not found.\n"
            ),
            StompError::UnknownAckId(tag) => format!("unknown delivery tag {tag}\n"),
            StompError::UnknownTransaction(tx) => {
                format!("Invalid transaction identifier: <<\"{tx}\">>\n")
            }
            StompError::TooManyTransactions { max } => {
                format!("Too many concurrent transactions (limit {max})")
            }
            StompError::Refused { text, .. } => text.clone(),
            other => other.to_string(),
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
            StompError::UnknownCommand("FOO".into()).to_string(),
            "unknown command 'FOO'"
        );
    }

    /// RabbitMQ's texts, `message` header and body, with Erlang's quoting where it formats
    /// an atom (`'SEND'`) or a binary (`<<"id">>`) with `~p`.
    #[test]
    fn messages_and_bodies_are_rabbitmqs() {
        let cases = [
            (
                StompError::UnknownCommand("FOO".into()),
                "Bad command",
                "Could not interpret command \"FOO\"\n",
            ),
            (
                StompError::MissingHeader {
                    command: "SEND",
                    header: "destination",
                },
                "Missing destination",
                "'SEND' must include a 'destination' header\n",
            ),
            (
                StompError::MissingHeader {
                    command: "NACK",
                    header: "id",
                },
                "Missing header",
                "'NACK' must include the <<\"id\">> header\n",
            ),
            (
                StompError::InvalidDestination {
                    kind: "queue",
                    rest: "/a/b".into(),
                },
                "Invalid destination",
                "'/a/b' is not a valid queue destination\n",
            ),
            (
                StompError::UnsupportedVersion,
                "Version mismatch",
                "Supported versions are 1.0,1.1,1.2\n",
            ),
            (
                StompError::AccessRefused("bob".into()),
                "Bad CONNECT",
                "Access refused for user 'bob'",
            ),
            (
                StompError::VhostDenied("nope".into()),
                "Bad CONNECT",
                "Virtual host 'nope' access denied",
            ),
            (
                StompError::DuplicateSubscription("T_s".into()),
                "Duplicated subscription identifier",
                "A subscription identified by 'T_s' already exists.",
            ),
            (
                StompError::DurableWithoutId,
                "Missing Header",
                "Header 'id' is required for durable subscriptions",
            ),
            (
                StompError::HeaderNotAllowed {
                    command: "SEND",
                    header: "message-id",
                },
                "Invalid header",
                "'message-id' is not allowed on 'SEND'.\n",
            ),
            (
                StompError::from(CoreError::NotFound("no exchange 'x' in vhost '/'".into())),
                "not_found",
                "no exchange 'x' in vhost '/'",
            ),
        ];
        for (error, message, body) in cases {
            assert_eq!(error.summary(), message, "{error:?}");
            assert_eq!(error.body(), body, "{error:?}");
        }
    }
}
