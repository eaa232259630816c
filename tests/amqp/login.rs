//! Credentials: users given by a RabbitMQ password hash, `loopback_only`, and a refused login
//! answered only after `[limits] failed_login_delay_ms` (in its own connection: other clients
//! log in meanwhile) and counted in `rosetta_auth_failures_total` for each protocol.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::support::*;
use lapin::{Connection, ConnectionProperties};
use rosetta_tests::raw::{RawConnection, REPLY_DEADLINE};
use rosetta_tests::Broker;

/// RabbitMQ's documented example: "test12" hashed with the salt 0x908DC60A.
const TEST12_HASH: &str = "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR";

/// `rosetta_auth_failures_total` for `protocol`, read from `/metrics`.
fn auth_failures(http: SocketAddr, protocol: &str) -> Option<f64> {
    let mut stream = TcpStream::connect(http).expect("connect to the HTTP endpoint");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: broker\r\nConnection: close\r\n\r\n")
        .expect("request /metrics");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read /metrics");
    let series = format!("rosetta_auth_failures_total{{protocol=\"{protocol}\"}} ");
    response
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.trim().parse().expect("a number"))
}

/// An AMQP login with a wrong password on a raw connection: the reply code of the
/// `connection.close` that answers it, and how long after `start-ok` it came.
fn refused_login(addr: SocketAddr, user: &str, sent: &Barrier) -> (u16, Duration) {
    let mut conn = RawConnection::connect(addr).expect("tcp connect");
    conn.start().expect("connection.start");
    let asked = Instant::now();
    conn.start_ok_plain(user, "wrong").expect("start-ok");
    sent.wait();
    let close = conn
        .expect_connection_close(REPLY_DEADLINE)
        .expect("connection.close answers a wrong password");
    (close.reply_code, asked.elapsed())
}

#[test]
fn a_refused_login_is_answered_after_the_delay_and_counted_while_others_log_in_at_once() {
    const DELAY: Duration = Duration::from_millis(2000);
    // More refused logins at once than the broker has worker threads: a delay that blocked a
    // worker would hold the good login up too.
    const REFUSED: usize = 4;
    let broker = Broker::builder()
        .with_http()
        .config(&format!(
            "[limits]\nfailed_login_delay_ms = {}\n",
            DELAY.as_millis()
        ))
        .start();
    let addr = broker.amqp_addr();
    let sent = Arc::new(Barrier::new(REFUSED + 1));
    let refused: Vec<_> = (0..REFUSED)
        .map(|i| {
            let sent = sent.clone();
            // Unknown users are refused like wrong passwords.
            let user = if i % 2 == 0 { "guest" } else { "nobody" };
            std::thread::spawn(move || refused_login(addr, user, &sent))
        })
        .collect();
    sent.wait();

    let started = Instant::now();
    let mut good = RawConnection::connect(addr).expect("tcp connect");
    good.handshake().expect("guest logs in");
    good.open_channel(1).expect("and opens a channel");
    let took = started.elapsed();
    assert!(
        took < DELAY,
        "a good login waited {took:?} while others were refused"
    );

    for handle in refused {
        let (code, waited) = handle.join().expect("refused login thread");
        assert_eq!(code, code::ACCESS_REFUSED);
        assert!(
            waited >= DELAY,
            "refused after {waited:?}, before the {DELAY:?} delay"
        );
    }
    let http = broker.http_addr();
    assert_eq!(auth_failures(http, "amqp"), Some(REFUSED as f64));
    assert_eq!(auth_failures(http, "mqtt"), Some(0.0));
    assert_eq!(auth_failures(http, "stomp"), Some(0.0));
}

/// An MQTT 3.1.1 CONNECT with user name and password, clean session, keep-alive 60 s.
fn mqtt_connect(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60];
    for field in [client_id, user, password] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

/// Sends `request` on a new connection and reads the first `n` bytes of the answer, with how
/// long they took.
fn ask(addr: SocketAddr, request: &[u8], n: usize) -> (Vec<u8>, Duration) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let asked = Instant::now();
    stream.write_all(request).expect("send");
    let mut answer = vec![0; n];
    stream.read_exact(&mut answer).expect("an answer");
    (answer, asked.elapsed())
}

#[test]
fn refused_mqtt_and_stomp_logins_are_delayed_and_counted_under_their_protocol() {
    const DELAY: Duration = Duration::from_millis(300);
    let broker = Broker::builder()
        .with_http()
        .config(&format!(
            "[limits]\nfailed_login_delay_ms = {}\n\
             [mqtt]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\
             [stomp]\nenabled = true\nlisten = \"127.0.0.1:0\"\n",
            DELAY.as_millis()
        ))
        .start();
    let mqtt = broker.addr("mqtt").expect("mqtt listener");
    let (connack, waited) = ask(mqtt, &mqtt_connect("login-test", "guest", "wrong"), 4);
    // CONNACK, return code 4: bad user name or password (MQTT 3.1.1 section 3.2.2.3).
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x04]);
    assert!(waited >= DELAY, "CONNACK after {waited:?}");
    let (connack, waited) = ask(mqtt, &mqtt_connect("login-ok", "guest", "guest"), 4);
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    assert!(waited < DELAY, "a good CONNECT waited {waited:?}");

    let stomp = broker.stomp_addr();
    let frame = b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:wrong\n\n\0";
    let (error, waited) = ask(stomp, frame, 6);
    assert_eq!(&error, b"ERROR\n");
    assert!(waited >= DELAY, "ERROR after {waited:?}");

    let http = broker.http_addr();
    assert_eq!(auth_failures(http, "mqtt"), Some(1.0));
    assert_eq!(auth_failures(http, "stomp"), Some(1.0));
    assert_eq!(auth_failures(http, "amqp"), Some(0.0));
}

#[test]
fn a_user_configured_with_a_rabbitmq_password_hash_logs_in() {
    let broker = Broker::start_with(&format!(
        "[[users]]\nname = \"alice\"\npassword_hash = \"{TEST12_HASH}\"\ntags = [\"administrator\"]\n"
    ));
    run(async {
        let url = format!("amqp://alice:test12@{}/%2f", broker.amqp_addr());
        let client = tokio::time::timeout(
            WAIT,
            Connection::connect(&url, ConnectionProperties::default()),
        )
        .await
        .expect("login within the deadline")
        .expect("alice logs in with test12");
        assert_eq!(client.status().username(), "alice");
        client.close(200, "bye".into()).await.expect("close");
    });
}

/// An address of this machine other than loopback, if it has one: the one it would use to
/// reach a documentation address (no packet is sent).
fn non_loopback_address() -> Option<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn loopback_only_users_are_refused_over_another_address_and_others_are_not() {
    let Some(ip) = non_loopback_address() else {
        eprintln!("skipped: this machine has no address besides loopback");
        return;
    };
    let broker = Broker::start_with(
        "[amqp]\nlisten = \"0.0.0.0:0\"\n[limits]\nfailed_login_delay_ms = 0\n\
         [[users]]\nname = \"guest\"\npassword = \"guest\"\n\
         [[users]]\nname = \"local\"\npassword = \"pw\"\nloopback_only = true\n\
         [[users]]\nname = \"remote\"\npassword = \"pw\"\nloopback_only = false\n",
    );
    let port = broker.amqp_port();
    let outside = SocketAddr::new(ip, port);
    let loopback = SocketAddr::from(([127, 0, 0, 1], port));
    let attempt = |addr: SocketAddr, user: &str, password: &str| {
        let mut conn = RawConnection::connect(addr).expect("tcp connect");
        conn.start().expect("connection.start");
        conn.start_ok_plain(user, password).expect("start-ok");
        conn
    };
    let admitted = |addr: SocketAddr, user: &str, password: &str| {
        attempt(addr, user, password).read_tune().is_ok()
    };
    // guest is loopback-only by default, like a user that says so.
    for (user, password) in [("guest", "guest"), ("local", "pw")] {
        assert!(
            admitted(loopback, user, password),
            "{user} refused on loopback"
        );
        let close = attempt(outside, user, password)
            .expect_connection_close(REPLY_DEADLINE)
            .expect("connection.close");
        assert_eq!(close.reply_code, code::ACCESS_REFUSED, "{close:?}");
        assert!(close.reply_text.contains("localhost"), "{close:?}");
    }
    assert!(
        admitted(outside, "remote", "pw"),
        "remote refused over {ip}"
    );
}

#[test]
fn the_administrator_named_by_the_environment_logs_in_from_another_address() {
    let Some(ip) = non_loopback_address() else {
        eprintln!("skipped: this machine has no address besides loopback");
        return;
    };
    // The container image's configuration: guest confined to loopback, the administrator
    // from the environment.
    let broker = Broker::builder()
        .config("[amqp]\nlisten = \"0.0.0.0:0\"\n[limits]\nfailed_login_delay_ms = 0\n")
        .env("ROSETTA_DEFAULT_USER", "admin")
        .env("ROSETTA_DEFAULT_PASS", "from-env")
        .start();
    let outside = SocketAddr::new(ip, broker.amqp_port());
    let mut conn = RawConnection::connect(outside).expect("tcp connect");
    conn.start().expect("connection.start");
    conn.start_ok_plain("admin", "from-env").expect("start-ok");
    assert!(conn.read_tune().is_ok(), "admin refused over {ip}");
    let mut guest = RawConnection::connect(outside).expect("tcp connect");
    guest.start().expect("connection.start");
    guest.start_ok_plain("guest", "guest").expect("start-ok");
    let close = guest
        .expect_connection_close(REPLY_DEADLINE)
        .expect("guest refused from outside");
    assert_eq!(close.reply_code, code::ACCESS_REFUSED, "{close:?}");
}
