//! The crate's error type and its mapping onto AMQP 0-9-1 reply codes.
//!
//! Every error a client can cause ends in a `connection.close` carrying a reply code and text;
//! that mapping lives here and nowhere else.

/// AMQP 0-9-1 reply code `frame-error`: a frame the recipient could not decode.
pub const FRAME_ERROR: u16 = 501;
/// AMQP 0-9-1 reply code `syntax-error`: a frame with illegal values in its fields.
pub const SYNTAX_ERROR: u16 = 502;
/// AMQP 0-9-1 reply code `command-invalid`: an operation the server considers invalid.
pub const COMMAND_INVALID: u16 = 503;
/// AMQP 0-9-1 reply code `not-implemented`: functionality the server does not implement.
pub const NOT_IMPLEMENTED: u16 = 540;
/// AMQP 0-9-1 reply code `internal-error`: the server could not complete a method.
pub const INTERNAL_ERROR: u16 = 541;

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmqpError {
    /// A frame header announced a payload larger than the negotiated `frame-max` allows.
    /// Detected from the 7-byte header alone, before the payload is buffered.
    #[error("frame payload of {size} bytes exceeds frame-max {max}")]
    FrameTooLarge {
        /// The payload size announced by the frame header.
        size: u32,
        /// The negotiated frame-max (which counts the 8 bytes of framing too).
        max: u32,
    },

    /// The octet after the payload was not the frame-end marker 0xCE.
    #[error("frame end octet is {found:#04x}, expected 0xce")]
    BadFrameEnd {
        /// The octet found where 0xCE belongs.
        found: u8,
    },

    /// The first octet of a frame is not a frame type this protocol defines.
    #[error("unknown frame type {frame_type}")]
    UnknownFrameType {
        /// The frame type octet received.
        frame_type: u8,
    },

    /// A heartbeat frame on a channel other than zero, or one carrying a payload.
    #[error("invalid heartbeat frame on channel {channel} with a {size}-byte payload")]
    BadHeartbeat {
        /// The channel the heartbeat arrived on.
        channel: u16,
        /// The payload size it announced.
        size: u32,
    },

    /// A method frame naming a class the server does not know.
    #[error("unknown class {class_id}")]
    UnknownClass {
        /// The class id received.
        class_id: u16,
    },

    /// A method frame naming a known class but a method id that class does not define.
    #[error("unknown method {method_id} in class {class_id}")]
    UnknownMethod {
        /// The class id received.
        class_id: u16,
        /// The method id received.
        method_id: u16,
    },

    /// A method frame whose arguments could not be decoded (truncated, trailing bytes, a bad
    /// field-table type tag, invalid UTF-8 in a short string, nesting too deep).
    #[error("malformed arguments for method {class_id}.{method_id}: {reason}")]
    Syntax {
        /// The class id of the offending method (0 when the payload is too short to hold it).
        class_id: u16,
        /// The method id of the offending method (0 when the payload is too short to hold it).
        method_id: u16,
        /// What was wrong, for the reply text and logs.
        reason: &'static str,
    },

    /// A content header frame that could not be decoded.
    #[error("malformed content header: {reason}")]
    BadContentHeader {
        /// What was wrong, for the reply text and logs.
        reason: &'static str,
    },

    /// An outgoing content header does not fit in one frame of the negotiated size; content
    /// headers cannot be split across frames (AMQP 0-9-1 §4.2.6.1).
    #[error("content header of {size} bytes does not fit frame-max {max}")]
    ContentHeaderTooLarge {
        /// The encoded size of the header frame, framing included.
        size: usize,
        /// The negotiated frame-max.
        max: u32,
    },

    /// An outgoing method names something longer than a short string holds (255 bytes): a
    /// route another protocol allowed, which AMQP 0-9-1 cannot carry.
    #[error("a name of {len} bytes does not fit a short string")]
    NameTooLong {
        /// The name's length in bytes.
        len: usize,
    },
}

impl AmqpError {
    /// The reply code to send in `connection.close` for this error.
    ///
    /// Every decoding error is a connection exception: the AMQP 0-9-1 reply codes used here
    /// (501-540) are all hard errors.
    pub fn reply_code(&self) -> u16 {
        match self {
            // AMQP 0-9-1 §4.2.3: a peer MUST NOT send frames larger than the agreed size; the
            // receiver answers with frame-error. §4.2.7: an invalid heartbeat is a frame error.
            AmqpError::FrameTooLarge { .. }
            | AmqpError::BadFrameEnd { .. }
            | AmqpError::UnknownFrameType { .. }
            | AmqpError::BadHeartbeat { .. } => FRAME_ERROR,
            AmqpError::Syntax { .. } | AmqpError::BadContentHeader { .. } => SYNTAX_ERROR,
            // A class id the server has never heard of (for instance the AMQP 0-8 `file` or
            // `stream` classes) is functionality it does not implement ...
            AmqpError::UnknownClass { .. } => NOT_IMPLEMENTED,
            // ... whereas a method id that a known class does not define is not a valid command
            // at all.
            AmqpError::UnknownMethod { .. } => COMMAND_INVALID,
            // The server failed to frame its own output: nothing the client did wrong.
            AmqpError::ContentHeaderTooLarge { .. } | AmqpError::NameTooLong { .. } => {
                INTERNAL_ERROR
            }
        }
    }

    /// The reply text to send in `connection.close`: the symbolic name of the reply code
    /// followed by the details, as RabbitMQ formats it (clients display it verbatim).
    pub fn reply_text(&self) -> String {
        let mut text = format!("{} - {self}", reply_name(self.reply_code()));
        // The reply text is a short string (AMQP 0-9-1 connection.close reply-text).
        truncate_to_char_boundary(&mut text, 255);
        text
    }

    /// The class and method ids to report in `connection.close`, when the error concerns one
    /// method; `(0, 0)` otherwise.
    pub fn failing_method(&self) -> (u16, u16) {
        match *self {
            AmqpError::UnknownClass { class_id } => (class_id, 0),
            AmqpError::UnknownMethod {
                class_id,
                method_id,
            }
            | AmqpError::Syntax {
                class_id,
                method_id,
                ..
            } => (class_id, method_id),
            _ => (0, 0),
        }
    }
}

/// The symbolic name of a reply code, as the AMQP 0-9-1 specification spells it.
pub fn reply_name(code: u16) -> &'static str {
    match code {
        200 => "REPLY_SUCCESS",
        311 => "CONTENT_TOO_LARGE",
        312 => "NO_ROUTE",
        313 => "NO_CONSUMERS",
        320 => "CONNECTION_FORCED",
        402 => "INVALID_PATH",
        403 => "ACCESS_REFUSED",
        404 => "NOT_FOUND",
        405 => "RESOURCE_LOCKED",
        406 => "PRECONDITION_FAILED",
        FRAME_ERROR => "FRAME_ERROR",
        SYNTAX_ERROR => "SYNTAX_ERROR",
        COMMAND_INVALID => "COMMAND_INVALID",
        504 => "CHANNEL_ERROR",
        505 => "UNEXPECTED_FRAME",
        506 => "RESOURCE_ERROR",
        530 => "NOT_ALLOWED",
        NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        INTERNAL_ERROR => "INTERNAL_ERROR",
        _ => "UNKNOWN_REPLY_CODE",
    }
}

/// Shortens `s` to at most `max` bytes without splitting a UTF-8 sequence.
pub(crate) fn truncate_to_char_boundary(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_its_reply_code() {
        assert_eq!(
            AmqpError::FrameTooLarge { size: 1, max: 1 }.reply_code(),
            501
        );
        assert_eq!(AmqpError::BadFrameEnd { found: 0 }.reply_code(), 501);
        assert_eq!(
            AmqpError::UnknownFrameType { frame_type: 9 }.reply_code(),
            501
        );
        assert_eq!(
            AmqpError::BadHeartbeat {
                channel: 1,
                size: 0
            }
            .reply_code(),
            501
        );
        assert_eq!(
            AmqpError::Syntax {
                class_id: 60,
                method_id: 40,
                reason: "x"
            }
            .reply_code(),
            502
        );
        assert_eq!(
            AmqpError::BadContentHeader { reason: "x" }.reply_code(),
            502
        );
        assert_eq!(
            AmqpError::UnknownMethod {
                class_id: 60,
                method_id: 1
            }
            .reply_code(),
            503
        );
        assert_eq!(AmqpError::UnknownClass { class_id: 70 }.reply_code(), 540);
        assert_eq!(
            AmqpError::ContentHeaderTooLarge { size: 9, max: 8 }.reply_code(),
            541
        );
    }

    #[test]
    fn reply_text_names_the_code_and_fits_a_short_string() {
        let text = AmqpError::UnknownClass { class_id: 70 }.reply_text();
        assert_eq!(text, "NOT_IMPLEMENTED - unknown class 70");
        let long = AmqpError::Syntax {
            class_id: 1,
            method_id: 2,
            reason: "é",
        };
        assert!(long.reply_text().starts_with("SYNTAX_ERROR - "));

        let mut s = "é".repeat(200);
        truncate_to_char_boundary(&mut s, 255);
        assert_eq!(s.len(), 254);
    }

    #[test]
    fn failing_method_reports_class_and_method_ids() {
        assert_eq!(
            AmqpError::UnknownMethod {
                class_id: 60,
                method_id: 7
            }
            .failing_method(),
            (60, 7)
        );
        assert_eq!(
            AmqpError::UnknownClass { class_id: 70 }.failing_method(),
            (70, 0)
        );
        assert_eq!(AmqpError::BadFrameEnd { found: 1 }.failing_method(), (0, 0));
    }
}
