//! Tells a connection's transport that its client has logged in, for transports that must
//! hold less for a stranger than for a user: a WebSocket assembles whole messages before the
//! session sees a byte, so it accepts only small ones until the login ([`crate::websocket`]).
//!
//! The session is wrapped ([`Watched`]) rather than the driver or the protocol front-ends
//! changed, so the front-ends stay unaware of what carries their bytes. The wrapper looks after
//! each turn of the driver's loop ([`Session::after_flush`]), which every path to a login (the
//! input, a reply waiting for the store) ends with before the socket is read again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Waker;

use bytes::{Bytes, BytesMut};
use rosetta_core::front_end::{Eviction, Flow, Heartbeats, InputEffects, Session};
use rosetta_core::{Outbound, VHost};
use tokio::sync::mpsc::UnboundedReceiver;

/// Set once the connection's session has a user; read by the transport.
#[derive(Clone, Default)]
pub(crate) struct LoginSignal(Arc<AtomicBool>);

impl LoginSignal {
    pub fn is_set(&self) -> bool {
        // Written and read by the connection's own task: no other memory depends on it.
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A session that sets its [`LoginSignal`] when its user is set; without one (plain TCP and
/// TLS), a pass-through.
pub(crate) struct Watched<S> {
    session: S,
    /// Taken once set, so a logged-in connection does no more than look at an `Option`.
    signal: Option<LoginSignal>,
}

impl<S: Session> Watched<S> {
    pub fn new(session: S, signal: Option<LoginSignal>) -> Watched<S> {
        Watched { session, signal }
    }
}

impl<S: Session> Session for Watched<S> {
    const PROTOCOL: &'static str = S::PROTOCOL;
    const ORDERS_INPUT: bool = S::ORDERS_INPUT;

    fn input_effects(&self, input: &[u8]) -> InputEffects {
        self.session.input_effects(input)
    }

    fn handle_input(&mut self, input: &mut BytesMut) -> Flow {
        self.session.handle_input(input)
    }

    fn handle_outbound(&mut self, item: Outbound) {
        self.session.handle_outbound(item)
    }

    fn has_pending_durability(&self) -> bool {
        self.session.has_pending_durability()
    }

    fn on_durable(&mut self) {
        self.session.on_durable()
    }

    fn take_output(&mut self) -> Option<Bytes> {
        self.session.take_output()
    }

    fn after_flush(&mut self) {
        self.session.after_flush();
        if self.signal.is_some() && self.session.user().is_some() {
            if let Some(signal) = self.signal.take() {
                signal.set();
            }
        }
    }

    fn output_ready(&self) -> bool {
        self.session.output_ready()
    }

    fn heartbeats(&self) -> Heartbeats {
        self.session.heartbeats()
    }

    fn send_heartbeat(&mut self) {
        self.session.send_heartbeat()
    }

    fn user(&self) -> Option<&str> {
        self.session.user()
    }

    fn channel_count(&self) -> usize {
        self.session.channel_count()
    }

    fn is_closing(&self) -> bool {
        self.session.is_closing()
    }

    fn is_finished(&self) -> bool {
        self.session.is_finished()
    }

    fn set_alarm(&mut self, on: bool) {
        self.session.set_alarm(on)
    }

    fn reading_paused(&self) -> bool {
        self.session.reading_paused()
    }

    fn force_close(&mut self) {
        self.session.force_close()
    }

    fn open_vhost(&self) -> Option<&VHost> {
        self.session.open_vhost()
    }

    fn evicted(&mut self, why: Eviction) {
        self.session.evicted(why)
    }

    fn shutdown(&mut self) {
        self.session.shutdown()
    }

    fn take_outbox(&mut self, waker: &Waker) -> Option<UnboundedReceiver<Outbound>> {
        self.session.take_outbox(waker)
    }
}
