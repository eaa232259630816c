//! The crate's one error type, and the one place where failures become MQTT 5.0 reason codes.

use mqtt_proto::v5::DisconnectReasonCode;
use rosetta_core::store::StoreError;
use rosetta_core::CoreError;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// Bytes that do not form a valid packet (MQTT 5.0 §4.13, reason 0x81).
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A well-formed packet that breaks a protocol rule (reason 0x82).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A packet larger than the server accepts, seen in its fixed header (reason 0x95).
    #[error("packet of {size} bytes exceeds the maximum packet size of {max}")]
    TooLarge { size: u64, max: u32 },
    /// A topic name the server does not accept (reason 0x90).
    #[error("invalid topic name: {0}")]
    TopicNameInvalid(String),
    /// A topic alias of 0 or above the announced maximum (reason 0x94).
    #[error("invalid topic alias {0}")]
    TopicAliasInvalid(u16),
    /// More unacknowledged QoS 1 and 2 publishes than the announced Receive Maximum (0x93).
    #[error("receive maximum {0} exceeded")]
    ReceiveMaximumExceeded(u16),
    /// CONNECT with a protocol level this server does not speak.
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
    /// CONNECT with a protocol name that is not MQTT's ([MQTT-3.1.2-1]).
    #[error("unknown protocol name {0:?}")]
    ProtocolName(String),
    /// The first packet was not CONNECT ([MQTT-3.1.0-1]).
    #[error("the first packet must be CONNECT")]
    NotConnect,
    /// A stored record that does not decode.
    #[error("corrupt stored {what} record: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl MqttError {
    /// The MQTT 5.0 DISCONNECT reason code for an error that ends a connection.
    pub fn disconnect_reason(&self) -> DisconnectReasonCode {
        match self {
            MqttError::Malformed(_) | MqttError::Corrupt { .. } => {
                DisconnectReasonCode::MalformedPacket
            }
            MqttError::Protocol(_)
            | MqttError::NotConnect
            | MqttError::ProtocolName(_)
            | MqttError::UnsupportedVersion(_) => DisconnectReasonCode::ProtocolError,
            MqttError::TooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
            MqttError::TopicNameInvalid(_) => DisconnectReasonCode::TopicNameInvalid,
            MqttError::TopicAliasInvalid(_) => DisconnectReasonCode::TopicAliasInvalid,
            MqttError::ReceiveMaximumExceeded(_) => DisconnectReasonCode::ReceiveMaximumExceeded,
            MqttError::Store(_) | MqttError::Core(_) => DisconnectReasonCode::UnspecifiedError,
        }
    }

    /// A configured limit refused the request: MQTT 5.0 says 0x97 Quota exceeded, in SUBACK
    /// and CONNACK alike.
    pub fn is_quota(&self) -> bool {
        matches!(
            self,
            MqttError::Core(CoreError::ResourceLimit(_) | CoreError::LimitReached(_))
        )
    }

    pub(crate) fn corrupt(what: &'static str, reason: impl Into<String>) -> Self {
        MqttError::Corrupt {
            what,
            reason: reason.into(),
        }
    }
}

/// Decoder errors of the codec crate, sorted into malformed packets and invalid topic names.
impl From<mqtt_proto::Error> for MqttError {
    fn from(e: mqtt_proto::Error) -> Self {
        match e {
            mqtt_proto::Error::InvalidTopicName(name) => {
                MqttError::TopicNameInvalid(name.to_string())
            }
            other => MqttError::Malformed(other.to_string()),
        }
    }
}

impl From<mqtt_proto::v5::ErrorV5> for MqttError {
    fn from(e: mqtt_proto::v5::ErrorV5) -> Self {
        match e {
            mqtt_proto::v5::ErrorV5::Common(common) => common.into(),
            // Properties in the wrong packet, twice, or with bad values are protocol errors
            // (MQTT 5.0 §2.2.2.2); the rest are malformed encodings.
            e @ (mqtt_proto::v5::ErrorV5::DuplicatedProperty(_)
            | mqtt_proto::v5::ErrorV5::InvalidProperty(..)
            | mqtt_proto::v5::ErrorV5::InvalidWillProperty(_)) => {
                MqttError::Protocol(e.to_string())
            }
            other => MqttError::Malformed(other.to_string()),
        }
    }
}
