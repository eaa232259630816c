//! Logging as operators see it: one line per connection opened and closed, JSON on request,
//! and `RUST_LOG` over the configured level.

use crate::support::*;
use rosetta_tests::Broker;

/// The log line containing `message` and every one of `fields`.
fn line_with(broker: &Broker, message: &str, fields: &[&str]) -> Option<String> {
    broker
        .log()
        .lines()
        .find(|l| l.contains(message) && fields.iter().all(|f| l.contains(f)))
        .map(str::to_string)
}

#[test]
fn connection_open_and_close_are_logged_with_peer_user_and_protocol() {
    let broker = Broker::start();
    run(async {
        let client = connect(&broker).await;
        client.close().await;
    });
    // Text format quotes some values (`user="guest"`) and not others, so match the values.
    let fields = ["peer=127.0.0.1:", "guest", "amqp"];
    let closed = rosetta_tests::wait_until(WAIT, || {
        line_with(&broker, "connection closed", &fields).is_some()
    });
    assert!(
        closed,
        "no `connection closed` line with {fields:?}:\n{}",
        broker.log()
    );
    let opened = line_with(&broker, "connection opened", &fields);
    assert!(
        opened.is_some(),
        "no `connection opened` line:\n{}",
        broker.log()
    );
}

#[test]
fn json_format_writes_one_json_object_per_line() {
    let broker = Broker::start_with("[log]\nformat = \"json\"\n");
    run(async {
        let client = connect(&broker).await;
        client.close().await;
    });
    let closed = rosetta_tests::wait_until(WAIT, || broker.log_contains("connection closed"));
    assert!(closed, "{}", broker.log());
    let log = broker.log();
    let mut messages = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        messages.push(
            value["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        if value["fields"]["message"] == "connection closed" {
            assert_eq!(value["fields"]["user"], "guest", "{line}");
            assert_eq!(value["fields"]["protocol"], "amqp", "{line}");
        }
    }
    assert!(
        messages.iter().any(|m| m == "listener opened"),
        "{messages:?}"
    );
}

#[test]
fn rust_log_takes_precedence_over_the_configured_level() {
    // With log.level = "error" alone the `listener opened` info lines would be filtered out and
    // the kit could not find the ports; RUST_LOG=info brings them back.
    let broker = Broker::builder()
        .config("[log]\nlevel = \"error\"\n")
        .env("RUST_LOG", "info")
        .start();
    assert!(broker.log_contains("listener opened"));
    assert!(
        broker.wait_for_log("broker started", WAIT),
        "{}",
        broker.log()
    );
}
