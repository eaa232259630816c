//! rumqttc over TLS, and the order of MQTT input across TLS connections.

use rosetta_tests::mqtt3::Mqtt3;
use rosetta_tests::{input_order_timeouts, publishes_missed_by_an_early_subscriber};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_rustls::rustls::{ClientConnection, StreamOwned};

use super::*;

/// A blocking TLS connection to `addr` trusting `pki`'s authority, as client `id` logged in
/// as guest; reads fail after [`WAIT`].
fn mqtt3_tls(
    addr: SocketAddr,
    pki: &Pki,
    id: &str,
) -> Mqtt3<StreamOwned<ClientConnection, std::net::TcpStream>> {
    let tcp = std::net::TcpStream::connect(addr).expect("connect to the MQTT TLS port");
    tcp.set_nodelay(true).expect("nodelay");
    tcp.set_read_timeout(Some(WAIT)).expect("read timeout");
    let name = ServerName::try_from("localhost").expect("server name");
    let tls = ClientConnection::new(client_config(pki, None), name).expect("TLS client");
    // The handshake runs with the first write, the CONNECT.
    Mqtt3::connect(StreamOwned::new(tls, tcp), id)
}

/// The reproduction of tests/mqtt/mosquitto.rs with both clients over TLS: the broker watches
/// the TCP socket under the TLS stream, so a SUBSCRIBE is in place before a PUBLISH that
/// arrived after it, and no publish gave up waiting.
#[test]
fn over_tls_publishes_read_together_with_a_subscribe_reach_it() {
    const ROUNDS: u16 = 300;
    let setup = TlsSetup::start();
    let addr = tls_addr(&setup.broker, "mqtts");
    let mut a = mqtt3_tls(addr, &setup.pki, "tls-early-sub");
    let mut b = mqtt3_tls(addr, &setup.pki, "tls-prompt-pub");
    let missed = publishes_missed_by_an_early_subscriber(&mut a, &mut b, "tls-race", ROUNDS);
    assert_eq!(missed, 0, "missed in {missed} of {ROUNDS} rounds");
    assert_eq!(input_order_timeouts(setup.broker.http_addr()), 0.0);
}

#[tokio::test]
async fn rumqttc_publishes_and_receives_over_tls() {
    let files = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("Rosetta test CA");
    let server = pki.server("rosetta server");
    let broker = tls_broker(files.path(), &pki, &server, "");
    let addr = tls_addr(&broker, "mqtts");

    let mut options = MqttOptions::new("tls-client", "127.0.0.1", addr.port());
    options.set_credentials("guest", "guest");
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        client_config(&pki, None),
    )));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let (tx, mut rx) = unbounded_channel();
    let events = tokio::spawn(async move {
        loop {
            let event = eventloop.poll().await.map_err(|e| e.to_string());
            let failed = event.is_err();
            if tx.send(event).is_err() || failed {
                return;
            }
        }
    });
    loop {
        if let Event::Incoming(Packet::ConnAck(ack)) = next(&mut rx).await {
            assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
            break;
        }
    }
    client
        .subscribe("tls/t", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = next(&mut rx).await {
            break;
        }
    }
    client
        .publish("tls/t", QoS::AtLeastOnce, false, b"over tls".to_vec())
        .await
        .expect("publish");
    let received = loop {
        if let Event::Incoming(Packet::Publish(p)) = next(&mut rx).await {
            break p;
        }
    };
    assert_eq!(received.topic, "tls/t");
    assert_eq!(&received.payload[..], b"over tls");
    events.abort();
}

async fn next(rx: &mut UnboundedReceiver<Result<Event, String>>) -> Event {
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Some(Ok(event))) => event,
        other => panic!("MQTT over TLS: {other:?}"),
    }
}
