//! The task that drives one client connection, whatever its protocol: socket bytes into the
//! session, deliveries and durability progress out of it, heartbeats, the resource alarm and
//! shutdown. Protocol rules live in the sessions; this loop only moves bytes and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rosetta_core::Outbound;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;

use crate::state::ServerState;

/// Outbox items handled per wake-up before output is written, so one busy queue cannot delay
/// a socket write indefinitely while still batching frames into few syscalls.
const OUTBOX_BATCH: usize = 512;
/// How long a client may take to finish its opening handshake (RabbitMQ: 10 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a session that is closing may wait for the client's goodbye.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// A new connection's input buffer; it grows by [`READ_CHUNK`] once traffic fills it.
const INITIAL_INPUT: usize = 512;
const READ_CHUNK: usize = 16 * 1024;
const TICK: Duration = Duration::from_millis(250);

/// Heartbeat timing a session negotiated.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Heartbeats {
    /// Send a heartbeat when nothing was written for this long.
    pub send_after: Option<Duration>,
    /// Close the connection when nothing was read for this long.
    pub expect_within: Option<Duration>,
}

/// What the driver needs from a protocol session.
pub(crate) trait Session {
    const PROTOCOL: &'static str;
    /// Handles every complete frame in `input`; false means "close after writing output".
    fn handle_input(&mut self, input: &mut BytesMut) -> bool;
    fn handle_outbound(&mut self, item: Outbound);
    fn has_pending_durability(&self) -> bool;
    fn on_durable(&mut self);
    fn take_output(&mut self) -> Option<Bytes>;
    fn after_flush(&mut self);
    fn heartbeats(&self) -> Heartbeats;
    fn send_heartbeat(&mut self);
    /// The client authenticated (for the handshake timeout and the closing log line).
    fn user(&self) -> Option<&str>;
    /// Open channels, for the channel gauge; protocols without channels keep the default.
    fn channel_count(&self) -> usize {
        0
    }
    fn is_closing(&self) -> bool;
    fn set_alarm(&mut self, on: bool);
    fn reading_paused(&self) -> bool;
    /// The broker is shutting down: say goodbye in the protocol's terms.
    fn force_close(&mut self);
    /// The socket is gone: give back unacknowledged messages, drop transient state.
    fn shutdown(&mut self);
}

pub(crate) async fn drive<S: Session>(
    stream: TcpStream,
    peer: SocketAddr,
    mut session: S,
    mut outbox: UnboundedReceiver<Outbound>,
    state: Arc<ServerState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let registration = state.connections.register(S::PROTOCOL, peer);
    let traffic = state.metrics.traffic(S::PROTOCOL);
    let (mut reader, mut writer) = stream.into_split();
    let mut durable = state.broker.store().subscribe_durable();
    let mut input = BytesMut::with_capacity(INITIAL_INPUT);
    let started = Instant::now();
    let mut last_read = Instant::now();
    let mut last_write = Instant::now();
    let mut closing_since: Option<Instant> = None;
    let mut ticker = tokio::time::interval(TICK);
    let mut alarm = state.alarm.clone();
    let mut alarm_live = true;
    session.set_alarm(*alarm.borrow_and_update());
    loop {
        // Room for a whole chunk once the connection is busy, without paying for it while it
        // idles (most MQTT devices send a packet a minute).
        if input.capacity() - input.len() < INITIAL_INPUT / 2 {
            input.reserve(READ_CHUNK);
        }
        let keep = tokio::select! {
            read = reader.read_buf(&mut input), if !session.reading_paused() => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    traffic.received.inc_by(n as u64);
                    last_read = Instant::now();
                    session.handle_input(&mut input)
                }
            },
            Some(item) = outbox.recv() => {
                session.handle_outbound(item);
                for _ in 0..OUTBOX_BATCH {
                    match outbox.try_recv() {
                        Ok(item) => session.handle_outbound(item),
                        Err(_) => break,
                    }
                }
                true
            }
            changed = durable.changed(), if session.has_pending_durability() => {
                if changed.is_err() {
                    break;
                }
                session.on_durable();
                true
            }
            _ = ticker.tick() => {
                let hb = session.heartbeats();
                if hb.expect_within.is_some_and(|d| last_read.elapsed() > d) {
                    tracing::warn!(%peer, protocol = S::PROTOCOL, "client silent past its heartbeat; closing");
                    break;
                }
                if hb.send_after.is_some_and(|d| last_write.elapsed() >= d) {
                    session.send_heartbeat();
                }
                if session.user().is_none() && started.elapsed() > HANDSHAKE_TIMEOUT {
                    tracing::warn!(%peer, protocol = S::PROTOCOL, "handshake timeout");
                    break;
                }
                true
            }
            changed = alarm.changed(), if alarm_live => {
                match changed {
                    Ok(()) => session.set_alarm(*alarm.borrow_and_update()),
                    // The monitor stopped (shutdown); nothing more will change.
                    Err(_) => alarm_live = false,
                }
                true
            }
            _ = shutdown.changed() => {
                session.force_close();
                true
            }
        };
        if let Some(out) = session.take_output() {
            if writer.write_all(&out).await.is_err() {
                break;
            }
            traffic.sent.inc_by(out.len() as u64);
            last_write = Instant::now();
        }
        session.after_flush();
        registration.update(session.user(), session.channel_count());
        if !keep {
            break;
        }
        if session.is_closing() {
            let since = *closing_since.get_or_insert_with(Instant::now);
            if since.elapsed() > CLOSE_TIMEOUT {
                break;
            }
        }
    }
    let _ = writer.shutdown().await;
    session.shutdown();
    // Deliveries still in the outbox were never written: hand them back to the session, which
    // returns them to their queues, so none is left unacknowledged with no one to settle it.
    outbox.close();
    while let Ok(item) = outbox.try_recv() {
        session.handle_outbound(item);
    }
    if let Some(user) = session.user() {
        tracing::info!(%peer, user, protocol = S::PROTOCOL, "connection closed");
    }
}
