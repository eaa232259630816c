//! Helpers shared by the lapin tests: a runtime with a deadline, connections that remember
//! channel errors, publishing with confirms, draining queues, reading headers.

#![allow(dead_code)]

use futures_lite::stream::{Stream, StreamExt};
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer, Error,
    ErrorKind, Event, ExchangeKind, Queue,
};
use rosetta_tests::Broker;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub use rosetta_tests::raw::code;

/// How long one test may run before it is failed (a hung broker must not hang the suite).
pub const TEST_DEADLINE: Duration = Duration::from_secs(90);
/// How long to wait for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long to watch for something that should not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// Runs an async test body on a fresh multi-threaded runtime, failing it after [`TEST_DEADLINE`].
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

/// A name no other test uses: `prefix.<pid>.<n>`.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The reply code of an AMQP error (a channel or connection close), if that is what it is.
pub fn code_of(error: &Error) -> Option<u16> {
    match error.kind() {
        ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

/// Asserts that `result` failed with the AMQP reply `expected`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Error>, expected: u16) {
    match result {
        Ok(value) => panic!("expected AMQP error {expected}, got Ok({value:?})"),
        Err(error) => assert_eq!(
            code_of(&error),
            Some(expected),
            "expected AMQP error {expected}, got {error:?}"
        ),
    }
}

type Events = Pin<Box<dyn Stream<Item = Event> + Send>>;

/// A lapin connection that also listens for the errors the broker reports asynchronously
/// (a `channel.close` after a publish, say).
pub struct Client {
    pub conn: Connection,
    events: Mutex<Option<Events>>,
}

impl std::ops::Deref for Client {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Client {
    pub async fn channel(&self) -> Channel {
        self.conn.create_channel().await.expect("create channel")
    }

    /// A channel in publisher-confirm mode.
    pub async fn confirm_channel(&self) -> Channel {
        let channel = self.channel().await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        channel
    }

    /// Waits for the next error the broker reported on this connection (a channel or connection
    /// close) and returns its reply code.
    pub async fn next_error_code(&self) -> u16 {
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("events stream in use");
        let result = tokio::time::timeout(WAIT, async {
            while let Some(event) = events.next().await {
                if let Event::Error(error) = event {
                    if let Some(code) = code_of(&error) {
                        return Some(code);
                    }
                }
            }
            None
        })
        .await;
        *self.events.lock().unwrap_or_else(|p| p.into_inner()) = Some(events);
        match result {
            Ok(Some(code)) => code,
            Ok(None) => panic!("connection events ended without an AMQP error"),
            Err(_) => panic!("no AMQP error reported within {WAIT:?}"),
        }
    }

    /// Closes the connection gracefully. lapin reports `InvalidChannelState` from `close` when a
    /// dropped channel's own `channel.close` is still in flight (a client-side race, whatever
    /// the broker does); the connection still ends, so that case is accepted.
    pub async fn close(&self) {
        match self.conn.close(200, "bye".into()).await {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::InvalidChannelState(..)) => {
                let closed =
                    rosetta_tests::eventually(WAIT, || async { !self.conn.status().connected() })
                        .await;
                assert!(closed, "connection still open after close: {e:?}");
            }
            Err(e) => panic!("connection.close: {e:?}"),
        }
    }
}

/// Connects as guest/guest to the broker's AMQP port.
pub async fn connect(broker: &Broker) -> Client {
    connect_url(&broker.amqp_url()).await
}

/// Connects to `url` (query parameters such as `?heartbeat=1` are honoured).
pub async fn connect_url(url: &str) -> Client {
    let conn = tokio::time::timeout(
        WAIT,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .unwrap_or_else(|_| panic!("connect to {url} timed out"))
    .unwrap_or_else(|e| panic!("connect to {url}: {e:?}"));
    let events: Events = Box::pin(conn.events_listener());
    Client {
        conn,
        events: Mutex::new(Some(events)),
    }
}

/// Builds a field table from pairs.
pub fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert(ShortString::from(*key), value.clone());
    }
    table
}

pub fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

pub fn long(n: i64) -> AMQPValue {
    AMQPValue::LongLongInt(n)
}

pub fn int(n: i32) -> AMQPValue {
    AMQPValue::LongInt(n)
}

/// Persistent delivery mode.
pub fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Declares a queue (non-durable unless `options` say otherwise) and returns the declare-ok.
pub async fn declare(
    channel: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> Queue {
    channel
        .queue_declare(name.into(), options, args)
        .await
        .unwrap_or_else(|e| panic!("queue.declare {name}: {e:?}"))
}

/// Declares a non-durable exchange.
pub async fn declare_exchange(channel: &Channel, name: &str, kind: ExchangeKind) {
    channel
        .exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("exchange.declare {name}: {e:?}"));
}

/// Binds `queue` to `exchange` with `key` and no arguments.
pub async fn bind_queue(channel: &Channel, queue: &str, exchange: &str, key: &str) {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("queue.bind {queue} -> {exchange} ({key}): {e:?}"));
}

/// Declares a plain queue with arguments.
pub async fn declare_with(channel: &Channel, name: &str, args: FieldTable) -> Queue {
    declare(channel, name, QueueDeclareOptions::default(), args).await
}

/// Declares a plain queue.
pub async fn declare_queue(channel: &Channel, name: &str) -> Queue {
    declare(
        channel,
        name,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// Publishes and, on a confirm channel, waits for the broker's confirmation.
/// On a plain channel the returned confirmation is `NotRequested`.
pub async fn publish_props(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Confirmation {
    publish_opts(
        channel,
        exchange,
        routing_key,
        BasicPublishOptions::default(),
        body,
        properties,
    )
    .await
}

pub async fn publish_opts(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    options: BasicPublishOptions,
    body: &[u8],
    properties: BasicProperties,
) -> Confirmation {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            options,
            body,
            properties,
        )
        .await
        .unwrap_or_else(|e| panic!("basic.publish to {exchange:?}/{routing_key:?}: {e:?}"));
    tokio::time::timeout(WAIT, confirm)
        .await
        .unwrap_or_else(|_| panic!("no confirm for publish to {exchange:?}/{routing_key:?}"))
        .unwrap_or_else(|e| panic!("confirm for publish to {exchange:?}/{routing_key:?}: {e:?}"))
}

/// Publishes a text body with default properties; asserts a confirm-mode ack.
pub async fn publish(channel: &Channel, exchange: &str, routing_key: &str, body: &str) {
    let confirmation = publish_props(
        channel,
        exchange,
        routing_key,
        body.as_bytes(),
        BasicProperties::default(),
    )
    .await;
    assert!(
        confirmation.is_ack() || !channel.status().confirm(),
        "publish of {body:?} to {exchange:?}/{routing_key:?} was not acked: {confirmation:?}"
    );
}

/// Publishes each body to the default exchange for `queue`, confirmed when in confirm mode.
pub async fn publish_all(channel: &Channel, queue: &str, bodies: &[&str]) {
    for body in bodies {
        publish(channel, "", queue, body).await;
    }
}

/// Publishes `body` to the default exchange for `queue`, persistent, and checks the ack.
pub async fn publish_persistent(channel: &Channel, queue: &str, body: &str) {
    let confirmation = publish_props(channel, "", queue, body.as_bytes(), persistent()).await;
    assert!(
        confirmation.is_ack(),
        "{body:?} not acked: {confirmation:?}"
    );
}

/// One `basic.get` (acknowledgement mode unless `no_ack`).
pub async fn get(channel: &Channel, queue: &str, no_ack: bool) -> Option<BasicGetMessage> {
    channel
        .basic_get(queue.into(), BasicGetOptions { no_ack })
        .await
        .unwrap_or_else(|e| panic!("basic.get {queue}: {e:?}"))
}

/// Gets every message in `queue` (auto-ack) and returns the bodies as text.
pub async fn drain(channel: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(message) = get(channel, queue, true).await {
        bodies.push(text(&message.delivery));
        assert!(bodies.len() <= 100_000, "queue {queue} never empties");
    }
    bodies
}

/// Gets every message in `queue` (auto-ack) with its redelivered flag.
pub async fn drain_flagged(channel: &Channel, queue: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some(message) = get(channel, queue, true).await {
        out.push((text(&message.delivery), message.delivery.redelivered));
        assert!(out.len() <= 100_000, "queue {queue} never empties");
    }
    out
}

pub fn text(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.data).into_owned()
}

/// Starts a consumer (acknowledgement mode unless `no_ack`) with a server-chosen tag.
pub async fn consume(channel: &Channel, queue: &str, no_ack: bool) -> Consumer {
    consume_with(
        channel,
        queue,
        BasicConsumeOptions {
            no_ack,
            ..BasicConsumeOptions::default()
        },
        FieldTable::default(),
    )
    .await
}

pub async fn consume_with(
    channel: &Channel,
    queue: &str,
    options: BasicConsumeOptions,
    args: FieldTable,
) -> Consumer {
    channel
        .basic_consume(queue.into(), "".into(), options, args)
        .await
        .unwrap_or_else(|e| panic!("basic.consume {queue}: {e:?}"))
}

/// The next delivery, or a panic after [`WAIT`].
pub async fn next(consumer: &mut Consumer) -> Delivery {
    match tokio::time::timeout(WAIT, consumer.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(e))) => panic!("consumer {} failed: {e:?}", consumer.tag()),
        Ok(None) => panic!("consumer {} was cancelled", consumer.tag()),
        Err(_) => panic!("no delivery to consumer {} within {WAIT:?}", consumer.tag()),
    }
}

/// The next `n` deliveries.
pub async fn next_n(consumer: &mut Consumer, n: usize) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next(consumer).await);
    }
    out
}

/// Asserts that nothing is delivered to `consumer` for [`QUIET`].
pub async fn assert_quiet(consumer: &mut Consumer) {
    if let Ok(item) = tokio::time::timeout(QUIET, consumer.next()).await {
        match item {
            Some(Ok(delivery)) => panic!(
                "unexpected delivery {:?} (tag {})",
                text(&delivery),
                delivery.delivery_tag
            ),
            Some(Err(e)) => panic!("consumer failed: {e:?}"),
            None => panic!("consumer was cancelled"),
        }
    }
}

/// Waits for the consumer's stream to end (a server-sent `basic.cancel`, or our own cancel).
/// Panics if a delivery or an error arrives first, or nothing happens within [`WAIT`].
pub async fn assert_cancelled(consumer: &mut Consumer) {
    match tokio::time::timeout(WAIT, consumer.next()).await {
        Ok(None) => {}
        Ok(Some(Ok(delivery))) => panic!("expected a cancel, got delivery {:?}", text(&delivery)),
        Ok(Some(Err(e))) => panic!("expected a cancel, got error {e:?}"),
        Err(_) => panic!("consumer {} not cancelled within {WAIT:?}", consumer.tag()),
    }
}

/// `queue.declare passive` on a throwaway channel: `Some((messages, consumers))` if the queue
/// exists, `None` on 404.
pub async fn queue_counts(client: &Client, queue: &str) -> Option<(u32, u32)> {
    let channel = client.channel().await;
    let result = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    match result {
        Ok(q) => {
            let _ = channel.close(200, "done".into()).await;
            Some((q.message_count(), q.consumer_count()))
        }
        Err(e) if code_of(&e) == Some(code::NOT_FOUND) => None,
        Err(e) => panic!("passive queue.declare {queue}: {e:?}"),
    }
}

pub async fn queue_exists(client: &Client, queue: &str) -> bool {
    queue_counts(client, queue).await.is_some()
}

/// The number of ready messages in `queue` (panics if it does not exist).
pub async fn message_count(client: &Client, queue: &str) -> u32 {
    queue_counts(client, queue)
        .await
        .unwrap_or_else(|| panic!("queue {queue} does not exist"))
        .0
}

/// Waits until `queue` holds exactly `n` ready messages.
pub async fn wait_for_count(client: &Client, queue: &str, n: u32) {
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        let count = queue_counts(client, queue).await.map(|c| c.0);
        if count == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "queue {queue} never held {n} messages (last count {count:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `basic.get` until a message arrives (panics after [`WAIT`]).
pub async fn get_eventually(channel: &Channel, queue: &str, no_ack: bool) -> BasicGetMessage {
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(message) = get(channel, queue, no_ack).await {
            return message;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no message in {queue} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The headers of a delivery (empty if it has none).
pub fn headers(delivery: &Delivery) -> FieldTable {
    delivery.properties.headers().clone().unwrap_or_default()
}

pub fn header<'a>(table: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
    table.inner().get(key)
}

/// A string-ish value (long or short string) as text.
pub fn as_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// An integer value of any width.
pub fn as_int(value: &AMQPValue) -> Option<i64> {
    match *value {
        AMQPValue::ShortShortInt(v) => Some(v.into()),
        AMQPValue::ShortShortUInt(v) => Some(v.into()),
        AMQPValue::ShortInt(v) => Some(v.into()),
        AMQPValue::ShortUInt(v) => Some(v.into()),
        AMQPValue::LongInt(v) => Some(v.into()),
        AMQPValue::LongUInt(v) => Some(v.into()),
        AMQPValue::LongLongInt(v) => Some(v),
        _ => None,
    }
}

/// A text header, or a panic naming what is there instead.
#[track_caller]
pub fn text_header(table: &FieldTable, key: &str) -> String {
    header(table, key)
        .and_then(as_text)
        .unwrap_or_else(|| panic!("header {key} missing or not a string in {table:?}"))
}
