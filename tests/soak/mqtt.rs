//! MQTT 3.1.1 clients (rumqttc): QoS 1 publishers, and one subscriber on a persistent session
//! (clean session off, fixed client id) whose durable queue keeps collecting while it is away.

use crate::ledger::{body_of, message_id, rng_for, Protocol, Sink, TOPIC_ROUTE};
use crate::world::{away, lifetime, pause, publish_until_stopped, World, STEP};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The subscriber's client id: one persistent session for the whole run.
const SUBSCRIBER: &str = "soak-subscriber";
/// Everything the soak publishes through `amq.topic` (`soak.m.*`).
const FILTER: &str = "soak/m/#";

fn options(addr: SocketAddr, id: &str, clean: bool) -> MqttOptions {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_credentials("guest", "guest");
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(clean);
    options
}

/// A connection whose event loop runs in its own task: waiting on the channel with a deadline
/// is cancel-safe, which `EventLoop::poll` itself does not promise. Dropping it aborts the task,
/// which closes the socket.
struct Conn {
    client: AsyncClient,
    events: UnboundedReceiver<Result<Event, String>>,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    fn open(options: MqttOptions, capacity: usize) -> Conn {
        let (client, mut eventloop) = AsyncClient::new(options, capacity);
        let (tx, events) = unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await.map_err(|e| format!("mqtt: {e}"));
                let failed = event.is_err();
                if tx.send(event).is_err() || failed {
                    return;
                }
            }
        });
        Conn {
            client,
            events,
            task,
        }
    }

    /// The next event before `deadline`: `Ok(None)` at the deadline, errors end the connection.
    async fn next_until(&mut self, deadline: Instant) -> Result<Option<Event>, String> {
        match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Ok(Some(Ok(event))) => Ok(Some(event)),
            Ok(Some(Err(e))) => Err(e),
            Ok(None) => Err("mqtt: event loop ended".into()),
            Err(_) => Ok(None),
        }
    }

    /// The next event before `deadline`, which is an error here.
    async fn next(&mut self, deadline: Instant) -> Result<Event, String> {
        self.next_until(deadline)
            .await?
            .ok_or_else(|| "mqtt: timed out".to_string())
    }

    /// Waits for the CONNACK; returns its session-present flag.
    async fn connack(&mut self) -> Result<bool, String> {
        let deadline = Instant::now() + STEP;
        loop {
            if let Event::Incoming(Packet::ConnAck(ack)) = self.next(deadline).await? {
                return Ok(ack.session_present);
            }
        }
    }

    /// Half the time a clean DISCONNECT, otherwise the socket just goes away on drop.
    async fn close(mut self, rng: &mut fastrand::Rng) {
        if rng.bool() {
            let _ = self.client.try_disconnect();
            let deadline = Instant::now() + Duration::from_secs(1);
            while self.next(deadline).await.is_ok() {}
        }
    }
}

/// Creates the subscriber's persistent session and its QoS 1 subscription, before any message
/// is published, so that every confirmed MQTT-routed message has a session queue to land in.
pub async fn create_session(addr: SocketAddr) -> Result<(), String> {
    let mut conn = Conn::open(options(addr, SUBSCRIBER, false), 16);
    conn.connack().await?;
    conn.client
        .try_subscribe(FILTER, QoS::AtLeastOnce)
        .map_err(|e| format!("subscribe: {e}"))?;
    let deadline = Instant::now() + STEP;
    loop {
        if let Event::Incoming(Packet::SubAck(ack)) = conn.next(deadline).await? {
            return match ack.return_codes.as_slice() {
                [rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)] => Ok(()),
                other => Err(format!("subscription refused: {other:?}")),
            };
        }
    }
}

/// Publishes QoS 1 messages on `soak/m/q` in bursts until the run stops publishing.
pub async fn publisher(world: Arc<World>, task: u64) {
    publish_until_stopped(world, task, "mqtt publisher", |a| a.mqtt, publish_session).await;
}

async fn publish_session(
    world: &World,
    rng: &mut fastrand::Rng,
    addr: SocketAddr,
    publisher: u64,
    seq: &mut u64,
) -> Result<(), String> {
    let id = format!("soak-publisher-{publisher}");
    let mut conn = Conn::open(options(addr, &id, true), 64);
    conn.connack().await?;
    let until = Instant::now() + lifetime(rng);
    while world.publishing() && Instant::now() < until {
        let burst = rng.usize(1..=40);
        // rumqttc assigns packet ids as it sends, in request order: the n-th `Outgoing::Publish`
        // event is the n-th publish requested, which maps each PUBACK back to a message id.
        let mut unsent = VecDeque::new();
        for _ in 0..burst {
            *seq += 1;
            let id = message_id(publisher, *seq);
            world.ledger.sent(id);
            conn.client
                .try_publish("soak/m/q", QoS::AtLeastOnce, false, body_of(id))
                .map_err(|e| format!("mqtt publish: {e}"))?;
            unsent.push_back(id);
        }
        let mut in_flight = HashMap::new();
        let mut acked = 0;
        let deadline = Instant::now() + STEP;
        while acked < burst {
            match conn.next(deadline).await? {
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    if let Some(id) = unsent.pop_front() {
                        in_flight.insert(pkid, id);
                    }
                }
                Event::Incoming(Packet::PubAck(ack)) => {
                    if let Some(id) = in_flight.remove(&ack.pkid) {
                        world.ledger.confirmed(Protocol::Mqtt, id, TOPIC_ROUTE);
                        acked += 1;
                    }
                }
                _ => {}
            }
        }
        pause(rng, 0, 50).await;
    }
    conn.close(rng).await;
    Ok(())
}

/// Receives on the persistent session with manual acks, recording each message before its
/// PUBACK, until the run stops.
pub async fn subscriber(world: Arc<World>, task: u64) {
    let mut rng = rng_for(world.seed, task);
    while !world.stopped() {
        let Some(addrs) = world.addrs().await else {
            break;
        };
        let kills = world.kills();
        let result = subscribe_session(&world, &mut rng, addrs.mqtt).await;
        world.connection_ended("mqtt subscriber", kills, result);
        away(&world, &mut rng).await;
    }
}

async fn subscribe_session(
    world: &World,
    rng: &mut fastrand::Rng,
    addr: SocketAddr,
) -> Result<(), String> {
    let mut options = options(addr, SUBSCRIBER, false);
    options.set_manual_acks(true);
    let mut conn = Conn::open(options, 256);
    if !conn.connack().await? {
        // The session was created before publishing began and never cleaned: the broker lost
        // it (and the messages queued for it). Counted, and the run fails; subscribe again so
        // the rest of the run still means something.
        world
            .ledger
            .lost_mqtt_sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        conn.client
            .try_subscribe(FILTER, QoS::AtLeastOnce)
            .map_err(|e| format!("mqtt subscribe: {e}"))?;
    }
    let until = Instant::now() + lifetime(rng);
    while !world.stopped() && (!world.chaos() || Instant::now() < until) {
        let idle = Instant::now() + Duration::from_millis(500);
        // `None`: idle; look at the clock and the run's phase again.
        if let Some(Event::Incoming(Packet::Publish(publish))) = conn.next_until(idle).await? {
            world.ledger.delivered(Sink::MqttSession, &publish.payload);
            conn.client
                .try_ack(&publish)
                .map_err(|e| format!("mqtt ack: {e}"))?;
        }
    }
    conn.close(rng).await;
    Ok(())
}
