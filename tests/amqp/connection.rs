//! Connection handshake: authentication, tuning, heartbeats, capabilities.

use crate::support::*;
use lapin::{Connection, ConnectionProperties};
use rosetta_tests::raw::{self, RawConnection, REPLY_DEADLINE};
use rosetta_tests::{shared_broker, Broker};
use std::sync::Arc;
use std::time::Duration;

fn broker() -> Arc<Broker> {
    shared_broker("amqp-connection")
}

async fn connect_error(url: &str) -> lapin::Error {
    match tokio::time::timeout(
        WAIT,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    {
        Err(_) => panic!("connecting to {url} neither succeeded nor failed within {WAIT:?}"),
        Ok(Ok(_)) => panic!("connecting to {url} should have been refused"),
        Ok(Err(e)) => e,
    }
}

#[test]
fn guest_connects_with_plain_credentials_and_can_open_a_channel() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        assert!(client.status().connected());
        assert_eq!(client.status().username(), "guest");
        let channel = client.channel().await;
        let queue = unique("conn.plain");
        let ok = declare_queue(&channel, &queue).await;
        assert_eq!(ok.name().as_str(), queue);
        channel
            .close(200, "bye".into())
            .await
            .expect("channel.close");
        client.close().await;
        assert!(!client.status().connected());
    });
}

#[test]
fn wrong_password_is_refused_with_access_refused() {
    let broker = broker();
    run(async {
        let url = format!("amqp://guest:not-the-password@{}/%2f", broker.amqp_addr());
        let error = connect_error(&url).await;
        assert_eq!(code_of(&error), Some(code::ACCESS_REFUSED), "{error:?}");
    });
}

#[test]
fn unknown_user_is_refused_with_access_refused() {
    let broker = broker();
    run(async {
        let url = format!("amqp://nobody:guest@{}/%2f", broker.amqp_addr());
        let error = connect_error(&url).await;
        assert_eq!(code_of(&error), Some(code::ACCESS_REFUSED), "{error:?}");
    });
}

#[test]
fn unknown_vhost_is_refused_with_not_allowed() {
    let broker = broker();
    run(async {
        let url = format!("amqp://guest:guest@{}/no-such-vhost", broker.amqp_addr());
        let error = connect_error(&url).await;
        assert_eq!(code_of(&error), Some(code::NOT_ALLOWED), "{error:?}");
    });
}

#[test]
fn failed_authentication_is_reported_with_connection_close_then_the_socket_closes() {
    let broker = broker();
    let mut conn = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
    conn.start().expect("connection.start");
    conn.start_ok_plain("guest", "wrong").expect("start-ok");
    let close = conn
        .expect_connection_close(REPLY_DEADLINE)
        .expect("connection.close after a bad password (authentication_failure_close)");
    assert_eq!(close.reply_code, code::ACCESS_REFUSED, "{close:?}");
    conn.send_connection_close_ok().ok();
    assert!(conn.closes_within(Duration::from_secs(10)));
}

#[test]
fn server_start_announces_0_9_plain_and_rabbitmq_capabilities() {
    let broker = broker();
    let mut conn = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
    let start = conn.start().expect("connection.start");
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    assert!(
        start.mechanisms.split(' ').any(|m| m == "PLAIN"),
        "mechanisms: {:?}",
        start.mechanisms
    );
    assert!(
        start.locales.split(' ').any(|l| l == "en_US"),
        "locales: {:?}",
        start.locales
    );
    for capability in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        assert_eq!(
            start.capability(capability),
            Some(true),
            "capability {capability} in {:?}",
            start.server_properties
        );
    }
    assert!(
        raw::lookup(&start.server_properties, "product").is_some(),
        "{:?}",
        start.server_properties
    );
}

#[test]
fn server_proposes_rabbitmq_default_tuning() {
    let broker = broker();
    let mut conn = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
    conn.start().expect("connection.start");
    conn.start_ok_plain("guest", "guest").expect("start-ok");
    let tune = conn.read_tune().expect("connection.tune");
    assert_eq!(tune.frame_max, 131_072, "{tune:?}");
    assert_eq!(tune.channel_max, 2047, "{tune:?}");
    assert_eq!(tune.heartbeat, 60, "{tune:?}");
}

#[test]
fn lapin_negotiates_the_default_frame_max_and_channel_max() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let config = client.configuration();
        assert_eq!(config.frame_max(), 131_072);
        assert_eq!(config.channel_max(), 2047);
    });
}

#[test]
fn client_can_negotiate_a_smaller_frame_max_and_channel_max_and_big_bodies_still_flow() {
    let broker = broker();
    run(async {
        let url = format!("{}?frame_max=8192&channel_max=16", broker.amqp_url());
        let client = connect_url(&url).await;
        assert_eq!(client.configuration().frame_max(), 8192);
        assert_eq!(client.configuration().channel_max(), 16);
        let channel = client.confirm_channel().await;
        let queue = unique("conn.small-frames");
        declare_queue(&channel, &queue).await;
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let confirmation = publish_props(
            &channel,
            "",
            &queue,
            &body,
            lapin::BasicProperties::default(),
        )
        .await;
        assert!(confirmation.is_ack());
        let message = get(&channel, &queue, true).await.expect("message");
        assert_eq!(message.delivery.data.len(), body.len());
        assert!(message.delivery.data == body, "body corrupted in transit");
    });
}

#[test]
fn message_of_a_megabyte_round_trips_through_a_consumer() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let queue = unique("conn.big");
        declare_queue(&channel, &queue).await;
        let body: Vec<u8> = (0..1_048_576u32).map(|i| (i % 253) as u8).collect();
        let confirmation = publish_props(
            &channel,
            "",
            &queue,
            &body,
            lapin::BasicProperties::default(),
        )
        .await;
        assert!(confirmation.is_ack());
        let mut consumer = consume(&channel, &queue, true).await;
        let delivery = next(&mut consumer).await;
        assert!(delivery.data == body, "body corrupted in transit");
    });
}

#[test]
fn connection_with_a_one_second_heartbeat_stays_alive_over_several_intervals() {
    let broker = broker();
    run(async {
        let url = format!("{}?heartbeat=1", broker.amqp_url());
        let client = connect_url(&url).await;
        assert_eq!(client.configuration().heartbeat(), 1);
        let channel = client.channel().await;
        // Idle across several heartbeat intervals: neither side may give up on the other.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert!(client.status().connected(), "connection dropped while idle");
        let queue = unique("conn.heartbeat");
        declare_queue(&channel, &queue).await;
        publish_all(&channel, &queue, &["still here"]).await;
        assert_eq!(drain(&channel, &queue).await, vec!["still here"]);
    });
}

#[test]
fn server_sends_heartbeats_at_the_negotiated_interval() {
    let broker = broker();
    let mut conn = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
    let tune = conn.handshake_with("guest", "guest", 1).expect("handshake");
    assert_eq!(tune.heartbeat, 1);
    conn.send_heartbeat().expect("heartbeat");
    conn.expect_heartbeat(Duration::from_secs(3))
        .expect("a heartbeat frame from the server within 3 s");
}

#[test]
fn silent_client_is_disconnected_after_missed_heartbeats() {
    let broker = broker();
    let mut conn = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
    conn.handshake_with("guest", "guest", 1).expect("handshake");
    // RabbitMQ drops a peer that sent nothing for two heartbeat intervals.
    assert!(
        conn.closes_within(Duration::from_secs(10)),
        "the broker kept a silent connection with a 1 s heartbeat open"
    );
}

#[test]
fn many_channels_on_one_connection_work_independently() {
    let broker = broker();
    run(async {
        let client = connect(&broker).await;
        let mut channels = Vec::new();
        for _ in 0..20 {
            channels.push(client.channel().await);
        }
        let ids: std::collections::BTreeSet<u16> = channels.iter().map(|c| c.id()).collect();
        assert_eq!(ids.len(), 20);
        for (i, channel) in channels.iter().enumerate() {
            let queue = unique("conn.multi");
            declare_queue(channel, &queue).await;
            let body = format!("on channel {i}");
            publish_all(channel, &queue, &[&body]).await;
            assert_eq!(drain(channel, &queue).await, vec![body]);
        }
    });
}

#[test]
fn configured_limits_are_proposed_in_connection_tune() {
    let broker = Broker::start_with(
        "[limits]\nframe_max = 8192\nchannel_max = 32\n\n[amqp]\nheartbeat = 5\n",
    );
    let mut conn = RawConnection::connect(broker.amqp_addr()).expect("tcp connect");
    conn.start().expect("connection.start");
    conn.start_ok_plain("guest", "guest").expect("start-ok");
    let tune = conn.read_tune().expect("connection.tune");
    assert_eq!(
        (tune.frame_max, tune.channel_max, tune.heartbeat),
        (8192, 32, 5),
        "{tune:?}"
    );
    run(async {
        let client = connect(&broker).await;
        assert_eq!(client.configuration().frame_max(), 8192);
        assert_eq!(client.configuration().channel_max(), 32);
    });
}
