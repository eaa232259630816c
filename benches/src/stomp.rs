//! The STOMP 1.2 scenarios, driven by a minimal client written for the bench over a plain
//! TCP stream, so any broker speaking STOMP (Rosetta, RabbitMQ's STOMP plugin) is measured the
//! same way: SEND with `content-length` (and a `receipt` per message when `--confirm` asks for
//! a window of unreceipted SENDs), SUBSCRIBE with `ack:client-individual` and RabbitMQ's
//! `prefetch-count`, one ACK per MESSAGE.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore, TryAcquireError};

use crate::pace::{self, Pacer};
use crate::report::Report;
use crate::stats::{sample_process, stamp, Tally, STAMP};
use crate::Common;

/// Writes are sent once this much is buffered, or earlier when the sender must wait.
const WRITE_CHUNK: usize = 64 * 1024;
/// A frame's command and headers larger than this mean the stream is not STOMP.
const MAX_HEAD: usize = 64 * 1024;
/// The receipt id of the closing DISCONNECT.
const BYE: &str = "bye";

/// Where and as whom to connect, from `stomp://login:passcode@host:port[/vhost]`.
#[derive(Clone)]
struct Target {
    addr: String,
    login: String,
    passcode: String,
    host: String,
}

fn parse_uri(uri: &str) -> Result<Target> {
    let rest = uri
        .strip_prefix("stomp://")
        .context("--uri must be stomp://login:passcode@host:port[/vhost] for STOMP scenarios")?;
    let (auth, rest) = rest.rsplit_once('@').unwrap_or(("guest:guest", rest));
    let (login, passcode) = auth.split_once(':').unwrap_or((auth, ""));
    let (addr, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let host = match vhost {
        "" | "%2f" | "%2F" => "/".to_owned(),
        v => v.to_owned(),
    };
    Ok(Target {
        addr: addr.to_owned(),
        login: login.to_owned(),
        passcode: passcode.to_owned(),
        host,
    })
}

struct Frame {
    command: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Frame {
    /// STOMP 1.2 Repeated Header Entries: the first occurrence wins.
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn into_error(self) -> anyhow::Error {
        let message = self.get("message").unwrap_or("").to_owned();
        anyhow::anyhow!(
            "broker sent ERROR: {message}: {}",
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// STOMP 1.2 Value Encoding: `\\`, `\n`, `\r` and `\c` in header names and values (but not in
/// CONNECT and CONNECTED frames).
fn unescape(raw: &[u8], escaped: bool) -> Result<String> {
    let text = std::str::from_utf8(raw).context("header is not UTF-8")?;
    if !escaped || !text.contains('\\') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('\\') => '\\',
            Some('n') => '\n',
            Some('r') => '\r',
            Some('c') => ':',
            other => bail!(
                "undefined escape \\{}",
                other.map(String::from).unwrap_or_default()
            ),
        });
    }
    Ok(out)
}

fn escape_into(out: &mut Vec<u8>, value: &str) {
    for b in value.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b':' => out.extend_from_slice(b"\\c"),
            b => out.push(b),
        }
    }
}

/// Takes one frame off the front of `buf`, or None while it is incomplete. Bodies are framed by
/// `content-length` when present (they may hold NUL), else they end at the first NUL.
fn parse(buf: &mut BytesMut) -> Result<Option<Frame>> {
    // STOMP 1.2 Heart-beating: end-of-lines may come between frames.
    let skip = buf
        .iter()
        .take_while(|b| **b == b'\n' || **b == b'\r')
        .count();
    buf.advance(skip);
    let mut pos = 0;
    let mut lines: Vec<(usize, usize)> = Vec::new();
    loop {
        let Some(nl) = buf[pos..].iter().position(|b| *b == b'\n') else {
            if buf.len() > MAX_HEAD {
                bail!("no end of headers in {} bytes", buf.len());
            }
            return Ok(None);
        };
        let end = pos + nl;
        let line_end = if end > pos && buf[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        let line = (pos, line_end);
        pos = end + 1;
        if line.0 == line.1 {
            break;
        }
        lines.push(line);
    }
    let Some(&(cs, ce)) = lines.first() else {
        bail!("empty frame")
    };
    let command = std::str::from_utf8(&buf[cs..ce])
        .context("command is not UTF-8")?
        .to_owned();
    let escaped = command != "CONNECTED";
    let mut headers = Vec::with_capacity(lines.len() - 1);
    for &(s, e) in &lines[1..] {
        let line = &buf[s..e];
        let colon = line
            .iter()
            .position(|b| *b == b':')
            .with_context(|| format!("header without ':' in {command}"))?;
        headers.push((
            unescape(&line[..colon], escaped)?,
            unescape(&line[colon + 1..], escaped)?,
        ));
    }
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse::<usize>())
        .transpose()?;
    let body_end = match length {
        Some(len) => {
            if buf.len() < pos + len + 1 {
                return Ok(None);
            }
            if buf[pos + len] != 0 {
                bail!("{command} body not followed by NUL after content-length {len}");
            }
            pos + len
        }
        None => match buf[pos..].iter().position(|b| *b == 0) {
            Some(n) => pos + n,
            None => return Ok(None),
        },
    };
    let raw = buf.split_to(body_end + 1).freeze();
    Ok(Some(Frame {
        command,
        headers,
        body: raw.slice(pos..body_end),
    }))
}

fn encode(out: &mut Vec<u8>, command: &str, headers: &[(&str, &str)], body: &[u8]) {
    out.extend_from_slice(command.as_bytes());
    out.push(b'\n');
    for (k, v) in headers {
        escape_into(out, k);
        out.push(b':');
        escape_into(out, v);
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(body);
    out.push(0);
}

struct Reader {
    half: OwnedReadHalf,
    buf: BytesMut,
}

impl Reader {
    /// Reads once from the socket; cancel-safe, so it can sit in a select.
    async fn fill(&mut self) -> Result<()> {
        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        if self.half.read_buf(&mut self.buf).await? == 0 {
            bail!("connection closed by the broker");
        }
        Ok(())
    }

    async fn next(&mut self) -> Result<Frame> {
        loop {
            if let Some(frame) = parse(&mut self.buf)? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Waits for the RECEIPT with `id`, skipping anything else but an ERROR.
    async fn receipt(&mut self, id: &str) -> Result<()> {
        loop {
            let frame = self.next().await?;
            match frame.command.as_str() {
                "RECEIPT" if frame.get("receipt-id") == Some(id) => return Ok(()),
                "ERROR" => return Err(frame.into_error()),
                _ => {}
            }
        }
    }
}

async fn connect(t: &Target) -> Result<(Reader, OwnedWriteHalf)> {
    let stream = TcpStream::connect(&t.addr)
        .await
        .with_context(|| format!("connect {}", t.addr))?;
    stream.set_nodelay(true)?;
    let (half, mut writer) = stream.into_split();
    let mut out = Vec::new();
    let headers = [
        ("accept-version", "1.2"),
        ("host", t.host.as_str()),
        ("login", t.login.as_str()),
        ("passcode", t.passcode.as_str()),
        ("heart-beat", "0,0"),
    ];
    // STOMP 1.2 Value Encoding: CONNECT headers are not escaped.
    out.extend_from_slice(b"CONNECT\n");
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}:{v}\n").as_bytes());
    }
    out.extend_from_slice(b"\n\0");
    writer.write_all(&out).await?;
    let mut reader = Reader {
        half,
        buf: BytesMut::with_capacity(128 * 1024),
    };
    let frame = reader.next().await?;
    match frame.command.as_str() {
        "CONNECTED" => Ok((reader, writer)),
        "ERROR" => Err(frame.into_error()),
        other => bail!("expected CONNECTED, got {other}"),
    }
}

/// Sends DISCONNECT and waits for its receipt, so every frame before it was processed.
async fn disconnect(reader: &mut Reader, writer: &mut OwnedWriteHalf) -> Result<()> {
    let mut out = Vec::new();
    encode(&mut out, "DISCONNECT", &[("receipt", BYE)], b"");
    writer.write_all(&out).await?;
    reader.receipt(BYE).await
}

struct Publisher {
    target: Target,
    destination: String,
    producer: u32,
    count: u64,
    size: usize,
    persistent: bool,
    /// Unreceipted SENDs allowed in flight; None sends without receipts.
    window: Option<usize>,
    /// Messages per second, each written as soon as it is due; None batches writes and sends
    /// as fast as the socket takes them.
    rate: Option<u64>,
    epoch: Instant,
}

impl Publisher {
    /// Sends `count` messages; returns how many were sent (and receipted, with a window).
    async fn run(self) -> Result<u64> {
        let (mut reader, mut writer) = connect(&self.target).await?;
        let window = self.window.map(|w| w.max(1));
        let permits = Arc::new(Semaphore::new(window.unwrap_or(0)));
        // Receipts are read on their own task so SENDs keep flowing while they arrive.
        let receipts = {
            let permits = permits.clone();
            let expected = if window.is_some() { self.count } else { 0 };
            tokio::spawn(async move {
                let mut got = 0u64;
                let result = async {
                    while got < expected {
                        let frame = reader.next().await?;
                        match frame.command.as_str() {
                            "RECEIPT" => {
                                got += 1;
                                permits.add_permits(1);
                            }
                            "ERROR" => return Err(frame.into_error()),
                            _ => {}
                        }
                    }
                    Ok(())
                }
                .await;
                // Wakes the sender if it waits on a window that will not open again.
                permits.close();
                result.map(|()| (got, reader))
            })
        };
        let mut body = vec![0u8; self.size.max(STAMP)];
        let length = body.len().to_string();
        let mut out = Vec::with_capacity(2 * WRITE_CHUNK);
        let mut sent = 0u64;
        let mut pacer = self.rate.map(Pacer::new);
        for seq in 0..self.count {
            if let Some(p) = &mut pacer {
                p.next().await;
            }
            if window.is_some() {
                match permits.try_acquire() {
                    Ok(p) => p.forget(),
                    Err(TryAcquireError::NoPermits) => {
                        writer.write_all(&out).await?;
                        out.clear();
                        match permits.acquire().await {
                            Ok(p) => p.forget(),
                            Err(_) => break,
                        }
                    }
                    Err(TryAcquireError::Closed) => break,
                }
            }
            stamp(&mut body, self.producer, seq, self.epoch);
            let receipt = format!("m{seq}");
            let mut headers = vec![
                ("destination", self.destination.as_str()),
                ("content-length", length.as_str()),
            ];
            if self.persistent {
                headers.push(("persistent", "true"));
            }
            if window.is_some() {
                headers.push(("receipt", receipt.as_str()));
            }
            encode(&mut out, "SEND", &headers, &body);
            sent += 1;
            if pacer.is_some() || out.len() >= WRITE_CHUNK {
                writer.write_all(&out).await?;
                out.clear();
            }
        }
        writer.write_all(&out).await?;
        let (receipted, mut reader) = receipts.await??;
        disconnect(&mut reader, &mut writer).await?;
        Ok(if window.is_some() { receipted } else { sent })
    }
}

struct Subscriber {
    reader: Reader,
    writer: OwnedWriteHalf,
    auto_ack: bool,
    tally: Tally,
    keep_latency: bool,
    epoch: Instant,
    received: Arc<AtomicU64>,
    goal: u64,
    stop: watch::Receiver<bool>,
    done: Arc<watch::Sender<bool>>,
}

impl Subscriber {
    /// Connects and subscribes; returns once the broker has receipted the SUBSCRIBE, so
    /// publishing starts with every consumer in place.
    async fn open(
        t: &Target,
        destination: &str,
        prefetch: u16,
        auto_ack: bool,
    ) -> Result<(Reader, OwnedWriteHalf)> {
        let (mut reader, mut writer) = connect(t).await?;
        let prefetch = prefetch.to_string();
        let ack = if auto_ack {
            "auto"
        } else {
            "client-individual"
        };
        let mut out = Vec::new();
        encode(
            &mut out,
            "SUBSCRIBE",
            &[
                ("id", "0"),
                ("destination", destination),
                ("ack", ack),
                ("prefetch-count", prefetch.as_str()),
                ("receipt", "sub"),
            ],
            b"",
        );
        writer.write_all(&out).await?;
        reader.receipt("sub").await?;
        Ok((reader, writer))
    }

    async fn run(mut self) -> Result<Tally> {
        let mut acks = Vec::with_capacity(WRITE_CHUNK);
        'read: loop {
            // Handle everything already read, then send its ACKs in one write.
            while let Some(frame) = parse(&mut self.reader.buf)? {
                match frame.command.as_str() {
                    "MESSAGE" => {
                        let now = self.epoch.elapsed().as_micros() as u64;
                        self.tally.record(&frame.body, 0, now, self.keep_latency);
                        if !self.auto_ack {
                            // STOMP 1.2 ACK: the `id` is the MESSAGE's `ack` header.
                            let id = frame.get("ack").context("MESSAGE without an ack header")?;
                            encode(&mut acks, "ACK", &[("id", id)], b"");
                        }
                        if self.received.fetch_add(1, Ordering::Relaxed) + 1 >= self.goal {
                            let _ = self.done.send(true);
                            break 'read;
                        }
                    }
                    "ERROR" => return Err(frame.into_error()),
                    _ => {}
                }
            }
            if !acks.is_empty() {
                self.writer.write_all(&acks).await?;
                acks.clear();
            }
            if *self.stop.borrow() {
                break;
            }
            tokio::select! {
                r = self.reader.fill() => r?,
                _ = self.stop.changed() => break,
            }
        }
        self.writer.write_all(&acks).await?;
        disconnect(&mut self.reader, &mut self.writer).await?;
        Ok(self.tally)
    }
}

fn queue_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("bench-stomp-{}-{nanos}", std::process::id())
}

/// P producers and C consumers on one `/queue/` destination; at a fixed `rate`, latency is
/// recorded.
pub async fn throughput(c: &Common, rate: Option<u64>) -> Result<Report> {
    if c.producers == 0 || c.consumers == 0 {
        bail!("need at least one producer and one consumer");
    }
    if c.size < STAMP {
        bail!("--size must be at least {STAMP} bytes");
    }
    let target = parse_uri(&c.uri)?;
    let destination = format!("/queue/{}", queue_name());
    let per_producer = c.messages / c.producers as u64;
    let expected = per_producer * c.producers as u64;
    let mut report = Report {
        scenario: "stomp-throughput",
        label: c.label.clone(),
        producers: c.producers,
        consumers: c.consumers,
        queues: 1,
        size: c.size,
        persistent: c.persistent,
        confirm: c.confirm.is_some(),
        prefetch: c.prefetch,
        broker_before: c.broker_pid.and_then(sample_process),
        ..Report::default()
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let received = Arc::new(AtomicU64::new(0));
    let mut subscribers = Vec::with_capacity(c.consumers);
    for _ in 0..c.consumers {
        subscribers.push(Subscriber::open(&target, &destination, c.prefetch, c.auto_ack).await?);
    }
    let epoch = Instant::now();
    let subs: Vec<_> = subscribers
        .into_iter()
        .map(|(reader, writer)| {
            let sub = Subscriber {
                reader,
                writer,
                auto_ack: c.auto_ack,
                tally: Tally::new(1, c.producers, per_producer),
                keep_latency: rate.is_some(),
                epoch,
                received: received.clone(),
                goal: expected,
                stop: stop_rx.clone(),
                done: stop_tx.clone(),
            };
            tokio::spawn(sub.run())
        })
        .collect();
    let pubs: Vec<_> = (0..c.producers)
        .map(|p| {
            let publisher = Publisher {
                target: target.clone(),
                destination: destination.clone(),
                producer: p as u32,
                count: per_producer,
                size: c.size,
                persistent: c.persistent,
                window: c.confirm,
                rate: pace::per_publisher(rate, c.producers),
                epoch,
            };
            tokio::spawn(publisher.run())
        })
        .collect();
    // Stops the consumers at the deadline, so a broker that loses messages still ends the run.
    let stopper = {
        let stop = stop_tx.clone();
        let deadline = epoch + c.timeout();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            let _ = stop.send(true);
        })
    };
    for p in pubs {
        report.sent += p.await??;
    }
    let mut total = Tally::new(1, c.producers, per_producer);
    for s in subs {
        total.merge(s.await??);
    }
    stopper.abort();
    report.elapsed_s = epoch.elapsed().as_secs_f64();
    report.broker_after = c.broker_pid.and_then(sample_process);
    report.expected = expected;
    report.absorb(total);
    report.extra.extend(rate.map(|r| ("rate", r.to_string())));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_by_content_length_even_with_nul_in_the_body() {
        let mut out = b"\n\r\n".to_vec();
        encode(
            &mut out,
            "MESSAGE",
            &[("ack", "a:1"), ("content-length", "3")],
            b"x\0y",
        );
        encode(&mut out, "RECEIPT", &[("receipt-id", "r")], b"");
        let mut buf = BytesMut::from(&out[..out.len() - 1]);
        let first = parse(&mut buf)
            .expect("well-formed")
            .expect("complete frame");
        assert_eq!(first.command, "MESSAGE");
        assert_eq!(first.get("ack"), Some("a:1"));
        assert_eq!(&first.body[..], b"x\0y");
        assert!(
            parse(&mut buf).expect("well-formed").is_none(),
            "a frame missing its NUL is incomplete"
        );
        buf.extend_from_slice(b"\0");
        assert_eq!(
            parse(&mut buf)
                .expect("well-formed")
                .expect("complete frame")
                .get("receipt-id"),
            Some("r")
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn uri_gives_address_credentials_and_virtual_host() {
        let t = parse_uri("stomp://guest:secret@127.0.0.1:61613/%2f").expect("valid uri");
        assert_eq!(
            (
                t.addr.as_str(),
                t.login.as_str(),
                t.passcode.as_str(),
                t.host.as_str()
            ),
            ("127.0.0.1:61613", "guest", "secret", "/")
        );
        assert!(parse_uri("amqp://guest:guest@127.0.0.1:5672").is_err());
    }
}
