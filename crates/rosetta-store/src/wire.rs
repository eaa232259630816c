//! Byte-level primitives for the codec: a growable writer and a bounds-checked reader.
//!
//! Kept apart from the record layouts so the layouts read as a list of fields, and so every
//! bounds check lives in one place.

/// Appends primitives to a buffer.
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn with_capacity(capacity: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// A writer that appends to `buf`, so one buffer can take many records.
    pub fn append_to(buf: Vec<u8>) -> Self {
        Writer { buf }
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    pub fn put(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }

    /// LEB128: seven bits per byte, high bit set on all but the last.
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.put(b);
    }

    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
}

/// Reads primitives from untrusted input. Every method fails instead of reading past the end.
pub struct Reader<'a> {
    input: &'a [u8],
}

type R<T> = Result<T, &'static str>;

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Reader { input }
    }

    pub fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    pub fn remaining(&self) -> usize {
        self.input.len()
    }

    pub fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if n > self.input.len() {
            return Err("truncated");
        }
        let (head, tail) = self.input.split_at(n);
        self.input = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> R<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> R<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn varint(&mut self) -> R<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may only carry the top bit of a u64.
            if i == 9 && bits > 1 {
                return Err("varint overflows u64");
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long")
    }

    /// A length or element count, which can never exceed the bytes left (each element or byte
    /// occupies at least one byte), so this also rejects absurd counts early.
    pub fn count(&mut self) -> R<usize> {
        let n = self.varint()?;
        match usize::try_from(n) {
            Ok(n) if n <= self.input.len() => Ok(n),
            _ => Err("length exceeds input"),
        }
    }

    pub fn bytes(&mut self) -> R<&'a [u8]> {
        let n = self.count()?;
        self.take(n)
    }

    pub fn string(&mut self) -> R<String> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| "invalid UTF-8")
    }
}
