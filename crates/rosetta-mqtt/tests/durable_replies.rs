//! CONNACK and SUBACK of persistent sessions confirm store writes, so they leave only once the
//! store's durable point passes those writes, and never by blocking the connection's thread on
//! an fsync: the store here panics on a blocking sync, and its durable point moves only when
//! the test commits, as if the disk had just finished an fsync.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use mqtt_proto::v5::{
    self, ConnectReasonCode, DisconnectReasonCode, Packet, SubscribeReasonCode, SubscriptionOptions,
};
use mqtt_proto::{v3, Pid, Protocol, QoS, TopicFilter};
use rosetta_core::auth::Permissions;
use rosetta_core::front_end::{Flow, Session as _};
use rosetta_core::testing::ManualDurability;
use rosetta_core::{Broker, CoreLimits, Directory, User, Users};
use rosetta_mqtt::codec::decode;
use rosetta_mqtt::topic::shared_queue;
use rosetta_mqtt::{MqttConfig, MqttState, Session};
use rosetta_store::SledStore;

struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<ManualDurability>,
    broker: Arc<Broker>,
    state: Arc<MqttState>,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let sled = SledStore::open(&dir.path().join("data")).expect("store");
        let store = ManualDurability::new(Arc::new(sled));
        let broker =
            Broker::open(store.clone(), &["/".to_owned()], CoreLimits::default()).expect("broker");
        let users = Arc::new(Directory::new(
            Users::new(vec![User {
                name: "guest".into(),
                password: "guest".into(),
                loopback_only: true,
            }]),
            Permissions::full_access(["guest"], &["/"]),
        ));
        let config = MqttConfig {
            vhost: "/".into(),
            max_packet_size: 1 << 16,
            max_inflight: 16,
            topic_alias_max: 0,
            max_keep_alive: 0,
            max_retained: 0,
            allow_anonymous: false,
            max_subscriptions: 0,
            max_filters_per_subscribe: 0,
            max_topic_levels: 0,
        };
        let state = MqttState::open(broker.clone(), users, config).expect("mqtt state");
        Harness {
            _dir: dir,
            store,
            broker,
            state,
        }
    }

    fn session(&self) -> Session {
        Session::new(self.state.clone(), "127.0.0.1:50000".parse().expect("addr"))
    }
}

fn guest() -> (Option<Arc<str>>, Option<Bytes>) {
    (Some("guest".into()), Some(Bytes::from_static(b"guest")))
}

fn connect3(client_id: &str, clean_session: bool) -> Vec<u8> {
    let mut c = v3::Connect::new(Arc::from(client_id), 30);
    c.clean_session = clean_session;
    (c.username, c.password) = guest();
    bytes(v3::Packet::Connect(c).encode())
}

fn connect5(client_id: &str, clean_start: bool, expiry: u32) -> Vec<u8> {
    let mut c = v5::Connect::new(Arc::from(client_id), 30);
    c.clean_start = clean_start;
    c.properties.session_expiry_interval = Some(expiry);
    (c.username, c.password) = guest();
    bytes(Packet::Connect(c).encode())
}

fn subscribe(protocol: Protocol, filter: &str) -> Vec<u8> {
    let pid = Pid::try_from(1).expect("pid");
    let filter = TopicFilter::try_from(filter).expect("filter");
    if protocol == Protocol::V500 {
        let options = SubscriptionOptions::new(QoS::Level1);
        bytes(Packet::Subscribe(v5::Subscribe::new(pid, vec![(filter, options)])).encode())
    } else {
        let topics = vec![(filter, QoS::Level1)];
        bytes(v3::Packet::Subscribe(v3::Subscribe::new(pid, topics)).encode())
    }
}

fn pingreq() -> Vec<u8> {
    bytes(v3::Packet::Pingreq.encode())
}

fn bytes<E: std::fmt::Debug>(encoded: Result<impl AsRef<[u8]>, E>) -> Vec<u8> {
    encoded.expect("encode").as_ref().to_vec()
}

/// Hands the session `input` as one socket read.
fn send(session: &mut Session, input: &[u8]) {
    assert_eq!(
        session.handle_input(&mut BytesMut::from(input)),
        Flow::Continue
    );
}

/// Everything the session would write to the socket now, decoded. (3.x packets decode with
/// their kind and flags only: reason codes are checked on 5.0.)
fn written(session: &mut Session, protocol: Protocol) -> Vec<Packet> {
    let mut out = BytesMut::from(&session.take_output().unwrap_or_default()[..]);
    let mut packets = Vec::new();
    while let Some(packet) = decode(&mut out, protocol, u32::MAX).expect("whole packets") {
        packets.push(packet);
    }
    assert!(out.is_empty(), "a packet cut short");
    packets
}

/// The disk finishes its fsync: every write so far is durable, and the session hears of it.
fn commit(h: &Harness, session: &mut Session) {
    h.store.commit();
    session.on_durable();
}

fn connack(packets: &[Packet]) -> (bool, ConnectReasonCode) {
    match packets.first() {
        Some(Packet::Connack(c)) => (c.session_present, c.reason_code),
        other => panic!("expected CONNACK first, got {other:?}"),
    }
}

#[test]
fn connack_of_a_new_persistent_session_waits_until_the_session_is_on_disk() {
    let h = Harness::new();
    let mut s = h.session();
    send(&mut s, &connect3("persistent", false));

    assert!(written(&mut s, Protocol::V311).is_empty());
    assert!(s.has_pending_durability());

    commit(&h, &mut s);
    let packets = written(&mut s, Protocol::V311);
    assert_eq!(packets.len(), 1);
    assert_eq!(connack(&packets), (false, ConnectReasonCode::Success));
    assert!(!s.has_pending_durability());
}

#[test]
fn a_clean_session_writes_nothing_durable_and_is_acknowledged_at_once() {
    let h = Harness::new();
    let mut s = h.session();
    send(&mut s, &connect3("clean", true));

    let packets = written(&mut s, Protocol::V311);
    assert_eq!(connack(&packets), (false, ConnectReasonCode::Success));
    assert!(!s.has_pending_durability());
}

#[test]
fn nothing_answering_packets_sent_behind_connect_overtakes_the_held_connack() {
    // [MQTT-3.2.0-1]: CONNACK is the first packet the server sends.
    let h = Harness::new();
    let mut s = h.session();
    let pipelined = [
        connect3("eager", false),
        pingreq(),
        subscribe(Protocol::V311, "a/b"),
    ]
    .concat();
    send(&mut s, &pipelined);
    assert!(written(&mut s, Protocol::V311).is_empty());

    commit(&h, &mut s);
    let packets = written(&mut s, Protocol::V311);
    assert_eq!(connack(&packets), (false, ConnectReasonCode::Success));
    assert_eq!(packets.len(), 3, "{packets:?}");
    assert!(packets.iter().any(|p| matches!(p, Packet::Pingresp)));
    assert!(packets.iter().any(|p| matches!(p, Packet::Suback(_))));
}

#[test]
fn connack_of_a_resumed_session_waits_for_the_bindings_it_restores() {
    let h = Harness::new();
    let filter = "$share/g/a/b";
    let mut first = h.session();
    send(&mut first, &connect5("resumed", false, 60));
    send(&mut first, &subscribe(Protocol::V500, filter));
    commit(&h, &mut first);
    assert_eq!(written(&mut first, Protocol::V500).len(), 2);
    first.shutdown();

    // An operator deletes the shared subscription's queue while the session is away.
    let vhost = h.broker.vhost("/").expect("vhost");
    vhost
        .delete_queue(&shared_queue("g", "a/b"), false, false, 0)
        .expect("queue deleted");
    h.store.commit();

    // Resumed with expiry 0: the session record is not written again, so only the restored
    // queue and binding are there to wait for.
    let mut second = h.session();
    send(&mut second, &connect5("resumed", false, 0));
    assert!(vhost.queue(&shared_queue("g", "a/b")).is_some());
    assert!(written(&mut second, Protocol::V500).is_empty());

    commit(&h, &mut second);
    let packets = written(&mut second, Protocol::V500);
    assert_eq!(connack(&packets), (true, ConnectReasonCode::Success));
}

#[test]
fn connack_of_a_clean_start_waits_until_the_discarded_session_is_gone_from_disk() {
    let h = Harness::new();
    let mut first = h.session();
    send(&mut first, &connect3("discarded", false));
    commit(&h, &mut first);
    first.shutdown();
    h.store.commit();

    // Session Present 0 says the old session is gone; a crash must not bring it back.
    let mut second = h.session();
    send(&mut second, &connect3("discarded", true));
    assert!(written(&mut second, Protocol::V311).is_empty());

    commit(&h, &mut second);
    let packets = written(&mut second, Protocol::V311);
    assert_eq!(connack(&packets), (false, ConnectReasonCode::Success));
}

#[test]
fn suback_of_a_persistent_session_waits_until_the_subscription_is_on_disk() {
    let h = Harness::new();
    let mut s = h.session();
    send(&mut s, &connect5("subscriber", false, 60));
    commit(&h, &mut s);
    assert_eq!(written(&mut s, Protocol::V500).len(), 1);

    send(&mut s, &subscribe(Protocol::V500, "a/+"));
    assert!(written(&mut s, Protocol::V500).is_empty());
    assert!(s.has_pending_durability());

    commit(&h, &mut s);
    match written(&mut s, Protocol::V500).as_slice() {
        [Packet::Suback(suback)] => {
            assert_eq!(suback.topics, vec![SubscribeReasonCode::GrantedQoS1]);
        }
        other => panic!("expected one SUBACK, got {other:?}"),
    }
}

#[test]
fn a_persistent_session_the_store_cannot_write_is_refused() {
    let h = Harness::new();
    h.store.fail_writes(true);
    let mut s = h.session();
    assert_eq!(
        s.handle_input(&mut BytesMut::from(&connect5("unlucky", false, 60)[..])),
        Flow::Close
    );

    let packets = written(&mut s, Protocol::V500);
    assert_eq!(
        connack(&packets),
        (false, ConnectReasonCode::ServerUnavailable)
    );
}

#[test]
fn a_subscription_the_store_cannot_write_is_never_acknowledged() {
    let h = Harness::new();
    let mut s = h.session();
    send(&mut s, &connect5("unlucky", false, 60));
    commit(&h, &mut s);
    assert_eq!(written(&mut s, Protocol::V500).len(), 1);

    h.store.fail_writes(true);
    let _ = s.handle_input(&mut BytesMut::from(&subscribe(Protocol::V500, "a/b")[..]));
    h.store.commit();
    s.on_durable();

    let packets = written(&mut s, Protocol::V500);
    assert!(
        !packets.iter().any(|p| matches!(p, Packet::Suback(_))),
        "{packets:?}"
    );
    match packets.as_slice() {
        [Packet::Disconnect(d)] => {
            assert_eq!(d.reason_code, DisconnectReasonCode::UnspecifiedError);
        }
        other => panic!("expected a DISCONNECT, got {other:?}"),
    }
    assert!(s.is_closing());
}
