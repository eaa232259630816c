//! AMQP 0-9-1 sessions plugged into the connection driver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rosetta_amqp::session::{Flow, Session as AmqpSession};
use rosetta_core::Outbound;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::connection::{drive, Heartbeats, Session};
use crate::state::ServerState;

impl Session for AmqpSession {
    const PROTOCOL: &'static str = "amqp";

    fn handle_input(&mut self, input: &mut BytesMut) -> bool {
        AmqpSession::handle_input(self, input) == Flow::Continue
    }
    fn handle_outbound(&mut self, item: Outbound) {
        AmqpSession::handle_outbound(self, item);
    }
    fn has_pending_durability(&self) -> bool {
        AmqpSession::has_pending_durability(self)
    }
    fn on_durable(&mut self) {
        AmqpSession::on_durable(self);
    }
    fn take_output(&mut self) -> Option<Bytes> {
        self.has_output().then(|| AmqpSession::take_output(self))
    }
    fn after_flush(&mut self) {
        AmqpSession::after_flush(self);
    }
    fn heartbeats(&self) -> Heartbeats {
        // AMQP 0-9-1 §4.2.7: send at half the interval (as RabbitMQ does) and treat two
        // missed intervals as a dead peer.
        let hb = Duration::from_secs(u64::from(self.heartbeat()));
        if hb.is_zero() {
            return Heartbeats::default();
        }
        Heartbeats {
            send_after: Some(hb / 2),
            expect_within: Some(hb * 2),
        }
    }
    fn send_heartbeat(&mut self) {
        AmqpSession::send_heartbeat(self);
    }
    fn user(&self) -> Option<&str> {
        let user = AmqpSession::user(self);
        (!user.is_empty()).then_some(user)
    }
    fn channel_count(&self) -> usize {
        AmqpSession::channel_count(self)
    }
    fn is_closing(&self) -> bool {
        AmqpSession::is_closing(self)
    }
    fn set_alarm(&mut self, on: bool) {
        AmqpSession::set_alarm(self, on);
    }
    fn reading_paused(&self) -> bool {
        AmqpSession::reading_paused(self)
    }
    fn force_close(&mut self) {
        AmqpSession::force_close(self, "broker shutdown");
    }
    fn shutdown(&mut self) {
        AmqpSession::shutdown(self);
    }
}

pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<ServerState>,
    shutdown: watch::Receiver<bool>,
) {
    let (session, outbox) = AmqpSession::new(
        state.broker.clone(),
        state.users.clone(),
        state.amqp.clone(),
        peer,
    );
    drive(stream, peer, session, Some(outbox), state, shutdown).await;
}
