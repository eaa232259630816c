//! A minimal MQTT 3.1.1 client over any blocking byte stream: a `TcpStream`, a TLS stream, or
//! WebSocket messages seen as a stream. For tests that need the same exact packet sequence on
//! every transport and from every test binary; the packets are built by hand (the kit carries no
//! MQTT codec), so it knows only what those tests send and read.
//!
//! The stream must have a read timeout (`TcpStream::set_read_timeout` underneath): a packet
//! that never comes then fails the test instead of hanging it.

use std::io::{Read, Write};

/// What the broker sent, as far as these tests need to tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connack {
        return_code: u8,
    },
    Publish {
        topic: String,
        payload: Vec<u8>,
    },
    Puback {
        id: u16,
    },
    Suback {
        id: u16,
        codes: Vec<u8>,
    },
    Unsuback {
        id: u16,
    },
    /// Any other packet: its type (the high nibble of the first byte).
    Other(u8),
}

/// One client connection: the stream and what was read past the last whole packet.
pub struct Mqtt3<S> {
    stream: S,
    input: Vec<u8>,
}

impl<S: Read + Write> Mqtt3<S> {
    /// Logs in as guest with a clean session; panics unless the broker accepts.
    pub fn connect(stream: S, client_id: &str) -> Mqtt3<S> {
        let mut client = Mqtt3 {
            stream,
            input: Vec::new(),
        };
        client.send(&connect(client_id));
        match client.read() {
            Packet::Connack { return_code: 0 } => client,
            other => panic!("expected CONNACK 0 for {client_id}, got {other:?}"),
        }
    }

    /// Writes `bytes` and hands them to the transport at once (a TLS record, a WebSocket
    /// message), so they leave as one piece.
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self
            .stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
        {
            panic!("write to the broker: {e}");
        }
    }

    /// The next packet; panics if the stream fails, closes or times out first.
    #[track_caller]
    pub fn read(&mut self) -> Packet {
        loop {
            if let Some(len) = packet_len(&self.input).filter(|len| self.input.len() >= *len) {
                let bytes: Vec<u8> = self.input.drain(..len).collect();
                return decode(&bytes);
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the broker closed the connection"),
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("no whole packet from the broker: {e}"),
            }
        }
    }

    /// The stream, for tests that stop using the client but keep the connection open.
    pub fn stream(&mut self) -> &mut S {
        &mut self.stream
    }
}

/// A CONNECT: MQTT 3.1.1, clean session, keep-alive 30 s, user guest/guest.
pub fn connect(client_id: &str) -> Vec<u8> {
    let mut body = b"\x00\x04MQTT\x04\xc2\x00\x1e".to_vec();
    for field in [client_id, "guest", "guest"] {
        push_string(&mut body, field);
    }
    packet(0x10, &body)
}

/// A SUBSCRIBE of one filter at `qos`.
pub fn subscribe(id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    push_string(&mut body, filter);
    body.push(qos);
    packet(0x82, &body)
}

/// An UNSUBSCRIBE of one filter.
pub fn unsubscribe(id: u16, filter: &str) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    push_string(&mut body, filter);
    packet(0xa2, &body)
}

/// A QoS 0 PUBLISH.
pub fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + topic.len() + payload.len());
    push_string(&mut body, topic);
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

/// A PINGREQ: the PINGRESP comes once everything sent before it was handled.
pub fn pingreq() -> Vec<u8> {
    vec![0xc0, 0x00]
}

fn push_string(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("a string of at most 65,535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A packet with its fixed header: `first` byte and the remaining length.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// Total length of the packet at the start of `input`, once its fixed header is complete.
pub fn packet_len(input: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let byte = *input.get(1 + i)?;
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(2 + i + remaining);
        }
    }
    None
}

/// Decodes one whole packet (`bytes` holds exactly it).
#[track_caller]
fn decode(bytes: &[u8]) -> Packet {
    // The type byte, then the remaining length: bytes with the high bit set, and one without.
    let header = 2 + bytes[1..].iter().take_while(|b| *b & 0x80 != 0).count();
    let body = &bytes[header..];
    let id = || u16::from_be_bytes([body[0], body[1]]);
    match bytes[0] >> 4 {
        2 => Packet::Connack {
            return_code: body[1],
        },
        3 => {
            let qos = (bytes[0] >> 1) & 3;
            let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let topic = String::from_utf8(body[2..2 + topic_len].to_vec()).expect("UTF-8 topic");
            // QoS 1 and 2 carry a packet id after the topic.
            let payload = &body[2 + topic_len + if qos > 0 { 2 } else { 0 }..];
            Packet::Publish {
                topic,
                payload: payload.to_vec(),
            }
        }
        4 => Packet::Puback { id: id() },
        9 => Packet::Suback {
            id: id(),
            codes: body[2..].to_vec(),
        },
        11 => Packet::Unsuback { id: id() },
        other => Packet::Other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_decode_as_they_were_encoded() {
        let long = vec![b'p'; 300];
        let bytes = publish("a/b", &long);
        assert_eq!(packet_len(&bytes), Some(bytes.len()));
        assert_eq!(
            decode(&bytes),
            Packet::Publish {
                topic: "a/b".into(),
                payload: long
            }
        );
        assert_eq!(
            decode(&[0x90, 0x03, 0x00, 0x07, 0x01]),
            Packet::Suback {
                id: 7,
                codes: vec![1]
            }
        );
        assert_eq!(
            decode(&[0xb0, 0x02, 0x00, 0x08]),
            Packet::Unsuback { id: 8 }
        );
        assert_eq!(
            decode(&[0x20, 0x02, 0x00, 0x05]),
            Packet::Connack { return_code: 5 }
        );
    }
}
