//! The AMQP 0-9-1 scenarios, driven with lapin so any compliant broker can be measured.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::watch;

use crate::pace::{self, Pacer};
use crate::report::Report;
use crate::stats::{sample_process, stamp, Tally, STAMP};
use crate::Common;

async fn channel(uri: &str) -> Result<(Connection, Channel)> {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .with_context(|| format!("connect {uri}"))?;
    let ch = conn.create_channel().await?;
    Ok((conn, ch))
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

async fn declare_queue(ch: &Channel, name: &str, durable: bool) -> Result<()> {
    let opts = QueueDeclareOptions {
        durable,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(name.into(), opts, FieldTable::default())
        .await?;
    Ok(())
}

struct Publisher {
    uri: String,
    exchange: String,
    routing_key: String,
    producer: u32,
    count: u64,
    size: usize,
    persistent: bool,
    confirm: Option<usize>,
    /// Fixed rate in messages per second, or as fast as possible.
    rate: Option<u64>,
    epoch: Instant,
}

impl Publisher {
    /// Publishes `count` messages; returns how many were published (and confirmed, if asked).
    async fn run(self) -> Result<u64> {
        let (conn, ch) = channel(&self.uri).await?;
        if self.confirm.is_some() {
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
        }
        let mut props = BasicProperties::default();
        if self.persistent {
            props = props.with_delivery_mode(2);
        }
        let window = self.confirm.unwrap_or(0).max(1);
        let mut in_flight = VecDeque::with_capacity(window);
        let mut body = vec![0u8; self.size.max(STAMP)];
        let mut confirmed = 0u64;
        let mut pacer = self.rate.map(Pacer::new);
        for seq in 0..self.count {
            if let Some(p) = &mut pacer {
                p.next().await;
            }
            stamp(&mut body, self.producer, seq, self.epoch);
            let confirm = ch
                .basic_publish(
                    self.exchange.as_str().into(),
                    self.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props.clone(),
                )
                .await?;
            if self.confirm.is_some() {
                in_flight.push_back(confirm);
                if in_flight.len() >= window {
                    if let Some(oldest) = in_flight.pop_front() {
                        if oldest.await?.is_ack() {
                            confirmed += 1;
                        }
                    }
                }
            } else {
                confirmed += 1;
            }
        }
        for c in in_flight {
            if c.await?.is_ack() {
                confirmed += 1;
            }
        }
        let _ = conn.close(200, "done".into()).await;
        Ok(confirmed)
    }
}

struct Subscriber {
    uri: String,
    queue: String,
    lane: usize,
    lanes: usize,
    prefetch: u16,
    auto_ack: bool,
    producers: usize,
    per_producer: u64,
    keep_latency: bool,
    epoch: Instant,
    /// Shared count of deliveries across consumers; everyone stops once it reaches the goal.
    received: Arc<AtomicU64>,
    goal: u64,
    stop: watch::Receiver<bool>,
    /// Rung by whichever consumer takes the last message, so idle ones stop waiting.
    done: Arc<watch::Sender<bool>>,
}

impl Subscriber {
    async fn run(mut self) -> Result<Tally> {
        let (conn, ch) = channel(&self.uri).await?;
        ch.basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let opts = BasicConsumeOptions {
            no_ack: self.auto_ack,
            ..BasicConsumeOptions::default()
        };
        let mut consumer = ch
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                opts,
                FieldTable::default(),
            )
            .await?;
        let mut tally = Tally::new(self.lanes, self.producers, self.per_producer);
        while self.received.load(Ordering::Relaxed) < self.goal && !*self.stop.borrow() {
            let next = tokio::select! {
                n = consumer.next() => n,
                _ = self.stop.changed() => break,
            };
            let Some(delivery) = next else { break };
            let delivery = delivery?;
            let now = self.epoch.elapsed().as_micros() as u64;
            tally.record(&delivery.data, self.lane, now, self.keep_latency);
            if !self.auto_ack {
                delivery.ack(BasicAckOptions::default()).await?;
            }
            if self.received.fetch_add(1, Ordering::Relaxed) + 1 >= self.goal {
                let _ = self.done.send(true);
            }
        }
        let _ = conn.close(200, "done".into()).await;
        Ok(tally)
    }
}

/// Running consumers: their join handles, the switch that stops them, and their shared count.
type Subscribers = (
    Vec<tokio::task::JoinHandle<Result<Tally>>>,
    Arc<watch::Sender<bool>>,
    Arc<AtomicU64>,
);

/// Starts consumers on `queues` (round-robin), returns their join handles and the stop switch.
fn spawn_subscribers(
    c: &Common,
    queues: &[String],
    consumers: usize,
    goal: u64,
    keep_latency: bool,
    epoch: Instant,
) -> Subscribers {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let received = Arc::new(AtomicU64::new(0));
    let per_producer = c.messages / c.producers as u64;
    let handles = (0..consumers)
        .map(|i| {
            let sub = Subscriber {
                uri: c.uri.clone(),
                queue: queues[i % queues.len()].clone(),
                lane: i % queues.len(),
                lanes: queues.len(),
                prefetch: c.prefetch,
                auto_ack: c.auto_ack,
                producers: c.producers,
                per_producer,
                keep_latency,
                epoch,
                received: received.clone(),
                goal,
                stop: stop_rx.clone(),
                done: stop_tx.clone(),
            };
            tokio::spawn(sub.run())
        })
        .collect();
    (handles, stop_tx, received)
}

fn spawn_publishers(
    c: &Common,
    exchange: &str,
    routing_key: &str,
    rate: Option<u64>,
    epoch: Instant,
) -> Vec<tokio::task::JoinHandle<Result<u64>>> {
    let per_producer = c.messages / c.producers as u64;
    (0..c.producers)
        .map(|p| {
            let publisher = Publisher {
                uri: c.uri.clone(),
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                producer: p as u32,
                count: per_producer,
                size: c.size,
                persistent: c.persistent,
                confirm: c.confirm,
                rate: pace::per_publisher(rate, c.producers),
                epoch,
            };
            tokio::spawn(publisher.run())
        })
        .collect()
}

async fn join_publishers(handles: Vec<tokio::task::JoinHandle<Result<u64>>>) -> Result<u64> {
    let mut sent = 0;
    for h in handles {
        sent += h.await??;
    }
    Ok(sent)
}

/// Waits for consumers until they reach their goal or the timeout passes, then stops them.
async fn join_subscribers(
    handles: Vec<tokio::task::JoinHandle<Result<Tally>>>,
    stop: Arc<watch::Sender<bool>>,
    c: &Common,
    lanes: usize,
    started: Instant,
) -> Result<Tally> {
    let per_producer = c.messages / c.producers as u64;
    let mut total = Tally::new(lanes, c.producers, per_producer);
    let deadline = started + c.timeout();
    let mut pending = handles;
    let stopper = tokio::spawn(async move {
        tokio::time::sleep_until(deadline.into()).await;
        let _ = stop.send(true);
    });
    for h in pending.drain(..) {
        total.merge(h.await??);
    }
    stopper.abort();
    Ok(total)
}

fn base_report(scenario: &'static str, c: &Common, queues: usize) -> Report {
    Report {
        scenario,
        label: c.label.clone(),
        producers: c.producers,
        consumers: c.consumers,
        queues,
        size: c.size,
        persistent: c.persistent,
        confirm: c.confirm.is_some(),
        prefetch: c.prefetch,
        broker_before: c.broker_pid.and_then(sample_process),
        ..Report::default()
    }
}

fn validate(c: &Common) -> Result<()> {
    if c.producers == 0 || c.consumers == 0 {
        bail!("need at least one producer and one consumer");
    }
    if c.size < STAMP {
        bail!("--size must be at least {STAMP} bytes");
    }
    Ok(())
}

async fn single_queue(
    c: &Common,
    scenario: &'static str,
    rate: Option<u64>,
    keep_latency: bool,
) -> Result<Report> {
    validate(c)?;
    let queue = format!("bench-{scenario}-{}", run_id());
    let (conn, ch) = channel(&c.uri).await?;
    declare_queue(&ch, &queue, c.persistent).await?;
    let mut report = base_report(scenario, c, 1);
    let epoch = Instant::now();
    let expected = (c.messages / c.producers as u64) * c.producers as u64;
    let (subs, stop, _) = spawn_subscribers(
        c,
        std::slice::from_ref(&queue),
        c.consumers,
        expected,
        keep_latency,
        epoch,
    );
    let pubs = spawn_publishers(c, "", &queue, rate, epoch);
    report.sent = join_publishers(pubs).await?;
    let tally = join_subscribers(subs, stop, c, 1, epoch).await?;
    report.elapsed_s = epoch.elapsed().as_secs_f64();
    report.broker_after = c.broker_pid.and_then(sample_process);
    report.expected = expected;
    report.absorb(tally);
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(report)
}

pub async fn throughput(c: &Common) -> Result<Report> {
    single_queue(c, "throughput", None, false).await
}

pub async fn latency(c: &Common, rate: u64) -> Result<Report> {
    let mut report = single_queue(c, "latency", Some(rate), true).await?;
    report.extra.push(("rate", rate.to_string()));
    Ok(report)
}

pub async fn fanout(c: &Common, queues: usize) -> Result<Report> {
    let c = Common {
        producers: 1,
        consumers: queues,
        ..c.clone()
    };
    validate(&c)?;
    let id = run_id();
    let exchange = format!("bench-fanout-{id}");
    let (conn, ch) = channel(&c.uri).await?;
    let opts = ExchangeDeclareOptions {
        durable: c.persistent,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Fanout,
        opts,
        FieldTable::default(),
    )
    .await?;
    let names: Vec<String> = (0..queues)
        .map(|i| format!("bench-fanout-{id}-{i}"))
        .collect();
    for q in &names {
        declare_queue(&ch, q, c.persistent).await?;
        ch.queue_bind(
            q.as_str().into(),
            exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    let mut report = base_report("fanout", &c, queues);
    let epoch = Instant::now();
    let expected = c.messages * queues as u64;
    let (subs, stop, _) = spawn_subscribers(&c, &names, queues, expected, false, epoch);
    let pubs = spawn_publishers(&c, &exchange, "", None, epoch);
    report.sent = join_publishers(pubs).await?;
    let tally = join_subscribers(subs, stop, &c, queues, epoch).await?;
    report.elapsed_s = epoch.elapsed().as_secs_f64();
    report.broker_after = c.broker_pid.and_then(sample_process);
    report.expected = expected;
    report.absorb(tally);
    for q in &names {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(report)
}

/// One queue bound to `amq.topic` with the key the publishers use, and `bindings` more topic
/// patterns that never match it (bound to a second queue, which stays empty): the publish rate
/// and the broker's CPU per message against the number of bindings show what routing costs.
pub async fn topic_routing(c: &Common, bindings: usize) -> Result<Report> {
    validate(c)?;
    let id = run_id();
    let (queue, idle) = (
        format!("bench-topic-{id}"),
        format!("bench-topic-{id}-idle"),
    );
    let key = "dev.target.cmd";
    let (conn, ch) = channel(&c.uri).await?;
    declare_queue(&ch, &queue, c.persistent).await?;
    declare_queue(&ch, &idle, false).await?;
    let bind = |q: String, pattern: String| {
        let ch = ch.clone();
        async move {
            ch.queue_bind(
                q.as_str().into(),
                "amq.topic".into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("bind {q} to amq.topic with {pattern}"))
        }
    };
    bind(queue.clone(), key.to_owned()).await?;
    // Exact words, `*` and `#` in turn; none matches `dev.target.cmd`.
    let bind_started = Instant::now();
    for i in 0..bindings {
        let pattern = match i % 3 {
            0 => format!("dev.{i}.cmd"),
            1 => format!("dev.*.{i}"),
            _ => format!("dev.{i}.#"),
        };
        bind(idle.clone(), pattern).await?;
    }
    let bind_s = bind_started.elapsed().as_secs_f64();
    let mut report = base_report("topic-routing", c, 1);
    report.broker_before = c.broker_pid.and_then(sample_process);
    let epoch = Instant::now();
    let expected = (c.messages / c.producers as u64) * c.producers as u64;
    let (subs, stop, _) = spawn_subscribers(
        c,
        std::slice::from_ref(&queue),
        c.consumers,
        expected,
        false,
        epoch,
    );
    let pubs = spawn_publishers(c, "amq.topic", key, None, epoch);
    report.sent = join_publishers(pubs).await?;
    let tally = join_subscribers(subs, stop, c, 1, epoch).await?;
    report.elapsed_s = epoch.elapsed().as_secs_f64();
    report.broker_after = c.broker_pid.and_then(sample_process);
    report.expected = expected;
    report.absorb(tally);
    report.extra.push(("bindings", bindings.to_string()));
    report.extra.push(("bind_s", format!("{bind_s:.3}")));
    for q in [&queue, &idle] {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(report)
}

pub async fn backlog(
    c: &Common,
    data_dir: Option<&std::path::Path>,
    settle_s: u64,
) -> Result<Report> {
    validate(c)?;
    let queue = format!("bench-backlog-{}", run_id());
    let (conn, ch) = channel(&c.uri).await?;
    declare_queue(&ch, &queue, c.persistent).await?;
    let mut report = base_report("backlog", c, 1);
    let epoch = Instant::now();
    let pubs = spawn_publishers(c, "", &queue, None, epoch);
    report.sent = join_publishers(pubs).await?;
    report.publish_s = Some(epoch.elapsed().as_secs_f64());
    report.broker_rss_after_publish = c.broker_pid.and_then(sample_process).map(|s| s.rss_bytes);
    if let Some(dir) = data_dir {
        report
            .extra
            .push(("dir_bytes_published", dir_bytes(dir).to_string()));
    }
    let expected = (c.messages / c.producers as u64) * c.producers as u64;
    let (subs, stop, _) = spawn_subscribers(
        c,
        std::slice::from_ref(&queue),
        c.consumers,
        expected,
        false,
        epoch,
    );
    let tally = join_subscribers(subs, stop, c, 1, epoch).await?;
    report.elapsed_s = epoch.elapsed().as_secs_f64();
    report.broker_after = c.broker_pid.and_then(sample_process);
    report.expected = expected;
    report.absorb(tally);
    if let Some(dir) = data_dir {
        // Measured with the drained queue still declared: what acknowledgements gave back,
        // not what deleting the queue would.
        report
            .extra
            .push(("dir_bytes_drained", dir_bytes(dir).to_string()));
        tokio::time::sleep(Duration::from_secs(settle_s)).await;
        report
            .extra
            .push(("dir_bytes_settled", dir_bytes(dir).to_string()));
    }
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(report)
}

/// Total size of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub async fn churn(c: &Common, data_dir: &std::path::Path, sample_every: u64) -> Result<Report> {
    validate(c)?;
    let queue = format!("bench-churn-{}", run_id());
    let (conn, ch) = channel(&c.uri).await?;
    declare_queue(&ch, &queue, c.persistent).await?;
    let mut report = base_report("churn", c, 1);
    let epoch = Instant::now();
    let expected = (c.messages / c.producers as u64) * c.producers as u64;
    let (subs, stop, received) = spawn_subscribers(
        c,
        std::slice::from_ref(&queue),
        c.consumers,
        expected,
        false,
        epoch,
    );
    let pubs = spawn_publishers(c, "", &queue, None, epoch);
    let mut next = sample_every;
    let mut curve = Vec::new();
    while received.load(Ordering::Relaxed) < expected && epoch.elapsed() < c.timeout() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = received.load(Ordering::Relaxed);
        if got >= next {
            curve.push((got, dir_bytes(data_dir)));
            // The live data the directory is measured against: messages waiting in the queue.
            let depth = ch
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_or(0, |q| q.message_count());
            eprintln!(
                "churn: {got} messages, data directory {} bytes, {depth} messages queued",
                curve.last().map_or(0, |p| p.1)
            );
            next += sample_every;
        }
    }
    report.sent = join_publishers(pubs).await?;
    let tally = join_subscribers(subs, stop, c, 1, epoch).await?;
    report.elapsed_s = epoch.elapsed().as_secs_f64();
    report.broker_after = c.broker_pid.and_then(sample_process);
    report.expected = expected;
    report.absorb(tally);
    curve.push((report.received, dir_bytes(data_dir)));
    report.size_curve = curve;
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(report)
}
