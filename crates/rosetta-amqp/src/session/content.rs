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
        self.body.reserve(header.body_size as usize);
        self.header = Some((header.properties, header.body_size));
        Ok(self.progress())
    }

    pub fn body(mut self, chunk: &[u8]) -> Result<Progress, Exception> {
        let Some((_, size)) = &self.header else {
            return Err(Exception::unexpected_frame(
                "content body before content header",
            ));
        };
        if self.body.len() as u64 + chunk.len() as u64 > *size {
            return Err(Exception::unexpected_frame(
                "content body longer than announced",
            ));
        }
        self.body.extend_from_slice(chunk);
        Ok(self.progress())
    }
}
