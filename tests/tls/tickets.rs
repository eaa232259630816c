//! What a TLS 1.3 client reads between its handshake and the broker's first answer: nothing.

use super::*;

/// TLS 1.3 lets a server send session tickets once the client's handshake is done. The broker
/// sends none: a client that writes its first frame while another of its threads reads the
/// socket (stomp.py, on Python's ssl module) can lose that frame when OpenSSL reads a ticket
/// during the write, and then waits for an answer until the broker's handshake timeout.
#[tokio::test]
async fn a_tls_1_3_client_reads_no_session_ticket_before_the_answer_to_its_first_frame() {
    let TlsSetup {
        _files,
        broker,
        pki,
        ..
    } = TlsSetup::start();
    let config = client_config_with(&pki, None, &[&rustls::version::TLS13]);

    let mut stomp = tls_connect(tls_addr(&broker, "stomps"), config.clone())
        .await
        .expect("STOMP over TLS 1.3");
    let connected = stomp_connect(&mut stomp).await.expect("STOMP answer");
    assert!(connected.starts_with("CONNECTED"), "{connected}");
    // Tickets would have come before CONNECTED, on the same ordered stream, so they would be
    // counted by now.
    let (_, connection) = stomp.get_ref();
    assert_eq!(
        connection.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(connection.tls13_tickets_received(), 0);

    // Every TLS listener shares the configuration: AMQP's too.
    let mut amqp = tls_connect(tls_addr(&broker, "amqps"), config)
        .await
        .expect("AMQP over TLS 1.3");
    amqp_start(&mut amqp)
        .await
        .expect("connection.start over TLS 1.3");
    assert_eq!(amqp.get_ref().1.tls13_tickets_received(), 0);
}
