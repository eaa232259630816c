//! The MQTT 3.1.1 scenarios, driven with rumqttc so any compliant broker (Rosetta, Mosquitto)
//! is measured by the same client code.
//!
//! Every publisher and subscriber is one connection with its own event loop. Publishers keep a
//! bounded window of unacknowledged QoS 1 messages in flight (rumqttc's `inflight`), so
//! throughput is not one round trip per message. Several subscribers on the one topic each get
//! every message (plain MQTT subscriptions, not shared ones), so each subscriber is a lane of the
//! tally. Subscribers use clean sessions unless `--persistent-session` is given.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use clap::Args;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    SubscribeReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout_at;

use crate::pace::{self, Pacer};
use crate::report::Report;
use crate::stats::{sample_process, stamp, ProcSample, Tally, STAMP};

/// Where the broker is and how every connection of a run logs in.
#[derive(Args, Clone)]
pub struct Broker {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Sent in every CONNECT; a broker that allows anonymous clients ignores it.
    #[arg(long, default_value = "guest")]
    pub username: String,
    #[arg(long, default_value = "guest")]
    pub password: String,
    /// Free-form name recorded in the report (e.g. the broker measured).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Give up after this many seconds and report what was lost.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// The broker's process id, to report its CPU time and memory.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Tokio worker threads for the generator itself.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// Publishers and subscribers on one topic.
#[derive(Args, Clone)]
pub struct Flow {
    #[command(flatten)]
    pub broker: Broker,
    #[arg(long, short = 'p', default_value_t = 1)]
    pub publishers: usize,
    #[arg(long, short = 'c', default_value_t = 1)]
    pub subscribers: usize,
    /// Messages in total (per publisher: total / publishers); each subscriber expects them all.
    #[arg(long, short = 'n', default_value_t = 100_000)]
    pub messages: u64,
    /// Payload size in bytes (at least 16: the stamp).
    #[arg(long, short = 's', default_value_t = 1024)]
    pub size: usize,
    /// QoS of every PUBLISH and of every subscription.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// QoS 1 messages a publisher keeps in flight before waiting for a PUBACK.
    #[arg(long, default_value_t = 100)]
    pub inflight: u16,
    /// Subscribers connect with clean session off, so QoS 1 messages are kept for them by the
    /// broker as a persistent session's (Rosetta: a durable queue, PUBACK after fsync).
    #[arg(long)]
    pub persistent_session: bool,
    /// Record end-to-end latency of every delivery.
    #[arg(long)]
    pub latency: bool,
    /// Publish at this many messages per second in total (shared by the publishers), evenly
    /// spaced by the clock whatever the broker answers, instead of as fast as it takes them;
    /// latency is recorded.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Seconds without a delivery, once every publisher is done, after which the messages
    /// still missing count as lost.
    #[arg(long, default_value_t = 5)]
    pub settle: u64,
}

impl Broker {
    fn options(&self, client_id: String, clean_session: bool, max_packet: usize) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_credentials(self.username.clone(), self.password.clone());
        o.set_clean_session(clean_session);
        o.set_keep_alive(Duration::from_secs(60));
        o.set_max_packet_size(max_packet, max_packet);
        o
    }

    fn deadline(&self, from: Instant) -> tokio::time::Instant {
        (from + Duration::from_secs(self.timeout)).into()
    }
}

/// A short id unique to this run, for client ids (23 characters at most are portable,
/// [MQTT-3.1.3-5]) and the topic.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", std::process::id() & 0xffff, nanos >> 8)
}

/// A client and its event loop, with Nagle off (Rosetta turns it off on its side too).
fn new_client(options: MqttOptions, cap: usize) -> (AsyncClient, EventLoop) {
    let (client, mut event_loop) = AsyncClient::new(options, cap);
    let mut net = event_loop.network_options();
    net.set_tcp_nodelay(true);
    event_loop.set_network_options(net);
    (client, event_loop)
}

fn qos(level: u8) -> QoS {
    if level == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Polls until the broker accepts the connection.
async fn connected(event_loop: &mut EventLoop, client_id: &str) -> Result<()> {
    loop {
        let event = event_loop
            .poll()
            .await
            .with_context(|| format!("connect {client_id}"))?;
        if let Event::Incoming(Packet::ConnAck(ack)) = event {
            if ack.code != ConnectReturnCode::Success {
                bail!("{client_id}: CONNACK {:?}", ack.code);
            }
            return Ok(());
        }
    }
}

/// Sends DISCONNECT and drives the loop until it is written, so the broker sees a normal end.
async fn disconnect(client: &AsyncClient, event_loop: &mut EventLoop) {
    if client.disconnect().await.is_err() {
        return;
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(event)) = timeout_at(until, event_loop.poll()).await {
        if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
            break;
        }
    }
}

/// Deliveries counted across every subscriber of a run; the switch that stops them all is
/// rung by whoever counts the last one, by the deadline, or once deliveries have stopped.
struct Progress {
    received: AtomicU64,
    goal: u64,
    /// When the latest delivery arrived, in µs since `epoch`.
    last_us: AtomicU64,
    epoch: Instant,
    stop: watch::Sender<bool>,
}

impl Progress {
    fn count(&self) {
        self.last_us
            .store(self.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
        if self.received.fetch_add(1, Ordering::Relaxed) + 1 >= self.goal {
            self.stop.send_replace(true);
        }
    }

    /// Once the publishers are done, waits until every delivery is in or none has come for
    /// `settle`: what is missing then was dropped, and the run need not wait for its deadline.
    async fn settle(&self, settle: Duration) {
        let mut seen = self.received.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        while !*self.stop.borrow() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.received.load(Ordering::Relaxed);
            if now != seen {
                (seen, quiet_since) = (now, Instant::now());
            } else if quiet_since.elapsed() >= settle {
                self.stop.send_replace(true);
            }
        }
    }
}

/// What a subscriber saw, and why it stopped early if it did.
struct Seen {
    tally: Tally,
    error: Option<String>,
}

struct Subscriber {
    broker: Broker,
    client_id: String,
    topic: String,
    qos: QoS,
    persistent: bool,
    max_packet: usize,
    lane: usize,
    lanes: usize,
    publishers: usize,
    per_publisher: u64,
    keep_latency: bool,
    epoch: Instant,
    progress: Arc<Progress>,
}

impl Subscriber {
    /// Connects and subscribes; the returned loop is ready to receive.
    async fn subscribe(&self) -> Result<(AsyncClient, EventLoop)> {
        let (client, mut event_loop) = new_client(
            self.broker
                .options(self.client_id.clone(), !self.persistent, self.max_packet),
            10,
        );
        connected(&mut event_loop, &self.client_id).await?;
        client.subscribe(self.topic.clone(), self.qos).await?;
        loop {
            if let Event::Incoming(Packet::SubAck(ack)) = event_loop.poll().await? {
                match ack.return_codes.first() {
                    Some(SubscribeReasonCode::Success(granted)) if *granted == self.qos => break,
                    other => bail!(
                        "{}: SUBACK {other:?} for QoS {:?}",
                        self.client_id,
                        self.qos
                    ),
                }
            }
        }
        Ok((client, event_loop))
    }

    async fn receive(self, client: AsyncClient, mut event_loop: EventLoop) -> Seen {
        let mut tally = Tally::new(self.lanes, self.publishers, self.per_publisher);
        let mut stop = self.progress.stop.subscribe();
        let mut error = None;
        while !*stop.borrow() {
            let event = tokio::select! {
                e = event_loop.poll() => e,
                _ = stop.changed() => break,
            };
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = self.epoch.elapsed().as_micros() as u64;
                    tally.record(&p.payload, self.lane, now, self.keep_latency);
                    self.progress.count();
                }
                Ok(_) => {}
                Err(e) => {
                    error = Some(format!("{}: {e}", self.client_id));
                    break;
                }
            }
        }
        if error.is_none() {
            disconnect(&client, &mut event_loop).await;
        }
        if self.persistent {
            self.forget_session().await;
        }
        Seen { tally, error }
    }

    /// A clean-session connect with the same client id discards the persistent session
    /// ([MQTT-3.1.2-6]), so no queue outlives the run.
    async fn forget_session(&self) {
        let (client, mut event_loop) = new_client(
            self.broker
                .options(self.client_id.clone(), true, self.max_packet),
            10,
        );
        if connected(&mut event_loop, &self.client_id).await.is_ok() {
            disconnect(&client, &mut event_loop).await;
        }
    }
}

struct Publisher {
    broker: Broker,
    client_id: String,
    topic: String,
    qos: QoS,
    inflight: u16,
    max_packet: usize,
    producer: u32,
    count: u64,
    size: usize,
    /// Messages per second, or as fast as the in-flight window allows.
    rate: Option<u64>,
    epoch: Instant,
    deadline: tokio::time::Instant,
}

impl Publisher {
    /// Publishes `count` messages; returns how many the broker acknowledged (QoS 1) or how many
    /// were written to the socket (QoS 0).
    async fn run(self) -> Result<u64> {
        let mut options = self
            .broker
            .options(self.client_id.clone(), true, self.max_packet);
        options.set_inflight(self.inflight.max(1));
        let (client, mut event_loop) = new_client(options, usize::from(self.inflight.max(1)));
        connected(&mut event_loop, &self.client_id).await?;
        // A separate task feeds the request channel: the event loop takes from it only while
        // fewer than `inflight` messages await their PUBACK.
        let feeder = {
            let client = client.clone();
            let (topic, qos, producer, count, epoch) = (
                self.topic.clone(),
                self.qos,
                self.producer,
                self.count,
                self.epoch,
            );
            let mut body = vec![0u8; self.size.max(STAMP)];
            let mut pacer = self.rate.map(Pacer::new);
            tokio::spawn(async move {
                for seq in 0..count {
                    if let Some(p) = &mut pacer {
                        p.next().await;
                    }
                    stamp(&mut body, producer, seq, epoch);
                    if client
                        .publish(topic.as_str(), qos, false, body.clone())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            })
        };
        let mut done = 0u64;
        while done < self.count {
            let event = match timeout_at(self.deadline, event_loop.poll()).await {
                Ok(event) => {
                    event.with_context(|| format!("{} after {done} messages", self.client_id))?
                }
                Err(_) => break,
            };
            match (self.qos, event) {
                (QoS::AtLeastOnce, Event::Incoming(Packet::PubAck(_)))
                | (QoS::AtMostOnce, Event::Outgoing(Outgoing::Publish(_))) => done += 1,
                _ => {}
            }
        }
        feeder.abort();
        disconnect(&client, &mut event_loop).await;
        Ok(done)
    }
}

fn validate(f: &Flow) -> Result<()> {
    if f.publishers == 0 || f.subscribers == 0 {
        bail!("need at least one publisher and one subscriber");
    }
    if f.size < STAMP {
        bail!("--size must be at least {STAMP} bytes");
    }
    Ok(())
}

/// CPU seconds the generator itself used since `before`: shows whether it, rather than the
/// broker, was the bottleneck.
fn generator_cpu(before: Option<ProcSample>) -> Option<String> {
    let after = sample_process(std::process::id())?;
    Some(format!("{:.2}", after.cpu_seconds - before?.cpu_seconds))
}

/// P publishers and C subscribers on one topic; each subscriber expects every message.
pub async fn throughput(f: &Flow, scenario: &'static str) -> Result<Report> {
    validate(f)?;
    let b = &f.broker;
    let id = run_id();
    let topic = format!("bench/{id}/t");
    let per_publisher = f.messages / f.publishers as u64;
    let expected = per_publisher * f.publishers as u64 * f.subscribers as u64;
    let max_packet = f.size.max(STAMP) + topic.len() + 64;
    let generator_before = sample_process(std::process::id());
    let epoch = Instant::now();
    let (stop, _) = watch::channel(false);
    let progress = Arc::new(Progress {
        received: AtomicU64::new(0),
        goal: expected,
        last_us: AtomicU64::new(0),
        epoch,
        stop,
    });
    let mut report = Report {
        scenario,
        label: b.label.clone(),
        producers: f.publishers,
        consumers: f.subscribers,
        queues: f.subscribers,
        size: f.size,
        persistent: f.persistent_session && f.qos > 0,
        confirm: f.qos > 0,
        broker_before: b.broker_pid.and_then(sample_process),
        ..Report::default()
    };
    // Subscribers first, all acknowledged by SUBACK before the first message is sent: a
    // message published before a subscription exists is not for it.
    let mut ready = JoinSet::new();
    for lane in 0..f.subscribers {
        let sub = Subscriber {
            broker: b.clone(),
            client_id: format!("rb{id}s{lane}"),
            topic: topic.clone(),
            qos: qos(f.qos),
            persistent: f.persistent_session,
            max_packet,
            lane,
            lanes: f.subscribers,
            publishers: f.publishers,
            per_publisher,
            keep_latency: f.latency || f.rate.is_some(),
            epoch,
            progress: progress.clone(),
        };
        ready.spawn(async move {
            let (client, event_loop) = sub.subscribe().await?;
            anyhow::Ok((sub, client, event_loop))
        });
    }
    let mut subscribers = Vec::with_capacity(f.subscribers);
    while let Some(joined) = ready.join_next().await {
        subscribers.push(joined??);
    }
    let started = Instant::now();
    let deadline = b.deadline(started);
    let receiving: Vec<_> = subscribers
        .into_iter()
        .map(|(sub, client, el)| tokio::spawn(sub.receive(client, el)))
        .collect();
    let publishing: Vec<_> = (0..f.publishers)
        .map(|p| {
            let publisher = Publisher {
                broker: b.clone(),
                client_id: format!("rb{id}p{p}"),
                topic: topic.clone(),
                qos: qos(f.qos),
                inflight: f.inflight,
                max_packet,
                producer: p as u32,
                count: per_publisher,
                size: f.size,
                rate: pace::per_publisher(f.rate, f.publishers),
                epoch,
                deadline,
            };
            tokio::spawn(publisher.run())
        })
        .collect();
    let stopper = {
        let progress = progress.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            progress.stop.send_replace(true);
        })
    };
    for h in publishing {
        report.sent += h.await??;
    }
    let published = epoch.elapsed();
    progress.settle(Duration::from_secs(f.settle)).await;
    let mut total = Tally::new(f.subscribers, f.publishers, per_publisher);
    let mut errors = Vec::new();
    for h in receiving {
        let seen = h.await?;
        total.merge(seen.tally);
        errors.extend(seen.error);
    }
    stopper.abort();
    // The run ends with its last delivery or its last acknowledgement, not with the wait for
    // deliveries that never came.
    let last_delivery = Duration::from_micros(progress.last_us.load(Ordering::Relaxed));
    report.elapsed_s = published
        .max(last_delivery)
        .saturating_sub(started - epoch)
        .as_secs_f64();
    report.broker_after = b.broker_pid.and_then(sample_process);
    report.expected = expected;
    report.absorb(total);
    for e in &errors {
        eprintln!("subscriber stopped early: {e}");
    }
    report.extra.push(("qos", f.qos.to_string()));
    report.extra.extend(f.rate.map(|r| ("rate", r.to_string())));
    report.extra.push(("inflight", f.inflight.to_string()));
    // The rate at which the broker took messages (PUBACKed them, at QoS 1), which exceeds the
    // delivery rate when it queues or drops what subscribers cannot take yet.
    let publish_s = published.saturating_sub(started - epoch).as_secs_f64();
    report.extra.push((
        "publish_per_s",
        format!("{:.0}", report.sent as f64 / publish_s.max(1e-9)),
    ));
    report.extra.push((
        "session",
        format!(
            "\"{}\"",
            if f.persistent_session {
                "persistent"
            } else {
                "clean"
            }
        ),
    ));
    report
        .extra
        .push(("subscriber_errors", errors.len().to_string()));
    report
        .extra
        .extend(generator_cpu(generator_before).map(|s| ("generator_cpu_s", s)));
    Ok(report)
}

/// One MQTT 3.1.1 connection that connected and then stays silent.
async fn open_idle(addr: SocketAddr, client_id: String, b: &Broker) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut connect = rumqttc::Connect::new(client_id);
    connect.set_login(b.username.clone(), b.password.clone());
    // Longer than the run: no PINGREQ is due while the connection idles ([MQTT-3.1.2-24]).
    connect.keep_alive = 600;
    let mut buf = BytesMut::new();
    connect
        .write(&mut buf)
        .map_err(|e| anyhow!("encode CONNECT: {e}"))?;
    stream.write_all(&buf).await?;
    buf.clear();
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("closed before CONNACK");
        }
        match Packet::read(&mut buf, 64) {
            Ok(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                return Ok(stream)
            }
            Ok(other) => bail!("expected a successful CONNACK, got {other:?}"),
            Err(rumqttc::Error::InsufficientBytes(_)) => {}
            Err(e) => bail!("CONNACK: {e}"),
        }
    }
}

/// Whether the broker closed (or wrote to) a connection that should be idle.
fn disturbed(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    !matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// DISCONNECT, then wait for the broker to close first, so the broker's side, not the
/// generator's ephemeral ports, holds the TIME_WAIT.
async fn close_idle(mut stream: TcpStream) {
    if stream.write_all(&[0xE0, 0x00]).await.is_ok() {
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// Opens `connections` idle connections, holds them `hold` seconds, and reports the broker's
/// resident memory before and after (the bytes one idle connection costs) and its CPU use over
/// the hold, in percent of one core.
pub async fn idle(b: &Broker, connections: usize, hold: u64, concurrency: usize) -> Result<Report> {
    let addr = tokio::net::lookup_host((b.host.as_str(), b.port))
        .await?
        .next()
        .ok_or_else(|| anyhow!("no address for {}", b.host))?;
    let id = run_id();
    let generator_before = sample_process(std::process::id());
    let mut report = Report {
        scenario: "mqtt-idle",
        label: b.label.clone(),
        consumers: connections,
        broker_before: b.broker_pid.and_then(sample_process),
        ..Report::default()
    };
    let started = Instant::now();
    let deadline = b.deadline(started);
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut opening = JoinSet::new();
    for i in 0..connections {
        let permit = gate.clone().acquire_owned().await?;
        let (b, client_id) = (b.clone(), format!("rb{id}i{i}"));
        opening.spawn(async move {
            let opened = timeout_at(deadline, open_idle(addr, client_id, &b)).await;
            drop(permit);
            opened.map_err(|_| anyhow!("timed out"))?
        });
    }
    let mut streams = Vec::with_capacity(connections);
    let mut failures = 0usize;
    let mut first_failure = None;
    while let Some(joined) = opening.join_next().await {
        match joined? {
            Ok(s) => streams.push(s),
            Err(e) => {
                failures += 1;
                first_failure.get_or_insert(e.to_string());
            }
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    if let Some(e) = &first_failure {
        eprintln!("{failures} connections failed; the first: {e}");
    }
    // The broker's CPU over the hold alone, once every connection is up: what idle
    // connections cost it (keep-alive timers, housekeeping), without the connection storm.
    let hold_before = b.broker_pid.and_then(sample_process);
    let hold_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(hold)).await;
    report.broker_after = b.broker_pid.and_then(sample_process);
    let held_s = hold_started.elapsed().as_secs_f64();
    let disturbed = streams.iter().filter(|s| disturbed(s)).count();
    let open = streams.len();
    let mut closing = JoinSet::new();
    for s in streams {
        closing.spawn(close_idle(s));
    }
    while closing.join_next().await.is_some() {}
    report.elapsed_s = started.elapsed().as_secs_f64();
    let rss = |s: Option<ProcSample>| s.map(|s| s.rss_bytes);
    let closed_rss = b.broker_pid.and_then(sample_process).map(|s| s.rss_bytes);
    report.extra.push(("connections", connections.to_string()));
    report.extra.push(("connected", open.to_string()));
    report.extra.push(("failed", failures.to_string()));
    report
        .extra
        .push(("disturbed_while_idle", disturbed.to_string()));
    report.extra.push(("connect_s", format!("{connect_s:.3}")));
    if let (Some(before), Some(after)) = (rss(report.broker_before), rss(report.broker_after)) {
        report
            .extra
            .push(("broker_rss_before_bytes", before.to_string()));
        report
            .extra
            .push(("broker_rss_idle_bytes", after.to_string()));
        let per = after.saturating_sub(before) as f64 / open.max(1) as f64;
        report
            .extra
            .push(("broker_bytes_per_connection", format!("{per:.0}")));
    }
    report
        .extra
        .extend(closed_rss.map(|r| ("broker_rss_after_close_bytes", r.to_string())));
    report.extra.push(("hold_s", format!("{held_s:.3}")));
    if let (Some(before), Some(after)) = (hold_before, report.broker_after) {
        let percent = (after.cpu_seconds - before.cpu_seconds) / held_s.max(1e-9) * 100.0;
        report
            .extra
            .push(("broker_idle_cpu_percent", format!("{percent:.2}")));
    }
    report
        .extra
        .extend(generator_cpu(generator_before).map(|s| ("generator_cpu_s", s)));
    Ok(report)
}
