//! Hand-built AMQP 0-9-1 frames over a plain `TcpStream`, for tests that send what no client
//! library would: garbage, wrong headers, oversize frames, unknown methods.
//!
//! A frame is `type:u8 channel:u16 size:u32 payload 0xCE` (AMQP 0-9-1 section 4.2.3); a method
//! payload is `class:u16 method:u16 arguments`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The header a 0-9-1 client sends, and a server answers with when it refuses another.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;

/// Reply codes (AMQP 0-9-1 constants).
pub mod code {
    pub const REPLY_SUCCESS: u16 = 200;
    pub const CONTENT_TOO_LARGE: u16 = 311;
    pub const NO_ROUTE: u16 = 312;
    pub const NO_CONSUMERS: u16 = 313;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const INVALID_PATH: u16 = 402;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
}

/// Class and method ids used by the helpers.
pub mod method {
    pub const CONNECTION_START: (u16, u16) = (10, 10);
    pub const CONNECTION_START_OK: (u16, u16) = (10, 11);
    pub const CONNECTION_SECURE: (u16, u16) = (10, 20);
    pub const CONNECTION_TUNE: (u16, u16) = (10, 30);
    pub const CONNECTION_TUNE_OK: (u16, u16) = (10, 31);
    pub const CONNECTION_OPEN: (u16, u16) = (10, 40);
    pub const CONNECTION_OPEN_OK: (u16, u16) = (10, 41);
    pub const CONNECTION_CLOSE: (u16, u16) = (10, 50);
    pub const CONNECTION_CLOSE_OK: (u16, u16) = (10, 51);
    pub const CHANNEL_OPEN: (u16, u16) = (20, 10);
    pub const CHANNEL_OPEN_OK: (u16, u16) = (20, 11);
    pub const CHANNEL_CLOSE: (u16, u16) = (20, 40);
    pub const CHANNEL_CLOSE_OK: (u16, u16) = (20, 41);
    pub const QUEUE_DECLARE: (u16, u16) = (50, 10);
    pub const QUEUE_DECLARE_OK: (u16, u16) = (50, 11);
    pub const BASIC_PUBLISH: (u16, u16) = (60, 40);
}

/// A field-table value (RabbitMQ's type tags, which the 0-9-1 errata follow).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal(u8, u32),
    LongStr(Vec<u8>),
    Array(Vec<Value>),
    Timestamp(u64),
    Table(Table),
    Bytes(Vec<u8>),
    Void,
}

/// A field table, in wire order.
pub type Table = Vec<(String, Value)>;

/// Looks a key up in a table.
pub fn lookup<'a>(table: &'a Table, key: &str) -> Option<&'a Value> {
    table.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Builds method arguments.
#[derive(Clone, Debug, Default)]
pub struct Args(pub Vec<u8>);

impl Args {
    pub fn new() -> Self {
        Self(Vec::new())
    }
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A short string (length u8). Panics past 255 bytes: tests build these by hand.
    pub fn shortstr(mut self, s: &str) -> Self {
        let len = u8::try_from(s.len()).expect("short string longer than 255 bytes");
        self.0.push(len);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn longstr(mut self, s: &[u8]) -> Self {
        let len = u32::try_from(s.len()).expect("long string too long");
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(s);
        self
    }
    pub fn table(self, table: &Table) -> Self {
        let mut body = Vec::new();
        for (key, value) in table {
            let len = u8::try_from(key.len()).expect("table key longer than 255 bytes");
            body.push(len);
            body.extend_from_slice(key.as_bytes());
            encode_value(value, &mut body);
        }
        self.longstr(&body)
    }
    /// Packs booleans into octets, least significant bit first (AMQP 0-9-1 4.2.5.2).
    pub fn bits(mut self, bits: &[bool]) -> Self {
        for chunk in bits.chunks(8) {
            let mut octet = 0u8;
            for (i, bit) in chunk.iter().enumerate() {
                if *bit {
                    octet |= 1 << i;
                }
            }
            self.0.push(octet);
        }
        self
    }
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

fn encode_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Bool(b) => out.extend_from_slice(&[b't', u8::from(*b)]),
        Value::I8(v) => {
            out.push(b'b');
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::U8(v) => out.extend_from_slice(&[b'B', *v]),
        Value::I16(v) => {
            out.push(b's');
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::U16(v) => {
            out.push(b'u');
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::I32(v) => {
            out.push(b'I');
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::U32(v) => {
            out.push(b'i');
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::I64(v) => {
            out.push(b'l');
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::F32(v) => {
            out.push(b'f');
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::F64(v) => {
            out.push(b'd');
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::Decimal(scale, v) => {
            out.extend_from_slice(&[b'D', *scale]);
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::LongStr(s) => {
            out.push(b'S');
            out.extend_from_slice(&Args::new().longstr(s).0);
        }
        Value::Array(items) => {
            let mut body = Vec::new();
            for item in items {
                encode_value(item, &mut body);
            }
            out.push(b'A');
            out.extend_from_slice(&Args::new().longstr(&body).0);
        }
        Value::Timestamp(v) => {
            out.push(b'T');
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::Table(t) => {
            out.push(b'F');
            out.extend_from_slice(&Args::new().table(t).0);
        }
        Value::Bytes(b) => {
            out.push(b'x');
            out.extend_from_slice(&Args::new().longstr(b).0);
        }
        Value::Void => out.push(b'V'),
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg.into())
}

/// Reads method arguments.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(invalid(format!(
                "truncated: wanted {n} bytes, {} left",
                self.remaining()
            )));
        }
        let slice = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }
    fn array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub fn u8(&mut self) -> io::Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> io::Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub fn shortstr(&mut self) -> io::Result<String> {
        let len = usize::from(self.u8()?);
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
    pub fn longstr(&mut self) -> io::Result<Vec<u8>> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }
    pub fn table(&mut self) -> io::Result<Table> {
        let body = self.longstr()?;
        let mut inner = Reader::new(&body);
        let mut table = Vec::new();
        while inner.remaining() > 0 {
            let key = inner.shortstr()?;
            let value = inner.value()?;
            table.push((key, value));
        }
        Ok(table)
    }
    pub fn value(&mut self) -> io::Result<Value> {
        let tag = self.u8()?;
        Ok(match tag {
            b't' => Value::Bool(self.u8()? != 0),
            b'b' => Value::I8(i8::from_be_bytes(self.array()?)),
            b'B' => Value::U8(self.u8()?),
            b's' => Value::I16(i16::from_be_bytes(self.array()?)),
            b'u' => Value::U16(self.u16()?),
            b'I' => Value::I32(i32::from_be_bytes(self.array()?)),
            b'i' => Value::U32(self.u32()?),
            b'l' => Value::I64(i64::from_be_bytes(self.array()?)),
            b'f' => Value::F32(f32::from_be_bytes(self.array()?)),
            b'd' => Value::F64(f64::from_be_bytes(self.array()?)),
            b'D' => {
                let scale = self.u8()?;
                Value::Decimal(scale, self.u32()?)
            }
            b'S' => Value::LongStr(self.longstr()?),
            b'A' => {
                let body = self.longstr()?;
                let mut inner = Reader::new(&body);
                let mut items = Vec::new();
                while inner.remaining() > 0 {
                    items.push(inner.value()?);
                }
                Value::Array(items)
            }
            b'T' => Value::Timestamp(self.u64()?),
            b'F' => Value::Table(self.table()?),
            b'x' => Value::Bytes(self.longstr()?),
            b'V' => Value::Void,
            other => return Err(invalid(format!("unknown field type {:?}", other as char))),
        })
    }
}

/// One frame as read off the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub kind: u8,
    pub channel: u16,
    pub payload: Vec<u8>,
}

impl Frame {
    /// `(class, method)` of a method frame.
    pub fn method_id(&self) -> Option<(u16, u16)> {
        if self.kind != FRAME_METHOD || self.payload.len() < 4 {
            return None;
        }
        let class = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        let method = u16::from_be_bytes([self.payload[2], self.payload[3]]);
        Some((class, method))
    }

    /// The arguments of a method frame.
    pub fn args(&self) -> Reader<'_> {
        Reader::new(self.payload.get(4..).unwrap_or(&[]))
    }

    pub fn is_method(&self, id: (u16, u16)) -> bool {
        self.method_id() == Some(id)
    }
}

/// Encodes a frame.
pub fn encode_frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let size = u32::try_from(payload.len()).expect("payload too large");
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
    out
}

/// Encodes a method frame.
pub fn encode_method(channel: u16, id: (u16, u16), args: &Args) -> Vec<u8> {
    let mut payload = Vec::with_capacity(args.0.len() + 4);
    payload.extend_from_slice(&id.0.to_be_bytes());
    payload.extend_from_slice(&id.1.to_be_bytes());
    payload.extend_from_slice(&args.0);
    encode_frame(FRAME_METHOD, channel, &payload)
}

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
        ("authentication_failure_close".to_string(), Value::Bool(true)),
        ("consumer_cancel_notify".to_string(), Value::Bool(true)),
        ("publisher_confirms".to_string(), Value::Bool(true)),
        ("basic.nack".to_string(), Value::Bool(true)),
    ];
    vec![
        ("product".to_string(), Value::LongStr(b"rosetta raw test client".to_vec())),
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
            return Err(io::Error::new(ErrorKind::TimedOut, "no reply from the broker in time"));
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
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
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
                    format!("connection closed after {} of {n} bytes: {:?}", self.buf.len(), self.buf),
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
            return Err(invalid(format!("absurd frame size {size} (header {header:?})")));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_type_channel_size_payload_and_end_octet() {
        let frame = encode_method(3, (10, 50), &Args::new().u16(501));
        assert_eq!(
            frame,
            vec![1, 0, 3, 0, 0, 0, 6, 0, 10, 0, 50, 0x01, 0xF5, 0xCE]
        );
    }

    #[test]
    fn tables_round_trip_through_the_reader() {
        let table: Table = vec![
            ("flag".into(), Value::Bool(true)),
            ("n".into(), Value::I64(-7)),
            ("s".into(), Value::LongStr(b"hello".to_vec())),
            (
                "nested".into(),
                Value::Table(vec![("a".into(), Value::Array(vec![Value::U8(1), Value::Void]))]),
            ),
            ("t".into(), Value::Timestamp(1_700_000_000)),
        ];
        let bytes = Args::new().table(&table).0;
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.table().expect("table"), table);
        assert_eq!(reader.remaining(), 0);
    }

    #[test]
    fn bits_pack_least_significant_first() {
        assert_eq!(Args::new().bits(&[true, false, true]).0, vec![0b101]);
        assert_eq!(Args::new().bits(&[false; 9]).0, vec![0, 0]);
    }
}
