//! Logins: a CONNECT without a user name logs in as guest (loopback only, as guest always is);
//! with `[mqtt] allow_anonymous` it is accepted from anywhere as user `anonymous`, and a CONNECT
//! that names a user still needs its password. A client id belongs to the user whose session
//! holds it.

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
fn a_connect_without_a_user_name_logs_in_as_guest_over_loopback() {
    let broker = broker();
    let port = port(&broker);
    let (_raw, ack) = raw3(port, anonymous3(&unique("anon")));
    assert_eq!(ack.code, v3::ConnectReturnCode::Accepted);
    let (_raw, ack) = raw5(port, anonymous5(&unique("anon")));
    assert_eq!(ack.reason_code, v5::ConnectReasonCode::Success);
    let shown = rosetta_tests::wait_until(WAIT, || {
        broker
            .log()
            .lines()
            .any(|l| l.contains("connection opened") && l.contains("mqtt") && l.contains("guest"))
    });
    assert!(shown, "the connection is logged as user guest");
}

#[test]
fn without_guest_a_connect_without_a_user_name_is_refused() {
    let broker = broker_with("\n[[users]]\nname = \"alice\"\npassword = \"pw\"\n");
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

fn connect5_as(id: &str, user: &str, password: &str) -> v5::Connect {
    let mut c = connect5(id, false);
    c.username = Some(user.into());
    c.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    c.properties.session_expiry_interval = Some(3600);
    c
}

#[test]
fn a_client_id_belongs_to_the_user_whose_session_holds_it() {
    let broker = broker_with(
        "\n[limits]\nfailed_login_delay_ms = 0\n\
         [[users]]\nname = \"alice\"\npassword = \"pw\"\n\
         [[users]]\nname = \"bob\"\npassword = \"pw\"\n",
    );
    let port = port(&broker);
    let id = unique("device");
    let (mut alice, ack) = raw5(port, connect5_as(&id, "alice", "pw"));
    assert_eq!(ack.reason_code, v5::ConnectReasonCode::Success);

    // Bob may not take the connected session over, and alice's connection is not disturbed.
    let (mut bob, ack) = raw5(port, connect5_as(&id, "bob", "pw"));
    assert_eq!(ack.reason_code, v5::ConnectReasonCode::NotAuthorized);
    assert!(bob.closed_silently());
    alice.send5(Packet::Pingreq);
    assert!(
        matches!(alice.read5(), Ok(Packet::Pingresp)),
        "alice is still connected"
    );
    // 3.1.1 has no reason codes: return code 5, not authorised.
    let mut bob3 = connect3(&id, false);
    bob3.username = Some("bob".into());
    bob3.password = Some(Bytes::from_static(b"pw"));
    let (mut bob3, ack) = raw3(port, bob3);
    assert_eq!(ack.code, v3::ConnectReturnCode::NotAuthorized);
    assert!(bob3.closed_silently());

    // Nor the stored session once alice is gone; alice resumes it.
    alice.send5(Packet::Disconnect(v5::Disconnect::new_normal()));
    assert!(alice.closed_silently());
    let (mut bob, ack) = raw5(port, connect5_as(&id, "bob", "pw"));
    assert_eq!(ack.reason_code, v5::ConnectReasonCode::NotAuthorized);
    assert!(bob.closed_silently());
    let (_alice, ack) = raw5(port, connect5_as(&id, "alice", "pw"));
    assert_eq!(ack.reason_code, v5::ConnectReasonCode::Success);
    assert!(ack.session_present, "alice's session is still there");
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
