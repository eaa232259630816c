//! MQTT removes only the queues it made: at startup it keeps a queue another protocol's client
//! declared under an MQTT-style name, and on a store written before queues carried an owner it
//! takes over its sessions' queues once, so they still go with their sessions.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mqtt_proto::{v3, Pid, QoS, TopicFilter};
use rosetta_core::auth::Permissions;
use rosetta_core::front_end::{Flow, Session as _};
use rosetta_core::store::{QueueRecord, Store};
use rosetta_core::{Broker, CoreLimits, Directory, QueueDeclare, QueueOwner, User, Users};
use rosetta_mqtt::topic::session_queue;
use rosetta_mqtt::{MqttConfig, MqttState, Session};
use rosetta_store::SledStore;

/// One run of the broker on the store in `dir`.
struct Run {
    store: Arc<SledStore>,
    broker: Arc<Broker>,
    state: Arc<MqttState>,
}

impl Run {
    fn start(dir: &Path) -> Run {
        // sled's threads of a store just dropped may hold its lock for a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        let store = loop {
            match SledStore::open(dir) {
                Ok(store) => break Arc::new(store),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("store opens: {e}"),
            }
        };
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
        Run {
            store,
            broker,
            state,
        }
    }

    /// Declares a durable queue as an AMQP client would.
    fn declare(&self, name: &str) {
        let vhost = self.broker.vhost("/").expect("vhost");
        vhost.declare_queue(durable(name), 1).expect("declared");
    }

    /// The queue's owner, if the queue exists.
    fn owner(&self, queue: &str) -> Option<Option<QueueOwner>> {
        let vhost = self.broker.vhost("/").expect("vhost");
        vhost.queue(queue).map(|q| q.owner().cloned())
    }

    /// Connects `client_id` over MQTT 3.1.1, subscribes to `filter` if given, and goes away.
    fn client(&self, client_id: &str, clean_session: bool, filter: Option<&str>) {
        let mut session =
            Session::new(self.state.clone(), "127.0.0.1:50000".parse().expect("addr"));
        let mut connect = v3::Connect::new(Arc::from(client_id), 30);
        connect.clean_session = clean_session;
        connect.username = Some("guest".into());
        connect.password = Some(Bytes::from_static(b"guest"));
        let mut input = packet(v3::Packet::Connect(connect).encode());
        if let Some(filter) = filter {
            let pid = Pid::try_from(1).expect("pid");
            let topics = vec![(TopicFilter::try_from(filter).expect("filter"), QoS::Level1)];
            input.extend(packet(
                v3::Packet::Subscribe(v3::Subscribe::new(pid, topics)).encode(),
            ));
        }
        assert_eq!(
            session.handle_input(&mut BytesMut::from(&input[..])),
            Flow::Continue
        );
        session.shutdown();
        self.store.sync().expect("sync");
    }

    fn stop(self) {
        self.store.sync().expect("sync");
    }
}

fn packet<E: std::fmt::Debug>(encoded: Result<impl AsRef<[u8]>, E>) -> Vec<u8> {
    encoded.expect("encode").as_ref().to_vec()
}

fn durable(name: &str) -> QueueDeclare {
    QueueDeclare {
        name: name.into(),
        durable: true,
        ..QueueDeclare::default()
    }
}

#[test]
fn queues_another_client_declared_with_mqtt_names_survive_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = Run::start(dir.path());
    for name in ["mqtt-subscription-nobody", "mqtt-shared-g/a/b"] {
        run.declare(name);
    }
    // MQTT's own queues: one whose session lives on, and one whose session record is gone,
    // as a crash between the two deletions of a session's end leaves it.
    run.client("kept", false, Some("a/b"));
    run.client("crashed", false, Some("a/b"));
    run.store
        .delete_record("mqtt.session", b"/\0crashed")
        .expect("session record deleted");
    run.stop();

    let run = Run::start(dir.path());
    assert_eq!(run.owner("mqtt-subscription-nobody"), Some(None));
    assert_eq!(run.owner("mqtt-shared-g/a/b"), Some(None));
    assert_eq!(
        run.owner(&session_queue("kept")),
        Some(Some(QueueOwner::client("mqtt", "kept")))
    );
    assert_eq!(
        run.owner(&session_queue("crashed")),
        None,
        "MQTT's queue without a session is removed"
    );
    run.stop();
}

#[test]
fn a_session_queue_from_before_queue_owners_is_adopted_once_and_goes_with_its_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = Run::start(dir.path());
    run.client("old", false, Some("a/b"));
    // Turn the store into one written before queues carried an owner: the session's queue
    // record without one, and no record of MQTT having taken its queues over.
    let record = {
        let vhost = run.broker.vhost("/").expect("vhost");
        let queue = vhost.queue(&session_queue("old")).expect("session queue");
        QueueRecord {
            id: queue.id,
            vhost: "/".into(),
            name: queue.name.clone(),
            auto_delete: queue.auto_delete,
            arguments: queue.arguments.clone(),
            owner: None,
        }
    };
    run.store.save_queue(&record).expect("unowned record");
    run.store
        .delete_records("core.queue-owners", b"")
        .expect("forget the adoption");
    // A queue no MQTT session uses, whatever made it: it is left alone.
    run.declare(&session_queue("stranger"));
    run.stop();

    let run = Run::start(dir.path());
    assert_eq!(
        run.owner(&session_queue("old")),
        Some(Some(QueueOwner::client("mqtt", "old")))
    );
    assert_eq!(run.owner(&session_queue("stranger")), Some(None));
    run.stop();

    let run = Run::start(dir.path());
    assert_eq!(
        run.owner(&session_queue("old")),
        Some(Some(QueueOwner::client("mqtt", "old"))),
        "the adoption is on disk"
    );
    // A clean session ends the stored one, and its queue with it.
    run.client("old", true, None);
    assert_eq!(run.owner(&session_queue("old")), None);
    // Adopted once only: a persistent session that reads a queue another client declared
    // under its name does not take it, and leaves it when it ends.
    run.client("stranger", false, Some("a/b"));
    run.stop();
    let run = Run::start(dir.path());
    assert_eq!(run.owner(&session_queue("stranger")), Some(None));
    run.client("stranger", true, None);
    assert_eq!(run.owner(&session_queue("stranger")), Some(None));
    run.stop();
}
