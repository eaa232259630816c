//! `GET /metrics`: the values move with real client traffic, and the exposition is valid.

use crate::http::{queue_series, scrape, wait_for_metric};
use crate::support::*;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use rosetta_tests::Broker;
use std::collections::HashSet;

fn broker() -> Broker {
    Broker::builder().with_http().start()
}

const AMQP_CONNECTIONS: &str = "rosetta_connections{protocol=\"amqp\"}";

#[test]
fn connection_channel_consumer_and_queue_gauges_follow_clients() {
    let broker = broker();
    let http = broker.http_addr();
    run(async {
        let before = scrape(http);
        assert_eq!(before.value(AMQP_CONNECTIONS), Some(0.0));
        assert_eq!(
            before.value("rosetta_connections{protocol=\"mqtt\"}"),
            Some(0.0)
        );
        assert_eq!(
            before.value("rosetta_connections{protocol=\"stomp\"}"),
            Some(0.0)
        );
        assert_eq!(before.value("rosetta_queues"), Some(0.0));

        let client = connect(&broker).await;
        let first = client.channel().await;
        let second = client.channel().await;
        declare_queue(&first, "gauges.q").await;
        let _consumer = consume(&second, "gauges.q", false).await;

        wait_for_metric(http, AMQP_CONNECTIONS, 1.0);
        wait_for_metric(http, "rosetta_channels", 2.0);
        wait_for_metric(http, "rosetta_consumers", 1.0);
        wait_for_metric(http, "rosetta_queues", 1.0);

        client.close().await;
        wait_for_metric(http, AMQP_CONNECTIONS, 0.0);
        wait_for_metric(http, "rosetta_channels", 0.0);
        wait_for_metric(http, "rosetta_consumers", 0.0);
        // The queue is neither exclusive nor auto-delete: it stays.
        wait_for_metric(http, "rosetta_queues", 1.0);
    });
}

#[test]
fn message_counters_and_queue_depths_move_with_traffic() {
    let broker = broker();
    let http = broker.http_addr();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        declare(&channel, "traffic.q", durable, FieldTable::default()).await;
        let fsyncs_before = scrape(http)
            .value("rosetta_store_fsync_seconds_count")
            .expect("fsync histogram");
        for body in ["aaaa", "bbbbbb", "cc"] {
            publish_persistent(&channel, "traffic.q", body).await;
        }
        let ready = queue_series("rosetta_queue_messages_ready", "traffic.q");
        let unacked = queue_series("rosetta_queue_messages_unacked", "traffic.q");
        let bytes = queue_series("rosetta_queue_messages_bytes", "traffic.q");
        wait_for_metric(http, "rosetta_messages_published_total", 3.0);
        wait_for_metric(http, &ready, 3.0);
        wait_for_metric(http, &unacked, 0.0);
        wait_for_metric(http, &bytes, 12.0);
        let now = scrape(http);
        let fsyncs = now
            .value("rosetta_store_fsync_seconds_count")
            .expect("fsyncs");
        assert!(
            fsyncs > fsyncs_before,
            "persistent publishes were confirmed without an fsync"
        );
        assert!(now.value("rosetta_store_disk_bytes").expect("disk bytes") > 0.0);
        let received = now
            .value("rosetta_received_bytes_total{protocol=\"amqp\"}")
            .expect("received bytes");
        let sent = now
            .value("rosetta_sent_bytes_total{protocol=\"amqp\"}")
            .expect("sent bytes");
        assert!(
            received > 12.0 && sent > 0.0,
            "received {received}, sent {sent}"
        );

        // A message no queue takes.
        publish(&channel, "amq.direct", "traffic.nowhere", "lost").await;
        wait_for_metric(http, "rosetta_messages_unroutable_total", 1.0);
        wait_for_metric(http, "rosetta_messages_published_total", 4.0);

        // Two deliveries: one acknowledged, one given back.
        let first = get(&channel, "traffic.q", false).await.expect("first");
        let second = get(&channel, "traffic.q", false).await.expect("second");
        wait_for_metric(http, "rosetta_messages_delivered_total", 2.0);
        wait_for_metric(http, &ready, 1.0);
        wait_for_metric(http, &unacked, 2.0);
        first
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        second
            .delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .expect("nack");
        wait_for_metric(http, "rosetta_messages_acked_total", 1.0);
        wait_for_metric(http, &ready, 2.0);
        wait_for_metric(http, &unacked, 0.0);
        wait_for_metric(http, &bytes, 8.0);

        // The requeued message comes back flagged.
        let again = get(&channel, "traffic.q", true)
            .await
            .expect("requeued message");
        assert!(again.delivery.redelivered);
        wait_for_metric(http, "rosetta_messages_redelivered_total", 1.0);
        wait_for_metric(http, "rosetta_messages_delivered_total", 3.0);
        client.close().await;
        let after = scrape(http);
        let received_after = after
            .value("rosetta_received_bytes_total{protocol=\"amqp\"}")
            .expect("received bytes");
        assert!(received_after > received, "bytes received did not grow");
    });
}

#[test]
fn dead_lettered_messages_are_counted() {
    let broker = broker();
    let http = broker.http_addr();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        declare_queue(&channel, "dlx.target").await;
        let args = table(&[
            ("x-dead-letter-exchange", long_str("")),
            ("x-dead-letter-routing-key", long_str("dlx.target")),
        ]);
        declare_with(&channel, "dlx.source", args).await;
        publish(&channel, "", "dlx.source", "doomed").await;
        let message = get(&channel, "dlx.source", false).await.expect("message");
        message
            .delivery
            .acker
            .reject(BasicRejectOptions { requeue: false })
            .await
            .expect("reject");
        wait_for_metric(http, "rosetta_messages_dead_lettered_total", 1.0);
        wait_for_metric(
            http,
            &queue_series("rosetta_queue_messages_ready", "dlx.target"),
            1.0,
        );
        wait_for_metric(
            http,
            &queue_series("rosetta_queue_messages_ready", "dlx.source"),
            0.0,
        );
        client.close().await;
    });
}

#[test]
fn queue_names_with_quotes_and_backslashes_are_escaped_in_labels() {
    let broker = broker();
    let http = broker.http_addr();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        declare_queue(&channel, "odd\"name\\here").await;
        publish(&channel, "", "odd\"name\\here", "x").await;
        wait_for_metric(
            http,
            "rosetta_queue_messages_ready{vhost=\"/\",queue=\"odd\\\"name\\\\here\"}",
            1.0,
        );
        client.close().await;
    });
}

/// Every sample belongs to a family announced once with `# TYPE` before its samples, and the
/// process metrics the crate provides are there.
#[test]
fn the_exposition_is_well_formed_and_includes_process_metrics() {
    let broker = broker();
    let scrape = scrape(broker.http_addr());
    let mut declared = HashSet::new();
    let mut kinds = std::collections::HashMap::new();
    for line in scrape.text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line has a kind");
            assert!(
                declared.insert(name.to_string()),
                "family {name} declared twice"
            );
            kinds.insert(name.to_string(), kind.to_string());
        }
    }
    for (series, _) in scrape.samples() {
        let name = series.split('{').next().unwrap_or(series);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| kinds.get(*base).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(declared.contains(family), "sample {series} has no # TYPE");
    }
    for family in [
        "rosetta_connections",
        "rosetta_channels",
        "rosetta_consumers",
        "rosetta_queues",
        "rosetta_queue_messages_ready",
        "rosetta_queue_messages_unacked",
        "rosetta_queue_messages_bytes",
        "rosetta_messages_published_total",
        "rosetta_messages_delivered_total",
        "rosetta_messages_acked_total",
        "rosetta_messages_redelivered_total",
        "rosetta_messages_dead_lettered_total",
        "rosetta_messages_unroutable_total",
        "rosetta_received_bytes_total",
        "rosetta_sent_bytes_total",
        "rosetta_store_disk_bytes",
        "rosetta_store_fsync_seconds",
        "rosetta_store_write_failures_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(declared.contains(family), "no {family} family");
    }
    assert_eq!(kinds["rosetta_store_fsync_seconds"], "histogram");
    assert_eq!(kinds["rosetta_messages_published_total"], "counter");
    assert_eq!(kinds["rosetta_store_write_failures_total"], "counter");
    assert_eq!(
        scrape.value("rosetta_store_write_failures_total"),
        Some(0.0),
        "a healthy disk has no failed store writes"
    );
    assert!(scrape.value("process_resident_memory_bytes").expect("rss") > 0.0);
    assert!(scrape.value("process_open_fds").expect("fds") > 0.0);
}

const DELIVERED: &str = "rosetta_messages_delivered_total";
const REDELIVERED: &str = "rosetta_messages_redelivered_total";
const ACKED: &str = "rosetta_messages_acked_total";

/// A redelivery counts once in the redelivered counter whichever protocol takes it, because
/// the queue counts it as it hands the message over: an AMQP client's requeued message fetched
/// again, a message an MQTT subscriber did not acknowledge before its connection dropped, sent
/// again (DUP) when it resumes its persistent session, and a requeued message that MQTT sends
/// at QoS 0, where no DUP flag exists.
#[test]
fn a_redelivery_counts_the_same_for_an_amqp_client_and_an_mqtt_persistent_session() {
    use crate::mqtt_support::{port, unique, v4_options, MQTT_ON, V4};
    use rumqttc::QoS;

    let broker = Broker::builder().with_http().config(MQTT_ON).start();
    let http = broker.http_addr();
    let mqtt_port = port(&broker);
    run(async move {
        let client = connect(&broker).await;
        let channel = client.channel().await;

        // AMQP: fetched, given back, fetched again and acknowledged.
        declare_queue(&channel, "redo.q").await;
        publish(&channel, "", "redo.q", "amqp").await;
        let first = get(&channel, "redo.q", false).await.expect("first");
        assert!(!first.delivery.redelivered);
        first
            .delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .expect("nack");
        let again = get(&channel, "redo.q", false).await.expect("again");
        assert!(again.delivery.redelivered);
        again
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        wait_for_metric(http, DELIVERED, 2.0);
        wait_for_metric(http, REDELIVERED, 1.0);
        wait_for_metric(http, ACKED, 1.0);

        // MQTT: a QoS 1 message to a persistent session, not acknowledged; the connection
        // drops, and the resumed session gets it again.
        let id = unique("redo");
        let mut options = v4_options(mqtt_port, &id);
        options.set_clean_session(false).set_manual_acks(true);
        let mut subscriber = V4::with(options.clone()).await;
        subscriber.subscribe("redo/m", QoS::AtLeastOnce).await;
        publish_props(&channel, "amq.topic", "redo.m", b"qos1", persistent()).await;
        let got = subscriber.publish().await;
        assert!(!got.dup);
        wait_for_metric(http, DELIVERED, 3.0);
        drop(subscriber); // no PUBACK, no DISCONNECT
        let mut resumed = V4::with(options.clone()).await;
        assert!(resumed.session_present);
        let again = resumed.publish().await;
        assert_eq!(&again.payload[..], b"qos1");
        assert!(again.dup, "a resent PUBLISH has DUP set");
        resumed.client.ack(&again).await.expect("PUBACK");
        wait_for_metric(http, DELIVERED, 4.0);
        wait_for_metric(http, REDELIVERED, 2.0);
        wait_for_metric(http, ACKED, 2.0);
        resumed.disconnect().await;

        // MQTT at QoS 0: a transient message waits in the session's queue, an AMQP client
        // fetches it and gives it back, and the resumed session gets it without DUP (QoS 0
        // has none); it is a redelivery all the same.
        publish(&channel, "amq.topic", "redo.m", "qos0").await;
        let queue = format!("mqtt-subscription-{id}");
        let fetched = get_eventually(&channel, &queue, false).await;
        assert!(!fetched.delivery.redelivered);
        fetched
            .delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .expect("nack");
        wait_for_metric(http, DELIVERED, 5.0);
        wait_for_metric(http, REDELIVERED, 2.0);
        let mut back = V4::with(options).await;
        assert!(back.session_present);
        let at_most_once = back.publish().await;
        assert_eq!(&at_most_once.payload[..], b"qos0");
        assert_eq!(at_most_once.qos, QoS::AtMostOnce);
        assert!(!at_most_once.dup);
        wait_for_metric(http, DELIVERED, 6.0);
        wait_for_metric(http, REDELIVERED, 3.0);
        // A QoS 0 message needs no acknowledgement, so none is counted.
        assert_eq!(scrape(http).value(ACKED), Some(2.0));
        back.disconnect().await;
        client.close().await;
    });
}

/// Reads from `stream` until `expected` has been seen; panics after [`WAIT`].
fn read_until(stream: &mut std::net::TcpStream, expected: &[u8]) {
    use std::io::Read;
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !seen.windows(expected.len()).any(|w| w == expected) {
        let n = stream.read(&mut buf).expect("read before the deadline");
        assert!(n > 0, "connection closed; got {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// The gauges live in the generic connection driver, so MQTT and STOMP connections are counted
/// under their own label without protocol-specific code.
#[test]
fn mqtt_and_stomp_connections_are_counted_under_their_protocol() {
    use std::io::Write;
    let broker = Broker::builder()
        .with_http()
        .config("[mqtt]\nenabled = true\nlisten = \"127.0.0.1:0\"\n[stomp]\nenabled = true\nlisten = \"127.0.0.1:0\"\n")
        .start();
    let http = broker.http_addr();

    let mut stomp = std::net::TcpStream::connect(broker.stomp_addr()).expect("stomp connect");
    stomp
        .write_all(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")
        .expect("CONNECT");
    read_until(&mut stomp, b"CONNECTED");

    let mut mqtt = std::net::TcpStream::connect(broker.addr("mqtt").expect("mqtt listener"))
        .expect("mqtt connect");
    // MQTT 3.1.1 CONNECT: clean session, user name and password, keep-alive 60 s, client "ops".
    let connect: &[u8] = &[
        0x10, 29, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60, 0, 3, b'o', b'p', b's', 0, 5, b'g',
        b'u', b'e', b's', b't', 0, 5, b'g', b'u', b'e', b's', b't',
    ];
    mqtt.write_all(connect).expect("CONNECT");
    // CONNACK, session not present, return code 0 (accepted).
    read_until(&mut mqtt, &[0x20, 2, 0, 0]);

    wait_for_metric(http, "rosetta_connections{protocol=\"stomp\"}", 1.0);
    wait_for_metric(http, "rosetta_connections{protocol=\"mqtt\"}", 1.0);
    wait_for_metric(http, AMQP_CONNECTIONS, 0.0);
    let now = scrape(http);
    for protocol in ["mqtt", "stomp"] {
        let received = now
            .value(&format!(
                "rosetta_received_bytes_total{{protocol=\"{protocol}\"}}"
            ))
            .expect("received bytes");
        assert!(received > 0.0, "{protocol}: nothing counted as received");
    }

    drop(stomp);
    drop(mqtt);
    wait_for_metric(http, "rosetta_connections{protocol=\"stomp\"}", 0.0);
    wait_for_metric(http, "rosetta_connections{protocol=\"mqtt\"}", 0.0);
}

#[test]
fn metrics_auth_asks_scrapers_for_a_user_with_a_management_tag() {
    let broker = Broker::builder()
        .with_http()
        .config(
            "[http]\nmetrics_auth = true\n\n[limits]\nfailed_login_delay_ms = 0\n\n\
             [[users]]\nname = \"guest\"\npassword = \"guest\"\ntags = [\"administrator\"]\n\n\
             [[users]]\nname = \"prometheus\"\npassword = \"pw\"\ntags = [\"monitoring\"]\n\n\
             [[users]]\nname = \"app\"\npassword = \"pw\"\n",
        )
        .start();
    let http = broker.http_addr();
    let anonymous = crate::http::request(http, "GET", "/metrics", None);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some("Basic realm=\"rosetta\"")
    );
    for refused in [("prometheus", "wrong"), ("app", "pw")] {
        let answer = crate::http::request(http, "GET", "/metrics", Some(refused));
        assert_eq!(answer.status, 401, "{refused:?}: {}", answer.body);
    }
    for allowed in [("prometheus", "pw"), ("guest", "guest")] {
        let answer = crate::http::request(http, "GET", "/metrics", Some(allowed));
        assert_eq!(answer.status, 200, "{allowed:?}: {}", answer.body);
        assert!(
            answer.body.contains("rosetta_connections"),
            "{}",
            answer.body
        );
    }
    // Health checks stay open to probes.
    assert_eq!(crate::http::get(http, "/healthz").status, 200);
    assert_eq!(crate::http::get(http, "/readyz").status, 200);
}
