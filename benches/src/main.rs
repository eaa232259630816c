//! `rosetta-bench`: a load generator for any AMQP 0-9-1, MQTT or STOMP broker, so Rosetta, RabbitMQ
//! and Mosquitto are measured by the same code. Every scenario counts each message received, reports losses and
//! duplicates, and ends with one JSON line on stdout.

mod amqp;
mod mqtt;
mod mqtt_many;
mod pace;
mod report;
mod stats;
mod stomp;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rosetta-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// P producers and C consumers on one queue, as fast as the broker takes it.
    Throughput(Common),
    /// Publish at a fixed rate and measure end-to-end latency percentiles.
    Latency {
        #[command(flatten)]
        common: Common,
        /// Messages per second, spread evenly over time.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
    },
    /// One producer, N queues bound to a fanout exchange, one consumer per queue.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10)]
        queues: usize,
    },
    /// P producers and C consumers through `amq.topic` to one queue, with `--bindings` more
    /// topic patterns bound that never match: routing cost against the number of bindings.
    TopicRouting {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        bindings: usize,
    },
    /// Publish M messages with no consumer, then drain them.
    Backlog {
        #[command(flatten)]
        common: Common,
        /// The broker's data directory: when given, its size is reported after publishing,
        /// once drained, and `--settle` seconds later (space given back).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 10)]
        settle: u64,
    },
    /// Steady publish-and-consume through one queue while the broker's data directory is
    /// measured every `--sample-every` messages (space reclaim under churn).
    Churn {
        #[command(flatten)]
        common: Common,
        /// The broker's data directory, whose size is sampled.
        #[arg(long)]
        data_dir: std::path::PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        sample_every: u64,
    },
    /// MQTT: P publishers and C subscribers on one topic; every subscriber gets every message.
    MqttThroughput(mqtt::Flow),
    /// MQTT: one publisher, N subscribers on its topic.
    MqttFanout {
        #[command(flatten)]
        flow: mqtt::Flow,
        #[arg(long, default_value_t = 100)]
        fanout: usize,
    },
    /// MQTT: open N connections that stay idle, and report the broker's memory per connection
    /// and its CPU use while they idle.
    MqttIdle {
        #[command(flatten)]
        broker: mqtt::Broker,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Seconds the connections stay open, once all are up, before the broker's memory is
        /// sampled; its CPU use is measured over this hold.
        #[arg(long, default_value_t = 5)]
        hold: u64,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
    },
    /// MQTT: N subscribers, each on its own topic, and P publishers sending to random
    /// subscribers' topics for `--duration` seconds: routing and delivery with N subscriptions.
    MqttManySubscribers(mqtt_many::Many),
    /// STOMP 1.2: P producers and C consumers on one `/queue/` destination, with
    /// `--uri stomp://login:passcode@host:port[/vhost]`; `--confirm N` puts a `receipt` on every
    /// SEND with N unreceipted in flight, consumers ACK each MESSAGE (`ack:client-individual`).
    StompThroughput {
        #[command(flatten)]
        common: Common,
        /// Send at this many messages per second in total (shared by the producers), evenly
        /// spaced by the clock, each SEND written at once; latency is recorded.
        #[arg(long)]
        rate: Option<u64>,
    },
}

#[derive(Args, Clone)]
pub struct Common {
    /// Broker URI.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// Free-form name recorded in the report (e.g. the broker measured).
    #[arg(long, default_value = "")]
    pub label: String,
    #[arg(long, short = 'p', default_value_t = 1)]
    pub producers: usize,
    #[arg(long, short = 'c', default_value_t = 1)]
    pub consumers: usize,
    /// Messages in total (per producer: total / producers).
    #[arg(long, short = 'n', default_value_t = 100_000)]
    pub messages: u64,
    /// Body size in bytes (at least 16: the stamp).
    #[arg(long, short = 's', default_value_t = 1024)]
    pub size: usize,
    /// Persistent messages in a durable queue.
    #[arg(long)]
    pub persistent: bool,
    /// Publisher confirms, with this many unconfirmed messages in flight per producer.
    #[arg(long)]
    pub confirm: Option<usize>,
    /// Consumer prefetch (0 = unlimited). Consumers ack every message.
    #[arg(long, default_value_t = 100)]
    pub prefetch: u16,
    /// Consume with auto-ack instead of manual acks.
    #[arg(long)]
    pub auto_ack: bool,
    /// Give up after this many seconds and report what was lost.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// The broker's process id, to report its CPU time and peak memory.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Tokio worker threads for the generator itself.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

impl Common {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let threads = match &cli.scenario {
        Scenario::Throughput(c) | Scenario::Backlog { common: c, .. } => c.threads,
        Scenario::Latency { common, .. }
        | Scenario::Fanout { common, .. }
        | Scenario::Churn { common, .. }
        | Scenario::TopicRouting { common, .. } => common.threads,
        Scenario::MqttThroughput(flow) | Scenario::MqttFanout { flow, .. } => flow.broker.threads,
        Scenario::MqttIdle { broker, .. } => broker.threads,
        Scenario::MqttManySubscribers(m) => m.broker.threads,
        Scenario::StompThroughput { common, .. } => common.threads,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        match cli.scenario {
            Scenario::Throughput(c) => amqp::throughput(&c).await,
            Scenario::Latency { common, rate } => amqp::latency(&common, rate).await,
            Scenario::Fanout { common, queues } => amqp::fanout(&common, queues).await,
            Scenario::TopicRouting { common, bindings } => {
                amqp::topic_routing(&common, bindings).await
            }
            Scenario::Backlog {
                common,
                data_dir,
                settle,
            } => amqp::backlog(&common, data_dir.as_deref(), settle).await,
            Scenario::Churn {
                common,
                data_dir,
                sample_every,
            } => amqp::churn(&common, &data_dir, sample_every).await,
            Scenario::MqttThroughput(flow) => mqtt::throughput(&flow, "mqtt-throughput").await,
            Scenario::MqttFanout { flow, fanout } => {
                mqtt::throughput(
                    &mqtt::Flow {
                        publishers: 1,
                        subscribers: fanout,
                        ..flow
                    },
                    "mqtt-fanout",
                )
                .await
            }
            Scenario::MqttIdle {
                broker,
                connections,
                hold,
                concurrency,
            } => mqtt::idle(&broker, connections, hold, concurrency).await,
            Scenario::MqttManySubscribers(m) => mqtt_many::run(m).await,
            Scenario::StompThroughput { common, rate } => stomp::throughput(&common, rate).await,
        }
    })?;
    println!("{}", report.to_json());
    Ok(())
}
