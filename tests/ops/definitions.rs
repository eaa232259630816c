//! RabbitMQ definitions through the management API: an export imported into a fresh broker
//! exports the same again (users and permissions included), importing twice changes nothing,
//! and a file as RabbitMQ 3.13 exports it creates its topology and users, who log in with
//! their RabbitMQ passwords.

use crate::http::{api, api_with};
use crate::support::*;
use lapin::options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;
use rosetta_tests::Broker;
use serde_json::{json, Value};

/// The definitions file written by hand as RabbitMQ 3.13 exports it.
fn rabbitmq_3_13_file() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/rabbitmq-3.13-definitions.json");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn vhost_url(broker: &Broker, vhost: &str) -> String {
    let addr = broker.amqp_addr();
    format!("amqp://guest:guest@{}:{}/{vhost}", addr.ip(), addr.port())
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// Builds a topology in virtual host `shop`, with things a definitions file must leave out
/// beside it (transient, exclusive and server-named queues, a transient exchange).
async fn build_topology(broker: &Broker) {
    let client = connect_url(&vhost_url(broker, "shop")).await;
    let ch = client.channel().await;
    ch.exchange_declare(
        "orders".into(),
        ExchangeKind::Topic,
        durable_exchange(),
        FieldTable::default(),
    )
    .await
    .expect("orders");
    ch.exchange_declare(
        "audit".into(),
        ExchangeKind::Fanout,
        durable_exchange(),
        FieldTable::default(),
    )
    .await
    .expect("audit");
    ch.exchange_declare(
        "scratch".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("scratch");
    ch.exchange_bind(
        "audit".into(),
        "orders".into(),
        "#".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange binding");
    let ttl = table(&[
        ("x-message-ttl", long(60_000)),
        ("x-dead-letter-exchange", long_str("audit")),
    ]);
    ch.queue_declare("orders.eu".into(), durable_queue(), ttl)
        .await
        .expect("orders.eu");
    bind_queue(&ch, "orders.eu", "orders", "eu.#").await;
    ch.queue_declare("audit.log".into(), durable_queue(), FieldTable::default())
        .await
        .expect("audit.log");
    let mut args = FieldTable::default();
    args.insert("x-match".into(), AMQPValue::LongString("all".into()));
    args.insert("kind".into(), AMQPValue::LongString("refund".into()));
    ch.queue_bind(
        "audit.log".into(),
        "amq.headers".into(),
        "".into(),
        Default::default(),
        args,
    )
    .await
    .expect("headers binding");
    bind_queue(&ch, "audit.log", "audit", "").await;
    // None of these belongs in a definitions file.
    ch.queue_declare(
        "transient".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("transient");
    ch.queue_declare(
        "mine".into(),
        QueueDeclareOptions {
            durable: true,
            exclusive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exclusive");
    ch.queue_declare("".into(), durable_queue(), FieldTable::default())
        .await
        .expect("server-named");
    bind_queue(&ch, "transient", "orders", "#").await;
    client.close().await;
}

/// guest with a fixed hash of its password, so that two brokers export the same user (a
/// plain-text `password` gets a fresh salt at each start).
const GUEST_WITH_A_HASH: &str = "[[users]]\nname = \"guest\"\n\
    password_hash = \"Gis8TZlF7y4yOwjl1oCenKChI6VXRAu88lwEipyBEeNWFA2E\"\n\
    tags = [\"administrator\"]\n";

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("array")
        .iter()
        .filter_map(|item| item["name"].as_str())
        .collect()
}

#[test]
fn definitions_round_trip_into_a_fresh_broker_and_a_second_import_changes_nothing() {
    let source = Broker::builder()
        .with_http()
        .config(GUEST_WITH_A_HASH)
        .start();
    let http = source.http_addr();
    assert_eq!(
        api_with(
            http,
            "PUT",
            "/api/vhosts/shop",
            r#"{"description":"the shop"}"#
        )
        .status,
        201
    );
    run(build_topology(&source));
    // A run-time user with a permission and a topic permission.
    let put = |path: &str, body: &str| {
        let answer = api_with(http, "PUT", path, body);
        assert_eq!(answer.status, 201, "{path}: {}", answer.body);
    };
    put(
        "/api/users/app",
        r#"{"password":"app-pass","tags":"monitoring,policymaker"}"#,
    );
    put(
        "/api/permissions/shop/app",
        r#"{"configure":"^app\\.","write":".*","read":".*"}"#,
    );
    put(
        "/api/topic-permissions/shop/app",
        r#"{"exchange":"orders","write":"^eu\\.","read":".*"}"#,
    );
    let exported = api(http, "GET", "/api/definitions");
    assert_eq!(exported.status, 200, "{}", exported.body);
    let exported = exported.json();
    assert_eq!(exported["rabbit_version"], exported["rabbitmq_version"]);
    assert!(exported["rabbit_version"].is_string(), "{exported}");
    assert_eq!(exported["parameters"], json!([]));
    // Every user with its hash, RabbitMQ's way; guest's from broker.toml too.
    assert_eq!(names(&exported["users"]), ["app", "guest"], "{exported}");
    let app = &exported["users"][0];
    assert_eq!(app["hashing_algorithm"], "rabbit_password_hashing_sha256");
    assert_eq!(app["tags"], json!(["monitoring", "policymaker"]), "{app}");
    assert_eq!(
        app["password_hash"].as_str().map(str::len),
        Some(48),
        "{app}"
    );
    assert!(
        exported["permissions"]
            .as_array()
            .expect("permissions")
            .contains(
                &json!({"user": "app", "vhost": "shop", "configure": "^app\\.",
                              "write": ".*", "read": ".*"})
            ),
        "{exported}"
    );
    assert_eq!(
        exported["topic_permissions"],
        json!([{"user": "app", "vhost": "shop", "exchange": "orders", "write": "^eu\\.",
                "read": ".*"}])
    );
    assert_eq!(names(&exported["vhosts"]), ["/", "shop"], "{exported}");
    assert_eq!(exported["vhosts"][1]["description"], "the shop");
    // Durable topology only; amq.* exchanges exist everywhere and are left out.
    assert_eq!(
        names(&exported["queues"]),
        ["audit.log", "orders.eu"],
        "{exported}"
    );
    assert_eq!(
        names(&exported["exchanges"]),
        ["audit", "orders"],
        "{exported}"
    );
    assert_eq!(
        exported["queues"][1],
        json!({
            "name": "orders.eu", "vhost": "shop", "durable": true, "auto_delete": false,
            "arguments": {"x-message-ttl": 60000, "x-dead-letter-exchange": "audit"},
        })
    );
    assert_eq!(exported["exchanges"][1]["type"], "topic");
    let bindings = exported["bindings"].as_array().expect("bindings");
    assert_eq!(bindings.len(), 4, "{exported}");
    assert!(bindings.contains(&json!({
        "source": "orders", "vhost": "shop", "destination": "orders.eu",
        "destination_type": "queue", "routing_key": "eu.#", "arguments": {},
    })));
    assert!(bindings.contains(&json!({
        "source": "orders", "vhost": "shop", "destination": "audit",
        "destination_type": "exchange", "routing_key": "#", "arguments": {},
    })));
    assert!(bindings.contains(&json!({
        "source": "amq.headers", "vhost": "shop", "destination": "audit.log",
        "destination_type": "queue", "routing_key": "",
        "arguments": {"x-match": "all", "kind": "refund"},
    })));

    let target = Broker::builder()
        .with_http()
        .config(GUEST_WITH_A_HASH)
        .start();
    let http = target.http_addr();
    let imported = api_with(http, "POST", "/api/definitions", &exported.to_string());
    assert_eq!(imported.status, 200, "{}", imported.body);
    assert_eq!(
        imported.json()["created"],
        json!({"vhosts": 1, "queues": 2, "exchanges": 2, "bindings": 4, "users": 1,
               "permissions": 1, "topic_permissions": 1})
    );
    assert_eq!(api(http, "GET", "/api/definitions").json(), exported);

    let again = api_with(http, "POST", "/api/definitions", &exported.to_string());
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(
        again.json(),
        json!({"created": {"vhosts": 0, "queues": 0, "exchanges": 0, "bindings": 0, "users": 0,
                           "permissions": 0, "topic_permissions": 0}, "skipped": []})
    );
    assert_eq!(api(http, "GET", "/api/definitions").json(), exported);
    // The imported user logs in with its password and works where its permission says.
    run(async {
        let addr = target.amqp_addr();
        let url = format!("amqp://app:app-pass@{}:{}/shop", addr.ip(), addr.port());
        let client = connect_url(&url).await;
        let ch = client.channel().await;
        ch.queue_declare("app.jobs".into(), durable_queue(), FieldTable::default())
            .await
            .expect("app may configure app.*");
        client.close().await;
    });

    // One virtual host's definitions name none, and go into another virtual host.
    let shop = api(source.http_addr(), "GET", "/api/definitions/shop").json();
    assert!(
        shop.get("users").is_none() && shop.get("vhosts").is_none(),
        "{shop}"
    );
    assert!(shop["queues"][0].get("vhost").is_none(), "{shop}");
    assert_eq!(api(http, "PUT", "/api/vhosts/copy").status, 201);
    let copied = api_with(http, "POST", "/api/definitions/copy", &shop.to_string());
    assert_eq!(copied.status, 200, "{}", copied.body);
    assert_eq!(api(http, "GET", "/api/definitions/copy").json(), shop);
}

#[test]
fn a_queue_that_exists_otherwise_is_left_as_it_is_and_reported() {
    let broker = Broker::builder().with_http().start();
    let http = broker.http_addr();
    run(async {
        let client = connect(&broker).await;
        let ch = client.channel().await;
        ch.queue_declare("jobs".into(), durable_queue(), FieldTable::default())
            .await
            .expect("jobs");
        client.close().await;
    });
    let file = json!({
        "queues": [
            {"name": "jobs", "vhost": "/", "durable": true, "auto_delete": false,
             "arguments": {"x-max-length": 10}},
            {"name": "new", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}},
        ],
        "exchanges": [
            {"name": "odd", "vhost": "/", "type": "no-such-type", "durable": true,
             "auto_delete": false, "internal": false, "arguments": {}},
        ],
        "bindings": [
            {"source": "amq.direct", "vhost": "nowhere", "destination": "new",
             "destination_type": "queue", "routing_key": "k", "arguments": {}},
        ],
    });
    let answer = api_with(http, "POST", "/api/definitions", &file.to_string());
    assert_eq!(answer.status, 400, "{}", answer.body);
    let answer = answer.json();
    assert_eq!(answer["created"]["queues"], 1, "{answer}");
    let skipped = answer["skipped"].to_string();
    assert!(
        skipped.contains("'jobs'") && skipped.contains("left as it is"),
        "{answer}"
    );
    let errors: Vec<&str> = answer["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(errors.len(), 2, "{answer}");
    assert!(errors[0].contains("exchange 'odd'"), "{answer}");
    assert!(errors[1].contains("no virtual host 'nowhere'"), "{answer}");
    let jobs = api(http, "GET", "/api/queues/%2F/jobs").json();
    assert_eq!(jobs["arguments"], json!({}), "unchanged: {jobs}");
    assert_eq!(api(http, "GET", "/api/queues/%2F/new").status, 200);
    // Not JSON at all: nothing happens.
    assert_eq!(
        api_with(http, "POST", "/api/definitions", "{oops").status,
        400
    );
}

#[test]
fn a_rabbitmq_3_13_export_creates_its_topology_users_and_permissions() {
    let broker = Broker::builder().with_http().start();
    let http = broker.http_addr();
    let answer = api_with(http, "POST", "/api/definitions", &rabbitmq_3_13_file());
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = answer.json();
    assert_eq!(
        answer["created"],
        json!({"vhosts": 1, "queues": 1, "exchanges": 1, "bindings": 1, "users": 2,
               "permissions": 3, "topic_permissions": 1}),
        "{answer}"
    );
    // The users keep RabbitMQ's hashes, so an export gives them back unchanged.
    let exported = api(http, "GET", "/api/definitions").json();
    let file: Value = serde_json::from_str(&rabbitmq_3_13_file()).expect("fixture");
    for user in file["users"].as_array().expect("users") {
        assert!(
            exported["users"].as_array().expect("users").contains(user),
            "{user} in {exported}"
        );
    }
    // Importing it again changes nothing.
    let again = api_with(http, "POST", "/api/definitions", &rabbitmq_3_13_file()).json();
    assert_eq!(
        again["created"],
        json!({"vhosts": 0, "queues": 0, "exchanges": 0, "bindings": 0, "users": 0,
               "permissions": 0, "topic_permissions": 0}),
        "{again}"
    );

    let shop = api(http, "GET", "/api/vhosts/shop").json();
    assert_eq!(shop["description"], "Orders of the shop", "{shop}");
    assert_eq!(shop["tags"], json!(["eu"]), "{shop}");
    let queue = api(http, "GET", "/api/queues/shop/orders.eu").json();
    assert_eq!(queue["durable"], true, "{queue}");
    assert_eq!(queue["arguments"]["x-message-ttl"], 60000, "{queue}");
    let exchanges = api(http, "GET", "/api/exchanges/shop").json();
    let orders = exchanges
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["name"] == "orders")
        .unwrap_or_else(|| panic!("no exchange orders: {exchanges}"));
    assert_eq!(orders["type"], "topic");
    assert_eq!(orders["durable"], true);
    // The binding routes: a message for eu.* reaches the queue, one for us.* does not.
    run(async {
        let client = connect_url(&vhost_url(&broker, "shop")).await;
        let ch = client.confirm_channel().await;
        publish(&ch, "orders", "eu.de.new", "for the EU").await;
        publish(&ch, "orders", "us.ny.new", "elsewhere").await;
        assert_eq!(drain(&ch, "orders.eu").await, ["for the EU"]);
        client.close().await;
    });
    // RabbitMQ's user logs in with its RabbitMQ password, and its permissions hold: configure
    // `^orders\.`, and on exchange `orders` routing keys `^eu\.` only.
    run(async {
        let addr = broker.amqp_addr();
        let url = format!(
            "amqp://orders-app:s3cret@{}:{}/shop",
            addr.ip(),
            addr.port()
        );
        let app = connect_url(&url).await;
        let ch = app.confirm_channel().await;
        ch.queue_declare("orders.us".into(), durable_queue(), FieldTable::default())
            .await
            .expect("orders-app may configure orders.*");
        publish(&ch, "orders", "eu.fr.new", "allowed").await;
        assert_code(
            ch.queue_declare("billing".into(), durable_queue(), FieldTable::default())
                .await,
            403,
        );
        let ch = app.channel().await;
        let _ = ch
            .basic_publish(
                "orders".into(),
                "us.ny.new".into(),
                Default::default(),
                b"refused",
                Default::default(),
            )
            .await;
        assert_eq!(app.next_error_code().await, 403, "topic permission");
        app.close().await;
        let wrong = format!("amqp://orders-app:wrong@{}:{}/shop", addr.ip(), addr.port());
        let refused =
            lapin::Connection::connect(&wrong, lapin::ConnectionProperties::default()).await;
        assert!(refused.is_err(), "a wrong password is refused");
    });
}
