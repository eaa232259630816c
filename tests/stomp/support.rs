//! A raw STOMP client over a plain `TcpStream`: frames are written as bytes, exactly as a test
//! wants them (split, malformed, with heart-beats between), and read back by a small reader of
//! its own that knows only what STOMP 1.2 says about frame boundaries.

#![allow(dead_code)]

use rosetta_tests::Broker;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long to wait for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long to watch for something that should not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// The kit's broker with the STOMP listener on an ephemeral loopback port, plus `extra` TOML.
pub fn broker_with(extra: &str) -> Broker {
    Broker::start_with(&format!(
        "[stomp]\nenabled = true\nlisten = \"127.0.0.1:0\"\n{extra}"
    ))
}

pub fn broker() -> Broker {
    broker_with("")
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A frame as read from the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub command: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    pub fn expect_header(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("no '{name}' header in {self:?}"))
    }
}

/// What came instead of a frame.
#[derive(Debug, PartialEq)]
pub enum ReadEnd {
    Timeout,
    Closed,
}

pub struct Raw {
    stream: TcpStream,
    input: Vec<u8>,
    /// Heart-beat EOLs seen between frames.
    pub heartbeats: usize,
    /// Set once the peer closed the connection.
    closed: bool,
}

fn frame_bytes(command: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{command}\n").into_bytes();
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}:{v}\n").as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(body);
    out.push(0);
    out
}

impl Raw {
    pub fn open(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            input: Vec::new(),
            heartbeats: 0,
            closed: false,
        }
    }

    /// Opens and logs in as guest with `accept-version` (none for a 1.0 client).
    pub fn login(addr: SocketAddr, accept_version: Option<&str>) -> (Raw, Received) {
        let mut raw = Raw::open(addr);
        let mut headers = vec![("host", "/"), ("login", "guest"), ("passcode", "guest")];
        if let Some(v) = accept_version {
            headers.push(("accept-version", v));
        }
        raw.send_frame("CONNECT", &headers, b"");
        let connected = raw.expect_frame("CONNECTED");
        (raw, connected)
    }

    pub fn login_12(addr: SocketAddr) -> Raw {
        Raw::login(addr, Some("1.2")).0
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to broker");
    }

    pub fn send_frame(&mut self, command: &str, headers: &[(&str, &str)], body: &[u8]) {
        self.send_bytes(&frame_bytes(command, headers, body));
    }

    /// Writes a frame one byte per write, as the slowest network would deliver it.
    pub fn send_frame_bytewise(&mut self, command: &str, headers: &[(&str, &str)], body: &[u8]) {
        for b in frame_bytes(command, headers, body) {
            self.send_bytes(&[b]);
        }
    }

    fn fill(&mut self, deadline: Instant) -> Result<(), ReadEnd> {
        if self.closed {
            return Err(ReadEnd::Closed);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadEnd::Timeout);
        }
        self.stream
            .set_read_timeout(Some(left))
            .expect("read timeout");
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.closed = true;
                Err(ReadEnd::Closed)
            }
            Ok(n) => {
                self.input.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(ReadEnd::Timeout)
            }
            Err(_) => {
                self.closed = true;
                Err(ReadEnd::Closed)
            }
        }
    }

    /// Parses one complete frame from the buffered input, if there is one.
    fn parse(&mut self) -> Option<Received> {
        while let Some(rest) = self
            .input
            .strip_prefix(b"\n")
            .or_else(|| self.input.strip_prefix(b"\r\n"))
        {
            let skip = self.input.len() - rest.len();
            self.input.drain(..skip);
            self.heartbeats += 1;
        }
        let end_of_headers = self.input.windows(2).position(|w| w == b"\n\n")?;
        let head = String::from_utf8_lossy(&self.input[..end_of_headers]).into_owned();
        let mut lines = head.split('\n');
        let command = lines.next().unwrap_or_default().to_owned();
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            let (n, v) = line.split_once(':').unwrap_or((line, ""));
            headers.push((n.to_owned(), v.to_owned()));
        }
        let body_start = end_of_headers + 2;
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let body_end = match length {
            Some(len) => (self.input.len() > body_start + len).then_some(body_start + len)?,
            None => body_start + self.input[body_start..].iter().position(|&b| b == 0)?,
        };
        let body = self.input[body_start..body_end].to_vec();
        self.input.drain(..=body_end);
        Some(Received {
            command,
            headers,
            body,
        })
    }

    /// The next frame within `within`.
    pub fn read_frame_within(&mut self, within: Duration) -> Result<Received, ReadEnd> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(frame) = self.parse() {
                return Ok(frame);
            }
            self.fill(deadline)?;
        }
    }

    #[track_caller]
    pub fn read_frame(&mut self) -> Received {
        match self.read_frame_within(WAIT) {
            Ok(f) => f,
            Err(end) => panic!("no frame within {WAIT:?}: {end:?}"),
        }
    }

    #[track_caller]
    pub fn expect_frame(&mut self, command: &str) -> Received {
        let frame = self.read_frame();
        assert_eq!(frame.command, command, "expected {command}, got {frame:?}");
        frame
    }

    /// Asserts that nothing but heart-beats arrives for [`QUIET`].
    #[track_caller]
    pub fn expect_silence(&mut self) {
        match self.read_frame_within(QUIET) {
            Err(ReadEnd::Timeout) => {}
            other => panic!("expected no frame, got {other:?}"),
        }
    }

    /// Waits for the broker to close the connection, skipping frames; returns them.
    #[track_caller]
    pub fn expect_closed(&mut self) -> Vec<Received> {
        let deadline = Instant::now() + WAIT;
        let mut frames = Vec::new();
        loop {
            while let Some(f) = self.parse() {
                frames.push(f);
            }
            match self.fill(deadline) {
                Ok(()) => {}
                Err(ReadEnd::Closed) => return frames,
                Err(ReadEnd::Timeout) => {
                    panic!("connection still open after {WAIT:?}; got {frames:?}")
                }
            }
        }
    }

    /// Sends a frame with a receipt and waits for that RECEIPT.
    #[track_caller]
    pub fn send_with_receipt(&mut self, command: &str, headers: &[(&str, &str)], body: &[u8]) {
        let receipt = unique("r");
        let mut all = headers.to_vec();
        all.push(("receipt", &receipt));
        self.send_frame(command, &all, body);
        let reply = self.expect_frame("RECEIPT");
        assert_eq!(reply.header("receipt-id"), Some(receipt.as_str()));
    }

    pub fn subscribe(&mut self, id: &str, destination: &str, ack: &str) {
        self.send_with_receipt(
            "SUBSCRIBE",
            &[("id", id), ("destination", destination), ("ack", ack)],
            b"",
        );
    }
}
