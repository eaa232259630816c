//! The frame decoder against random bytes and mutated valid frames, fed whole and split at
//! random points, for every protocol version and with tight and default limits. Whatever the
//! input: no panic, the same frames and error however it is split, every accepted frame
//! survives being encoded again, and no decode call allocates more than a small multiple of
//! the bytes it was given.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use rosetta_stomp::codec::{decode, encode, with_body, Limits};
use rosetta_stomp::{Command, Frame, StompError, Version};

use crate::config;
use crate::mutate::{self, Mutation};

/// Bytes a decode call may allocate per byte of input: a decoded frame costs more than its
/// encoding (a three-byte header line `a:\n` becomes two owned strings, a slot in the header
/// list and one in the set of names), never more.
const PER_INPUT_BYTE: u64 = 128;
/// Bytes a decode call may allocate whatever the input: error messages and bookkeeping. Far
/// below the body limit, so reserving for an announced `content-length` is caught.
const SLACK: u64 = 2048;

/// Limits tight enough to be hit by small inputs, and the defaults.
fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits {
            max_headers: 4,
            max_header_length: 32,
            max_body: 64,
        }),
        Just(Limits::default()),
    ]
}

fn version() -> impl Strategy<Value = Version> {
    prop::sample::select(Version::ALL.to_vec())
}

type Decoded = (Vec<Frame>, Option<StompError>);

/// Every frame `input` holds, decoded with the input arriving in pieces cut at `cuts`.
fn decode_in_pieces(
    input: &[u8],
    cuts: &[Index],
    limits: &Limits,
    version: Version,
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
            let len = buf.len() as u64;
            let mut result = Ok(None);
            let used = allocation_counter::measure(|| result = decode(&mut buf, limits, version));
            prop_assert!(
                used.bytes_max <= PER_INPUT_BYTE * len + SLACK,
                "decoding {len} bytes allocated {} bytes at once",
                used.bytes_max
            );
            match result {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return Ok((frames, Some(e))),
            }
        }
    }
    Ok((frames, None))
}

/// The properties every input must have.
fn check(
    input: &[u8],
    cuts: &[Index],
    limits: &Limits,
    version: Version,
) -> Result<(), TestCaseError> {
    let whole = decode_in_pieces(input, &[], limits, version)?;
    let pieces = decode_in_pieces(input, cuts, limits, version)?;
    prop_assert_eq!(&whole, &pieces, "the input decodes differently when split");
    // Only 1.2 can escape every octet (1.1 has no CR escape, 1.0 none at all), so only there
    // must every accepted frame come back unchanged from the encoder.
    if version == Version::V1_2 {
        for frame in whole.0.iter().filter(|f| f.command.escapes_headers()) {
            let mut frame = frame.clone();
            let body = std::mem::take(&mut frame.body);
            let frame = with_body(frame, body);
            let mut out = BytesMut::new();
            encode(&frame, version, &mut out);
            let again = decode_in_pieces(&out, &[], &Limits::default(), version)?;
            prop_assert_eq!(again, (vec![frame], None));
        }
    }
    Ok(())
}

/// Frames of every command, as the codec encodes them for each version: escapes, repeated
/// headers, bodies with and without `content-length`.
fn corpus() -> Vec<Vec<u8>> {
    let frames = [
        Frame::new(Command::Connect)
            .header("accept-version", "1.0,1.1,1.2")
            .header("host", "/")
            .header("login", "guest")
            .header("passcode", "guest")
            .header("heart-beat", "0,1000"),
        Frame::new(Command::Stomp).header("accept-version", "1.2"),
        Frame::new(Command::Send)
            .header("destination", "/queue/a")
            .header("receipt", "r:1\nx\\y")
            .body(Bytes::from_static(b"hello")),
        with_body(
            Frame::new(Command::Send).header("destination", "/topic/t"),
            Bytes::from_static(b"a\0b"),
        ),
        Frame::new(Command::Subscribe)
            .header("id", "s0")
            .header("destination", "/exchange/amq.topic/a.#")
            .header("ack", "client-individual"),
        Frame::new(Command::Unsubscribe).header("id", "s0"),
        Frame::new(Command::Ack)
            .header("id", "7")
            .header("transaction", "t"),
        Frame::new(Command::Nack).header("id", "8"),
        Frame::new(Command::Begin).header("transaction", "t"),
        Frame::new(Command::Commit).header("transaction", "t"),
        Frame::new(Command::Abort).header("transaction", "t"),
        Frame::new(Command::Disconnect).header("receipt", "bye"),
        Frame::new(Command::Connected).header("version", "1.2"),
        with_body(
            Frame::new(Command::Message)
                .header("subscription", "s0")
                .header("message-id", "1")
                .header("destination", "/queue/a")
                .header("dup", "1")
                .header("dup", "2"),
            Bytes::from_static(b"body"),
        ),
        Frame::new(Command::Receipt).header("receipt-id", "r"),
        Frame::new(Command::Error).header("message", "bad"),
    ];
    let mut corpus = Vec::new();
    for version in Version::ALL {
        for frame in &frames {
            let mut out = BytesMut::new();
            encode(frame, version, &mut out);
            corpus.push(out.to_vec());
        }
    }
    corpus
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn arbitrary_bytes_never_panic_nor_allocate_beyond_their_length(
        input in prop::collection::vec(any::<u8>(), 0..1024),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
        limits in limits(),
        version in version(),
    ) {
        check(&input, &cuts, &limits, version)?;
        // Behind a command line, so that the header and body parsers see the random bytes.
        check(&[b"SEND\n", &input[..]].concat(), &cuts, &limits, version)?;
    }

    #[test]
    fn mutated_valid_frames_never_panic_nor_allocate_what_they_announce(
        picks in prop::collection::vec(any::<Index>(), 1..6),
        mutations in prop::collection::vec(mutate::mutation(), 1..5),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
        limits in limits(),
        version in version(),
    ) {
        let corpus = corpus();
        let mut input: Vec<u8> = picks.iter().flat_map(|p| corpus[p.index(corpus.len())].clone()).collect();
        for m in &mutations {
            mutate::apply(&mut input, m, &corpus);
        }
        check(&input, &cuts, &limits, version)?;
    }
}

#[test]
fn a_frame_announcing_the_largest_body_allocates_nothing_for_it() {
    // Headers announcing a body at the limit: the decoder waits for it without making room for
    // it (it may never come).
    let mut buf = BytesMut::from(&b"SEND\ndestination:/queue/a\ncontent-length:134217728\n\n"[..]);
    let len = buf.len() as u64;
    let used = allocation_counter::measure(|| {
        assert!(matches!(
            decode(&mut buf, &Limits::default(), Version::V1_2),
            Ok(None)
        ));
    });
    assert!(
        used.bytes_max <= PER_INPUT_BYTE * len + SLACK,
        "{} bytes allocated for a body not yet received",
        used.bytes_max
    );
}

#[test]
fn the_mutations_reach_the_headers_they_aim_at() {
    // Guards the fuzzer itself: a content-length put in front of the second frame's headers
    // is the one the decoder goes by.
    let corpus = corpus();
    let mut input = b"BEGIN\ntransaction:t\n\n\0SEND\ndestination:/queue/a\n\nhello\0".to_vec();
    mutate::apply(&mut input, &Mutation::Announce(1, "2"), &corpus);
    let mut buf = BytesMut::from(&input[..]);
    let limits = Limits::default();
    assert!(matches!(
        decode(&mut buf, &limits, Version::V1_2),
        Ok(Some(_))
    ));
    let second = decode(&mut buf, &limits, Version::V1_2);
    assert!(
        matches!(second, Err(StompError::MissingNul(2))),
        "{second:?}"
    );
}
