//! What MQTT and STOMP clients are told when the broker shuts down on SIGTERM: MQTT 5.0 gets
//! `DISCONNECT` 0x8B (Server shutting down, MQTT 5.0 §3.14.2.1), STOMP an `ERROR` frame, and
//! both then see the connection close. The clients are raw sockets, so the tests read exactly
//! the bytes the broker wrote.

use crate::support::WAIT;
use rosetta_tests::Broker;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

const MQTT_ON: &str = "[mqtt]\nenabled = true\nlisten = \"127.0.0.1:0\"\n";
const STOMP_ON: &str = "[stomp]\nenabled = true\nlisten = \"127.0.0.1:0\"\n";

/// MQTT 5.0 reason code 0x8B, Server shutting down.
const SERVER_SHUTTING_DOWN: u8 = 0x8B;

fn open(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Reads until `done` accepts what arrived so far, or the peer closes, or `WAIT` runs out.
/// Returns the bytes and whether the peer closed the connection.
fn read_until(stream: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> (Vec<u8>, bool) {
    let end = Instant::now() + WAIT;
    let mut input = Vec::new();
    while !done(&input) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (input, false);
        }
        stream.set_read_timeout(Some(left)).expect("read timeout");
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return (input, true),
            Ok(n) => input.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (input, false)
            }
            // A reset after the broker's last write is a close too.
            Err(_) => return (input, true),
        }
    }
    (input, false)
}

/// Everything the peer sends until it closes the connection; panics if it stays open.
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let (input, closed) = read_until(stream, |_| false);
    assert!(
        closed,
        "connection still open after {WAIT:?}; got {input:02x?}"
    );
    input
}

/// A UTF-8 string as MQTT encodes it: two length bytes, then the bytes.
fn mqtt_string(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("short string");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A CONNECT for protocol level `level` (4 = 3.1.1, 5 = 5.0), Clean Start, as guest/guest.
fn mqtt_connect(level: u8, client_id: &str) -> Vec<u8> {
    let mut rest = Vec::new();
    mqtt_string(&mut rest, "MQTT");
    rest.push(level);
    // User name, password and Clean Start flags (MQTT 5.0 §3.1.2.3).
    rest.push(0x80 | 0x40 | 0x02);
    rest.extend_from_slice(&30u16.to_be_bytes());
    if level == 5 {
        rest.push(0); // no properties
    }
    mqtt_string(&mut rest, client_id);
    mqtt_string(&mut rest, "guest");
    mqtt_string(&mut rest, "guest");
    let len = u8::try_from(rest.len()).expect("a one-byte remaining length");
    let mut packet = vec![0x10, len];
    packet.extend_from_slice(&rest);
    packet
}

/// Connects at protocol level `level` and returns the socket once CONNACK accepted it.
fn mqtt_client(broker: &Broker, level: u8, client_id: &str) -> TcpStream {
    let addr = broker
        .addr("mqtt")
        .expect("the broker has no MQTT listener");
    let mut stream = open(addr);
    stream
        .write_all(&mqtt_connect(level, client_id))
        .expect("send CONNECT");
    let (connack, _) = read_until(&mut stream, |b| {
        rosetta_tests::mqtt3::packet_len(b).is_some_and(|n| b.len() >= n)
    });
    // CONNACK: type 2, then the acknowledge flags and the return / reason code 0 (MQTT 5.0
    // §3.2.2).
    assert_eq!(
        connack.first(),
        Some(&0x20),
        "not a CONNACK: {connack:02x?}"
    );
    assert_eq!(connack.get(3), Some(&0x00), "refused: {connack:02x?}");
    stream
}

#[test]
fn sigterm_sends_mqtt_5_clients_disconnect_0x8b_and_closes_the_connection() {
    let mut broker = Broker::start_with(MQTT_ON);
    let mut client = mqtt_client(&broker, 5, "goodbye-v5");

    broker.terminate();
    let bytes = read_to_close(&mut client);
    // One DISCONNECT (type 14) holding the whole rest of what was sent, reason code first.
    assert_eq!(bytes.first(), Some(&0xE0), "not a DISCONNECT: {bytes:02x?}");
    assert_eq!(
        rosetta_tests::mqtt3::packet_len(&bytes),
        Some(bytes.len()),
        "{bytes:02x?}"
    );
    assert_eq!(
        bytes.get(2),
        Some(&SERVER_SHUTTING_DOWN),
        "reason code: {bytes:02x?}"
    );

    let status = broker
        .wait_for_exit(WAIT)
        .expect("broker exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn sigterm_closes_mqtt_3_1_1_connections_without_a_packet() {
    let mut broker = Broker::start_with(MQTT_ON);
    let mut client = mqtt_client(&broker, 4, "goodbye-v311");

    broker.terminate();
    // MQTT 3.1.1 has no DISCONNECT from the server (§3.14): closing is all it can be told.
    let bytes = read_to_close(&mut client);
    assert!(bytes.is_empty(), "3.1.1 client got {bytes:02x?}");

    let status = broker
        .wait_for_exit(WAIT)
        .expect("broker exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
}

/// The frames in `input`, each as its command, headers and body, skipping heart-beat EOLs
/// between them (STOMP 1.2 Heart-beating); a frame without its closing NUL is left out.
fn stomp_frames(input: &[u8]) -> Vec<(String, Vec<String>, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut rest = input;
    loop {
        while let [b'\r' | b'\n', tail @ ..] = rest {
            rest = tail;
        }
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return frames;
        };
        let frame = String::from_utf8_lossy(&rest[..nul]).replace("\r\n", "\n");
        let (head, body) = frame.split_once("\n\n").unwrap_or((frame.as_str(), ""));
        let mut lines = head.lines().map(str::to_owned);
        let command = lines.next().unwrap_or_default();
        frames.push((command, lines.collect(), body.as_bytes().to_vec()));
        rest = &rest[nul + 1..];
    }
}

#[test]
fn sigterm_sends_stomp_clients_an_error_frame_and_closes_the_connection() {
    let mut broker = Broker::start_with(STOMP_ON);
    let mut client = open(
        broker
            .addr("stomp")
            .expect("the broker has no STOMP listener"),
    );
    client
        .write_all(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")
        .expect("send CONNECT");
    let (connected, _) = read_until(&mut client, |b| !stomp_frames(b).is_empty());
    let frames = stomp_frames(&connected);
    assert_eq!(
        frames.first().map(|f| f.0.as_str()),
        Some("CONNECTED"),
        "{frames:?}"
    );

    broker.terminate();
    let bytes = read_to_close(&mut client);
    let frames = stomp_frames(&bytes);
    let [(command, headers, body)] = frames.as_slice() else {
        panic!("expected one frame before the close, got {frames:?}");
    };
    assert_eq!(command, "ERROR", "{frames:?}");
    assert!(
        headers.iter().any(|h| h == "message:Connection forced"),
        "{headers:?}"
    );
    assert_eq!(String::from_utf8_lossy(body), "broker shutdown");

    let status = broker
        .wait_for_exit(WAIT)
        .expect("broker exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
}
