//! STOMP over WebSocket (`[stomp] ws_listen`, path `/ws`, subprotocols `v10.stomp` to
//! `v12.stomp`) with a tokio-tungstenite client: frames in text messages, the upgrade's refusals
//! (404 for another path, 400 for a request that is no upgrade), subprotocol choice, ping/pong
//! and the closing handshake.

use futures_util::{SinkExt, StreamExt};
use rosetta_tests::Broker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::support::*;

fn ws_port(broker: &Broker) -> u16 {
    broker
        .addr("stomp-ws")
        .expect("the broker has no STOMP WebSocket listener")
        .port()
}

/// A STOMP client over WebSocket that reads frames out of text messages, however the broker
/// groups them.
struct Client {
    ws: WebSocketStream<TcpStream>,
    /// The chosen subprotocol, as the broker answered.
    subprotocol: Option<String>,
    received: String,
}

impl Client {
    /// Opens `/ws`, offering `subprotocols` (none if empty).
    async fn open(port: u16, subprotocols: &str) -> Client {
        let mut request = format!("ws://127.0.0.1:{port}/ws")
            .into_client_request()
            .expect("request");
        if !subprotocols.is_empty() {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                subprotocols.parse().expect("header"),
            );
        }
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let (ws, response) = tokio_tungstenite::client_async(request, tcp)
            .await
            .expect("WebSocket handshake");
        let subprotocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().expect("ASCII").to_owned());
        Client {
            ws,
            subprotocol,
            received: String::new(),
        }
    }

    async fn send(&mut self, frame: &str) {
        self.ws
            .send(Message::text(frame))
            .await
            .expect("send frame");
    }

    /// The next frame, without its NUL and the heart-beat newlines before it.
    async fn frame(&mut self) -> String {
        loop {
            if let Some(end) = self.received.find('\0') {
                let frame = self.received[..end]
                    .trim_start_matches(['\r', '\n'])
                    .to_owned();
                self.received.drain(..=end);
                return frame;
            }
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => self.received.push_str(&text),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(other) => panic!("expected a text message with a frame, got {other:?}"),
                Err(_) => panic!("no frame within {WAIT:?}"),
            }
        }
    }

    async fn login(&mut self) {
        self.send("CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:0,0\n\n\0")
            .await;
        let connected = self.frame().await;
        assert!(connected.starts_with("CONNECTED\n"), "{connected}");
    }
}

/// Sends `request` as it is on a new connection and returns the head of the broker's answer
/// (status line and headers).
async fn http(port: u16, request: &str) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("no HTTP answer")
            .expect("read");
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn connect_subscribe_send_and_message_travel_as_text_frames() {
    let broker = broker();
    let mut client = Client::open(ws_port(&broker), "v10.stomp, v11.stomp, v12.stomp").await;
    // The client's first choice that the broker speaks.
    assert_eq!(client.subprotocol.as_deref(), Some("v10.stomp"));
    client.login().await;
    let queue = unique("ws");
    client
        .send(&format!(
            "SUBSCRIBE\nid:0\ndestination:/queue/{queue}\nreceipt:r1\n\n\0"
        ))
        .await;
    let receipt = client.frame().await;
    assert!(
        receipt.starts_with("RECEIPT\n") && receipt.contains("receipt-id:r1"),
        "{receipt}"
    );
    client
        .send(&format!(
            "SEND\ndestination:/queue/{queue}\ncontent-type:text/plain\n\nhello from a browser\0"
        ))
        .await;
    let message = client.frame().await;
    assert!(message.starts_with("MESSAGE\n"), "{message}");
    assert!(message.contains("subscription:0"), "{message}");
    assert!(message.ends_with("\n\nhello from a browser"), "{message}");
}

#[tokio::test]
async fn a_stomp_websocket_client_receives_from_a_tcp_client() {
    let broker = broker();
    let mut browser = Client::open(ws_port(&broker), "v12.stomp").await;
    browser.login().await;
    let queue = unique("cross");
    browser
        .send(&format!(
            "SUBSCRIBE\nid:s\ndestination:/queue/{queue}\nreceipt:r\n\n\0"
        ))
        .await;
    assert!(browser.frame().await.starts_with("RECEIPT\n"));
    let addr = broker
        .addr("stomp")
        .expect("the broker has no STOMP listener");
    tokio::task::spawn_blocking(move || {
        let mut tcp = Raw::login_12(addr);
        tcp.send_with_receipt(
            "SEND",
            &[("destination", &format!("/queue/{queue}"))],
            b"from tcp",
        );
    })
    .await
    .expect("TCP client");
    let message = browser.frame().await;
    assert!(message.ends_with("\n\nfrom tcp"), "{message}");
}

#[tokio::test]
async fn a_client_that_asks_for_no_subprotocol_is_accepted() {
    let broker = broker();
    let mut client = Client::open(ws_port(&broker), "").await;
    assert_eq!(client.subprotocol, None);
    client.login().await;
}

#[tokio::test]
async fn an_unknown_subprotocol_is_not_chosen_but_the_upgrade_goes_on() {
    let broker = broker();
    let answer = http(
        ws_port(&broker),
        &upgrade_request("/ws", "Sec-WebSocket-Protocol: mqtt, chat\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{answer}"
    );
    assert!(
        !answer
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol"),
        "{answer}"
    );
}

#[tokio::test]
async fn another_path_is_404() {
    let broker = broker();
    let answer = http(ws_port(&broker), &upgrade_request("/stomp", "")).await;
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
}

#[tokio::test]
async fn a_request_that_is_no_upgrade_is_400() {
    let broker = broker();
    let port = ws_port(&broker);
    let plain_get = http(port, "GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(
        plain_get.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{plain_get}"
    );
    let not_http = http(port, "CONNECT\naccept-version:1.2\n\n\0").await;
    assert!(
        not_http.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{not_http}"
    );
}

#[tokio::test]
async fn pings_are_answered_and_a_close_is_returned() {
    let broker = broker();
    let mut client = Client::open(ws_port(&broker), "v12.stomp").await;
    client.login().await;
    client
        .ws
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(WAIT, client.ws.next())
        .await
        .expect("no pong");
    assert!(
        matches!(&pong, Some(Ok(Message::Pong(data))) if &data[..] == b"are you there"),
        "{pong:?}"
    );
    client.ws.close(None).await.expect("close");
    let end = tokio::time::timeout(WAIT, client.ws.next())
        .await
        .expect("the broker did not finish the closing handshake");
    assert!(matches!(end, None | Some(Ok(Message::Close(_)))), "{end:?}");
}

/// `GET path` on the broker's HTTP endpoint as guest; the body.
async fn http_get(broker: &Broker, path: &str) -> String {
    let mut tcp = TcpStream::connect(broker.http_addr())
        .await
        .expect("connect to the HTTP endpoint");
    // guest:guest
    let request = format!("GET {path} HTTP/1.0\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("no HTTP answer")
        .expect("read");
    let answer = String::from_utf8(answer).expect("UTF-8");
    let (head, body) = answer.split_once("\r\n\r\n").expect("HTTP answer");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

#[tokio::test]
async fn a_websocket_connection_is_listed_and_counted_as_stomp() {
    let broker = broker_with("[http]\nenabled = true\nlisten = \"127.0.0.1:0\"\n");
    let mut client = Client::open(ws_port(&broker), "v12.stomp").await;
    client.login().await;
    // The table is updated just after CONNECTED is written: wait for it, with a deadline.
    let end = tokio::time::Instant::now() + WAIT;
    let listed = loop {
        let body = http_get(&broker, "/api/connections").await;
        let listed: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        if listed[0]["user"] == "guest" {
            break listed;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "not listed as guest: {listed}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["protocol"], "stomp", "{listed}");
    assert_eq!(listed[0]["transport"], "ws", "{listed}");
    let metrics = http_get(&broker, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "rosetta_connections{protocol=\"stomp\"} 1"),
        "{metrics}"
    );
}

/// Whether the broker ends `ws` (a close, an error or the end of the stream) within [`WAIT`],
/// rather than answering.
async fn closed(ws: &mut WebSocketStream<TcpStream>) -> bool {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => return false,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(other))) => panic!("expected the connection to close, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_large_message_before_login_closes_the_connection() {
    let broker = broker();
    let mut client = Client::open(ws_port(&broker), "v12.stomp").await;
    // 1 MiB, well within the frame limit once logged in, but no CONNECT is that long. The
    // broker may close while it is still being sent.
    let big = format!(
        "CONNECT\naccept-version:1.2\nhost:/\nx:{}\n\n\0",
        "a".repeat(1 << 20)
    );
    let _ = client.ws.send(Message::text(big)).await;
    assert!(closed(&mut client.ws).await, "the connection stayed open");
    assert!(
        broker.wait_for_log("WebSocket message before login too long", WAIT),
        "{}",
        broker.log()
    );
}

#[tokio::test]
async fn a_large_message_after_login_travels() {
    let broker = broker();
    let mut client = Client::open(ws_port(&broker), "v12.stomp").await;
    client.login().await;
    let queue = unique("big");
    client
        .send(&format!(
            "SUBSCRIBE\nid:0\ndestination:/queue/{queue}\nreceipt:r\n\n\0"
        ))
        .await;
    assert!(client.frame().await.starts_with("RECEIPT\n"));
    let body = "b".repeat(1 << 20);
    client
        .send(&format!("SEND\ndestination:/queue/{queue}\n\n{body}\0"))
        .await;
    let message = client.frame().await;
    assert!(message.starts_with("MESSAGE\n"), "{}", &message[..200]);
    assert!(
        message.ends_with(&format!("\n\n{body}")),
        "the body differs"
    );
}

#[tokio::test]
async fn an_origin_that_is_not_allowed_is_403() {
    let broker = broker_with("ws_allowed_origins = [\"https://app.example.com\"]\n");
    let port = ws_port(&broker);
    let foreign = http(
        port,
        &upgrade_request("/ws", "Origin: https://evil.example\r\n"),
    )
    .await;
    assert!(
        foreign.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{foreign}"
    );
    let listed = http(
        port,
        &upgrade_request("/ws", "Origin: https://app.example.com\r\n"),
    )
    .await;
    assert!(listed.starts_with("HTTP/1.1 101"), "{listed}");
    // A client that is no browser sends no Origin and is not told apart by it.
    let none = http(port, &upgrade_request("/ws", "")).await;
    assert!(none.starts_with("HTTP/1.1 101"), "{none}");
}

#[tokio::test]
async fn any_origin_is_accepted_by_default() {
    let broker = broker();
    let answer = http(
        ws_port(&broker),
        &upgrade_request("/ws", "Origin: https://anywhere.example\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
}

#[tokio::test]
async fn pings_between_fragments_do_not_lift_the_limit_before_login() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    let broker = broker();
    let mut client = Client::open(ws_port(&broker), "v12.stomp").await;
    // One 1 MiB text message in 32 KiB fragments, a ping after each.
    const FRAGMENTS: usize = 32;
    let mut sent = Ok(());
    for i in 0..FRAGMENTS {
        let opcode = OpCode::Data(if i == 0 { Data::Text } else { Data::Continue });
        let fragment = Frame::message(vec![b'a'; 32 * 1024], opcode, i + 1 == FRAGMENTS);
        sent = client.ws.send(Message::Frame(fragment)).await;
        if sent.is_ok() {
            sent = client.ws.send(Message::Ping(b"p".to_vec().into())).await;
        }
        if sent.is_err() {
            break;
        }
    }
    // Either the broker already closed (the sends failed), or it must close now.
    if sent.is_ok() {
        assert!(closed(&mut client.ws).await, "the connection stayed open");
    }
    assert!(
        broker.wait_for_log("WebSocket message before login too long", WAIT),
        "{}",
        broker.log()
    );
}
