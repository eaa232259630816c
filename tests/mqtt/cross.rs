//! MQTT and AMQP meet on `amq.topic`: topics become routing keys and back, user properties and
//! headers map onto each other, and a `.` inside a topic level survives the round trip.

use bytes::Bytes;
use lapin::options::{BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use mqtt_proto::v5::{self, Packet, UserProperty};
use mqtt_proto::{QoS, QosPid};

use crate::support::*;

async fn bound_queue(channel: &lapin::Channel, key: &str) -> String {
    let name = unique("amqp-q");
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    channel
        .queue_bind(
            name.as_str().into(),
            "amq.topic".into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    name
}

#[test]
fn an_mqtt_publish_reaches_an_amqp_queue_bound_with_a_dotted_key() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let channel = amqp(&broker).await;
        let queue = bound_queue(&channel, "plant.*.temp").await;
        let (mut publisher, _) = raw5(port, connect5(&unique("pub"), true));
        let mut p = v5::Publish::new(
            QosPid::Level1(pid(1)),
            topic("plant/boiler/temp"),
            Bytes::from_static(b"93"),
        );
        p.properties.user_properties = vec![UserProperty {
            name: "unit".into(),
            value: "C".into(),
        }];
        p.properties.content_type = Some("text/plain".into());
        p.properties.correlation_data = Some(Bytes::from_static(b"req-1"));
        p.properties.response_topic = Some(topic("plant/replies"));
        publisher.send5(Packet::Publish(p));
        assert!(
            matches!(publisher.read5(), Ok(Packet::Puback(a)) if a.reason_code == v5::PubackReasonCode::Success)
        );
        let got = amqp_get(&channel, &queue).await;
        assert_eq!(got.delivery.exchange.as_str(), "amq.topic");
        assert_eq!(got.delivery.routing_key.as_str(), "plant.boiler.temp");
        assert_eq!(&got.delivery.data[..], b"93");
        let props = &got.delivery.properties;
        assert_eq!(*props.delivery_mode(), Some(2), "QoS 1 is persistent");
        assert_eq!(
            props.content_type().as_ref().map(ShortString::as_str),
            Some("text/plain")
        );
        assert_eq!(
            props.correlation_id().as_ref().map(ShortString::as_str),
            Some("req-1")
        );
        assert_eq!(
            props.reply_to().as_ref().map(ShortString::as_str),
            Some("plant.replies")
        );
        let headers = props.headers().clone().expect("headers");
        assert_eq!(
            headers.inner().get("unit"),
            Some(&AMQPValue::LongString(LongString::from("C")))
        );
    });
}

#[test]
fn an_amqp_publish_to_amq_topic_reaches_mqtt_subscribers() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let (mut sub, _) = raw5(port, connect5(&unique("sub"), true));
        sub.send5(subscribe5(1, "x/+", QoS::Level1));
        suback5(&mut sub);
        let (mut sub3, _) = {
            let mut raw = Raw::connect(port);
            raw.send3(mqtt_proto::v3::Packet::Connect(connect3(
                &unique("sub3"),
                true,
            )));
            let ack = raw.read3();
            (raw, ack)
        };
        sub3.send3(mqtt_proto::v3::Packet::Subscribe(
            mqtt_proto::v3::Subscribe::new(pid(1), vec![(filter("x/y"), QoS::Level0)]),
        ));
        assert!(matches!(
            sub3.read3(),
            Ok(mqtt_proto::v3::Packet::Suback(_))
        ));

        let channel = amqp(&broker).await;
        let mut headers = FieldTable::default();
        headers.insert(
            "origin".into(),
            AMQPValue::LongString(LongString::from("amqp")),
        );
        headers.insert("count".into(), AMQPValue::LongInt(3));
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers)
            .with_content_type("application/json".into());
        channel
            .basic_publish(
                "amq.topic".into(),
                "x.y".into(),
                BasicPublishOptions::default(),
                b"{}",
                properties,
            )
            .await
            .expect("publish");

        match sub.read5() {
            Ok(Packet::Publish(p)) => {
                assert_eq!(&*p.topic_name, "x/y");
                assert_eq!(
                    p.qos_pid.qos(),
                    QoS::Level1,
                    "persistent AMQP messages arrive at QoS 1"
                );
                assert_eq!(
                    p.properties.content_type.as_deref(),
                    Some("application/json")
                );
                let mut users: Vec<(String, String)> = p
                    .properties
                    .user_properties
                    .iter()
                    .map(|u| (u.name.to_string(), u.value.to_string()))
                    .collect();
                users.sort();
                assert_eq!(
                    users,
                    vec![
                        ("count".into(), "3".into()),
                        ("origin".into(), "amqp".into())
                    ]
                );
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
        assert!(
            matches!(sub3.read3(), Ok(mqtt_proto::v3::Packet::Publish(p)) if &*p.topic_name == "x/y" && &p.payload[..] == b"{}")
        );
    });
}

#[test]
fn dots_in_topic_levels_survive_the_trip_through_amqp() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let channel = amqp(&broker).await;
        // The escaped level is one AMQP word: `*` matches it whole.
        let queue = bound_queue(&channel, "fw.*.status").await;
        let (mut sub, _) = raw5(port, connect5(&unique("sub"), true));
        sub.send5(subscribe5(1, "fw/v1.2/+", QoS::Level0));
        suback5(&mut sub);
        let (mut publisher, _) = raw5(port, connect5(&unique("pub"), true));
        publisher.send5(Packet::Publish(v5::Publish::new(
            QosPid::Level0,
            topic("fw/v1.2/status"),
            Bytes::from_static(b"ok"),
        )));
        assert!(
            matches!(sub.read5(), Ok(Packet::Publish(p)) if &*p.topic_name == "fw/v1.2/status")
        );
        let got = amqp_get(&channel, &queue).await;
        assert_eq!(got.delivery.routing_key.as_str(), "fw.v1%2E2.status");
        // Sent back by an AMQP client with the key it received, it reaches the MQTT filter.
        channel
            .basic_publish(
                "amq.topic".into(),
                got.delivery.routing_key.clone(),
                BasicPublishOptions::default(),
                b"back",
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        assert!(
            matches!(sub.read5(), Ok(Packet::Publish(p)) if &*p.topic_name == "fw/v1.2/status" && &p.payload[..] == b"back")
        );
    });
}

#[test]
fn a_persistent_mqtt_session_is_a_durable_queue_amqp_can_see() {
    let broker = broker();
    let port = port(&broker);
    run(async move {
        let id = unique("visible");
        let mut c = connect5(&id, true);
        c.properties.session_expiry_interval = Some(600);
        let (mut client, _) = raw5(port, c);
        client.send5(subscribe5(1, "seen/#", QoS::Level1));
        suback5(&mut client);
        let channel = amqp(&broker).await;
        let queue = format!("mqtt-subscription-{id}");
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the session's queue exists");
        assert_eq!(declared.consumer_count(), 1);
    });
}
