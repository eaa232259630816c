//! Logging in with a client certificate: `[amqp]` (`EXTERNAL`), `[mqtt]` and `[stomp]`
//! `ssl_cert_login`, the user named by the certificate's CN or whole subject (`[tls]
//! ssl_cert_login_from`); and what a client without credentials gets from an address other than
//! loopback, with and without a certificate.

use std::net::{IpAddr, UdpSocket};
use std::time::Instant;

use rcgen::DnType;
use rosetta_tests::raw::{client_properties, encode_method, method, Args, Frame, FRAME_HEARTBEAT};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, TlsConfiguration};

use super::*;

/// Users besides guest; `app-1` is the CN of the usual client certificate.
const USERS: &str = "[[users]]\nname = \"guest\"\npassword = \"guest\"\n\
                     [[users]]\nname = \"app-1\"\npassword = \"app-1-secret\"\n";
/// AMQP `EXTERNAL` on.
const AMQP_CERT_LOGIN: &str = "[amqp]\nssl_cert_login = true\n";

/// A broker verifying client certificates against `pki`, every protocol plain and over TLS on
/// `ip`, with `extra` configuration (sections merge with the kit's).
fn cert_broker_on(files: &Path, pki: &Pki, ip: IpAddr, extra: &str) -> Broker {
    let server = pki.server("rosetta server");
    let mut config = tls_section(files, pki, &server, "verify_peer = true\n");
    for section in ["amqp", "mqtt", "stomp"] {
        config.push_str(&format!(
            "[{section}]\nenabled = true\nlisten = \"{ip}:0\"\ntls_listen = \"{ip}:0\"\n"
        ));
    }
    config.push_str("[http]\nenabled = true\nlisten = \"127.0.0.1:0\"\n");
    config.push_str(extra);
    BrokerBuilder::new().config(&config).start()
}

fn cert_broker(files: &Path, pki: &Pki, extra: &str) -> Broker {
    cert_broker_on(files, pki, IpAddr::from([127, 0, 0, 1]), extra)
}

/// Reads one AMQP frame, heartbeats skipped.
async fn amqp_frame<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Frame> {
    loop {
        let mut header = [0u8; 7];
        tokio::time::timeout(WAIT, stream.read_exact(&mut header))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no AMQP frame"))??;
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
        let mut payload = vec![0u8; size + 1];
        stream.read_exact(&mut payload).await?;
        payload.pop();
        if header[0] != FRAME_HEARTBEAT {
            return Ok(Frame {
                kind: header[0],
                channel: u16::from_be_bytes([header[1], header[2]]),
                payload,
            });
        }
    }
}

async fn send_method<S: AsyncWrite + Unpin>(
    stream: &mut S,
    id: (u16, u16),
    args: Args,
) -> io::Result<()> {
    stream.write_all(&encode_method(0, id, &args)).await?;
    stream.flush().await
}

/// How an AMQP login went.
#[derive(Debug)]
struct AmqpLogin {
    /// The SASL mechanisms `connection.start` offered.
    mechanisms: String,
    /// `Ok` once `connection.open-ok` arrived; the `connection.close` code and text otherwise.
    outcome: Result<(), (u16, String)>,
    /// From `start-ok` to the answer.
    answered_after: Duration,
}

/// Runs the AMQP handshake with `mechanism` and `response` in `start-ok`, up to `open-ok` on
/// virtual host `/`.
async fn amqp_login<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mechanism: &str,
    response: &[u8],
) -> AmqpLogin {
    stream
        .write_all(b"AMQP\x00\x00\x09\x01")
        .await
        .expect("protocol header");
    let start = amqp_frame(stream).await.expect("connection.start");
    assert!(start.is_method(method::CONNECTION_START), "{start:?}");
    let mut args = start.args();
    let (_major, _minor) = (args.u8().expect("major"), args.u8().expect("minor"));
    args.table().expect("server properties");
    let mechanisms = String::from_utf8(args.longstr().expect("mechanisms")).expect("UTF-8");
    let asked = Instant::now();
    send_method(
        stream,
        method::CONNECTION_START_OK,
        Args::new()
            .table(&client_properties())
            .shortstr(mechanism)
            .longstr(response)
            .shortstr("en_US"),
    )
    .await
    .expect("start-ok");
    let answer = amqp_frame(stream).await.expect("an answer to start-ok");
    let answered_after = asked.elapsed();
    let outcome = if answer.is_method(method::CONNECTION_CLOSE) {
        let mut args = answer.args();
        Err((
            args.u16().expect("reply code"),
            args.shortstr().expect("reply text"),
        ))
    } else {
        assert!(answer.is_method(method::CONNECTION_TUNE), "{answer:?}");
        let mut args = answer.args();
        let (channel_max, frame_max) = (
            args.u16().expect("channel max"),
            args.u32().expect("frame max"),
        );
        send_method(
            stream,
            method::CONNECTION_TUNE_OK,
            Args::new().u16(channel_max).u32(frame_max).u16(0),
        )
        .await
        .expect("tune-ok");
        send_method(
            stream,
            method::CONNECTION_OPEN,
            Args::new().shortstr("/").shortstr("").bits(&[false]),
        )
        .await
        .expect("open");
        let opened = amqp_frame(stream).await.expect("an answer to open");
        assert!(opened.is_method(method::CONNECTION_OPEN_OK), "{opened:?}");
        Ok(())
    };
    AmqpLogin {
        mechanisms,
        outcome,
        answered_after,
    }
}

/// An AMQP login over TLS with `identity` as client certificate.
async fn amqps_login(
    broker: &Broker,
    pki: &Pki,
    identity: Option<&Issued>,
    mechanism: &str,
    response: &[u8],
) -> AmqpLogin {
    let mut stream = tls_connect(tls_addr(broker, "amqps"), client_config(pki, identity))
        .await
        .expect("TLS connect");
    amqp_login(&mut stream, mechanism, response).await
}

/// `rosetta_auth_failures_total` for `protocol`, read from `/metrics`.
async fn auth_failures(broker: &Broker, protocol: &str) -> f64 {
    let mut stream = TcpStream::connect(broker.http_addr())
        .await
        .expect("HTTP connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: broker\r\nConnection: close\r\n\r\n")
        .await
        .expect("request /metrics");
    let (response, _) = read_until_closed(&mut stream).await;
    let series = format!("rosetta_auth_failures_total{{protocol=\"{protocol}\"}} ");
    String::from_utf8_lossy(&response)
        .lines()
        .find_map(|l| {
            l.strip_prefix(&series)
                .map(|v| v.trim().parse().expect("a number"))
        })
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

#[tokio::test]
async fn amqp_external_logs_in_as_the_user_the_certificate_names() {
    let files = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("Rosetta test CA");
    let broker = cert_broker(files.path(), &pki, &format!("{AMQP_CERT_LOGIN}{USERS}"));
    let client = pki.client("app-1");

    let login = amqps_login(&broker, &pki, Some(&client), "EXTERNAL", b"").await;
    assert_eq!(login.outcome, Ok(()), "{login:?}");
    let offered: Vec<&str> = login.mechanisms.split(' ').collect();
    assert_eq!(offered, ["PLAIN", "AMQPLAIN", "EXTERNAL"]);
    assert!(
        broker.wait_for_log("user=app-1 vhost=\"/\" protocol=\"amqp\"", WAIT),
        "the connection is app-1's"
    );
    // A certificate does not take PLAIN away.
    let login = amqps_login(&broker, &pki, Some(&client), "PLAIN", b"\0guest\0guest").await;
    assert_eq!(login.outcome, Ok(()), "{login:?}");
}

#[tokio::test]
async fn external_without_a_certificate_or_for_an_unknown_user_is_refused_like_a_bad_password() {
    const DELAY: Duration = Duration::from_millis(300);
    let files = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("Rosetta test CA");
    let broker = cert_broker(
        files.path(),
        &pki,
        &format!(
            "{AMQP_CERT_LOGIN}{USERS}[limits]\nfailed_login_delay_ms = {}\n",
            DELAY.as_millis()
        ),
    );
    let refused = |login: &AmqpLogin, why: &str| {
        let (code, text) = login.outcome.clone().expect_err(why);
        assert_eq!(code, 403, "{why}: {text}");
        assert!(
            text.starts_with(
                "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL"
            ),
            "{why}: {text}"
        );
        assert!(
            login.answered_after >= DELAY,
            "{why}: answered after {:?}",
            login.answered_after
        );
    };

    // Over TLS without a certificate: EXTERNAL is not offered, and refused when asked for.
    let login = amqps_login(&broker, &pki, None, "EXTERNAL", b"").await;
    assert_eq!(login.mechanisms, "PLAIN AMQPLAIN");
    refused(&login, "TLS without a certificate");

    // In plain text.
    let mut plain = TcpStream::connect(broker.amqp_addr())
        .await
        .expect("connect");
    let login = amqp_login(&mut plain, "EXTERNAL", b"").await;
    assert_eq!(login.mechanisms, "PLAIN AMQPLAIN");
    refused(&login, "plain text");

    // A trusted certificate whose CN is no configured user.
    let stranger = pki.client("app-2");
    refused(
        &amqps_login(&broker, &pki, Some(&stranger), "EXTERNAL", b"").await,
        "a certificate for an unknown user",
    );
    assert_eq!(auth_failures(&broker, "amqp").await, 3.0);
}

#[tokio::test]
async fn without_amqp_ssl_cert_login_external_is_not_offered_even_with_a_certificate() {
    let files = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("Rosetta test CA");
    let broker = cert_broker(
        files.path(),
        &pki,
        &format!("{USERS}[limits]\nfailed_login_delay_ms = 0\n"),
    );
    let client = pki.client("app-1");
    let login = amqps_login(&broker, &pki, Some(&client), "EXTERNAL", b"").await;
    assert_eq!(login.mechanisms, "PLAIN AMQPLAIN");
    let (code, text) = login.outcome.expect_err("EXTERNAL is off");
    assert_eq!(code, 403, "{text}");
    assert!(
        text.starts_with(
            "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL"
        ),
        "{text}"
    );
    // The certificate does not stand in the way of a password.
    let login = amqps_login(&broker, &pki, Some(&client), "PLAIN", b"\0guest\0guest").await;
    assert_eq!(login.outcome, Ok(()), "{login:?}");
}

#[tokio::test]
async fn with_distinguished_name_the_whole_subject_is_the_user_name() {
    const USER: &str = r"CN=app-2,O=Acme\, Inc.,C=DE";
    let files = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("Rosetta test CA");
    // A user without a password (RabbitMQ's empty hash): a certificate is its only way in.
    let broker = cert_broker(
        files.path(),
        &pki,
        &format!(
            "{AMQP_CERT_LOGIN}[tls]\nssl_cert_login_from = \"distinguished_name\"\n\
             [limits]\nfailed_login_delay_ms = 0\n\
             [[users]]\nname = '{USER}'\npassword_hash = \"\"\n"
        ),
    );
    let client = pki.client_with_subject(&[
        (DnType::CountryName, "DE"),
        (DnType::OrganizationName, "Acme, Inc."),
        (DnType::CommonName, "app-2"),
    ]);
    let login = amqps_login(&broker, &pki, Some(&client), "EXTERNAL", b"").await;
    assert_eq!(login.outcome, Ok(()), "{login:?}");
    // The CN alone names no configured user in this mode.
    let only_cn = pki.client("app-2");
    let login = amqps_login(&broker, &pki, Some(&only_cn), "EXTERNAL", b"").await;
    assert!(login.outcome.is_err(), "{login:?}");
    // No password logs the user in, an empty one included.
    for password in ["", "unused"] {
        let response = format!("\0{USER}\0{password}");
        let login = amqps_login(&broker, &pki, Some(&client), "PLAIN", response.as_bytes()).await;
        assert!(login.outcome.is_err(), "password {password:?}: {login:?}");
    }
}

/// What an MQTT 3.1.1 client over TLS (rumqttc) hears in answer to its CONNECT.
async fn mqtt_login(
    broker: &Broker,
    pki: &Pki,
    identity: Option<&Issued>,
    credentials: Option<(&str, &str)>,
    client_id: &str,
) -> Result<ConnectReturnCode, String> {
    let addr = tls_addr(broker, "mqtts");
    let mut options = MqttOptions::new(client_id, "127.0.0.1", addr.port());
    if let Some((user, password)) = credentials {
        options.set_credentials(user, password);
    }
    options.set_transport(rumqttc::Transport::tls_with_config(
        TlsConfiguration::Rustls(client_config(pki, identity)),
    ));
    let (_client, mut eventloop) = AsyncClient::new(options, 10);
    tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack.code),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .expect("an answer to CONNECT")
}

#[tokio::test]
async fn mqtt_ssl_cert_login_takes_the_user_from_the_certificate_when_no_credentials_are_sent() {
    let files = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("Rosetta test CA");
    // No guest: a client without credentials has no one else to be.
    let users = "[[users]]\nname = \"app-1\"\npassword = \"app-1-secret\"\n\
                 [limits]\nfailed_login_delay_ms = 0\n";
    let broker = cert_broker(
        files.path(),
        &pki,
        &format!("[mqtt]\nssl_cert_login = true\n{users}"),
    );
    let client = pki.client("app-1");
    assert_eq!(
        mqtt_login(&broker, &pki, Some(&client), None, "cert-1").await,
        Ok(ConnectReturnCode::Success)
    );
    assert!(broker.wait_for_log("user=\"app-1\" protocol=\"mqtt\"", WAIT));
    // Credentials sent are checked as always, certificate or not.
    assert!(mqtt_login(
        &broker,
        &pki,
        Some(&client),
        Some(("app-1", "wrong")),
        "cert-2"
    )
    .await
    .is_err());
    assert_eq!(
        mqtt_login(
            &broker,
            &pki,
            Some(&client),
            Some(("app-1", "app-1-secret")),
            "cert-3"
        )
        .await,
        Ok(ConnectReturnCode::Success)
    );
    // No certificate, or one for no configured user: refused, the latter counted as a failed
    // login.
    assert!(mqtt_login(&broker, &pki, None, None, "cert-4")
        .await
        .is_err());
    let before = auth_failures(&broker, "mqtt").await;
    let stranger = pki.client("app-2");
    assert!(mqtt_login(&broker, &pki, Some(&stranger), None, "cert-5")
        .await
        .is_err());
    assert_eq!(auth_failures(&broker, "mqtt").await, before + 1.0);

    // Off (the default), the certificate names no one.
    let files = tempfile::tempdir().expect("tempdir");
    let off = cert_broker(files.path(), &pki, users);
    assert!(mqtt_login(&off, &pki, Some(&client), None, "cert-6")
        .await
        .is_err());
}

/// A STOMP 1.2 CONNECT without `login` and `passcode` over TLS with `identity`; the answer.
async fn stomp_anonymous_connect(addr: SocketAddr, pki: &Pki, identity: Option<&Issued>) -> String {
    let mut stream = tls_connect(addr, client_config(pki, identity))
        .await
        .expect("TLS connect");
    stream
        .write_all(b"CONNECT\naccept-version:1.2\nhost:/\n\n\0")
        .await
        .expect("CONNECT");
    stream.flush().await.expect("flush");
    stomp_frame(&mut stream)
        .await
        .expect("an answer to CONNECT")
}

#[tokio::test]
async fn stomp_ssl_cert_login_takes_the_user_from_the_certificate_when_no_login_is_sent() {
    let files = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("Rosetta test CA");
    let users = "[[users]]\nname = \"app-1\"\npassword = \"app-1-secret\"\n\
                 [limits]\nfailed_login_delay_ms = 0\n";
    let broker = cert_broker(
        files.path(),
        &pki,
        &format!("[stomp]\nssl_cert_login = true\n{users}"),
    );
    let addr = tls_addr(&broker, "stomps");
    let client = pki.client("app-1");
    let answer = stomp_anonymous_connect(addr, &pki, Some(&client)).await;
    assert!(answer.starts_with("CONNECTED\n"), "{answer}");
    assert!(broker.wait_for_log("user=\"app-1\" vhost=/ protocol=\"stomp\"", WAIT));
    let answer = stomp_anonymous_connect(addr, &pki, Some(&pki.client("app-2"))).await;
    assert!(answer.starts_with("ERROR\n"), "{answer}");
    let answer = stomp_anonymous_connect(addr, &pki, None).await;
    assert!(answer.starts_with("ERROR\n"), "{answer}");

    let files = tempfile::tempdir().expect("tempdir");
    let off = cert_broker(files.path(), &pki, users);
    let answer = stomp_anonymous_connect(tls_addr(&off, "stomps"), &pki, Some(&client)).await;
    assert!(answer.starts_with("ERROR\n"), "{answer}");
}

/// An address of this machine other than loopback, if it has one: the one it would use to
/// reach a documentation address (no packet is sent).
fn non_loopback_address() -> Option<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// An MQTT 3.1.1 CONNECT without user name or password, clean session.
fn mqtt_connect_without_credentials(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

/// The CONNACK's return code for a CONNECT without credentials on `stream`.
async fn mqtt_anonymous_return_code<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    client_id: &str,
) -> u8 {
    stream
        .write_all(&mqtt_connect_without_credentials(client_id))
        .await
        .expect("CONNECT");
    stream.flush().await.expect("flush");
    let mut connack = [0u8; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .expect("CONNACK");
    assert_eq!(connack[..2], [0x20, 0x02], "{connack:?}");
    connack[3]
}

#[tokio::test]
async fn from_another_address_a_client_without_credentials_needs_a_certificate_or_allow_anonymous()
{
    let Some(ip) = non_loopback_address() else {
        eprintln!("skipped: this machine has no address besides loopback");
        return;
    };
    let files = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("Rosetta test CA");
    let config = format!(
        "{USERS}[limits]\nfailed_login_delay_ms = 0\n\
         [mqtt]\nssl_cert_login = true\n[stomp]\nssl_cert_login = true\n"
    );
    let broker = cert_broker_on(files.path(), &pki, ip, &config);
    let mqtt = broker.addr("mqtt").expect("mqtt listener");
    let stomp = broker.stomp_addr();
    assert_eq!(mqtt.ip(), ip);

    // Without credentials a client is guest, whom guest's loopback rule keeps out: MQTT return
    // code 5 (not authorized), a STOMP ERROR.
    let mut plain = TcpStream::connect(mqtt).await.expect("connect");
    assert_eq!(mqtt_anonymous_return_code(&mut plain, "remote-1").await, 5);
    let mut plain = TcpStream::connect(stomp).await.expect("connect");
    plain
        .write_all(b"CONNECT\naccept-version:1.2\nhost:/\n\n\0")
        .await
        .expect("CONNECT");
    let answer = stomp_frame(&mut plain).await.expect("an answer");
    assert!(answer.starts_with("ERROR\n"), "{answer}");
    // Over TLS with no certificate, the same.
    let mut tls = tls_connect(tls_addr(&broker, "mqtts"), client_config(&pki, None))
        .await
        .expect("TLS connect");
    assert_eq!(mqtt_anonymous_return_code(&mut tls, "remote-2").await, 5);

    // A certificate names a user, who may come from anywhere.
    let client = pki.client("app-1");
    let mut tls = tls_connect(
        tls_addr(&broker, "mqtts"),
        client_config(&pki, Some(&client)),
    )
    .await
    .expect("TLS connect");
    assert_eq!(mqtt_anonymous_return_code(&mut tls, "remote-3").await, 0);
    let answer = stomp_anonymous_connect(tls_addr(&broker, "stomps"), &pki, Some(&client)).await;
    assert!(answer.starts_with("CONNECTED\n"), "{answer}");

    // `[mqtt] allow_anonymous` lets MQTT clients without credentials in from anywhere.
    let files = tempfile::tempdir().expect("tempdir");
    let anonymous = cert_broker_on(
        files.path(),
        &pki,
        ip,
        &format!("{USERS}[mqtt]\nallow_anonymous = true\n"),
    );
    let mut plain = TcpStream::connect(anonymous.addr("mqtt").expect("mqtt listener"))
        .await
        .expect("connect");
    assert_eq!(mqtt_anonymous_return_code(&mut plain, "remote-4").await, 0);
}
