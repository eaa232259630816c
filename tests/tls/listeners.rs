//! Every protocol over TLS, both TLS versions, and what a plain-text client on a TLS port gets.

use super::*;

/// The plain AMQP listener answers with `connection.start`.
async fn plain_amqp_starts(broker: &Broker) {
    let mut plain = TcpStream::connect(broker.amqp_addr())
        .await
        .expect("plain AMQP");
    amqp_start(&mut plain)
        .await
        .expect("connection.start in plain text");
}

#[tokio::test]
async fn amqp_stomp_and_http_answer_over_tls_with_the_configured_certificate() {
    let TlsSetup {
        _files,
        broker,
        pki,
        server,
    } = TlsSetup::start();
    let config = client_config(&pki, None);

    let mut amqp = tls_connect(tls_addr(&broker, "amqps"), config.clone())
        .await
        .expect("AMQP over TLS");
    assert_eq!(server_certificate(&amqp), server.der);
    amqp_start(&mut amqp)
        .await
        .expect("connection.start over TLS");

    let mut stomp = tls_connect(tls_addr(&broker, "stomps"), config.clone())
        .await
        .expect("STOMP over TLS");
    let connected = stomp_connect(&mut stomp).await.expect("STOMP answer");
    assert!(connected.starts_with("CONNECTED"), "{connected}");
    let receipt = stomp_send(&mut stomp, "r1").await.expect("STOMP receipt");
    assert!(receipt.starts_with("RECEIPT"), "{receipt}");

    let mut http = tls_connect(tls_addr(&broker, "https"), config)
        .await
        .expect("HTTP over TLS");
    http.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    http.flush().await.expect("flush");
    let (answer, _) = read_until_closed(&mut http).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The plain listeners are still there beside the TLS ones.
    plain_amqp_starts(&broker).await;
}

#[tokio::test]
async fn tls_1_2_and_tls_1_3_clients_are_both_served() {
    let TlsSetup {
        _files,
        broker,
        pki,
        ..
    } = TlsSetup::start();
    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let config = client_config_with(&pki, None, &[version]);
        let mut stream = tls_connect(tls_addr(&broker, "amqps"), config)
            .await
            .expect("TLS connect");
        assert_eq!(stream.get_ref().1.protocol_version(), Some(expected));
        amqp_start(&mut stream).await.expect("connection.start");
    }
}

#[tokio::test]
async fn a_plain_text_client_on_a_tls_port_is_closed_and_the_broker_goes_on() {
    let TlsSetup {
        _files,
        broker,
        pki,
        ..
    } = TlsSetup::start();

    for protocol in ["amqps", "mqtts", "stomps", "https"] {
        let mut plain = TcpStream::connect(tls_addr(&broker, protocol))
            .await
            .expect("TCP connect");
        let greeting: &[u8] = match protocol {
            "amqps" => b"AMQP\x00\x00\x09\x01",
            "stomps" => b"CONNECT\naccept-version:1.2\n\n\0",
            "https" => b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
            // MQTT 3.1.1 CONNECT, client id "x".
            _ => b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01x",
        };
        plain.write_all(greeting).await.expect("send");
        let (got, closed) = read_until_closed(&mut plain).await;
        assert!(
            closed,
            "{protocol}: a plain-text client was not disconnected"
        );
        // At most a TLS alert record (content type 21), never a protocol answer.
        assert!(
            got.is_empty() || got[0] == 21,
            "{protocol}: a plain-text client got {got:?}"
        );
    }
    assert!(broker.wait_for_log("TLS handshake failed", WAIT));

    // The broker still serves TLS and plain-text clients.
    let mut tls = tls_connect(tls_addr(&broker, "amqps"), client_config(&pki, None))
        .await
        .expect("TLS connect after the plain-text clients");
    amqp_start(&mut tls).await.expect("connection.start");
    plain_amqp_starts(&broker).await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_cannot_connect() {
    let TlsSetup { _files, broker, .. } = TlsSetup::start();
    let stranger = Pki::new("Another CA");
    let refused = tls_connect(tls_addr(&broker, "amqps"), client_config(&stranger, None)).await;
    assert!(refused.is_err(), "the handshake should fail");
}
