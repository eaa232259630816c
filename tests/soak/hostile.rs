//! Hostile clients mixed into the soak: each does one thing issue-tracked as able to crash,
//! freeze or bloat the broker, then goes away. They assert nothing themselves (the broker may
//! be killed under them); the soak's own checks (every confirmed message delivered, the
//! broker never dying on its own) are what they must not break.

use crate::amqp;
use crate::ledger::rng_for;
use crate::world::{pause, step, Addrs, World, STEP};
use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, ExchangeKind};
use rosetta_tests::raw::{method, Args, RawConnection, FRAME_BODY, FRAME_HEADER};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const KINDS: [&str; 7] = [
    "garbage bytes",
    "300-byte MQTT topic",
    "STOMP header trickle",
    "AMQP huge body announced",
    "backtracking topic binding",
    "dead-letter cycle",
    "MQTT SUBSCRIBE with 5000 filters",
];

/// Runs hostile clients one after another, at random, while the chaos lasts.
pub async fn run(world: Arc<World>, task: u64) {
    let mut rng = rng_for(world.seed, task);
    while world.chaos() && !world.stopped() {
        pause(&mut rng, 300, 3000).await;
        let Some(addrs) = world.addrs().await else {
            break;
        };
        let kind = KINDS[rng.usize(..KINDS.len())];
        let attempt = async {
            match kind {
                "garbage bytes" => garbage(&mut rng, addrs).await,
                "300-byte MQTT topic" => long_mqtt_topic(addrs).await,
                "STOMP header trickle" => stomp_trickle(&mut rng, addrs.stomp).await,
                "AMQP huge body announced" => huge_body(&mut rng, addrs.amqp).await,
                "backtracking topic binding" => topic_trap(addrs.amqp).await,
                "dead-letter cycle" => dead_letter_cycle(addrs.amqp).await,
                _ => many_filters(addrs.mqtt).await,
            }
        };
        let result = match tokio::time::timeout(3 * STEP, attempt).await {
            Ok(result) => result,
            Err(_) => Err("timed out".to_string()),
        };
        world.hostile.add(kind);
        if let Err(e) = result {
            let cause = if e.contains("timed out") {
                "timed out"
            } else {
                "connection lost"
            };
            world.errors.add(format!("hostile {kind}: {cause}"));
        }
    }
}

/// Reads until the broker closes the connection (or `within` passes).
async fn until_closed(stream: &mut TcpStream, within: Duration) {
    let end = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout_at(end, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
    }
}

/// Random bytes to a random listener, sometimes after a valid protocol preamble.
async fn garbage(rng: &mut fastrand::Rng, addrs: Addrs) -> Result<(), String> {
    let (addr, preamble): (SocketAddr, &[u8]) = match rng.u8(..3) {
        0 => (addrs.amqp, b"AMQP\x00\x00\x09\x01"),
        1 => (addrs.mqtt, b""),
        _ => (addrs.stomp, b"CONNECT\n"),
    };
    let mut stream = step("garbage connect", TcpStream::connect(addr)).await?;
    let mut bytes = if rng.bool() {
        preamble.to_vec()
    } else {
        Vec::new()
    };
    bytes.extend((0..rng.usize(1..4096)).map(|_| rng.u8(..)));
    // The broker may close before reading everything: a failed write is an answer too.
    let _ = stream.write_all(&bytes).await;
    until_closed(&mut stream, Duration::from_secs(2)).await;
    Ok(())
}

fn mqtt_remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn mqtt_string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A fixed header (MQTT 3.1.1 section 2.2) in front of `body`.
fn mqtt_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    mqtt_remaining_length(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// CONNECT, MQTT 3.1.1, clean session, guest/guest.
fn mqtt_connect(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_string(b"MQTT", &mut body);
    body.push(4);
    body.push(0b1100_0010);
    body.extend_from_slice(&30u16.to_be_bytes());
    mqtt_string(client_id.as_bytes(), &mut body);
    mqtt_string(b"guest", &mut body);
    mqtt_string(b"guest", &mut body);
    mqtt_packet(0x10, &body)
}

async fn mqtt_open(addr: SocketAddr, client_id: &str) -> Result<TcpStream, String> {
    let mut stream = step("mqtt connect", TcpStream::connect(addr)).await?;
    step("mqtt write", stream.write_all(&mqtt_connect(client_id))).await?;
    let mut connack = [0u8; 4];
    step("mqtt connack", stream.read_exact(&mut connack)).await?;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(format!("mqtt connack refused: {connack:?}"));
    }
    Ok(stream)
}

/// An MQTT QoS 1 PUBLISH to a 300-byte topic while an AMQP client consumes everything on
/// `amq.topic` (`#`): an AMQP short string cannot carry such a key.
async fn long_mqtt_topic(addrs: Addrs) -> Result<(), String> {
    let conn = amqp::connect(addrs.amqp).await?;
    let channel = step("amqp channel", conn.create_channel()).await?;
    let queue = step(
        "queue.declare",
        channel.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    step(
        "queue.bind",
        channel.queue_bind(
            queue.name().clone(),
            "amq.topic".into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    let mut consumer = step(
        "basic.consume",
        channel.basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    let mut mqtt = mqtt_open(addrs.mqtt, "soak-hostile-topic").await?;
    let mut body = Vec::new();
    mqtt_string("t".repeat(300).as_bytes(), &mut body);
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(b"long topic");
    let _ = mqtt.write_all(&mqtt_packet(0x32, &body)).await;
    until_closed(&mut mqtt, Duration::from_secs(1)).await;
    // Whatever else `amq.topic` carries meanwhile (the soak's own topic traffic) keeps
    // arriving at the catch-all consumer; it is only read, not checked.
    let end = Instant::now() + Duration::from_secs(1);
    while let Ok(Some(delivery)) = tokio::time::timeout_at(end, consumer.next()).await {
        delivery.map_err(|e| format!("catch-all consumer: {e:?}"))?;
    }
    let _ = step("amqp close", conn.close(200, "done".into())).await;
    Ok(())
}

/// A STOMP CONNECT whose header block arrives a byte every 5 ms and never ends.
async fn stomp_trickle(rng: &mut fastrand::Rng, addr: SocketAddr) -> Result<(), String> {
    let mut stream = step("stomp connect", TcpStream::connect(addr)).await?;
    let _ = stream.set_nodelay(true);
    let mut head = b"CONNECT\naccept-version:1.2\nhost:/\n".to_vec();
    for i in 0..40 {
        head.extend_from_slice(format!("x-pad-{i}:{}\n", "v".repeat(20)).as_bytes());
    }
    let bytes = rng.usize(50..head.len());
    for byte in &head[..bytes] {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Raw AMQP: on each of up to 50 channels, a publish whose content header announces 100 MiB,
/// then one 1 KiB body frame, then silence for a while.
async fn huge_body(rng: &mut fastrand::Rng, addr: SocketAddr) -> Result<(), String> {
    let channels = rng.u16(1..=50);
    let stall = Duration::from_millis(rng.u64(500..3000));
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut raw = RawConnection::connect(addr).map_err(|e| format!("raw connect: {e}"))?;
        raw.handshake()
            .map_err(|e| format!("raw handshake: {e:?}"))?;
        for channel in 1..=channels {
            raw.open_channel(channel)
                .map_err(|e| format!("raw channel.open: {e:?}"))?;
            raw.send_method(
                channel,
                method::BASIC_PUBLISH,
                Args::new()
                    .u16(0)
                    .shortstr("")
                    .shortstr("soak.nowhere")
                    .u8(0),
            )
            .map_err(|e| format!("raw basic.publish: {e}"))?;
            // class 60, weight 0, body size, no properties (AMQP 0-9-1 section 4.2.6).
            let mut header = Vec::new();
            header.extend_from_slice(&60u16.to_be_bytes());
            header.extend_from_slice(&0u16.to_be_bytes());
            header.extend_from_slice(&(100u64 << 20).to_be_bytes());
            header.extend_from_slice(&0u16.to_be_bytes());
            raw.send_frame(FRAME_HEADER, channel, &header)
                .map_err(|e| format!("raw header: {e}"))?;
            raw.send_frame(FRAME_BODY, channel, &[7; 1024])
                .map_err(|e| format!("raw body: {e}"))?;
        }
        std::thread::sleep(stall);
        Ok(())
    })
    .await
    .map_err(|e| format!("raw client task: {e}"))?
}

/// `#.*.` eight times then `z`, bound to `amq.topic`, and a 61-word key that does not end in
/// `z`: exponential for a backtracking matcher, and every `amq.topic` publisher (MQTT's too)
/// waits behind it.
async fn topic_trap(addr: SocketAddr) -> Result<(), String> {
    let conn = amqp::connect(addr).await?;
    let channel = step("amqp channel", conn.create_channel()).await?;
    step(
        "confirm.select",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    let queue = step(
        "queue.declare",
        channel.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    let pattern = format!("{}z", "#.*.".repeat(8));
    step(
        "queue.bind",
        channel.queue_bind(
            queue.name().clone(),
            "amq.topic".into(),
            pattern.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    let key = format!("{}a", "a.".repeat(60));
    let confirm = step(
        "basic.publish",
        channel.basic_publish(
            "amq.topic".into(),
            key.as_str().into(),
            BasicPublishOptions::default(),
            b"trap",
            BasicProperties::default(),
        ),
    )
    .await?;
    step("publisher confirm", confirm).await?;
    let _ = step("amqp close", conn.close(200, "done".into())).await;
    Ok(())
}

fn dead_letter_args(exchange: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-max-length"), AMQPValue::LongLongInt(0));
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(LongString::from(exchange)),
    );
    args
}

/// Two always-full queues dead-lettering into each other's fanout exchange, and one message
/// dropped into the loop (transient, so a restart clears them; redeclared alike every time).
async fn dead_letter_cycle(addr: SocketAddr) -> Result<(), String> {
    let conn = amqp::connect(addr).await?;
    let channel = step("amqp channel", conn.create_channel()).await?;
    step(
        "confirm.select",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    for exchange in ["soak.dA", "soak.dB"] {
        step(
            "exchange.declare",
            channel.exchange_declare(
                exchange.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    }
    for (queue, source, target) in [
        ("soak.A", "soak.dA", "soak.dB"),
        ("soak.B", "soak.dB", "soak.dA"),
    ] {
        step(
            "queue.declare",
            channel.queue_declare(
                queue.into(),
                QueueDeclareOptions::default(),
                dead_letter_args(target),
            ),
        )
        .await?;
        step(
            "queue.bind",
            channel.queue_bind(
                queue.into(),
                source.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    }
    let confirm = step(
        "basic.publish",
        channel.basic_publish(
            "soak.dA".into(),
            "".into(),
            BasicPublishOptions::default(),
            b"round and round",
            BasicProperties::default(),
        ),
    )
    .await?;
    step("publisher confirm", confirm).await?;
    let _ = step("amqp close", conn.close(200, "done".into())).await;
    Ok(())
}

/// One SUBSCRIBE carrying 5000 filters, then whatever the broker answers (a SUBACK or a
/// refusal past its filter limit).
async fn many_filters(addr: SocketAddr) -> Result<(), String> {
    let mut stream = mqtt_open(addr, "soak-hostile-filters").await?;
    let mut body = 1u16.to_be_bytes().to_vec();
    for i in 0..5000 {
        mqtt_string(format!("soak/flood/{i}").as_bytes(), &mut body);
        body.push(1);
    }
    let _ = stream.write_all(&mqtt_packet(0x82, &body)).await;
    until_closed(&mut stream, Duration::from_secs(2)).await;
    Ok(())
}
