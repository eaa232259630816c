//! SIGHUP reloads the certificate files: new handshakes get the new certificate, established
//! connections stay, and a broken file leaves the previous certificate in force.

use super::*;

#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let files = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("Rosetta test CA");
    let first = pki.server("rosetta server 1");
    let broker = tls_broker(files.path(), &pki, &first, "");
    let config = client_config(&pki, None);
    let stomps = tls_addr(&broker, "stomps");

    let mut before = tls_connect(stomps, config.clone()).await.expect("connect");
    assert_eq!(server_certificate(&before), first.der);
    let connected = stomp_connect(&mut before).await.expect("STOMP answer");
    assert!(connected.starts_with("CONNECTED"), "{connected}");

    let second = pki.server("rosetta server 2");
    second.write(
        &files.path().join("server.pem"),
        &files.path().join("server.key"),
    );
    broker.hangup();
    assert!(
        broker.wait_for_log("TLS certificates reloaded", WAIT),
        "no reload logged"
    );

    let mut after = tls_connect(stomps, config.clone())
        .await
        .expect("connect after reload");
    assert_eq!(
        server_certificate(&after),
        second.der,
        "a new connection sees the new certificate"
    );
    let connected = stomp_connect(&mut after).await.expect("STOMP answer");
    assert!(connected.starts_with("CONNECTED"), "{connected}");
    // The connection made before the reload still works.
    let receipt = stomp_send(&mut before, "still-here")
        .await
        .expect("old connection");
    assert!(receipt.starts_with("RECEIPT"), "{receipt}");

    // A broken certificate file: the reload fails and the second certificate stays in use.
    std::fs::write(files.path().join("server.pem"), "not a certificate\n").expect("write");
    broker.hangup();
    assert!(
        broker.wait_for_log("TLS reload failed", WAIT),
        "no failure logged"
    );
    let mut later = tls_connect(stomps, config)
        .await
        .expect("connect after a failed reload");
    assert_eq!(server_certificate(&later), second.der);
    stomp_logs_in(&mut later).await;
    let receipt = stomp_send(&mut before, "still-here-2")
        .await
        .expect("old connection");
    assert!(receipt.starts_with("RECEIPT"), "{receipt}");
}

async fn stomp_logs_in(stream: &mut TlsStream<TcpStream>) {
    let connected = stomp_connect(stream).await.expect("STOMP answer");
    assert!(connected.starts_with("CONNECTED"), "{connected}");
}
