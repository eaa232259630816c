//! STOMP 1.2 clients over a tokio `TcpStream`: publishers sending persistent messages with a
//! receipt each, and consumers acknowledging each message (`client-individual`).

use crate::ledger::{body_of, message_id, rng_for, Protocol, Sink, TOPIC_ROUTE};
use crate::world::{away, lifetime, pause, publish_until_stopped, step, World, STEP};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const QUEUE_ROUTE: &[Sink] = &[Sink::StompQueue];

/// A frame from the broker, header values unescaped (STOMP 1.2 "Value Encoding").
pub struct Frame {
    pub command: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn header(&self, name: &str) -> Option<&str> {
        // STOMP 1.2 "Repeated Header Entries": the first one counts.
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn error(&self) -> String {
        format!(
            "stomp ERROR: {}",
            self.header("message").unwrap_or("(no message)")
        )
    }
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('c') => out.push(':'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
        .replace(':', "\\c")
}

/// Appends one frame's bytes to `out`.
pub fn encode(out: &mut Vec<u8>, command: &str, headers: &[(&str, &str)], body: &[u8]) {
    out.extend_from_slice(command.as_bytes());
    out.push(b'\n');
    for (name, value) in headers {
        out.extend_from_slice(format!("{}:{}\n", escape(name), escape(value)).as_bytes());
    }
    if !body.is_empty() {
        out.extend_from_slice(format!("content-length:{}\n", body.len()).as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(body);
    out.push(0);
}

pub struct Stomp {
    stream: TcpStream,
    input: Vec<u8>,
}

impl Stomp {
    /// Connects and logs in as guest with STOMP 1.2, no heart-beats.
    pub async fn connect(addr: SocketAddr) -> Result<Stomp, String> {
        let stream = step("stomp connect", TcpStream::connect(addr)).await?;
        let _ = stream.set_nodelay(true);
        let mut stomp = Stomp {
            stream,
            input: Vec::new(),
        };
        let mut out = Vec::new();
        encode(
            &mut out,
            "CONNECT",
            &[
                ("accept-version", "1.2"),
                ("host", "/"),
                ("login", "guest"),
                ("passcode", "guest"),
                ("heart-beat", "0,0"),
            ],
            b"",
        );
        stomp.write(&out).await?;
        let frame = stomp.next(Instant::now() + STEP).await?;
        match frame.command.as_str() {
            "CONNECTED" => Ok(stomp),
            "ERROR" => Err(frame.error()),
            other => Err(format!("stomp connect: {other} instead of CONNECTED")),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        step("stomp write", self.stream.write_all(bytes)).await
    }

    /// The next frame before `deadline`; `Ok(None)` at the deadline. Reading into the buffer
    /// is cancel-safe, so the deadline loses nothing.
    pub async fn next_until(&mut self, deadline: Instant) -> Result<Option<Frame>, String> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) => return Err("stomp read: connection closed".into()),
                Ok(Ok(n)) => self.input.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(format!("stomp read: {e}")),
                Err(_) => return Ok(None),
            }
        }
    }

    pub async fn next(&mut self, deadline: Instant) -> Result<Frame, String> {
        self.next_until(deadline)
            .await?
            .ok_or_else(|| "stomp read: timed out".to_string())
    }

    /// One complete frame from the buffer, if there is one (STOMP 1.2 "Augmented BNF").
    fn parse(&mut self) -> Result<Option<Frame>, String> {
        // Heart-beats and the optional EOLs after a frame's NUL.
        let skip = self
            .input
            .iter()
            .take_while(|&&b| b == b'\n' || b == b'\r')
            .count();
        self.input.drain(..skip);
        let Some(head_end) = self.input.windows(2).position(|w| w == b"\n\n") else {
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&self.input[..head_end]).into_owned();
        let mut lines = head.split('\n').map(|l| l.trim_end_matches('\r'));
        let command = lines.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                (unescape(name), unescape(value))
            })
            .collect();
        let body_start = head_end + 2;
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse::<usize>())
            .transpose()
            .map_err(|e| format!("stomp frame: bad content-length: {e}"))?;
        let body_end = match length {
            Some(len) if self.input.len() > body_start + len => body_start + len,
            Some(_) => return Ok(None),
            None => match self.input[body_start..].iter().position(|&b| b == 0) {
                Some(at) => body_start + at,
                None => return Ok(None),
            },
        };
        if self.input[body_end] != 0 {
            return Err("stomp frame: no NUL after the body".into());
        }
        let body = self.input[body_start..body_end].to_vec();
        self.input.drain(..=body_end);
        Ok(Some(Frame {
            command,
            headers,
            body,
        }))
    }

    /// Half the time DISCONNECT with a receipt (STOMP 1.2 "Graceful Disconnect"), otherwise the
    /// socket just goes away.
    async fn close(mut self, rng: &mut fastrand::Rng) {
        if rng.bool() {
            let mut out = Vec::new();
            encode(&mut out, "DISCONNECT", &[("receipt", "bye")], b"");
            if self.write(&out).await.is_ok() {
                let _ = self.next(Instant::now() + Duration::from_secs(1)).await;
            }
        }
    }
}

/// Sends persistent messages in bursts until the run stops publishing: three in four to
/// `/queue/soak.s`, one in four to `/topic/soak.m.s` (`amq.topic`, where the MQTT session and
/// `soak.x` receive it). A message counts once its RECEIPT arrived.
pub async fn publisher(world: Arc<World>, task: u64) {
    publish_until_stopped(world, task, "stomp publisher", |a| a.stomp, publish_session).await;
}

async fn publish_session(
    world: &World,
    rng: &mut fastrand::Rng,
    addr: SocketAddr,
    publisher: u64,
    seq: &mut u64,
) -> Result<(), String> {
    let mut stomp = Stomp::connect(addr).await?;
    let until = Instant::now() + lifetime(rng);
    while world.publishing() && Instant::now() < until {
        let mut out = Vec::new();
        let mut pending = HashMap::new();
        for _ in 0..rng.usize(1..=40) {
            *seq += 1;
            let id = message_id(publisher, *seq);
            let (destination, route) = if rng.u8(..4) == 0 {
                ("/topic/soak.m.s", TOPIC_ROUTE)
            } else {
                ("/queue/soak.s", QUEUE_ROUTE)
            };
            let receipt = format!("r{id}");
            world.ledger.sent(id);
            encode(
                &mut out,
                "SEND",
                &[
                    ("destination", destination),
                    ("persistent", "true"),
                    ("receipt", &receipt),
                    ("content-type", "text/plain"),
                ],
                body_of(id).as_bytes(),
            );
            pending.insert(receipt, (id, route));
        }
        stomp.write(&out).await?;
        let deadline = Instant::now() + STEP;
        while !pending.is_empty() {
            let frame = stomp.next(deadline).await?;
            match frame.command.as_str() {
                "RECEIPT" => {
                    let receipt = frame.header("receipt-id").unwrap_or_default();
                    if let Some((id, route)) = pending.remove(receipt) {
                        world.ledger.confirmed(Protocol::Stomp, id, route);
                    }
                }
                "ERROR" => return Err(frame.error()),
                _ => {}
            }
        }
        pause(rng, 0, 50).await;
    }
    stomp.close(rng).await;
    Ok(())
}

/// Consumes `destination` into `sink`, recording each message before its ACK, until the run
/// stops.
pub async fn consumer(world: Arc<World>, task: u64, destination: &'static str, sink: Sink) {
    let mut rng = rng_for(world.seed, task);
    while !world.stopped() {
        let Some(addrs) = world.addrs().await else {
            break;
        };
        let kills = world.kills();
        let result = consume_session(&world, &mut rng, addrs.stomp, destination, sink).await;
        world.connection_ended("stomp consumer", kills, result);
        away(&world, &mut rng).await;
    }
}

async fn consume_session(
    world: &World,
    rng: &mut fastrand::Rng,
    addr: SocketAddr,
    destination: &str,
    sink: Sink,
) -> Result<(), String> {
    let mut stomp = Stomp::connect(addr).await?;
    let prefetch = rng.u16(1..=200).to_string();
    let mut out = Vec::new();
    encode(
        &mut out,
        "SUBSCRIBE",
        &[
            ("id", "0"),
            ("destination", destination),
            ("ack", "client-individual"),
            ("prefetch-count", &prefetch),
        ],
        b"",
    );
    stomp.write(&out).await?;
    let until = Instant::now() + lifetime(rng);
    while !world.stopped() && (!world.chaos() || Instant::now() < until) {
        let idle = Instant::now() + Duration::from_millis(500);
        // `None`: idle; look at the clock and the run's phase again.
        let Some(frame) = stomp.next_until(idle).await? else {
            continue;
        };
        match frame.command.as_str() {
            "MESSAGE" => {
                world.ledger.delivered(sink, &frame.body);
                let ack = frame
                    .header("ack")
                    .ok_or("stomp MESSAGE: no ack header")?
                    .to_string();
                let mut out = Vec::new();
                encode(&mut out, "ACK", &[("id", &ack)], b"");
                stomp.write(&out).await?;
            }
            "ERROR" => return Err(frame.error()),
            _ => {}
        }
    }
    stomp.close(rng).await;
    Ok(())
}
