//! `rosetta import-definitions`: a RabbitMQ export imported into a stopped broker's store before
//! its first start, users and permissions included; a running broker's store is refused with a
//! clear reason.

use std::path::{Path, PathBuf};
use std::process::Output;

use rosetta_tests::Broker;

use crate::{rosetta, text};

/// The RabbitMQ 3.13 export the management API tests use too.
fn rabbitmq_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/rabbitmq-3.13-definitions.json")
}

fn import(dir: &Path, config: &Path) -> Output {
    rosetta(
        dir,
        &[
            "import-definitions",
            "--config",
            &config.display().to_string(),
            &rabbitmq_file().display().to_string(),
        ],
    )
}

#[test]
fn a_rabbitmq_export_is_imported_before_the_first_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("broker.toml");
    let storage = format!(
        "[storage]\npath = {:?}\n\n[[vhosts]]\nname = \"/\"\n",
        data.display().to_string()
    );
    std::fs::write(&config, &storage).expect("write config");

    let out = import(dir.path(), &config);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(
            "1 virtual host(s), 1 exchange(s), 1 queue(s), 1 binding(s), 2 user(s), 3 \
             permission(s), 1 topic permission(s) created"
        ),
        "{stdout}"
    );

    // Twice is the same as once.
    let again = import(dir.path(), &config);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains(
            "0 virtual host(s), 0 exchange(s), 0 queue(s), 0 binding(s), 0 user(s), 0 \
             permission(s), 0 topic permission(s) created"
        ),
        "{}",
        text(&again.stdout)
    );

    // The broker starts with what was imported, users and permissions included, and
    // RabbitMQ's user logs in with its password to its virtual host.
    let broker = Broker::builder()
        .with_http()
        .config(&storage)
        .config("[[users]]\nname = \"guest\"\npassword = \"guest\"\ntags = [\"administrator\"]\n")
        .start();
    let queue = api_get(&broker, "/api/queues/shop/orders.eu");
    assert!(queue.contains("\"x-message-ttl\":60000"), "{queue}");
    let users = api_get(&broker, "/api/users");
    assert!(users.contains("\"name\":\"orders-app\""), "{users}");
    assert!(!users.contains("password_hash"), "{users}");
    let addr = broker.amqp_addr();
    let url = format!(
        "amqp://orders-app:s3cret@{}:{}/shop",
        addr.ip(),
        addr.port()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .expect("orders-app logs in to shop");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .queue_declare(
                "orders.eu".into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .expect("the imported queue is there");
        conn.close(200, "bye".into()).await.expect("close");
    });

    // While it runs, the store is its own: the command says so and changes nothing.
    let refused = import(dir.path(), &config);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stdout));
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("stop it first"), "{stderr}");
    assert!(stderr.contains("POST /api/definitions"), "{stderr}");
}

/// `GET path` on the broker's management API as guest; the body, after checking for 200.
fn api_get(broker: &Broker, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(broker.http_addr()).expect("connect");
    // guest:guest
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: rosetta\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}
