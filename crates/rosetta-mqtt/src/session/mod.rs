//! One MQTT connection's protocol state, without I/O.
//!
//! The server's connection driver works it through [`rosetta_core::front_end::Session`]: bytes
//! in, deliveries from the core, durability progress, and whatever output it has. The state
//! sits behind a mutex that the
//! broker's registry of client ids also holds, so that a newer connection with the same client
//! id can end this one's session attachment at once, from its own task, before it resumes the
//! session (MQTT 5.0 §3.1.4, takeover); nothing else contends for it.

mod connect;
mod inbound;
mod outbound;
mod outbox;
mod subscribe;

pub use connect::ANONYMOUS;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqtt_proto::v5::{Disconnect, DisconnectProperties, DisconnectReasonCode, Packet};
use mqtt_proto::{Protocol, QoS, TopicName};
use parking_lot::Mutex;
use rosetta_core::durable::Held;
use rosetta_core::front_end::ledger::{Batch, Ledger};
use rosetta_core::front_end::{self, AlarmPause, Flow, Heartbeats};
use rosetta_core::store::Epoch;
use rosetta_core::{CloseReason, ConnectionId, Consumer, Credit, Grant, Outbound, Queue};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::codec;
use crate::error::MqttError;
use crate::message::Will;
use crate::persist::Subscription;
use crate::state::MqttState;
use outbound::OutFlight;
use outbox::Outbox;

/// A session's state as the registry shares it.
pub(crate) type Shared = Arc<Mutex<Inner>>;

/// How a connection ended, which decides what happens to its will and its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// DISCONNECT with reason 0x00: the will is discarded ([MQTT-3.1.2-10]).
    Normal,
    /// DISCONNECT with reason 0x04, a protocol error, or a lost socket: the will is sent.
    WithWill,
    /// A newer connection took the client id; the session lives on there.
    TakenOver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingConnect,
    Connected,
    /// Nothing more is read; the connection closes once output is written.
    Closed,
}

pub(crate) struct Inner {
    state: Arc<MqttState>,
    conn_id: ConnectionId,
    peer: SocketAddr,
    /// The user the connection's verified TLS client certificate names, when `[mqtt]
    /// ssl_cert_login` lets it log in: a CONNECT without credentials logs in as it.
    peer_identity: Option<String>,
    /// Created on the first subscription or takeover.
    outbox: Outbox,
    phase: Phase,
    protocol: Protocol,
    client_id: String,
    user: Option<String>,
    /// Seconds; 0 = no keep-alive.
    keep_alive: u16,
    /// Session Expiry Interval in seconds (3.x: 0 for a clean session, never for a persistent
    /// one).
    expiry: u32,
    /// The session's queue is durable (it outlives connections).
    durable_queue: bool,
    /// Publishes carry the client id so No Local subscriptions can skip them.
    stamp_client_id: bool,
    subscriptions: BTreeMap<String, Subscription>,
    /// Consumers by queue name: the session's queue and one per shared subscription.
    consumers: HashMap<String, (Arc<Queue>, Arc<Consumer>)>,
    /// The window of unacknowledged deliveries across the session's consumers.
    credit: Arc<Credit>,
    next_pid: u16,
    /// QoS 1 and 2 PUBLISHes sent and not completed, by packet id, with the queue entries
    /// they settle.
    out_flight: Ledger<u16, OutFlight>,
    /// Packet ids of QoS 1 and 2 messages sent before a reconnect and not yet acknowledged or
    /// received by the client, by (queue, entry): they go out again with the same id
    /// ([MQTT-4.4.0-1]).
    resend: HashMap<(String, u64), u16>,
    /// QoS 2 packet ids received and awaiting PUBREL.
    qos2_in: HashSet<u16>,
    /// Acknowledgements waiting for the store, in the order they must be sent.
    acks: Held<Packet>,
    /// The epoch a CONNACK waits for while the session it confirms is on its way to disk.
    /// Nothing may reach the client before CONNACK ([MQTT-3.2.0-1]), so until the durable
    /// point passes it the whole output waits.
    output_held_until: Option<Epoch>,
    alias_in: HashMap<u16, String>,
    alias_out: HashMap<String, u16>,
    /// The topic name of the last PUBLISH sent, reused while the topic stays the same.
    last_topic: Option<TopicName>,
    /// The buffer each delivery's topic is written into, kept for the next one.
    topic_buffer: String,
    client_alias_max: u16,
    client_max_packet: u32,
    /// Request Problem Information: reason strings may be sent ([MQTT-3.1.2-29]).
    problem_info: bool,
    /// Boxed: most clients set no will, and inline it would be a quarter of every session.
    will: Option<Box<Will>>,
    /// Starts empty and grows with what is sent: a new connection pays for no buffer.
    out: BytesMut,
    /// QoS 0 deliveries written: settled once the output has been flushed, which paces the
    /// queue by the socket.
    written: Batch,
    alarm: AlarmPause,
    ended: bool,
    /// Retained messages owed to new subscriptions, by topic: the QoS and subscription
    /// identifiers each goes out with. They are sent in `retained_order` as the client's
    /// window and the socket take them, like queue deliveries, not written out all at once.
    retained_due: HashMap<String, (QoS, Vec<u32>)>,
    retained_order: VecDeque<String>,
    /// A refused topic, filter or subscription was logged at warn level.
    refusal_logged: bool,
    /// What the user may do in MQTT's virtual host, from CONNECT on.
    grant: Option<Grant>,
}

/// The packet type of PUBLISH in a fixed header's high nibble ([MQTT-2.1.2]).
const PUBLISH_TYPE: u8 = 3;

/// The MQTT session the connection driver works with.
pub struct Session {
    inner: Shared,
    /// A copy of the authenticated user, readable without the lock.
    user: Option<String>,
    keep_alive: u16,
}

impl Session {
    /// Creates a session; its outbox comes later, when a subscription or a takeover needs one.
    pub fn new(state: Arc<MqttState>, peer: SocketAddr) -> Self {
        let conn_id = state.broker.new_connection_id();
        let inner = Inner {
            conn_id,
            peer,
            peer_identity: None,
            outbox: Outbox::default(),
            phase: Phase::AwaitingConnect,
            protocol: Protocol::V311,
            client_id: String::new(),
            user: None,
            keep_alive: 0,
            expiry: 0,
            durable_queue: false,
            stamp_client_id: false,
            subscriptions: BTreeMap::new(),
            consumers: HashMap::new(),
            credit: Credit::new(u32::from(state.config.max_inflight)),
            next_pid: 1,
            out_flight: Ledger::default(),
            resend: HashMap::new(),
            qos2_in: HashSet::new(),
            acks: Held::default(),
            output_held_until: None,
            alias_in: HashMap::new(),
            alias_out: HashMap::new(),
            last_topic: None,
            topic_buffer: String::new(),
            client_alias_max: 0,
            client_max_packet: u32::MAX,
            problem_info: true,
            will: None,
            out: BytesMut::new(),
            written: Batch::default(),
            alarm: AlarmPause::default(),
            ended: false,
            retained_due: HashMap::new(),
            retained_order: VecDeque::new(),
            refusal_logged: false,
            grant: None,
            state,
        };
        Session {
            inner: Arc::new(Mutex::new(inner)),
            user: None,
            keep_alive: 0,
        }
    }

    /// The user the connection's verified TLS client certificate names, given only when
    /// certificate login is on (`[mqtt] ssl_cert_login`): a CONNECT without user name and
    /// password then logs in as it.
    pub fn with_peer_identity(self, identity: Option<String>) -> Self {
        self.inner.lock().peer_identity = identity;
        self
    }
}

impl front_end::Session for Session {
    const PROTOCOL: &'static str = "mqtt";
    const ORDERS_INPUT: bool = true;

    fn input_effects(&self, input: &[u8]) -> front_end::InputEffects {
        let effects = codec::routing_effects(input);
        front_end::InputEffects {
            publishes: effects.publishes,
            changes_routing: effects.subscribes,
        }
    }

    /// Handles every complete packet in `input`.
    fn handle_input(&mut self, input: &mut BytesMut) -> Flow {
        let me = self.inner.clone();
        let mut inner = self.inner.lock();
        let keep = inner.handle_input(input, &me);
        if self.user.is_none() {
            self.user.clone_from(&inner.user);
        }
        self.keep_alive = inner.keep_alive;
        if keep {
            Flow::Continue
        } else {
            Flow::Close
        }
    }

    fn handle_outbound(&mut self, item: Outbound) {
        self.inner.lock().handle_outbound(item);
    }

    /// Whether a reply (an acknowledgement, or CONNACK and everything behind it) waits for
    /// the store's durable point.
    fn has_pending_durability(&self) -> bool {
        let inner = self.inner.lock();
        !inner.acks.is_empty() || inner.output_held_until.is_some()
    }

    /// The store's durable epoch advanced: send the replies it covers.
    fn on_durable(&mut self) {
        self.inner.lock().release_durable();
    }

    fn take_output(&mut self) -> Option<Bytes> {
        let mut inner = self.inner.lock();
        if inner.output_held_until.is_some() {
            return None;
        }
        inner.send_retained();
        (!inner.out.is_empty()).then(|| inner.out.split().freeze())
    }

    /// Owed retained messages can go out now: the driver asks for output again, without
    /// waiting for the socket or the outbox, once the last batch was written.
    fn output_ready(&self) -> bool {
        self.inner.lock().retained_ready()
    }

    /// After output was written: QoS 0 deliveries are settled, so their queues deliver more.
    /// Output held behind CONNACK was not written, so its deliveries stay unsettled.
    fn after_flush(&mut self) {
        let mut inner = self.inner.lock();
        if inner.output_held_until.is_some() {
            return;
        }
        let written = std::mem::take(&mut inner.written);
        drop(inner);
        written.finish();
    }

    /// [MQTT-3.1.2-22]: one and a half keep-alive periods without a packet close the
    /// connection. The server never sends pings; PINGRESP answers the client's.
    fn heartbeats(&self) -> Heartbeats {
        if self.keep_alive == 0 {
            return Heartbeats::default();
        }
        Heartbeats {
            send_after: None,
            expect_within: Some(Duration::from_secs(u64::from(self.keep_alive)) * 3 / 2),
        }
    }

    fn send_heartbeat(&mut self) {}

    fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    fn is_closing(&self) -> bool {
        self.inner.lock().phase == Phase::Closed
    }

    fn set_alarm(&mut self, on: bool) {
        self.inner.lock().alarm.set_alarm(on);
    }

    /// Publishers stop being read while a resource alarm is on; TCP pushes back on them.
    fn reading_paused(&self) -> bool {
        let inner = self.inner.lock();
        inner.alarm.holds_back() && inner.phase == Phase::Connected
    }

    /// The broker is shutting down: 5.0 clients are told (reason 0x8B).
    fn force_close(&mut self) {
        self.inner
            .lock()
            .close(DisconnectReasonCode::ServerShuttingDown, "broker shutdown");
    }

    /// An operator deleted the user or its virtual host: 5.0 clients are told (reason 0x98,
    /// administrative action).
    fn evicted(&mut self, why: rosetta_core::front_end::Eviction) {
        self.inner
            .lock()
            .close(DisconnectReasonCode::AdministrativeAction, why.reason());
    }

    /// The socket is gone: requeue what the client did not acknowledge, publish the will unless
    /// the client said goodbye, and keep or end the session by its expiry.
    fn shutdown(&mut self) {
        let mut inner = self.inner.lock();
        inner.end(End::WithWill);
        inner.phase = Phase::Closed;
    }

    /// The receiver of the session's outbox, once a subscription or a takeover created it;
    /// until then `waker` is woken when it is.
    fn take_outbox(&mut self, waker: &Waker) -> Option<UnboundedReceiver<Outbound>> {
        self.inner.lock().outbox.take_receiver(waker)
    }
}

impl Inner {
    /// Subscriptions the session holds, for `$SYS/broker/subscriptions/count`.
    pub(crate) fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    fn send(&mut self, packet: &Packet) {
        if let Err(e) = codec::encode_into(packet, self.protocol, &mut self.out) {
            tracing::warn!(peer = %self.peer, error = %e, "cannot encode a packet");
        }
    }

    fn handle_input(&mut self, input: &mut BytesMut, me: &Shared) -> bool {
        loop {
            match self.phase {
                Phase::Closed => {
                    input.clear();
                    return false;
                }
                Phase::AwaitingConnect => {
                    match codec::decode_connect(input, self.state.config.max_packet_size) {
                        Ok(None) => return true,
                        Ok(Some((protocol, connect))) => {
                            self.protocol = protocol;
                            match connect {
                                Ok(c) => self.on_connect(c, me),
                                Err(e) => self.refuse_malformed_connect(&e),
                            }
                        }
                        Err(e) => self.refuse_unreadable_connect(&e),
                    }
                }
                Phase::Connected => {
                    // Under a resource alarm a PUBLISH stays unread, the first one too, and
                    // reading stops (as RabbitMQ blocks a connection on its first publish);
                    // a client that only subscribes keeps being read.
                    if self.alarm.is_on() && input.first().is_some_and(|b| b >> 4 == PUBLISH_TYPE) {
                        self.alarm.published();
                        if !self.acks.is_empty() {
                            self.release_durable();
                        }
                        return true;
                    }
                    match codec::decode(input, self.protocol, self.state.config.max_packet_size) {
                        Ok(None) => {
                            // Acknowledgements that needed no fsync go out with this batch.
                            if !self.acks.is_empty() {
                                self.release_durable();
                            }
                            return true;
                        }
                        Ok(Some(packet)) => {
                            if let Err(e) = self.handle_packet(packet) {
                                self.fail(&e);
                            }
                        }
                        Err(e) => self.fail(&e),
                    }
                }
            }
        }
    }

    fn handle_packet(&mut self, packet: Packet) -> Result<(), MqttError> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::Puback(p) => {
                self.on_puback(p.pid.value());
                Ok(())
            }
            Packet::Pubrec(p) => {
                self.on_pubrec(p.pid, p.reason_code);
                Ok(())
            }
            Packet::Pubrel(p) => {
                self.on_pubrel(p.pid);
                Ok(())
            }
            Packet::Pubcomp(p) => {
                self.on_pubcomp(p.pid.value());
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::Pingreq => {
                self.send(&Packet::Pingresp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            // [MQTT-3.1.0-2]: a second CONNECT is a protocol error.
            Packet::Connect(_) => Err(MqttError::Protocol("second CONNECT".into())),
            // Enhanced authentication is not offered, so AUTH never belongs (MQTT 5.0 §4.12).
            Packet::Auth(_) => Err(MqttError::Protocol(
                "AUTH without enhanced authentication".into(),
            )),
            Packet::Connack(_) | Packet::Suback(_) | Packet::Unsuback(_) | Packet::Pingresp => Err(
                MqttError::Protocol("server-to-client packet sent by a client".into()),
            ),
        }
    }

    /// A connection error: 5.0 clients get a DISCONNECT with the reason (MQTT 5.0 §4.13), 3.x
    /// clients only the closed socket (MQTT 3.1.1 §4.8). The will is published.
    fn fail(&mut self, e: &MqttError) {
        tracing::warn!(peer = %self.peer, client_id = %self.client_id, error = %e, "closing mqtt connection");
        self.close(e.disconnect_reason(), &e.to_string());
        self.end(End::WithWill);
    }

    /// Logs a refusal that leaves the connection open: the first at warn level, the rest at
    /// debug, so a client that repeats it (or sends 50,000 filters) cannot flood the log.
    fn log_refusal(&mut self, what: &str, why: &str) {
        if self.refusal_logged {
            tracing::debug!(peer = %self.peer, client_id = %self.client_id, why, "{what}");
        } else {
            self.refusal_logged = true;
            tracing::warn!(peer = %self.peer, client_id = %self.client_id, why, "{what} (further refusals on this connection are logged at debug level)");
        }
    }

    /// Sends DISCONNECT (5.0 only) and stops reading.
    fn close(&mut self, reason: DisconnectReasonCode, text: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        if self.protocol == Protocol::V500 && self.phase == Phase::Connected {
            let properties = DisconnectProperties {
                reason_string: self.problem_info.then(|| text.into()),
                ..DisconnectProperties::default()
            };
            self.send(&Packet::Disconnect(Disconnect {
                reason_code: reason,
                properties,
            }));
        }
        self.phase = Phase::Closed;
    }

    fn handle_outbound(&mut self, item: Outbound) {
        match item {
            Outbound::Deliver(d) => self.deliver(d),
            Outbound::Cancelled { consumer_tag, .. } => {
                // A queue was deleted under us (by an operator): forget its consumer; a later
                // SUBSCRIBE declares the queue again.
                self.consumers.retain(|_, (_, c)| c.tag != consumer_tag);
            }
            Outbound::Close(CloseReason::TakenOver) => {
                tracing::info!(peer = %self.peer, client_id = %self.client_id, "mqtt session taken over by a new connection");
                self.close(DisconnectReasonCode::SessionTakenOver, "session taken over");
            }
        }
    }

    /// Sends, in order, the acknowledgements whose store writes are durable, and lets the
    /// output go once the CONNACK it starts with is.
    fn release_durable(&mut self) {
        let durable = self.state.store().durable_epoch();
        while let Some(packet) = self.acks.pop_durable(durable) {
            self.send(&packet);
        }
        if self.output_held_until.is_some_and(|epoch| epoch <= durable) {
            self.output_held_until = None;
        }
    }
}
