//! One AMQP 0-9-1 connection's protocol state, without I/O.
//!
//! The server's connection driver works it through [`rosetta_core::front_end::Session`]: bytes
//! in, deliveries from the core, durability progress, and whatever output it has. Everything
//! the protocol decides (which frame answers which, reply codes, confirms, redelivery on close,
//! heartbeat timing) is decided here.

mod channel;
mod channels;
mod content;
mod exception;
mod handshake;
mod held;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{channel as chan, connection, AMQPClass};
use bytes::{Bytes, BytesMut};
use rosetta_core::front_end::ledger::{give_back, AutoAck};
use rosetta_core::front_end::{self, AlarmPause, Heartbeats, Session as _};
use rosetta_core::{Broker, ConnectionId, Directory, Grant, Outbound, VHost};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::codec::{self, ProtocolHeader};
use channel::Channel;
use channels::Channels;
pub use exception::Exception;
use exception::MethodIds;

/// Limits and defaults the server configures.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest frame the server accepts and proposes in `connection.tune`.
    pub frame_max: u32,
    pub channel_max: u16,
    /// Heartbeat interval proposed, in seconds (0 disables).
    pub heartbeat: u16,
    /// Largest message body accepted, in bytes.
    pub max_message_size: u64,
    /// Consumers one channel may hold; 0 = no limit.
    pub max_consumers_per_channel: u32,
    /// Publishes and acknowledgements one open transaction may hold; 0 = no limit.
    pub max_transaction_frames: u32,
    /// Message body bytes one open transaction may hold; 0 = no limit.
    pub max_transaction_bytes: u64,
}

pub use rosetta_core::front_end::Flow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingHeader,
    AwaitingStartOk,
    AwaitingTuneOk,
    AwaitingOpen,
    Open,
    /// We sent `connection.close` and wait for `close-ok`, ignoring everything else
    /// (AMQP 0-9-1 §4.2.3 / connection.close).
    Closing,
    Closed,
}

pub struct Session {
    broker: Arc<Broker>,
    users: Arc<Directory>,
    config: SessionConfig,
    conn_id: ConnectionId,
    peer: SocketAddr,
    /// The user the connection's verified TLS client certificate names, which `EXTERNAL` logs
    /// in as; `None` on a plain connection or without a certificate.
    peer_identity: Option<String>,
    phase: Phase,
    user: String,
    vhost: Option<Arc<VHost>>,
    /// What the user may do in the virtual host, from `connection.open` on.
    grant: Option<Grant>,
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    /// Client capabilities from `connection.start-ok`.
    cancel_notify: bool,
    blocked_notify: bool,
    /// A memory or disk alarm, and whether this connection has published.
    alarm: AlarmPause,
    /// We told the client `connection.blocked` and have not unblocked it yet.
    blocked: bool,
    channels: Channels,
    outbox: UnboundedSender<Outbound>,
    out: BytesMut,
    /// Auto-ack deliveries written: their queues dispatch again once the output is flushed.
    auto_ack: AutoAck,
    /// A delivery AMQP cannot carry has been reported on this connection; later ones are
    /// logged at debug so one misbehaving producer cannot flood the log.
    undeliverable_reported: bool,
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
            frame_max: config.frame_max,
            // 0 in connection.tune means "no limit": the highest channel number there is.
            channel_max: match config.channel_max {
                0 => u16::MAX,
                n => n,
            },
            heartbeat: config.heartbeat,
            config,
            conn_id,
            peer,
            peer_identity: None,
            phase: Phase::AwaitingHeader,
            user: String::new(),
            vhost: None,
            grant: None,
            cancel_notify: false,
            blocked_notify: false,
            alarm: AlarmPause::default(),
            blocked: false,
            channels: Channels::default(),
            outbox: tx,
            out: BytesMut::with_capacity(512),
            auto_ack: AutoAck::default(),
            undeliverable_reported: false,
        };
        (session, rx)
    }

    /// The user the connection's verified TLS client certificate names (computed by whoever
    /// ran the TLS handshake): `connection.start` then offers `EXTERNAL`, which logs in as it.
    pub fn with_peer_identity(mut self, identity: Option<String>) -> Self {
        self.peer_identity = identity;
        self
    }

    fn send(&mut self, channel: u16, method: AMQPClass) {
        codec::encode_frame(&AMQPFrame::Method(channel, method), &mut self.out);
    }

    fn handle_frame(&mut self, frame: AMQPFrame) -> Result<(), Exception> {
        match frame {
            AMQPFrame::Heartbeat
            | AMQPFrame::InvalidHeartbeat(_)
            | AMQPFrame::ProtocolHeader(_) => Ok(()),
            AMQPFrame::Method(0, AMQPClass::Connection(m)) => self.handle_connection_method(m),
            AMQPFrame::Method(_, _) | AMQPFrame::Header(..) | AMQPFrame::Body(..)
                if self.phase == Phase::Closing =>
            {
                Ok(())
            }
            AMQPFrame::Method(0, other) => Err(Exception::command_invalid(
                &other,
                "method not allowed on channel 0",
            )),
            AMQPFrame::Method(ch, AMQPClass::Connection(m)) => Err(Exception::channel_error(
                &AMQPClass::Connection(m),
                format!("connection method on channel {ch}"),
            )),
            frame if self.phase != Phase::Open => Err(Exception::new(
                504,
                format!(
                    "CHANNEL_ERROR - frame on channel {} before connection.open",
                    frame.channel_id()
                ),
                0,
                0,
            )),
            AMQPFrame::Method(ch, AMQPClass::Channel(m)) => self.handle_channel_method(ch, m),
            AMQPFrame::Method(ch, method) => {
                self.with_channel(ch, |s, c| c.handle_method(s, method))
            }
            AMQPFrame::Header(ch, header) => {
                self.with_channel(ch, |s, c| c.handle_header(s, header))
            }
            AMQPFrame::Body(ch, body) => self.with_channel(ch, |s, c| c.handle_body(s, body)),
        }
    }

    /// Runs `f` on an open channel. A channel exception closes just that channel (§1.4.2.2);
    /// a connection exception propagates.
    fn with_channel(
        &mut self,
        id: u16,
        f: impl FnOnce(&mut Ctx<'_>, &mut Channel) -> Result<(), Exception>,
    ) -> Result<(), Exception> {
        let peer = self.peer;
        let (mut ctx, channels) = self.parts();
        let Some(channel) = channels.get_mut(id) else {
            return Err(Exception::new(
                504,
                format!("CHANNEL_ERROR - expected 'channel.open' on channel {id}"),
                0,
                0,
            ));
        };
        if channel.is_closing() {
            return Ok(());
        }
        channel.begin_output(ctx.out);
        let result = match f(&mut ctx, channel) {
            Err(exc) if !exc.is_hard() => {
                tracing::debug!(peer = %peer, channel = id, code = exc.code, text = %exc.text, "channel error");
                channel.close();
                // Behind any held reply, like everything else the channel sends.
                ctx.send(
                    id,
                    AMQPClass::Channel(chan::AMQPMethod::Close(exc.channel_close())),
                );
                Ok(())
            }
            other => other,
        };
        channel.end_output(ctx.out);
        result
    }

    fn ctx(&mut self) -> Ctx<'_> {
        self.parts().0
    }

    /// What channel handlers may touch, and the channels, borrowed apart so that a handler
    /// works on its channel where it lies.
    fn parts(&mut self) -> (Ctx<'_>, &mut Channels) {
        let ctx = Ctx {
            broker: &self.broker,
            vhost: self.vhost.as_ref(),
            grant: self.grant.as_mut(),
            conn_id: self.conn_id,
            frame_max: self.frame_max,
            config: &self.config,
            cancel_notify: self.cancel_notify,
            outbox: &self.outbox,
            out: &mut self.out,
            alarm: &mut self.alarm,
            auto_ack: &mut self.auto_ack,
            undeliverable_reported: &mut self.undeliverable_reported,
        };
        (ctx, &mut self.channels)
    }

    fn handle_channel_method(
        &mut self,
        id: u16,
        method: chan::AMQPMethod,
    ) -> Result<(), Exception> {
        match method {
            chan::AMQPMethod::Open(_) => {
                // AMQP 0-9-1 connection.tune: usable channel numbers are 1..=channel-max, so
                // this also bounds how many channels are open. Past it RabbitMQ closes the
                // connection with 530 (a hard error), and so do we.
                if id > self.channel_max {
                    return Err(Exception::new(
                        530,
                        format!(
                            "NOT_ALLOWED - channel {id} is above the negotiated channel_max ({})",
                            self.channel_max
                        ),
                        20,
                        10,
                    ));
                }
                if self.channels.get(id).is_some() {
                    return Err(Exception::new(
                        504,
                        format!("CHANNEL_ERROR - channel {id} already open"),
                        20,
                        10,
                    ));
                }
                let vhost = self.ctx().vhost()?.clone();
                self.channels.insert(id, Channel::new(id, vhost));
                self.send(
                    id,
                    AMQPClass::Channel(chan::AMQPMethod::OpenOk(chan::OpenOk {})),
                );
                Ok(())
            }
            chan::AMQPMethod::Close(_) => {
                let close_ok = AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {}));
                let Some(mut c) = self.channels.remove(id) else {
                    self.send(id, close_ok);
                    return Ok(());
                };
                c.close_by_peer();
                // The replies the channel still holds answer earlier requests, so close-ok
                // goes out after them; the channel stays until it has.
                c.begin_output(&self.out);
                self.send(id, close_ok);
                c.end_output(&mut self.out);
                if !c.is_finished() {
                    self.channels.insert(id, c);
                }
                Ok(())
            }
            chan::AMQPMethod::CloseOk(_) => {
                // Our channel.close has been answered: the channel id is free again.
                if self.channels.get(id).is_some_and(Channel::is_closing) {
                    self.channels.remove(id);
                }
                Ok(())
            }
            other => self.with_channel(id, |s, c| c.handle_channel_method(s, other)),
        }
    }

    fn handle_connection_method(
        &mut self,
        method: connection::AMQPMethod,
    ) -> Result<(), Exception> {
        match (self.phase, method) {
            (Phase::AwaitingStartOk, connection::AMQPMethod::StartOk(m)) => self.on_start_ok(m),
            (Phase::AwaitingTuneOk, connection::AMQPMethod::TuneOk(m)) => self.on_tune_ok(m),
            (Phase::AwaitingOpen, connection::AMQPMethod::Open(m)) => self.on_open(m),
            (Phase::Open, connection::AMQPMethod::UpdateSecret(m)) => self.on_update_secret(m),
            (_, connection::AMQPMethod::Close(m)) => {
                tracing::debug!(peer = %self.peer, code = m.reply_code, text = %m.reply_text, "client closed connection");
                self.cleanup();
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                self.phase = Phase::Closed;
                Ok(())
            }
            (Phase::Closing, connection::AMQPMethod::CloseOk(_)) => {
                self.phase = Phase::Closed;
                Ok(())
            }
            (Phase::Closing, _) => Ok(()),
            // RabbitMQ's connection.blocked/unblocked are server-to-client only; a client
            // sending them is ignored rather than punished.
            (
                Phase::Open,
                connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_),
            ) => Ok(()),
            (_, m) => {
                let class = AMQPClass::Connection(m);
                Err(Exception::command_invalid(
                    &class,
                    "connection method not valid in this state",
                ))
            }
        }
    }

    /// Sends `connection.close` and waits for `close-ok`. Channels are torn down right away:
    /// after a connection exception nothing on this connection may proceed.
    fn close_connection(&mut self, exc: Exception) {
        if self.is_closing() {
            return;
        }
        tracing::warn!(peer = %self.peer, code = exc.code, text = %exc.text, "closing connection");
        self.cleanup();
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(exc.connection_close())),
        );
        self.phase = if self.phase == Phase::AwaitingStartOk || self.phase == Phase::AwaitingTuneOk
        {
            Phase::Closed
        } else {
            Phase::Closing
        };
    }

    /// The server closes the connection: AMQP 320 CONNECTION_FORCED.
    fn close_forced(&mut self, reason: &str) {
        self.close_connection(Exception::new(
            320,
            format!("CONNECTION_FORCED - {reason}"),
            0,
            0,
        ));
    }

    /// RabbitMQ's connection.blocked extension: tell capable clients why they are paused.
    fn update_blocked(&mut self) {
        let should = self.reading_paused();
        if should == self.blocked {
            return;
        }
        self.blocked = should;
        if !self.blocked_notify {
            return;
        }
        let method = if should {
            connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "low on memory or disk".into(),
            })
        } else {
            connection::AMQPMethod::Unblocked(connection::Unblocked {})
        };
        self.send(0, AMQPClass::Connection(method));
    }

    fn cleanup(&mut self) {
        for mut c in self.channels.drain() {
            c.close();
        }
        if self.vhost.is_some() {
            self.broker.connection_closed(self.conn_id);
        }
    }
}

impl front_end::Session for Session {
    const PROTOCOL: &'static str = "amqp";

    /// Decodes and handles every complete frame in `input`.
    fn handle_input(&mut self, input: &mut BytesMut) -> Flow {
        if self.phase == Phase::AwaitingHeader {
            match codec::decode_header(input) {
                None => return Flow::Continue,
                Some(ProtocolHeader::Amqp091) => {
                    self.send_start();
                    self.phase = Phase::AwaitingStartOk;
                }
                Some(ProtocolHeader::Unsupported(got)) => {
                    // AMQP 0-9-1 §4.2.2: answer with the header we support, then close.
                    tracing::warn!(peer = %self.peer, header = ?got, "unsupported protocol header");
                    self.out.extend_from_slice(&codec::PROTOCOL_HEADER);
                    self.phase = Phase::Closed;
                    return Flow::Close;
                }
            }
        }
        loop {
            if self.phase == Phase::Closed {
                return Flow::Close;
            }
            // A publisher paused by an alarm stops here, its next frames left in `input`, as
            // RabbitMQ stops reading a blocked connection right after the `basic.publish`
            // frame: nothing more of the publish is taken until the alarm clears.
            if self.reading_paused() {
                self.update_blocked();
                return Flow::Continue;
            }
            let frame = match codec::decode_frame(input, self.frame_max) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    // Confirms and replies for writes that needed no fsync (or whose fsync
                    // already happened) go out with this batch's other replies.
                    if self.has_pending_durability() {
                        self.on_durable();
                    }
                    return Flow::Continue;
                }
                Err(e) => {
                    tracing::warn!(peer = %self.peer, error = %e, "bad frame");
                    let (class_id, method_id) = e.failing_method();
                    self.close_connection(Exception::new(
                        e.reply_code(),
                        e.reply_text(),
                        class_id,
                        method_id,
                    ));
                    // Framing can no longer be trusted: do not wait for close-ok.
                    input.clear();
                    self.phase = Phase::Closed;
                    return Flow::Close;
                }
            };
            if let Err(exc) = self.handle_frame(frame) {
                self.close_connection(exc);
            }
            if self.alarm.is_on() && !self.blocked {
                self.update_blocked();
            }
        }
    }

    /// A delivery or notification from a queue.
    fn handle_outbound(&mut self, item: Outbound) {
        let channel_id = match &item {
            Outbound::Deliver(d) => channel::channel_of(&d.consumer.tag),
            Outbound::Cancelled { consumer_tag } => channel::channel_of(consumer_tag),
            Outbound::Close(reason) => {
                // AMQP has no client identity to take over; close as the broker would on shutdown.
                self.close_forced(reason.as_str());
                return;
            }
        };
        let (mut ctx, channels) = self.parts();
        let Some(channel) = channels.get_mut(channel_id) else {
            // The channel is gone; its cleanup requeued or will requeue what it held.
            if let Outbound::Deliver(d) = item {
                give_back(&d);
            }
            return;
        };
        channel.begin_output(ctx.out);
        channel.handle_outbound(&mut ctx, item);
        channel.end_output(ctx.out);
    }

    /// Whether some confirm or reply waits for the store.
    fn has_pending_durability(&self) -> bool {
        self.channels.iter().any(Channel::has_pending_durability)
    }

    /// The store's durable epoch advanced: send the held replies and confirms it covers.
    fn on_durable(&mut self) {
        let durable = self.broker.store().durable_epoch();
        let (mut ctx, channels) = self.parts();
        for c in channels.iter_mut() {
            c.release_held(ctx.out, durable);
            c.begin_output(ctx.out);
            c.release_confirms(&mut ctx, durable);
            c.end_output(ctx.out);
        }
        channels.retain(|c| !c.is_finished());
    }

    fn take_output(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// After output was written: queues whose auto-ack consumers regained credit deliver more.
    fn after_flush(&mut self) {
        self.auto_ack.flushed();
    }

    /// AMQP 0-9-1 §4.2.7: send at half the negotiated interval (as RabbitMQ does) and treat two
    /// missed intervals as a dead peer. Before the interval is negotiated there is none.
    fn heartbeats(&self) -> Heartbeats {
        let negotiated = matches!(self.phase, Phase::Open | Phase::AwaitingOpen);
        let hb = Duration::from_secs(u64::from(self.heartbeat));
        if !negotiated || hb.is_zero() {
            return Heartbeats::default();
        }
        Heartbeats {
            send_after: Some(hb / 2),
            expect_within: Some(hb * 2),
        }
    }

    fn send_heartbeat(&mut self) {
        codec::encode_frame(&AMQPFrame::Heartbeat, &mut self.out);
    }

    /// The authenticated user, once `connection.start-ok` was accepted.
    fn user(&self) -> Option<&str> {
        (!self.user.is_empty()).then_some(self.user.as_str())
    }

    fn channel_count(&self) -> usize {
        self.channels.len()
    }

    fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing | Phase::Closed)
    }

    /// A resource alarm went on or off.
    fn set_alarm(&mut self, on: bool) {
        self.alarm.set_alarm(on);
        self.update_blocked();
    }

    /// Whether the connection task should stop reading: publishers are held back while an
    /// alarm is on, which TCP turns into backpressure on the client.
    fn reading_paused(&self) -> bool {
        self.alarm.holds_back() && self.phase == Phase::Open
    }

    /// The broker is shutting down.
    fn force_close(&mut self) {
        self.close_forced("broker shutdown");
    }

    fn open_vhost(&self) -> Option<&rosetta_core::VHost> {
        self.vhost.as_deref()
    }

    /// RabbitMQ's words when a virtual host or user is deleted under its connections.
    fn evicted(&mut self, why: rosetta_core::front_end::Eviction) {
        self.close_forced(why.reason());
    }

    /// The socket is gone: requeue unacked messages, cancel consumers, drop exclusive queues.
    fn shutdown(&mut self) {
        self.cleanup();
        self.phase = Phase::Closed;
    }
}

/// What channel handlers may touch of the session, borrowed apart from the channel map.
pub(crate) struct Ctx<'a> {
    pub broker: &'a Arc<Broker>,
    pub vhost: Option<&'a Arc<VHost>>,
    pub grant: Option<&'a mut Grant>,
    pub conn_id: ConnectionId,
    pub frame_max: u32,
    pub config: &'a SessionConfig,
    pub cancel_notify: bool,
    pub outbox: &'a UnboundedSender<Outbound>,
    pub out: &'a mut BytesMut,
    /// Told by `basic.publish` itself, so an alarm pauses the connection at its first publish.
    pub alarm: &'a mut AlarmPause,
    pub auto_ack: &'a mut AutoAck,
    pub undeliverable_reported: &'a mut bool,
}

impl Ctx<'_> {
    pub fn send(&mut self, channel: u16, method: AMQPClass) {
        codec::encode_frame(&AMQPFrame::Method(channel, method), self.out);
    }

    pub fn vhost(&self) -> Result<&Arc<VHost>, Exception> {
        self.vhost
            .ok_or_else(|| Exception::new(504, "CHANNEL_ERROR - connection not open".into(), 0, 0))
    }

    /// Runs the user's permission checks for `method`; a refusal closes the channel with 403
    /// ACCESS_REFUSED and RabbitMQ's text.
    pub fn permit(
        &mut self,
        method: &impl MethodIds,
        check: impl FnOnce(&mut Grant) -> Result<(), rosetta_core::CoreError>,
    ) -> Result<(), Exception> {
        let grant = self.grant.as_deref_mut().ok_or_else(|| {
            Exception::new(504, "CHANNEL_ERROR - connection not open".into(), 0, 0)
        })?;
        check(grant).map_err(|e| Exception::from_core(&e, method))
    }
}
