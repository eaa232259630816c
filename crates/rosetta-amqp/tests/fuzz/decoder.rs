//! The frame decoder against random bytes and mutated valid frames, fed whole and split at
//! random points. Whatever the input: no panic, the same frames and error however it is
//! split, every accepted frame re-encodes stably, and no decode call allocates more than a
//! small multiple of the bytes it was given.

use amq_protocol::frame::AMQPFrame;
use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use rosetta_amqp::codec::{
    decode_frame, decode_header, encode_frame, CodecError, FRAME_END, FRAME_MIN_SIZE,
};

use crate::mutate::{self, Mutation};
use crate::{config, frames, FRAME_MAX};

/// Bytes a decode call may allocate per byte of input. A parsed frame costs more than its
/// encoding (a two-byte table entry becomes a map node with an owned key and a value enum),
/// but never more than this.
const PER_INPUT_BYTE: u64 = 64;
/// Bytes a decode call may allocate whatever the input: errors and small bookkeeping. Far below
/// the smallest frame-max, so reserving for an announced size is caught.
const SLACK: u64 = 2048;

/// Decodes one frame, failing the case if the call allocated more than the input justifies.
fn decode_one(
    buf: &mut BytesMut,
    frame_max: u32,
) -> Result<Result<Option<AMQPFrame>, CodecError>, TestCaseError> {
    let len = buf.len() as u64;
    let mut result = Ok(None);
    let used = allocation_counter::measure(|| result = decode_frame(buf, frame_max));
    prop_assert!(
        used.bytes_max <= PER_INPUT_BYTE * len + SLACK,
        "decoding {len} bytes allocated {} bytes at once",
        used.bytes_max
    );
    Ok(result)
}

/// Each frame as the encoder writes it (comparing bytes spares NaN doubles in tables from
/// comparing unequal), then the error that stopped decoding, if any.
type Decoded = (Vec<Vec<u8>>, Option<CodecError>);

fn encoding(frame: &AMQPFrame) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(frame, &mut out);
    out.to_vec()
}

/// Every frame `input` holds, decoded with the input arriving in pieces cut at `cuts`.
fn decode_in_pieces(
    input: &[u8],
    cuts: &[Index],
    frame_max: u32,
) -> Result<Decoded, TestCaseError> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
    cuts.push(input.len());
    cuts.sort_unstable();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut from = 0;
    for cut in cuts {
        buf.extend_from_slice(&input[from..cut]);
        from = cut;
        loop {
            match decode_one(&mut buf, frame_max)? {
                Ok(Some(frame)) => frames.push(encoding(&frame)),
                Ok(None) => break,
                Err(e) => return Ok((frames, Some(e))),
            }
        }
    }
    Ok((frames, None))
}

/// The properties every input must have.
fn check(input: &[u8], cuts: &[Index], frame_max: u32) -> Result<(), TestCaseError> {
    // The protocol header is read from the same untrusted bytes.
    let mut header = BytesMut::from(input);
    let used = allocation_counter::measure(|| drop(decode_header(&mut header)));
    prop_assert!(used.bytes_max <= SLACK);

    let whole = decode_in_pieces(input, &[], frame_max)?;
    let pieces = decode_in_pieces(input, cuts, frame_max)?;
    prop_assert_eq!(&whole, &pieces, "the input decodes differently when split");

    for once in &whole.0 {
        // A frame the decoder accepted is one the encoder can write back, byte for byte.
        let mut again = BytesMut::from(&once[..]);
        let redecoded = decode_frame(&mut again, 0);
        prop_assert!(again.is_empty(), "re-encoded frame left bytes over");
        match redecoded {
            Ok(Some(frame)) => prop_assert_eq!(&encoding(&frame), once),
            other => prop_assert!(false, "re-encoded frame does not decode: {other:?}"),
        }
    }
    Ok(())
}

/// The frame-max before tuning, RabbitMQ's default after it, or none (what a client may ask).
fn frame_max() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![FRAME_MIN_SIZE, FRAME_MAX, 0])
}

/// A frame whose parts are individually plausible but random: a known or unknown type, any
/// channel, a payload, usually the right size and end octet.
fn random_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![3 => prop::sample::select(vec![1u8, 2, 3, 8]), 1 => any::<u8>()],
        any::<u16>(),
        prop::collection::vec(any::<u8>(), 0..256),
        prop_oneof![4 => Just(None), 1 => any::<u32>().prop_map(Some)],
        prop_oneof![4 => Just(FRAME_END), 1 => any::<u8>()],
    )
        .prop_map(|(kind, channel, payload, size, end)| {
            let mut frame = BytesMut::new();
            frame.put_u8(kind);
            frame.put_u16(channel);
            frame.put_u32(size.unwrap_or(payload.len() as u32));
            frame.put_slice(&payload);
            frame.put_u8(end);
            frame.to_vec()
        })
}

/// The encoded frames of the codec tests.
fn corpus() -> Vec<Vec<u8>> {
    frames::every_frame().iter().map(encoding).collect()
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn arbitrary_bytes_never_panic_nor_allocate_beyond_their_length(
        input in prop::collection::vec(any::<u8>(), 0..1024),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
        frame_max in frame_max(),
    ) {
        check(&input, &cuts, frame_max)?;
    }

    #[test]
    fn streams_of_random_frames_decode_the_same_however_they_are_split(
        frames in prop::collection::vec(random_frame(), 1..8),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
        frame_max in frame_max(),
    ) {
        check(&frames.concat(), &cuts, frame_max)?;
    }

    #[test]
    fn mutated_valid_frames_never_panic_nor_allocate_what_they_announce(
        picks in prop::collection::vec(any::<Index>(), 1..6),
        mutations in prop::collection::vec(mutate::mutation(), 1..5),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
        frame_max in frame_max(),
    ) {
        let corpus = corpus();
        let mut input: Vec<u8> = picks.iter().flat_map(|p| corpus[p.index(corpus.len())].clone()).collect();
        for m in &mutations {
            mutate::apply(&mut input, m, &corpus);
        }
        check(&input, &cuts, frame_max)?;
    }
}

#[test]
fn a_frame_announcing_its_largest_size_allocates_nothing_for_it() {
    // Seven header bytes announcing a payload just under frame-max: the decoder waits for the
    // payload without making room for it (the bytes may never come).
    for frame_max in [FRAME_MIN_SIZE, FRAME_MAX] {
        let mut buf = BytesMut::new();
        buf.put_u8(3);
        buf.put_u16(1);
        buf.put_u32(frame_max - 8);
        let used = allocation_counter::measure(|| {
            assert_eq!(decode_frame(&mut buf, frame_max), Ok(None));
        });
        assert!(
            used.bytes_max <= SLACK,
            "{} bytes allocated for a {frame_max}-byte frame not yet received",
            used.bytes_max
        );
    }
}

#[test]
fn the_mutations_reach_the_length_fields_they_aim_at() {
    // Guards the fuzzer itself: an announced size rewritten in the second frame of two is
    // found where the frame header keeps it.
    let corpus = corpus();
    let mut input = [corpus[0].clone(), corpus[1].clone()].concat();
    let second = corpus[0].len();
    let mutation = Mutation::Announce(1, 0xffff_ffff);
    mutate::apply(&mut input, &mutation, &corpus);
    assert_eq!(input[second + 3..second + 7], [0xff; 4]);
    assert_eq!(input[..second], corpus[0][..]);
}
