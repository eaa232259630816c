//! One STOMP connection's protocol state, without I/O.
//!
//! The server's connection driver works it through [`rosetta_core::front_end::Session`]: bytes
//! in, deliveries from the core, durability progress, and whatever output it has. Everything
//! STOMP decides (version and heart-beat negotiation, receipts, acknowledgement modes,
//! transactions, ERROR then close) is decided here.

mod connect;
mod send;
mod subscribe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rosetta_core::durable::Held;
use rosetta_core::front_end::ledger::{AutoAck, Ledger};
use rosetta_core::front_end::{self, AlarmPause, Heartbeats, Session as _};
use rosetta_core::store::Epoch;
use rosetta_core::{Broker, ConnectionId, Directory, Grant, Outbound, VHost};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::codec::{self, Decoder, Limits};
use crate::error::{StompError, SUPPORTED_VERSIONS};
use crate::frame::{Command, Frame, Version};
use send::Transaction;
use subscribe::Subscription;

/// Limits and defaults the server configures.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub limits: Limits,
    /// The heart-beat interval in ms the server offers in both directions (0 = none).
    pub heartbeat_ms: u32,
    /// The virtual host for clients whose `host` header names none that exists.
    pub default_vhost: String,
    /// Most subscriptions at once, temporary-queue ones included, and most temporary queues
    /// (0 = no limit). A STOMP connection is one channel, so `max_consumers_per_channel` sets it.
    pub max_subscriptions: usize,
    /// Most frames (SEND, ACK, NACK) one open transaction may hold (0 = no limit).
    pub max_transaction_frames: usize,
    /// Most bytes, bodies and headers, one open transaction may hold (0 = no limit).
    pub max_transaction_bytes: u64,
}

impl Default for SessionConfig {
    /// The defaults of `broker.toml`.
    fn default() -> Self {
        SessionConfig {
            limits: Limits::default(),
            heartbeat_ms: 10_000,
            default_vhost: "/".to_owned(),
            max_subscriptions: 10_000,
            max_transaction_frames: 10_000,
            max_transaction_bytes: 128 * 1024 * 1024,
        }
    }
}

pub use rosetta_core::front_end::Flow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingConnect,
    Connected,
    Closed,
}

pub struct Session {
    broker: Arc<Broker>,
    users: Arc<Directory>,
    config: SessionConfig,
    conn_id: ConnectionId,
    peer: SocketAddr,
    /// The user the connection's verified TLS client certificate names, when `[stomp]
    /// ssl_cert_login` lets it log in: a CONNECT without `login` and `passcode` logs in as it.
    peer_identity: Option<String>,
    phase: Phase,
    /// Until CONNECT is negotiated, frames are read as 1.2 (CONNECT is never escaped anyway).
    version: Version,
    user: String,
    vhost: Option<Arc<VHost>>,
    /// What the user may do in the virtual host, from CONNECT on.
    grant: Option<Grant>,
    /// The `client-id` header of CONNECT: the queues STOMP makes record it with their owner,
    /// and durable subscriptions' queues named before RabbitMQ's naming carry it in their name.
    client_id: Option<String>,
    /// Negotiated heart-beats: (server sends every, server expects within), in ms.
    heartbeat: (u64, u64),
    subscriptions: HashMap<String, Subscription>,
    /// Deliveries awaiting ACK or NACK, by the message id the MESSAGE frame carried, each
    /// with the id of its subscription (its consumer's tag, shared rather than copied).
    unacked: Ledger<u64, Arc<str>>,
    next_message_id: u64,
    /// Open transactions (STOMP 1.2 BEGIN): frames held back until COMMIT.
    transactions: HashMap<String, Transaction>,
    /// RECEIPTs in the order their frames arrived, each with the store epoch it waits for.
    receipts: Held<String>,
    /// The latest store epoch this session's frames wrote, which DISCONNECT's receipt awaits.
    written: Epoch,
    /// `/temp-queue/` names and the private queues behind them.
    temp_queues: HashMap<String, String>,
    /// A resource alarm, and whether this connection has sent.
    alarm: AlarmPause,
    /// A publishing frame that arrived while the alarm was on, handled once it is off.
    paused: Option<Frame>,
    /// Bytes read after the paused frame, or the start of a frame that followed it.
    held: BytesMut,
    outbox: UnboundedSender<Outbound>,
    out: BytesMut,
    /// Keeps its place in a frame that arrives over several reads.
    decoder: Decoder,
    /// MESSAGE frames of `ack:auto` subscriptions written: their queues dispatch again once
    /// the output is flushed.
    auto_ack: AutoAck,
}

impl Session {
    /// Creates a session and the receiver of its outbox, which the connection driver drains
    /// into the session.
    pub fn new(
        broker: Arc<Broker>,
        users: Arc<Directory>,
        config: SessionConfig,
        peer: SocketAddr,
    ) -> (Self, UnboundedReceiver<Outbound>) {
        let (tx, rx) = unbounded_channel();
        let conn_id = broker.new_connection_id();
        let session = Session {
            broker,
            users,
            config,
            conn_id,
            peer,
            peer_identity: None,
            phase: Phase::AwaitingConnect,
            version: Version::V1_2,
            user: String::new(),
            vhost: None,
            grant: None,
            client_id: None,
            heartbeat: (0, 0),
            subscriptions: HashMap::new(),
            unacked: Ledger::default(),
            next_message_id: 1,
            transactions: HashMap::new(),
            receipts: Held::default(),
            written: 0,
            temp_queues: HashMap::new(),
            alarm: AlarmPause::default(),
            paused: None,
            held: BytesMut::new(),
            outbox: tx,
            out: BytesMut::with_capacity(512),
            decoder: Decoder::new(),
            auto_ack: AutoAck::default(),
        };
        (session, rx)
    }

    /// The user the connection's verified TLS client certificate names, given only when
    /// certificate login is on (`[stomp] ssl_cert_login`): a CONNECT without `login` and
    /// `passcode` then logs in as it.
    pub fn with_peer_identity(mut self, identity: Option<String>) -> Self {
        self.peer_identity = identity;
        self
    }

    /// Negotiated heart-beats: how often to send one, and how long the client may stay silent
    /// (STOMP 1.2 Heart-beating). `None` where that direction is off.
    pub fn negotiated_heartbeats(&self) -> (Option<Duration>, Option<Duration>) {
        let on = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        (on(self.heartbeat.0), on(self.heartbeat.1))
    }

    fn write(&mut self, frame: &Frame) {
        codec::encode(frame, self.version, &mut self.out);
    }

    fn process(&mut self, input: &mut BytesMut) -> Flow {
        loop {
            if self.phase == Phase::Closed {
                input.clear();
                // A DISCONNECT receipt still waiting for the store keeps the connection open.
                return if self.is_finished() {
                    Flow::Close
                } else {
                    Flow::Continue
                };
            }
            if self.paused.is_some() {
                // Nothing after the paused frame may overtake it.
                self.held = input.split();
                return Flow::Continue;
            }
            let frame = match self
                .decoder
                .decode(input, &self.config.limits, self.version)
            {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    if !self.receipts.is_empty() {
                        self.on_durable();
                    }
                    return Flow::Continue;
                }
                Err(e) => {
                    input.clear();
                    // RabbitMQ's plugin answers any command but CONNECT from a client that has
                    // not logged in so, whether it knows the command or not.
                    let e = match e {
                        StompError::UnknownCommand(_) if self.phase == Phase::AwaitingConnect => {
                            StompError::NotLoggedIn
                        }
                        e => e,
                    };
                    self.fail(&e, None);
                    return Flow::Close;
                }
            };
            if self.alarm.is_on() && self.publishes(&frame) {
                // RabbitMQ blocks a connection on its first publish under an alarm, so even a
                // connection that never published before waits here.
                self.paused = Some(frame);
                continue;
            }
            if self.dispatch(&frame) == Flow::Close {
                input.clear();
                return Flow::Close;
            }
        }
    }

    fn dispatch(&mut self, frame: &Frame) -> Flow {
        match self.handle_frame(frame) {
            Ok(flow) => flow,
            Err(e) => {
                self.fail(&e, Some(frame));
                Flow::Close
            }
        }
    }

    /// Whether handling `frame` would publish: a SEND, held in a transaction or not, or the
    /// COMMIT of a transaction holding one.
    fn publishes(&self, frame: &Frame) -> bool {
        if self.phase != Phase::Connected {
            return false;
        }
        match frame.command {
            Command::Send => true,
            Command::Commit => frame
                .get("transaction")
                .and_then(|tx| self.transactions.get(tx))
                .is_some_and(Transaction::publishes),
            _ => false,
        }
    }

    fn handle_frame(&mut self, frame: &Frame) -> Result<Flow, StompError> {
        let command = frame.command;
        if self.phase == Phase::AwaitingConnect {
            return match command {
                Command::Connect | Command::Stomp => self.connect(frame).map(|()| Flow::Continue),
                _ => Err(StompError::NotLoggedIn),
            };
        }
        let epoch = match command {
            Command::Connect | Command::Stomp => {
                return Err(StompError::Unexpected("already connected".into()))
            }
            // A server frame from a client is a command the server does not interpret.
            Command::Connected | Command::Message | Command::Receipt | Command::Error => {
                return Err(StompError::UnknownCommand(command.as_str().to_owned()))
            }
            Command::Disconnect => return Ok(self.disconnect(frame)),
            Command::Send => self.send_or_hold(frame)?,
            Command::Subscribe => self.subscribe(frame)?,
            Command::Unsubscribe => self.unsubscribe(frame)?,
            Command::Ack | Command::Nack => self.ack_or_hold(frame).map(|()| None)?,
            Command::Begin => self.begin(frame).map(|()| None)?,
            Command::Commit => self.commit(frame)?,
            Command::Abort => self.abort(frame).map(|()| None)?,
        };
        self.written = self.written.max(epoch.unwrap_or(0));
        // A SEND held in a transaction is answered at COMMIT, once it took effect (and is
        // durable, if persistent), and never if the transaction is aborted: RabbitMQ's plugin
        // confirms a SEND's receipt only when the message is published. A held ACK or NACK is
        // answered now, as there.
        let deferred = command == Command::Send && frame.get("transaction").is_some();
        if let Some(receipt) = frame.get("receipt").filter(|_| !deferred) {
            self.receipt(epoch.unwrap_or(0), receipt.to_owned());
        }
        Ok(Flow::Continue)
    }

    /// Queues a RECEIPT behind any still waiting for the store (STOMP 1.2 RECEIPT), and sends
    /// every receipt that is ready.
    fn receipt(&mut self, epoch: Epoch, id: String) {
        self.receipts.push(epoch, id);
        self.on_durable();
    }

    /// DISCONNECT: the receipt, if asked for, goes out once everything the session wrote is
    /// durable (STOMP 1.2 Connecting, graceful disconnect: the receipt tells the client all
    /// its previous frames were handled, and a persistent SEND is handled once it is on disk),
    /// then the connection closes. Until then nothing more is read, and the driver waits for
    /// the store's durable point as for any receipt rather than blocking on an fsync.
    fn disconnect(&mut self, frame: &Frame) -> Flow {
        tracing::debug!(peer = %self.peer, "client disconnected");
        self.cleanup();
        self.phase = Phase::Closed;
        if let Some(receipt) = frame.get("receipt") {
            self.receipt(self.written, receipt.to_owned());
        }
        if self.is_finished() {
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    /// Sends ERROR and ends the session (STOMP 1.2 ERROR: "the server MUST then close the
    /// connection just after sending the ERROR frame").
    fn fail(&mut self, error: &StompError, frame: Option<&Frame>) {
        let command = frame.map_or("-", |f| f.command.as_str());
        tracing::warn!(peer = %self.peer, user = %self.user, command, error = %error, "closing connection with ERROR");
        // RabbitMQ's plugin names the supported versions on every ERROR.
        let mut reply = Frame::new(Command::Error)
            .header("message", error.summary())
            .header("version", SUPPORTED_VERSIONS);
        if let Some(receipt) = frame.and_then(|f| f.get("receipt")) {
            reply.push_header("receipt-id", receipt);
        }
        reply.push_header("content-type", "text/plain");
        self.end_with(reply, error.body());
    }

    /// The broker ends the connection: tell the client why, then close.
    fn close_forced(&mut self, reason: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        let reply = Frame::new(Command::Error)
            .header("message", "Connection forced")
            .header("version", SUPPORTED_VERSIONS)
            .header("content-type", "text/plain");
        self.end_with(reply, reason.to_owned());
    }

    /// Writes the ERROR that ends the session and closes it. The ERROR is the last frame: the
    /// receipts already durable go before it, and those still waiting for the store never go,
    /// since nothing follows an ERROR and the client must not take one as confirmed.
    fn end_with(&mut self, error: Frame, body: String) {
        self.on_durable();
        self.receipts = Held::default();
        self.write(&codec::with_body(error, Bytes::from(body)));
        self.cleanup();
        self.phase = Phase::Closed;
    }

    fn vhost(&self) -> Result<Arc<VHost>, StompError> {
        self.vhost
            .clone()
            .ok_or_else(|| StompError::Unexpected("not connected".into()))
    }

    /// Runs the user's permission checks; a refusal is an ERROR `access_refused` with
    /// RabbitMQ's text.
    fn permit(
        &mut self,
        check: impl FnOnce(&mut Grant) -> Result<(), rosetta_core::CoreError>,
    ) -> Result<(), StompError> {
        let grant = self
            .grant
            .as_mut()
            .ok_or_else(|| StompError::Unexpected("not connected".into()))?;
        Ok(check(grant)?)
    }

    /// Ends every subscription and transaction and gives unacknowledged messages back to their
    /// queues, flagged redelivered; exclusive queues go with the connection.
    fn cleanup(&mut self) {
        self.transactions.clear();
        self.paused = None;
        self.held.clear();
        if let Some(vhost) = self.vhost.clone() {
            for (_, sub) in self.subscriptions.drain() {
                vhost.cancel(&sub.queue, &sub.consumer);
            }
            self.unacked.requeue_all();
            self.broker.connection_closed(self.conn_id);
        }
    }
}

impl front_end::Session for Session {
    const PROTOCOL: &'static str = "stomp";

    /// Decodes and handles every complete frame in `input`.
    fn handle_input(&mut self, input: &mut BytesMut) -> Flow {
        if !self.held.is_empty() {
            // Bytes read before a pause come first, and the decoder's place is in them.
            self.held.extend_from_slice(input);
            input.clear();
            std::mem::swap(input, &mut self.held);
        }
        self.process(input)
    }

    fn handle_outbound(&mut self, item: Outbound) {
        self.deliver(item);
    }

    /// Whether some RECEIPT waits for the store.
    fn has_pending_durability(&self) -> bool {
        !self.receipts.is_empty()
    }

    /// The store's durable epoch advanced: send the receipts it covers, in order.
    fn on_durable(&mut self) {
        let durable = self.broker.store().durable_epoch();
        while let Some(id) = self.receipts.pop_durable(durable) {
            self.write(&Frame::new(Command::Receipt).header("receipt-id", id));
        }
    }

    fn take_output(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// After output was written: queues whose auto-ack consumers regained credit deliver more.
    fn after_flush(&mut self) {
        self.auto_ack.flushed();
    }

    /// STOMP 1.2 Heart-beating: the receiver "SHOULD" allow for timing inaccuracies; a client
    /// is declared dead after twice its negotiated interval of silence.
    fn heartbeats(&self) -> Heartbeats {
        let (send, expect) = self.negotiated_heartbeats();
        Heartbeats {
            send_after: send,
            expect_within: expect.map(|d| d * 2),
        }
    }

    fn send_heartbeat(&mut self) {
        codec::encode_heartbeat(&mut self.out);
    }

    /// The authenticated user; none before CONNECTED.
    fn user(&self) -> Option<&str> {
        (!self.user.is_empty()).then_some(self.user.as_str())
    }

    fn is_closing(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The session ended and its last RECEIPT (DISCONNECT's) is out: the connection closes once
    /// the output is written.
    fn is_finished(&self) -> bool {
        self.phase == Phase::Closed && self.receipts.is_empty()
    }

    /// The resource alarm went on or off. Once it is off, the frame it paused and whatever was
    /// read after it are handled.
    fn set_alarm(&mut self, on: bool) {
        self.alarm.set_alarm(on);
        if on {
            return;
        }
        if let Some(frame) = self.paused.take() {
            if self.dispatch(&frame) == Flow::Close {
                self.held.clear();
                return;
            }
        }
        if !self.held.is_empty() {
            let mut held = std::mem::take(&mut self.held);
            self.process(&mut held);
            if self.held.is_empty() {
                // No new pause: what is left is the start of a frame still arriving.
                self.held = held;
            }
        }
    }

    /// Publishers are held back while an alarm is on; STOMP has no way to say so, so TCP
    /// backpressure tells the client. A connection that has published stops being read, and
    /// so does one whose publishing frame the alarm paused.
    fn reading_paused(&self) -> bool {
        // After DISCONNECT nothing more is read while its receipt waits for the store.
        !self.receipts.is_empty() && self.phase == Phase::Closed
            || self.phase == Phase::Connected && (self.paused.is_some() || self.alarm.holds_back())
    }

    /// The broker is shutting down: tell the client why, then close.
    fn force_close(&mut self) {
        self.close_forced("broker shutdown");
    }

    fn open_vhost(&self) -> Option<&rosetta_core::VHost> {
        self.vhost.as_deref()
    }

    fn evicted(&mut self, why: rosetta_core::front_end::Eviction) {
        self.close_forced(match why {
            rosetta_core::front_end::Eviction::VHostDeleted => "virtual host deleted",
            rosetta_core::front_end::Eviction::UserDeleted => "user deleted",
        });
    }

    /// The socket is gone.
    fn shutdown(&mut self) {
        if self.phase != Phase::Closed {
            self.cleanup();
            self.phase = Phase::Closed;
        }
    }
}

fn required<'a>(frame: &'a Frame, header: &'static str) -> Result<&'a str, StompError> {
    frame.get(header).ok_or(StompError::MissingHeader {
        command: frame.command.as_str(),
        header,
    })
}
