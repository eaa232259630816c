//! MQTT and STOMP over WebSocket (`ws_listen`, `ws_tls_listen`), for browser clients: RabbitMQ's
//! Web MQTT and Web STOMP ports, path and subprotocols, so web apps written for it work unchanged.
//!
//! The HTTP upgrade is answered here and the WebSocket connection is then presented to the
//! connection driver as a byte stream ([`WebSocket`]): message payloads in, one message per
//! write out. The codecs and sessions are the ones TCP clients get; only the framing differs.
//!
//! Frames, masking, fragmentation, ping/pong and the closing handshake are tokio-tungstenite's
//! (the maintained WebSocket implementation for tokio, with per-message and per-frame size
//! limits). The upgrade request itself is read here, with tungstenite's parser and checks,
//! because tungstenite's own server handshake drops a malformed request without an answer,
//! and a browser or proxy should see a 400, 403 or 404.
//!
//! tungstenite holds a whole message before the session sees a byte of it, so until the client
//! has logged in the socket is metered ([`Metered`]): a message (with what tungstenite read
//! ahead) may not pass [`BEFORE_LOGIN`] bytes. Only after the login may messages be as large as
//! the protocol's own limit; a stranger cannot make the broker hold megabytes per socket.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::machine::TryParse;
use tokio_tungstenite::tungstenite::handshake::server::{create_response, write_response, Request};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::connection::{reserve_input, SocketProgress, Transport, HANDSHAKE_TIMEOUT};
use crate::error::Error;
use crate::listener;
use crate::login_signal::LoginSignal;

/// The HTTP path both services answer on, as RabbitMQ's plugins do.
const PATH: &str = "/ws";
/// Longest upgrade request read; browsers send well under 2 KiB.
const MAX_REQUEST: usize = 8 * 1024;
/// tungstenite reserves its read buffer when the connection opens; the default (128 KiB) would
/// make each idle browser tab cost that much.
const READ_BUFFER: usize = 4 * 1024;
/// Largest message before the client has logged in: room for an MQTT `CONNECT` or a STOMP
/// `CONNECT` with generous headers.
const BEFORE_LOGIN: usize = 64 * 1024;

/// Which WebSocket message type carries the broker's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frames {
    /// MQTT is binary.
    Binary,
    /// STOMP is text: stomp.js and browsers expect text messages. Output that is not UTF-8 (a
    /// binary body) goes as a binary message, which a text message could not carry.
    Text,
}

/// How one service is upgraded: its names in logs, the subprotocols it answers to, its limits.
pub(crate) struct Upgrade {
    /// The listener's name in logs and metrics (`mqtt-ws`), and over TLS (`mqtt-wss`).
    pub name: &'static str,
    pub tls_name: &'static str,
    /// Subprotocols accepted, the client's first match is answered. A client that asks for none
    /// is accepted too (RabbitMQ does).
    subprotocols: &'static [&'static str],
    frames: Frames,
    /// Largest message (and frame) accepted once logged in: the protocol's own packet or frame
    /// limit.
    max_message: usize,
    /// `ws_allowed_origins`: the web origins whose pages may connect; empty, any.
    allowed_origins: Vec<String>,
}

impl Upgrade {
    /// MQTT over WebSocket; `max_packet_size` is `[mqtt] max_packet_size`.
    pub fn mqtt(max_packet_size: u32, allowed_origins: Vec<String>) -> Upgrade {
        Upgrade {
            name: "mqtt-ws",
            tls_name: "mqtt-wss",
            subprotocols: &["mqtt"],
            frames: Frames::Binary,
            max_message: usize::try_from(max_packet_size).unwrap_or(usize::MAX),
            allowed_origins,
        }
    }

    /// STOMP over WebSocket; a message may hold the largest frame the codec accepts: every
    /// header line at its longest, the body, and the command.
    pub fn stomp(limits: &rosetta_stomp::codec::Limits, allowed_origins: Vec<String>) -> Upgrade {
        let headers = limits
            .max_headers
            .saturating_mul(limits.max_header_length.saturating_add(1));
        Upgrade {
            name: "stomp-ws",
            tls_name: "stomp-wss",
            subprotocols: &["v12.stomp", "v11.stomp", "v10.stomp"],
            frames: Frames::Text,
            max_message: limits.max_body.saturating_add(headers).saturating_add(64),
            allowed_origins,
        }
    }

    /// Answers the upgrade request on an accepted connection, within the protocol handshake
    /// timeout. `None` (logged) when the request is refused or the client goes away.
    pub async fn accept<S>(&self, stream: S, peer: SocketAddr) -> Option<WebSocket<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(stream, peer)).await {
            Ok(ws) => ws,
            Err(_) => {
                tracing::info!(%peer, protocol = self.name, "WebSocket upgrade timeout");
                None
            }
        }
    }

    async fn handshake<S>(&self, mut stream: S, peer: SocketAddr) -> Option<WebSocket<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let request = match read_request(&mut stream).await {
            Ok(Some(request)) => request,
            Ok(None) => return None,
            Err(reason) => return self.refuse(stream, peer, Status::BadRequest, reason).await,
        };
        if request.uri().path() != PATH {
            let reason = format!("no WebSocket endpoint at {}", request.uri().path());
            return self.refuse(stream, peer, Status::NotFound, reason).await;
        }
        if let Some(origin) = self.refused_origin(&request) {
            let reason = format!("origin {origin} not allowed");
            return self.refuse(stream, peer, Status::Forbidden, reason).await;
        }
        let mut response = match create_response(&request) {
            Ok(response) => response,
            Err(e) => {
                return self
                    .refuse(stream, peer, Status::BadRequest, e.to_string())
                    .await
            }
        };
        if let Some(chosen) = self.choose_subprotocol(&request) {
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(chosen));
        }
        let mut head = Vec::new();
        write_response(&mut head, &response).ok()?;
        stream.write_all(&head).await.ok()?;
        stream.flush().await.ok()?;
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message));
        let login = LoginSignal::default();
        let metered = Metered {
            stream,
            read_since_message: 0,
            written: 0,
            login: login.clone(),
            peer,
            protocol: self.name,
        };
        let inner = WebSocketStream::from_raw_socket(metered, Role::Server, Some(config)).await;
        Some(WebSocket {
            inner,
            pending: Bytes::new(),
            frames: self.frames,
            login,
        })
    }

    /// The request's `Origin` when `ws_allowed_origins` is set and does not list it. A request
    /// without one (no browser sent it) is not refused: only browsers are made to send it, so
    /// only their pages can be told apart by it.
    fn refused_origin(&self, request: &Request) -> Option<String> {
        if self.allowed_origins.is_empty() {
            return None;
        }
        let origin = request.headers().get("Origin")?;
        let text = String::from_utf8_lossy(origin.as_bytes());
        let allowed = self
            .allowed_origins
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(text.trim()));
        (!allowed).then(|| text.into_owned())
    }

    /// The first subprotocol the client offers that this service speaks.
    fn choose_subprotocol(&self, request: &Request) -> Option<&'static str> {
        request
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .find_map(|offered| {
                self.subprotocols
                    .iter()
                    .copied()
                    .find(|ours| *ours == offered.trim())
            })
    }

    /// Answers a refused upgrade with an HTTP error and closes the connection.
    async fn refuse<S, T>(
        &self,
        mut stream: S,
        peer: SocketAddr,
        status: Status,
        reason: String,
    ) -> Option<T>
    where
        S: AsyncWrite + Unpin,
    {
        tracing::info!(%peer, protocol = self.name, status = status.code(), %reason, "WebSocket upgrade refused");
        let body = format!("{reason}\n");
        let answer = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            status.code(),
            status.text(),
            body.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_ok() {
            let _ = stream.shutdown().await;
        }
        None
    }
}

#[derive(Clone, Copy)]
enum Status {
    BadRequest,
    Forbidden,
    NotFound,
}

impl Status {
    fn code(self) -> u16 {
        match self {
            Status::BadRequest => 400,
            Status::Forbidden => 403,
            Status::NotFound => 404,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Status::BadRequest => "Bad Request",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
        }
    }
}

/// Reads the upgrade request: `None` if the client leaves before sending one, an error (the
/// reason for the 400) if it is no HTTP request, too long, or followed by bytes the client had
/// no right to send before the answer.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<Request>, String> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
        match Request::try_parse(&buf) {
            Ok(Some((len, _))) if len != buf.len() => {
                return Err("data after the upgrade request".into())
            }
            Ok(Some((_, request))) => return Ok(Some(request)),
            Ok(None) if buf.len() >= MAX_REQUEST => {
                return Err(format!("request longer than {MAX_REQUEST} bytes"))
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// One service's WebSocket listeners: plain and TLS, each when configured.
pub(crate) struct Listeners {
    pub upgrade: Arc<Upgrade>,
    pub plain: Option<TcpListener>,
    pub tls: Option<TcpListener>,
}

/// Binds `ws_listen` and `ws_tls_listen` where set; they log as `upgrade.name` and
/// `upgrade.tls_name`.
pub(crate) async fn bind(
    upgrade: Upgrade,
    listen: Option<SocketAddr>,
    tls_listen: Option<SocketAddr>,
) -> Result<Listeners, Error> {
    let plain = match listen {
        Some(addr) => Some(listener::bind(upgrade.name, addr).await?),
        None => None,
    };
    let tls = match tls_listen {
        Some(addr) => Some(listener::bind(upgrade.tls_name, addr).await?),
        None => None,
    };
    Ok(Listeners {
        upgrade: Arc::new(upgrade),
        plain,
        tls,
    })
}

/// A WebSocket connection as the byte stream the connection driver reads and writes: the
/// payloads of data messages in order, and each write sent as one message. Pings are answered
/// and a close is returned by tungstenite as it reads; a close from the client reads as the end
/// of the stream.
pub(crate) struct WebSocket<S> {
    inner: WebSocketStream<Metered<S>>,
    /// What is left of the message being read.
    pending: Bytes,
    frames: Frames,
    login: LoginSignal,
}

/// The socket under tungstenite, counting what it reads: before the login, once more than
/// [`BEFORE_LOGIN`] bytes (and one read-ahead) came in without a whole data message, the read
/// fails and the connection closes.
struct Metered<S> {
    stream: S,
    /// Bytes read since tungstenite last handed out a message.
    read_since_message: usize,
    /// Bytes the stream underneath has taken so far: a write hands tungstenite a whole message,
    /// and the socket takes it while the connection flushes, which the write alone does not
    /// show ([`SocketProgress`]).
    written: u64,
    login: LoginSignal,
    /// For the log line when the limit is passed.
    peer: SocketAddr,
    protocol: &'static str,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read_since_message > BEFORE_LOGIN + READ_BUFFER && !self.login.is_set() {
            tracing::info!(peer = %self.peer, protocol = self.protocol, limit = BEFORE_LOGIN, "WebSocket message before login too long; closing");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("WebSocket message before login longer than {BEFORE_LOGIN} bytes"),
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        self.read_since_message += buf.filled().len() - before;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.stream).poll_write(cx, data))?;
        self.written += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl<S> WebSocket<S> {
    /// Set by the connection once its client has logged in, lifting the limit on messages.
    pub fn login_signal(&self) -> LoginSignal {
        self.login.clone()
    }

    fn message(&self, data: &[u8]) -> Message {
        match (self.frames, std::str::from_utf8(data)) {
            (Frames::Text, Ok(text)) => Message::text(text),
            _ => Message::binary(Bytes::copy_from_slice(data)),
        }
    }
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WebSocket<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            let data = match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                // The close handshake is over, or the peer is gone.
                None => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => data,
                Some(Ok(Message::Text(text))) => text.into(),
                // Pings are answered and closes returned by tungstenite itself; the read after
                // a close ends the stream. They do not restart the meter: pings between the
                // fragments of one message must not let it grow past the limit.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => continue,
                Some(Ok(Message::Frame(_))) => continue,
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            };
            self.inner.get_mut().read_since_message = 0;
            self.pending = data;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WebSocket<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(io_error)?;
        let message = self.message(data);
        Pin::new(&mut self.inner)
            .start_send(message)
            .map_err(io_error)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx).map_err(io_error)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> SocketProgress for WebSocket<S> {
    fn socket_bytes(&self) -> u64 {
        self.inner.get_ref().written
    }
}

impl<S: Transport> Transport for WebSocket<S> {
    const NAME: &'static str = match S::NAME.as_bytes() {
        b"tls" => "wss",
        _ => "ws",
    };

    /// Cancel-safe: a message taken from the socket stays in `pending` until it is copied.
    async fn read_some(&mut self, input: &mut BytesMut) -> io::Result<usize> {
        reserve_input(input);
        self.read_buf(input).await
    }

    fn socket(&self) -> &TcpStream {
        self.inner.get_ref().stream.socket()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(protocols: &str) -> Request {
        let text =
            format!("GET /ws HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Protocol: {protocols}\r\n\r\n");
        let (_, request) = Request::try_parse(text.as_bytes())
            .expect("parses")
            .expect("complete");
        request
    }

    #[test]
    fn the_clients_first_known_subprotocol_is_chosen() {
        let stomp = Upgrade::stomp(
            &rosetta_stomp::codec::Limits {
                max_headers: 10,
                max_header_length: 100,
                max_body: 1000,
            },
            Vec::new(),
        );
        assert_eq!(
            stomp.choose_subprotocol(&request("v10.stomp, v12.stomp")),
            Some("v10.stomp")
        );
        assert_eq!(
            stomp.choose_subprotocol(&request("stomp,v11.stomp")),
            Some("v11.stomp")
        );
        assert_eq!(stomp.choose_subprotocol(&request("mqtt")), None);
        assert_eq!(
            Upgrade::mqtt(10, Vec::new()).choose_subprotocol(&request("mqtt")),
            Some("mqtt")
        );
    }

    #[test]
    fn only_listed_origins_are_allowed_once_a_list_is_set() {
        let origin = |value: &str| {
            let text = format!("GET /ws HTTP/1.1\r\nHost: x\r\nOrigin: {value}\r\n\r\n");
            let (_, request) = Request::try_parse(text.as_bytes())
                .expect("parses")
                .expect("complete");
            request
        };
        let any = Upgrade::mqtt(10, Vec::new());
        assert_eq!(any.refused_origin(&origin("https://evil.example")), None);
        let listed = Upgrade::mqtt(10, vec!["https://app.example.com".into()]);
        assert_eq!(
            listed.refused_origin(&origin("https://APP.example.com")),
            None
        );
        assert_eq!(
            listed
                .refused_origin(&origin("https://evil.example"))
                .as_deref(),
            Some("https://evil.example")
        );
        // No Origin: not a browser's request, nothing to tell apart.
        assert_eq!(listed.refused_origin(&request("mqtt")), None);
    }
}
