//! Assembly of published content: `basic.publish`, then one content header, then body frames
//! until the announced size is reached (AMQP 0-9-1 §4.2.6).

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::basic;
use amq_protocol::protocol::BasicProperties;
use bytes::{Bytes, BytesMut};

use super::Exception;

pub(super) struct Incoming {
    pub publish: basic::Publish,
    header: Option<(BasicProperties, u64)>,
    /// Grows with the bytes received, never ahead of them: the announced size is only a
    /// claim, and up to `channel_max` channels may each announce `max_message_size`.
    body: BytesMut,
}

/// A fully received message.
pub(super) struct Complete {
    pub publish: basic::Publish,
    pub properties: BasicProperties,
    pub body: Bytes,
}

pub(super) enum Progress {
    More(Incoming),
    Done(Complete),
}

impl Incoming {
    pub fn new(publish: basic::Publish) -> Self {
        Incoming {
            publish,
            header: None,
            body: BytesMut::new(),
        }
    }

    fn progress(self) -> Progress {
        match self.header {
            Some((properties, size)) if self.body.len() as u64 == size => {
                Progress::Done(Complete {
                    publish: self.publish,
                    properties,
                    body: self.body.freeze(),
                })
            }
            _ => Progress::More(self),
        }
    }

    /// Takes the content header; the body size is checked against the limit before any body
    /// byte is buffered.
    pub fn header(
        mut self,
        header: AMQPContentHeader,
        max_size: u64,
    ) -> Result<Progress, Exception> {
        if self.header.is_some() {
            return Err(Exception::unexpected_frame(
                "second content header for one publish",
            ));
        }
        if header.class_id != 60 {
            return Err(Exception::unexpected_frame(format!(
                "content header for class {}",
                header.class_id
            )));
        }
        if header.body_size > max_size {
            return Err(Exception::new(
                406,
                format!("PRECONDITION_FAILED - message size {} is larger than configured max size {max_size}", header.body_size),
                60,
                40,
            ));
        }
        self.header = Some((header.properties, header.body_size));
        Ok(self.progress())
    }

    pub fn body(mut self, chunk: &[u8]) -> Result<Progress, Exception> {
        let Some((_, size)) = &self.header else {
            return Err(Exception::unexpected_frame(
                "content body before content header",
            ));
        };
        let needed = self.body.len() as u64 + chunk.len() as u64;
        if needed > *size {
            return Err(Exception::unexpected_frame(
                "content body longer than announced",
            ));
        }
        if needed > self.body.capacity() as u64 {
            // Doubling keeps the copies linear in the body size; capping at the announced
            // size keeps a complete body from holding spare room. `with_capacity` allocates
            // exactly, where `reserve` may round up.
            let target = (self.body.capacity() as u64)
                .saturating_mul(2)
                .clamp(needed, *size);
            let mut grown = BytesMut::with_capacity(usize::try_from(target).unwrap_or(usize::MAX));
            grown.extend_from_slice(&self.body);
            self.body = grown;
        }
        self.body.extend_from_slice(chunk);
        Ok(self.progress())
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::frame::AMQPContentHeader;
    use amq_protocol::protocol::basic;
    use amq_protocol::protocol::BasicProperties;

    use super::{Incoming, Progress};

    const HUNDRED_MIB: u64 = 100 * 1024 * 1024;

    fn announced(size: u64) -> Incoming {
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: size,
            properties: BasicProperties::default(),
        };
        match Incoming::new(basic::Publish::default()).header(header, u64::MAX) {
            Ok(Progress::More(incoming)) => incoming,
            Ok(Progress::Done(_)) => panic!("a body of {size} bytes is not complete yet"),
            Err(e) => panic!("header refused: {e:?}"),
        }
    }

    #[test]
    fn a_header_announcing_a_huge_body_allocates_nothing_until_bytes_arrive() {
        let incoming = announced(HUNDRED_MIB);
        assert_eq!(incoming.body.capacity(), 0);
        let Ok(Progress::More(incoming)) = incoming.body(&[7; 4096]) else {
            panic!("4 KiB of 100 MiB completed the body");
        };
        assert!(
            incoming.body.capacity() <= 8192,
            "4 KiB received, {} bytes reserved",
            incoming.body.capacity()
        );
    }

    #[test]
    fn memory_follows_the_bytes_received_and_the_body_arrives_whole() {
        let size = 1_000_000u64;
        let mut incoming = announced(size);
        let chunk: Vec<u8> = (0..=255u8).cycle().take(131_064).collect();
        let mut sent = 0u64;
        let complete = loop {
            let n = chunk.len().min((size - sent) as usize);
            sent += n as u64;
            match incoming.body(&chunk[..n]) {
                Ok(Progress::More(more)) => {
                    let cap = more.body.capacity() as u64;
                    assert!(cap <= 2 * sent, "{sent} bytes received, {cap} reserved");
                    incoming = more;
                }
                Ok(Progress::Done(complete)) => break complete,
                Err(e) => panic!("body refused: {e:?}"),
            }
        };
        assert_eq!(complete.body.len() as u64, size);
        let expected: Vec<u8> = std::iter::repeat_n(&chunk, 8)
            .flatten()
            .copied()
            .take(size as usize)
            .collect();
        assert_eq!(complete.body, expected);
    }
}
