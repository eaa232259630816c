//! `mqtt-many-subscribers`: N MQTT 3.1.1 subscribers, each on a topic of its own
//! (`dev/<run>/<i>/cmd`), and a few publishers sending to randomly chosen subscribers' topics
//! for a fixed time. Every publish is routed against N bindings and delivered to exactly one
//! connection, so the run measures how the broker's routing and delivery cost behaves with many
//! subscriptions, not how fast one queue drains.
//!
//! The client is a small hand-written MQTT 3.1.1 client on a plain tokio `TcpStream`: one light
//! task per subscriber that reads, checks and (at QoS 1) acknowledges what arrives, so 100,000
//! connections cost the generator little more than their sockets. Connections are opened a
//! bounded number at a time, retried with backoff, and spread over several loopback source
//! addresses (127.0.0.2, 127.0.0.3, ...) so that no one address runs out of ephemeral ports.
//!
//! Every payload carries the stamp (publisher, sequence, send time) and the index of the
//! subscriber it was addressed to: a delivery to any other subscriber counts as misrouted.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BufMut, BytesMut};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::mqtt::Broker;
use crate::report::Report;
use crate::stats::{self, sample_process, ProcSample, STAMP};

/// Bytes at the start of every payload: the stamp, then the addressed subscriber's index.
const HEADER: usize = STAMP + 4;
/// Messages one publisher may send in a run: the size of its bitset of deliveries seen.
const MAX_PER_PUBLISHER: u64 = 1 << 24;
/// Keep-alive announced in CONNECT, longer than any run, so no PINGREQ is due.
const KEEP_ALIVE_S: u16 = 1800;

#[derive(Args, Clone)]
pub struct Many {
    #[command(flatten)]
    pub broker: Broker,
    /// Subscriber connections, each subscribed to its own topic.
    #[arg(long, default_value_t = 100_000)]
    pub subscribers: u32,
    /// Publisher connections; each picks a random subscriber's topic for every message.
    #[arg(long, short = 'p', default_value_t = 4)]
    pub publishers: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Payload size in bytes (at least 24: the stamp and the addressed subscriber).
    #[arg(long, short = 's', default_value_t = 64)]
    pub size: usize,
    /// QoS of every PUBLISH and of every subscription.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// QoS 1 messages each publisher keeps awaiting a PUBACK.
    #[arg(long, default_value_t = 100)]
    pub inflight: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Loopback source addresses to spread the connections over (127.0.0.2 upwards); 0 lets
    /// the kernel choose.
    #[arg(long, default_value_t = 8)]
    pub source_addrs: u8,
    /// Attempts per connection before it counts as failed (with doubling backoff).
    #[arg(long, default_value_t = 6)]
    pub attempts: u32,
    /// Seconds without a delivery, once publishing is over, after which the messages still
    /// missing count as lost.
    #[arg(long, default_value_t = 5)]
    pub settle: u64,
}

/// What every subscriber and publisher of a run shares.
struct Shared {
    epoch: Instant,
    received: AtomicU64,
    misrouted: AtomicU64,
    malformed: AtomicU64,
    duplicates: AtomicU64,
    /// When the latest delivery arrived, in µs since `epoch`.
    last_us: AtomicU64,
    /// One bit per (publisher, sequence) delivered.
    seen: Vec<Vec<AtomicU64>>,
    latency: Histogram,
    stop: watch::Sender<bool>,
}

impl Shared {
    fn record(&self, payload: &[u8], me: u32) {
        let now = self.epoch.elapsed().as_micros() as u64;
        self.received.fetch_add(1, Ordering::Relaxed);
        self.last_us.store(now, Ordering::Relaxed);
        let (Some(s), Some(target)) = (stats::read(payload), payload.get(STAMP..HEADER)) else {
            self.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let target = u32::from_be_bytes([target[0], target[1], target[2], target[3]]);
        if target != me {
            self.misrouted.fetch_add(1, Ordering::Relaxed);
        }
        let Some(word) = self
            .seen
            .get(s.producer as usize)
            .and_then(|bits| bits.get((s.seq / 64) as usize))
        else {
            self.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let bit = 1u64 << (s.seq % 64);
        if word.fetch_or(bit, Ordering::Relaxed) & bit != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        self.latency.record(now.saturating_sub(s.sent_us));
    }

    fn distinct(&self) -> u64 {
        self.seen
            .iter()
            .flatten()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }
}

/// Latencies in µs, counted in buckets of 32 per power of two (about 3% wide), so that any
/// number of deliveries costs a fixed, small amount of memory and one atomic add each.
struct Histogram {
    buckets: Vec<AtomicU64>,
}

impl Histogram {
    const SUB: u64 = 32;

    fn new() -> Self {
        Histogram {
            buckets: (0..Self::index(u64::MAX) + 1)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    fn index(v: u64) -> usize {
        if v < 2 * Self::SUB {
            return v as usize;
        }
        let msb = 63 - u64::from(v.leading_zeros());
        let shift = msb - 5;
        (2 * Self::SUB + (msb - 6) * Self::SUB + ((v >> shift) - Self::SUB)) as usize
    }

    /// The largest value that falls in bucket `i`.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * Self::SUB {
            return i;
        }
        let msb = (i - 2 * Self::SUB) / Self::SUB + 6;
        let sub = (i - 2 * Self::SUB) % Self::SUB + Self::SUB;
        ((sub + 1) << (msb - 5)).wrapping_sub(1)
    }

    fn record(&self, v: u64) {
        self.buckets[Self::index(v)].fetch_add(1, Ordering::Relaxed);
    }

    /// Nearest-rank percentile, as the bucket's upper bound.
    fn percentile(&self, p: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut sum = 0;
        for (i, c) in counts.iter().enumerate() {
            sum += c;
            if sum >= rank {
                return Some(Self::upper(i));
            }
        }
        None
    }
}

fn put_remaining_length(buf: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            return;
        }
    }
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}

/// MQTT 3.1.1 CONNECT with a clean session, user name and password.
fn encode_connect(buf: &mut BytesMut, client_id: &str, b: &Broker) {
    let body = 10 + 2 + client_id.len() + 2 + b.username.len() + 2 + b.password.len();
    buf.put_u8(0x10);
    put_remaining_length(buf, body);
    put_str(buf, b"MQTT");
    buf.put_u8(4); // protocol level 3.1.1
    buf.put_u8(0x80 | 0x40 | 0x02); // user name, password, clean session
    buf.put_u16(KEEP_ALIVE_S);
    put_str(buf, client_id.as_bytes());
    put_str(buf, b.username.as_bytes());
    put_str(buf, b.password.as_bytes());
}

fn encode_subscribe(buf: &mut BytesMut, topic: &str, qos: u8) {
    buf.put_u8(0x82);
    put_remaining_length(buf, 2 + 2 + topic.len() + 1);
    buf.put_u16(1);
    put_str(buf, topic.as_bytes());
    buf.put_u8(qos);
}

fn encode_publish(buf: &mut BytesMut, topic: &[u8], qos: u8, packet_id: u16, payload: &[u8]) {
    buf.put_u8(0x30 | (qos << 1));
    let id_len = if qos > 0 { 2 } else { 0 };
    put_remaining_length(buf, 2 + topic.len() + id_len + payload.len());
    put_str(buf, topic);
    if qos > 0 {
        buf.put_u16(packet_id);
    }
    buf.put_slice(payload);
}

/// Splits one whole packet off the front of `buf`: its first byte and the rest after the
/// remaining length. `None` while the packet is incomplete.
fn split_packet(buf: &mut BytesMut) -> Result<Option<(u8, BytesMut)>> {
    let mut len = 0usize;
    let mut at = 1;
    loop {
        let Some(&byte) = buf.get(at) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7f) << (7 * (at - 1));
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if at > 4 {
            bail!("malformed remaining length from the broker");
        }
    }
    if buf.len() < at + len {
        return Ok(None);
    }
    let first = buf[0];
    let mut packet = buf.split_to(at + len);
    packet.advance(at);
    Ok(Some((first, packet)))
}

/// Reads until one whole packet is in.
async fn read_packet(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<(u8, BytesMut)> {
    loop {
        if let Some(p) = split_packet(buf)? {
            return Ok(p);
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("closed by the broker");
        }
    }
}

/// Connects from `source` (if any) and logs in; one attempt.
async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    client_id: &str,
    b: &Broker,
    buf: &mut BytesMut,
) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    let mut stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    buf.clear();
    encode_connect(buf, client_id, b);
    stream.write_all(buf).await?;
    buf.clear();
    match read_packet(&mut stream, buf).await? {
        (0x20, ack) if ack.len() == 2 && ack[1] == 0 => Ok(stream),
        (0x20, ack) => bail!("CONNACK refused, return code {:?}", ack.get(1)),
        (first, _) => bail!("expected CONNACK, got packet type {}", first >> 4),
    }
}

/// Connects and subscribes, retrying with doubling backoff.
async fn open_subscriber(
    addr: SocketAddr,
    source: Option<IpAddr>,
    client_id: &str,
    topic: &str,
    m: &Many,
    buf: &mut BytesMut,
) -> Result<TcpStream> {
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        let opened = async {
            let mut stream = connect(addr, source, client_id, &m.broker, buf).await?;
            buf.clear();
            encode_subscribe(buf, topic, m.qos);
            stream.write_all(buf).await?;
            buf.clear();
            match read_packet(&mut stream, buf).await? {
                (0x90, ack) if ack.len() == 3 && ack[2] == m.qos => Ok(stream),
                (0x90, ack) => bail!(
                    "SUBACK granted {:?} for QoS {} on {topic}",
                    ack.get(2),
                    m.qos
                ),
                (first, _) => bail!("expected SUBACK, got packet type {}", first >> 4),
            }
        };
        match tokio::time::timeout(Duration::from_secs(30), opened).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) if attempt >= m.attempts => return Err(e),
            Err(_) if attempt >= m.attempts => bail!("timed out connecting"),
            _ => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        attempt += 1;
    }
}

/// DISCONNECT, then wait for the broker to close first, so the broker's side, not the
/// generator's ephemeral ports, holds the TIME_WAIT.
async fn close(mut stream: TcpStream) {
    if stream.write_all(&[0xE0, 0x00]).await.is_ok() {
        let mut sink = [0u8; 256];
        let _ = tokio::time::timeout(Duration::from_secs(15), async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// Receives until told to stop, acknowledging QoS 1 deliveries.
async fn receive(stream: &mut TcpStream, me: u32, shared: &Shared) -> Result<()> {
    let mut stop = shared.stop.subscribe();
    let mut buf = BytesMut::with_capacity(256);
    let mut acks = Vec::new();
    while !*stop.borrow() {
        tokio::select! {
            read = stream.read_buf(&mut buf) => {
                if read? == 0 {
                    bail!("closed by the broker");
                }
            }
            _ = stop.changed() => break,
        }
        while let Some((first, mut packet)) = split_packet(&mut buf)? {
            match first >> 4 {
                3 => {
                    let qos = (first >> 1) & 3;
                    if packet.len() < 2 {
                        bail!("PUBLISH too short");
                    }
                    let topic_len = usize::from(packet.get_u16());
                    let skip = topic_len + if qos > 0 { 2 } else { 0 };
                    if packet.len() < skip {
                        bail!("PUBLISH too short");
                    }
                    if qos > 0 {
                        acks.extend_from_slice(&[0x40, 0x02]);
                        acks.extend_from_slice(&packet[topic_len..skip]);
                    }
                    shared.record(&packet[skip..], me);
                }
                13 => {} // PINGRESP
                other => bail!("unexpected packet type {other}"),
            }
        }
        if !acks.is_empty() {
            stream.write_all(&acks).await?;
            acks.clear();
        }
    }
    Ok(())
}

/// One subscriber for the whole run: opens, reports on `ready`, receives, closes.
#[allow(clippy::too_many_arguments)]
async fn subscriber(
    me: u32,
    addr: SocketAddr,
    source: Option<IpAddr>,
    client_id: String,
    topic: String,
    m: Arc<Many>,
    gate: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<Result<u32, String>>,
    shared: Arc<Shared>,
) -> Option<String> {
    let mut buf = BytesMut::new();
    let opened = {
        let Ok(_permit) = gate.acquire().await else {
            return None;
        };
        open_subscriber(addr, source, &client_id, &topic, &m, &mut buf).await
    };
    let mut stream = match opened {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(format!("{client_id}: {e:#}")));
            return None;
        }
    };
    drop(buf);
    let _ = ready.send(Ok(me));
    drop(ready);
    let outcome = receive(&mut stream, me, &shared).await;
    close(stream).await;
    outcome.err().map(|e| format!("{client_id}: {e:#}"))
}

/// A small xorshift generator: random enough to spread messages, and free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct Publisher {
    addr: SocketAddr,
    source: Option<IpAddr>,
    client_id: String,
    producer: u32,
    run: String,
    targets: Arc<Vec<u32>>,
    until: Instant,
}

/// Publishes to random subscribers until `until`; returns the messages the broker took
/// (PUBACKed at QoS 1, written at QoS 0).
async fn publish(p: Publisher, m: Arc<Many>, shared: Arc<Shared>) -> Result<u64> {
    let mut buf = BytesMut::new();
    let stream = connect(p.addr, p.source, &p.client_id, &m.broker, &mut buf)
        .await
        .with_context(|| format!("publisher {}", p.client_id))?;
    let (mut rd, mut wr) = stream.into_split();
    let qos = m.qos;
    let window = Arc::new(Semaphore::new(m.inflight.max(1)));
    let acked = Arc::new(AtomicU64::new(0));
    let reader = {
        let (window, acked) = (window.clone(), acked.clone());
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(4096);
            loop {
                if rd.read_buf(&mut buf).await? == 0 {
                    return anyhow::Ok(());
                }
                while let Some((first, _)) = split_packet(&mut buf)? {
                    match first >> 4 {
                        4 => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            window.add_permits(1);
                        }
                        13 => {}
                        other => bail!("publisher got packet type {other}"),
                    }
                }
            }
        })
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((u64::from(p.producer) + 1) * 0x2545_F491));
    let mut payload = vec![0u8; m.size.max(HEADER)];
    let mut topic = Vec::with_capacity(64);
    let mut sent = 0u64;
    let mut packet_id = 0u16;
    while Instant::now() < p.until && sent < MAX_PER_PUBLISHER {
        // A batch: whatever the window allows now, at least one, at most 64 messages.
        let mut batch = 1;
        if qos > 0 {
            let got = tokio::time::timeout(Duration::from_millis(200), window.acquire()).await;
            match got {
                Ok(Ok(permit)) => permit.forget(),
                Ok(Err(_)) => break,
                Err(_) => continue, // a stalled broker: recheck the clock
            }
            while batch < 64 {
                match window.try_acquire() {
                    Ok(permit) => {
                        permit.forget();
                        batch += 1;
                    }
                    Err(_) => break,
                }
            }
        } else {
            batch = 64;
        }
        buf.clear();
        for _ in 0..batch.min(MAX_PER_PUBLISHER - sent) {
            let target = p.targets[(rng.next() % p.targets.len() as u64) as usize];
            stats::stamp(&mut payload, p.producer, sent, shared.epoch);
            payload[STAMP..HEADER].copy_from_slice(&target.to_be_bytes());
            topic.clear();
            write!(topic, "dev/{}/{target}/cmd", p.run).context("format a topic")?;
            packet_id = packet_id.checked_add(1).unwrap_or(1);
            encode_publish(&mut buf, &topic, qos, packet_id, &payload);
            sent += 1;
        }
        wr.write_all(&buf)
            .await
            .with_context(|| format!("publisher {} after {sent} messages", p.client_id))?;
    }
    let taken = if qos > 0 {
        // Wait for the acknowledgements still due, as long as they keep coming.
        let mut last = acked.load(Ordering::Relaxed);
        let mut quiet = Instant::now();
        while last < sent && quiet.elapsed() < Duration::from_secs(m.settle) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = acked.load(Ordering::Relaxed);
            if now != last {
                (last, quiet) = (now, Instant::now());
            }
        }
        last
    } else {
        sent
    };
    let _ = wr.write_all(&[0xE0, 0x00]).await;
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(5), reader).await {
        // What was acknowledged before still counts; the error is worth knowing.
        eprintln!("publisher {}: reading acknowledgements: {e:#}", p.client_id);
    }
    Ok(taken)
}

/// The soft limit on open files of this process, from /proc.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn source_addr(m: &Many, i: usize) -> Option<IpAddr> {
    (m.source_addrs > 0).then(|| {
        let k = (i % usize::from(m.source_addrs)) as u8;
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k))
    })
}

pub async fn run(m: Many) -> Result<Report> {
    if m.size < HEADER {
        bail!("--size must be at least {HEADER} bytes");
    }
    if m.subscribers == 0 || m.publishers == 0 {
        bail!("need at least one subscriber and one publisher");
    }
    if m.source_addrs > 250 {
        bail!("--source-addrs is at most 250");
    }
    let needed = u64::from(m.subscribers) + m.publishers as u64 + 64;
    if let Some(limit) = open_files_limit().filter(|l| *l < needed) {
        bail!(
            "{} subscribers need about {needed} open files, and this process may open {limit} \
             (raise it with ulimit -n)",
            m.subscribers
        );
    }
    let m = Arc::new(m);
    let b = &m.broker;
    let addr = tokio::net::lookup_host((b.host.as_str(), b.port))
        .await?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| anyhow!("no IPv4 address for {}", b.host))?;
    let run_id = format!("{:x}", std::process::id());
    let generator_before = sample_process(std::process::id());
    let (stop, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        received: AtomicU64::new(0),
        misrouted: AtomicU64::new(0),
        malformed: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        last_us: AtomicU64::new(0),
        seen: (0..m.publishers)
            .map(|_| {
                (0..MAX_PER_PUBLISHER / 64)
                    .map(|_| AtomicU64::new(0))
                    .collect()
            })
            .collect(),
        latency: Histogram::new(),
        stop,
    });
    let before_connect = b.broker_pid.and_then(sample_process);

    // Phase 1: every subscriber connects and subscribes, `concurrency` at a time.
    let connect_started = Instant::now();
    let gate = Arc::new(Semaphore::new(m.concurrency.max(1)));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut subscribers = JoinSet::new();
    for i in 0..m.subscribers {
        subscribers.spawn(subscriber(
            i,
            addr,
            source_addr(&m, i as usize),
            format!("rb{run_id}d{i}"),
            format!("dev/{run_id}/{i}/cmd"),
            m.clone(),
            gate.clone(),
            ready_tx.clone(),
            shared.clone(),
        ));
    }
    drop(ready_tx);
    let mut targets = Vec::with_capacity(m.subscribers as usize);
    let mut failed = 0u64;
    let mut first_failure = None;
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(i) => targets.push(i),
            Err(e) => {
                failed += 1;
                first_failure.get_or_insert(e);
            }
        }
        let done = targets.len() as u64 + failed;
        if done.is_multiple_of(10_000) {
            eprintln!(
                "{done} of {} subscribers done ({failed} failed) after {:.1} s",
                m.subscribers,
                connect_started.elapsed().as_secs_f64()
            );
        }
        if done == u64::from(m.subscribers) {
            break;
        }
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    if let Some(e) = &first_failure {
        eprintln!("{failed} subscribers failed to connect; the first: {e}");
    }
    if targets.is_empty() {
        bail!("no subscriber could connect");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let connected_sample = b.broker_pid.and_then(sample_process);

    // Phase 2: publishers send to random subscribers' topics for `duration` seconds.
    let targets = Arc::new(targets);
    let started = Instant::now();
    let until = started + Duration::from_secs(m.duration);
    let mut publishing = Vec::new();
    for p in 0..m.publishers {
        let publisher = Publisher {
            addr,
            source: source_addr(&m, p),
            client_id: format!("rb{run_id}p{p}"),
            producer: p as u32,
            run: run_id.clone(),
            targets: targets.clone(),
            until,
        };
        publishing.push(tokio::spawn(publish(publisher, m.clone(), shared.clone())));
    }
    let mut sent = 0u64;
    let mut publisher_errors = Vec::new();
    for h in publishing {
        match h.await? {
            Ok(n) => sent += n,
            Err(e) => publisher_errors.push(format!("{e:#}")),
        }
    }
    let published = started.elapsed();
    // Deliveries still on their way: wait until all are in or none comes for `settle`.
    let mut seen = shared.received.load(Ordering::Relaxed);
    let mut quiet = Instant::now();
    while seen < sent && quiet.elapsed() < Duration::from_secs(m.settle) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = shared.received.load(Ordering::Relaxed);
        if now != seen {
            (seen, quiet) = (now, Instant::now());
        }
    }
    let broker_after = b.broker_pid.and_then(sample_process);
    let last_delivery = Duration::from_micros(shared.last_us.load(Ordering::Relaxed));
    let elapsed = (shared.epoch + last_delivery)
        .saturating_duration_since(started)
        .max(published);

    // Phase 3: every subscriber disconnects.
    shared.stop.send_replace(true);
    let mut subscriber_errors = 0u64;
    let mut first_error = None;
    while let Some(joined) = subscribers.join_next().await {
        if let Some(e) = joined? {
            subscriber_errors += 1;
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = &first_error {
        eprintln!("{subscriber_errors} subscribers stopped early; the first: {e}");
    }
    for e in &publisher_errors {
        eprintln!("publisher failed: {e}");
    }

    let mut report = Report {
        scenario: "mqtt-many-subscribers",
        label: b.label.clone(),
        producers: m.publishers,
        consumers: targets.len(),
        queues: targets.len(),
        size: m.size.max(HEADER),
        confirm: m.qos > 0,
        sent,
        expected: sent,
        received: shared.received.load(Ordering::Relaxed),
        distinct: shared.distinct(),
        duplicates: shared.duplicates.load(Ordering::Relaxed),
        malformed: shared.malformed.load(Ordering::Relaxed),
        elapsed_s: elapsed.as_secs_f64(),
        broker_before: connected_sample,
        broker_after,
        ..Report::default()
    };
    let x = &mut report.extra;
    x.push(("qos", m.qos.to_string()));
    x.push(("inflight", m.inflight.to_string()));
    x.push(("duration_s", m.duration.to_string()));
    x.push(("subscribers", m.subscribers.to_string()));
    x.push(("connected", targets.len().to_string()));
    x.push(("failed", failed.to_string()));
    x.push(("connect_s", format!("{connect_s:.3}")));
    x.push((
        "publish_per_s",
        format!("{:.0}", sent as f64 / published.as_secs_f64().max(1e-9)),
    ));
    x.push((
        "misrouted",
        shared.misrouted.load(Ordering::Relaxed).to_string(),
    ));
    x.push(("subscriber_errors", subscriber_errors.to_string()));
    x.push(("publisher_errors", publisher_errors.len().to_string()));
    if let (Some(p50), Some(p99), Some(p999), Some(max)) = (
        shared.latency.percentile(50.0),
        shared.latency.percentile(99.0),
        shared.latency.percentile(99.9),
        shared.latency.percentile(100.0),
    ) {
        x.push((
            "latency_us",
            format!("{{\"p50\":{p50},\"p99\":{p99},\"p999\":{p999},\"max\":{max}}}"),
        ));
    }
    if let (Some(before), Some(after)) = (before_connect, connected_sample) {
        x.push((
            "broker_rss_before_connect_bytes",
            before.rss_bytes.to_string(),
        ));
        x.push(("broker_rss_connected_bytes", after.rss_bytes.to_string()));
        let per =
            after.rss_bytes.saturating_sub(before.rss_bytes) as f64 / targets.len().max(1) as f64;
        x.push(("broker_bytes_per_subscriber", format!("{per:.0}")));
        x.push((
            "broker_connect_cpu_s",
            format!("{:.2}", after.cpu_seconds - before.cpu_seconds),
        ));
    }
    if let Some(after) = broker_after {
        x.push(("broker_rss_end_bytes", after.rss_bytes.to_string()));
    }
    if let (Some(before), Some(after)) = (connected_sample, broker_after) {
        let cpu = after.cpu_seconds - before.cpu_seconds;
        x.push((
            "broker_cpu_percent",
            format!("{:.0}", cpu * 100.0 / elapsed.as_secs_f64().max(1e-9)),
        ));
    }
    let generator = sample_process(std::process::id())
        .zip(generator_before)
        .map(|(now, then): (ProcSample, ProcSample)| now.cpu_seconds - then.cpu_seconds);
    if let Some(cpu) = generator {
        x.push(("generator_cpu_s", format!("{cpu:.2}")));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_ordered_and_about_three_percent_wide() {
        let mut last = 0;
        for v in [0, 1, 63, 64, 65, 100, 1000, 12_345, 1 << 30, u64::MAX / 2] {
            let i = Histogram::index(v);
            assert!(i >= last);
            last = i;
            let up = Histogram::upper(i);
            assert!(up >= v, "{v} above its bucket's bound {up}");
            assert!(up - v <= v / 32 + 1, "bucket of {v} too wide: {up}");
        }
        let h = Histogram::new();
        for v in 1..=1000 {
            h.record(v);
        }
        let p50 = h.percentile(50.0).unwrap_or(0);
        assert!((500..=516).contains(&p50), "p50 {p50}");
        assert_eq!(Histogram::new().percentile(50.0), None);
    }

    #[test]
    fn packets_are_split_only_when_whole() {
        let mut buf = BytesMut::new();
        encode_publish(&mut buf, b"dev/1/cmd", 1, 7, &[9; 200]);
        let whole = buf.clone();
        let mut part = BytesMut::from(&whole[..100]);
        assert!(split_packet(&mut part).ok().flatten().is_none());
        let (first, mut packet) = split_packet(&mut buf)
            .ok()
            .flatten()
            .expect("a whole packet");
        assert_eq!(first, 0x32);
        assert_eq!(packet.get_u16(), 9);
        assert_eq!(&packet[..9], b"dev/1/cmd");
        assert_eq!(packet.len(), 9 + 2 + 200);
        assert!(buf.is_empty());
    }
}
