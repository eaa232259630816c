//! What each listener serves: binding a protocol's plain and TLS listeners, and the service
//! (AMQP, MQTT, STOMP, HTTP) run on each connection they accept, whatever carries its bytes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use rosetta_core::front_end::Session;
use rosetta_core::Outbound;
use rosetta_mqtt::MqttState;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::connection::{self, Transport};
use crate::error::Error;
use crate::http;
use crate::listener;
use crate::login_signal::{LoginSignal, Watched};
use crate::state::ServerState;
use crate::tls::Tls;
use crate::websocket;

/// One service's listeners: plain, and TLS when `tls_listen` is set.
pub(crate) struct Listeners {
    protocol: &'static str,
    plain: TcpListener,
    tls: Option<TcpListener>,
}

/// Binds `listen` and, if set, `tls_listen`. The TLS listener logs as `<protocol>s` (`amqps`,
/// `mqtts`, `stomps`, `https`).
pub(crate) async fn bind(
    protocol: &'static str,
    listen: SocketAddr,
    tls_listen: Option<SocketAddr>,
) -> Result<Listeners, Error> {
    let plain = listener::bind(protocol, listen).await?;
    let tls = match tls_listen {
        Some(addr) => Some(listener::bind(tls_name(protocol), addr).await?),
        None => None,
    };
    Ok(Listeners {
        protocol,
        plain,
        tls,
    })
}

fn tls_name(protocol: &'static str) -> &'static str {
    match protocol {
        "amqp" => "amqps",
        "mqtt" => "mqtts",
        "stomp" => "stomps",
        "http" => "https",
        other => other,
    }
}

/// One accepted connection, handed to its service once its transport is ready.
pub(crate) struct Accepted<T> {
    pub stream: T,
    pub peer: SocketAddr,
    /// The user the connection's verified TLS client certificate names (`tls::Tls::accept`);
    /// `None` on plain connections.
    pub identity: Option<String>,
    /// Set once the client has logged in, when the transport wants to know.
    pub login: Option<LoginSignal>,
    pub shutdown: watch::Receiver<bool>,
}

/// What runs on one accepted connection, whatever carries its bytes. Taken by value (a clone
/// per connection): the connection's future must not borrow the listener's copy.
pub(crate) trait Service: Clone + Send + Sync + 'static {
    fn serve<T: Transport>(self, conn: Accepted<T>) -> impl Future<Output = ()> + Send + 'static;
}

/// A protocol front-end served by the connection driver. Only how its session is built differs
/// between the protocols; watching for the login and driving the session is shared.
trait Protocol: Clone + Send + Sync + 'static {
    type Session: Session + Send + 'static;

    fn state(&self) -> &Arc<ServerState>;

    /// The session for a client at `peer` whose certificate names `identity`, and its outbox
    /// when the session has one from the start.
    fn session(
        &self,
        peer: SocketAddr,
        identity: Option<String>,
    ) -> (Self::Session, Option<Outbox>);
}

type Outbox = UnboundedReceiver<Outbound>;

impl<P: Protocol> Service for P {
    fn serve<T: Transport>(self, conn: Accepted<T>) -> impl Future<Output = ()> + Send + 'static {
        let (session, outbox) = self.session(conn.peer, conn.identity);
        let session = Watched::new(session, conn.login);
        let state = self.state().clone();
        connection::drive(
            conn.stream,
            conn.peer,
            session,
            outbox,
            state,
            conn.shutdown,
        )
    }
}

/// `[amqp]`, `[mqtt]` or `[stomp]` `ssl_cert_login`: whether that protocol's clients may log
/// in as the user their client certificate names (AMQP: by choosing `EXTERNAL`, offered only
/// then).
#[derive(Clone, Copy)]
pub(crate) struct CertLogin(pub bool);

impl CertLogin {
    /// The identity the session may log in as: none unless certificate login is on.
    fn identity(self, identity: Option<String>) -> Option<String> {
        identity.filter(|_| self.0)
    }
}

#[derive(Clone)]
pub(crate) struct Amqp(pub Arc<ServerState>, pub CertLogin);

impl Protocol for Amqp {
    type Session = rosetta_amqp::session::Session;

    fn state(&self) -> &Arc<ServerState> {
        &self.0
    }

    fn session(
        &self,
        peer: SocketAddr,
        identity: Option<String>,
    ) -> (Self::Session, Option<Outbox>) {
        let state = &self.0;
        let (session, outbox) = rosetta_amqp::session::Session::new(
            state.broker.clone(),
            state.users.clone(),
            state.amqp.clone(),
            peer,
        );
        (
            session.with_peer_identity(self.1.identity(identity)),
            Some(outbox),
        )
    }
}

#[derive(Clone)]
pub(crate) struct Mqtt(pub Arc<ServerState>, pub Arc<MqttState>, pub CertLogin);

impl Protocol for Mqtt {
    type Session = rosetta_mqtt::Session;

    fn state(&self) -> &Arc<ServerState> {
        &self.0
    }

    fn session(
        &self,
        peer: SocketAddr,
        identity: Option<String>,
    ) -> (Self::Session, Option<Outbox>) {
        // The session creates its outbox on the first subscription; the driver picks it up
        // then.
        let session = rosetta_mqtt::Session::new(self.1.clone(), peer)
            .with_peer_identity(self.2.identity(identity));
        (session, None)
    }
}

#[derive(Clone)]
pub(crate) struct Stomp(pub Arc<ServerState>, pub CertLogin);

impl Protocol for Stomp {
    type Session = rosetta_stomp::session::Session;

    fn state(&self) -> &Arc<ServerState> {
        &self.0
    }

    fn session(
        &self,
        peer: SocketAddr,
        identity: Option<String>,
    ) -> (Self::Session, Option<Outbox>) {
        let state = &self.0;
        let (session, outbox) = rosetta_stomp::session::Session::new(
            state.broker.clone(),
            state.users.clone(),
            state.stomp.clone(),
            peer,
        );
        (
            session.with_peer_identity(self.1.identity(identity)),
            Some(outbox),
        )
    }
}

#[derive(Clone)]
pub(crate) struct Http(pub Arc<ServerState>);

impl Service for Http {
    fn serve<T: Transport>(self, conn: Accepted<T>) -> impl Future<Output = ()> + Send + 'static {
        // The management API authenticates with basic auth only: no certificate identity, and
        // no login for the transport to watch.
        http::serve_connection(conn.stream, conn.peer, self.0, conn.shutdown)
    }
}

/// How a group of listeners accepts: the TLS settings, the connection limit, the stop signal.
pub(crate) struct Accept {
    pub tls: Option<Arc<Tls>>,
    pub limit: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
}

impl Accept {
    /// Spawns the accept loops of one service. A TLS connection's handshake runs in its own
    /// task, after the connection took its slot of the limit.
    pub fn start<S: Service>(
        &self,
        tasks: &mut Vec<JoinHandle<()>>,
        listeners: Listeners,
        service: S,
    ) {
        let protocol = listeners.protocol;
        let plain = service.clone();
        tasks.push(tokio::spawn(listener::accept_loop(
            protocol,
            listeners.plain,
            self.limit.clone(),
            self.shutdown.clone(),
            move |stream, peer, shutdown| {
                plain.clone().serve(Accepted {
                    stream,
                    peer,
                    identity: None,
                    login: None,
                    shutdown,
                })
            },
        )));
        // Validation guarantees `[tls]` whenever a `tls_listen` is set.
        let (Some(listener), Some(tls)) = (listeners.tls, self.tls.clone()) else {
            return;
        };
        let protocol = tls_name(protocol);
        tasks.push(tokio::spawn(listener::accept_loop(
            protocol,
            listener,
            self.limit.clone(),
            self.shutdown.clone(),
            move |stream, peer, shutdown| {
                let tls = tls.clone();
                let service = service.clone();
                async move {
                    if let Some((stream, identity)) = tls.accept(protocol, stream, peer).await {
                        service
                            .serve(Accepted {
                                stream,
                                peer,
                                identity,
                                login: None,
                                shutdown,
                            })
                            .await;
                    }
                }
            },
        )));
    }

    /// Spawns the accept loops of one service's WebSocket listeners. The TLS handshake, then the
    /// HTTP upgrade, run in the connection's own task, after it took its slot of the limit.
    pub fn start_websocket<S: Service>(
        &self,
        tasks: &mut Vec<JoinHandle<()>>,
        listeners: websocket::Listeners,
        service: S,
    ) {
        let upgrade = listeners.upgrade;
        if let Some(listener) = listeners.plain {
            let (upgrade, service) = (upgrade.clone(), service.clone());
            tasks.push(tokio::spawn(listener::accept_loop(
                upgrade.name,
                listener,
                self.limit.clone(),
                self.shutdown.clone(),
                move |stream, peer, shutdown| {
                    let (upgrade, service) = (upgrade.clone(), service.clone());
                    async move {
                        if let Some(ws) = upgrade.accept(stream, peer).await {
                            let login = Some(ws.login_signal());
                            service
                                .serve(Accepted {
                                    stream: ws,
                                    peer,
                                    identity: None,
                                    login,
                                    shutdown,
                                })
                                .await;
                        }
                    }
                },
            )));
        }
        // Validation guarantees `[tls]` whenever a `ws_tls_listen` is set.
        let (Some(listener), Some(tls)) = (listeners.tls, self.tls.clone()) else {
            return;
        };
        tasks.push(tokio::spawn(listener::accept_loop(
            upgrade.tls_name,
            listener,
            self.limit.clone(),
            self.shutdown.clone(),
            move |stream, peer, shutdown| {
                let (upgrade, tls, service) = (upgrade.clone(), tls.clone(), service.clone());
                async move {
                    let Some((stream, identity)) = tls.accept(upgrade.tls_name, stream, peer).await
                    else {
                        return;
                    };
                    if let Some(ws) = upgrade.accept(stream, peer).await {
                        let login = Some(ws.login_signal());
                        service
                            .serve(Accepted {
                                stream: ws,
                                peer,
                                identity,
                                login,
                                shutdown,
                            })
                            .await;
                    }
                }
            },
        )));
    }
}
