//! Fuzzes the STOMP decoder: `cargo +nightly fuzz run decode` from `crates/rosetta-stomp`.
//!
//! Whatever the input, decoding must not panic or loop; a frame it accepts must re-encode to
//! bytes that decode to the same frame; and feeding the input one byte at a time (resuming with
//! the decoder's hint) must give exactly the frames and error that decoding it whole gives.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rosetta_stomp::codec::{decode, decode_from, encode, with_body, Limits};
use rosetta_stomp::{Frame, StompError, Version};

fn decode_all(
    mut buf: BytesMut,
    limits: &Limits,
    version: Version,
) -> (Vec<Frame>, Option<StompError>) {
    let mut frames = Vec::new();
    loop {
        match decode(&mut buf, limits, version) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the version and how tight the limits are.
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let version = Version::ALL[usize::from(selector % 3)];
    let limits = if selector & 4 == 0 {
        Limits {
            max_headers: 4,
            max_header_length: 32,
            max_body: 64,
        }
    } else {
        Limits::default()
    };

    let whole = decode_all(BytesMut::from(input), &limits, version);

    for frame in &whole.0 {
        // content-length makes the body survive whatever it holds.
        let mut frame = frame.clone();
        frame.headers.retain(|(n, _)| n != "content-length");
        let body = std::mem::take(&mut frame.body);
        let frame = with_body(frame, body);
        let mut out = BytesMut::new();
        encode(&frame, version, &mut out);
        let (again, err) = decode_all(out, &Limits::default(), version);
        // Only 1.2 can escape every octet (1.1 has no CR escape, 1.0 none at all).
        if version == Version::V1_2 && frame.command.escapes_headers() {
            assert_eq!(err, None, "re-encoded {frame:?} does not decode");
            assert_eq!(again, [frame], "frame does not survive encode/decode");
        }
    }

    let mut buf = BytesMut::new();
    let mut searched = 0;
    let mut frames = Vec::new();
    let mut error = None;
    'feed: for &byte in input {
        buf.extend_from_slice(&[byte]);
        loop {
            match decode_from(&mut buf, &limits, version, &mut searched) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(
        whole,
        (frames, error),
        "byte-at-a-time decoding differs from whole decoding"
    );
});
