//! The session driven like a connection task would drive it, by a client that connects and
//! then subscribes, sends, acknowledges, runs transactions and disconnects at random, some of
//! its frames mutated on the way, all against a real broker over a temporary store. Whatever
//! happens: no panic, and everything the session writes is a stream of whole frames.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use rosetta_core::auth::Permissions;
use rosetta_core::front_end::Session as _;
use rosetta_core::store::Store;
use rosetta_core::{Broker, CoreLimits, Directory, Outbound, User, Users};
use rosetta_stomp::codec::{decode, encode, with_body, Limits};
use rosetta_stomp::session::{Flow, Session, SessionConfig};
use rosetta_stomp::{Command, Frame, Version};
use rosetta_store::SledStore;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::config;
use crate::mutate::{self, Mutation};

/// One broker for every case of a property: opening a store per case would cost more than the
/// case, and what earlier connections left (queues, backlogs) is more to hit.
struct Harness {
    _dir: tempfile::TempDir,
    broker: Arc<Broker>,
    users: Arc<Directory>,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(SledStore::open(&dir.path().join("data")).expect("store"));
        let broker = Broker::open(store, &["/".to_owned()], CoreLimits::default()).expect("broker");
        let users = Arc::new(Directory::new(
            Users::new(vec![User {
                name: "guest".into(),
                password: "guest".into(),
                loopback_only: true,
            }]),
            Permissions::full_access(["guest"], &["/"]),
        ));
        Harness {
            _dir: dir,
            broker,
            users,
        }
    }

    fn session(&self) -> (Session, UnboundedReceiver<Outbound>) {
        // Small limits, so that operations run into them.
        let config = SessionConfig {
            limits: Limits {
                max_headers: 16,
                max_header_length: 256,
                max_body: 4096,
            },
            heartbeat_ms: 0,
            default_vhost: "/".into(),
            max_subscriptions: 3,
            max_transaction_frames: 4,
            max_transaction_bytes: 8192,
        };
        let peer: SocketAddr = "127.0.0.1:61613".parse().expect("addr");
        Session::new(self.broker.clone(), self.users.clone(), config, peer)
    }
}

/// Small name spaces, so that operations meet each other's queues and subscriptions.
fn destination() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/queue/a",
        "/queue/b",
        "/topic/t",
        "/topic/t.*",
        "/exchange/amq.fanout",
        "/exchange/amq.topic/a.#",
        "/amq/queue/a",
        "/temp-queue/r",
        "/queue/",
        "/nowhere/x",
    ])
}

fn subscription_id() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["s0", "s1", "s2"])
}

fn transaction() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![3 => Just(None), 1 => Just(Some("t0")), 1 => Just(Some("t1"))]
}

fn receipt() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![3 => Just(None), 1 => Just(Some("r"))]
}

/// What the client does next.
#[derive(Debug, Clone)]
enum Op {
    /// A client frame; ACK and NACK carry the id of a MESSAGE received, picked when they run.
    Frame(Frame, Option<Index>),
    /// A heart-beat (a bare EOL).
    Heartbeat,
    /// The connection task hands the session what its queues delivered.
    Pump,
    /// The store's group commit catches up, releasing receipts.
    Sync,
    Alarm(bool),
}

fn frame(command: Command, headers: &[(&str, Option<&str>)]) -> Frame {
    let mut frame = Frame::new(command);
    for (name, value) in headers {
        if let Some(value) = value {
            frame.push_header(*name, *value);
        }
    }
    frame
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (subscription_id(), destination(), prop::sample::select(vec!["auto", "client", "client-individual"]), receipt())
            .prop_map(|(id, dest, ack, receipt)| Op::Frame(
                frame(Command::Subscribe, &[("id", Some(id)), ("destination", Some(dest)), ("ack", Some(ack)), ("receipt", receipt)]),
                None,
            )),
        1 => (subscription_id(), receipt()).prop_map(|(id, receipt)| Op::Frame(
            frame(Command::Unsubscribe, &[("id", Some(id)), ("receipt", receipt)]),
            None,
        )),
        6 => (destination(), 0..6000usize, any::<[bool; 2]>(), transaction(), receipt())
            .prop_map(|(dest, len, [persistent, sized], tx, receipt)| {
                let send = frame(Command::Send, &[
                    ("destination", Some(dest)),
                    ("persistent", persistent.then_some("true")),
                    ("transaction", tx),
                    ("receipt", receipt),
                ]);
                let body = Bytes::from(vec![b'm'; len]);
                // Without content-length the body runs to the NUL.
                let send = if sized { with_body(send, body) } else { send.body(body) };
                Op::Frame(send, None)
            }),
        3 => (any::<bool>(), any::<Index>(), transaction(), receipt()).prop_map(|(ack, which, tx, receipt)| {
            let command = if ack { Command::Ack } else { Command::Nack };
            Op::Frame(frame(command, &[("transaction", tx), ("receipt", receipt)]), Some(which))
        }),
        2 => (prop::sample::select(vec![Command::Begin, Command::Commit, Command::Abort]), transaction(), receipt())
            .prop_map(|(command, tx, receipt)| Op::Frame(
                frame(command, &[("transaction", tx), ("receipt", receipt)]),
                None,
            )),
        1 => receipt().prop_map(|receipt| Op::Frame(frame(Command::Disconnect, &[("receipt", receipt)]), None)),
        1 => Just(Op::Frame(frame(Command::Connect, &[("accept-version", Some("1.2"))]), None)),
        1 => Just(Op::Heartbeat),
        4 => Just(Op::Pump),
        1 => Just(Op::Sync),
        1 => any::<bool>().prop_map(Op::Alarm),
    ]
}

/// An operation, the mutations its frame goes through (usually none), and where its bytes are
/// cut into two socket reads.
fn step() -> impl Strategy<Value = (Op, Vec<Mutation>, Index)> {
    (
        op(),
        prop_oneof![11 => Just(Vec::new()), 1 => prop::collection::vec(mutate::mutation(), 1..3)],
        any::<Index>(),
    )
}

/// How the client connects: the versions it accepts (the highest is spoken) and whether it
/// logs in.
fn hello() -> impl Strategy<Value = (Version, bool)> {
    (prop::sample::select(Version::ALL.to_vec()), any::<bool>())
}

fn connect_bytes((version, stomp): (Version, bool)) -> Vec<u8> {
    let command = if stomp {
        Command::Stomp
    } else {
        Command::Connect
    };
    let connect = Frame::new(command)
        .header("accept-version", version.as_str())
        .header("host", "/")
        .header("login", "guest")
        .header("passcode", "guest");
    let mut out = BytesMut::new();
    encode(&connect, Version::V1_2, &mut out);
    out.to_vec()
}

/// Everything the session wrote so far, checked to be whole frames as it comes, and the ids
/// the client may acknowledge.
struct Output {
    bytes: BytesMut,
    ack_ids: Vec<String>,
}

impl Output {
    fn check(&mut self, session: &mut Session) -> Result<(), TestCaseError> {
        self.bytes
            .extend_from_slice(&session.take_output().unwrap_or_default());
        // Read as 1.0, which unescapes nothing: the structure (command, header lines, body
        // and NUL) is what is checked, whatever version was negotiated.
        let limits = Limits {
            max_headers: usize::MAX,
            max_header_length: usize::MAX - 2,
            max_body: usize::MAX,
        };
        loop {
            match decode(&mut self.bytes, &limits, Version::V1_0) {
                Ok(Some(frame)) => {
                    prop_assert!(
                        matches!(
                            frame.command,
                            Command::Connected
                                | Command::Message
                                | Command::Receipt
                                | Command::Error
                        ),
                        "the session wrote a client frame: {frame:?}"
                    );
                    if let Some(id) = frame.get("ack").or_else(|| frame.get("message-id")) {
                        self.ack_ids.push(id.to_owned());
                    }
                }
                Ok(None) => break,
                Err(e) => prop_assert!(false, "the session wrote a broken frame: {e}"),
            }
        }
        // Output is taken frame by frame: nothing may be left half written.
        prop_assert!(self.bytes.is_empty(), "a partial frame: {:?}", self.bytes);
        Ok(())
    }
}

/// Connects with `opening` (a CONNECT, or whatever the case made of it), then plays `steps`.
fn run(
    harness: &Harness,
    opening: Vec<u8>,
    steps: &[(Op, Vec<Mutation>, Index)],
) -> Result<(), TestCaseError> {
    let (mut session, mut outbox) = harness.session();
    let mut output = Output {
        bytes: BytesMut::new(),
        ack_ids: Vec::new(),
    };
    let mut input = BytesMut::from(&opening[..]);
    let mut open = session.handle_input(&mut input) == Flow::Continue;
    output.check(&mut session)?;
    let mut sent = vec![opening];
    for (op, mutations, cut) in steps {
        if !open {
            break;
        }
        let mut bytes = match op {
            Op::Frame(frame, which) => {
                let mut frame = frame.clone();
                if let Some(which) = which {
                    let id = match output.ack_ids.as_slice() {
                        [] => "0".to_owned(),
                        ids => ids[which.index(ids.len())].clone(),
                    };
                    // Each version names the message its own way; the session reads its own.
                    frame.push_header("id", id.clone());
                    frame.push_header("message-id", id);
                    frame.push_header("subscription", "s0");
                }
                let mut out = BytesMut::new();
                encode(&frame, Version::V1_2, &mut out);
                out.to_vec()
            }
            Op::Heartbeat => b"\n".to_vec(),
            Op::Pump => {
                while let Ok(item) = outbox.try_recv() {
                    session.handle_outbound(item);
                }
                output.check(&mut session)?;
                session.after_flush();
                continue;
            }
            Op::Sync => {
                harness.broker.store().sync().expect("store sync");
                session.on_durable();
                output.check(&mut session)?;
                continue;
            }
            Op::Alarm(on) => {
                session.set_alarm(*on);
                continue;
            }
        };
        for m in mutations {
            mutate::apply(&mut bytes, m, &sent);
        }
        let at = cut.index(bytes.len() + 1);
        for piece in [&bytes[..at], &bytes[at..]] {
            input.extend_from_slice(piece);
            open = session.handle_input(&mut input) == Flow::Continue;
            output.check(&mut session)?;
            if !open {
                break;
            }
        }
        sent.push(bytes);
    }
    while let Ok(item) = outbox.try_recv() {
        session.handle_outbound(item);
    }
    session.shutdown();
    output.check(&mut session)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn random_operations_with_mutated_frames_never_panic_and_the_output_stays_framed(
        hello in hello(),
        steps in prop::collection::vec(step(), 1..48),
    ) {
        thread_local!(static HARNESS: Harness = Harness::new());
        HARNESS.with(|h| run(h, connect_bytes(hello), &steps))?;
    }

    #[test]
    fn a_connect_of_random_bytes_never_panics_and_the_output_stays_framed(
        hello in hello(),
        garbage in prop::collection::vec(any::<u8>(), 0..64),
        mutations in prop::collection::vec(mutate::mutation(), 0..4),
        steps in prop::collection::vec(step(), 0..10),
    ) {
        // Mutations of a real CONNECT, or random bytes behind a CONNECT's command line.
        let mut opening = if mutations.is_empty() {
            [&b"CONNECT\n"[..], &garbage].concat()
        } else {
            connect_bytes(hello)
        };
        let corpus = [opening.clone()];
        for m in &mutations {
            mutate::apply(&mut opening, m, &corpus);
        }
        thread_local!(static HARNESS: Harness = Harness::new());
        HARNESS.with(|h| run(h, opening, &steps))?;
    }
}

#[test]
fn the_fuzzing_client_connects_and_is_delivered_what_it_sends() {
    // Guards the fuzzer itself: its CONNECT and frames are ones the session accepts, so the
    // random operations reach the broker rather than a closed connection.
    let harness = Harness::new();
    for version in Version::ALL {
        let (mut session, mut outbox) = harness.session();
        let mut input = BytesMut::from(&connect_bytes((version, false))[..]);
        let queue = format!("/queue/guard-{}", version.as_str());
        for frame in [
            frame(
                Command::Subscribe,
                &[
                    ("id", Some("s0")),
                    ("destination", Some(&queue)),
                    ("ack", Some("client")),
                ],
            ),
            with_body(
                frame(Command::Send, &[("destination", Some(&queue))]),
                Bytes::from_static(b"m"),
            ),
        ] {
            let mut out = BytesMut::new();
            encode(&frame, Version::V1_2, &mut out);
            input.extend_from_slice(&out);
        }
        assert_eq!(session.handle_input(&mut input), Flow::Continue);
        while let Ok(item) = outbox.try_recv() {
            session.handle_outbound(item);
        }
        let mut output = Output {
            bytes: BytesMut::new(),
            ack_ids: Vec::new(),
        };
        let mut out = BytesMut::from(&session.take_output().unwrap_or_default()[..]);
        let mut commands = Vec::new();
        while let Ok(Some(frame)) = decode(&mut out, &Limits::default(), version) {
            commands.push(frame.command);
            if let Some(id) = frame.get("ack").or_else(|| frame.get("message-id")) {
                output.ack_ids.push(id.to_owned());
            }
        }
        assert_eq!(
            commands,
            [Command::Connected, Command::Message],
            "{version:?}"
        );
        assert_eq!(output.ack_ids.len(), 1);
        session.shutdown();
    }
}
