//! RabbitMQ's permissions over STOMP: CONNECT needs permissions on the virtual host, SEND write
//! on the exchange it publishes to (and the topic permission for its key), SUBSCRIBE read on
//! the queue, configure on a queue the broker declares, and for a topic or exchange
//! subscription write on its queue and read on the exchange. A refusal is an ERROR
//! `access_refused` whose body is RabbitMQ's text, and the connection closes.

use std::net::SocketAddr;

use crate::support::*;
use rosetta_tests::{Access, Broker};

/// admin may do anything; bob may use `bob.*` queues and exchanges and the server-named
/// queues behind topic subscriptions, and only `sensors.*` keys on `amq.topic`; carol has no
/// permission on `/`; dave may write and read anything but configure only `dave.*`, so not the
/// server-named queues.
fn users() -> Access {
    let bob = r"^(bob\..*|amq\.gen-.*|amq\.topic)$";
    Access::admin_and_carol()
        .user("bob")
        .permissions("bob", r"^(bob\..*|amq\.gen-.*)$", bob, bob)
        .topic_permissions("bob", "amq.topic", r"^sensors\.", r"^sensors\.")
        .user("dave")
        .permissions("dave", r"^dave\..*$", ".*", ".*")
}

fn login_as(addr: SocketAddr, user: &str) -> Raw {
    let mut raw = Raw::open(addr);
    raw.send_frame(
        "CONNECT",
        &[
            ("accept-version", "1.2"),
            ("host", "/"),
            ("login", user),
            ("passcode", user),
        ],
        b"",
    );
    raw
}

/// Sends `command` as bob and expects the ERROR that refuses it; returns its body.
#[track_caller]
fn refused(addr: SocketAddr, command: &str, headers: &[(&str, &str)]) -> String {
    let mut bob = login_as(addr, "bob");
    bob.expect_frame("CONNECTED");
    bob.send_frame(command, headers, b"x");
    let error = bob.expect_frame("ERROR");
    assert_eq!(error.header("message"), Some("access_refused"), "{error:?}");
    bob.expect_closed();
    String::from_utf8_lossy(&error.body).into_owned()
}

fn bob_refused(kind: &str, name: &str) -> String {
    format!("access to {kind} '{name}' in vhost '/' refused for user 'bob'")
}

/// A queue made by admin, which bob may not read.
fn admin_queue(addr: SocketAddr) -> String {
    let name = unique("shared");
    let mut admin = login_as(addr, "admin");
    admin.expect_frame("CONNECTED");
    admin.send_with_receipt(
        "SEND",
        &[("destination", &format!("/queue/{name}"))],
        b"for admin",
    );
    name
}

#[test]
fn a_user_without_permissions_on_the_vhost_is_refused_at_connect() {
    let broker: Broker = broker_with(users().toml());
    let mut carol = login_as(broker.stomp_addr(), "carol");
    let error = carol.expect_frame("ERROR");
    let body = String::from_utf8_lossy(&error.body);
    assert!(body.contains("Virtual host '/' access denied"), "{error:?}");
    carol.expect_closed();
    login_as(broker.stomp_addr(), "bob").expect_frame("CONNECTED");
}

#[test]
fn send_needs_write_on_the_exchange_and_the_topic_permission() {
    let broker = broker_with(users().toml());
    let addr = broker.stomp_addr();
    let shared = admin_queue(addr);
    let body = refused(
        addr,
        "SEND",
        &[("destination", &format!("/queue/{shared}"))],
    );
    assert_eq!(body, bob_refused("exchange", "amq.default"));
    let body = refused(addr, "SEND", &[("destination", "/exchange/amq.direct/k")]);
    assert_eq!(body, bob_refused("exchange", "amq.direct"));
    let body = refused(addr, "SEND", &[("destination", "/topic/alarms.hall")]);
    assert_eq!(
        body,
        "write access to topic 'alarms.hall' in exchange 'amq.topic' in vhost '/' refused for \
         user 'bob'"
    );
    // Declaring a queue for a SEND needs configure on it.
    let body = refused(addr, "SEND", &[("destination", "/queue/elsewhere")]);
    assert_eq!(body, bob_refused("queue", "elsewhere"));

    let mut bob = login_as(addr, "bob");
    bob.expect_frame("CONNECTED");
    bob.subscribe("s", "/topic/sensors.#", "auto");
    bob.send_with_receipt("SEND", &[("destination", "/topic/sensors.hall")], b"20");
    let message = bob.expect_frame("MESSAGE");
    assert_eq!(message.body, b"20");
}

#[test]
fn subscribe_needs_read_on_the_queue_and_for_a_topic_the_binding_permissions() {
    let broker = broker_with(users().toml());
    let addr = broker.stomp_addr();
    let shared = admin_queue(addr);
    let subscribe = |destination: &str| {
        refused(
            addr,
            "SUBSCRIBE",
            &[("id", "1"), ("destination", destination)],
        )
    };
    assert_eq!(
        subscribe(&format!("/queue/{shared}")),
        bob_refused("queue", &shared)
    );
    assert_eq!(
        subscribe(&format!("/amq/queue/{shared}")),
        bob_refused("queue", &shared)
    );
    assert_eq!(
        subscribe("/topic/alarms.#"),
        "read access to topic 'alarms.#' in exchange 'amq.topic' in vhost '/' refused for user \
         'bob'"
    );
    assert_eq!(
        subscribe("/exchange/amq.direct/k"),
        bob_refused("exchange", "amq.direct")
    );
    // A durable subscription's queue is declared by name: configure on that name.
    let body = refused(
        addr,
        "SUBSCRIBE",
        &[
            ("id", "d"),
            ("destination", "/topic/sensors.#"),
            ("durable", "true"),
            ("x-queue-name", "other.q"),
        ],
    );
    assert_eq!(body, bob_refused("queue", "other.q"));

    // The admin's message is still there: nothing was consumed.
    let mut admin = login_as(addr, "admin");
    admin.expect_frame("CONNECTED");
    admin.subscribe("a", &format!("/queue/{shared}"), "auto");
    assert_eq!(admin.expect_frame("MESSAGE").body, b"for admin");

    // bob may declare and read his own queue.
    let mut bob = login_as(addr, "bob");
    bob.expect_frame("CONNECTED");
    bob.subscribe("q", "/queue/bob.inbox", "auto");
    admin.send_with_receipt("SEND", &[("destination", "/queue/bob.inbox")], b"hello bob");
    assert_eq!(bob.expect_frame("MESSAGE").body, b"hello bob");
}

#[test]
fn queue_arguments_do_not_get_around_the_dead_letter_permissions() {
    let broker = broker_with(users().toml());
    let addr = broker.stomp_addr();
    // bob may configure and write his own queues but not write to amq.direct: a queue of his
    // that dead-letters there (at once, with a TTL of 0) would publish there for him.
    let dead_letters_to =
        |exchange: &'static str| [("x-dead-letter-exchange", exchange), ("x-message-ttl", "0")];
    let with = |first: &[(&'static str, &'static str)],
                extra: [(&'static str, &'static str); 2]| {
        let mut all = first.to_vec();
        all.extend(extra);
        all
    };
    let amq_direct = bob_refused("exchange", "amq.direct");
    let body = refused(
        addr,
        "SUBSCRIBE",
        &with(
            &[("id", "1"), ("destination", "/queue/bob.dl")],
            dead_letters_to("amq.direct"),
        ),
    );
    assert_eq!(body, amq_direct);
    let body = refused(
        addr,
        "SEND",
        &with(
            &[("destination", "/queue/bob.dl")],
            dead_letters_to("amq.direct"),
        ),
    );
    assert_eq!(body, amq_direct);
    // The server-named queue of a topic subscription too.
    let body = refused(
        addr,
        "SUBSCRIBE",
        &with(
            &[("id", "2"), ("destination", "/topic/sensors.#")],
            dead_letters_to("amq.direct"),
        ),
    );
    assert_eq!(body, amq_direct);
    // A fixed dead-letter key must pass the topic permission of a topic exchange.
    let body = refused(
        addr,
        "SUBSCRIBE",
        &[
            ("id", "3"),
            ("destination", "/queue/bob.dl"),
            ("x-dead-letter-exchange", "amq.topic"),
            ("x-dead-letter-routing-key", "alarms.dead"),
        ],
    );
    assert_eq!(
        body,
        "write access to topic 'alarms.dead' in exchange 'amq.topic' in vhost '/' refused for \
         user 'bob'"
    );

    // Dead-lettering to an exchange bob may write to is allowed.
    let mut bob = login_as(addr, "bob");
    bob.expect_frame("CONNECTED");
    bob.send_with_receipt(
        "SUBSCRIBE",
        &[
            ("id", "4"),
            ("destination", "/queue/bob.dl"),
            ("x-dead-letter-exchange", "bob.dlx"),
        ],
        b"",
    );
    let mut admin = login_as(addr, "admin");
    admin.expect_frame("CONNECTED");
    admin.send_with_receipt("SEND", &[("destination", "/queue/bob.dl")], b"kept");
    assert_eq!(bob.expect_frame("MESSAGE").body, b"kept");
}

#[test]
fn a_temporary_queue_needs_configure_on_its_server_given_name() {
    let broker = broker_with(users().toml());
    let mut dave = login_as(broker.stomp_addr(), "dave");
    dave.expect_frame("CONNECTED");
    dave.send_frame("SEND", &[("destination", "/temp-queue/t")], b"x");
    let error = dave.expect_frame("ERROR");
    assert_eq!(error.header("message"), Some("access_refused"), "{error:?}");
    let body = String::from_utf8_lossy(&error.body);
    assert!(
        body.starts_with("access to queue 'amq.gen-")
            && body.ends_with("' in vhost '/' refused for user 'dave'"),
        "{body}"
    );
    dave.expect_closed();
}

#[test]
fn temporary_queues_per_connection_are_bounded_by_the_subscription_limit() {
    let broker = broker_with(&format!(
        "{}\n[limits]\nmax_consumers_per_channel = 2\n",
        users().toml()
    ));
    let mut admin = login_as(broker.stomp_addr(), "admin");
    admin.expect_frame("CONNECTED");
    // Each SEND to a new temporary queue subscribes to it; ending that subscription leaves the
    // queue, so only the limit on temporary queues stops a third.
    for t in ["a", "b"] {
        let destination = format!("/temp-queue/{t}");
        admin.send_frame("SEND", &[("destination", &destination)], b"x");
        assert_eq!(admin.expect_frame("MESSAGE").body, b"x");
        admin.send_with_receipt("UNSUBSCRIBE", &[("id", &destination)], b"");
    }
    admin.send_frame("SEND", &[("destination", "/temp-queue/c")], b"x");
    let error = admin.expect_frame("ERROR");
    assert_eq!(
        error.header("message"),
        Some("Temporary queue limit exceeded"),
        "{error:?}"
    );
}
