//! Assembly of published content: `basic.publish`, then one content header, then body frames
//! until the announced size is reached (AMQP 0-9-1 §4.2.6).

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::basic;
use amq_protocol::protocol::BasicProperties;
use bytes::{Bytes, BytesMut};

use super::exception::BASIC_PUBLISH;
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

impl Incoming {
    pub fn new(publish: basic::Publish) -> Self {
        Incoming {
            publish,
            header: None,
            body: BytesMut::new(),
        }
    }

    /// The message in `slot`, taken out once its header and every body byte the header
    /// announced have arrived; until then it stays, to be filled where it lies.
    pub fn take_complete(slot: &mut Option<Incoming>) -> Option<Complete> {
        let incoming = slot.take_if(|i| {
            i.header
                .as_ref()
                .is_some_and(|(_, size)| i.body.len() as u64 == *size)
        })?;
        let (properties, _) = incoming.header?;
        Some(Complete {
            publish: incoming.publish,
            properties,
            body: incoming.body.freeze(),
        })
    }

    /// Takes the content header; the body size is checked against the limit before any body
    /// byte is buffered.
    pub fn header(&mut self, header: AMQPContentHeader, max_size: u64) -> Result<(), Exception> {
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
            return Err(Exception::for_method(
                406,
                format!("PRECONDITION_FAILED - message size {} is larger than configured max size {max_size}", header.body_size),
                &BASIC_PUBLISH,
            ));
        }
        self.header = Some((header.properties, header.body_size));
        Ok(())
    }

    pub fn body(&mut self, chunk: Vec<u8>) -> Result<(), Exception> {
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
        if self.body.is_empty() {
            // The first chunk's own buffer becomes the body, uncopied (both conversions hand
            // the buffer over): for the usual message of one body frame, the whole body.
            self.body = BytesMut::from(Bytes::from(chunk));
            return Ok(());
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
        self.body.extend_from_slice(&chunk);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::frame::AMQPContentHeader;
    use amq_protocol::protocol::basic;
    use amq_protocol::protocol::BasicProperties;

    use super::Incoming;

    const HUNDRED_MIB: u64 = 100 * 1024 * 1024;

    fn announced(size: u64) -> Option<Incoming> {
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: size,
            properties: BasicProperties::default(),
        };
        let mut slot = Some(Incoming::new(basic::Publish::default()));
        if let Err(e) = incoming(&mut slot).header(header, u64::MAX) {
            panic!("header refused: {e:?}");
        }
        assert!(
            Incoming::take_complete(&mut slot).is_none(),
            "a body of {size} bytes is not complete yet"
        );
        slot
    }

    fn incoming(slot: &mut Option<Incoming>) -> &mut Incoming {
        slot.as_mut().expect("incomplete content stays in its slot")
    }

    #[test]
    fn a_header_announcing_a_huge_body_allocates_nothing_until_bytes_arrive() {
        let mut slot = announced(HUNDRED_MIB);
        assert_eq!(incoming(&mut slot).body.capacity(), 0);
        if let Err(e) = incoming(&mut slot).body(vec![7; 4096]) {
            panic!("body refused: {e:?}");
        }
        assert!(
            Incoming::take_complete(&mut slot).is_none(),
            "4 KiB of 100 MiB completed the body"
        );
        assert!(
            incoming(&mut slot).body.capacity() <= 8192,
            "4 KiB received, {} bytes reserved",
            incoming(&mut slot).body.capacity()
        );
    }

    #[test]
    fn memory_follows_the_bytes_received_and_the_body_arrives_whole() {
        let size = 1_000_000u64;
        let mut slot = announced(size);
        let chunk: Vec<u8> = (0..=255u8).cycle().take(131_064).collect();
        let mut sent = 0u64;
        let complete = loop {
            let n = chunk.len().min((size - sent) as usize);
            sent += n as u64;
            if let Err(e) = incoming(&mut slot).body(chunk[..n].to_vec()) {
                panic!("body refused: {e:?}");
            }
            if let Some(complete) = Incoming::take_complete(&mut slot) {
                break complete;
            }
            let cap = incoming(&mut slot).body.capacity() as u64;
            assert!(cap <= 2 * sent, "{sent} bytes received, {cap} reserved");
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
