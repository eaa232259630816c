//! Users, permissions and topic permissions created, changed and deleted at run time through
//! the management API: a new user logs in at once and works where its permissions say, a
//! change reaches open connections at their next operation, deleting the user closes its
//! connections, everything survives a restart, and the configuration's entries are read-only.

use crate::http::{api, api_with, request, send};
use crate::mqtt_support::{port, MQTT_ON, V5};
use crate::support::*;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use rosetta_tests::Broker;
use serde_json::json;
use std::io::{Read, Write};

/// guest with explicit permissions on `/`, so a user gets only what it is given.
const EXPLICIT: &str = "[[permissions]]\nuser = \"guest\"\nvhost = \"/\"\n\
    configure = \".*\"\nwrite = \".*\"\nread = \".*\"\n";

fn broker() -> Broker {
    Broker::builder()
        .with_http()
        .config(EXPLICIT)
        .config("[stomp]\nenabled = true\nlisten = \"127.0.0.1:0\"\n")
        .config(MQTT_ON)
        .start()
}

fn url(broker: &Broker, user: &str, password: &str, vhost: &str) -> String {
    let addr = broker.amqp_addr();
    let vhost = vhost.replace('/', "%2F");
    format!(
        "amqp://{user}:{password}@{}:{}/{vhost}",
        addr.ip(),
        addr.port()
    )
}

/// Whether an AMQP login (and `connection.open` of the virtual host) succeeds.
async fn logs_in(url: &str) -> bool {
    match lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await {
        Ok(conn) => {
            let _ = conn.close(200, "bye".into()).await;
            true
        }
        Err(_) => false,
    }
}

fn put(http: std::net::SocketAddr, path: &str, body: &str) -> u16 {
    let answer = api_with(http, "PUT", path, body);
    assert!(
        answer.status < 300,
        "PUT {path}: {} {}",
        answer.status,
        answer.body
    );
    answer.status
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// A STOMP client logged in as `user`, over a plain socket.
fn stomp_login(broker: &Broker, user: &str, password: &str) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(broker.stomp_addr()).expect("stomp connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let connect =
        format!("CONNECT\naccept-version:1.2\nhost:/\nlogin:{user}\npasscode:{password}\n\n\0");
    stream.write_all(connect.as_bytes()).expect("CONNECT");
    let first = read_frame(&mut stream);
    assert!(first.starts_with("CONNECTED"), "{first}");
    stream
}

/// One frame, or what came before the connection closed.
fn read_frame(stream: &mut std::net::TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\0") {
        match stream.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn a_runtime_user_works_where_its_permissions_say_until_it_is_deleted() {
    let broker = broker();
    let http = broker.http_addr();
    assert_eq!(
        put(
            http,
            "/api/users/carol",
            r#"{"password":"c-pass","tags":""}"#
        ),
        201
    );
    let carol = api(http, "GET", "/api/users/carol").json();
    assert_eq!(
        carol,
        json!({"name": "carol", "tags": [], "limits": {}, "configured": false})
    );
    assert_eq!(put(http, "/api/vhosts/team", ""), 201);
    run(async {
        // No permission yet: the login works, the virtual host is refused.
        assert!(!logs_in(&url(&broker, "carol", "c-pass", "team")).await);
    });
    let body = r#"{"configure":"^carol\\.","write":".*","read":".*"}"#;
    assert_eq!(put(http, "/api/permissions/team/carol", body), 201);
    assert_eq!(put(http, "/api/permissions/team/carol", body), 204);
    let listed = api(http, "GET", "/api/users/carol/permissions").json();
    assert_eq!(
        listed,
        json!([{"user": "carol", "vhost": "team", "configure": "^carol\\.", "write": ".*",
                "read": ".*", "configured": false}])
    );
    let nowhere = api_with(http, "PUT", "/api/permissions/nowhere/carol", body);
    assert_eq!(nowhere.status, 400, "{}", nowhere.body);
    let bad = r#"{"configure":"(","write":".*","read":".*"}"#;
    let invalid = api_with(http, "PUT", "/api/permissions/team/carol", bad);
    assert_eq!(invalid.status, 400, "{}", invalid.body);
    assert!(invalid.body.contains("configure"), "{}", invalid.body);

    run(async {
        assert!(
            !logs_in(&url(&broker, "carol", "c-pass", "/")).await,
            "refused elsewhere"
        );
        let client = connect_url(&url(&broker, "carol", "c-pass", "team")).await;
        let ch = client.channel().await;
        ch.queue_declare("carol.q".into(), durable(), FieldTable::default())
            .await
            .expect("carol may configure carol.*");
        assert_code(
            ch.queue_declare("other.q".into(), durable(), FieldTable::default())
                .await,
            403,
        );

        // A new password counts from the next login; open connections stay.
        assert_eq!(
            put(http, "/api/users/carol", r#"{"password":"c-pass-2"}"#),
            204
        );
        assert!(!logs_in(&url(&broker, "carol", "c-pass", "team")).await);
        let ch = client.channel().await;
        ch.queue_declare("carol.q2".into(), durable(), FieldTable::default())
            .await
            .expect("the open connection goes on");

        // Permissions changed at run time apply at the open connection's next operation.
        let none = r#"{"configure":"","write":".*","read":".*"}"#;
        assert_eq!(put(http, "/api/permissions/team/carol", none), 204);
        assert_code(
            ch.queue_declare("carol.q3".into(), durable(), FieldTable::default())
                .await,
            403,
        );

        client.close().await;

        // Deleting the user closes its connection and refuses its logins.
        let client = connect_url(&url(&broker, "carol", "c-pass-2", "team")).await;
        let deleted = api(http, "DELETE", "/api/users/carol");
        assert_eq!(deleted.status, 204, "{}", deleted.body);
        assert_eq!(client.next_error_code().await, 320, "CONNECTION_FORCED");
        assert!(!logs_in(&url(&broker, "carol", "c-pass-2", "team")).await);
    });
    assert_eq!(api(http, "GET", "/api/users/carol").status, 404);
    assert_eq!(api(http, "DELETE", "/api/users/carol").status, 404);
    assert_eq!(api(http, "GET", "/api/permissions/team/carol").status, 404);
}

#[test]
fn deleting_a_user_closes_its_mqtt_and_stomp_connections() {
    let broker = broker();
    let http = broker.http_addr();
    put(http, "/api/users/sensor", r#"{"password":"s-pass"}"#);
    put(
        http,
        "/api/permissions/%2F/sensor",
        r#"{"configure":".*","write":".*","read":".*"}"#,
    );
    let mut stomp = stomp_login(&broker, "sensor", "s-pass");
    run(async {
        let mut options = rumqttc::v5::MqttOptions::new("sensor-1", "127.0.0.1", port(&broker));
        options.set_credentials("sensor", "s-pass");
        let mut mqtt = V5::with(options).await;
        assert_eq!(api(http, "DELETE", "/api/users/sensor").status, 204);
        let closed = mqtt.closed().await;
        assert!(closed.contains("AdministrativeAction"), "{closed}");
    });
    let goodbye = read_frame(&mut stomp);
    assert!(goodbye.starts_with("ERROR"), "{goodbye}");
    assert!(goodbye.contains("user deleted"), "{goodbye}");
    assert_eq!(read_frame(&mut stomp), "", "closed after the ERROR");
}

#[test]
fn runtime_users_and_permissions_survive_a_restart() {
    let mut broker = broker();
    let http = broker.http_addr();
    put(
        http,
        "/api/users/dave",
        r#"{"password_hash":"kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR","hashing_algorithm":"rabbit_password_hashing_sha256","tags":["monitoring"]}"#,
    );
    put(
        http,
        "/api/permissions/%2F/dave",
        r#"{"configure":"^dave\\.","write":".*","read":".*"}"#,
    );
    put(
        http,
        "/api/topic-permissions/%2F/dave",
        r#"{"exchange":"amq.topic","write":"^dave\\.","read":".*"}"#,
    );
    broker.restart();
    let http = broker.http_addr();
    let dave = api(http, "GET", "/api/users/dave").json();
    assert_eq!(dave["tags"], json!(["monitoring"]), "{dave}");
    let topics = api(http, "GET", "/api/topic-permissions/%2F/dave").json();
    assert_eq!(
        topics,
        json!([{"user": "dave", "vhost": "/", "exchange": "amq.topic", "write": "^dave\\.",
                "read": ".*", "configured": false}])
    );
    run(async {
        // RabbitMQ's example hash of "test12".
        let client = connect_url(&url(&broker, "dave", "test12", "/")).await;
        let ch = client.channel().await;
        ch.queue_declare("dave.q".into(), durable(), FieldTable::default())
            .await
            .expect("dave may configure dave.*");
        assert_code(
            ch.queue_declare("x.q".into(), durable(), FieldTable::default())
                .await,
            403,
        );
        client.close().await;
    });
    // Every topic permission of the user in the virtual host goes at once.
    assert_eq!(
        api(http, "DELETE", "/api/topic-permissions/%2F/dave").status,
        204
    );
    assert_eq!(
        api(http, "GET", "/api/topic-permissions/%2F/dave").status,
        404
    );
}

#[test]
fn configuration_entries_are_read_only_through_the_api() {
    let broker = broker();
    let http = broker.http_addr();
    let users = api(http, "GET", "/api/users").json();
    assert_eq!(
        users,
        json!([{"name": "guest", "tags": ["administrator"], "limits": {}, "configured": true}])
    );
    for (method, path, body) in [
        ("PUT", "/api/users/guest", r#"{"password":"other"}"#),
        ("DELETE", "/api/users/guest", ""),
        (
            "PUT",
            "/api/permissions/%2F/guest",
            r#"{"configure":"","write":"","read":""}"#,
        ),
        ("DELETE", "/api/permissions/%2F/guest", ""),
    ] {
        let answer = api_with(http, method, path, body);
        assert_eq!(answer.status, 409, "{method} {path}: {}", answer.body);
        let answer = answer.json();
        assert_eq!(answer["error"], "configured", "{answer}");
    }
    let refused = api(http, "DELETE", "/api/users/guest").json();
    assert_eq!(
        refused["reason"],
        "user 'guest' is defined in the configuration file"
    );
    let permissions = api(http, "GET", "/api/permissions").json();
    assert_eq!(
        permissions,
        json!([{"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*",
                "configured": true}])
    );
    // guest still works.
    run(async {
        assert!(logs_in(&url(&broker, "guest", "guest", "/")).await);
    });
}

#[test]
fn users_and_permissions_follow_rabbitmqs_tag_rules_and_hash_algorithms() {
    let broker = broker();
    let http = broker.http_addr();
    put(
        http,
        "/api/users/watcher",
        r#"{"password":"w-pass","tags":"monitoring"}"#,
    );
    put(http, "/api/users/plain", r#"{"password":"p-pass"}"#);
    let watcher = Some(("watcher", "w-pass"));
    let whoami = request(http, "GET", "/api/whoami", watcher).json();
    assert_eq!(whoami, json!({"name": "watcher", "tags": ["monitoring"]}));
    let whoami = api(http, "GET", "/api/whoami").json();
    assert_eq!(whoami, json!({"name": "guest", "tags": ["administrator"]}));
    // Reading users and permissions, and changing anything, takes an administrator.
    for (method, path) in [
        ("GET", "/api/users"),
        ("GET", "/api/permissions"),
        ("GET", "/api/topic-permissions"),
        ("DELETE", "/api/users/plain"),
    ] {
        let answer = request(http, method, path, watcher);
        assert_eq!(answer.status, 401, "{method} {path}: {}", answer.body);
        assert!(
            answer.body.contains("Not administrator user"),
            "{}",
            answer.body
        );
    }
    let body = r#"{"password":"x"}"#;
    let answer = send(http, "PUT", "/api/users/x", watcher, Some(body)).expect("PUT");
    assert_eq!(answer.status, 401, "{}", answer.body);
    // A user without tags has no API at all.
    let answer = request(http, "GET", "/api/whoami", Some(("plain", "p-pass")));
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(
        answer.body.contains("Not management user"),
        "{}",
        answer.body
    );
    // Only RabbitMQ's default hashing algorithm is taken through the API.
    let sha512 = r#"{"password_hash":"x","hashing_algorithm":"rabbit_password_hashing_sha512"}"#;
    let answer = api_with(http, "PUT", "/api/users/other", sha512);
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(
        answer.body.contains("rabbit_password_hashing_sha512"),
        "{}",
        answer.body
    );
    assert_eq!(api(http, "GET", "/api/users/other").status, 404);
    // Hashes are never listed.
    let users = api(http, "GET", "/api/users").body;
    assert!(!users.contains("password_hash"), "{users}");
}
