//! What every protocol front-end offers the connection driver, and what the front-ends share.
//!
//! Each protocol crate's session implements [`Session`]: it turns bytes into core calls and core
//! events into bytes, and decides everything its protocol decides (heartbeats, goodbyes,
//! pausing publishers). The server's connection driver owns the socket, the timers and the
//! shutdown signal, and calls a session only through this trait, whatever its protocol.
//!
//! The bookkeeping of deliveries that every front-end keeps the same way is in [`ledger`].

pub mod ledger;

use std::task::Waker;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::consumer::Outbound;

/// What the connection should do after the session handled its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Write the pending output, then close the socket.
    Close,
}

/// Heartbeat timing a session negotiated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heartbeats {
    /// Send a heartbeat when nothing was written for this long.
    pub send_after: Option<Duration>,
    /// Close the connection when nothing was read for this long.
    pub expect_within: Option<Duration>,
}

/// Whether a resource alarm holds a connection back. RabbitMQ's rule: only a connection that has
/// published is paused, so one that only consumes keeps draining and acknowledging, which is
/// what frees memory and disk. Each protocol decides when the pause starts (AMQP and STOMP at
/// the first publish under the alarm, MQTT before reading a PUBLISH) and how it tells the client.
#[derive(Debug, Default, Clone, Copy)]
pub struct AlarmPause {
    alarm: bool,
    published: bool,
}

impl AlarmPause {
    /// A resource alarm went on or off.
    pub fn set_alarm(&mut self, on: bool) {
        self.alarm = on;
    }

    /// Whether a resource alarm is on.
    pub fn is_on(&self) -> bool {
        self.alarm
    }

    /// The connection published, or is about to.
    pub fn published(&mut self) {
        self.published = true;
    }

    /// Whether the connection's publishers must wait now.
    pub fn holds_back(&self) -> bool {
        self.alarm && self.published
    }
}

/// Why the broker closes a connection on an operator's request ([`Session::evicted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// The connection's virtual host was deleted.
    VHostDeleted,
    /// The connection's user was deleted.
    UserDeleted,
}

impl Eviction {
    /// RabbitMQ's words for it, as AMQP's CONNECTION_FORCED text carries them.
    pub fn reason(self) -> &'static str {
        match self {
            Eviction::VHostDeleted => "vhost deleted",
            Eviction::UserDeleted => "user deleted",
        }
    }
}

/// What a batch of a client's input does to routing, for the order in which the driver lets
/// connections' input take effect: a subscription read before another connection's publish is
/// in place before that publish is routed, as in a broker that reads its sockets one by one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputEffects {
    /// The input may publish, so it is routed only once routing changes read before it are in
    /// place.
    pub publishes: bool,
    /// The input changes routing (subscribes or unsubscribes), so input read after it waits
    /// until it is handled.
    pub changes_routing: bool,
}

/// One client connection's protocol state, as the connection driver sees it. Nothing here does
/// I/O: the driver reads and writes the socket and calls these.
pub trait Session {
    /// The protocol's name in logs and metric labels (`amqp`, `mqtt`, `stomp`).
    const PROTOCOL: &'static str;
    /// Whether the protocol's input is ordered across connections ([`Session::input_effects`]):
    /// MQTT's is, as Mosquitto's single thread orders it; the others are handled in parallel.
    const ORDERS_INPUT: bool = false;
    /// What the frames in `input` would do to routing, read cheaply (without decoding them);
    /// asked only of protocols that [order their input](Session::ORDERS_INPUT).
    fn input_effects(&self, _input: &[u8]) -> InputEffects {
        InputEffects::default()
    }
    /// Handles every complete frame in `input`, leaving an incomplete one there.
    fn handle_input(&mut self, input: &mut BytesMut) -> Flow;
    /// A delivery or notification from the core, through the session's outbox.
    fn handle_outbound(&mut self, item: Outbound);
    /// Whether some reply waits for the store's durable point.
    fn has_pending_durability(&self) -> bool;
    /// The store's durable epoch advanced: send the replies it covers.
    fn on_durable(&mut self);
    /// The bytes to write now, if any.
    fn take_output(&mut self) -> Option<Bytes>;
    /// The output taken was written to the socket.
    fn after_flush(&mut self);
    /// More output can be produced at once, without input (MQTT retained messages paced by
    /// the socket): the driver calls [`Session::take_output`] again after a write.
    fn output_ready(&self) -> bool {
        false
    }
    fn heartbeats(&self) -> Heartbeats;
    fn send_heartbeat(&mut self);
    /// The authenticated user, once the client has logged in (for the handshake timeout and
    /// the closing log line).
    fn user(&self) -> Option<&str>;
    /// Open channels, for the channel gauge; protocols without channels keep the default.
    fn channel_count(&self) -> usize {
        0
    }
    fn is_closing(&self) -> bool;
    /// The session ended while a reply still waited for the store (a STOMP DISCONNECT
    /// receipt) and that reply is now out: close once the output is written.
    fn is_finished(&self) -> bool {
        false
    }
    /// A resource alarm went on or off.
    fn set_alarm(&mut self, on: bool);
    /// Whether the driver should stop reading the socket (a publisher held back by an alarm).
    fn reading_paused(&self) -> bool;
    /// The broker is shutting down: say goodbye in the protocol's terms.
    fn force_close(&mut self);
    /// The virtual host the client works in, once it has one; the driver closes the connection
    /// when it is deleted ([`crate::VHost::is_deleted`]).
    fn open_vhost(&self) -> Option<&crate::VHost> {
        None
    }
    /// An operator took away what the connection stands on (its virtual host or its user was
    /// deleted): say goodbye as at shutdown, unless the protocol has better words for it.
    fn evicted(&mut self, _why: Eviction) {
        self.force_close();
    }
    /// The socket is gone: give back unacknowledged messages, drop transient state.
    fn shutdown(&mut self);
    /// For a session that creates its outbox only once it needs one (an idle MQTT client that
    /// subscribes to nothing never does): the receiver, once it exists. Until then the session
    /// keeps `waker` and wakes it when the outbox is created. Sessions that create their outbox
    /// up front hand the receiver to the driver when they are made instead.
    fn take_outbox(&mut self, _waker: &Waker) -> Option<UnboundedReceiver<Outbound>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::AlarmPause;

    #[test]
    fn an_alarm_holds_back_only_a_connection_that_published() {
        let mut pause = AlarmPause::default();
        pause.set_alarm(true);
        assert!(pause.is_on() && !pause.holds_back());
        pause.published();
        assert!(pause.holds_back());
        pause.set_alarm(false);
        assert!(!pause.holds_back());
    }
}
