//! Fuzzes the MQTT decoder: `cargo +nightly fuzz run decode` from `crates/rosetta-mqtt`.
//!
//! Whatever the input, decoding must not panic or loop, as a first packet (CONNECT) or as the
//! packets of a connected 3.1.1 or 5.0 client; a packet it accepts must encode again; and
//! feeding the input one byte at a time must give exactly the packets and the error that
//! decoding it whole gives.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqtt_proto::Protocol;
use rosetta_mqtt::codec::{decode, decode_connect, encode};

/// Small enough that the size check is exercised, large enough for real packets.
const MAX: u32 = 4096;

/// Debug renderings of every packet in `buf`, then the error that stopped decoding, if any.
fn decode_all(mut buf: BytesMut, protocol: Protocol) -> (Vec<String>, Option<String>) {
    let mut packets = Vec::new();
    loop {
        match decode(&mut buf, protocol, MAX) {
            Ok(Some(packet)) => {
                // What a client sent is only ever decoded, but the server's encoder must not
                // panic on anything the decoder produces either.
                let _ = encode(&packet, protocol);
                packets.push(format!("{packet:?}"));
            }
            Ok(None) => return (packets, None),
            Err(e) => return (packets, Some(e.to_string())),
        }
    }
}

fn byte_by_byte(data: &[u8], protocol: Protocol) -> (Vec<String>, Option<String>) {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for &b in data {
        buf.extend_from_slice(&[b]);
        loop {
            match decode(&mut buf, protocol, MAX) {
                Ok(Some(packet)) => packets.push(format!("{packet:?}")),
                Ok(None) => break,
                Err(e) => return (packets, Some(e.to_string())),
            }
        }
    }
    (packets, None)
}

fuzz_target!(|data: &[u8]| {
    let mut first = BytesMut::from(data);
    let _ = decode_connect(&mut first, MAX);
    for protocol in [Protocol::V311, Protocol::V500] {
        let whole = decode_all(BytesMut::from(data), protocol);
        assert_eq!(byte_by_byte(data, protocol), whole, "split input decoded differently");
    }
});
