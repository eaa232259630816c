//! The STOMP frame codec: pure functions, bytes in and frames out.
//!
//! A frame is `COMMAND EOL *(header EOL) EOL body NUL` (STOMP 1.2 Augmented BNF), where EOL is
//! LF or CR LF. Heart-beats are bare EOLs between frames and are skipped, and so are stray NULs
//! there. The body runs for `content-length` octets when that header is present (so it may
//! contain NULs), otherwise up to the first NUL. Every limit is checked on the bytes buffered so
//! far, so an oversized frame is refused while it arrives rather than after it has been buffered
//! whole.
//!
//! A frame may arrive a byte at a time. [`Decoder`] keeps its place in a partly received frame
//! (the lines already parsed, how far the search for the next LF or the NUL got), so each byte
//! is examined a bounded number of times however the frame is split: a client trickling a large
//! header block costs the broker linear work, not quadratic.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::{self, Write as _};

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
/// CONNECTED). Starts from scratch each call; a caller fed piecemeal keeps a [`Decoder`].
pub fn decode(
    buf: &mut BytesMut,
    limits: &Limits,
    version: Version,
) -> Result<Option<Frame>, StompError> {
    Decoder::default().decode(buf, limits, version)
}

/// Where the frame at the front of the buffer has got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Stage {
    #[default]
    Command,
    Headers(Command),
    /// The blank line ending the headers has arrived; the body starts at `start` and runs for
    /// `len` octets when `content-length` gave it.
    Body {
        command: Command,
        start: usize,
        len: Option<usize>,
    },
}

/// Headers up to this many are looked through one by one for a repeated name, which for the
/// handful most frames carry beats hashing; past it a set of the names takes over, so a frame
/// of many headers still costs linear work.
const SCANNED_HEADERS: usize = 8;

/// An incremental decoder: [`Decoder::decode`] resumes where the previous call stopped.
///
/// Between calls the caller may only append to the buffer; bytes are consumed only when a
/// frame is returned. After an error the decoder starts afresh, as the buffer is then useless.
#[derive(Debug, Default)]
pub struct Decoder {
    stage: Stage,
    /// Where the next line starts.
    line_start: usize,
    /// How far the search for the current line's LF, or the body's NUL, has got.
    scanned: usize,
    headers: Vec<(String, String)>,
    /// The header names in `headers` once there are [`SCANNED_HEADERS`] of them, so a repeated
    /// one is found without a scan of many; empty before.
    names: HashSet<String>,
    /// Header lines seen, repeated entries included.
    count: usize,
    examined: u64,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Bytes examined since the decoder was made, counting each look at a byte: a measure of
    /// decoding work that does not depend on timing.
    pub fn examined(&self) -> u64 {
        self.examined
    }

    /// Decodes one frame from the front of `buf`, consuming it, as [`decode`] does, but without
    /// looking again at what earlier calls already parsed.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
        version: Version,
    ) -> Result<Option<Frame>, StompError> {
        if self.scanned > buf.len() || self.line_start > buf.len() {
            // The buffer was cut behind the decoder's back; nothing parsed still applies.
            self.restart();
        }
        let result = self.step(buf, limits, version);
        if !matches!(result, Ok(None)) {
            self.restart();
        }
        result
    }

    fn restart(&mut self) {
        let examined = self.examined;
        *self = Decoder {
            examined,
            ..Decoder::default()
        };
    }

    fn step(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
        version: Version,
    ) -> Result<Option<Frame>, StompError> {
        if self.stage == Stage::Command {
            self.skip_heartbeats(buf);
        }
        loop {
            let command = match self.stage {
                Stage::Body { .. } => break,
                Stage::Command => None,
                Stage::Headers(command) => Some(command),
            };
            let Some((from, to)) = self.next_line(buf, limits)? else {
                return Ok(None);
            };
            let line = &buf[from..to];
            self.examined += line.len() as u64;
            match command {
                None => {
                    let command = Command::parse(line).ok_or_else(|| {
                        StompError::UnknownCommand(String::from_utf8_lossy(line).into_owned())
                    })?;
                    self.stage = Stage::Headers(command);
                }
                Some(command) if line.is_empty() => {
                    self.stage = Stage::Body {
                        command,
                        start: self.line_start,
                        len: self.content_length(limits)?,
                    };
                }
                Some(command) => {
                    self.count += 1;
                    if self.count > limits.max_headers {
                        return Err(StompError::TooManyHeaders {
                            max: limits.max_headers,
                        });
                    }
                    let escaping = if command.escapes_headers() {
                        version
                    } else {
                        Version::V1_0
                    };
                    let colon = line.iter().position(|&b| b == b':').ok_or_else(|| {
                        StompError::MissingColon(String::from_utf8_lossy(line).into_owned())
                    })?;
                    let name = unescape(&line[..colon], escaping)?;
                    let value = unescape(&line[colon + 1..], escaping)?;
                    // STOMP 1.2 Repeated Header Entries: only the first entry is used.
                    if !self.repeated(&name) {
                        self.headers.push((name.into_owned(), value.into_owned()));
                    }
                }
            }
        }
        let Stage::Body {
            command,
            start,
            len,
        } = self.stage
        else {
            return Ok(None);
        };
        let end = match len {
            Some(len) => {
                let end = start.saturating_add(len);
                if buf.len() <= end {
                    return Ok(None);
                }
                self.examined += 1;
                if buf[end] != 0 {
                    return Err(StompError::MissingNul(len));
                }
                end
            }
            None => {
                let from = start.max(self.scanned);
                let found = buf[from..].iter().position(|&b| b == 0);
                self.examined += found.map_or(buf.len() - from, |i| i + 1) as u64;
                match found {
                    Some(i) if from + i - start > limits.max_body => {
                        return Err(StompError::NoTerminator {
                            max: limits.max_body,
                        })
                    }
                    Some(i) => from + i,
                    None => {
                        if buf.len() - start > limits.max_body {
                            return Err(StompError::NoTerminator {
                                max: limits.max_body,
                            });
                        }
                        self.scanned = buf.len();
                        return Ok(None);
                    }
                }
            }
        };
        let mut body = buf.split_to(end + 1);
        body.advance(start);
        body.truncate(end - start);
        Ok(Some(Frame {
            command,
            headers: std::mem::take(&mut self.headers),
            body: body.freeze(),
        }))
    }

    /// Whether a header named `name` came earlier in the frame; past [`SCANNED_HEADERS`], the
    /// name is remembered for the headers after it.
    fn repeated(&mut self, name: &str) -> bool {
        if self.headers.len() < SCANNED_HEADERS {
            return self.headers.iter().any(|(n, _)| n == name);
        }
        if self.names.is_empty() {
            self.names
                .extend(self.headers.iter().map(|(n, _)| n.clone()));
        }
        !self.names.insert(name.to_owned())
    }

    /// The body length `content-length` announces, refused at once when past the limit.
    fn content_length(&self, limits: &Limits) -> Result<Option<usize>, StompError> {
        let Some((_, text)) = self.headers.iter().find(|(n, _)| n == "content-length") else {
            return Ok(None);
        };
        let len: usize = text
            .trim()
            .parse()
            .map_err(|_| StompError::BadContentLength(text.clone()))?;
        if len > limits.max_body {
            return Err(StompError::BodyTooLarge {
                max: limits.max_body,
            });
        }
        Ok(Some(len))
    }

    /// Consumes leading EOLs (STOMP 1.2 Heart-beating: "a single end-of-line"; frames may also
    /// be followed by EOLs) and stray NULs, which RabbitMQ's STOMP plugin skips the same way, so
    /// a client that pads its frames with NULs works with both. A lone CR waits for its LF.
    fn skip_heartbeats(&mut self, buf: &mut BytesMut) {
        let mut n = 0;
        loop {
            match buf.get(n..) {
                Some([b'\n' | 0, ..]) => n += 1,
                Some([b'\r', b'\n', ..]) => n += 2,
                _ => break,
            }
        }
        if n > 0 {
            self.examined += n as u64;
            buf.advance(n);
            self.scanned = self.scanned.saturating_sub(n);
        }
    }

    /// The bounds of the next line, without its EOL, once its LF has arrived. Resumes the
    /// search for the LF where the previous call left it, and refuses a line past the limit
    /// (or holding a NUL) as soon as enough of it is there to tell.
    fn next_line(
        &mut self,
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<(usize, usize)>, StompError> {
        let start = self.line_start;
        let from = self.scanned.max(start);
        // The LF of a line within the limit comes at most `max_header_length + 1` bytes after
        // its start (a CR may precede it); searching further would only find a refusal.
        let window_end = buf.len().min(
            start
                .saturating_add(limits.max_header_length)
                .saturating_add(2),
        );
        let found = buf
            .get(from..window_end)
            .and_then(|w| w.iter().position(|&b| b == b'\n' || b == 0));
        let Some(i) = found else {
            self.examined += window_end.saturating_sub(from) as u64;
            self.scanned = self.scanned.max(window_end);
            if buf.len() - start > limits.max_header_length.saturating_add(1) {
                return Err(StompError::HeaderTooLong {
                    max: limits.max_header_length,
                });
            }
            return Ok(None);
        };
        self.examined += i as u64 + 1;
        let lf = from + i;
        if buf[lf] == 0 {
            return Err(StompError::NulInHeaders);
        }
        let end = if lf > start && buf[lf - 1] == b'\r' {
            lf - 1
        } else {
            lf
        };
        if end - start > limits.max_header_length {
            return Err(StompError::HeaderTooLong {
                max: limits.max_header_length,
            });
        }
        self.line_start = lf + 1;
        self.scanned = lf + 1;
        Ok(Some((start, end)))
    }
}

/// STOMP 1.2 Value Encoding (1.1 has the same escapes but `\r`). Borrows `raw` when it holds
/// no escape.
fn unescape(raw: &[u8], version: Version) -> Result<Cow<'_, str>, StompError> {
    let text = std::str::from_utf8(raw).map_err(|_| StompError::NotUtf8)?;
    if version == Version::V1_0 || !text.contains('\\') {
        return Ok(Cow::Borrowed(text));
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
    Ok(Cow::Owned(out))
}

/// Writes `text` as a header name or value, escaped for `version` when `escaping`. The bytes
/// that need escaping are ASCII, never part of a longer UTF-8 sequence, so the text is copied
/// in runs between them.
fn escape_into(text: &str, version: Version, escaping: bool, out: &mut BytesMut) {
    let escapes = escaping && version != Version::V1_0;
    let special = |b: u8| matches!(b, b'\n' | b'\r') || escapes && matches!(b, b':' | b'\\');
    let mut rest = text.as_bytes();
    while let Some(i) = rest.iter().position(|&b| special(b)) {
        out.put_slice(&rest[..i]);
        out.put_slice(match rest[i] {
            b'\n' if escapes => b"\\n",
            b'\r' if escapes && version == Version::V1_2 => b"\\r",
            b':' => b"\\c",
            b'\\' => b"\\\\",
            // A line break that cannot be escaped is dropped, to keep the frame's structure.
            _ => b"",
        });
        rest = &rest[i + 1..];
    }
    out.put_slice(rest);
}

/// A [`fmt::Write`] that escapes what is written as [`escape_into`] does.
struct Escaping<'o> {
    out: &'o mut BytesMut,
    version: Version,
    escaping: bool,
}

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(s, self.version, self.escaping, self.out);
        Ok(())
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

/// Writes a server frame straight into the output, header by header, so a frame sent once per
/// message (MESSAGE) needs no [`Frame`] of owned strings. As in a [`Frame`], a header name is
/// written once and the first value wins (STOMP 1.2 Repeated Header Entries); values are
/// escaped as [`encode`] escapes them.
pub struct FrameWriter<'o> {
    out: &'o mut BytesMut,
    version: Version,
    escaping: bool,
    /// Where the first header line starts.
    headers_start: usize,
    /// Bit `n % 64` set for every header name of `n` bytes written so far (up to its first
    /// colon, as a reader splits the line): a name of a length not there was not written, and
    /// needs no look at the lines before it.
    name_lengths: u64,
}

impl<'o> FrameWriter<'o> {
    pub fn new(command: Command, version: Version, out: &'o mut BytesMut) -> Self {
        out.put_slice(command.as_str().as_bytes());
        out.put_u8(b'\n');
        let headers_start = out.len();
        FrameWriter {
            out,
            version,
            escaping: command.escapes_headers(),
            headers_start,
            name_lengths: 0,
        }
    }

    /// Adds a header unless one of that name was written already.
    pub fn header(&mut self, name: &str, value: &str) {
        if self.named(name) {
            escape_into(value, self.version, self.escaping, self.out);
            self.out.put_u8(b'\n');
        }
    }

    /// Adds a header whose value is `value` displayed, escaped as [`FrameWriter::header`]
    /// escapes it, unless one of that name was written already. Nothing is built on the way.
    pub fn display(&mut self, name: &str, value: impl fmt::Display) {
        if self.named(name) {
            let mut escaping = Escaping {
                out: self.out,
                version: self.version,
                escaping: self.escaping,
            };
            let _ = write!(escaping, "{value}");
            self.out.put_u8(b'\n');
        }
    }

    /// Adds a header whose value is a number, unless one of that name was written already.
    pub fn number(&mut self, name: &str, value: u64) {
        if self.named(name) {
            // Digits need no escaping; formatting into the buffer itself allocates nothing.
            let _ = write!(self.out, "{value}");
            self.out.put_u8(b'\n');
        }
    }

    /// Ends the frame with `body` and its `content-length`, so a body holding a NUL survives.
    pub fn finish(self, body: &[u8]) {
        self.out.reserve(body.len() + 32);
        let _ = write!(self.out, "content-length:{}\n\n", body.len());
        self.out.put_slice(body);
        self.out.put_u8(0);
    }

    /// Writes `name` and its colon, unless an earlier header line has that name (compared as
    /// written); whether it did.
    fn named(&mut self, name: &str) -> bool {
        let line = self.out.len();
        escape_into(name, self.version, self.escaping, self.out);
        let written = &self.out[line..];
        let length_bit = |len: usize| 1u64 << (len % 64);
        // A colon stays in a name only where nothing is escaped; a reader ends the name there.
        let read_as = written
            .iter()
            .position(|&b| b == b':')
            .unwrap_or(written.len());
        let taken = (self.name_lengths & length_bit(written.len())) != 0
            && self.out[self.headers_start..line]
                .split(|&b| b == b'\n')
                .filter_map(|earlier| {
                    earlier
                        .iter()
                        .position(|&b| b == b':')
                        .map(|c| &earlier[..c])
                })
                .any(|earlier| earlier == written);
        if taken {
            self.out.truncate(line);
            return false;
        }
        self.name_lengths |= length_bit(read_as);
        self.out.put_u8(b':');
        true
    }
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

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::{decode, escape_into, FrameWriter, Limits, SCANNED_HEADERS};
    use crate::frame::{Command, Version};

    #[test]
    fn repeated_headers_are_found_before_and_past_the_scanned_ones() {
        let names: Vec<String> = (0..SCANNED_HEADERS + 4).map(|i| format!("h{i}")).collect();
        let mut raw = String::from("SEND\n");
        for (i, name) in names.iter().enumerate() {
            raw += &format!("{name}:{i}\n");
            // Each name again: once while the names are scanned, once past that.
            raw += &format!("{name}:again\n");
        }
        raw += "h0:last\n\n\0";
        let mut buf = BytesMut::from(raw.as_bytes());
        let frame = decode(&mut buf, &Limits::default(), Version::V1_2)
            .expect("decoded")
            .expect("complete");
        let want: Vec<(String, String)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i.to_string()))
            .collect();
        assert_eq!(frame.headers, want);
    }

    /// Escaping one character at a time, as the STOMP specification states it.
    fn escaped_by_char(text: &str, version: Version, escaping: bool) -> String {
        let escapes = escaping && version != Version::V1_0;
        text.chars()
            .map(|c| match c {
                '\n' if escapes => "\\n".to_owned(),
                '\r' if escapes && version == Version::V1_2 => "\\r".to_owned(),
                '\n' | '\r' => String::new(),
                ':' if escapes => "\\c".to_owned(),
                '\\' if escapes => "\\\\".to_owned(),
                c => c.to_string(),
            })
            .collect()
    }

    #[test]
    fn escaping_in_runs_matches_escaping_by_character() {
        let texts = [
            "",
            "plain",
            ":",
            "a:b\\c\nd\re",
            "\r\n\r\n",
            "é:ü\\\n✓",
            "trailing\\",
        ];
        for text in texts {
            for version in Version::ALL {
                for escaping in [false, true] {
                    let mut out = BytesMut::new();
                    escape_into(text, version, escaping, &mut out);
                    let want = escaped_by_char(text, version, escaping);
                    assert_eq!(&out[..], want.as_bytes(), "{text:?} {version:?} {escaping}");
                }
            }
        }
    }

    #[test]
    fn a_name_written_before_is_not_written_again() {
        let mut out = BytesMut::new();
        let mut frame = FrameWriter::new(Command::Message, Version::V1_2, &mut out);
        frame.header("destination", "/queue/a");
        frame.header("redelivered", "false");
        frame.header("destination", "/queue/b");
        frame.number("redelivered", 1);
        frame.header("a:b", "1");
        frame.header("a", "2");
        frame.finish(b"");
        assert_eq!(
            &out[..],
            b"MESSAGE\ndestination:/queue/a\nredelivered:false\na\\cb:1\na:2\ncontent-length:0\n\n\0"
        );
    }

    #[test]
    fn where_nothing_is_escaped_a_name_ends_at_its_first_colon() {
        let mut out = BytesMut::new();
        let mut frame = FrameWriter::new(Command::Message, Version::V1_0, &mut out);
        frame.header("a:b", "1");
        frame.header("a", "2");
        frame.header("a:c", "3");
        frame.finish(b"");
        assert_eq!(&out[..], b"MESSAGE\na:b:1\na:c:3\ncontent-length:0\n\n\0");
    }
}
