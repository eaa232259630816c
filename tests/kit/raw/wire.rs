//! The AMQP 0-9-1 wire format, just enough of it for hand-built frames: frame and method
//! encoding, argument builders and readers, field tables (AMQP 0-9-1 sections 4.2.3 to 4.2.5).

use std::io::{self, ErrorKind};

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
    pub const BASIC_CONSUME: (u16, u16) = (60, 20);
    pub const BASIC_CONSUME_OK: (u16, u16) = (60, 21);
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

pub(super) fn invalid(msg: impl Into<String>) -> io::Error {
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
                Value::Table(vec![(
                    "a".into(),
                    Value::Array(vec![Value::U8(1), Value::Void]),
                )]),
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
