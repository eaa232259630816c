//! The sans-IO session without a runtime or a socket: bytes in, core deliveries through the
//! outbox, frames out.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use rosetta_core::auth::Permissions;
use rosetta_core::front_end::Session as _;
use rosetta_core::store::Store;
use rosetta_core::testing::ManualDurability;
use rosetta_core::{Broker, CoreLimits, Directory, Outbound, User, Users};
use rosetta_stomp::codec::{decode, Limits};
use rosetta_stomp::session::{Flow, Session, SessionConfig};
use rosetta_stomp::{Command, Frame, Version};
use rosetta_store::SledStore;
use tokio::sync::mpsc::UnboundedReceiver;

struct Harness {
    _dir: tempfile::TempDir,
    broker: Arc<Broker>,
}

impl Harness {
    fn new() -> Harness {
        Harness::on(|store| store)
    }

    /// A broker whose writes become durable only when the test says so.
    fn with_manual_durability() -> (Harness, Arc<ManualDurability>) {
        let mut manual = None;
        let h = Harness::on(|store| {
            let m = ManualDurability::new(store);
            manual = Some(m.clone());
            m
        });
        (h, manual.expect("store wrapped"))
    }

    fn on(wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(SledStore::open(&dir.path().join("data")).expect("store"));
        let broker =
            Broker::open(wrap(store), &["/".to_owned()], CoreLimits::default()).expect("broker");
        Harness { _dir: dir, broker }
    }

    fn session(&self) -> Client {
        let users = Arc::new(Directory::new(
            Users::new(vec![User {
                name: "guest".into(),
                password: "guest".into(),
                loopback_only: true,
            }]),
            Permissions::full_access(["guest"], &["/"]),
        ));
        let config = SessionConfig {
            heartbeat_ms: 1000,
            max_transaction_frames: 3,
            ..SessionConfig::default()
        };
        let peer: SocketAddr = "127.0.0.1:5555".parse().expect("addr");
        let (session, outbox) = Session::new(self.broker.clone(), users, config, peer);
        Client { session, outbox }
    }
}

struct Client {
    session: Session,
    outbox: UnboundedReceiver<Outbound>,
}

impl Client {
    fn input(&mut self, bytes: &[u8]) -> Flow {
        let mut buf = BytesMut::from(bytes);
        self.session.handle_input(&mut buf)
    }

    /// Hands queued deliveries to the session, as the connection task would.
    fn pump(&mut self) {
        while let Ok(item) = self.outbox.try_recv() {
            self.session.handle_outbound(item);
        }
        self.session.after_flush();
    }

    fn frames(&mut self) -> Vec<Frame> {
        let mut out = BytesMut::from(&self.session.take_output().unwrap_or_default()[..]);
        let mut frames = Vec::new();
        while let Some(f) =
            decode(&mut out, &Limits::default(), Version::V1_2).expect("server output decodes")
        {
            frames.push(f);
        }
        frames
    }

    fn connected(h: &Harness) -> Client {
        let mut c = h.session();
        assert_eq!(c.input(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:500,2000\n\n\0"), Flow::Continue);
        let frames = c.frames();
        assert_eq!(frames[0].command, Command::Connected);
        c
    }
}

#[test]
fn connect_negotiates_version_and_heartbeats() {
    let h = Harness::new();
    let mut c = h.session();
    c.input(b"CONNECT\naccept-version:1.0,1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:500,2000\n\n\0");
    let frames = c.frames();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].get("version"), Some("1.2"));
    assert_eq!(frames[0].get("heart-beat"), Some("1000,1000"));
    assert_eq!(c.session.user(), Some("guest"));
    let (send, expect) = c.session.negotiated_heartbeats();
    assert_eq!(
        send.map(|d| d.as_millis()),
        Some(2000),
        "server sends at max(1000, cy=2000)"
    );
    assert_eq!(
        expect.map(|d| d.as_millis()),
        Some(1000),
        "client beats at max(cx=500, 1000)"
    );
}

#[test]
fn receipt_for_a_persistent_send_follows_the_fsync() {
    let h = Harness::new();
    let mut c = Client::connected(&h);
    c.input(b"SEND\ndestination:/queue/p\npersistent:true\nreceipt:r1\n\nbody\0");
    h.broker.store().sync().expect("sync");
    c.session.on_durable();
    let frames = c.frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].command, Command::Receipt);
    assert_eq!(frames[0].get("receipt-id"), Some("r1"));
    assert!(!c.session.has_pending_durability());
    assert_eq!(
        h.broker
            .vhost("/")
            .and_then(|v| v.queue("p"))
            .map(|q| q.stats().ready),
        Some(1)
    );
}

#[test]
fn nack_redelivers_and_ack_settles() {
    let h = Harness::new();
    let mut c = Client::connected(&h);
    c.input(b"SUBSCRIBE\nid:s\ndestination:/queue/n\nack:client-individual\n\n\0SEND\ndestination:/queue/n\n\nx\0");
    c.pump();
    let first = c.frames().pop().expect("a MESSAGE");
    assert_eq!(first.get("redelivered"), Some("false"));
    let nack = format!("NACK\nid:{}\n\n\0", first.get("ack").expect("ack header"));
    c.input(nack.as_bytes());
    c.pump();
    let second = c.frames().pop().expect("redelivered MESSAGE");
    assert_eq!(second.get("redelivered"), Some("true"));
    let ack = format!(
        "ACK\nid:{}\nreceipt:done\n\n\0",
        second.get("ack").expect("ack header")
    );
    c.input(ack.as_bytes());
    assert_eq!(c.frames()[0].command, Command::Receipt);
    let stats = h
        .broker
        .vhost("/")
        .and_then(|v| v.queue("n"))
        .map(|q| q.stats())
        .expect("queue");
    assert_eq!((stats.ready, stats.unacked), (0, 0));
}

#[test]
fn an_error_closes_and_returns_unacked_messages() {
    let h = Harness::new();
    let mut c = Client::connected(&h);
    c.input(
        b"SUBSCRIBE\nid:s\ndestination:/queue/e\nack:client\n\n\0SEND\ndestination:/queue/e\n\nx\0",
    );
    c.pump();
    assert_eq!(c.frames().len(), 1);
    assert_eq!(c.input(b"ACK\nid:999\n\n\0"), Flow::Close);
    let frames = c.frames();
    assert_eq!(frames[0].command, Command::Error);
    assert_eq!(frames[0].get("message"), Some("Message not found"));
    assert!(c.session.is_closing());
    let stats = h
        .broker
        .vhost("/")
        .and_then(|v| v.queue("e"))
        .map(|q| q.stats())
        .expect("queue");
    assert_eq!((stats.ready, stats.unacked, stats.consumers), (1, 0, 0));
}

fn ready(h: &Harness, queue: &str) -> Option<u64> {
    h.broker
        .vhost("/")
        .and_then(|v| v.queue(queue))
        .map(|q| q.stats().ready)
}

#[test]
fn a_send_under_the_alarm_waits_with_what_follows_until_the_alarm_clears() {
    let h = Harness::new();
    let mut c = Client::connected(&h);
    c.session.set_alarm(true);
    assert!(
        !c.session.reading_paused(),
        "a client that sent nothing is read"
    );
    assert_eq!(
        c.input(b"SEND\ndestination:/queue/al\nreceipt:r1\n\nx\0BEGIN\ntransaction:t\nreceipt:r2\n\n\0SEND\ndest"),
        Flow::Continue
    );
    assert!(
        c.frames().is_empty(),
        "neither receipt before the alarm clears"
    );
    assert!(c.session.reading_paused());
    assert_eq!(ready(&h, "al"), None, "the SEND has not been handled");

    c.session.set_alarm(false);
    // The SEND declared `/queue/al`, whose record its receipt waits for.
    h.broker.store().sync().expect("sync");
    c.session.on_durable();
    let ids: Vec<_> = c
        .frames()
        .iter()
        .map(|f| f.get("receipt-id").map(str::to_owned))
        .collect();
    assert_eq!(ids, [Some("r1".to_owned()), Some("r2".to_owned())]);
    assert_eq!(ready(&h, "al"), Some(1));
    assert!(!c.session.reading_paused());
    // The frame cut short before the pause completes with the next read.
    c.input(b"ination:/queue/al\nreceipt:r3\n\ny\0");
    assert_eq!(c.frames()[0].get("receipt-id"), Some("r3"));
    assert_eq!(ready(&h, "al"), Some(2));
}

#[test]
fn a_transactional_send_and_its_commit_wait_for_the_alarm() {
    let h = Harness::new();
    let mut c = Client::connected(&h);
    c.input(b"BEGIN\ntransaction:t\n\n\0SEND\ndestination:/queue/tx\ntransaction:t\n\nx\0");
    c.session.set_alarm(true);
    c.input(b"COMMIT\ntransaction:t\nreceipt:c\n\n\0");
    assert!(c.frames().is_empty());
    assert!(c.session.reading_paused());
    assert_eq!(ready(&h, "tx"), None);
    c.session.set_alarm(false);
    h.broker.store().sync().expect("sync");
    c.session.on_durable();
    assert_eq!(c.frames()[0].get("receipt-id"), Some("c"));
    assert_eq!(ready(&h, "tx"), Some(1));

    c.session.set_alarm(true);
    c.input(
        b"BEGIN\ntransaction:u\n\n\0SEND\ndestination:/queue/tx\ntransaction:u\nreceipt:s\n\nx\0",
    );
    assert!(
        c.frames().is_empty(),
        "a SEND held for a transaction waits too"
    );
    assert!(c.session.reading_paused());
}

#[test]
fn a_transaction_past_its_frame_limit_is_dropped_with_an_error() {
    let h = Harness::new();
    let mut c = Client::connected(&h);
    let send = b"SEND\ndestination:/queue/big\ntransaction:t\n\nx\0";
    c.input(b"BEGIN\ntransaction:t\n\n\0");
    for _ in 0..3 {
        assert_eq!(c.input(send), Flow::Continue);
    }
    assert!(c.frames().is_empty());
    assert_eq!(c.input(send), Flow::Close);
    let frames = c.frames();
    assert_eq!(frames[0].command, Command::Error);
    assert_eq!(frames[0].get("message"), Some("Transaction too large"));
    assert_eq!(
        ready(&h, "big"),
        None,
        "nothing of the transaction was published"
    );
}

#[test]
fn a_seventeenth_open_transaction_is_refused() {
    let h = Harness::new();
    let mut c = Client::connected(&h);
    for i in 0..16 {
        let begin = format!("BEGIN\ntransaction:t{i}\n\n\0");
        assert_eq!(c.input(begin.as_bytes()), Flow::Continue);
    }
    assert_eq!(c.input(b"BEGIN\ntransaction:t16\n\n\0"), Flow::Close);
    let frames = c.frames();
    assert_eq!(frames[0].get("message"), Some("Transaction limit exceeded"));
}

// --- RabbitMQ's STOMP behaviour -------------------------------------------------------------

/// A session logged in with `connect` (a whole CONNECT frame); returns it with its CONNECTED.
fn connect_with(h: &Harness, connect: &[u8]) -> (Client, Frame) {
    let mut c = h.session();
    assert_eq!(c.input(connect), Flow::Continue);
    let mut frames = c.frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    let connected = frames.remove(0);
    assert_eq!(connected.command, Command::Connected);
    (c, connected)
}

#[test]
fn connected_always_carries_heart_beat_zero_when_none_was_offered() {
    let h = Harness::new();
    for connect in [
        &b"CONNECT\nhost:/\nlogin:guest\npasscode:guest\n\n\0"[..],
        b"CONNECT\naccept-version:1.1\nhost:/\nlogin:guest\npasscode:guest\n\n\0",
        b"STOMP\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0",
        b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:0,0\n\n\0",
    ] {
        let (c, connected) = connect_with(&h, connect);
        assert_eq!(connected.get("heart-beat"), Some("0,0"), "{connected:?}");
        assert_eq!(c.session.negotiated_heartbeats(), (None, None));
    }
    // A 1.0 client that offers heart-beats is answered as any other.
    let (c, connected) = connect_with(
        &h,
        b"CONNECT\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:500,2000\n\n\0",
    );
    assert_eq!(connected.get("version"), Some("1.0"));
    assert_eq!(connected.get("heart-beat"), Some("1000,1000"));
    let (send, _) = c.session.negotiated_heartbeats();
    assert_eq!(send.map(|d| d.as_millis()), Some(2000));
}

#[test]
fn stray_nuls_between_frames_are_skipped() {
    let h = Harness::new();
    let mut c = h.session();
    c.input(b"\0\0CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0\0\n\0");
    assert_eq!(c.frames()[0].command, Command::Connected);
    assert_eq!(
        c.input(b"\0SEND\ndestination:/queue/nuls\nreceipt:r\n\nx\0\0\0\r\n\0"),
        Flow::Continue
    );
    h.broker.store().sync().expect("sync");
    c.session.on_durable();
    assert_eq!(c.frames()[0].get("receipt-id"), Some("r"));
    assert_eq!(ready(&h, "nuls"), Some(1));
}

#[test]
fn boolean_headers_take_any_case() {
    let h = Harness::new();
    let mut c = Client::connected(&h);
    c.input(b"SEND\ndestination:/queue/bool\npersistent:TRUE\n\nx\0SUBSCRIBE\nid:s\ndestination:/queue/bool\nack:client\n\n\0");
    c.pump();
    let message = c.frames().pop().expect("a MESSAGE");
    assert_eq!(message.get("persistent"), Some("true"));
    // `requeue:False` drops the message rather than giving it back.
    let nack = format!(
        "NACK\nid:{}\nrequeue:False\nreceipt:n\n\n\0",
        message.get("ack").expect("ack header")
    );
    c.input(nack.as_bytes());
    c.pump();
    let frames = c.frames();
    assert_eq!(frames.len(), 1, "no redelivery: {frames:?}");
    assert_eq!(frames[0].command, Command::Receipt);
    let stats = h
        .broker
        .vhost("/")
        .and_then(|v| v.queue("bool"))
        .map(|q| q.stats())
        .expect("queue");
    assert_eq!((stats.ready, stats.unacked), (0, 0));
}

#[test]
fn a_stomp_1_0_client_may_use_client_individual_and_nack() {
    let h = Harness::new();
    let (mut c, _) = connect_with(&h, b"CONNECT\nhost:/\nlogin:guest\npasscode:guest\n\n\0");
    c.input(b"SUBSCRIBE\ndestination:/queue/v10ci\nack:client-individual\n\n\0SEND\ndestination:/queue/v10ci\n\na\0SEND\ndestination:/queue/v10ci\n\nb\0");
    c.pump();
    let frames = c.frames();
    assert_eq!(frames.len(), 2, "{frames:?}");
    let (a, b) = (&frames[0], &frames[1]);
    // Individual: acknowledging the second leaves the first outstanding.
    let ack = format!(
        "ACK\nmessage-id:{}\nreceipt:a\n\n\0",
        b.get("message-id").expect("message-id")
    );
    c.input(ack.as_bytes());
    assert_eq!(c.frames()[0].get("receipt-id"), Some("a"));
    let nack = format!(
        "NACK\nmessage-id:{}\n\n\0",
        a.get("message-id").expect("message-id")
    );
    assert_eq!(c.input(nack.as_bytes()), Flow::Continue);
    c.pump();
    let again = c.frames().pop().expect("redelivered MESSAGE");
    assert_eq!(again.body, a.body);
    assert_eq!(again.get("redelivered"), Some("true"));
}

#[test]
fn a_stomp_1_2_ack_or_nack_without_id_is_refused() {
    let h = Harness::new();
    for command in ["ACK", "NACK"] {
        let mut c = Client::connected(&h);
        c.input(b"SUBSCRIBE\nid:s\ndestination:/queue/noid\nack:client\n\n\0SEND\ndestination:/queue/noid\n\nx\0");
        c.pump();
        let message = c.frames().pop().expect("a MESSAGE");
        // The 1.0 and 1.1 header does not stand in for `id` on 1.2.
        let frame = format!(
            "{command}\nmessage-id:{}\n\n\0",
            message.get("message-id").expect("message-id")
        );
        assert_eq!(c.input(frame.as_bytes()), Flow::Close);
        let frames = c.frames();
        assert_eq!(frames[0].command, Command::Error);
        assert_eq!(frames[0].get("message"), Some("Missing header"));
    }
}

#[test]
fn a_send_with_message_id_is_refused_before_its_destination_is_checked() {
    let h = Harness::new();
    for send in [
        &b"SEND\ndestination:/queue/mid\nmessage-id:m1\n\nx\0"[..],
        b"SEND\ndestination:/nowhere\nmessage-id:m1\n\nx\0",
        b"SEND\nmessage-id:m1\n\nx\0",
    ] {
        let mut c = Client::connected(&h);
        assert_eq!(c.input(send), Flow::Close);
        let frames = c.frames();
        assert_eq!(frames[0].command, Command::Error);
        assert_eq!(frames[0].get("message"), Some("Invalid header"));
        assert!(frames[0]
            .body
            .starts_with(b"'message-id' is not allowed on 'SEND'."));
    }
    assert_eq!(ready(&h, "mid"), None, "nothing was published");
}

#[test]
fn a_message_names_an_exchange_without_key_as_it_was_sent() {
    let h = Harness::new();
    let mut c = Client::connected(&h);
    c.input(b"SUBSCRIBE\nid:s\ndestination:/exchange/amq.fanout\n\n\0SEND\ndestination:/exchange/amq.fanout\n\nx\0");
    c.pump();
    let message = c.frames().pop().expect("a MESSAGE");
    assert_eq!(message.get("destination"), Some("/exchange/amq.fanout"));
}

/// A durable subscription's queue as this server named it before it followed RabbitMQ's naming
/// (`stomp-subscription-<id>`): made by STOMP, durable, bound to `amq.topic` with the topic.
fn legacy_subscription_queue(h: &Harness, id: &str, key: &str) -> String {
    let vhost = h.broker.vhost("/").expect("vhost");
    let conn = h.broker.new_connection_id();
    let name = format!("stomp-subscription-{id}");
    let declare = rosetta_core::QueueDeclare {
        name: name.clone(),
        durable: true,
        ..rosetta_core::QueueDeclare::default()
    };
    vhost
        .declare_owned_queue(declare, conn, rosetta_stomp::owner::queue_owner(None))
        .expect("declare");
    vhost
        .bind_deferred(
            "amq.topic",
            rosetta_core::Destination::Queue(name.clone()),
            key,
            rosetta_core::Table::new(),
            conn,
        )
        .expect("bind");
    vhost
        .publish(rosetta_core::Message::new(
            "amq.topic",
            key,
            rosetta_core::Properties::default(),
            bytes::Bytes::from_static(b"kept"),
        ))
        .expect("publish");
    name
}

#[test]
fn a_durable_subscription_queue_named_before_rabbitmqs_naming_keeps_its_messages() {
    let h = Harness::new();
    let legacy = legacy_subscription_queue(&h, "old", "legacy.t");
    let mut c = Client::connected(&h);
    // The same id on another topic is another subscription: RabbitMQ's name, a queue of its own.
    c.input(b"SUBSCRIBE\nid:old\ndestination:/topic/elsewhere\ndurable:true\n\n\0UNSUBSCRIBE\nid:old\n\n\0");
    c.pump();
    assert!(c.frames().is_empty());
    let vhost = h.broker.vhost("/").expect("vhost");
    assert!(vhost
        .queue(&rosetta_stomp::destination::durable_subscription_queue(
            "elsewhere",
            "old"
        ))
        .is_some());
    assert_eq!(ready(&h, &legacy), Some(1));
    // On the topic it was made for, the old queue is the subscription's, with what it held.
    c.input(b"SUBSCRIBE\nid:old\ndestination:/topic/legacy.t\ndurable:true\nack:client\n\n\0");
    c.pump();
    let frames = c.frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(&frames[0].body[..], b"kept");
    assert!(vhost
        .queue(&rosetta_stomp::destination::durable_subscription_queue(
            "legacy.t", "old"
        ))
        .is_none());
}

fn receipt_ids(frames: &[Frame]) -> Vec<&str> {
    frames.iter().filter_map(|f| f.get("receipt-id")).collect()
}

#[test]
fn a_committed_persistent_sends_receipt_waits_until_it_is_durable() {
    let (h, disk) = Harness::with_manual_durability();
    let mut c = Client::connected(&h);
    c.input(b"SEND\ndestination:/queue/txp\nreceipt:made\n\n\0");
    disk.commit();
    c.session.on_durable();
    assert_eq!(receipt_ids(&c.frames()), ["made"]);

    c.input(b"BEGIN\ntransaction:t\n\n\0SEND\ndestination:/queue/txp\ntransaction:t\npersistent:true\nreceipt:s\n\nx\0COMMIT\ntransaction:t\nreceipt:c\n\n\0");
    assert_eq!(ready(&h, "txp"), Some(2), "the commit published");
    assert!(
        c.frames().is_empty(),
        "neither receipt before the message is on disk"
    );
    assert!(c.session.has_pending_durability());
    disk.commit();
    c.session.on_durable();
    assert_eq!(receipt_ids(&c.frames()), ["s", "c"]);
}

#[test]
fn a_send_that_declares_its_queue_is_receipted_once_the_queue_is_durable() {
    let (h, disk) = Harness::with_manual_durability();
    let mut c = Client::connected(&h);
    c.input(b"SEND\ndestination:/queue/fresh\nreceipt:r\n\nx\0");
    assert_eq!(ready(&h, "fresh"), Some(1));
    assert!(
        c.frames().is_empty(),
        "the queue's record is not on disk yet"
    );
    disk.commit();
    c.session.on_durable();
    assert_eq!(receipt_ids(&c.frames()), ["r"]);
    // Once the queue exists, a transient message's receipt waits for nothing.
    c.input(b"SEND\ndestination:/queue/fresh\nreceipt:r2\n\ny\0");
    assert_eq!(receipt_ids(&c.frames()), ["r2"]);
}

#[test]
fn a_forced_close_ends_with_its_error_and_no_receipt_after_it() {
    let (h, disk) = Harness::with_manual_durability();
    let mut c = Client::connected(&h);
    c.input(b"SEND\ndestination:/queue/fc\npersistent:true\nreceipt:waiting\n\nx\0");
    assert!(c.session.has_pending_durability());
    c.session.force_close();
    disk.commit();
    c.session.on_durable();
    let frames = c.frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].command, Command::Error);
    assert_eq!(frames[0].get("message"), Some("Connection forced"));
    assert_eq!(frames[0].get("version"), Some("1.0,1.1,1.2"));
    assert!(c.session.is_finished());
}
