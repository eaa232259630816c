//! The driver over real loopback sockets. The panic guard, on a real AMQP session: no input
//! makes the real session panic, so a wrapper panics when a chosen routing key arrives, between
//! the socket and the session, where any bug in a session would unwind from. And the wake-ups
//! of an idle connection, on a session that only counts what the driver asks of it.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rosetta_amqp::session::Session as AmqpSession;
use rosetta_core::front_end::{Flow, Heartbeats, Session};
use rosetta_core::Outbound;
use rosetta_store::SledStore;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::drive;
use crate::state::ServerState;

const TRIPWIRE: &[u8] = b"tripwire.routing.key";
const DEADLINE: Duration = Duration::from_secs(10);

/// The real AMQP session, except that input holding [`TRIPWIRE`] panics before it is handled.
struct Tripwire(AmqpSession);

impl Session for Tripwire {
    const PROTOCOL: &'static str = "amqp";

    fn handle_input(&mut self, input: &mut BytesMut) -> Flow {
        if input.windows(TRIPWIRE.len()).any(|w| w == TRIPWIRE) {
            panic!("tripwire crossed");
        }
        Session::handle_input(&mut self.0, input)
    }
    fn handle_outbound(&mut self, item: Outbound) {
        Session::handle_outbound(&mut self.0, item);
    }
    fn has_pending_durability(&self) -> bool {
        Session::has_pending_durability(&self.0)
    }
    fn on_durable(&mut self) {
        Session::on_durable(&mut self.0);
    }
    fn take_output(&mut self) -> Option<Bytes> {
        Session::take_output(&mut self.0)
    }
    fn after_flush(&mut self) {
        Session::after_flush(&mut self.0);
    }
    fn heartbeats(&self) -> Heartbeats {
        Session::heartbeats(&self.0)
    }
    fn send_heartbeat(&mut self) {
        Session::send_heartbeat(&mut self.0);
    }
    fn user(&self) -> Option<&str> {
        Session::user(&self.0)
    }
    fn is_closing(&self) -> bool {
        Session::is_closing(&self.0)
    }
    fn set_alarm(&mut self, on: bool) {
        Session::set_alarm(&mut self.0, on);
    }
    fn reading_paused(&self) -> bool {
        Session::reading_paused(&self.0)
    }
    fn force_close(&mut self) {
        Session::force_close(&mut self.0);
    }
    fn shutdown(&mut self) {
        Session::shutdown(&mut self.0);
    }
}

fn server_state(data: &std::path::Path) -> Arc<ServerState> {
    ServerState::for_tests(Arc::new(SledStore::open(data).expect("store")))
}

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < end, "{what} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_session_closes_only_its_connection_and_still_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = server_state(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_shutdown_tx, shutdown) = watch::channel(false);
    let server_state = state.clone();
    let server = tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.expect("accept");
        let (session, outbox) = AmqpSession::new(
            server_state.broker.clone(),
            server_state.users.clone(),
            server_state.amqp.clone(),
            peer,
        );
        drive(
            stream,
            peer,
            Tripwire(session),
            Some(outbox),
            server_state,
            shutdown,
        )
        .await;
    });

    let url = format!("amqp://guest:guest@{addr}/%2f");
    let client = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = client.create_channel().await.expect("channel");
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare("mine".into(), exclusive, FieldTable::default())
        .await
        .expect("declare exclusive queue");
    channel
        .queue_declare(
            "work".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare shared queue");
    let publish = |key: &'static str| {
        channel.basic_publish(
            "".into(),
            key.into(),
            BasicPublishOptions::default(),
            b"job",
            BasicProperties::default(),
        )
    };
    publish("work").await.expect("publish");
    let got = channel
        .basic_get("work".into(), BasicGetOptions { no_ack: false })
        .await
        .expect("basic.get")
        .expect("a message to hold unacknowledged");
    assert!(!got.delivery.redelivered);

    let vhost = state.broker.vhost("/").expect("vhost");
    let work = vhost.queue("work").expect("shared queue");
    assert_eq!((work.stats().ready, work.stats().unacked), (0, 1));
    assert!(vhost.queue("mine").is_some());

    // The routing key is in the publish frame: the wrapper panics before the session sees it.
    let _ = publish("tripwire.routing.key").await;
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("the connection task ended")
        .expect("the panic stayed inside the connection task");
    until("the unacknowledged message requeued", || {
        work.stats().ready == 1 && work.stats().unacked == 0
    })
    .await;
    assert!(vhost.queue("mine").is_none(), "exclusive queue deleted");
    until("the client sees its connection closed", || {
        !client.status().connected()
    })
    .await;
    assert!(
        state.connections.list().is_empty(),
        "the connection is deregistered"
    );
}

/// A session that logs in with its first input and counts the driver's turns of its loop (each
/// ends with [`Session::after_flush`]).
struct Counting {
    inputs: Arc<AtomicUsize>,
    turns: Arc<AtomicUsize>,
}

impl Session for Counting {
    const PROTOCOL: &'static str = "mqtt";

    fn handle_input(&mut self, input: &mut BytesMut) -> Flow {
        input.clear();
        self.inputs.fetch_add(1, SeqCst);
        Flow::Continue
    }
    fn handle_outbound(&mut self, _item: Outbound) {}
    fn has_pending_durability(&self) -> bool {
        false
    }
    fn on_durable(&mut self) {}
    fn take_output(&mut self) -> Option<Bytes> {
        None
    }
    fn after_flush(&mut self) {
        self.turns.fetch_add(1, SeqCst);
    }
    fn heartbeats(&self) -> Heartbeats {
        Heartbeats::default()
    }
    fn send_heartbeat(&mut self) {}
    fn user(&self) -> Option<&str> {
        (self.inputs.load(SeqCst) > 0).then_some("device")
    }
    fn is_closing(&self) -> bool {
        false
    }
    fn set_alarm(&mut self, _on: bool) {}
    fn reading_paused(&self) -> bool {
        false
    }
    fn force_close(&mut self) {}
    fn shutdown(&mut self) {}
}

/// Ten thousand idle connections must cost next to nothing, so once a client has logged in and
/// gone quiet its task must not wake: not to release its input buffer a second later, not for
/// the handshake's deadline ten seconds in. The same for a device that sends a reading now and
/// then. The clock is the runtime's paused one, which jumps to the next timer whenever every
/// task waits, so any timer left armed shows up as a turn.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_quiet_connection_does_not_wake_between_its_inputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = server_state(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_shutdown_tx, shutdown) = watch::channel(false);
    let inputs = Arc::new(AtomicUsize::new(0));
    let turns = Arc::new(AtomicUsize::new(0));
    let session = Counting {
        inputs: inputs.clone(),
        turns: turns.clone(),
    };
    let _server = tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.expect("accept");
        drive(stream, peer, session, None, state, shutdown).await;
    });
    let mut client = TcpStream::connect(addr).await.expect("connect");
    for reading in 1..=3 {
        client.write_all(b"reading").await.expect("write");
        while inputs.load(SeqCst) < reading {
            tokio::task::yield_now().await;
        }
        // Let the task finish the turn that handled the input.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let after_input = turns.load(SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            turns.load(SeqCst),
            after_input,
            "the connection's task woke in 30 s of silence after input {reading}"
        );
    }
}
