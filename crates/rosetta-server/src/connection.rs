//! The task that drives one client connection, whatever its protocol: socket bytes into the
//! session, deliveries and durability progress out of it, heartbeats, the resource alarm and
//! shutdown. Protocol rules live in the sessions; this loop only moves bytes and time.

use std::any::Any;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use rosetta_core::auth;
use rosetta_core::front_end::{Eviction, Flow, Heartbeats, Session};
use rosetta_core::{Outbound, Unwritten};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;
// The runtime's clock, which its timers follow (and a test can pause).
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use self::input_order::{Ticket, Turn};
use self::send::send_all;
pub(crate) use self::send::SocketProgress;
use crate::state::ServerState;

pub(crate) mod input_order;
mod send;
#[cfg(test)]
mod tests;

/// Outbox items handled per wake-up before output is written, so one busy queue cannot delay
/// a socket write indefinitely while still batching frames into few syscalls.
const OUTBOX_BATCH: usize = 512;
/// How long a client may take to finish its opening handshake (RabbitMQ: 10 s).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a session that is closing may wait for the client's goodbye.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// After the broker ends a connection, how long and how much of the client's input it still
/// reads and drops ([`linger`]).
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;
/// The input buffer a connection allocates when bytes arrive; it grows by [`READ_CHUNK`] once
/// traffic fills it.
const INITIAL_INPUT: usize = 512;
const READ_CHUNK: usize = 16 * 1024;
/// A connection that read nothing for this long gives its (empty) input buffer back: most MQTT
/// devices send a packet a minute, and thousands of them should not each hold a buffer between
/// packets.
const IDLE_RELEASE: Duration = Duration::from_secs(1);
/// How long a connection with no deadline at all (no heartbeats, nothing buffered) sleeps before
/// looking again; only signals and traffic matter to it.
const NOTHING_DUE: Duration = Duration::from_secs(3600);

/// A client connection's byte stream: plain TCP, or TLS over TCP. The driver is generic over
/// it, so the plain path is compiled for `TcpStream` alone, with no dynamic dispatch per read.
pub(crate) trait Transport:
    AsyncRead + AsyncWrite + SocketProgress + Unpin + Send + 'static
{
    /// How the connection's bytes travel, as the management API lists it: `tcp`, `tls`, `ws`,
    /// `wss`.
    const NAME: &'static str;

    /// Reads what the stream has into `input`. Cancel-safe: bytes are consumed only by the read
    /// that completes.
    fn read_some(
        &mut self,
        input: &mut BytesMut,
    ) -> impl Future<Output = std::io::Result<usize>> + Send;

    /// The TCP socket underneath, whose read readiness the [`input_order`] watches.
    fn socket(&self) -> &TcpStream;
}

/// Makes room in `input` for a read: a small buffer for a quiet connection, room for a whole
/// chunk once it is busy.
pub(crate) fn reserve_input(input: &mut BytesMut) {
    if input.capacity() - input.len() < INITIAL_INPUT / 2 {
        input.reserve(if input.capacity() == 0 {
            INITIAL_INPUT
        } else {
            READ_CHUNK
        });
    }
}

impl SocketProgress for TcpStream {}

impl Transport for TcpStream {
    const NAME: &'static str = "tcp";

    /// `input` gets its memory only once bytes are there: readiness first, then the read.
    async fn read_some(&mut self, input: &mut BytesMut) -> std::io::Result<usize> {
        poll_fn(|cx| self.poll_read_ready(cx)).await?;
        reserve_input(input);
        // `read_buf` rather than `try_read_buf`: after a short read it lets tokio forget the
        // readiness, which saves a read that would only return EAGAIN.
        self.read_buf(input).await
    }

    fn socket(&self) -> &TcpStream {
        self
    }
}

/// rustls takes a write into records of its own, at most a few KiB ahead of the socket, so what
/// the write takes is close enough to what the socket takes.
impl SocketProgress for TlsStream<TcpStream> {}

impl Transport for TlsStream<TcpStream> {
    const NAME: &'static str = "tls";

    /// Records may already hold decrypted bytes that socket readiness would not announce, so
    /// the buffer is reserved before waiting (an idle TLS connection keeps its small one).
    async fn read_some(&mut self, input: &mut BytesMut) -> std::io::Result<usize> {
        reserve_input(input);
        self.read_buf(input).await
    }

    fn socket(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// The next item of the session's outbox, picking the receiver up once the session has one.
fn next_outbound<'a, S: Session>(
    outbox: &'a mut Option<UnboundedReceiver<Outbound>>,
    session: &'a mut S,
) -> impl Future<Output = Option<Outbound>> + 'a {
    poll_fn(move |cx| {
        if outbox.is_none() {
            *outbox = session.take_outbox(cx.waker());
        }
        match outbox {
            Some(rx) => rx.poll_recv(cx),
            None => Poll::Pending,
        }
    })
}

/// Runs one connection until it closes: the socket, the session's outbox (`outbox`, or the one
/// the session creates later), the store's durable point, timers and broker-wide signals.
pub(crate) async fn drive<S: Session, T: Transport>(
    mut stream: T,
    peer: SocketAddr,
    mut session: S,
    mut outbox: Option<UnboundedReceiver<Outbound>>,
    state: Arc<ServerState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let registration = state.connections.register(S::PROTOCOL, T::NAME, peer);
    let traffic = state.metrics.traffic(S::PROTOCOL);
    let mut durable = state.broker.store().subscribe_durable();
    // Allocated when bytes arrive (readiness first, then a read), so an idle connection holds
    // no input buffer.
    let mut input = BytesMut::new();
    let started = Instant::now();
    let mut last_read = Instant::now();
    // Whether any input has been read yet.
    let mut read_before = false;
    let mut last_write = Instant::now();
    let mut closing_since: Option<Instant> = None;
    // Sleeps until the connection's next deadline (heartbeat, handshake, buffer release); the
    // broker-wide signals wake the task through its registration instead. A fixed tick would
    // wake every idle connection several times a second.
    let timer = tokio::time::sleep_until(started + HANDSHAKE_TIMEOUT);
    tokio::pin!(timer);
    let mut armed: Option<Instant> = Some(started + HANDSHAKE_TIMEOUT);
    // Which timeouts applied when the timer was last looked at.
    let mut looked_at: Option<DeadlineKinds> = None;
    let mut alarm = state.alarm.clone();
    // Deliveries turned into output and not yet on the socket: their bytes stay charged to
    // their consumers until the write completes, so a client that stops reading stops
    // receiving (TCP backpressure reaches the queues) instead of filling the outbox.
    let mut unwritten = Unwritten::default();
    session.set_alarm(*alarm.borrow_and_update());
    look_at_signals(&mut session, &mut shutdown, &mut alarm);
    // The connection's place in the broker-wide order of input, for protocols that keep one.
    let turn = S::ORDERS_INPUT.then(|| {
        let turn = Turn::new(state.input_order.clone());
        turn.watch(stream.socket());
        let waker = Waker::from(turn.clone());
        (turn, waker)
    });
    let listening = turn.as_ref().map(|(turn, waker)| (&**turn, waker));
    // A panic is a bug, but it must cost one connection, not the broker's state: the loop runs
    // guarded, and the cleanup below runs whatever happened in it.
    // The client closed or broke the socket, so there is no one left to linger for.
    let mut peer_gone = false;
    // The client's socket took none of the output for the send timeout.
    let mut stalled = false;
    // Boxed: handed to `catch_panic` from a local, the loop's future was kept in this task's
    // state beside the copy `catch_panic` polls, about 500 of the 2,240 bytes that this
    // function's future took for each connection.
    let run = Box::pin(async {
        // Logins the session refused that are not answered yet.
        let mut refused = 0;
        loop {
            let keep = tokio::select! {
                read = input_order::listen(listening, &mut stream, &mut input), if !session.reading_paused() => match read {
                    Ok(0) | Err(_) => {
                        peer_gone = true;
                        break;
                    }
                    Ok(n) => {
                        traffic.received.inc_by(n as u64);
                        let now = Instant::now();
                        let after_silence = !read_before || now - last_read >= IDLE_RELEASE;
                        read_before = true;
                        last_read = now;
                        let keep = handle_read(listening, stream.socket(), &mut session, &mut input, &mut refused).await;
                        // Input that comes rarely (a login, a device's reading every few
                        // seconds) gives its buffer back at once: releasing it a second later
                        // would wake the task once more for every such read, which for quiet
                        // clients is most of what they cost. Busy connections keep theirs.
                        if after_silence && input.is_empty() {
                            input = BytesMut::new();
                        }
                        keep
                    }
                },
                Some(item) = next_outbound(&mut outbox, &mut session) => {
                    unwritten.note(&item);
                    session.handle_outbound(item);
                    if let Some(rx) = outbox.as_mut() {
                        for _ in 0..OUTBOX_BATCH {
                            match rx.try_recv() {
                                Ok(item) => {
                                    unwritten.note(&item);
                                    session.handle_outbound(item);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    true
                }
                changed = durable.changed(), if session.has_pending_durability() => {
                    if changed.is_err() {
                        break;
                    }
                    session.on_durable();
                    !session.is_finished()
                }
                () = std::future::ready(()), if session.output_ready() => true,
                () = registration.signalled() => {
                    let paused_before = session.reading_paused();
                    look_at_signals(&mut session, &mut shutdown, &mut alarm);
                    let vhost_gone = session.open_vhost().is_some_and(|v| v.is_deleted());
                    let evicted = registration
                        .evicted()
                        .or(vhost_gone.then_some(Eviction::VHostDeleted));
                    if let Some(why) = evicted.filter(|_| !session.is_closing()) {
                        session.evicted(why);
                    }
                    // Frames a paused session left unread are taken up as soon as it resumes,
                    // without waiting for the client to send more. Its silence while paused
                    // says nothing (RabbitMQ stops its heartbeat monitor while blocked).
                    if paused_before && !session.reading_paused() {
                        last_read = Instant::now();
                        input.is_empty()
                            || handle_read(listening, stream.socket(), &mut session, &mut input, &mut refused).await
                    } else {
                        true
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if session.reading_paused() {
                        last_read = now;
                    }
                    let hb = session.heartbeats();
                    if hb.expect_within.is_some_and(|d| now.duration_since(last_read) > d) {
                        tracing::warn!(%peer, protocol = S::PROTOCOL, "client silent past its heartbeat; closing");
                        break;
                    }
                    if hb.send_after.is_some_and(|d| now.duration_since(last_write) >= d) {
                        session.send_heartbeat();
                    }
                    if session.user().is_none() && now.duration_since(started) > HANDSHAKE_TIMEOUT {
                        tracing::warn!(%peer, protocol = S::PROTOCOL, "handshake timeout");
                        break;
                    }
                    if input.is_empty() && now.duration_since(last_read) >= IDLE_RELEASE {
                        input = BytesMut::new();
                    }
                    armed = None;
                    true
                }
            };
            let turn_here = listening.map(|(turn, _)| turn);
            if let Some(turn) = turn_here {
                turn.set_paused(session.reading_paused());
                turn.follow(stream.socket());
            }
            // A refused login is counted, and answered only after a delay so that guessing
            // passwords is slow. Only this connection's task waits; its output (the refusal)
            // stays unwritten meanwhile.
            if refused > 0 {
                state
                    .metrics
                    .auth_failures(S::PROTOCOL, std::mem::take(&mut refused));
                if !state.failed_login_delay.is_zero() {
                    Turn::elsewhere(turn_here, tokio::time::sleep(state.failed_login_delay)).await;
                }
            }
            if let Some(out) = session.take_output() {
                let write = send_all(
                    &mut stream,
                    &out,
                    state.send_timeout,
                    |stream: &T, waits| {
                        if let Some(turn) = turn_here {
                            turn.write_waits(stream.socket(), waits);
                        }
                    },
                );
                if let Err(e) = Turn::elsewhere(turn_here, write).await {
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        let timeout = state.send_timeout.unwrap_or_default();
                        tracing::warn!(%peer, protocol = S::PROTOCOL, ?timeout, "client took none of its output within the send timeout; closing");
                        stalled = true;
                    }
                    // Gone, or as good as gone: nothing more can be said to it.
                    peer_gone = true;
                    break;
                }
                traffic.sent.inc_by(out.len() as u64);
                last_write = Instant::now();
            }
            unwritten.written();
            session.after_flush();
            registration.update(session.user(), session.channel_count(), |user| {
                user_deleted(&state, user)
            });
            if !keep {
                break;
            }
            if session.is_closing() {
                let since = *closing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > CLOSE_TIMEOUT {
                    break;
                }
            }
            // The timer is moved only to an earlier deadline; a later one (traffic pushed the
            // heartbeat back) is found when it fires, so busy connections do not touch the
            // timer wheel on every wake-up. While the same timeouts apply, traffic only moves
            // each of them later, so they are looked at again only when that set changes.
            let deadlines = Deadlines {
                started,
                last_read,
                last_write,
                closing_since,
                authenticated: session.user().is_some(),
                // A partial frame is kept whatever the wait: only an empty buffer is released.
                holds_input: input.is_empty() && input.capacity() > 0,
                paused: session.reading_paused(),
                heartbeats: session.heartbeats(),
            };
            let kinds = deadlines.kinds();
            if armed.is_none() || looked_at != Some(kinds) {
                let next = deadlines.next();
                // The handshake's deadline is the one that traffic does not push back but a
                // login ends: left armed, it would wake every new connection once, at ten
                // seconds, for nothing.
                let logged_in = kinds.authenticated && looked_at.is_none_or(|k| !k.authenticated);
                if armed.is_none_or(|at| next < at) || logged_in {
                    timer.as_mut().reset(next);
                    armed = Some(next);
                }
                looked_at = Some(kinds);
            }
        }
    });
    if let Err(panic) = catch_panic(run).await {
        tracing::error!(%peer, protocol = S::PROTOCOL, panic, "connection task panicked; closing the connection");
    }
    if let Some((turn, _)) = listening {
        turn.leave(stream.socket());
    }
    // On TLS and WebSocket the goodbye is more output to write, which a client that stopped
    // reading would hold up for ever, and one that stalled already holds up.
    if !stalled {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
    }
    let cleanup = catch_unwind(AssertUnwindSafe(|| {
        session.shutdown();
        // Deliveries still in the outbox were never written: hand them back to the session,
        // which returns them to their queues, so none is left unacknowledged with no one to
        // settle it.
        if outbox.is_none() {
            outbox = session.take_outbox(Waker::noop());
        }
        if let Some(mut rx) = outbox.take() {
            rx.close();
            while let Ok(item) = rx.try_recv() {
                session.handle_outbound(item);
            }
        }
    }));
    if let Err(panic) = cleanup {
        tracing::error!(%peer, protocol = S::PROTOCOL, panic = %panic_message(panic.as_ref()), "connection cleanup panicked");
    }
    if !peer_gone {
        linger(&mut stream, &mut input).await;
    }
    if let Some(user) = session.user() {
        tracing::info!(%peer, user, protocol = S::PROTOCOL, "connection closed");
    }
}

/// Keeps reading, and dropping, what the client still sends after the broker ended the
/// connection (its output side is already shut), until the client closes too or
/// [`LINGER_TIME`] or [`LINGER_BYTES`] runs out. Closing a socket with unread input makes the
/// kernel answer with a reset, which can destroy the goodbye just written (MQTT `DISCONNECT`
/// with its reason, AMQP `connection.close`, STOMP `ERROR`) before the client reads it, and
/// makes a client still writing fail on its write instead of reading the reason. The session
/// is already cleaned up, so only the socket waits; bounded, so shutdown is not held up.
async fn linger<T: Transport>(stream: &mut T, input: &mut BytesMut) {
    let drain = async {
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            input.clear();
            match stream.read_some(input).await {
                Ok(0) | Err(_) => return,
                Ok(n) => dropped += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// Whether `user`, just logged in, is no longer in the directory: its deletion raced with the
/// login. MQTT's `anonymous` is never a directory user, so it is never gone.
fn user_deleted(state: &ServerState, user: &str) -> bool {
    user != rosetta_mqtt::session::ANONYMOUS && state.users.contents().users.get(user).is_none()
}

/// Hands the input to the session; whether the connection goes on. Logins the session refused
/// meanwhile are added to `refused`: sessions check credentials through the core's
/// [`rosetta_core::Users::check`], which notes each refusal for the enclosing
/// [`auth::refusals_during`].
fn handle_input<S: Session>(session: &mut S, input: &mut BytesMut, refused: &mut u32) -> bool {
    let (flow, n) = auth::refusals_during(|| session.handle_input(input));
    *refused = refused.saturating_add(n);
    flow == Flow::Continue
}

/// Hands input just read to the session, in the connection's [`input_order`] when it keeps
/// one: the read's ticket is taken and the socket watched again before the input is handled.
async fn handle_read<S: Session>(
    listening: Option<(&Turn, &Waker)>,
    socket: &TcpStream,
    session: &mut S,
    input: &mut BytesMut,
    refused: &mut u32,
) -> bool {
    match listening {
        Some((turn, waker)) => {
            let ticket = turn.take();
            turn.rearm(socket, waker);
            let keep = handle_input_in_turn(ticket, session, input, refused).await;
            turn.follow(socket);
            keep
        }
        None => handle_input(session, input, refused),
    }
}

/// [`handle_input`] in the connection's [`input_order`]: input that changes routing holds back
/// input read after it until it is handled; input that publishes waits until the routing
/// changes read before it are in place ([`Ticket::wait_turn`]).
async fn handle_input_in_turn<S: Session>(
    mut ticket: Ticket<'_>,
    session: &mut S,
    input: &mut BytesMut,
    refused: &mut u32,
) -> bool {
    let effects = session.input_effects(input);
    ticket.note(effects.publishes, effects.changes_routing);
    if !effects.changes_routing {
        ticket.release();
    }
    if effects.publishes {
        ticket.wait_turn().await;
    }
    handle_input(session, input, refused)
}

/// Applies the broker-wide signals that changed since the last look: shutdown makes the session
/// say goodbye, the resource alarm pauses or resumes its publishers.
fn look_at_signals<S: Session>(
    session: &mut S,
    shutdown: &mut watch::Receiver<bool>,
    alarm: &mut watch::Receiver<bool>,
) {
    match shutdown.has_changed() {
        Ok(true) if *shutdown.borrow_and_update() => session.force_close(),
        Ok(_) => {}
        // The broker dropped the sender: it is going away.
        Err(_) => session.force_close(),
    }
    // An error means the monitor stopped (shutdown): nothing more will change.
    if alarm.has_changed().unwrap_or(false) {
        session.set_alarm(*alarm.borrow_and_update());
    }
}

/// When each of a connection's timeouts falls due.
struct Deadlines {
    started: Instant,
    last_read: Instant,
    last_write: Instant,
    closing_since: Option<Instant>,
    authenticated: bool,
    holds_input: bool,
    paused: bool,
    heartbeats: Heartbeats,
}

/// Which of a connection's timeouts apply, whatever their times.
#[derive(Clone, Copy, PartialEq, Eq)]
struct DeadlineKinds {
    heartbeats: Heartbeats,
    authenticated: bool,
    holds_input: bool,
    paused: bool,
    closing: bool,
}

impl Deadlines {
    fn kinds(&self) -> DeadlineKinds {
        DeadlineKinds {
            heartbeats: self.heartbeats,
            authenticated: self.authenticated,
            holds_input: self.holds_input,
            paused: self.paused,
            closing: self.closing_since.is_some(),
        }
    }

    /// The earliest moment something may be due; far away when nothing is.
    fn next(&self) -> Instant {
        let hb = self.heartbeats;
        [
            hb.send_after.map(|d| self.last_write + d),
            // A paused client is not read, so its silence is not counted.
            hb.expect_within
                .filter(|_| !self.paused)
                .map(|d| self.last_read + d + Duration::from_millis(1)),
            (!self.authenticated).then(|| self.started + HANDSHAKE_TIMEOUT),
            self.holds_input.then(|| self.last_read + IDLE_RELEASE),
            self.closing_since
                .map(|t| t + CLOSE_TIMEOUT + Duration::from_millis(1)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| Instant::now() + NOTHING_DUE)
    }
}

/// Runs `future` to completion, or until polling it panics: then the panic's message comes back
/// instead and the future is dropped (its borrows end, so the caller can still clean up).
async fn catch_panic<F: Future>(future: F) -> Result<F::Output, String> {
    let mut future = std::pin::pin!(future);
    poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(poll) => poll.map(Ok),
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        },
    )
    .await
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(text), _) => (*text).to_owned(),
        (_, Some(text)) => text.clone(),
        _ => "panic without a message".to_owned(),
    }
}
