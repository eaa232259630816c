//! Fuzzes the AMQP 0-9-1 decoder: `cargo +nightly fuzz run decode` from `crates/rosetta-amqp`.
//!
//! Whatever the input, decoding must not panic, overflow the stack or loop; a frame it accepts
//! must re-encode to bytes that decode to the same encoding; and feeding the input one byte at a
//! time must give exactly the frames and error that decoding it whole gives.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rosetta_amqp::codec::{decode_frame, decode_header, encode_frame, CodecError, FRAME_MIN_SIZE};

/// Every frame in `buf` up to the first error or incomplete frame.
fn decode_all(mut buf: BytesMut, frame_max: u32) -> (Vec<BytesMut>, Option<CodecError>) {
    let mut frames = Vec::new();
    loop {
        match decode_frame(&mut buf, frame_max) {
            Ok(Some(frame)) => {
                let mut once = BytesMut::new();
                encode_frame(&frame, &mut once);
                let mut again = once.clone();
                let redecoded = decode_frame(&mut again, 0);
                assert!(
                    again.is_empty(),
                    "re-encoded frame left bytes over: {frame:?}"
                );
                let mut twice = BytesMut::new();
                match redecoded {
                    Ok(Some(f)) => encode_frame(&f, &mut twice),
                    other => panic!("re-encoded {frame:?} does not decode: {other:?}"),
                }
                assert_eq!(once, twice, "{frame:?} does not re-encode stably");
                frames.push(once);
            }
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the frame-max, so limits are exercised too.
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let frame_max = [0, FRAME_MIN_SIZE, 131_072][usize::from(selector % 3)];

    let _ = decode_header(&mut BytesMut::from(input));

    let whole = decode_all(BytesMut::from(input), frame_max);

    // The same bytes arriving one at a time.
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut error = None;
    'feed: for &byte in input {
        buf.extend_from_slice(&[byte]);
        loop {
            match decode_frame(&mut buf, frame_max) {
                Ok(Some(frame)) => {
                    let mut once = BytesMut::new();
                    encode_frame(&frame, &mut once);
                    frames.push(once);
                }
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
