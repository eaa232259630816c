//! One STOMP connection's protocol state, without I/O.
//!
//! The server's connection task feeds it bytes ([`Session::handle_input`]), deliveries from the
//! core ([`Session::handle_outbound`]) and durability progress ([`Session::on_durable`]), and
//! writes out whatever [`Session::take_output`] returns. Everything STOMP decides (version and
//! heart-beat negotiation, receipts, acknowledgement modes, transactions, ERROR then close) is
//! decided here.

mod connect;
mod send;
mod subscribe;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rosetta_core::store::Epoch;
use rosetta_core::{Broker, ConnectionId, Outbound, Queue, Users, VHost};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::codec::{self, Limits};
use crate::error::StompError;
use crate::frame::{Command, Frame, Version};
use subscribe::{Pending, Subscription};

/// Limits and defaults the server configures.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub limits: Limits,
    /// The heart-beat interval in ms the server offers in both directions (0 = none).
    pub heartbeat_ms: u32,
    /// The virtual host for clients whose `host` header names none that exists.
    pub default_vhost: String,
}

/// What the connection task should do after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Write the pending output, then close the socket.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingConnect,
    Connected,
    Closed,
}

pub struct Session {
    broker: Arc<Broker>,
    users: Arc<Users>,
    config: SessionConfig,
    conn_id: ConnectionId,
    peer: SocketAddr,
    phase: Phase,
    /// Until CONNECT is negotiated, frames are read as 1.2 (CONNECT is never escaped anyway).
    version: Version,
    user: String,
    vhost: Option<Arc<VHost>>,
    /// The `client-id` header of CONNECT, which names durable subscriptions' queues.
    client_id: Option<String>,
    /// Negotiated heart-beats: (server sends every, server expects within), in ms.
    heartbeat: (u64, u64),
    subscriptions: HashMap<String, Subscription>,
    /// Deliveries awaiting ACK or NACK, by the message id the MESSAGE frame carried.
    unacked: BTreeMap<u64, Pending>,
    next_message_id: u64,
    /// Open transactions (STOMP 1.2 BEGIN): frames held back until COMMIT.
    transactions: HashMap<String, Vec<Frame>>,
    /// RECEIPTs in the order their frames arrived, each with the store epoch it waits for.
    receipts: VecDeque<(Epoch, String)>,
    /// `/temp-queue/` names and the private queues behind them.
    temp_queues: HashMap<String, String>,
    /// Whether this connection has sent; only publishers are paused by a resource alarm.
    published: bool,
    alarm: bool,
    outbox: UnboundedSender<Outbound>,
    out: BytesMut,
    /// Decoder resumption point (see [`codec::decode_from`]).
    searched: usize,
    /// Queues whose auto-ack consumers got credit back while writing; they dispatch again once
    /// the output has been flushed.
    to_dispatch: Vec<Arc<Queue>>,
}

impl Session {
    /// Creates a session and the receiver the connection task must drain into
    /// [`Session::handle_outbound`].
    pub fn new(
        broker: Arc<Broker>,
        users: Arc<Users>,
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
            phase: Phase::AwaitingConnect,
            version: Version::V1_2,
            user: String::new(),
            vhost: None,
            client_id: None,
            heartbeat: (0, 0),
            subscriptions: HashMap::new(),
            unacked: BTreeMap::new(),
            next_message_id: 1,
            transactions: HashMap::new(),
            receipts: VecDeque::new(),
            temp_queues: HashMap::new(),
            published: false,
            alarm: false,
            outbox: tx,
            out: BytesMut::with_capacity(512),
            searched: 0,
            to_dispatch: Vec::new(),
        };
        (session, rx)
    }

    /// The authenticated user; empty before CONNECTED.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Negotiated heart-beats: how often to send one, and how long the client may stay silent
    /// (STOMP 1.2 Heart-beating). `None` where that direction is off.
    pub fn heartbeats(&self) -> (Option<Duration>, Option<Duration>) {
        let on = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        (on(self.heartbeat.0), on(self.heartbeat.1))
    }

    pub fn send_heartbeat(&mut self) {
        codec::encode_heartbeat(&mut self.out);
    }

    pub fn is_closing(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    pub fn take_output(&mut self) -> Bytes {
        self.out.split().freeze()
    }

    fn write(&mut self, frame: &Frame) {
        codec::encode(frame, self.version, &mut self.out);
    }

    /// Decodes and handles every complete frame in `input`.
    pub fn handle_input(&mut self, input: &mut BytesMut) -> Flow {
        loop {
            if self.phase == Phase::Closed {
                input.clear();
                return Flow::Close;
            }
            let frame = match codec::decode_from(
                input,
                &self.config.limits,
                self.version,
                &mut self.searched,
            ) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    if !self.receipts.is_empty() {
                        self.on_durable();
                    }
                    return Flow::Continue;
                }
                Err(e) => {
                    input.clear();
                    self.fail(&e, None);
                    return Flow::Close;
                }
            };
            match self.handle_frame(&frame) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) => {
                    input.clear();
                    return Flow::Close;
                }
                Err(e) => {
                    input.clear();
                    self.fail(&e, Some(&frame));
                    return Flow::Close;
                }
            }
        }
    }

    fn handle_frame(&mut self, frame: &Frame) -> Result<Flow, StompError> {
        let command = frame.command;
        if self.phase == Phase::AwaitingConnect {
            return match command {
                Command::Connect | Command::Stomp => self.connect(frame).map(|()| Flow::Continue),
                other => Err(StompError::Unexpected(format!(
                    "expected CONNECT or STOMP, got {}",
                    other.as_str()
                ))),
            };
        }
        let epoch = match command {
            Command::Connect | Command::Stomp => {
                return Err(StompError::Unexpected("already connected".into()))
            }
            Command::Connected | Command::Message | Command::Receipt | Command::Error => {
                return Err(StompError::Unexpected(format!(
                    "{} is a server frame",
                    command.as_str()
                )))
            }
            Command::Disconnect => return Ok(self.disconnect(frame)),
            Command::Send => self.send_or_hold(frame)?,
            Command::Subscribe => self.subscribe(frame).map(|()| None)?,
            Command::Unsubscribe => self.unsubscribe(frame).map(|()| None)?,
            Command::Ack | Command::Nack => self.ack_or_hold(frame).map(|()| None)?,
            Command::Begin => self.begin(frame).map(|()| None)?,
            Command::Commit => self.commit(frame)?,
            Command::Abort => self.abort(frame).map(|()| None)?,
        };
        if let Some(receipt) = frame.get("receipt") {
            self.receipt(epoch.unwrap_or(0), receipt.to_owned());
        }
        Ok(Flow::Continue)
    }

    /// Queues a RECEIPT behind any still waiting for the store (STOMP 1.2 RECEIPT), and sends
    /// every receipt that is ready.
    fn receipt(&mut self, epoch: Epoch, id: String) {
        self.receipts.push_back((epoch, id));
        self.on_durable();
    }

    /// Whether some RECEIPT waits for the store.
    pub fn has_pending_durability(&self) -> bool {
        !self.receipts.is_empty()
    }

    /// The store's durable epoch advanced: send the receipts it covers, in order.
    pub fn on_durable(&mut self) {
        let durable = self.broker.store().durable_epoch();
        while let Some((epoch, _)) = self.receipts.front() {
            if *epoch > durable {
                break;
            }
            if let Some((_, id)) = self.receipts.pop_front() {
                self.write(&Frame::new(Command::Receipt).header("receipt-id", id));
            }
        }
    }

    /// DISCONNECT: the receipt, if asked for, goes out once everything before it is durable
    /// (STOMP 1.2 Connecting: graceful disconnect), then the connection closes.
    fn disconnect(&mut self, frame: &Frame) -> Flow {
        if let Some(receipt) = frame.get("receipt") {
            let waiting = self.receipts.back().map_or(0, |(e, _)| *e);
            if waiting > self.broker.store().durable_epoch() {
                // Rare (a persistent SEND right before DISCONNECT): wait for the fsync here
                // rather than keep a closing connection around.
                if let Err(e) = self.broker.store().sync() {
                    tracing::warn!(peer = %self.peer, error = %e, "store sync before DISCONNECT receipt failed");
                }
            }
            self.receipt(0, receipt.to_owned());
        }
        tracing::debug!(peer = %self.peer, "client disconnected");
        self.cleanup();
        self.phase = Phase::Closed;
        Flow::Close
    }

    /// Sends ERROR and ends the session (STOMP 1.2 ERROR: "the server MUST then close the
    /// connection just after sending the ERROR frame").
    fn fail(&mut self, error: &StompError, frame: Option<&Frame>) {
        tracing::warn!(peer = %self.peer, user = %self.user, error = %error, "closing connection with ERROR");
        let mut detail = error.to_string();
        if let Some(f) = frame {
            detail.push_str(&format!(
                "\n\nThe offending frame was {}.",
                f.command.as_str()
            ));
        }
        let mut reply = Frame::new(Command::Error).header("message", error.summary());
        if let Some(receipt) = frame.and_then(|f| f.get("receipt")) {
            reply.push_header("receipt-id", receipt);
        }
        if *error == StompError::UnsupportedVersion {
            reply.push_header("version", "1.0,1.1,1.2");
        }
        reply.push_header("content-type", "text/plain");
        self.write(&codec::with_body(reply, Bytes::from(detail)));
        self.cleanup();
        self.phase = Phase::Closed;
    }

    /// The broker is shutting down: tell the client why, then close.
    pub fn force_close(&mut self, reason: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        let reply = Frame::new(Command::Error)
            .header("message", "Connection forced")
            .header("content-type", "text/plain");
        self.write(&codec::with_body(reply, Bytes::from(reason.to_owned())));
        self.cleanup();
        self.phase = Phase::Closed;
    }

    pub fn set_alarm(&mut self, on: bool) {
        self.alarm = on;
    }

    /// Publishers are held back while an alarm is on; STOMP has no way to say so, so TCP
    /// backpressure tells the client.
    pub fn reading_paused(&self) -> bool {
        self.alarm && self.published && self.phase == Phase::Connected
    }

    /// After output was written: queues whose auto-ack consumers regained credit deliver more.
    pub fn after_flush(&mut self) {
        for q in std::mem::take(&mut self.to_dispatch) {
            q.dispatch();
        }
    }

    fn vhost(&self) -> Result<Arc<VHost>, StompError> {
        self.vhost
            .clone()
            .ok_or_else(|| StompError::Unexpected("not connected".into()))
    }

    /// Ends every subscription and transaction and gives unacknowledged messages back to their
    /// queues, flagged redelivered; exclusive queues go with the connection.
    fn cleanup(&mut self) {
        self.transactions.clear();
        if let Some(vhost) = self.vhost.clone() {
            for (_, sub) in self.subscriptions.drain() {
                vhost.cancel(&sub.queue, &sub.consumer);
            }
            self.requeue_all();
            self.broker.connection_closed(self.conn_id);
        }
    }

    /// The socket is gone.
    pub fn shutdown(&mut self) {
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
