//! `[server] worker_threads`: the broker runs client connections on that many threads, and says
//! so when it starts.

use std::time::Duration;

use rosetta_tests::BrokerBuilder;

#[test]
fn the_broker_runs_as_many_worker_threads_as_configured() {
    for n in [1, 3] {
        let broker = BrokerBuilder::new()
            .config(&format!("[server]\nworker_threads = {n}\n"))
            .start();
        assert!(
            broker.wait_for_log(&format!("workers={n}"), Duration::from_secs(10)),
            "worker_threads = {n}: {}",
            broker.log()
        );
    }
}

/// One worker runs on tokio's single-threaded scheduler. Wake-ups that come from other
/// threads must still reach it: the store's disk thread releases a persistent publish's
/// confirm, and a message crosses from an MQTT publisher to an AMQP consumer.
#[test]
fn one_worker_confirms_from_disk_and_carries_messages_across_protocols() {
    use crate::mqtt_support::V4;
    use crate::support::{
        self, connect, consume, declare, declare_queue, next, publish_persistent, text,
    };
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;

    let broker = crate::mqtt_support::broker_with("[server]\nworker_threads = 1\n");
    support::run(async {
        let client = connect(&broker).await;
        let confirms = client.confirm_channel().await;
        let durable = support::unique("one-worker-durable");
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        declare(&confirms, &durable, options, FieldTable::default()).await;
        for i in 0..20 {
            publish_persistent(&confirms, &durable, &format!("m{i}")).await;
        }

        let channel = client.channel().await;
        let from_mqtt = support::unique("one-worker-mqtt");
        declare_queue(&channel, &from_mqtt).await;
        support::bind_queue(&channel, &from_mqtt, "amq.topic", "sensors.one").await;
        let mut consumer = consume(&channel, &from_mqtt, true).await;
        let port = crate::mqtt_support::port(&broker);
        let mut publisher = V4::connect(port, &support::unique("one-worker-pub"), true).await;
        publisher
            .send("sensors/one", rumqttc::QoS::AtLeastOnce, false, b"reading")
            .await;
        assert_eq!(text(&next(&mut consumer).await), "reading");
    });
}
