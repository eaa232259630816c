//! Hostile clients: whatever one client sends, the broker keeps serving everyone else. Each
//! test does its damage, then proves a fresh client still gets a publish and consume round trip
//! within a deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::*;
use lapin::options::{BasicPublishOptions, BasicRejectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use rosetta_tests::raw::{method, Args, RawConnection, FRAME_BODY, FRAME_HEADER};
use rosetta_tests::Broker;

/// How long a healthy broker may take to serve a fresh client's round trip.
const PROMPT: Duration = Duration::from_secs(5);

/// A fresh connection declares a queue, publishes with a confirm and gets the message back,
/// all within [`PROMPT`].
async fn assert_serves_promptly(broker: &Broker) {
    let round_trip = async {
        let client = connect(broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("alive");
        declare_queue(&channel, &queue).await;
        publish(&channel, "", &queue, "still here").await;
        let got = get_eventually(&channel, &queue, true).await;
        assert_eq!(got.delivery.data, b"still here");
        client.close().await;
    };
    tokio::time::timeout(PROMPT, round_trip)
        .await
        .expect("a fresh client was not served within the deadline");
}

/// A queue bound to `amq.topic` with `#` and a consumer on it, on its own connection.
async fn topic_consumer(broker: &Broker) -> (Client, lapin::Consumer) {
    let client = connect(broker).await;
    let channel = client.channel().await;
    let queue = unique("everything");
    declare_queue(&channel, &queue).await;
    bind_queue(&channel, &queue, "amq.topic", "#").await;
    let consumer = consume(&channel, &queue, false).await;
    (client, consumer)
}

/// MQTT's variable-length "remaining length" ([MQTT-2.2.3]).
fn mqtt_remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

fn mqtt_string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn mqtt_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut packet = vec![first];
    mqtt_remaining_length(body.len(), &mut packet);
    packet.extend_from_slice(body);
    packet
}

/// Sends an MQTT 3.1.1 QoS 1 PUBLISH to `topic` as guest over a raw socket, and waits until
/// the broker has dealt with it: a PUBACK, or the connection closed (a refusal).
fn mqtt_publish_raw(addr: SocketAddr, topic: &[u8], payload: &[u8]) {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).expect("mqtt connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut connect = Vec::new();
    mqtt_string(b"MQTT", &mut connect);
    // Level 4 (3.1.1); user name, password and clean session; keep-alive 60 s.
    connect.extend_from_slice(&[4, 0xC2, 0, 60]);
    mqtt_string(unique("hostile").as_bytes(), &mut connect);
    mqtt_string(b"guest", &mut connect);
    mqtt_string(b"guest", &mut connect);
    stream
        .write_all(&mqtt_packet(0x10, &connect))
        .expect("send CONNECT");
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNECT accepted");

    let mut publish = Vec::new();
    mqtt_string(topic, &mut publish);
    publish.extend_from_slice(&[0, 1]);
    publish.extend_from_slice(payload);
    stream
        .write_all(&mqtt_packet(0x32, &publish))
        .expect("send PUBLISH");
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    let end = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < end,
            "no PUBACK and no close within {WAIT:?}"
        );
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
        if reply.windows(4).any(|w| w == [0x40, 2, 0, 1]) {
            return;
        }
    }
}

#[test]
fn an_mqtt_publish_to_a_300_byte_topic_leaves_an_amqp_consumer_of_amq_topic_working() {
    run(async {
        let broker = Broker::start_with("[mqtt]\nenabled = true\nlisten = \"127.0.0.1:0\"\n");
        let mqtt = broker.addr("mqtt").expect("mqtt listener");
        let (client, mut consumer) = topic_consumer(&broker).await;

        let topic = format!("long/{}", "x".repeat(300));
        tokio::task::spawn_blocking(move || mqtt_publish_raw(mqtt, topic.as_bytes(), b"long"))
            .await
            .expect("mqtt publisher");
        let publisher = client.channel().await;
        publish(&publisher, "amq.topic", "short.key", "after").await;

        let delivery = next(&mut consumer).await;
        assert_eq!(
            text(&delivery),
            "after",
            "the long-topic message was not delivered"
        );
        assert_eq!(delivery.routing_key.as_str(), "short.key");
        assert!(
            client.status().connected(),
            "the AMQP consumer kept its connection"
        );
        assert_serves_promptly(&broker).await;
    });
}

#[test]
fn a_dead_letter_routing_key_longer_than_255_bytes_leaves_an_amqp_consumer_working() {
    run(async {
        let broker = Broker::start();
        let (client, mut consumer) = topic_consumer(&broker).await;
        let channel = client.channel().await;
        let source = unique("rejected");
        let long_key = "k".repeat(300);
        let declared = channel
            .queue_declare(
                source.as_str().into(),
                QueueDeclareOptions::default(),
                table(&[
                    ("x-dead-letter-exchange", long_str("amq.topic")),
                    ("x-dead-letter-routing-key", long_str(&long_key)),
                ]),
            )
            .await;
        // Either the declare refuses a key no AMQP consumer could receive, or the message
        // dead-lettered with it never reaches this consumer; either way the consumer lives.
        let channel = match declared {
            Err(e) => {
                assert_eq!(code_of(&e), Some(code::PRECONDITION_FAILED), "{e:?}");
                client.channel().await
            }
            Ok(_) => {
                publish(&channel, "", &source, "doomed").await;
                let got = get_eventually(&channel, &source, false).await;
                got.delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await
                    .expect("basic.reject");
                channel
            }
        };
        publish(&channel, "amq.topic", "short.key", "after").await;

        let delivery = next(&mut consumer).await;
        assert_eq!(
            text(&delivery),
            "after",
            "the long-key message was not delivered"
        );
        assert!(
            client.status().connected(),
            "the AMQP consumer kept its connection"
        );
        assert_serves_promptly(&broker).await;
    });
}

/// Reads the broker's memory figures from `/proc`: (resident, virtual) in KiB.
fn memory_kib(broker: &Broker) -> (u64, u64) {
    let pid = broker.pid().expect("broker running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmSize:"))
}

#[test]
fn many_channels_announcing_huge_bodies_cost_only_the_bytes_they_send() {
    const CHANNELS: u16 = 500;
    const ANNOUNCED: u64 = 120 * 1024 * 1024;
    run(async {
        let broker = Broker::start();
        let queue = unique("huge");
        let setup = connect(&broker).await;
        declare_queue(&setup.channel().await, &queue).await;
        let (rss_before, virt_before) = memory_kib(&broker);

        let addr = broker.amqp_addr();
        let raw = tokio::task::spawn_blocking(move || {
            let mut raw = RawConnection::connect(addr).expect("connect");
            raw.handshake().expect("handshake");
            for channel in 1..=CHANNELS {
                raw.open_channel(channel).expect("channel.open");
                raw.send_method(
                    channel,
                    method::BASIC_PUBLISH,
                    Args::new().u16(0).shortstr("").shortstr(&queue).u8(0),
                )
                .expect("basic.publish");
                // class 60, weight 0, the announced size, no properties.
                let mut header = Vec::new();
                header.extend_from_slice(&60u16.to_be_bytes());
                header.extend_from_slice(&0u16.to_be_bytes());
                header.extend_from_slice(&ANNOUNCED.to_be_bytes());
                header.extend_from_slice(&0u16.to_be_bytes());
                raw.send_frame(FRAME_HEADER, channel, &header)
                    .expect("content header");
                raw.send_frame(FRAME_BODY, channel, &[1; 1024])
                    .expect("body frame");
            }
            // A round trip on a fresh channel: every frame before it has been handled.
            raw.open_channel(CHANNELS + 1).expect("last channel.open");
            raw
        })
        .await
        .expect("raw client");

        let (rss_after, virt_after) = memory_kib(&broker);
        let announced_gib = u64::from(CHANNELS) * ANNOUNCED / (1 << 30);
        assert!(
            rss_after.saturating_sub(rss_before) < 64 * 1024,
            "resident memory grew from {rss_before} KiB to {rss_after} KiB"
        );
        assert!(
            virt_after.saturating_sub(virt_before) < 1024 * 1024,
            "{announced_gib} GiB announced and 500 KiB sent grew the address space from \
             {virt_before} KiB to {virt_after} KiB"
        );
        assert_serves_promptly(&broker).await;
        drop(raw);
    });
}

#[test]
fn a_channel_above_channel_max_closes_the_connection_with_not_allowed() {
    run(async {
        let broker = Broker::start_with("[limits]\nchannel_max = 8\n");
        let addr = broker.amqp_addr();
        let close = tokio::task::spawn_blocking(move || {
            let mut raw = RawConnection::connect(addr).expect("connect");
            let tune = raw.handshake().expect("handshake");
            assert_eq!(
                tune.channel_max, 8,
                "channel_max proposed in connection.tune"
            );
            for channel in 1..=8 {
                raw.open_channel(channel)
                    .expect("channels up to channel_max open");
            }
            raw.send_method(9, method::CHANNEL_OPEN, Args::new().shortstr(""))
                .expect("channel.open 9");
            raw.expect_connection_close(WAIT).expect("connection.close")
        })
        .await
        .expect("raw client");
        assert_eq!(close.reply_code, code::NOT_ALLOWED, "{close:?}");
        assert_eq!((close.class_id, close.method_id), method::CHANNEL_OPEN);
        assert_serves_promptly(&broker).await;
    });
}

#[test]
fn a_consumer_past_max_consumers_per_channel_closes_the_connection_with_not_allowed() {
    run(async {
        let broker = Broker::start_with("[limits]\nmax_consumers_per_channel = 2\n");
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let queue = unique("crowded");
        declare_queue(&channel, &queue).await;
        let _first = consume(&channel, &queue, false).await;
        let _second = consume(&channel, &queue, false).await;
        let third = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                Default::default(),
                FieldTable::default(),
            )
            .await;
        assert_code(third, code::NOT_ALLOWED);
        let closed =
            rosetta_tests::eventually(WAIT, || async { !client.status().connected() }).await;
        assert!(closed, "RabbitMQ's answer closes the connection");
        assert_serves_promptly(&broker).await;
    });
}

/// One plain publish; nothing the broker sends back is awaited.
async fn publish_unconfirmed(channel: &lapin::Channel, queue: &str, body: &[u8]) {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .expect("basic.publish");
}

#[test]
fn one_publish_more_than_max_transaction_frames_fails_the_transaction() {
    run(async {
        let broker = Broker::start_with("[limits]\nmax_transaction_frames = 3\n");
        let client = connect(&broker).await;
        let queue = unique("tx-frames");
        declare_queue(&client.channel().await, &queue).await;
        let channel = client.channel().await;
        channel.tx_select().await.expect("tx.select");
        for n in 0..4 {
            publish_unconfirmed(&channel, &queue, format!("m{n}").as_bytes()).await;
        }
        assert_eq!(client.next_error_code().await, code::PRECONDITION_FAILED);
        assert!(channel.tx_commit().await.is_err(), "the channel is closed");
        assert_eq!(
            message_count(&client, &queue).await,
            0,
            "nothing was committed"
        );
        assert_serves_promptly(&broker).await;
    });
}

#[test]
fn a_publish_past_max_transaction_bytes_fails_the_transaction_before_its_body_arrives() {
    run(async {
        let broker = Broker::start_with("[limits]\nmax_transaction_bytes = 1000\n");
        let client = connect(&broker).await;
        let queue = unique("tx-bytes");
        declare_queue(&client.channel().await, &queue).await;
        let channel = client.channel().await;
        channel.tx_select().await.expect("tx.select");
        publish_unconfirmed(&channel, &queue, &[1; 600]).await;
        publish_unconfirmed(&channel, &queue, &[2; 600]).await;
        assert_eq!(client.next_error_code().await, code::PRECONDITION_FAILED);
        assert_eq!(
            message_count(&client, &queue).await,
            0,
            "nothing was committed"
        );
        assert_serves_promptly(&broker).await;
    });
}

#[test]
fn a_new_connections_first_publish_waits_while_an_alarm_is_on() {
    run(async {
        let broker = Broker::start_with("[limits]\nmemory_limit = 1\n");
        let setup = connect(&broker).await;
        let queue = unique("held");
        declare_queue(&setup.channel().await, &queue).await;

        let publisher = connect(&broker).await;
        let channel = publisher.channel().await;
        publish_unconfirmed(&channel, &queue, b"first").await;
        let blocked =
            rosetta_tests::eventually(WAIT, || async { publisher.status().blocked() }).await;
        assert!(
            blocked,
            "the first publish was answered with connection.blocked"
        );
        tokio::time::sleep(QUIET).await;
        assert_eq!(
            message_count(&setup, &queue).await,
            0,
            "the first publish must wait for the alarm to clear"
        );
        // Consumers keep working while publishers wait.
        assert!(get(&setup.channel().await, &queue, true).await.is_none());
    });
}

#[test]
fn a_dead_letter_cycle_between_two_full_queues_leaves_the_broker_serving() {
    // Both queues are always full and dead-letter into each other's exchange: the message dies
    // in A, then in B, and would go back to A forever (this once overflowed a worker's stack
    // and took the process down). RabbitMQ's rule drops it on its way back into A.
    run(async {
        let broker = Broker::start();
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let (da, db) = (unique("dA"), unique("dB"));
        let (a, b) = (unique("A"), unique("B"));
        declare_exchange(&channel, &da, lapin::ExchangeKind::Fanout).await;
        declare_exchange(&channel, &db, lapin::ExchangeKind::Fanout).await;
        let full_to = |dlx: &str| {
            table(&[
                ("x-max-length", long(0)),
                ("x-dead-letter-exchange", long_str(dlx)),
            ])
        };
        declare_with(&channel, &a, full_to(&db)).await;
        declare_with(&channel, &b, full_to(&da)).await;
        bind_queue(&channel, &a, &da, "").await;
        bind_queue(&channel, &b, &db, "").await;

        publish(&channel, &da, "", "round and round").await;

        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        for queue in [&a, &b] {
            let q = declare(&channel, queue, passive, FieldTable::default()).await;
            assert_eq!(q.message_count(), 0, "{queue} holds nothing");
        }
        assert!(broker.pid().is_some(), "the broker process is alive");
        assert_serves_promptly(&broker).await;
    });
}

#[test]
fn a_topic_binding_built_to_backtrack_does_not_hold_up_publishers() {
    // `#.*.` ten times then `z`, against 61 words that do not end in `z`: a backtracking
    // matcher tries every way of splitting the words between the ten `#` and never finishes.
    run(async {
        let broker = Broker::start();
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let trap = unique("trap");
        declare_queue(&channel, &trap).await;
        let pattern = format!("{}z", "#.*.".repeat(10));
        bind_queue(&channel, &trap, "amq.topic", &pattern).await;

        let missing = format!("{}a", "a.".repeat(60));
        let matching = format!("{}z", "a.".repeat(60));
        let publishes = async {
            publish(&channel, "amq.topic", &missing, "no").await;
            publish(&channel, "amq.topic", &matching, "yes").await;
        };
        tokio::time::timeout(PROMPT, publishes)
            .await
            .expect("both publishes were confirmed within the deadline");
        let got = get_eventually(&channel, &trap, true).await;
        assert_eq!(got.delivery.data, b"yes");
        assert!(
            get(&channel, &trap, true).await.is_none(),
            "only one matched"
        );
        assert_serves_promptly(&broker).await;
    });
}

/// User plus system CPU time the broker process has used, in clock ticks (1/100 s).
fn cpu_ticks(broker: &Broker) -> u64 {
    let pid = broker.pid().expect("broker pid");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command name, which is in parentheses and may hold spaces: utime and
    // stime are the 12th and 13th of them.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn a_frame_left_half_sent_costs_no_cpu_while_it_waits() {
    // A connection's input buffer is released after a second without input, but only when it
    // is empty: a partial frame stays, and its release deadline must not keep firing.
    let broker = Broker::start();
    let mut stalled = TcpStream::connect(broker.amqp_addr()).expect("connect");
    stalled.write_all(b"AM").expect("half a protocol header");
    let before = cpu_ticks(&broker);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(&broker) - before;
    assert!(
        used < 50,
        "the broker used {used} ticks of CPU in 3 s while one client sat on half a frame"
    );
    run(assert_serves_promptly(&broker));
}
