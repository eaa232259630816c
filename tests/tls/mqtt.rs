//! rumqttc over TLS.

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::*;

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
