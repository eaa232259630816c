//! MQTT and STOMP over secure WebSocket (`ws_tls_listen`): the `[tls]` certificate, then the
//! HTTP upgrade, then the protocol.

use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::*;

/// A broker with MQTT and STOMP on, each with a secure WebSocket listener.
fn wss_broker(files: &Path, pki: &Pki, server: &Issued) -> Broker {
    let mut config = tls_section(files, pki, server, "");
    for section in ["mqtt", "stomp"] {
        config.push_str(&format!(
            "[{section}]\nenabled = true\nlisten = \"127.0.0.1:0\"\nws_tls_listen = \"127.0.0.1:0\"\n"
        ));
    }
    BrokerBuilder::new().config(&config).start()
}

#[tokio::test]
async fn stomp_over_secure_websocket_presents_the_certificate_and_logs_in() {
    let files = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("Rosetta test CA");
    let server = pki.server("rosetta wss");
    let broker = wss_broker(files.path(), &pki, &server);
    let tls = tls_connect(tls_addr(&broker, "stomp-wss"), client_config(&pki, None))
        .await
        .expect("TLS handshake");
    assert_eq!(server_certificate(&tls), server.der);
    let mut request = "wss://localhost/ws".into_client_request().expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v12.stomp".parse().expect("header"),
    );
    let (mut ws, response) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("WebSocket handshake");
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.as_bytes()),
        Some(&b"v12.stomp"[..])
    );
    ws.send(Message::text(
        "CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:0,0\n\n\0",
    ))
    .await
    .expect("send CONNECT");
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(Message::Text(frame)))) => {
            assert!(frame.starts_with("CONNECTED\n"), "{frame}")
        }
        other => panic!("expected CONNECTED in a text message, got {other:?}"),
    }
}

#[tokio::test]
async fn rumqttc_publishes_and_receives_over_secure_websocket() {
    let files = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("Rosetta test CA");
    let server = pki.server("rosetta wss");
    let broker = wss_broker(files.path(), &pki, &server);
    let port = tls_addr(&broker, "mqtt-wss").port();

    let mut options = MqttOptions::new("wss-client", format!("wss://localhost:{port}/ws"), port);
    options.set_credentials("guest", "guest");
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(Transport::wss_with_config(TlsConfiguration::Rustls(
        client_config(&pki, None),
    )));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let events = tokio::spawn(async move {
        loop {
            let event = eventloop.poll().await.map_err(|e| e.to_string());
            let failed = event.is_err();
            if tx.send(event).is_err() || failed {
                return;
            }
        }
    });
    let mut next = async || match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Some(Ok(event))) => event,
        other => panic!("no MQTT event over wss: {other:?}"),
    };
    loop {
        if let Event::Incoming(Packet::ConnAck(ack)) = next().await {
            assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
            break;
        }
    }
    client
        .subscribe("wss/t", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = next().await {
            break;
        }
    }
    client
        .publish("wss/t", QoS::AtLeastOnce, false, b"over wss".to_vec())
        .await
        .expect("publish");
    let received = loop {
        if let Event::Incoming(Packet::Publish(p)) = next().await {
            break p;
        }
    };
    assert_eq!(received.topic, "wss/t");
    assert_eq!(&received.payload[..], b"over wss");
    events.abort();
}
