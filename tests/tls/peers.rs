//! Client certificates: `verify_peer` and `fail_if_no_peer_cert`.

use super::*;

/// Whether an AMQP client with `identity` gets as far as `connection.start`. With TLS 1.3 the
/// client finishes its handshake before the server has judged its certificate, so a refusal
/// may only show at the first read.
async fn admitted(broker: &Broker, pki: &Pki, identity: Option<&Issued>) -> bool {
    let Ok(mut stream) = tls_connect(tls_addr(broker, "amqps"), client_config(pki, identity)).await
    else {
        return false;
    };
    amqp_start(&mut stream).await.is_ok()
}

#[tokio::test]
async fn fail_if_no_peer_cert_admits_only_clients_with_a_certificate_from_ca_file() {
    let files = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("Rosetta test CA");
    let server = pki.server("rosetta server");
    let broker = tls_broker(
        files.path(),
        &pki,
        &server,
        "verify_peer = true\nfail_if_no_peer_cert = true\n",
    );
    let client = pki.client("app-1");
    assert!(
        admitted(&broker, &pki, Some(&client)).await,
        "a client with a trusted certificate"
    );
    assert!(
        !admitted(&broker, &pki, None).await,
        "a client without a certificate"
    );
    // Signed by another authority: the client trusts the server, the server not the client.
    let stranger = Pki::new("Another CA").client("intruder");
    assert!(
        !admitted(&broker, &pki, Some(&stranger)).await,
        "a client with an untrusted certificate"
    );
    // The broker goes on.
    assert!(admitted(&broker, &pki, Some(&client)).await);
}

#[tokio::test]
async fn verify_peer_alone_admits_clients_without_a_certificate_but_checks_the_ones_given() {
    let files = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("Rosetta test CA");
    let server = pki.server("rosetta server");
    let broker = tls_broker(files.path(), &pki, &server, "verify_peer = true\n");
    assert!(
        admitted(&broker, &pki, None).await,
        "a client without a certificate"
    );
    assert!(admitted(&broker, &pki, Some(&pki.client("app-1"))).await);
    let stranger = Pki::new("Another CA").client("intruder");
    assert!(
        !admitted(&broker, &pki, Some(&stranger)).await,
        "a client with an untrusted certificate"
    );
}
