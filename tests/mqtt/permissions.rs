//! RabbitMQ's permissions over MQTT: CONNECT needs permissions on MQTT's virtual host,
//! SUBSCRIBE read on `amq.topic` and the topic permission for the filter, PUBLISH (and a will)
//! write on `amq.topic` and the topic permission for the topic.

use bytes::Bytes;
use mqtt_proto::v5::{self, Packet, PubackReasonCode, PubrecReasonCode};
use mqtt_proto::QosPid;
use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as Reason5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::{LastWill, QoS, SubscribeReasonCode};

use crate::support::*;
use rosetta_tests::Access;

/// admin may do anything; `sensor` may only use `sensors/...` topics through `amq.topic`;
/// carol has no permission on `/`.
fn broker() -> rosetta_tests::Broker {
    let amq_topic = r"^amq\.topic$";
    let access = Access::admin_and_carol()
        .user("sensor")
        .permissions("sensor", ".*", amq_topic, amq_topic)
        .topic_permissions("sensor", "amq.topic", r"^sensors\.", r"^sensors\.");
    broker_with(access.toml())
}

fn v4_as(port: u16, user: &str) -> rumqttc::MqttOptions {
    let mut o = v4_options(port, &unique(user));
    o.set_credentials(user, user);
    o
}

fn v5_as(port: u16, user: &str) -> rumqttc::v5::MqttOptions {
    let mut o = v5_options(port, &unique(user));
    o.set_credentials(user, user);
    o
}

/// An admin subscribed to every topic, to see what reached `amq.topic`.
async fn watcher(port: u16) -> V4 {
    let mut admin = V4::with(v4_as(port, "admin")).await;
    let codes = admin.subscribe("#", QoS::AtLeastOnce).await;
    assert_eq!(codes, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    admin
}

#[test]
fn a_user_without_permissions_on_the_vhost_is_not_authorised() {
    let broker = broker();
    let port = port(&broker);
    run(async {
        let refused = V5::try_with(v5_as(port, "carol")).await.err();
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("NotAuthorized")),
            "5.0 CONNACK 0x87: {refused:?}"
        );
        let refused = V4::try_with(v4_as(port, "carol")).await.err();
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("NotAuthorized")),
            "3.1.1 return code 5: {refused:?}"
        );
        V4::with(v4_as(port, "sensor")).await.disconnect().await;
    });
}

#[test]
fn a_filter_outside_the_topic_permission_is_refused_in_suback() {
    let broker = broker();
    let port = port(&broker);
    run(async {
        let mut v5 = V5::with(v5_as(port, "sensor")).await;
        v5.client
            .subscribe("alarms/#", QoS5::AtLeastOnce)
            .await
            .expect("subscribe request");
        assert_eq!(v5.suback().await, vec![Reason5::NotAuthorized]);
        // `+` is `*` in the binding key the pattern sees.
        v5.subscribe("sensors/+/temp", QoS5::AtLeastOnce).await;

        let mut v4 = V4::with(v4_as(port, "sensor")).await;
        assert_eq!(
            v4.subscribe("alarms/#", QoS::AtLeastOnce).await,
            vec![SubscribeReasonCode::Failure]
        );
        assert_eq!(
            v4.subscribe("sensors/#", QoS::AtLeastOnce).await,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );

        let mut admin = V4::with(v4_as(port, "admin")).await;
        admin
            .send("alarms/kitchen", QoS::AtLeastOnce, false, b"fire")
            .await;
        admin
            .send("sensors/kitchen/temp", QoS::AtLeastOnce, false, b"21")
            .await;
        assert_eq!(&v5.publish().await.payload[..], b"21");
        assert_eq!(&v4.publish().await.payload[..], b"21");
        v4.no_publish().await;
    });
}

#[test]
fn a_refused_publish_gets_not_authorized_on_5_0_and_the_connection_stays() {
    let broker = broker();
    let port = port(&broker);
    run(async {
        let mut admin = watcher(port).await;
        let mut connect = connect5(&unique("sensor"), true);
        connect.username = Some("sensor".into());
        connect.password = Some(Bytes::from_static(b"sensor"));
        let (mut raw, ack) = raw5(port, connect);
        assert_eq!(ack.reason_code, v5::ConnectReasonCode::Success);
        let publish = |qos: QosPid, t: &str| {
            Packet::Publish(v5::Publish::new(qos, topic(t), Bytes::from_static(b"x")))
        };
        raw.send5(publish(QosPid::Level1(pid(1)), "alarms/kitchen"));
        match raw.read5() {
            Ok(Packet::Puback(p)) => assert_eq!(p.reason_code, PubackReasonCode::NotAuthorized),
            other => panic!("expected PUBACK, got {other:?}"),
        }
        raw.send5(publish(QosPid::Level2(pid(2)), "alarms/kitchen"));
        match raw.read5() {
            Ok(Packet::Pubrec(p)) => assert_eq!(p.reason_code, PubrecReasonCode::NotAuthorized),
            other => panic!("expected PUBREC, got {other:?}"),
        }
        // QoS 0 has no reply: dropped, and the connection goes on.
        raw.send5(publish(QosPid::Level0, "alarms/kitchen"));
        raw.send5(publish(QosPid::Level1(pid(3)), "sensors/kitchen"));
        match raw.read5() {
            Ok(Packet::Puback(p)) => assert_eq!(p.reason_code, PubackReasonCode::Success),
            other => panic!("expected PUBACK, got {other:?}"),
        }
        // Only the allowed message reached amq.topic.
        assert_eq!(admin.publish().await.topic, "sensors/kitchen");
        admin.no_publish().await;
    });
}

#[test]
fn a_refused_publish_closes_a_3_1_1_connection() {
    let broker = broker();
    let port = port(&broker);
    run(async {
        let mut admin = watcher(port).await;
        let mut sensor = V4::with(v4_as(port, "sensor")).await;
        sensor
            .send("sensors/hall", QoS::AtLeastOnce, false, b"ok")
            .await;
        sensor
            .client
            .publish("alarms/hall", QoS::AtLeastOnce, false, b"no".to_vec())
            .await
            .expect("publish request");
        let closed = sensor.closed().await;
        assert!(!closed.is_empty());
        assert_eq!(admin.publish().await.topic, "sensors/hall");
        admin.no_publish().await;
    });
}

#[test]
fn a_will_is_published_only_where_its_client_may_publish() {
    let broker = broker();
    let port = port(&broker);
    run(async {
        let mut admin = watcher(port).await;
        for (will_topic, expected) in [("alarms/gone", false), ("sensors/gone", true)] {
            let mut options = v4_as(port, "sensor");
            options.set_last_will(LastWill::new(will_topic, "bye", QoS::AtLeastOnce, false));
            let sensor = V4::with(options).await;
            // Dropped without DISCONNECT: the will is due.
            drop(sensor);
            if expected {
                assert_eq!(admin.publish().await.topic, will_topic);
            }
        }
        admin.no_publish().await;
    });
}
