//! TLS on every listener against the real broker: a certificate authority and certificates made
//! by the test (rcgen), rustls clients speaking AMQP, MQTT (rumqttc), STOMP and HTTP over TLS,
//! client certificates, logging in with one (AMQP EXTERNAL, MQTT and STOMP `ssl_cert_login`),
//! plain-text clients on a TLS port, reloading on SIGHUP, and the configuration errors. pika, paho-mqtt and stomp.py over TLS are tested from tests/python.
//!
//! Needs the broker binary: `cargo build -p rosetta` first (`tests/run` does it).

mod cert_login;
mod config;
mod listeners;
mod mqtt;
mod peers;
mod pki;
mod reload;
mod tickets;
mod websocket;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rosetta_tests::{Broker, BrokerBuilder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use pki::{Issued, Pki};

/// How long anything that should happen may take.
const WAIT: Duration = Duration::from_secs(10);

/// The `[tls]` section for `server`'s files, written into `dir`, plus `extra` keys.
fn tls_section(dir: &Path, pki: &Pki, server: &Issued, extra: &str) -> String {
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    let ca = dir.join("ca.pem");
    server.write(&cert, &key);
    std::fs::write(&ca, pki.ca_pem()).expect("write ca.pem");
    format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\nca_file = {:?}\n{extra}",
        cert.display().to_string(),
        key.display().to_string(),
        ca.display().to_string(),
    )
}

/// A broker with every listener on, plain and TLS, on ephemeral loopback ports; its
/// certificate files live in `files` (which must outlive the broker for reloads).
fn tls_broker(files: &Path, pki: &Pki, server: &Issued, extra_tls: &str) -> Broker {
    let mut config = tls_section(files, pki, server, extra_tls);
    for section in ["amqp", "mqtt", "stomp", "http"] {
        config.push_str(&format!(
            "[{section}]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n"
        ));
    }
    BrokerBuilder::new().config(&config).start()
}

/// What most tests start from: an authority, a certificate for `localhost` it issued, and a
/// [`tls_broker`] serving that certificate, with no extra `[tls]` keys.
struct TlsSetup {
    broker: Broker,
    pki: Pki,
    server: Issued,
    /// The certificate files, kept while the broker runs.
    _files: tempfile::TempDir,
}

impl TlsSetup {
    fn start() -> TlsSetup {
        let files = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new("Rosetta test CA");
        let server = pki.server("rosetta server");
        let broker = tls_broker(files.path(), &pki, &server, "");
        TlsSetup {
            broker,
            pki,
            server,
            _files: files,
        }
    }
}

/// A TLS listener's address, logged as `amqps`, `mqtts`, `stomps` or `https`.
fn tls_addr(broker: &Broker, protocol: &str) -> SocketAddr {
    broker
        .addr(protocol)
        .unwrap_or_else(|| panic!("no {protocol} listener in {:?}", broker.listeners()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client trusting `pki`'s authority, presenting `identity` if given, limited to `versions`.
fn client_config_with(
    pki: &Pki,
    identity: Option<&Issued>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca_pem().as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(id.der.clone())],
                PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).expect("client key"),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

fn client_config(pki: &Pki, identity: Option<&Issued>) -> Arc<ClientConfig> {
    client_config_with(pki, identity, rustls::ALL_VERSIONS)
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// The certificate the server presented on `stream`.
fn server_certificate(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    let (_, connection) = stream.get_ref();
    connection
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| c.as_ref().to_vec())
        .expect("the server presented a certificate")
}

/// Sends the AMQP 0-9-1 protocol header and reads the broker's first frame, which must be
/// `connection.start` (class 10, method 10).
async fn amqp_start<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> io::Result<()> {
    stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
    stream.flush().await?;
    let mut header = [0u8; 7];
    tokio::time::timeout(WAIT, stream.read_exact(&mut header))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no frame"))??;
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
    let mut payload = vec![0u8; size + 1];
    stream.read_exact(&mut payload).await?;
    if header[0] != 1 || payload.get(..4) != Some(&[0, 10, 0, 10]) {
        return Err(io::Error::other(format!(
            "expected connection.start, got frame type {} payload {:?}",
            header[0],
            &payload[..payload.len().min(8)]
        )));
    }
    Ok(())
}

/// Reads one STOMP frame (up to its NUL), heart-beat newlines before it skipped.
async fn stomp_frame<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<String> {
    let mut frame = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no STOMP frame"))??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match byte[0] {
            0 => return Ok(String::from_utf8_lossy(&frame).into_owned()),
            b'\n' | b'\r' if frame.is_empty() => {}
            b => frame.push(b),
        }
    }
}

/// Logs in as guest over STOMP 1.2 and returns the broker's answer.
async fn stomp_connect<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> io::Result<String> {
    stream
        .write_all(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")
        .await?;
    stream.flush().await?;
    stomp_frame(stream).await
}

/// Sends a STOMP SEND with a receipt and returns the broker's answer.
async fn stomp_send<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    receipt: &str,
) -> io::Result<String> {
    let frame = format!("SEND\ndestination:/queue/tls-test\nreceipt:{receipt}\n\nhello\0");
    stream.write_all(frame.as_bytes()).await?;
    stream.flush().await?;
    stomp_frame(stream).await
}

/// Reads until the peer closes, an error, or `WAIT`; whatever arrived.
async fn read_until_closed<S: AsyncRead + Unpin>(stream: &mut S) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}
