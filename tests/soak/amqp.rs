//! AMQP clients (lapin): publishers with publisher confirms, and a consumer with manual acks.

use crate::ledger::{body_of, message_id, rng_for, Protocol, Sink, TOPIC_ROUTE};
use crate::world::{away, lifetime, pause, publish_until_stopped, step, World};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const DIRECT_ROUTE: &[Sink] = &[Sink::AmqpQueue];

fn url(addr: SocketAddr) -> String {
    format!("amqp://guest:guest@{}:{}/%2f", addr.ip(), addr.port())
}

pub async fn connect(addr: SocketAddr) -> Result<Connection, String> {
    step(
        "amqp connect",
        Connection::connect(&url(addr), ConnectionProperties::default()),
    )
    .await
}

/// Declares the durable queues and the binding the soak relies on, before any client starts:
/// `soak.a` (AMQP), `soak.s` (STOMP `/queue/soak.s` finds it declared) and `soak.x`, bound to
/// `amq.topic` with `soak.m.#` so that everything published on MQTT topics `soak/m/...` also
/// reaches a STOMP consumer.
pub async fn declare_topology(addr: SocketAddr) -> Result<(), String> {
    let conn = connect(addr).await?;
    let channel = step("amqp channel", conn.create_channel()).await?;
    for queue in ["soak.a", "soak.s", "soak.x"] {
        step(
            "queue.declare",
            channel.queue_declare(
                queue.into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            ),
        )
        .await?;
    }
    step(
        "queue.bind",
        channel.queue_bind(
            "soak.x".into(),
            "amq.topic".into(),
            "soak.m.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    let _ = step("amqp close", conn.close(200, "setup done".into())).await;
    Ok(())
}

/// Publishes persistent messages in bursts until the run stops publishing: three in four to
/// `soak.a` through the default exchange, one in four to `amq.topic` as `soak.m.a`, where the
/// MQTT session and `soak.x` receive it.
pub async fn publisher(world: Arc<World>, task: u64) {
    publish_until_stopped(world, task, "amqp publisher", |a| a.amqp, publish_session).await;
}

async fn publish_session(
    world: &World,
    rng: &mut fastrand::Rng,
    addr: SocketAddr,
    publisher: u64,
    seq: &mut u64,
) -> Result<(), String> {
    let conn = connect(addr).await?;
    let channel = step("amqp channel", conn.create_channel()).await?;
    step(
        "confirm.select",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    let until = Instant::now() + lifetime(rng);
    let properties = BasicProperties::default().with_delivery_mode(2);
    while world.publishing() && Instant::now() < until {
        let mut pending = Vec::new();
        for _ in 0..rng.usize(1..=40) {
            *seq += 1;
            let id = message_id(publisher, *seq);
            let (exchange, key, route) = if rng.u8(..4) == 0 {
                ("amq.topic", "soak.m.a", TOPIC_ROUTE)
            } else {
                ("", "soak.a", DIRECT_ROUTE)
            };
            world.ledger.sent(id);
            let confirm = step(
                "basic.publish",
                channel.basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    body_of(id).as_bytes(),
                    properties.clone(),
                ),
            )
            .await?;
            pending.push((id, route, confirm));
        }
        for (id, route, confirm) in pending {
            let confirmation = step("publisher confirm", confirm).await?;
            if confirmation.is_ack() {
                world.ledger.confirmed(Protocol::Amqp, id, route);
            } else {
                world.ledger.refused(Protocol::Amqp);
            }
        }
        pause(rng, 0, 50).await;
    }
    let _ = step("amqp close", conn.close(200, "done".into())).await;
    Ok(())
}

/// Consumes `soak.a` with manual acks and a random prefetch, recording each delivery before
/// acknowledging it, until the run stops.
pub async fn consumer(world: Arc<World>, task: u64) {
    let mut rng = rng_for(world.seed, task);
    while !world.stopped() {
        let Some(addrs) = world.addrs().await else {
            break;
        };
        let kills = world.kills();
        let result = consume_session(&world, &mut rng, addrs.amqp).await;
        world.connection_ended("amqp consumer", kills, result);
        away(&world, &mut rng).await;
    }
}

async fn consume_session(
    world: &World,
    rng: &mut fastrand::Rng,
    addr: SocketAddr,
) -> Result<(), String> {
    let conn = connect(addr).await?;
    let channel = step("amqp channel", conn.create_channel()).await?;
    step(
        "basic.qos",
        channel.basic_qos(rng.u16(1..=200), BasicQosOptions::default()),
    )
    .await?;
    let mut consumer = step(
        "basic.consume",
        channel.basic_consume(
            "soak.a".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    let until = Instant::now() + lifetime(rng);
    while !world.stopped() && (!world.chaos() || Instant::now() < until) {
        match tokio::time::timeout(Duration::from_millis(500), consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                world.ledger.delivered(Sink::AmqpQueue, &delivery.data);
                step("basic.ack", delivery.ack(BasicAckOptions::default())).await?;
            }
            Ok(Some(Err(e))) => return Err(format!("amqp delivery: {e:?}")),
            Ok(None) => return Err("amqp consumer: cancelled".into()),
            // Idle: look at the clock and the run's phase again.
            Err(_) => {}
        }
    }
    let _ = step("amqp close", conn.close(200, "done".into())).await;
    Ok(())
}
