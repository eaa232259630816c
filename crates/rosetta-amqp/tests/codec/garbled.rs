//! Random and garbled input from a deterministic generator: the decoder never panics.

use bytes::{BufMut, BytesMut};
use rosetta_amqp::codec::{decode_frame, decode_header, FRAME_END, FRAME_MIN_SIZE};

use crate::frames::every_frame;
use crate::{encoded, FRAME_MAX};

/// xorshift64*: deterministic, dependency-free randomness for the garbling loops.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Decodes `input` to the end or the first error, checking the decoder's invariants: it never
/// panics, only ever consumes a decoded frame, what it decodes re-encodes stably, and the input
/// fed one byte at a time gives the same frames and error as the input decoded whole.
fn decode_and_check(input: &[u8], frame_max: u32) {
    let mut buf = BytesMut::from(input);
    let mut whole = Vec::new();
    let whole_error = loop {
        let before = buf.len();
        match decode_frame(&mut buf, frame_max) {
            Ok(Some(frame)) => {
                assert!(buf.len() < before, "a decoded frame must consume bytes");
                let once = encoded(&frame);
                let mut again = once.clone();
                let redecoded = decode_frame(&mut again, 0);
                assert!(again.is_empty(), "re-encoded {frame:?} left bytes over");
                let twice = redecoded.ok().flatten().map(|f| encoded(&f));
                assert_eq!(
                    twice.as_deref(),
                    Some(&once[..]),
                    "{frame:?} does not re-encode stably"
                );
                whole.push(once);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "waiting for more must not consume");
                break None;
            }
            Err(e) => break Some(e),
        }
    };

    let mut buf = BytesMut::new();
    let mut fed = Vec::new();
    let mut fed_error = None;
    'feed: for &byte in input {
        buf.put_u8(byte);
        loop {
            match decode_frame(&mut buf, frame_max) {
                Ok(Some(frame)) => fed.push(encoded(&frame)),
                Ok(None) => break,
                Err(e) => {
                    fed_error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    assert_eq!((fed, fed_error), (whole, whole_error), "{input:?}");

    let _ = decode_header(&mut BytesMut::from(input));
}

#[test]
fn random_bytes_never_panic_the_decoder() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..50_000 {
        let len = rng.below(64);
        let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Bias the first byte toward valid frame types so the payload parsers get exercised.
        if let Some(first) = input.first_mut() {
            *first = [1, 2, 3, 8, *first][rng.below(5)];
        }
        decode_and_check(&input, [0, FRAME_MIN_SIZE, FRAME_MAX][rng.below(3)]);
    }
}

#[test]
fn garbled_valid_frames_never_panic_the_decoder() {
    let frames = every_frame();
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for _ in 0..50_000 {
        let mut bytes = encoded(&frames[rng.below(frames.len())]).to_vec();
        for _ in 0..=rng.below(4) {
            match rng.below(4) {
                0 => {
                    let i = rng.below(bytes.len());
                    bytes[i] = rng.next() as u8;
                }
                1 => {
                    let i = rng.below(bytes.len());
                    bytes[i] ^= 1 << rng.below(8);
                }
                2 => {
                    let i = rng.below(bytes.len() + 1);
                    bytes.insert(i, rng.next() as u8);
                }
                _ => {
                    if bytes.len() > 1 {
                        let i = rng.below(bytes.len());
                        bytes.remove(i);
                    }
                }
            }
        }
        // Keep the declared size consistent half of the time so payload parsing runs.
        if rng.below(2) == 0 && bytes.len() >= 8 {
            let size = (bytes.len() - 8) as u32;
            bytes[3..7].copy_from_slice(&size.to_be_bytes());
            let last = bytes.len() - 1;
            bytes[last] = FRAME_END;
        }
        decode_and_check(&bytes, [0, FRAME_MIN_SIZE, FRAME_MAX][rng.below(3)]);
    }
}
