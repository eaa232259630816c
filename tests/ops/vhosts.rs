//! Virtual hosts created and deleted at run time through the management API: clients use them
//! at once, they survive a restart, and deleting one closes its connections and removes what
//! it held. Virtual hosts of the configuration cannot be deleted.

use crate::http::{api, api_with, request, send};
use crate::support::*;
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use rosetta_tests::Broker;
use std::io::{Read, Write};

/// A STOMP client logged in to `vhost`, over a plain socket.
fn stomp_client(broker: &Broker, vhost: &str) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(broker.stomp_addr()).expect("stomp connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let connect =
        format!("CONNECT\naccept-version:1.2\nhost:{vhost}\nlogin:guest\npasscode:guest\n\n\0");
    stream.write_all(connect.as_bytes()).expect("CONNECT");
    let first = read_until_closed(&mut stream, b"\0");
    assert!(first.starts_with("CONNECTED"), "{first}");
    stream
}

/// What the server sends until `end` has arrived, or the connection closes.
fn read_until_closed(stream: &mut std::net::TcpStream, end: &[u8]) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(end) {
        match stream.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn vhost_url(broker: &Broker, vhost: &str) -> String {
    let addr = broker.amqp_addr();
    format!("amqp://guest:guest@{}:{}/{vhost}", addr.ip(), addr.port())
}

/// Declares durable queue `name` in the client's virtual host and puts one persistent message
/// in it, confirmed.
async fn durable_queue_with_a_message(client: &Client, name: &str) {
    let channel = client.confirm_channel().await;
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
    publish_persistent(&channel, name, "kept").await;
}

#[test]
fn a_vhost_created_at_run_time_is_usable_and_deleting_it_closes_its_clients() {
    let broker = Broker::builder()
        .with_http()
        .config("[stomp]\nenabled = true\nlisten = \"127.0.0.1:0\"\n")
        .start();
    let http = broker.http_addr();
    let created = api_with(
        http,
        "PUT",
        "/api/vhosts/tenant-a",
        r#"{"description":"first tenant","tags":"eu,prod"}"#,
    );
    assert_eq!(created.status, 201, "{}", created.body);
    // Again: nothing new, and the description stays.
    assert_eq!(api(http, "PUT", "/api/vhosts/tenant-a").status, 204);
    let listed = api(http, "GET", "/api/vhosts").json();
    let names: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["/", "tenant-a"], "{listed}");
    let one = api(http, "GET", "/api/vhosts/tenant-a").json();
    assert_eq!(one["description"], "first tenant", "{one}");
    assert_eq!(one["tags"], serde_json::json!(["eu", "prod"]), "{one}");
    assert_eq!(one["configured"], false, "{one}");

    run(async {
        let client = connect_url(&vhost_url(&broker, "tenant-a")).await;
        // A new virtual host has the predeclared exchanges.
        let channel = client.channel().await;
        channel
            .exchange_declare(
                "amq.topic".into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("amq.topic exists in the new virtual host");
        durable_queue_with_a_message(&client, "orders").await;
        let queue = api(http, "GET", "/api/queues/tenant-a/orders").json();
        assert_eq!(queue["messages"], 1, "{queue}");
        let mut stomp = stomp_client(&broker, "tenant-a");

        let deleted = api(http, "DELETE", "/api/vhosts/tenant-a");
        assert_eq!(deleted.status, 204, "{}", deleted.body);
        assert_eq!(client.next_error_code().await, 320, "CONNECTION_FORCED");
        // STOMP hears an ERROR, then the connection closes.
        let goodbye = read_until_closed(&mut stomp, b"\0");
        assert!(goodbye.starts_with("ERROR"), "{goodbye}");
        assert_eq!(
            read_until_closed(&mut stomp, b"\0"),
            "",
            "closed after the ERROR"
        );
    });
    assert_eq!(api(http, "GET", "/api/vhosts/tenant-a").status, 404);
    assert_eq!(api(http, "GET", "/api/queues/tenant-a").status, 404);
    assert_eq!(api(http, "DELETE", "/api/vhosts/tenant-a").status, 404);
    run(async {
        let refused = lapin::Connection::connect(
            &vhost_url(&broker, "tenant-a"),
            lapin::ConnectionProperties::default(),
        )
        .await;
        assert!(refused.is_err(), "a deleted virtual host refuses logins");
    });
}

#[test]
fn a_configured_vhost_cannot_be_deleted_and_only_administrators_manage_vhosts() {
    let broker = Broker::builder()
        .with_http()
        .config(
            "[limits]\nfailed_login_delay_ms = 0\n\n\
             [[users]]\nname = \"guest\"\npassword = \"guest\"\ntags = [\"administrator\"]\n\n\
             [[users]]\nname = \"watch\"\npassword = \"pw\"\ntags = [\"monitoring\"]\n",
        )
        .start();
    let http = broker.http_addr();
    let refused = api(http, "DELETE", "/api/vhosts/%2F");
    assert_eq!(refused.status, 409, "{}", refused.body);
    let reason = refused.json()["reason"].as_str().unwrap_or("").to_owned();
    assert!(reason.contains("configuration"), "{reason}");
    assert_eq!(
        api(http, "GET", "/api/vhosts/%2F").json()["configured"],
        true
    );

    let watch = Some(("watch", "pw"));
    assert_eq!(request(http, "GET", "/api/vhosts", watch).status, 200);
    let create = request(http, "PUT", "/api/vhosts/other", watch);
    assert_eq!(create.status, 401, "{}", create.body);
    assert_eq!(create.json()["reason"], "Not administrator user");
    assert_eq!(api(http, "GET", "/api/vhosts/other").status, 404);
    // Nor do they import definitions, whose body is then not even read.
    let file = r#"{"vhosts": [{"name": "other"}]}"#;
    let import = send(http, "POST", "/api/definitions", watch, Some(file)).expect("POST");
    assert_eq!(import.status, 401, "{}", import.body);
    let anonymous = send(http, "POST", "/api/definitions", None, Some(file)).expect("POST");
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(api(http, "GET", "/api/vhosts/other").status, 404);
    assert_eq!(request(http, "GET", "/api/definitions", watch).status, 401);
}

#[test]
fn a_runtime_vhost_and_its_messages_survive_a_restart_until_deleted() {
    let mut broker = Broker::builder().with_http().start();
    let created = api_with(
        broker.http_addr(),
        "PUT",
        "/api/vhosts/kept",
        r#"{"description":"survives"}"#,
    );
    assert_eq!(created.status, 201, "{}", created.body);
    // An empty one too: its record alone brings it back.
    assert_eq!(
        api(broker.http_addr(), "PUT", "/api/vhosts/empty").status,
        201
    );
    run(async {
        let client = connect_url(&vhost_url(&broker, "kept")).await;
        durable_queue_with_a_message(&client, "backlog").await;
        client.close().await;
    });

    broker.restart();
    let http = broker.http_addr();
    let kept = api(http, "GET", "/api/vhosts/kept");
    assert_eq!(kept.status, 200, "{}", kept.body);
    assert_eq!(kept.json()["description"], "survives");
    assert_eq!(api(http, "GET", "/api/vhosts/empty").status, 200);
    let queue = api(http, "GET", "/api/queues/kept/backlog").json();
    assert_eq!(queue["messages"], 1, "{queue}");
    run(async {
        let client = connect_url(&vhost_url(&broker, "kept")).await;
        let channel = client.channel().await;
        assert_eq!(drain(&channel, "backlog").await, ["kept"]);
        publish_persistent(&client.confirm_channel().await, "backlog", "again").await;
        client.close().await;
    });

    assert_eq!(api(http, "DELETE", "/api/vhosts/kept").status, 204);
    broker.restart();
    let http = broker.http_addr();
    assert_eq!(api(http, "GET", "/api/vhosts/kept").status, 404);
    assert_eq!(api(http, "GET", "/api/queues/kept/backlog").status, 404);
    // Created again, it starts empty: nothing of the old one came back.
    assert_eq!(api(http, "PUT", "/api/vhosts/kept").status, 201);
    assert_eq!(api(http, "GET", "/api/queues/kept/backlog").status, 404);
}

#[test]
fn with_configured_permissions_a_new_vhost_is_its_creators_across_restarts() {
    let mut broker = Broker::builder()
        .with_http()
        .config(
            "[limits]\nfailed_login_delay_ms = 0\n\n\
             [[users]]\nname = \"guest\"\npassword = \"guest\"\ntags = [\"administrator\"]\n\n\
             [[users]]\nname = \"app\"\npassword = \"pw\"\n\n\
             [[permissions]]\nuser = \"guest\"\nvhost = \"/\"\nconfigure = \".*\"\nwrite = \".*\"\nread = \".*\"\n\n\
             [[permissions]]\nuser = \"app\"\nvhost = \"/\"\nconfigure = \".*\"\nwrite = \".*\"\nread = \".*\"\n",
        )
        .start();
    assert_eq!(
        api(broker.http_addr(), "PUT", "/api/vhosts/private").status,
        201
    );
    let logs_in = |broker: &Broker, user: &str, password: &str| {
        let addr = broker.amqp_addr();
        let url = format!(
            "amqp://{user}:{password}@{}:{}/private",
            addr.ip(),
            addr.port()
        );
        let mut ok = false;
        run(async {
            ok = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                .await
                .is_ok();
        });
        ok
    };
    assert!(logs_in(&broker, "guest", "guest"), "the creator may use it");
    assert!(
        !logs_in(&broker, "app", "pw"),
        "nobody else has permissions on it"
    );
    broker.restart();
    assert!(
        logs_in(&broker, "guest", "guest"),
        "still the creator's after a restart"
    );
    assert!(!logs_in(&broker, "app", "pw"));
}
