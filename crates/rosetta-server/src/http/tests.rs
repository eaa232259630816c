//! The management API over a real loopback socket, against a store whose durable point the
//! test moves: a reply that confirms a durable change waits for the disk, without a blocking
//! fsync (the store panics on one).

use std::sync::Arc;
use std::time::Duration;

use rosetta_core::testing::ManualDurability;
use rosetta_core::QueueDeclare;
use rosetta_store::SledStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::serve_connection;
use crate::state::ServerState;

/// Long enough for a reply that does not wait to arrive, short enough to keep the test quick.
const SETTLE: Duration = Duration::from_millis(300);
const DEADLINE: Duration = Duration::from_secs(10);

/// A broker with the durable queue `q` already on disk.
fn broker_with_durable_queue(data: &std::path::Path) -> (Arc<ManualDurability>, Arc<ServerState>) {
    let store = ManualDurability::new(Arc::new(SledStore::open(data).expect("store")));
    let state = ServerState::for_tests(store.clone());
    let declare = QueueDeclare {
        name: "q".into(),
        durable: true,
        ..QueueDeclare::default()
    };
    let vhost = state.broker.vhost("/").expect("vhost");
    vhost.declare_queue(declare, 1).expect("declare q");
    store.commit();
    (store, state)
}

/// Serves one HTTP connection from `state` and sends `DELETE /api/queues/%2F/q` on it as guest.
async fn delete_q(state: Arc<ServerState>) -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.expect("accept");
        let (_stop_tx, stop) = watch::channel(false);
        serve_connection(stream, peer, state, stop).await;
    });
    let mut client = TcpStream::connect(addr).await.expect("connect");
    // guest:guest in base64.
    let request = "DELETE /api/queues/%2F/q HTTP/1.1\r\nHost: localhost\r\n\
                   Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n";
    client
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    client
}

async fn status_line(client: &mut TcpStream) -> String {
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, client.read_to_end(&mut response))
        .await
        .expect("a response within the deadline")
        .expect("read response");
    let response = String::from_utf8_lossy(&response);
    response.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn deleting_a_durable_queue_is_answered_only_once_the_deletion_is_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, state) = broker_with_durable_queue(dir.path());
    let vhost = state.broker.vhost("/").expect("vhost");

    let mut client = delete_q(state.clone()).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while vhost.queue("q").is_some() {
        assert!(tokio::time::Instant::now() < deadline, "q deleted in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(SETTLE, client.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "the reply must wait until the deletion is durable"
    );

    store.commit();
    assert_eq!(status_line(&mut client).await, "HTTP/1.1 204 No Content");
}

#[tokio::test]
async fn a_queue_deletion_the_store_cannot_write_is_answered_with_a_server_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, state) = broker_with_durable_queue(dir.path());
    store.fail_writes(true);

    let mut client = delete_q(state).await;
    let status = status_line(&mut client).await;
    assert!(
        status.starts_with("HTTP/1.1 5"),
        "a failed write must not be answered as done: {status}"
    );
}
