//! The STOMP frame codec: pure functions, bytes in and frames out.
//!
//! A frame is `COMMAND EOL *(header EOL) EOL body NUL` (STOMP 1.2 Augmented BNF), where EOL is
//! LF or CR LF. Heart-beats are bare EOLs between frames and are skipped. The body runs for
//! `content-length` octets when that header is present (so it may contain NULs), otherwise up to
//! the first NUL. Every limit is checked on the bytes buffered so far, so an oversized frame is
//! refused while it arrives rather than after it has been buffered whole.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::StompError;
use crate::frame::{Command, Frame, Version};

/// Limits on what one frame may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most header lines in one frame (repeated entries count).
    pub max_headers: usize,
    /// Longest header line (and command line) in bytes, escapes included.
    pub max_header_length: usize,
    /// Largest body in bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_headers: 1000,
            max_header_length: 65_536,
            max_body: 128 * 1024 * 1024,
        }
    }
}

/// Decodes one frame from the front of `buf`, consuming it. `Ok(None)` means more bytes are
/// needed; heart-beat EOLs before a frame are consumed even then. `version` selects header
/// escaping: none for 1.0, STOMP 1.1 or 1.2 escapes otherwise (never for CONNECT, STOMP and
/// CONNECTED).
pub fn decode(
    buf: &mut BytesMut,
    limits: &Limits,
    version: Version,
) -> Result<Option<Frame>, StompError> {
    let mut hint = 0;
    decode_from(buf, limits, version, &mut hint)
}

/// [`decode`] for a caller that keeps `searched` between calls: the number of leading bytes of
/// the buffer already known to hold no NUL after an unterminated body, so a body without
/// `content-length` arriving in many pieces is scanned once, not once per piece. Reset to 0
/// whenever a frame is returned (this function does that).
pub fn decode_from(
    buf: &mut BytesMut,
    limits: &Limits,
    version: Version,
    searched: &mut usize,
) -> Result<Option<Frame>, StompError> {
    skip_heartbeats(buf, searched);
    if buf.is_empty() {
        return Ok(None);
    }
    let mut pos = 0;
    let Some(line) = next_line(buf, &mut pos, limits)? else {
        return Ok(None);
    };
    let command = Command::parse(line)
        .ok_or_else(|| StompError::UnknownCommand(String::from_utf8_lossy(line).into_owned()))?;
    let escaping = if command.escapes_headers() {
        version
    } else {
        Version::V1_0
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut count = 0;
    loop {
        let Some(line) = next_line(buf, &mut pos, limits)? else {
            return Ok(None);
        };
        if line.is_empty() {
            break;
        }
        count += 1;
        if count > limits.max_headers {
            return Err(StompError::TooManyHeaders {
                max: limits.max_headers,
            });
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| StompError::MissingColon(String::from_utf8_lossy(line).into_owned()))?;
        let name = unescape(&line[..colon], escaping)?;
        let value = unescape(&line[colon + 1..], escaping)?;
        // STOMP 1.2 Repeated Header Entries: only the first entry is used.
        if !headers.iter().any(|(n, _)| *n == name) {
            headers.push((name, value));
        }
    }
    let body_start = pos;
    let content_length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str());
    let body_end = match content_length {
        Some(text) => {
            let len: usize = text
                .trim()
                .parse()
                .map_err(|_| StompError::BadContentLength(text.to_owned()))?;
            if len > limits.max_body {
                return Err(StompError::BodyTooLarge {
                    max: limits.max_body,
                });
            }
            let end = body_start + len;
            if buf.len() <= end {
                return Ok(None);
            }
            if buf[end] != 0 {
                return Err(StompError::MissingNul(len));
            }
            end
        }
        None => {
            let from = body_start.max(*searched);
            match buf[from..].iter().position(|&b| b == 0) {
                Some(i) if from + i - body_start > limits.max_body => {
                    return Err(StompError::NoTerminator {
                        max: limits.max_body,
                    })
                }
                Some(i) => from + i,
                None => {
                    if buf.len() - body_start > limits.max_body {
                        return Err(StompError::NoTerminator {
                            max: limits.max_body,
                        });
                    }
                    *searched = buf.len();
                    return Ok(None);
                }
            }
        }
    };
    let mut frame_bytes = buf.split_to(body_end + 1);
    frame_bytes.advance(body_start);
    frame_bytes.truncate(body_end - body_start);
    *searched = 0;
    Ok(Some(Frame {
        command,
        headers,
        body: frame_bytes.freeze(),
    }))
}

/// Consumes leading EOLs (STOMP 1.2 Heart-beating: "a single end-of-line"; frames may also be
/// followed by EOLs). A lone CR waits for its LF.
fn skip_heartbeats(buf: &mut BytesMut, searched: &mut usize) {
    let mut n = 0;
    loop {
        match buf.get(n..) {
            Some([b'\n', ..]) => n += 1,
            Some([b'\r', b'\n', ..]) => n += 2,
            _ => break,
        }
    }
    if n > 0 {
        buf.advance(n);
        *searched = searched.saturating_sub(n);
    }
}

/// The next line starting at `*pos`, without its EOL; `None` if its LF has not arrived yet.
fn next_line<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    limits: &Limits,
) -> Result<Option<&'a [u8]>, StompError> {
    let rest = &buf[*pos..];
    let window = &rest[..rest.len().min(limits.max_header_length.saturating_add(2))];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if window.contains(&0) {
            return Err(StompError::NulInHeaders);
        }
        if rest.len() > limits.max_header_length.saturating_add(1) {
            return Err(StompError::HeaderTooLong {
                max: limits.max_header_length,
            });
        }
        return Ok(None);
    };
    let mut line = &rest[..lf];
    if let [head @ .., b'\r'] = line {
        line = head;
    }
    if line.contains(&0) {
        return Err(StompError::NulInHeaders);
    }
    if line.len() > limits.max_header_length {
        return Err(StompError::HeaderTooLong {
            max: limits.max_header_length,
        });
    }
    *pos += lf + 1;
    Ok(Some(line))
}

/// STOMP 1.2 Value Encoding (1.1 has the same escapes but `\r`).
fn unescape(raw: &[u8], version: Version) -> Result<String, StompError> {
    let text = std::str::from_utf8(raw).map_err(|_| StompError::NotUtf8)?;
    if version == Version::V1_0 || !text.contains('\\') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('c') => out.push(':'),
            Some('\\') => out.push('\\'),
            Some('r') if version == Version::V1_2 => out.push('\r'),
            Some(other) => return Err(StompError::BadEscape(other)),
            None => return Err(StompError::BadEscape(' ')),
        }
    }
    Ok(out)
}

fn escape_into(text: &str, version: Version, escaping: bool, out: &mut BytesMut) {
    if !escaping || version == Version::V1_0 {
        // Nothing can be escaped: keep the frame's structure intact by dropping line breaks.
        for b in text.bytes().filter(|&b| b != b'\n' && b != b'\r') {
            out.put_u8(b);
        }
        return;
    }
    for c in text.chars() {
        match c {
            '\n' => out.put_slice(b"\\n"),
            ':' => out.put_slice(b"\\c"),
            '\\' => out.put_slice(b"\\\\"),
            '\r' if version == Version::V1_2 => out.put_slice(b"\\r"),
            '\r' => {}
            c => {
                let mut tmp = [0u8; 4];
                out.put_slice(c.encode_utf8(&mut tmp).as_bytes());
            }
        }
    }
}

/// Encodes `frame` for a peer speaking `version`. Header values are escaped as that version
/// requires; the caller adds `content-length` when the body may hold a NUL.
pub fn encode(frame: &Frame, version: Version, out: &mut BytesMut) {
    let escaping = frame.command.escapes_headers();
    let size: usize = frame
        .headers
        .iter()
        .map(|(n, v)| n.len() + v.len() + 2)
        .sum();
    out.reserve(frame.command.as_str().len() + size + frame.body.len() + 3);
    out.put_slice(frame.command.as_str().as_bytes());
    out.put_u8(b'\n');
    for (name, value) in &frame.headers {
        escape_into(name, version, escaping, out);
        out.put_u8(b':');
        escape_into(value, version, escaping, out);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.put_slice(&frame.body);
    out.put_u8(0);
}

/// A heart-beat: one EOL (STOMP 1.2 Heart-beating).
pub fn encode_heartbeat(out: &mut BytesMut) {
    out.put_u8(b'\n');
}

/// A frame carrying `body` with its `content-length`, so a body holding NULs survives.
pub fn with_body(mut frame: Frame, body: Bytes) -> Frame {
    frame.headers.retain(|(n, _)| n != "content-length");
    frame.push_header("content-length", body.len().to_string());
    frame.body = body;
    frame
}
