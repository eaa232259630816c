//! Protocol exceptions (AMQP 0-9-1 §1.4.2): a reply code, a text, and the method that caused
//! it. Codes below 500 are channel exceptions; 500 and above (and 320) close the connection.
//! Core errors map onto reply codes here and nowhere else.

use amq_protocol::protocol::{channel, connection, AMQPClass};
use rosetta_core::CoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

/// What an exception reports of the method that failed: its class and method ids.
pub trait MethodIds {
    fn ids(&self) -> (u16, u16);
}

impl MethodIds for AMQPClass {
    fn ids(&self) -> (u16, u16) {
        (self.get_amqp_class_id(), self.get_amqp_method_id())
    }
}

/// Ids given as such, for a method whose arguments the caller has taken apart or moved on.
impl MethodIds for (u16, u16) {
    fn ids(&self) -> (u16, u16) {
        *self
    }
}

/// `basic.publish`, which arrives once per message: its handlers name it by these ids rather
/// than by a copy of its arguments.
pub const BASIC_PUBLISH: (u16, u16) = (60, 40);

impl Exception {
    pub fn new(code: u16, mut text: String, class_id: u16, method_id: u16) -> Self {
        // reply-text is a short string.
        if text.len() > 255 {
            let mut cut = 255;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        Exception {
            code,
            text,
            class_id,
            method_id,
        }
    }

    pub fn for_method(code: u16, text: String, method: &impl MethodIds) -> Self {
        let (c, m) = method.ids();
        Exception::new(code, text, c, m)
    }

    /// Maps a core error raised while handling `method`.
    pub fn from_core(err: &CoreError, method: &impl MethodIds) -> Self {
        let code = match err {
            CoreError::NotFound(_) => 404,
            CoreError::AccessRefused(_) => 403,
            CoreError::ResourceLocked(_) => 405,
            CoreError::PreconditionFailed(_)
            | CoreError::InvalidArgument { .. }
            | CoreError::LimitReached(_) => 406,
            CoreError::UnknownExchangeType(_) => 503,
            CoreError::ResourceLimit(_) => 506,
            CoreError::Store(_) => 541,
        };
        Exception::for_method(code, err.to_string(), method)
    }

    pub fn precondition(method: &impl MethodIds, text: impl std::fmt::Display) -> Self {
        Exception::for_method(406, format!("PRECONDITION_FAILED - {text}"), method)
    }

    pub fn not_allowed(method: &impl MethodIds, text: impl std::fmt::Display) -> Self {
        Exception::for_method(530, format!("NOT_ALLOWED - {text}"), method)
    }

    pub fn command_invalid(method: &impl MethodIds, text: impl std::fmt::Display) -> Self {
        Exception::for_method(503, format!("COMMAND_INVALID - {text}"), method)
    }

    pub fn channel_error(method: &impl MethodIds, text: impl std::fmt::Display) -> Self {
        Exception::for_method(504, format!("CHANNEL_ERROR - {text}"), method)
    }

    pub fn unexpected_frame(text: impl std::fmt::Display) -> Self {
        Exception::new(505, format!("UNEXPECTED_FRAME - {text}"), 0, 0)
    }

    pub fn not_implemented(method: &impl MethodIds, text: impl std::fmt::Display) -> Self {
        Exception::for_method(540, format!("NOT_IMPLEMENTED - {text}"), method)
    }

    /// Connection exceptions end the connection; channel exceptions only the channel.
    pub fn is_hard(&self) -> bool {
        self.code >= 500 || self.code == 320
    }

    pub fn channel_close(&self) -> channel::Close {
        channel::Close {
            reply_code: self.code,
            reply_text: self.text.clone().into(),
            class_id: self.class_id,
            method_id: self.method_id,
        }
    }

    pub fn connection_close(&self) -> connection::Close {
        connection::Close {
            reply_code: self.code,
            reply_text: self.text.clone().into(),
            class_id: self.class_id,
            method_id: self.method_id,
        }
    }
}
