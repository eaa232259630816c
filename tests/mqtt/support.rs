//! Helpers shared by the MQTT tests: brokers with the MQTT listener on, rumqttc clients (3.1.1
//! and 5.0) whose events can be awaited with a deadline, a raw MQTT client for exact packet
//! sequences and bad input, and a little AMQP for the crossings.

#![allow(dead_code)]

use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mqtt_proto::{v3, v5};
use rosetta_tests::mqtt3::Mqtt3;
use rosetta_tests::Broker;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::task::JoinHandle;

/// How long one test may run before it is failed.
pub const TEST_DEADLINE: Duration = Duration::from_secs(90);
/// How long to wait for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long to watch for something that should not happen.
pub const QUIET: Duration = Duration::from_millis(400);

pub const MQTT_ON: &str = "[mqtt]\nenabled = true\nlisten = \"127.0.0.1:0\"\n";

/// A broker with the MQTT listener on an ephemeral loopback port, plus `extra` TOML.
pub fn broker_with(extra: &str) -> Broker {
    Broker::start_with(&format!("{MQTT_ON}{extra}"))
}

pub fn broker() -> Broker {
    broker_with("")
}

/// A [`broker_with`] `extra` that also serves `/metrics` and the management API.
pub fn broker_with_http(extra: &str) -> Broker {
    Broker::builder()
        .config(&format!("{MQTT_ON}{extra}"))
        .with_http()
        .start()
}

/// Rounds of [`publishes_missed_by_an_early_subscriber`](rosetta_tests::publishes_missed_by_an_early_subscriber)
/// a test runs: one round hits the window only sometimes.
pub const ROUNDS: u16 = 300;

/// A [`Mqtt3`] client logged in as guest over TCP, its reads failing after [`WAIT`].
pub fn mqtt3_tcp(port: u16, client_id: &str) -> Mqtt3<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the MQTT port");
    stream.set_nodelay(true).expect("nodelay");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    Mqtt3::connect(stream, client_id)
}

pub fn port(broker: &Broker) -> u16 {
    broker
        .addr("mqtt")
        .expect("the broker has no MQTT listener")
        .port()
}

/// Runs an async test body on a fresh runtime, failing it after [`TEST_DEADLINE`].
pub fn run<F: Future<Output = ()>>(body: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        if tokio::time::timeout(TEST_DEADLINE, body).await.is_err() {
            panic!("test did not finish within {TEST_DEADLINE:?}");
        }
    });
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Aborts the event-loop task when the client goes, so its socket closes with it.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A rumqttc 3.1.1 client whose events are queued for the test.
pub struct V4 {
    pub client: rumqttc::AsyncClient,
    events: UnboundedReceiver<Result<rumqttc::Event, String>>,
    _task: Task,
    pub session_present: bool,
}

pub fn v4_options(port: u16, id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    o.set_credentials("guest", "guest");
    o.set_keep_alive(Duration::from_secs(30));
    o
}

impl V4 {
    pub async fn connect(port: u16, id: &str, clean: bool) -> V4 {
        let mut o = v4_options(port, id);
        o.set_clean_session(clean);
        V4::with(o).await
    }

    /// Connects with `options`; panics unless the broker accepts.
    pub async fn with(options: rumqttc::MqttOptions) -> V4 {
        match V4::try_with(options).await {
            Ok(c) => c,
            Err(e) => panic!("MQTT 3.1.1 connect failed: {e}"),
        }
    }

    pub async fn try_with(options: rumqttc::MqttOptions) -> Result<V4, String> {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
        let (tx, mut rx) = unbounded_channel();
        let task = Task(tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(e) => {
                        if tx.send(Ok(e)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        }));
        let session_present = loop {
            match tokio::time::timeout(WAIT, rx.recv()).await {
                Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))))) => {
                    break ack.session_present
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) => return Err("event loop ended".into()),
                Err(_) => return Err("no CONNACK".into()),
            }
        };
        Ok(V4 {
            client,
            events: rx,
            _task: task,
            session_present,
        })
    }

    /// The next incoming packet, skipping outgoing events; `None` at the deadline.
    pub async fn next_incoming(
        &mut self,
        within: Duration,
    ) -> Option<Result<rumqttc::Packet, String>> {
        let end = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(end, self.events.recv()).await {
                Ok(Some(Ok(rumqttc::Event::Incoming(p)))) => return Some(Ok(p)),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Some(Err(e)),
                Ok(None) => return Some(Err("event loop ended".into())),
                Err(_) => return None,
            }
        }
    }

    /// The next PUBLISH from the broker.
    pub async fn publish(&mut self) -> rumqttc::Publish {
        let end = tokio::time::Instant::now() + WAIT;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match self.next_incoming(left).await {
                Some(Ok(rumqttc::Packet::Publish(p))) => return p,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed while waiting for a PUBLISH: {e}"),
                None => panic!("no PUBLISH within {WAIT:?}"),
            }
        }
    }

    /// Asserts that no PUBLISH arrives for a while.
    pub async fn no_publish(&mut self) {
        let end = tokio::time::Instant::now() + QUIET;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match self.next_incoming(left).await {
                Some(Ok(rumqttc::Packet::Publish(p))) => panic!("unexpected PUBLISH {p:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed: {e}"),
                None => return,
            }
        }
    }

    /// Subscribes and waits for the SUBACK; returns its return codes.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("subscribe request");
        loop {
            match self.next_incoming(WAIT).await {
                Some(Ok(rumqttc::Packet::SubAck(ack))) => return ack.return_codes,
                Some(Ok(_)) => continue,
                other => panic!("no SUBACK: {other:?}"),
            }
        }
    }

    /// Publishes and, for QoS 1 and 2, waits until the broker completed it.
    pub async fn send(&mut self, topic: &str, qos: rumqttc::QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .expect("publish request");
        if qos == rumqttc::QoS::AtMostOnce {
            return;
        }
        loop {
            match self.next_incoming(WAIT).await {
                Some(Ok(rumqttc::Packet::PubAck(_) | rumqttc::Packet::PubComp(_))) => return,
                Some(Ok(_)) => continue,
                other => panic!("publish to {topic} not completed: {other:?}"),
            }
        }
    }

    /// Waits for the connection to fail (closed by the broker); returns the error text.
    pub async fn closed(&mut self) -> String {
        loop {
            match self.next_incoming(WAIT).await {
                Some(Err(e)) => return e,
                Some(Ok(_)) => continue,
                None => panic!("connection still open after {WAIT:?}"),
            }
        }
    }

    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect request");
        // The event loop reports the DISCONNECT sent, then the closed socket.
        let _ = self.next_incoming(Duration::from_secs(2)).await;
    }
}

/// A rumqttc 5.0 client whose events are queued for the test.
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    events: UnboundedReceiver<Result<rumqttc::v5::Event, String>>,
    _task: Task,
    pub connack: rumqttc::v5::mqttbytes::v5::ConnAck,
}

pub fn v5_options(port: u16, id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    o.set_credentials("guest", "guest");
    o.set_keep_alive(Duration::from_secs(30));
    o
}

type V5Packet = rumqttc::v5::mqttbytes::v5::Packet;

impl V5 {
    pub async fn connect(port: u16, id: &str) -> V5 {
        V5::with(v5_options(port, id)).await
    }

    pub async fn with(options: rumqttc::v5::MqttOptions) -> V5 {
        match V5::try_with(options).await {
            Ok(c) => c,
            Err(e) => panic!("MQTT 5.0 connect failed: {e}"),
        }
    }

    pub async fn try_with(options: rumqttc::v5::MqttOptions) -> Result<V5, String> {
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 100);
        let (tx, mut rx) = unbounded_channel();
        let task = Task(tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(e) => {
                        if tx.send(Ok(e)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:?}")));
                        return;
                    }
                }
            }
        }));
        let connack = loop {
            match tokio::time::timeout(WAIT, rx.recv()).await {
                Ok(Some(Ok(rumqttc::v5::Event::Incoming(V5Packet::ConnAck(ack))))) => break ack,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) => return Err("event loop ended".into()),
                Err(_) => return Err("no CONNACK".into()),
            }
        };
        Ok(V5 {
            client,
            events: rx,
            _task: task,
            connack,
        })
    }

    pub async fn next_incoming(&mut self, within: Duration) -> Option<Result<V5Packet, String>> {
        let end = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(end, self.events.recv()).await {
                Ok(Some(Ok(rumqttc::v5::Event::Incoming(p)))) => return Some(Ok(p)),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Some(Err(e)),
                Ok(None) => return Some(Err("event loop ended".into())),
                Err(_) => return None,
            }
        }
    }

    pub async fn publish(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        let end = tokio::time::Instant::now() + WAIT;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match self.next_incoming(left).await {
                Some(Ok(V5Packet::Publish(p))) => return p,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed while waiting for a PUBLISH: {e}"),
                None => panic!("no PUBLISH within {WAIT:?}"),
            }
        }
    }

    pub async fn no_publish(&mut self) {
        let end = tokio::time::Instant::now() + QUIET;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match self.next_incoming(left).await {
                Some(Ok(V5Packet::Publish(p))) => panic!("unexpected PUBLISH {p:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed: {e}"),
                None => return,
            }
        }
    }

    /// Waits for the SUBACK of a subscribe already requested; returns its reason codes.
    pub async fn suback(&mut self) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        loop {
            match self.next_incoming(WAIT).await {
                Some(Ok(V5Packet::SubAck(ack))) => return ack.return_codes,
                Some(Ok(_)) => continue,
                other => panic!("no SUBACK: {other:?}"),
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::v5::mqttbytes::QoS) {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("subscribe request");
        let codes = self.suback().await;
        assert!(
            codes
                .iter()
                .all(|c| !format!("{c:?}").contains("Failure")
                    && !format!("{c:?}").contains("Error")),
            "{codes:?}"
        );
    }

    /// Waits for the broker's reply to a QoS 1 or 2 publish already requested.
    pub async fn completed(&mut self) -> V5Packet {
        loop {
            match self.next_incoming(WAIT).await {
                Some(Ok(p @ (V5Packet::PubAck(_) | V5Packet::PubComp(_)))) => return p,
                Some(Ok(_)) => continue,
                other => panic!("publish not completed: {other:?}"),
            }
        }
    }

    pub async fn closed(&mut self) -> String {
        loop {
            match self.next_incoming(WAIT).await {
                Some(Err(e)) => return e,
                Some(Ok(V5Packet::Disconnect(d))) => return format!("{d:?}"),
                Some(Ok(_)) => continue,
                None => panic!("connection still open after {WAIT:?}"),
            }
        }
    }

    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect request");
        let _ = self.next_incoming(Duration::from_secs(2)).await;
    }
}

/// What came instead of a packet.
#[derive(Debug, PartialEq)]
pub enum ReadEnd {
    Timeout,
    Closed,
}

/// A raw MQTT client: packets are built with the mqtt-proto codec (or by hand, for bad input)
/// and read back whole, one at a time.
pub struct Raw {
    stream: TcpStream,
    input: Vec<u8>,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the MQTT port");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            input: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the broker");
    }

    /// The socket and what was read from it past the last whole packet, for tests that need
    /// the socket's own errors (a reset rather than an orderly close).
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.input)
    }

    pub fn send5(&mut self, packet: v5::Packet) {
        let bytes = packet.encode().expect("encode");
        self.send(bytes.as_ref());
    }

    pub fn send3(&mut self, packet: v3::Packet) {
        let bytes = packet.encode().expect("encode");
        self.send(bytes.as_ref());
    }

    /// The next whole packet's bytes.
    fn read_bytes(&mut self, within: Duration) -> Result<Vec<u8>, ReadEnd> {
        let end = Instant::now() + within;
        loop {
            if let Some(total) = packet_len(&self.input) {
                if self.input.len() >= total {
                    return Ok(self.input.drain(..total).collect());
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadEnd::Timeout);
            }
            self.stream
                .set_read_timeout(Some(left))
                .expect("read timeout");
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ReadEnd::Closed),
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(ReadEnd::Timeout)
                }
                Err(_) => return Err(ReadEnd::Closed),
            }
        }
    }

    pub fn read5_within(&mut self, within: Duration) -> Result<v5::Packet, ReadEnd> {
        let bytes = self.read_bytes(within)?;
        Ok(v5::Packet::decode(&bytes)
            .expect("broker sent a valid 5.0 packet")
            .expect("whole packet"))
    }

    pub fn read5(&mut self) -> Result<v5::Packet, ReadEnd> {
        self.read5_within(WAIT)
    }

    pub fn read3(&mut self) -> Result<v3::Packet, ReadEnd> {
        let bytes = self.read_bytes(WAIT)?;
        Ok(v3::Packet::decode(&bytes)
            .expect("broker sent a valid 3.1.1 packet")
            .expect("whole packet"))
    }

    /// Reads until the broker closes the connection; returns what it sent before.
    pub fn until_closed5(&mut self) -> Vec<v5::Packet> {
        let mut got = Vec::new();
        loop {
            match self.read5() {
                Ok(p) => got.push(p),
                Err(ReadEnd::Closed) => return got,
                Err(ReadEnd::Timeout) => {
                    panic!("connection still open after {WAIT:?}; got {got:?}")
                }
            }
        }
    }

    /// Whether the broker closes the connection without sending anything more.
    pub fn closed_silently(&mut self) -> bool {
        matches!(self.read_bytes(WAIT), Err(ReadEnd::Closed))
    }
}

pub use rosetta_tests::mqtt3::packet_len;

/// A 5.0 CONNECT as guest.
pub fn connect5(client_id: &str, clean_start: bool) -> v5::Connect {
    let mut c = v5::Connect::new(client_id.into(), 30);
    c.clean_start = clean_start;
    c.username = Some("guest".into());
    c.password = Some(bytes::Bytes::from_static(b"guest"));
    c
}

/// A 3.1.1 CONNECT as guest.
pub fn connect3(client_id: &str, clean_session: bool) -> v3::Connect {
    let mut c = v3::Connect::new(client_id.into(), 30);
    c.clean_session = clean_session;
    c.username = Some("guest".into());
    c.password = Some(bytes::Bytes::from_static(b"guest"));
    c
}

/// Connects a raw 5.0 client and returns it with the CONNACK.
pub fn raw5(port: u16, connect: v5::Connect) -> (Raw, v5::Connack) {
    let mut raw = Raw::connect(port);
    raw.send5(v5::Packet::Connect(connect));
    match raw.read5() {
        Ok(v5::Packet::Connack(ack)) => (raw, ack),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Connects a raw 3.1.1 client and returns it with the CONNACK.
pub fn raw3(port: u16, connect: v3::Connect) -> (Raw, v3::Connack) {
    let mut raw = Raw::connect(port);
    raw.send3(v3::Packet::Connect(connect));
    match raw.read3() {
        Ok(v3::Packet::Connack(ack)) => (raw, ack),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

pub fn pid(n: u16) -> mqtt_proto::Pid {
    mqtt_proto::Pid::try_from(n).expect("non-zero packet id")
}

pub fn topic(name: &str) -> mqtt_proto::TopicName {
    mqtt_proto::TopicName::try_from(name).expect("valid topic name")
}

pub fn filter(name: &str) -> mqtt_proto::TopicFilter {
    mqtt_proto::TopicFilter::try_from(name).expect("valid topic filter")
}

/// A 5.0 SUBSCRIBE of one filter.
pub fn subscribe5(id: u16, f: &str, qos: mqtt_proto::QoS) -> v5::Packet {
    let mut options = v5::SubscriptionOptions::new(qos);
    options.retain_as_published = false;
    v5::Packet::Subscribe(v5::Subscribe::new(pid(id), vec![(filter(f), options)]))
}

/// Expects a SUBACK next and returns its reason codes.
#[track_caller]
pub fn suback5(raw: &mut Raw) -> Vec<v5::SubscribeReasonCode> {
    match raw.read5() {
        Ok(v5::Packet::Suback(s)) => s.topics,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// A lapin connection to the broker's AMQP port.
pub async fn amqp_connection(broker: &Broker) -> lapin::Connection {
    tokio::time::timeout(
        WAIT,
        lapin::Connection::connect(&broker.amqp_url(), lapin::ConnectionProperties::default()),
    )
    .await
    .expect("AMQP connect timed out")
    .expect("AMQP connect")
}

/// A channel on a new lapin connection to the broker's AMQP port.
pub async fn amqp(broker: &Broker) -> lapin::Channel {
    let conn = amqp_connection(broker).await;
    let channel = conn.create_channel().await.expect("channel");
    // The connection lives as long as the test's runtime.
    std::mem::forget(conn);
    channel
}

/// Whether `queue` exists, asked with a passive queue.declare on a channel of its own (a
/// missing queue closes the channel with 404).
pub async fn queue_exists(conn: &lapin::Connection, queue: &str) -> bool {
    let channel = conn.create_channel().await.expect("channel");
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let found = channel
        .queue_declare(queue.into(), passive, lapin::types::FieldTable::default())
        .await
        .is_ok();
    if found {
        let _ = channel.close(200, "OK".into()).await;
    }
    found
}

/// Waits until `queue` exists (`true`) or is gone (`false`); panics at the deadline.
pub async fn wait_queue(broker: &Broker, queue: &str, exists: bool) {
    let conn = amqp_connection(broker).await;
    let end = tokio::time::Instant::now() + WAIT;
    while queue_exists(&conn, queue).await != exists {
        assert!(
            tokio::time::Instant::now() < end,
            "queue {queue} {} within {WAIT:?}",
            if exists {
                "did not appear"
            } else {
                "still exists"
            }
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for one message in `queue` (acknowledged on receipt).
pub async fn amqp_get(channel: &lapin::Channel, queue: &str) -> lapin::message::BasicGetMessage {
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        let got = channel
            .basic_get(
                queue.into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get");
        if let Some(m) = got {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no message in {queue} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
