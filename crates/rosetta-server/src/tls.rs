//! TLS for the `tls_listen` listeners: the server's certificate and key, the authorities client
//! certificates are verified against, and reloading them all on SIGHUP.
//!
//! Each handshake takes the configuration current when the connection was accepted, so a reload
//! changes what new clients see and leaves established connections alone.
//!
//! A client certificate verified in the handshake also names a user (`subject`), which the
//! sessions may log in as: certificates are read here, once per connection, and the protocol
//! front-ends only see the resulting name.

mod subject;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::error::Error;

/// How long a client may take to complete the TLS handshake; the protocol's own handshake
/// timeout starts after it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS settings in force, replaced whole by [`Tls::reload`].
pub(crate) struct Tls {
    settings: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads the certificate, key and authorities named in `[tls]`. Fails, naming the file, when
    /// one cannot be read or holds nothing usable.
    pub fn load(settings: &TlsConfig) -> Result<Tls, Error> {
        Ok(Tls {
            current: RwLock::new(Arc::new(server_config(settings)?)),
            settings: settings.clone(),
        })
    }

    /// Reads the files again. On success new handshakes use them; on failure the previous
    /// configuration stays in force.
    pub fn reload(&self) -> Result<(), Error> {
        let fresh = Arc::new(server_config(&self.settings)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        TlsAcceptor::from(config)
    }

    /// Runs the TLS handshake on an accepted connection, bounded by [`HANDSHAKE_TIMEOUT`], and
    /// returns the stream with the user its verified client certificate names, if any
    /// (`ssl_cert_login_from`). `None` (logged) when the client fails the handshake: a
    /// plain-text client on a TLS port, an untrusted or missing client certificate, a silent
    /// client.
    pub async fn accept(
        &self,
        protocol: &'static str,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(TlsStream<TcpStream>, Option<String>)> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor().accept(stream)).await {
            Ok(Ok(stream)) => {
                let identity = self.peer_identity(&stream);
                Some((stream, identity))
            }
            Ok(Err(e)) => {
                tracing::info!(%peer, protocol, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::info!(%peer, protocol, "TLS handshake timeout");
                None
            }
        }
    }

    /// The user the client's certificate names. Only with `verify_peer`: without it rustls asks
    /// for no certificate, and an unverified one must never stand for a user.
    fn peer_identity(&self, stream: &TlsStream<TcpStream>) -> Option<String> {
        if !self.settings.verify_peer {
            return None;
        }
        let (_, connection) = stream.get_ref();
        let certificate = connection.peer_certificates()?.first()?;
        subject::user_name(certificate.as_ref(), self.settings.ssl_cert_login_from)
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| file_error(key, path, format!("cannot read: {e}")))
}

fn file_error(key: &'static str, path: &Path, reason: impl Into<String>) -> Error {
    Error::TlsFile {
        key,
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Every certificate of a PEM file, in order; at least one.
fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            key,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = read("key_file", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        file_error(
            "key_file",
            path,
            format!("holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })
}

fn server_config(settings: &TlsConfig) -> Result<ServerConfig, Error> {
    let certs = certificates("cert_file", &settings.cert_file)?;
    let key = private_key(&settings.key_file)?;
    let authorities = match &settings.ca_file {
        Some(path) => Some((path.clone(), certificates("ca_file", path)?)),
        None => None,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = match authorities {
        Some((path, cas)) if settings.verify_peer => {
            let mut roots = RootCertStore::empty();
            for ca in cas {
                roots
                    .add(ca)
                    .map_err(|e| file_error("ca_file", &path, e.to_string()))?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if !settings.fail_if_no_peer_cert {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| file_error("ca_file", &path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        file_error(
            "key_file",
            &settings.key_file,
            format!(
                "does not go with cert_file {}: {e}",
                settings.cert_file.display()
            ),
        )
    })?;
    // No TLS 1.3 session tickets (RabbitMQ's default too). They would reach the client after
    // its handshake is done, while it writes its first frame, and clients that read and write
    // one TLS connection from two threads (stomp.py, on Python's ssl module) then race inside
    // OpenSSL: the ticket is read as the CONNECT is written, and the CONNECT can be lost, so
    // the client waits for an answer the broker never gets asked for. Without tickets the
    // first thing a client reads is the broker's answer. TLS 1.3 clients do a full handshake
    // on every connection instead of resuming.
    config.send_tls13_tickets = 0;
    Ok(config)
}
