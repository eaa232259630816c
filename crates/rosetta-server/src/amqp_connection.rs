//! The task that drives one AMQP connection: socket bytes into the session, deliveries and
//! confirms out of it, heartbeats, and shutdown. Protocol rules live in the session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rosetta_amqp::session::{Flow, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::state::ServerState;

/// Outbox items handled per wake-up before output is written, so one busy queue cannot delay
/// a socket write indefinitely while still batching frames into few syscalls.
const OUTBOX_BATCH: usize = 512;
/// How long a client may take to finish the opening handshake (RabbitMQ: 10 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long we wait for `close-ok` after sending `connection.close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, state: Arc<ServerState>, mut shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (mut session, mut outbox) = Session::new(state.broker.clone(), state.users.clone(), state.amqp.clone(), peer);
    let mut durable = state.broker.store().subscribe_durable();
    let mut input = BytesMut::with_capacity(64 * 1024);
    let started = Instant::now();
    let mut last_read = Instant::now();
    let mut last_write = Instant::now();
    let mut closing_since: Option<Instant> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut opened = false;
    let mut alarm = state.alarm.clone();
    let mut alarm_live = true;
    session.set_alarm(*alarm.borrow_and_update());
    loop {
        let flow = tokio::select! {
            read = reader.read_buf(&mut input), if !session.reading_paused() => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {
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
                Flow::Continue
            }
            changed = durable.changed(), if session.has_pending_confirms() => {
                if changed.is_err() {
                    break;
                }
                session.on_durable();
                Flow::Continue
            }
            _ = ticker.tick() => {
                let hb = Duration::from_secs(u64::from(session.heartbeat()));
                if !hb.is_zero() {
                    // AMQP 0-9-1 §4.2.7: a peer silent for two intervals is dead.
                    if last_read.elapsed() > hb * 2 {
                        tracing::warn!(%peer, "missed heartbeats from client; closing");
                        break;
                    }
                    if last_write.elapsed() >= hb / 2 {
                        session.send_heartbeat();
                    }
                }
                if !opened && session.user().is_empty() && started.elapsed() > HANDSHAKE_TIMEOUT {
                    tracing::warn!(%peer, "handshake timeout");
                    break;
                }
                opened |= !session.user().is_empty();
                Flow::Continue
            }
            changed = alarm.changed(), if alarm_live => {
                match changed {
                    Ok(()) => session.set_alarm(*alarm.borrow_and_update()),
                    // The monitor stopped (shutdown); nothing more will change.
                    Err(_) => alarm_live = false,
                }
                Flow::Continue
            }
            _ = shutdown.changed() => {
                session.force_close("broker shutdown");
                Flow::Continue
            }
        };
        if session.has_output() {
            let out = session.take_output();
            if writer.write_all(&out).await.is_err() {
                break;
            }
            last_write = Instant::now();
        }
        session.after_flush();
        if flow == Flow::Close {
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
    if !session.user().is_empty() {
        tracing::info!(%peer, user = session.user(), protocol = "amqp", "connection closed");
    }
}
