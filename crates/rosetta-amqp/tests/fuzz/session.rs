//! The session driven like a connection task would drive it, by a client that completes the
//! handshake and then performs random operations (declare, bind, publish, consume, ack,
//! close...) on a few channels, some of whose frames are mutated on the way, all against a real
//! broker over a temporary store. Whatever happens: no panic, and everything the session writes
//! is a stream of whole frames the codec decodes.

use std::net::SocketAddr;
use std::sync::Arc;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{
    basic, channel, confirm, connection, exchange, queue, tx, AMQPClass, BasicProperties,
};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use rosetta_amqp::codec::{decode_frame, encode_content, encode_frame, PROTOCOL_HEADER};
use rosetta_amqp::session::{Flow, Session, SessionConfig};
use rosetta_core::auth::Permissions;
use rosetta_core::front_end::Session as _;
use rosetta_core::store::Store;
use rosetta_core::{Broker, CoreLimits, Directory, User, Users};
use rosetta_store::SledStore;

use crate::mutate::{self, Mutation};
use crate::{config, FRAME_MAX};

/// One broker for every case of a property: opening a store per case would cost more than the
/// case, and what earlier connections left behind (durable queues, backlogs) is more to hit.
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
}

/// Small name spaces, so that operations meet each other's queues, exchanges and bindings.
fn queue_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["q0", "q1", "q2", "", "amq.gen-x"]).prop_map(String::from)
}

fn exchange_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "x0",
        "x1",
        "",
        "amq.topic",
        "amq.fanout",
        "amq.direct",
    ])
    .prop_map(String::from)
}

fn routing_key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["q0", "q1", "k", "a.b", "*.b", "#", "a.#.b", ""])
        .prop_map(String::from)
}

fn consumer_tag() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["c0", "c1", ""]).prop_map(String::from)
}

/// Queue arguments a client may pass, including limits that make queues drop, expire and
/// dead-letter what they hold.
fn queue_arguments() -> impl Strategy<Value = FieldTable> {
    prop::collection::vec(
        prop_oneof![
            (0..3i32).prop_map(|n| ("x-max-length", AMQPValue::LongInt(n))),
            (0..50i32).prop_map(|n| ("x-message-ttl", AMQPValue::LongInt(n))),
            Just(("x-dead-letter-exchange", AMQPValue::LongString("x0".into()))),
            Just(("x-overflow", AMQPValue::LongString("reject-publish".into()))),
            Just(("x-max-priority", AMQPValue::ShortShortUInt(5))),
            Just(("x-expires", AMQPValue::LongInt(1))),
        ],
        0..3,
    )
    .prop_map(|entries| {
        let mut table = FieldTable::default();
        for (key, value) in entries {
            table.insert(key.into(), value);
        }
        table
    })
}

/// What the client does next.
#[derive(Debug, Clone)]
enum Op {
    /// A method on a channel (boxed: methods are much larger than the other operations).
    Method(u16, Box<AMQPClass>),
    /// `basic.publish` with its content header and body frames.
    Publish {
        channel: u16,
        publish: basic::Publish,
        properties: Box<BasicProperties>,
        body_len: usize,
    },
    Heartbeat,
    /// The connection task hands the session what its queues delivered.
    Pump,
    /// The store's group commit catches up, releasing confirms.
    Sync,
    Alarm(bool),
}

fn channel_id() -> impl Strategy<Value = u16> {
    prop_oneof![8 => 1..4u16, 1 => Just(0u16), 1 => any::<u16>()]
}

fn class() -> impl Strategy<Value = AMQPClass> {
    use AMQPClass::{Basic, Channel, Confirm, Exchange, Queue, Tx};
    prop_oneof![
        Just(Channel(channel::AMQPMethod::Open(channel::Open {}))),
        Just(Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        }))),
        Just(Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}))),
        any::<bool>()
            .prop_map(|active| Channel(channel::AMQPMethod::Flow(channel::Flow { active }))),
        (
            exchange_name(),
            prop::sample::select(vec!["direct", "fanout", "topic", "headers", "x-bogus"]),
            any::<[bool; 3]>()
        )
            .prop_map(|(x, kind, [passive, durable, auto_delete])| {
                Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                    exchange: x.into(),
                    kind: kind.into(),
                    passive,
                    durable,
                    auto_delete,
                    internal: false,
                    nowait: false,
                    arguments: FieldTable::default(),
                }))
            }),
        (exchange_name(), any::<bool>()).prop_map(|(x, if_unused)| {
            Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: x.into(),
                if_unused,
                nowait: false,
            }))
        }),
        (exchange_name(), exchange_name(), routing_key()).prop_map(|(d, s, k)| {
            Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: d.into(),
                source: s.into(),
                routing_key: k.into(),
                nowait: false,
                arguments: FieldTable::default(),
            }))
        }),
        (queue_name(), any::<[bool; 4]>(), queue_arguments()).prop_map(
            |(q, [passive, durable, exclusive, auto_delete], arguments)| {
                Queue(queue::AMQPMethod::Declare(queue::Declare {
                    queue: q.into(),
                    passive,
                    durable,
                    exclusive,
                    auto_delete,
                    nowait: false,
                    arguments,
                }))
            }
        ),
        (queue_name(), exchange_name(), routing_key()).prop_map(|(q, x, k)| {
            Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: q.into(),
                exchange: x.into(),
                routing_key: k.into(),
                nowait: false,
                arguments: FieldTable::default(),
            }))
        }),
        (queue_name(), exchange_name(), routing_key()).prop_map(|(q, x, k)| {
            Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: q.into(),
                exchange: x.into(),
                routing_key: k.into(),
                arguments: FieldTable::default(),
            }))
        }),
        queue_name().prop_map(|q| Queue(queue::AMQPMethod::Purge(queue::Purge {
            queue: q.into(),
            nowait: false,
        }))),
        (queue_name(), any::<[bool; 2]>()).prop_map(|(q, [if_unused, if_empty])| {
            Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: q.into(),
                if_unused,
                if_empty,
                nowait: false,
            }))
        }),
        (0..4u16, any::<bool>()).prop_map(|(prefetch_count, global)| {
            Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count,
                global,
            }))
        }),
        (queue_name(), consumer_tag(), any::<[bool; 2]>()).prop_map(
            |(q, tag, [no_ack, exclusive])| {
                Basic(basic::AMQPMethod::Consume(basic::Consume {
                    queue: q.into(),
                    consumer_tag: tag.into(),
                    no_local: false,
                    no_ack,
                    exclusive,
                    nowait: false,
                    arguments: FieldTable::default(),
                }))
            }
        ),
        consumer_tag().prop_map(|tag| Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: tag.into(),
            nowait: false,
        }))),
        (queue_name(), any::<bool>()).prop_map(|(q, no_ack)| {
            Basic(basic::AMQPMethod::Get(basic::Get {
                queue: q.into(),
                no_ack,
            }))
        }),
        (0..8u64, any::<bool>()).prop_map(|(delivery_tag, multiple)| {
            Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag,
                multiple,
            }))
        }),
        (0..8u64, any::<[bool; 2]>()).prop_map(|(delivery_tag, [multiple, requeue])| {
            Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag,
                multiple,
                requeue,
            }))
        }),
        (0..8u64, any::<bool>()).prop_map(|(delivery_tag, requeue)| {
            Basic(basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag,
                requeue,
            }))
        }),
        any::<bool>()
            .prop_map(|requeue| Basic(basic::AMQPMethod::Recover(basic::Recover { requeue }))),
        Just(Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false
        }))),
        Just(Tx(tx::AMQPMethod::Select(tx::Select {}))),
        Just(Tx(tx::AMQPMethod::Commit(tx::Commit {}))),
        Just(Tx(tx::AMQPMethod::Rollback(tx::Rollback {}))),
    ]
}

fn properties() -> impl Strategy<Value = BasicProperties> {
    (
        prop::option::of(1..3u8),
        prop::option::of(prop::sample::select(vec!["0", "5", "60000", "-1", "x"])),
        prop::option::of(0..10u8),
        any::<bool>(),
    )
        .prop_map(|(mode, expiration, priority, with_headers)| {
            let mut p = BasicProperties::default();
            if let Some(mode) = mode {
                p = p.with_delivery_mode(mode);
            }
            if let Some(e) = expiration {
                p = p.with_expiration(e.into());
            }
            if let Some(priority) = priority {
                p = p.with_priority(priority);
            }
            if with_headers {
                let mut headers = FieldTable::default();
                headers.insert("h".into(), AMQPValue::LongString(LongString::from("v")));
                p = p.with_headers(headers);
            }
            p
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (channel_id(), class()).prop_map(|(c, m)| Op::Method(c, Box::new(m))),
        6 => (channel_id(), exchange_name(), routing_key(), any::<bool>(), properties(), 0..9000usize)
            .prop_map(|(channel, x, key, mandatory, properties, body_len)| Op::Publish {
                channel,
                publish: basic::Publish {
                    exchange: x.into(),
                    routing_key: key.into(),
                    mandatory,
                    immediate: false,
                },
                properties: Box::new(properties),
                body_len,
            }),
        1 => Just(Op::Heartbeat),
        3 => Just(Op::Pump),
        1 => Just(Op::Sync),
        1 => any::<bool>().prop_map(Op::Alarm),
    ]
}

/// An operation, the mutations its frames go through (usually none), and where its bytes are
/// cut into two socket reads.
fn step() -> impl Strategy<Value = (Op, Vec<Mutation>, Index)> {
    (
        op(),
        prop_oneof![7 => Just(Vec::new()), 1 => prop::collection::vec(mutate::mutation(), 1..3)],
        any::<Index>(),
    )
}

fn method_bytes(channel: u16, class: AMQPClass) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(&AMQPFrame::Method(channel, class), &mut out);
    out.to_vec()
}

/// The client's side of the handshake (AMQP 0-9-1 §4.2.2 and connection class), tuned to
/// `frame_max`.
fn handshake(frame_max: u32) -> Vec<u8> {
    let mut capabilities = FieldTable::default();
    capabilities.insert("consumer_cancel_notify".into(), AMQPValue::Boolean(true));
    capabilities.insert("connection.blocked".into(), AMQPValue::Boolean(true));
    let mut client_properties = FieldTable::default();
    client_properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    let mut bytes = PROTOCOL_HEADER.to_vec();
    for method in [
        connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties,
            mechanism: "PLAIN".into(),
            response: LongString::from(&b"\0guest\0guest"[..]),
            locale: "en_US".into(),
        }),
        connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 8,
            frame_max,
            heartbeat: 0,
        }),
        connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        }),
    ] {
        bytes.extend(method_bytes(0, AMQPClass::Connection(method)));
    }
    bytes
}

/// Everything the session wrote so far, checked to be whole frames as it comes.
struct Output {
    bytes: BytesMut,
    header_checked: bool,
}

impl Output {
    fn check(&mut self, session: &mut Session) -> Result<(), TestCaseError> {
        self.bytes
            .extend_from_slice(&session.take_output().unwrap_or_default());
        if !self.header_checked && self.bytes.starts_with(b"AMQP") {
            // Only ever the answer to an unsupported protocol header, and then nothing else.
            prop_assert_eq!(&self.bytes[..], &PROTOCOL_HEADER[..]);
            self.bytes.clear();
        }
        self.header_checked |= !self.bytes.is_empty();
        while !self.bytes.is_empty() {
            match decode_frame(&mut self.bytes, 0) {
                Ok(Some(_)) => {}
                other => prop_assert!(
                    false,
                    "the session wrote a broken frame ({other:?}): {:?}",
                    &self.bytes[..self.bytes.len().min(64)]
                ),
            }
        }
        Ok(())
    }
}

/// Plays `steps` after the handshake (or, with `prefix`, after those raw bytes instead).
fn run(
    harness: &Harness,
    prefix: Option<&[u8]>,
    frame_max: u32,
    steps: &[(Op, Vec<Mutation>, Index)],
) -> Result<(), TestCaseError> {
    let config = SessionConfig {
        frame_max: FRAME_MAX,
        channel_max: 8,
        heartbeat: 0,
        max_message_size: 1 << 20,
        // Small limits, so that operations run into them.
        max_consumers_per_channel: 2,
        max_transaction_frames: 8,
        max_transaction_bytes: 1 << 16,
    };
    let peer: SocketAddr = "127.0.0.1:5672".parse().expect("addr");
    let (mut session, mut outbox) =
        Session::new(harness.broker.clone(), harness.users.clone(), config, peer);
    let mut output = Output {
        bytes: BytesMut::new(),
        header_checked: false,
    };
    let mut input = BytesMut::new();
    let mut open = true;
    let opening = prefix.map_or_else(|| handshake(frame_max), <[u8]>::to_vec);
    input.extend_from_slice(&opening);
    if session.handle_input(&mut input) == Flow::Close {
        open = false;
    }
    output.check(&mut session)?;
    // What the frames of an operation are mutated with: every frame the client sent so far.
    let mut sent: Vec<Vec<u8>> = vec![opening];
    for (op, mutations, cut) in steps {
        if !open {
            break;
        }
        let mut bytes = match op {
            Op::Method(channel, class) => method_bytes(*channel, (**class).clone()),
            Op::Publish {
                channel,
                publish,
                properties,
                body_len,
            } => {
                let mut out = BytesMut::new();
                let body = vec![b'b'; *body_len];
                let method = AMQPClass::Basic(basic::AMQPMethod::Publish(publish.clone()));
                encode_content(*channel, &method, properties, &body, frame_max, &mut out)
                    .expect("a small content header fits any frame");
                out.to_vec()
            }
            Op::Heartbeat => {
                let mut out = BytesMut::new();
                encode_frame(&AMQPFrame::Heartbeat, &mut out);
                out.to_vec()
            }
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
                output.check(&mut session)?;
                continue;
            }
        };
        for m in mutations {
            mutate::apply(&mut bytes, m, &sent);
        }
        let at = cut.index(bytes.len() + 1);
        for piece in [&bytes[..at], &bytes[at..]] {
            input.extend_from_slice(piece);
            if session.handle_input(&mut input) == Flow::Close {
                open = false;
                break;
            }
            output.check(&mut session)?;
        }
        sent.push(bytes);
    }
    while let Ok(item) = outbox.try_recv() {
        session.handle_outbound(item);
    }
    session.shutdown();
    output.check(&mut session)
}

fn tuned_frame_max() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![4096u32, FRAME_MAX])
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn random_operations_with_mutated_frames_never_panic_and_the_output_stays_framed(
        frame_max in tuned_frame_max(),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        thread_local!(static HARNESS: Harness = Harness::new());
        HARNESS.with(|h| run(h, None, frame_max, &steps))?;
    }

    #[test]
    fn a_handshake_of_random_bytes_never_panics_and_the_output_stays_framed(
        prefix in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            prop::collection::vec(mutate::mutation(), 1..4).prop_map(|mutations| {
                let mut bytes = handshake(FRAME_MAX);
                let corpus = [bytes.clone()];
                for m in &mutations {
                    mutate::apply(&mut bytes, m, &corpus);
                }
                bytes
            }),
        ],
        steps in prop::collection::vec(step(), 0..10),
    ) {
        thread_local!(static HARNESS: Harness = Harness::new());
        HARNESS.with(|h| run(h, Some(&prefix), FRAME_MAX, &steps))?;
    }
}

#[test]
fn the_fuzzing_client_gets_through_the_handshake_and_is_delivered_what_it_publishes() {
    // Guards the fuzzer itself: its handshake and frames are ones the session accepts, so the
    // random operations reach the broker rather than a closed connection.
    let harness = Harness::new();
    let config = SessionConfig {
        frame_max: FRAME_MAX,
        channel_max: 8,
        heartbeat: 0,
        max_message_size: 1 << 20,
        max_consumers_per_channel: 0,
        max_transaction_frames: 0,
        max_transaction_bytes: 0,
    };
    let peer: SocketAddr = "127.0.0.1:5672".parse().expect("addr");
    let (mut session, mut outbox) =
        Session::new(harness.broker.clone(), harness.users.clone(), config, peer);
    let mut input = BytesMut::from(&handshake(4096)[..]);
    for class in [
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "greeting".into(),
            passive: false,
            durable: false,
            exclusive: true,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "greeting".into(),
            consumer_tag: "c".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    ] {
        input.extend_from_slice(&method_bytes(1, class));
    }
    let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: "".into(),
        routing_key: "greeting".into(),
        mandatory: false,
        immediate: false,
    }));
    let mut content = BytesMut::new();
    encode_content(
        1,
        &publish,
        &BasicProperties::default(),
        &[b'b'; 5000],
        4096,
        &mut content,
    )
    .expect("content");
    input.extend_from_slice(&content);
    assert_eq!(session.handle_input(&mut input), Flow::Continue);
    while let Ok(item) = outbox.try_recv() {
        session.handle_outbound(item);
    }
    let mut out = BytesMut::from(&session.take_output().unwrap_or_default()[..]);
    let mut names = Vec::new();
    let mut body = 0;
    while let Ok(Some(frame)) = decode_frame(&mut out, 0) {
        match frame {
            AMQPFrame::Method(_, class) => names.push(format!("{:?}", class.get_amqp_method_id())),
            AMQPFrame::Body(_, bytes) => body += bytes.len(),
            _ => {}
        }
    }
    assert!(out.is_empty());
    // start, tune, open-ok, channel open-ok, declare-ok, consume-ok, deliver.
    assert_eq!(names.len(), 7, "{names:?}");
    assert_eq!(body, 5000);
    session.shutdown();
}
