//! `[mqtt] allow_anonymous`: off by default, a CONNECT without a user name is refused; on, it is
//! accepted as user `anonymous`, and a CONNECT that names a user still needs its password.

use bytes::Bytes;
use mqtt_proto::v5::{self, Packet};
use mqtt_proto::{v3, QoS, QosPid};

use crate::support::*;

fn anonymous3(id: &str) -> v3::Connect {
    let mut c = connect3(id, true);
    c.username = None;
    c.password = None;
    c
}

fn anonymous5(id: &str) -> v5::Connect {
    let mut c = connect5(id, true);
    c.username = None;
    c.password = None;
    c
}

#[test]
fn without_allow_anonymous_a_connect_without_a_user_name_is_refused() {
    let broker = broker();
    let port = port(&broker);
    let (mut raw, ack) = raw3(port, anonymous3(&unique("anon")));
    assert_eq!(ack.code, v3::ConnectReturnCode::BadUserNameOrPassword);
    assert!(raw.closed_silently());
    let (mut raw, ack) = raw5(port, anonymous5(&unique("anon")));
    assert_eq!(
        ack.reason_code,
        v5::ConnectReasonCode::BadUserNameOrPassword
    );
    assert!(raw.closed_silently());
}

#[test]
fn with_allow_anonymous_a_client_without_a_user_name_connects_as_anonymous() {
    let broker = broker_with("allow_anonymous = true\n");
    let port = port(&broker);
    let (mut sub, ack) = raw3(port, anonymous3(&unique("anon")));
    assert_eq!(ack.code, v3::ConnectReturnCode::Accepted);
    sub.send3(v3::Packet::Subscribe(v3::Subscribe::new(
        pid(1),
        vec![(filter("anon/t"), QoS::Level1)],
    )));
    assert!(matches!(sub.read3(), Ok(v3::Packet::Suback(_))));

    let (mut publisher, ack) = raw5(port, anonymous5(&unique("anon")));
    assert_eq!(ack.reason_code, v5::ConnectReasonCode::Success);
    publisher.send5(Packet::Publish(v5::Publish::new(
        QosPid::Level1(pid(1)),
        topic("anon/t"),
        Bytes::from_static(b"hello"),
    )));
    assert!(matches!(publisher.read5(), Ok(Packet::Puback(_))));
    match sub.read3() {
        Ok(v3::Packet::Publish(p)) => assert_eq!(&p.payload[..], b"hello"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    let shown = rosetta_tests::wait_until(WAIT, || {
        broker.log().lines().any(|l| {
            l.contains("connection opened") && l.contains("mqtt") && l.contains("anonymous")
        })
    });
    assert!(shown, "the connection is logged as user anonymous");
}

#[test]
fn with_allow_anonymous_a_user_name_still_needs_its_password() {
    let broker = broker_with("allow_anonymous = true\n");
    let port = port(&broker);
    let mut wrong3 = connect3(&unique("named"), true);
    wrong3.password = Some(Bytes::from_static(b"wrong"));
    let (mut raw, ack) = raw3(port, wrong3);
    assert_eq!(ack.code, v3::ConnectReturnCode::BadUserNameOrPassword);
    assert!(raw.closed_silently());
    let mut wrong5 = connect5(&unique("named"), true);
    wrong5.password = None;
    let (mut raw, ack) = raw5(port, wrong5);
    assert_eq!(
        ack.reason_code,
        v5::ConnectReasonCode::BadUserNameOrPassword
    );
    assert!(raw.closed_silently());
    let (_ok, ack) = raw5(port, connect5(&unique("named"), true));
    assert_eq!(ack.reason_code, v5::ConnectReasonCode::Success);
}
