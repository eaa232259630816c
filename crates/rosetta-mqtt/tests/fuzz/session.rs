//! The session driven like a connection task would drive it, by a 3.1.1 or 5.0 client that
//! connects and then subscribes, publishes at every QoS, acknowledges, unsubscribes and
//! disconnects at random, some of its packets mutated on the way, all against a real broker
//! over a temporary store. Whatever happens: no panic, and everything the session writes is a
//! stream of whole packets the codec decodes for the client's protocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Waker;

use bytes::{Bytes, BytesMut};
use mqtt_proto::v5::{self, Packet};
use mqtt_proto::{v3, Pid, Protocol, QoS, QosPid, TopicFilter, TopicName};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use rosetta_core::auth::Permissions;
use rosetta_core::front_end::{Flow, Session as _};
use rosetta_core::store::Store;
use rosetta_core::{Broker, CoreLimits, Directory, User, Users};
use rosetta_mqtt::codec::{decode, decode_connect};
use rosetta_mqtt::{MqttConfig, MqttState, Session};
use rosetta_store::SledStore;

use crate::config;
use crate::mutate::{self, Mutation};

/// One broker for every case of a property: opening a store per case would cost more than the
/// case, and what earlier connections left (persistent sessions, retained messages) is more
/// to hit.
struct Harness {
    _dir: tempfile::TempDir,
    broker: Arc<Broker>,
    state: Arc<MqttState>,
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
        // Small limits, so that operations run into them.
        let config = MqttConfig {
            vhost: "/".into(),
            max_packet_size: 1 << 16,
            max_inflight: 3,
            topic_alias_max: 2,
            max_keep_alive: 60,
            max_retained: 4,
            allow_anonymous: true,
            max_subscriptions: 4,
            max_filters_per_subscribe: 3,
            max_topic_levels: 4,
        };
        let state = MqttState::open(broker.clone(), users, config).expect("mqtt state");
        Harness {
            _dir: dir,
            broker,
            state,
        }
    }
}

/// Small name spaces, so that publishes meet subscriptions and retained messages.
fn topic() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a/b", "a/c", "b", "a/b/c/d/e", "$SYS/x", "a//b"])
}

fn filter() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a/+",
        "a/#",
        "#",
        "+/b",
        "a/b",
        "b",
        "$share/g/a/b",
        "$share/g/#",
        "+/+/+/+/+",
    ])
}

fn qos() -> impl Strategy<Value = QoS> {
    prop::sample::select(vec![QoS::Level0, QoS::Level1, QoS::Level2])
}

fn pid() -> impl Strategy<Value = Pid> {
    (1..6u16).prop_map(|n| Pid::try_from(n).expect("pid"))
}

/// What the client does next.
#[derive(Debug, Clone)]
enum Op {
    Subscribe(Pid, Vec<(&'static str, QoS, bool)>),
    Unsubscribe(Pid, Vec<&'static str>),
    Publish {
        topic: &'static str,
        qos: QoS,
        pid: Pid,
        retain: bool,
        payload: usize,
        /// 5.0 only: a Topic Alias, sent with the topic or instead of it.
        alias: Option<(u16, bool)>,
    },
    Puback(Pid),
    Pubrec(Pid),
    Pubrel(Pid),
    Pubcomp(Pid),
    Pingreq,
    /// A second CONNECT, which the protocol forbids.
    Connect,
    Disconnect(bool),
    /// The connection task hands the session what its queues delivered.
    Pump,
    /// The store's group commit catches up, releasing acknowledgements.
    Sync,
    Alarm(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (pid(), prop::collection::vec((filter(), qos(), any::<bool>()), 1..4))
            .prop_map(|(p, f)| Op::Subscribe(p, f)),
        1 => (pid(), prop::collection::vec(filter(), 1..3)).prop_map(|(p, f)| Op::Unsubscribe(p, f)),
        6 => (topic(), qos(), pid(), any::<bool>(), 0..2000usize, prop::option::of((0..4u16, any::<bool>())))
            .prop_map(|(topic, qos, pid, retain, payload, alias)| Op::Publish {
                topic,
                qos,
                pid,
                retain,
                payload,
                alias,
            }),
        2 => pid().prop_map(Op::Puback),
        1 => pid().prop_map(Op::Pubrec),
        1 => pid().prop_map(Op::Pubrel),
        1 => pid().prop_map(Op::Pubcomp),
        1 => Just(Op::Pingreq),
        1 => Just(Op::Connect),
        1 => any::<bool>().prop_map(Op::Disconnect),
        4 => Just(Op::Pump),
        1 => Just(Op::Sync),
        1 => any::<bool>().prop_map(Op::Alarm),
    ]
}

/// An operation, the mutations its packet goes through (usually none), and where its bytes
/// are cut into two socket reads.
fn step() -> impl Strategy<Value = (Op, Vec<Mutation>, Index)> {
    (
        op(),
        prop_oneof![11 => Just(Vec::new()), 1 => prop::collection::vec(mutate::mutation(), 1..3)],
        any::<Index>(),
    )
}

/// How the client connects.
#[derive(Debug, Clone)]
struct Hello {
    protocol: Protocol,
    client_id: &'static str,
    clean_start: bool,
    login: bool,
    will: bool,
    /// 5.0: Session Expiry Interval and Receive Maximum.
    expiry: Option<u32>,
    receive_max: Option<u16>,
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        prop::sample::select(vec![Protocol::V311, Protocol::V500]),
        prop::sample::select(vec!["c0", "c1", ""]),
        any::<[bool; 3]>(),
        prop::option::of(prop::sample::select(vec![0u32, 60, u32::MAX])),
        prop::option::of(1..4u16),
    )
        .prop_map(
            |(protocol, client_id, [clean_start, login, will], expiry, receive_max)| Hello {
                protocol,
                client_id,
                clean_start,
                login,
                will,
                expiry,
                receive_max,
            },
        )
}

fn encoded5(packet: &Packet) -> Vec<u8> {
    packet.encode().expect("encode").as_ref().to_vec()
}

fn encoded3(packet: &v3::Packet) -> Vec<u8> {
    packet.encode().expect("encode").as_ref().to_vec()
}

fn topic_name(name: &str) -> TopicName {
    TopicName::try_from(name).expect("topic")
}

fn connect_bytes(hello: &Hello) -> Vec<u8> {
    let will_topic = topic_name("will/t");
    let will_payload = Bytes::from_static(b"gone");
    let user = hello.login.then(|| Arc::<str>::from("guest"));
    let password = hello.login.then(|| Bytes::from_static(b"guest"));
    if hello.protocol == Protocol::V500 {
        let mut c = v5::Connect::new(Arc::from(hello.client_id), 30);
        c.clean_start = hello.clean_start;
        c.username = user;
        c.password = password;
        c.properties.session_expiry_interval = hello.expiry;
        c.properties.receive_max = hello.receive_max;
        c.properties.topic_alias_max = Some(2);
        c.last_will = hello
            .will
            .then(|| v5::LastWill::new(QoS::Level1, will_topic, will_payload));
        encoded5(&Packet::Connect(c))
    } else {
        let mut c = v3::Connect::new(Arc::from(hello.client_id), 30);
        c.clean_session = hello.clean_start;
        c.username = user;
        c.password = password;
        c.last_will = hello
            .will
            .then(|| v3::LastWill::new(QoS::Level1, will_topic, will_payload));
        encoded3(&v3::Packet::Connect(c))
    }
}

fn qos_pid(qos: QoS, pid: Pid) -> QosPid {
    match qos {
        QoS::Level0 => QosPid::Level0,
        QoS::Level1 => QosPid::Level1(pid),
        QoS::Level2 => QosPid::Level2(pid),
    }
}

/// The bytes of `op` for a client speaking `protocol`; `None` for the operations that are not
/// packets.
fn op_bytes(op: &Op, hello: &Hello) -> Option<Vec<u8>> {
    let v5 = hello.protocol == Protocol::V500;
    let filter = |f: &str| TopicFilter::try_from(f).expect("filter");
    Some(match op {
        Op::Subscribe(pid, filters) if v5 => {
            let topics = filters
                .iter()
                .map(|(f, qos, no_local)| {
                    let mut options = v5::SubscriptionOptions::new(*qos);
                    options.no_local = *no_local;
                    (filter(f), options)
                })
                .collect();
            encoded5(&Packet::Subscribe(v5::Subscribe::new(*pid, topics)))
        }
        Op::Subscribe(pid, filters) => {
            let topics = filters
                .iter()
                .map(|(f, qos, _)| (filter(f), *qos))
                .collect();
            encoded3(&v3::Packet::Subscribe(v3::Subscribe::new(*pid, topics)))
        }
        Op::Unsubscribe(pid, filters) => {
            let topics = filters.iter().map(|f| filter(f)).collect();
            if v5 {
                encoded5(&Packet::Unsubscribe(v5::Unsubscribe::new(*pid, topics)))
            } else {
                encoded3(&v3::Packet::Unsubscribe(v3::Unsubscribe::new(*pid, topics)))
            }
        }
        Op::Publish {
            topic,
            qos,
            pid,
            retain,
            payload,
            alias,
        } => {
            let body = Bytes::from(vec![b'p'; *payload]);
            if v5 {
                let mut p = v5::Publish::new(qos_pid(*qos, *pid), topic_name(topic), body);
                p.retain = *retain;
                if let Some((alias, with_topic)) = alias {
                    p.properties.topic_alias = Some(*alias);
                    if !with_topic {
                        p.topic_name = topic_name("");
                    }
                }
                encoded5(&Packet::Publish(p))
            } else {
                let mut p = v3::Publish::new(qos_pid(*qos, *pid), topic_name(topic), body);
                p.retain = *retain;
                encoded3(&v3::Packet::Publish(p))
            }
        }
        Op::Puback(pid) if v5 => encoded5(&Packet::Puback(v5::Puback::new_success(*pid))),
        Op::Pubrec(pid) if v5 => encoded5(&Packet::Pubrec(v5::Pubrec::new_success(*pid))),
        Op::Pubrel(pid) if v5 => encoded5(&Packet::Pubrel(v5::Pubrel::new_success(*pid))),
        Op::Pubcomp(pid) if v5 => encoded5(&Packet::Pubcomp(v5::Pubcomp::new_success(*pid))),
        Op::Puback(pid) => encoded3(&v3::Packet::Puback(*pid)),
        Op::Pubrec(pid) => encoded3(&v3::Packet::Pubrec(*pid)),
        Op::Pubrel(pid) => encoded3(&v3::Packet::Pubrel(*pid)),
        Op::Pubcomp(pid) => encoded3(&v3::Packet::Pubcomp(*pid)),
        Op::Pingreq => vec![0xc0, 0],
        Op::Connect => connect_bytes(hello),
        Op::Disconnect(with_will) if v5 => {
            let reason = if *with_will {
                v5::DisconnectReasonCode::DisconnectWithWillMessage
            } else {
                v5::DisconnectReasonCode::NormalDisconnect
            };
            encoded5(&Packet::Disconnect(v5::Disconnect::new(reason)))
        }
        Op::Disconnect(_) => vec![0xe0, 0],
        Op::Pump | Op::Sync | Op::Alarm(_) => return None,
    })
}

/// Everything the session wrote so far, checked to be whole packets as it comes.
struct Output {
    bytes: BytesMut,
    /// The protocol the client's CONNECT asked for; while unknown, 3.1.1 and 5.0 are tried.
    protocol: Option<Protocol>,
}

impl Output {
    fn check(&mut self, session: &mut Session) -> Result<(), TestCaseError> {
        if let Some(bytes) = session.take_output() {
            self.bytes.extend_from_slice(&bytes);
        }
        let protocols = match self.protocol {
            Some(p) => vec![p],
            None => vec![Protocol::V311, Protocol::V500],
        };
        let whole = protocols.iter().any(|&protocol| {
            let mut buf = self.bytes.clone();
            while !buf.is_empty() {
                if !matches!(decode(&mut buf, protocol, u32::MAX), Ok(Some(_))) {
                    return false;
                }
            }
            true
        });
        prop_assert!(
            whole,
            "the session wrote a broken packet: {:?}",
            &self.bytes[..self.bytes.len().min(64)]
        );
        self.bytes.clear();
        Ok(())
    }
}

/// Hands the session what its queues delivered, as the connection task does.
fn pump(
    session: &mut Session,
    outbox: &mut Option<tokio::sync::mpsc::UnboundedReceiver<rosetta_core::Outbound>>,
) {
    if outbox.is_none() {
        *outbox = session.take_outbox(Waker::noop());
    }
    if let Some(rx) = outbox {
        while let Ok(item) = rx.try_recv() {
            session.handle_outbound(item);
        }
    }
}

/// Connects with `opening` (a CONNECT, or whatever the case made of it), then plays `steps`.
fn run(
    harness: &Harness,
    hello: &Hello,
    opening: Vec<u8>,
    steps: &[(Op, Vec<Mutation>, Index)],
) -> Result<(), TestCaseError> {
    let peer: SocketAddr = "127.0.0.1:1883".parse().expect("addr");
    let mut session = Session::new(harness.state.clone(), peer);
    let mut outbox = None;
    // The protocol the session will speak, read from the opening as the session reads it.
    let protocol = match decode_connect(&mut BytesMut::from(&opening[..]), u32::MAX) {
        Ok(Some((protocol, _))) => Some(protocol),
        _ => None,
    };
    let mut output = Output {
        bytes: BytesMut::new(),
        protocol,
    };
    let mut input = BytesMut::from(&opening[..]);
    let mut open = session.handle_input(&mut input) == Flow::Continue;
    output.check(&mut session)?;
    let mut sent = vec![opening];
    for (op, mutations, cut) in steps {
        if !open {
            break;
        }
        let Some(mut bytes) = op_bytes(op, hello) else {
            match op {
                Op::Sync => {
                    harness.broker.store().sync().expect("store sync");
                    session.on_durable();
                }
                Op::Alarm(on) => session.set_alarm(*on),
                _ => {
                    pump(&mut session, &mut outbox);
                    output.check(&mut session)?;
                    session.after_flush();
                }
            }
            output.check(&mut session)?;
            continue;
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
    pump(&mut session, &mut outbox);
    session.shutdown();
    output.check(&mut session)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn random_operations_with_mutated_packets_never_panic_and_the_output_stays_whole(
        hello in hello(),
        steps in prop::collection::vec(step(), 1..48),
    ) {
        thread_local!(static HARNESS: Harness = Harness::new());
        HARNESS.with(|h| run(h, &hello, connect_bytes(&hello), &steps))?;
    }

    #[test]
    fn a_connect_of_random_bytes_never_panics_and_the_output_stays_whole(
        hello in hello(),
        garbage in prop::collection::vec(any::<u8>(), 0..64),
        mutations in prop::collection::vec(mutate::mutation(), 0..4),
        steps in prop::collection::vec(step(), 0..10),
    ) {
        // Mutations of a real CONNECT, or random bytes behind a CONNECT's first byte.
        let mut opening = if mutations.is_empty() {
            [&[0x10][..], &garbage].concat()
        } else {
            connect_bytes(&hello)
        };
        let corpus = [opening.clone()];
        for m in &mutations {
            mutate::apply(&mut opening, m, &corpus);
        }
        thread_local!(static HARNESS: Harness = Harness::new());
        HARNESS.with(|h| run(h, &hello, opening, &steps))?;
    }
}

#[test]
fn the_fuzzing_client_connects_and_is_delivered_what_it_publishes() {
    // Guards the fuzzer itself: its CONNECT and packets are ones the session accepts, so the
    // random operations reach the broker rather than a closed connection.
    let harness = Harness::new();
    for protocol in [Protocol::V311, Protocol::V500] {
        let hello = Hello {
            protocol,
            client_id: "guard",
            clean_start: true,
            login: true,
            will: false,
            expiry: None,
            receive_max: None,
        };
        let one = Pid::try_from(1).expect("pid");
        let mut session = Session::new(
            harness.state.clone(),
            "127.0.0.1:1883".parse().expect("addr"),
        );
        let mut input = BytesMut::from(&connect_bytes(&hello)[..]);
        for op in [
            Op::Subscribe(one, vec![("a/+", QoS::Level1, false)]),
            Op::Publish {
                topic: "a/b",
                qos: QoS::Level1,
                pid: one,
                retain: false,
                payload: 3,
                alias: None,
            },
        ] {
            input.extend_from_slice(&op_bytes(&op, &hello).expect("a packet"));
        }
        assert_eq!(session.handle_input(&mut input), Flow::Continue);
        harness.broker.store().sync().expect("sync");
        session.on_durable();
        let mut outbox = None;
        pump(&mut session, &mut outbox);
        let mut out = BytesMut::from(&session.take_output().expect("output")[..]);
        let mut kinds = Vec::new();
        while let Ok(Some(packet)) = decode(&mut out, protocol, u32::MAX) {
            kinds.push(match packet {
                Packet::Connack(c) => format!("connack {:?}", c.reason_code),
                Packet::Suback(_) => "suback".into(),
                Packet::Puback(_) => "puback".into(),
                Packet::Publish(p) => format!("publish {}", &*p.topic_name),
                other => format!("{other:?}"),
            });
        }
        assert!(out.is_empty());
        kinds.sort();
        assert_eq!(
            kinds,
            ["connack Success", "puback", "publish a/b", "suback"],
            "{protocol:?}"
        );
        session.shutdown();
    }
}
