//! Hand-built AMQP 0-9-1 frames over a plain `TcpStream`, for tests that send what no client
//! library would: garbage, wrong headers, oversize frames, unknown methods.
//!
//! A frame is `type:u8 channel:u16 size:u32 payload 0xCE` (AMQP 0-9-1 section 4.2.3); a method
//! payload is `class:u16 method:u16 arguments`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

mod wire;

use wire::invalid;
pub use wire::*;

/// What `connection.start` told the client.
#[derive(Clone, Debug)]
pub struct ConnectionStart {
    pub version_major: u8,
    pub version_minor: u8,
    pub server_properties: Table,
    pub mechanisms: String,
    pub locales: String,
}

impl ConnectionStart {
    /// A boolean from `server-properties.capabilities`.
    pub fn capability(&self, name: &str) -> Option<bool> {
        match lookup(&self.server_properties, "capabilities")? {
            Value::Table(caps) => match lookup(caps, name)? {
                Value::Bool(b) => Some(*b),
                _ => None,
            },
            _ => None,
        }
    }
}

/// What `connection.tune` proposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tune {
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
}

/// A `connection.close` or `channel.close` received from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    pub channel: u16,
    pub reply_code: u16,
    pub reply_text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl Close {
    fn parse(frame: &Frame) -> io::Result<Self> {
        let mut args = frame.args();
        Ok(Self {
            channel: frame.channel,
            reply_code: args.u16()?,
            reply_text: args.shortstr()?,
            class_id: args.u16()?,
            method_id: args.u16()?,
        })
    }
}

/// The client's view of the handshake's last step.
#[derive(Clone, Debug)]
pub enum HandshakeError {
    /// The server sent `connection.close` instead of the expected method.
    Closed(Close),
    Io(String),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed(close) => write!(f, "server closed the connection: {close:?}"),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        Self::Io(e.to_string())
    }
}

/// The client properties the raw client announces: the capabilities a modern client sends, so
/// the server reports authentication failures with `connection.close` (RabbitMQ's
/// `authentication_failure_close`).
pub fn client_properties() -> Table {
    let capabilities = vec![
        (
            "authentication_failure_close".to_string(),
            Value::Bool(true),
        ),
        ("consumer_cancel_notify".to_string(), Value::Bool(true)),
        ("publisher_confirms".to_string(), Value::Bool(true)),
        ("basic.nack".to_string(), Value::Bool(true)),
    ];
    vec![
        (
            "product".to_string(),
            Value::LongStr(b"rosetta raw test client".to_vec()),
        ),
        ("capabilities".to_string(), Value::Table(capabilities)),
    ]
}

/// A plain TCP connection speaking hand-built AMQP frames.
#[derive(Debug)]
pub struct RawConnection {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Set once the server closed the socket (EOF or reset).
    eof: bool,
}

/// The default read deadline for a reply from the broker.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(10);

impl RawConnection {
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::new(),
            eof: false,
        })
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    pub fn send_protocol_header(&mut self) -> io::Result<()> {
        self.send_raw(PROTOCOL_HEADER)
    }

    pub fn send_frame(&mut self, kind: u8, channel: u16, payload: &[u8]) -> io::Result<()> {
        self.send_raw(&encode_frame(kind, channel, payload))
    }

    pub fn send_method(&mut self, channel: u16, id: (u16, u16), args: Args) -> io::Result<()> {
        self.send_raw(&encode_method(channel, id, &args))
    }

    /// Reads more bytes into the buffer, waiting at most until `end`. Returns false at EOF.
    fn fill(&mut self, end: Instant) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let now = Instant::now();
        if now >= end {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                "no reply from the broker in time",
            ));
        }
        self.stream.set_read_timeout(Some(end - now))?;
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(
                io::Error::new(ErrorKind::TimedOut, "no reply from the broker in time"),
            ),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::BrokenPipe
                ) =>
            {
                self.eof = true;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads exactly `n` bytes within `deadline`.
    pub fn read_exact_within(&mut self, n: usize, deadline: Duration) -> io::Result<Vec<u8>> {
        let end = Instant::now() + deadline;
        while self.buf.len() < n {
            if !self.fill(end)? {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed after {} of {n} bytes: {:?}",
                        self.buf.len(),
                        self.buf
                    ),
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads everything the server sends until it closes the socket; errors if it is still open
    /// after `deadline`.
    pub fn read_until_closed(&mut self, deadline: Duration) -> io::Result<Vec<u8>> {
        let end = Instant::now() + deadline;
        while self.fill(end)? {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// Whether the server closes the socket within `deadline` (whatever it sends before that).
    pub fn closes_within(&mut self, deadline: Duration) -> bool {
        self.read_until_closed(deadline).is_ok()
    }

    /// Reads one frame (heartbeats included) within `deadline`.
    pub fn read_frame(&mut self, deadline: Duration) -> io::Result<Frame> {
        let header = self.read_exact_within(7, deadline)?;
        let kind = header[0];
        let channel = u16::from_be_bytes([header[1], header[2]]);
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
        if size > 64 * 1024 * 1024 {
            return Err(invalid(format!(
                "absurd frame size {size} (header {header:?})"
            )));
        }
        let mut rest = self.read_exact_within(size + 1, deadline)?;
        let end = rest.pop();
        if end != Some(FRAME_END) {
            return Err(invalid(format!("frame end was {end:?}, not 0xCE")));
        }
        Ok(Frame {
            kind,
            channel,
            payload: rest,
        })
    }

    /// Reads frames until a method frame arrives (skipping heartbeats).
    pub fn read_method(&mut self, deadline: Duration) -> io::Result<Frame> {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let frame = self.read_frame(left)?;
            if frame.kind == FRAME_HEARTBEAT {
                continue;
            }
            if frame.kind == FRAME_METHOD {
                return Ok(frame);
            }
            return Err(invalid(format!("expected a method frame, got {frame:?}")));
        }
    }

    /// Reads a method and checks its id; a `connection.close` instead is reported as such.
    pub fn expect_method(
        &mut self,
        id: (u16, u16),
        deadline: Duration,
    ) -> Result<Frame, HandshakeError> {
        let frame = self.read_method(deadline)?;
        if frame.is_method(id) {
            return Ok(frame);
        }
        if frame.is_method(method::CONNECTION_CLOSE) {
            return Err(HandshakeError::Closed(Close::parse(&frame)?));
        }
        Err(HandshakeError::Io(format!(
            "expected method {id:?}, got {:?}",
            frame.method_id()
        )))
    }

    /// Sends the protocol header and reads `connection.start`.
    pub fn start(&mut self) -> Result<ConnectionStart, HandshakeError> {
        self.send_protocol_header()?;
        let frame = self.expect_method(method::CONNECTION_START, REPLY_DEADLINE)?;
        if frame.channel != 0 {
            return Err(HandshakeError::Io(format!(
                "connection.start on channel {}",
                frame.channel
            )));
        }
        let mut args = frame.args();
        Ok(ConnectionStart {
            version_major: args.u8()?,
            version_minor: args.u8()?,
            server_properties: args.table()?,
            mechanisms: String::from_utf8_lossy(&args.longstr()?).into_owned(),
            locales: String::from_utf8_lossy(&args.longstr()?).into_owned(),
        })
    }

    /// Sends `connection.start-ok` with SASL PLAIN `\0user\0password`.
    pub fn start_ok_plain(&mut self, user: &str, password: &str) -> io::Result<()> {
        let mut response = vec![0u8];
        response.extend_from_slice(user.as_bytes());
        response.push(0);
        response.extend_from_slice(password.as_bytes());
        self.send_method(
            0,
            method::CONNECTION_START_OK,
            Args::new()
                .table(&client_properties())
                .shortstr("PLAIN")
                .longstr(&response)
                .shortstr("en_US"),
        )
    }

    /// Reads `connection.tune`.
    pub fn read_tune(&mut self) -> Result<Tune, HandshakeError> {
        let frame = self.expect_method(method::CONNECTION_TUNE, REPLY_DEADLINE)?;
        let mut args = frame.args();
        Ok(Tune {
            channel_max: args.u16()?,
            frame_max: args.u32()?,
            heartbeat: args.u16()?,
        })
    }

    pub fn tune_ok(&mut self, tune: Tune) -> io::Result<()> {
        self.send_method(
            0,
            method::CONNECTION_TUNE_OK,
            Args::new()
                .u16(tune.channel_max)
                .u32(tune.frame_max)
                .u16(tune.heartbeat),
        )
    }

    /// Sends `connection.open` for `vhost` and reads `open-ok`.
    pub fn open(&mut self, vhost: &str) -> Result<(), HandshakeError> {
        self.send_method(
            0,
            method::CONNECTION_OPEN,
            Args::new().shortstr(vhost).shortstr("").bits(&[false]),
        )?;
        self.expect_method(method::CONNECTION_OPEN_OK, REPLY_DEADLINE)?;
        Ok(())
    }

    /// The whole handshake as guest/guest on vhost `/`, accepting the server's tune values but
    /// with heartbeats off. Returns the negotiated values.
    pub fn handshake(&mut self) -> Result<Tune, HandshakeError> {
        self.handshake_with("guest", "guest", 0)
    }

    /// The whole handshake with the given credentials and heartbeat (seconds, 0 = off).
    pub fn handshake_with(
        &mut self,
        user: &str,
        password: &str,
        heartbeat: u16,
    ) -> Result<Tune, HandshakeError> {
        self.start()?;
        self.start_ok_plain(user, password)?;
        let proposed = self.read_tune()?;
        let tune = Tune {
            heartbeat,
            ..proposed
        };
        self.tune_ok(tune)?;
        self.open("/")?;
        Ok(tune)
    }

    /// Opens a channel and waits for `channel.open-ok`.
    pub fn open_channel(&mut self, channel: u16) -> Result<(), HandshakeError> {
        self.send_method(channel, method::CHANNEL_OPEN, Args::new().shortstr(""))?;
        let frame = self.expect_method(method::CHANNEL_OPEN_OK, REPLY_DEADLINE)?;
        if frame.channel != channel {
            return Err(HandshakeError::Io(format!(
                "channel.open-ok on channel {}, expected {channel}",
                frame.channel
            )));
        }
        Ok(())
    }

    /// Reads frames until the server sends `connection.close` and returns it.
    /// Errors if the socket closes first or nothing arrives within `deadline`.
    pub fn expect_connection_close(&mut self, deadline: Duration) -> io::Result<Close> {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let frame = self.read_frame(left)?;
            if frame.is_method(method::CONNECTION_CLOSE) {
                if frame.channel != 0 {
                    return Err(invalid(format!(
                        "connection.close on channel {}",
                        frame.channel
                    )));
                }
                return Close::parse(&frame);
            }
        }
    }

    /// Reads frames until the server sends `channel.close` for `channel` and returns it.
    pub fn expect_channel_close(&mut self, channel: u16, deadline: Duration) -> io::Result<Close> {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let frame = self.read_frame(left)?;
            if frame.is_method(method::CONNECTION_CLOSE) {
                let close = Close::parse(&frame)?;
                return Err(invalid(format!(
                    "expected channel.close on {channel}, got connection.close {close:?}"
                )));
            }
            if frame.channel == channel && frame.is_method(method::CHANNEL_CLOSE) {
                return Close::parse(&frame);
            }
        }
    }

    /// Answers a server's `connection.close`.
    pub fn send_connection_close_ok(&mut self) -> io::Result<()> {
        self.send_method(0, method::CONNECTION_CLOSE_OK, Args::new())
    }

    /// Waits for a heartbeat frame; other frames are skipped.
    pub fn expect_heartbeat(&mut self, deadline: Duration) -> io::Result<()> {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let frame = self.read_frame(left)?;
            if frame.kind == FRAME_HEARTBEAT {
                if frame.channel != 0 || !frame.payload.is_empty() {
                    return Err(invalid(format!("malformed heartbeat {frame:?}")));
                }
                return Ok(());
            }
        }
    }

    pub fn send_heartbeat(&mut self) -> io::Result<()> {
        self.send_frame(FRAME_HEARTBEAT, 0, &[])
    }
}
