//! The JSON management API: basic auth against the configured users, listings that match what
//! AMQP clients did, and queue delete and purge.

use crate::http::{api, request};
use crate::support::*;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use rosetta_tests::Broker;
use serde_json::Value;

fn broker() -> Broker {
    Broker::builder().with_http().start()
}

/// The entry of `list` whose `name` is `name`.
fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .find(|entry| entry["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

#[test]
fn requests_without_valid_basic_auth_are_refused() {
    let broker = Broker::builder()
        .with_http()
        .config(
            "[limits]\nfailed_login_delay_ms = 0\n\n\
             [[users]]\nname = \"guest\"\npassword = \"guest\"\ntags = [\"administrator\"]\n\n\
             [[users]]\nname = \"ops\"\npassword = \"s3cret\"\ntags = [\"monitoring\"]\n",
        )
        .start();
    let http = broker.http_addr();
    let anonymous = request(http, "GET", "/api/overview", None);
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some("Basic realm=\"rosetta\"")
    );
    assert_eq!(anonymous.json()["error"], "not_authorized");
    let wrong = request(http, "GET", "/api/overview", Some(("ops", "guess")));
    assert_eq!(wrong.status, 401);
    let unknown = request(http, "GET", "/api/queues", Some(("nobody", "s3cret")));
    assert_eq!(unknown.status, 401);

    let ops = request(http, "GET", "/api/overview", Some(("ops", "s3cret")));
    assert_eq!(ops.status, 200, "{}", ops.body);
    assert_eq!(ops.header("content-type"), Some("application/json"));
    assert_eq!(ops.json()["product_name"], "rosetta");
    assert_eq!(api(http, "GET", "/api/overview").status, 200);
    // Metrics and health stay open to scrapers and probes.
    assert_eq!(request(http, "GET", "/metrics", None).status, 200);
}

#[test]
fn the_api_is_authorised_by_tags_as_rabbitmq_does() {
    let broker = Broker::builder()
        .with_http()
        .config(
            "[limits]\nfailed_login_delay_ms = 0\n\n\
             [[users]]\nname = \"guest\"\npassword = \"guest\"\ntags = [\"administrator\"]\n\n\
             [[users]]\nname = \"watch\"\npassword = \"pw\"\ntags = [\"monitoring\"]\n\n\
             [[users]]\nname = \"team\"\npassword = \"pw\"\ntags = [\"management\"]\n\n\
             [[users]]\nname = \"app\"\npassword = \"pw\"\n",
        )
        .start();
    let http = broker.http_addr();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        declare_queue(&channel, "tagged.q").await;
        publish_all(&channel, "tagged.q", &["x"]).await;

        // A user without a management tag has no API at all.
        let app = request(http, "GET", "/api/queues", Some(("app", "pw")));
        assert_eq!(app.status, 401, "{}", app.body);
        assert_eq!(app.json()["error"], "not_authorised");
        assert_eq!(app.json()["reason"], "Not management user");
        // monitoring and management read...
        for user in ["watch", "team"] {
            let read = request(http, "GET", "/api/queues", Some((user, "pw")));
            assert_eq!(read.status, 200, "{user}: {}", read.body);
            named(&read.json(), "tagged.q");
        }
        // ...but only an administrator deletes or purges.
        for user in ["watch", "team"] {
            for path in [
                "/api/queues/%2F/tagged.q/contents",
                "/api/queues/%2F/tagged.q",
            ] {
                let change = request(http, "DELETE", path, Some((user, "pw")));
                assert_eq!(change.status, 401, "{user} {path}: {}", change.body);
                assert_eq!(change.json()["reason"], "Not administrator user");
            }
        }
        assert_eq!(message_count(&client, "tagged.q").await, 1);
        let purge = request(
            http,
            "DELETE",
            "/api/queues/%2F/tagged.q/contents",
            Some(("guest", "guest")),
        );
        assert_eq!(purge.status, 204, "{}", purge.body);
        assert_eq!(message_count(&client, "tagged.q").await, 0);
        client.close().await;
    });
}

#[test]
fn a_wrong_api_password_is_answered_after_the_delay_and_counted() {
    let broker = Broker::builder()
        .with_http()
        .config("[limits]\nfailed_login_delay_ms = 600\n")
        .start();
    let http = broker.http_addr();
    let started = std::time::Instant::now();
    let wrong = request(http, "GET", "/api/overview", Some(("guest", "guess")));
    assert_eq!(wrong.status, 401);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(600),
        "answered after {:?}",
        started.elapsed()
    );
    // Missing credentials are not a guess: answered at once, not counted.
    let started = std::time::Instant::now();
    assert_eq!(request(http, "GET", "/api/overview", None).status, 401);
    assert!(started.elapsed() < std::time::Duration::from_millis(600));
    let metrics = request(http, "GET", "/metrics", None).body;
    assert!(
        metrics.contains("rosetta_auth_failures_total{protocol=\"http\"} 1"),
        "{metrics}"
    );
}

#[test]
fn overview_counts_connections_queues_and_published_messages() {
    let broker = broker();
    let http = broker.http_addr();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        declare_queue(&channel, "overview.q").await;
        publish_all(&channel, "overview.q", &["one", "two"]).await;
        let overview = api(http, "GET", "/api/overview").json();
        assert_eq!(overview["object_totals"]["queues"], 1, "{overview}");
        assert_eq!(overview["object_totals"]["connections"], 1, "{overview}");
        assert_eq!(overview["object_totals"]["channels"], 1, "{overview}");
        assert_eq!(overview["connections_by_protocol"]["amqp"], 1, "{overview}");
        assert_eq!(overview["queue_totals"]["messages_ready"], 2, "{overview}");
        assert_eq!(overview["queue_totals"]["message_bytes"], 6, "{overview}");
        assert_eq!(overview["message_stats"]["publish"], 2, "{overview}");
        assert_eq!(overview["vhosts"], serde_json::json!(["/"]));
        assert_eq!(overview["shutting_down"], false);
        client.close().await;
    });
}

#[test]
fn queues_are_listed_with_depths_and_arguments() {
    let broker = broker();
    let http = broker.http_addr();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        declare_with(&channel, "listed.q", table(&[("x-max-length", long(10))])).await;
        declare_queue(&channel, "listed.other").await;
        publish_all(&channel, "listed.q", &["abc"]).await;
        let _unacked = get(&channel, "listed.q", false).await.expect("message");
        publish_all(&channel, "listed.q", &["defgh"]).await;

        let all = api(http, "GET", "/api/queues").json();
        let names: Vec<&str> = all
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|q| q["name"].as_str())
            .collect();
        assert_eq!(names, ["listed.other", "listed.q"], "sorted by name");
        let q = named(&all, "listed.q");
        assert_eq!(q["vhost"], "/");
        assert_eq!(q["durable"], false);
        assert_eq!(q["messages_ready"], 1, "{q}");
        assert_eq!(q["messages_unacknowledged"], 1, "{q}");
        assert_eq!(q["messages"], 2, "{q}");
        assert_eq!(q["message_bytes"], 8, "{q}");
        assert_eq!(q["arguments"]["x-max-length"], 10, "{q}");

        let one = api(http, "GET", "/api/queues/%2F/listed.q");
        assert_eq!(one.status, 200);
        assert_eq!(one.json()["messages"], 2);
        assert_eq!(
            api(http, "GET", "/api/queues/%2F")
                .json()
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        assert_eq!(api(http, "GET", "/api/queues/%2F/missing").status, 404);
        assert_eq!(api(http, "GET", "/api/queues/no-such-vhost").status, 404);
        client.close().await;
    });
}

#[test]
fn queues_list_the_front_end_that_made_them_as_their_owner() {
    let broker = Broker::builder()
        .with_http()
        .config("[stomp]\nenabled = true\nlisten = \"127.0.0.1:0\"\n")
        .start();
    let http = broker.http_addr();
    let stomp = broker
        .addr("stomp")
        .expect("the broker has no STOMP listener");
    let mut subscriber = std::net::TcpStream::connect(stomp).expect("connect to STOMP");
    std::io::Write::write_all(
        &mut subscriber,
        b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nclient-id:app\n\n\0\
          SUBSCRIBE\nid:s1\ndestination:/topic/owned\ndurable:true\n\n\0",
    )
    .expect("send CONNECT and SUBSCRIBE");
    // RabbitMQ's name for durable subscription `s1` on `/topic/owned`: base64url of Erlang's
    // md5(term_to_binary({"owned", "s1"})).
    let path = "/api/queues/%2F/stomp-subscription-lj8lIETuhbqeba9oTJwWVg";
    assert!(
        rosetta_tests::wait_until(WAIT, || api(http, "GET", path).status == 200),
        "the durable subscription's queue never appeared"
    );
    let owner = api(http, "GET", path).json()["owner"].clone();
    assert_eq!(
        owner,
        serde_json::json!({ "front_end": "stomp", "client": "app" })
    );

    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        declare_queue(&channel, "stomp-subscription-by-amqp").await;
        let declared = api(http, "GET", "/api/queues/%2F/stomp-subscription-by-amqp").json();
        assert_eq!(declared["owner"], Value::Null, "{declared}");
        client.close().await;
    });
}

#[test]
fn exchanges_are_listed_with_their_type_and_bindings() {
    let broker = broker();
    let http = broker.http_addr();
    run(async {
        let client = connect(&broker).await;
        let channel = client.channel().await;
        declare_exchange(&channel, "listed.x", lapin::ExchangeKind::Topic).await;
        declare_queue(&channel, "listed.xq").await;
        bind_queue(&channel, "listed.xq", "listed.x", "a.#").await;
        let all = api(http, "GET", "/api/exchanges").json();
        let x = named(&all, "listed.x");
        assert_eq!(x["type"], "topic");
        assert_eq!(x["bindings"], 1);
        assert_eq!(named(&all, "amq.fanout")["type"], "fanout");
        assert_eq!(named(&all, "amq.direct")["durable"], true);
        client.close().await;
    });
}

#[test]
fn connections_are_listed_with_peer_user_protocol_and_channels() {
    let broker = broker();
    let http = broker.http_addr();
    run(async {
        let client = connect(&broker).await;
        let _a = client.channel().await;
        let _b = client.channel().await;
        let mut last = Value::Null;
        let listed = rosetta_tests::wait_until(WAIT, || {
            last = api(http, "GET", "/api/connections").json();
            last.as_array().is_some_and(|all| {
                all.len() == 1 && all[0]["channels"] == 2 && all[0]["user"] == "guest"
            })
        });
        assert!(listed, "{last}");
        let c = &last[0];
        assert_eq!(c["protocol"], "amqp");
        assert_eq!(c["peer_host"], "127.0.0.1");
        assert!(c["peer_port"].as_u64().is_some_and(|p| p > 0), "{c}");
        client.close().await;
        let gone = rosetta_tests::wait_until(WAIT, || {
            api(http, "GET", "/api/connections").json() == serde_json::json!([])
        });
        assert!(gone, "closed connection still listed");
    });
}

#[test]
fn deleting_a_queue_removes_it_and_a_second_delete_is_404() {
    let broker = broker();
    let http = broker.http_addr();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        declare(&channel, "doomed.q", durable, FieldTable::default()).await;
        publish_persistent(&channel, "doomed.q", "bye").await;

        let refused = api(http, "DELETE", "/api/queues/%2F/doomed.q?if-empty=true");
        assert_eq!(refused.status, 400, "{}", refused.body);
        assert!(
            queue_exists(&client, "doomed.q").await,
            "if-empty deleted a queue with a message"
        );

        let deleted = api(http, "DELETE", "/api/queues/%2F/doomed.q");
        assert_eq!(deleted.status, 204, "{}", deleted.body);
        assert!(!queue_exists(&client, "doomed.q").await);
        assert_eq!(api(http, "GET", "/api/queues/%2F/doomed.q").status, 404);
        assert_eq!(api(http, "DELETE", "/api/queues/%2F/doomed.q").status, 404);
        client.close().await;
    });
}

#[test]
fn purging_a_queue_empties_it_and_keeps_it() {
    let broker = broker();
    let http = broker.http_addr();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        declare_queue(&channel, "purged.q").await;
        publish_all(&channel, "purged.q", &["a", "b", "c"]).await;
        wait_for_count(&client, "purged.q", 3).await;

        let purged = api(http, "DELETE", "/api/queues/%2F/purged.q/contents");
        assert_eq!(purged.status, 204, "{}", purged.body);
        assert_eq!(message_count(&client, "purged.q").await, 0);
        assert!(queue_exists(&client, "purged.q").await);
        assert_eq!(
            api(http, "DELETE", "/api/queues/%2F/absent.q/contents").status,
            404
        );
        client.close().await;
    });
}

#[test]
fn deleting_without_credentials_changes_nothing() {
    let broker = broker();
    let http = broker.http_addr();
    run(async {
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        declare_queue(&channel, "kept.q").await;
        publish_all(&channel, "kept.q", &["x"]).await;
        assert_eq!(
            request(http, "DELETE", "/api/queues/%2F/kept.q", None).status,
            401
        );
        assert_eq!(
            request(
                http,
                "DELETE",
                "/api/queues/%2F/kept.q/contents",
                Some(("guest", "no"))
            )
            .status,
            401
        );
        assert_eq!(message_count(&client, "kept.q").await, 1);
        client.close().await;
    });
}

#[test]
fn unknown_endpoints_are_404_and_wrong_methods_405() {
    let broker = broker();
    let http = broker.http_addr();
    assert_eq!(api(http, "GET", "/api/nope").status, 404);
    let post = api(http, "POST", "/api/queues");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let delete = api(http, "DELETE", "/api/overview");
    assert_eq!(delete.status, 405);
    let get_contents = api(http, "GET", "/api/queues/%2F/q/contents");
    assert_eq!(get_contents.status, 405);
    assert_eq!(get_contents.header("allow"), Some("DELETE"));
}
