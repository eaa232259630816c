//! MQTT over WebSocket (`[mqtt] ws_listen`, path `/ws`, subprotocol `mqtt`): rumqttc's WebSocket
//! transport, the crossing to MQTT over TCP, the packet size limit, the connection limit, and
//! the order of input across connections.

use std::io::{self, Read, Write};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rosetta_tests::mqtt3::{packet, Mqtt3};
use rosetta_tests::{input_order_timeouts, publishes_missed_by_an_early_subscriber};
use rumqttc::{QoS, Transport};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::support::*;

/// A broker with MQTT on (and `extra` configuration), and its MQTT WebSocket listener's port.
fn ws_broker(extra: &str) -> (rosetta_tests::Broker, u16) {
    let broker = broker_with(extra);
    let port = broker
        .addr("mqtt-ws")
        .expect("the broker has no MQTT WebSocket listener")
        .port();
    (broker, port)
}

/// rumqttc options for the broker's MQTT WebSocket listener.
fn ws_options(port: u16, id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, format!("ws://127.0.0.1:{port}/ws"), port);
    o.set_credentials("guest", "guest");
    o.set_keep_alive(Duration::from_secs(30));
    o.set_transport(Transport::Ws);
    o
}

/// The upgrade request for `/ws` offering the `mqtt` subprotocol.
fn ws_request(port: u16) -> Request {
    let mut request = format!("ws://127.0.0.1:{port}/ws")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    request
}

async fn tcp_connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect")
}

/// A raw WebSocket connection to `/ws` offering the `mqtt` subprotocol.
async fn raw_ws(port: u16) -> WebSocketStream<TcpStream> {
    let (ws, response) = tokio_tungstenite::client_async(ws_request(port), tcp_connect(port).await)
        .await
        .expect("WebSocket handshake");
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some("mqtt")
    );
    ws
}

/// A blocking WebSocket connection seen as a byte stream: each write goes out as one binary
/// message, and reads return the binary messages' bytes in turn (MQTT over WebSocket may cut
/// packets anywhere).
struct WsBytes {
    ws: tungstenite::WebSocket<std::net::TcpStream>,
    unread: Vec<u8>,
}

impl WsBytes {
    /// Opens `/ws` with the `mqtt` subprotocol; reads fail after [`WAIT`].
    fn connect(port: u16) -> WsBytes {
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        tcp.set_read_timeout(Some(WAIT)).expect("read timeout");
        let (ws, _) = tungstenite::client(ws_request(port), tcp)
            .unwrap_or_else(|e| panic!("WebSocket handshake: {e}"));
        WsBytes {
            ws,
            unread: Vec::new(),
        }
    }
}

impl Read for WsBytes {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.unread.is_empty() {
            match self.ws.read() {
                Ok(Message::Binary(bytes)) => self.unread = bytes.to_vec(),
                Ok(Message::Close(_))
                | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(0)
                }
                // Pings are answered by tungstenite itself.
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) => return Err(e),
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.unread.len());
        buf[..n].copy_from_slice(&self.unread[..n]);
        self.unread.drain(..n);
        Ok(n)
    }
}

impl Write for WsBytes {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.ws
            .write(Message::binary(buf.to_vec()))
            .map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.ws.flush().map_err(io::Error::other)
    }
}

/// The next message the broker sends on `ws` within `WAIT`; `what` names it if none comes.
async fn next_message(ws: &mut WebSocketStream<TcpStream>, what: &str) -> Message {
    tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap_or_else(|_| panic!("no {what}"))
        .expect("closed")
        .expect("WebSocket error")
}

/// Waits for the broker to close `ws`, a Close message allowed first; `after` says what
/// should have made it close.
async fn expect_closed(ws: &mut WebSocketStream<TcpStream>, after: &str) {
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(end, ws.next()).await {
            Ok(None | Some(Err(_))) => break,
            Ok(Some(Ok(Message::Close(_)))) => continue,
            Ok(Some(Ok(other))) => panic!("unexpected message {other:?}"),
            Err(_) => panic!("connection still open after {after}"),
        }
    }
}

#[test]
fn rumqttc_over_websocket_subscribes_publishes_and_receives() {
    let (_broker, port) = ws_broker("");
    run(async move {
        let mut client = V4::with(ws_options(port, &unique("ws"))).await;
        let topic = unique("ws/t");
        assert_eq!(
            client.subscribe(&topic, QoS::AtLeastOnce).await,
            vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        client
            .send(&topic, QoS::AtLeastOnce, false, b"over websocket")
            .await;
        let received = client.publish().await;
        assert_eq!(received.topic, topic);
        assert_eq!(&received.payload[..], b"over websocket");
        client.disconnect().await;
    });
}

#[test]
fn websocket_and_tcp_clients_share_topics_both_ways() {
    let (broker, ws) = ws_broker("");
    let tcp = port(&broker);
    run(async move {
        let mut over_ws = V4::with(ws_options(ws, &unique("ws"))).await;
        let mut over_tcp = V4::connect(tcp, &unique("tcp"), true).await;
        let to_tcp = unique("cross/to-tcp");
        let to_ws = unique("cross/to-ws");
        over_tcp.subscribe(&to_tcp, QoS::AtLeastOnce).await;
        over_ws.subscribe(&to_ws, QoS::AtLeastOnce).await;

        over_ws
            .send(&to_tcp, QoS::AtLeastOnce, false, b"from the browser side")
            .await;
        let got = over_tcp.publish().await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            (to_tcp.as_str(), &b"from the browser side"[..])
        );

        over_tcp
            .send(&to_ws, QoS::ExactlyOnce, false, b"from a device")
            .await;
        let got = over_ws.publish().await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            (to_ws.as_str(), &b"from a device"[..])
        );
    });
}

#[test]
fn a_message_larger_than_max_packet_size_closes_the_connection() {
    let (_broker, port) = ws_broker("max_packet_size = 1024\n");
    run(async move {
        let mut ws = raw_ws(port).await;
        // A PUBLISH that is not even looked at: the WebSocket layer refuses the message first.
        ws.send(Message::binary(vec![0x30; 4096]))
            .await
            .expect("send");
        expect_closed(&mut ws, "an oversized message").await;
    });
}

#[test]
fn packets_split_across_websocket_messages_are_reassembled() {
    let (_broker, port) = ws_broker("");
    run(async move {
        let mut ws = raw_ws(port).await;
        // CONNECT (MQTT 3.1.1, clean session, client id "split", guest/guest), cut in three.
        let connect = connect_packet("split");
        for part in [&connect[..3], &connect[3..10], &connect[10..]] {
            ws.send(Message::binary(part.to_vec())).await.expect("send");
        }
        let reply = next_message(&mut ws, "CONNACK").await;
        assert_eq!(reply, Message::binary(vec![0x20, 0x02, 0x00, 0x00]));
    });
}

#[test]
fn websocket_connections_count_against_max_connections() {
    let (_broker, port) = ws_broker("[limits]\nmax_connections = 1\n");
    run(async move {
        let first = V4::with(ws_options(port, &unique("first"))).await;
        let refused = V4::try_with(ws_options(port, &unique("second"))).await;
        assert!(refused.is_err(), "a second connection was accepted");
        first.disconnect().await;
        // The slot is given back when the first connection's task ends.
        let accepted = rosetta_tests::eventually(WAIT, || async {
            V4::try_with(ws_options(port, &unique("third")))
                .await
                .is_ok()
        })
        .await;
        assert!(accepted, "the freed slot was not given to a new connection");
    });
}

/// MQTT 3.1.1 `CONNECT` (clean session, guest/guest) for `client_id`.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = b"\x00\x04MQTT\x04\xc2\x00\x1e".to_vec();
    for field in [client_id, "guest", "guest"] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    packet(0x10, &body)
}

#[test]
fn a_large_message_before_connect_closes_the_connection() {
    let (broker, port) = ws_broker("");
    run(async move {
        let mut ws = raw_ws(port).await;
        // 1 MiB, within max_packet_size (16 MiB) once logged in; the broker may close while it
        // is still being sent.
        let _ = ws.send(Message::binary(vec![0x30; 1 << 20])).await;
        expect_closed(&mut ws, "a large message before CONNECT").await;
    });
    assert!(
        broker.wait_for_log("WebSocket message before login too long", WAIT),
        "{}",
        broker.log()
    );
}

#[test]
fn a_large_message_after_connect_is_accepted() {
    let (_broker, port) = ws_broker("");
    run(async move {
        let mut ws = raw_ws(port).await;
        ws.send(Message::binary(connect_packet(&unique("big"))))
            .await
            .expect("send CONNECT");
        let reply = next_message(&mut ws, "CONNACK").await;
        assert_eq!(reply, Message::binary(vec![0x20, 0x02, 0x00, 0x00]));
        // PUBLISH QoS 1, packet id 7, 1 MiB of payload: answered with its PUBACK.
        let topic = unique("big/t");
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&7u16.to_be_bytes());
        body.extend(std::iter::repeat_n(b'p', 1 << 20));
        ws.send(Message::binary(packet(0x32, &body)))
            .await
            .expect("send PUBLISH");
        let reply = next_message(&mut ws, "PUBACK").await;
        assert_eq!(reply, Message::binary(vec![0x40, 0x02, 0x00, 0x07]));
    });
}

#[test]
fn an_origin_that_is_not_allowed_is_refused() {
    let (_broker, port) = ws_broker("ws_allowed_origins = [\"https://app.example.com\"]\n");
    run(async move {
        for (origin, allowed) in [
            ("https://evil.example", false),
            ("https://app.example.com", true),
        ] {
            let mut request = ws_request(port);
            request
                .headers_mut()
                .insert("Origin", origin.parse().expect("header"));
            match tokio_tungstenite::client_async(request, tcp_connect(port).await).await {
                Ok(_) => assert!(allowed, "{origin} was accepted"),
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    assert!(!allowed, "{origin} was refused");
                    assert_eq!(response.status(), 403);
                }
                Err(e) => panic!("{origin}: {e}"),
            }
        }
    });
}

/// The reproduction of tests/mqtt/mosquitto.rs with both clients over WebSocket: the broker
/// reads WebSocket messages in the same connection driver as MQTT over TCP, so a SUBSCRIBE is in
/// place before a PUBLISH that arrived after it, and no publish gave up waiting.
#[test]
fn over_websocket_publishes_read_together_with_a_subscribe_reach_it() {
    let broker = broker_with_http("");
    let port = broker
        .addr("mqtt-ws")
        .expect("the broker has no MQTT WebSocket listener")
        .port();
    let mut a = Mqtt3::connect(WsBytes::connect(port), &unique("ws-early-sub"));
    let mut b = Mqtt3::connect(WsBytes::connect(port), &unique("ws-prompt-pub"));
    let missed =
        publishes_missed_by_an_early_subscriber(&mut a, &mut b, &unique("ws-race"), ROUNDS);
    assert_eq!(missed, 0, "missed in {missed} of {ROUNDS} rounds");
    assert_eq!(input_order_timeouts(broker.http_addr()), 0.0);
}
