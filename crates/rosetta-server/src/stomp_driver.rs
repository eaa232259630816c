//! STOMP sessions plugged into the connection driver.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rosetta_core::Outbound;
use rosetta_stomp::session::{Flow, Session as StompSession};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::connection::{drive, Heartbeats, Session};
use crate::state::ServerState;

impl Session for StompSession {
    const PROTOCOL: &'static str = "stomp";

    fn handle_input(&mut self, input: &mut BytesMut) -> bool {
        StompSession::handle_input(self, input) == Flow::Continue
    }
    fn handle_outbound(&mut self, item: Outbound) {
        StompSession::handle_outbound(self, item);
    }
    fn has_pending_durability(&self) -> bool {
        StompSession::has_pending_durability(self)
    }
    fn on_durable(&mut self) {
        StompSession::on_durable(self);
    }
    fn take_output(&mut self) -> Option<Bytes> {
        self.has_output().then(|| StompSession::take_output(self))
    }
    fn after_flush(&mut self) {
        StompSession::after_flush(self);
    }
    fn heartbeats(&self) -> Heartbeats {
        // STOMP 1.2 Heart-beating: the receiver "SHOULD" allow for timing inaccuracies; a
        // client is declared dead after twice its negotiated interval of silence.
        let (send, expect) = StompSession::heartbeats(self);
        Heartbeats {
            send_after: send,
            expect_within: expect.map(|d| d * 2),
        }
    }
    fn send_heartbeat(&mut self) {
        StompSession::send_heartbeat(self);
    }
    fn user(&self) -> Option<&str> {
        let user = StompSession::user(self);
        (!user.is_empty()).then_some(user)
    }
    fn is_closing(&self) -> bool {
        StompSession::is_closing(self)
    }
    fn is_finished(&self) -> bool {
        StompSession::is_finished(self)
    }
    fn set_alarm(&mut self, on: bool) {
        StompSession::set_alarm(self, on);
    }
    fn reading_paused(&self) -> bool {
        StompSession::reading_paused(self)
    }
    fn force_close(&mut self) {
        StompSession::force_close(self, "broker shutdown");
    }
    fn shutdown(&mut self) {
        StompSession::shutdown(self);
    }
}

pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<ServerState>,
    shutdown: watch::Receiver<bool>,
) {
    let (session, outbox) = StompSession::new(
        state.broker.clone(),
        state.users.clone(),
        state.stomp.clone(),
        peer,
    );
    drive(stream, peer, session, Some(outbox), state, shutdown).await;
}
