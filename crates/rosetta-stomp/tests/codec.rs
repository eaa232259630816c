//! The STOMP codec: round trips, bodies holding NULs, heart-beats between frames, frames split at
//! every byte, header escaping per version, limits and malformed input.

use bytes::{Bytes, BytesMut};
use rosetta_stomp::codec::{decode, encode, Decoder, Limits};
use rosetta_stomp::{Command, Frame, StompError, Version};

fn limits() -> Limits {
    Limits {
        max_headers: 10,
        max_header_length: 64,
        max_body: 1024,
    }
}

fn decode_all(bytes: &[u8], version: Version) -> (Vec<Frame>, Option<StompError>, usize) {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    loop {
        match decode(&mut buf, &limits(), version) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, None, buf.len()),
            Err(e) => return (frames, Some(e), buf.len()),
        }
    }
}

/// Feeds `bytes` one at a time, as a slow network would, to one decoder that keeps its place.
fn decode_bytewise(bytes: &[u8], version: Version) -> (Vec<Frame>, Option<StompError>) {
    let mut buf = BytesMut::new();
    let mut decoder = Decoder::new();
    let mut frames = Vec::new();
    for &b in bytes {
        buf.extend_from_slice(&[b]);
        loop {
            match decoder.decode(&mut buf, &limits(), version) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fn error_of(bytes: &[u8]) -> StompError {
    match decode_all(bytes, Version::V1_2) {
        (_, Some(e), _) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn a_send_frame_decodes_with_headers_and_body() {
    let (frames, err, left) = decode_all(
        b"SEND\ndestination:/queue/a\nx-y:z\n\nhello\0",
        Version::V1_2,
    );
    assert_eq!(err, None);
    assert_eq!(left, 0);
    assert_eq!(frames.len(), 1);
    let f = &frames[0];
    assert_eq!(f.command, Command::Send);
    assert_eq!(f.get("destination"), Some("/queue/a"));
    assert_eq!(f.get("x-y"), Some("z"));
    assert_eq!(f.body, Bytes::from_static(b"hello"));
}

#[test]
fn content_length_lets_a_body_hold_nul_octets() {
    let (frames, err, _) = decode_all(
        b"SEND\ndestination:/queue/a\ncontent-length:5\n\na\0b\0c\0",
        Version::V1_2,
    );
    assert_eq!(err, None);
    assert_eq!(frames[0].body, Bytes::from_static(b"a\0b\0c"));
}

#[test]
fn heartbeat_eols_between_and_after_frames_are_skipped() {
    let input = b"\n\r\n\nSEND\ndestination:/queue/a\n\none\0\n\n\r\nSEND\r\ndestination:/queue/b\r\n\r\ntwo\0\n";
    let (frames, err, left) = decode_all(input, Version::V1_2);
    assert_eq!(err, None);
    assert_eq!(left, 0);
    assert_eq!(
        frames.iter().map(|f| f.body.clone()).collect::<Vec<_>>(),
        [Bytes::from_static(b"one"), Bytes::from_static(b"two")]
    );
    assert_eq!(frames[1].get("destination"), Some("/queue/b"));
}

#[test]
fn stray_nuls_between_frames_are_skipped_like_heartbeats() {
    let input =
        b"\0\0\nSEND\ndestination:/queue/a\n\none\0\0\r\n\0\0SEND\ndestination:/queue/b\n\ntwo\0\0";
    let (frames, err, left) = decode_all(input, Version::V1_2);
    assert_eq!(err, None);
    assert_eq!(left, 0);
    assert_eq!(
        frames.iter().map(|f| f.body.clone()).collect::<Vec<_>>(),
        [Bytes::from_static(b"one"), Bytes::from_static(b"two")]
    );
    let (bytewise, err) = decode_bytewise(input, Version::V1_2);
    assert_eq!(err, None);
    assert_eq!(bytewise, frames);
    // Inside a frame a NUL still ends the body or is an error in the headers.
    assert_eq!(error_of(b"\0SEND\0"), StompError::NulInHeaders);
}

#[test]
fn frames_split_at_every_byte_decode_the_same_as_whole() {
    let input: &[u8] = b"\nCONNECT\naccept-version:1.2\nhost:/\n\n\0\nSEND\ndestination:/queue/a\ncontent-length:3\n\n\0\0\0\0SUBSCRIBE\nid:1\ndestination:/topic/x\n\n\0\r\n";
    let (whole, err, _) = decode_all(input, Version::V1_2);
    assert_eq!(err, None);
    assert_eq!(whole.len(), 3);
    for split in 0..=input.len() {
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for part in [&input[..split], &input[split..]] {
            buf.extend_from_slice(part);
            while let Some(f) = decode(&mut buf, &limits(), Version::V1_2).expect("valid input") {
                got.push(f);
            }
        }
        assert_eq!(got, whole, "split at byte {split}");
    }
    let (bytewise, err) = decode_bytewise(input, Version::V1_2);
    assert_eq!(err, None);
    assert_eq!(bytewise, whole);
}

#[test]
fn repeated_headers_keep_the_first_entry() {
    let (frames, _, _) = decode_all(
        b"SEND\ndestination:/queue/a\nfoo:first\nfoo:second\n\n\0",
        Version::V1_2,
    );
    assert_eq!(frames[0].get("foo"), Some("first"));
    assert_eq!(frames[0].headers.len(), 2);
}

#[test]
fn header_escapes_follow_the_version() {
    let raw = b"SEND\ndestination:/queue/a\nk\\cey:a\\nb\\\\c\\r\n\n\0";
    let (frames, err, _) = decode_all(raw, Version::V1_2);
    assert_eq!(err, None);
    assert_eq!(frames[0].get("k:ey"), Some("a\nb\\c\r"));
    // STOMP 1.1 has no \r escape: an undefined escape is a fatal error.
    let (_, err, _) = decode_all(raw, Version::V1_1);
    assert_eq!(err, Some(StompError::BadEscape('r')));
    // STOMP 1.0 has no escapes at all.
    let (frames, err, _) = decode_all(raw, Version::V1_0);
    assert_eq!(err, None);
    assert_eq!(frames[0].get("k\\cey"), Some("a\\nb\\\\c\\r"));
}

#[test]
fn connect_frames_are_never_unescaped() {
    let (frames, err, _) = decode_all(b"CONNECT\nlogin:a\\cb\npasscode:x:y\n\n\0", Version::V1_2);
    assert_eq!(err, None);
    assert_eq!(frames[0].get("login"), Some("a\\cb"));
    assert_eq!(frames[0].get("passcode"), Some("x:y"));
}

#[test]
fn encoded_frames_round_trip_in_every_version() {
    for version in Version::ALL {
        let frame = Frame::new(Command::Message)
            .header("destination", "/queue/a")
            .header("plain", "value")
            .header("content-length", "4")
            .body(Bytes::from_static(b"a\0\nb"));
        let mut out = BytesMut::new();
        encode(&frame, version, &mut out);
        let (frames, err, _) = decode_all(&out, version);
        assert_eq!(err, None, "{version:?}");
        assert_eq!(frames, [frame], "{version:?}");
    }
    let tricky = Frame::new(Command::Message).header("a:b", "c\nd\\e\rf");
    let mut out = BytesMut::new();
    encode(&tricky, Version::V1_2, &mut out);
    assert_eq!(decode_all(&out, Version::V1_2).0, [tricky]);
}

#[test]
fn stomp_1_0_output_drops_line_breaks_it_cannot_escape() {
    let mut out = BytesMut::new();
    encode(
        &Frame::new(Command::Message).header("h", "a\nb"),
        Version::V1_0,
        &mut out,
    );
    assert_eq!(&out[..], b"MESSAGE\nh:ab\n\n\0");
}

#[test]
fn unknown_command_is_named() {
    assert_eq!(
        error_of(b"FROB\n\n\0"),
        StompError::UnknownCommand("FROB".into())
    );
    // Commands are case-sensitive.
    assert_eq!(
        error_of(b"send\n\n\0"),
        StompError::UnknownCommand("send".into())
    );
}

#[test]
fn header_line_without_colon_is_refused() {
    assert_eq!(
        error_of(b"SEND\ndestination /queue/a\n\n\0"),
        StompError::MissingColon("destination /queue/a".into())
    );
}

#[test]
fn bad_content_length_is_refused() {
    assert_eq!(
        error_of(b"SEND\ncontent-length:ten\n\n\0"),
        StompError::BadContentLength("ten".into())
    );
    assert_eq!(
        error_of(b"SEND\ncontent-length:-1\n\n\0"),
        StompError::BadContentLength("-1".into())
    );
    assert_eq!(
        error_of(b"SEND\ncontent-length:2\n\nabc\0"),
        StompError::MissingNul(2)
    );
}

#[test]
fn limits_are_enforced_before_the_frame_completes() {
    // A body with no NUL: refused once it passes the limit, without waiting for more.
    let mut unterminated = b"SEND\ndestination:/queue/a\n\n".to_vec();
    unterminated.extend(std::iter::repeat_n(b'x', 1025));
    assert_eq!(
        error_of(&unterminated),
        StompError::NoTerminator { max: 1024 }
    );
    unterminated.push(0);
    assert_eq!(
        error_of(&unterminated),
        StompError::NoTerminator { max: 1024 },
        "even when the NUL comes in the same read"
    );
    unterminated.truncate(unterminated.len() - 2);
    assert_eq!(
        decode_all(&unterminated, Version::V1_2).1,
        None,
        "at the limit it still waits"
    );
    // content-length beyond the limit: refused from the header alone.
    assert_eq!(
        error_of(b"SEND\ncontent-length:1025\n\n"),
        StompError::BodyTooLarge { max: 1024 }
    );
    // A header line longer than the limit, even before its LF arrives.
    let mut long = b"SEND\nh:".to_vec();
    long.extend(std::iter::repeat_n(b'v', 70));
    assert_eq!(error_of(&long), StompError::HeaderTooLong { max: 64 });
    // Too many headers.
    let many: String = (0..11).map(|i| format!("h{i}:v\n")).collect();
    assert_eq!(
        error_of(format!("SEND\n{many}\n\0").as_bytes()),
        StompError::TooManyHeaders { max: 10 }
    );
}

#[test]
fn nul_inside_headers_and_invalid_utf8_are_refused() {
    assert_eq!(error_of(b"DISCONNECT\0"), StompError::NulInHeaders);
    assert_eq!(
        error_of(b"SEND\ndestination:/queue/a\n\0"),
        StompError::NulInHeaders
    );
    assert_eq!(error_of(b"SEND\nh:\xff\n\n\0"), StompError::NotUtf8);
}

#[test]
fn bytewise_decoding_reports_the_same_errors() {
    for bad in [
        &b"SEND\nno colon\n\n\0"[..],
        b"FROB\n\n\0",
        b"SEND\ncontent-length:x\n\n\0",
    ] {
        let (_, whole, _) = decode_all(bad, Version::V1_2);
        let (_, bytewise) = decode_bytewise(bad, Version::V1_2);
        assert_eq!(whole, bytewise, "{:?}", String::from_utf8_lossy(bad));
        assert!(whole.is_some());
    }
}

#[test]
fn a_header_block_trickled_a_byte_at_a_time_is_examined_in_linear_work() {
    let mut frame = b"SEND\ndestination:/queue/a\n".to_vec();
    for i in 0..900 {
        frame.extend_from_slice(format!("header-{i:04}:{}\n", "v".repeat(52)).as_bytes());
    }
    frame.extend_from_slice(format!("long:{}\n", "x".repeat(4000)).as_bytes());
    frame.extend_from_slice(b"\nbody\0");
    assert!(frame.len() > 60_000, "{}", frame.len());

    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for &b in &frame {
        buf.extend_from_slice(&[b]);
        if let Some(f) = decoder
            .decode(&mut buf, &Limits::default(), Version::V1_2)
            .expect("valid frame")
        {
            frames.push(f);
        }
    }
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].headers.len(), 902);
    assert_eq!(&frames[0].body[..], b"body");
    assert!(buf.is_empty());
    // Each byte is looked at when the LF is searched for and once more when its line is
    // parsed; re-parsing from the start on every byte would cost about n²/2 (1.9e9 here).
    let n = frame.len() as u64;
    assert!(
        decoder.examined() <= 3 * n,
        "{} bytes examined for a {n}-byte frame",
        decoder.examined()
    );
}
