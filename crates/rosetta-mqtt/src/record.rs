//! A small binary encoding for the records this crate keeps in the store (sessions, retained
//! messages, wills). Every record starts with a version byte so a later layout can be read
//! beside this one; decoding checks every length and reports corruption instead of panicking.

use bytes::Bytes;

use crate::error::MqttError;

/// The record layout written by this version.
const VERSION: u8 = 1;

pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Writer { buf: vec![VERSION] }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        // Lengths are u32: MQTT payloads are bounded by the 256 MiB remaining length.
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.buf.extend_from_slice(v);
        self
    }

    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    pub fn opt_str(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(s) => self.u8(1).str(s),
            None => self.u8(0),
        }
    }

    pub fn opt_bytes(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            Some(b) => self.u8(1).bytes(b),
            None => self.u8(0),
        }
    }

    pub fn opt_u64(&mut self, v: Option<u64>) -> &mut Self {
        match v {
            Some(n) => self.u8(1).u64(n),
            None => self.u8(0),
        }
    }

    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

pub(crate) struct Reader<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Checks the version byte; `what` names the record kind in errors.
    pub fn new(data: &'a [u8], what: &'static str) -> Result<Self, MqttError> {
        match data.split_first() {
            Some((&VERSION, rest)) => Ok(Reader { data: rest, what }),
            Some((v, _)) => Err(MqttError::corrupt(
                what,
                format!("unknown record version {v}"),
            )),
            None => Err(MqttError::corrupt(what, "empty record")),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], MqttError> {
        if self.data.len() < n {
            return Err(MqttError::corrupt(self.what, "truncated"));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, MqttError> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, MqttError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, MqttError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub fn bytes(&mut self) -> Result<Bytes, MqttError> {
        let n = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }

    pub fn str(&mut self) -> Result<String, MqttError> {
        let n = self.u32()? as usize;
        let raw = self.take(n)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| MqttError::corrupt(self.what, "text is not UTF-8"))
    }

    fn flag(&mut self) -> Result<bool, MqttError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(MqttError::corrupt(
                self.what,
                format!("bad presence flag {other}"),
            )),
        }
    }

    pub fn opt_str(&mut self) -> Result<Option<String>, MqttError> {
        if self.flag()? {
            self.str().map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn opt_bytes(&mut self) -> Result<Option<Bytes>, MqttError> {
        if self.flag()? {
            self.bytes().map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn opt_u64(&mut self) -> Result<Option<u64>, MqttError> {
        if self.flag()? {
            self.u64().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Whether every byte has been read: fields added to a record later are read only when
    /// a record has them.
    pub fn at_end(&self) -> bool {
        self.data.is_empty()
    }

    /// Fails if bytes are left over: a record of a different layout.
    pub fn end(&self) -> Result<(), MqttError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(MqttError::corrupt(self.what, "trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_truncation_is_reported() {
        let bytes = Writer::new()
            .u8(7)
            .u32(70_000)
            .u64(u64::MAX)
            .str("héllo")
            .opt_str(None)
            .opt_bytes(Some(b"\0\x01"))
            .opt_u64(Some(5))
            .finish();
        let mut r = Reader::new(&bytes, "test").expect("version");
        assert_eq!(r.u8().expect("u8"), 7);
        assert_eq!(r.u32().expect("u32"), 70_000);
        assert_eq!(r.u64().expect("u64"), u64::MAX);
        assert_eq!(r.str().expect("str"), "héllo");
        assert_eq!(r.opt_str().expect("opt"), None);
        assert_eq!(r.opt_bytes().expect("opt").as_deref(), Some(&b"\0\x01"[..]));
        assert_eq!(r.opt_u64().expect("opt"), Some(5));
        r.end().expect("nothing left");

        for cut in 0..bytes.len() {
            let mut r = match Reader::new(&bytes[..cut], "test") {
                Ok(r) => r,
                Err(_) => continue,
            };
            let all = (|| -> Result<(), MqttError> {
                r.u8()?;
                r.u32()?;
                r.u64()?;
                r.str()?;
                r.opt_str()?;
                r.opt_bytes()?;
                r.opt_u64()?;
                Ok(())
            })();
            assert!(all.is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn unknown_versions_are_refused() {
        assert!(Reader::new(&[9, 0], "test").is_err());
        assert!(Reader::new(&[], "test").is_err());
    }
}
