//! How long `GET /metrics` takes on a broker holding many queues (100,000 by default, the size
//! at which RabbitMQ's Prometheus endpoint is known to time out).
//!
//! The store is filled directly with durable queues, one small persistent message each; the
//! real server then recovers them and serves HTTP in this process, and the scrape is timed
//! end to end over a loopback socket: request, rendering, transfer.
//!
//!     cargo bench -p rosetta-server --bench scrape            # optimised build
//!     cargo bench -p rosetta-server --bench scrape -- 20000   # another queue count

use std::error::Error;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rosetta_core::message::{Message, Properties, Table};
use rosetta_core::store::{QueueRecord, Store};
use rosetta_server::Config;
use rosetta_store::SledStore;

const DEFAULT_QUEUES: u64 = 100_000;
const SCRAPES: usize = 10;
const STARTUP_DEADLINE: Duration = Duration::from_secs(300);

fn main() -> Result<(), Box<dyn Error>> {
    // `cargo bench` passes `--bench`; a number among the arguments is the queue count.
    let queues = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(DEFAULT_QUEUES);
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let started = Instant::now();
    populate(&data, queues)?;
    println!(
        "stored {queues} durable queues with one message each in {:.1?}",
        started.elapsed()
    );

    let http = free_loopback_port()?;
    let config = Config::from_toml_str(
        &format!(
            "[storage]\npath = {data:?}\n[amqp]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nenabled = false\n\
             [stomp]\nenabled = false\n[http]\nlisten = \"{http}\"\n[log]\nlevel = \"warn\"\n"
        ),
        "bench config",
    )?;
    // The broker runs until the process exits.
    std::thread::spawn(move || rosetta_server::run(config));
    let recovering = Instant::now();
    wait_until_healthy(http)?;
    println!(
        "broker recovered and serving in {:.1?}",
        recovering.elapsed()
    );

    let (_, warmup) = scrape(http)?;
    let series = warmup
        .lines()
        .filter(|l| l.starts_with("rosetta_queue_messages_ready{"))
        .count();
    if series as u64 != queues {
        return Err(format!("expected {queues} per-queue series, found {series}").into());
    }
    let mut times = Vec::with_capacity(SCRAPES);
    for _ in 0..SCRAPES {
        times.push(scrape(http)?.0);
    }
    times.sort();
    println!(
        "GET /metrics with {queues} queues ({} bytes, {} lines): min {:.1?}, median {:.1?}, max {:.1?} over {SCRAPES} scrapes",
        warmup.len(),
        warmup.lines().count(),
        times[0],
        times[SCRAPES / 2],
        times[SCRAPES - 1]
    );
    std::process::exit(0);
}

fn populate(path: &Path, queues: u64) -> Result<(), Box<dyn Error>> {
    let store = SledStore::open(path)?;
    for id in 1..=queues {
        let name = format!("bench.queue.{id}");
        store.save_queue(&QueueRecord {
            id,
            vhost: "/".into(),
            name,
            auto_delete: false,
            arguments: Table::new(),
            owner: None,
        })?;
        let properties = Properties {
            delivery_mode: Some(2),
            ..Properties::default()
        };
        let mut message = Message::new("", "bench", properties, Bytes::from_static(b"payload"));
        message.id = id;
        store.enqueue(&std::sync::Arc::new(message), &[(id, 1)])?;
    }
    store.sync()?;
    Ok(())
}

fn free_loopback_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn wait_until_healthy(addr: SocketAddr) -> Result<(), Box<dyn Error>> {
    let deadline = Instant::now() + STARTUP_DEADLINE;
    while Instant::now() < deadline {
        if get(addr, "/healthz").is_ok_and(|body| body.starts_with("HTTP/1.1 200")) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("the broker did not become healthy in time".into())
}

/// One timed scrape: the duration and the body.
fn scrape(addr: SocketAddr) -> Result<(Duration, String), Box<dyn Error>> {
    let started = Instant::now();
    let response = get(addr, "/metrics")?;
    let elapsed = started.elapsed();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .ok_or("malformed response")?;
    Ok((elapsed, body))
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
