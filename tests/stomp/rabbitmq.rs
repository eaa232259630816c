//! Behaviour that follows RabbitMQ's STOMP plugin where the STOMP specification leaves room or
//! says otherwise, so clients and tests written against RabbitMQ pass unchanged.

use crate::support::*;

/// Asserts that the broker has nothing pending for `client`: the RECEIPT of a SEND to a topic
/// nobody reads, sent now, is its next frame, so anything sent earlier would come first.
#[track_caller]
fn expect_nothing_pending(client: &mut Raw) {
    client.send_with_receipt("SEND", &[("destination", "/topic/rosetta.marker")], b"");
}

/// Publishes a marker to `destination` from another connection and asserts it is `reader`'s
/// next frame: a message the reader should not get would have come before it.
#[track_caller]
fn expect_marker_next(broker: &rosetta_tests::Broker, reader: &mut Raw, destination: &str) {
    let marker = unique("marker");
    let mut sender = Raw::login_12(broker.stomp_addr());
    sender.send_with_receipt("SEND", &[("destination", destination)], marker.as_bytes());
    let next = reader.expect_frame("MESSAGE");
    assert_eq!(
        String::from_utf8_lossy(&next.body),
        marker,
        "expected the marker, got {next:?}"
    );
}

#[test]
fn connected_carries_heart_beat_0_0_when_the_client_offered_none() {
    let broker = broker();
    for accept in [None, Some("1.1"), Some("1.2")] {
        let (_client, connected) = Raw::login(broker.stomp_addr(), accept);
        assert_eq!(
            connected.header("heart-beat"),
            Some("0,0"),
            "{accept:?}: {connected:?}"
        );
    }
    // `0,0` offers nothing either.
    let mut client = Raw::open(broker.stomp_addr());
    client.send_frame(
        "CONNECT",
        &[
            ("accept-version", "1.2"),
            ("host", "/"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("heart-beat", "0,0"),
        ],
        b"",
    );
    assert_eq!(
        client.expect_frame("CONNECTED").header("heart-beat"),
        Some("0,0")
    );
}

#[test]
fn stray_nuls_between_frames_are_skipped() {
    let broker = broker();
    let mut client = Raw::login_12(broker.stomp_addr());
    let queue = format!("/queue/{}", unique("nuls"));
    client.send_bytes(b"\0\0\n\0");
    client.subscribe("s", &queue, "auto");
    let mut bytes = b"\0SEND\ndestination:".to_vec();
    bytes.extend_from_slice(queue.as_bytes());
    bytes.extend_from_slice(b"\n\none\0\0\0\r\n\0SEND\ndestination:");
    bytes.extend_from_slice(queue.as_bytes());
    bytes.extend_from_slice(b"\n\ntwo\0\0");
    client.send_bytes(&bytes);
    assert_eq!(client.expect_frame("MESSAGE").body, b"one");
    assert_eq!(client.expect_frame("MESSAGE").body, b"two");
    client.send_with_receipt("DISCONNECT", &[], b"");
}

#[test]
fn boolean_headers_accept_true_and_false_in_any_case() {
    let broker = broker();
    let topic = format!("/topic/{}", unique("bool"));
    let id = unique("durable");
    let mut client = Raw::login_12(broker.stomp_addr());
    client.send_with_receipt(
        "SUBSCRIBE",
        &[("id", &id), ("destination", &topic), ("durable", "True")],
        b"",
    );
    // Durable: the subscription's queue outlives the UNSUBSCRIBE and collects what follows.
    client.send_with_receipt("UNSUBSCRIBE", &[("id", &id)], b"");
    client.send_with_receipt(
        "SEND",
        &[("destination", &topic), ("persistent", "TRUE")],
        b"kept",
    );
    client.send_frame(
        "SUBSCRIBE",
        &[
            ("id", &id),
            ("destination", &topic),
            ("durable", "TRUE"),
            ("ack", "client"),
        ],
        b"",
    );
    let message = client.expect_frame("MESSAGE");
    assert_eq!(message.body, b"kept");
    assert_eq!(message.header("persistent"), Some("true"));
    // `requeue:FALSE` drops the message: nothing comes back before a later one.
    client.send_with_receipt(
        "NACK",
        &[("id", message.expect_header("ack")), ("requeue", "FALSE")],
        b"",
    );
    expect_marker_next(&broker, &mut client, &topic);
    client.send_with_receipt("UNSUBSCRIBE", &[("id", &id), ("durable", "tRuE")], b"");
}

#[test]
fn a_stomp_1_0_client_may_use_client_individual_and_nack() {
    let broker = broker();
    let (mut client, connected) = Raw::login(broker.stomp_addr(), None);
    assert_eq!(connected.header("version"), Some("1.0"));
    let queue = format!("/queue/{}", unique("v10ci"));
    client.send_with_receipt(
        "SUBSCRIBE",
        &[("destination", &queue), ("ack", "client-individual")],
        b"",
    );
    client.send_frame("SEND", &[("destination", &queue)], b"a");
    client.send_frame("SEND", &[("destination", &queue)], b"b");
    let a = client.expect_frame("MESSAGE");
    let b = client.expect_frame("MESSAGE");
    // Individual, not cumulative: acknowledging the second leaves the first outstanding.
    client.send_with_receipt("ACK", &[("message-id", b.expect_header("message-id"))], b"");
    client.send_with_receipt(
        "NACK",
        &[("message-id", a.expect_header("message-id"))],
        b"",
    );
    let again = client.expect_frame("MESSAGE");
    assert_eq!(again.body, b"a");
    assert_eq!(again.header("redelivered"), Some("true"));
}

#[test]
fn a_stomp_1_2_ack_or_nack_without_id_is_refused_with_missing_header() {
    let broker = broker();
    for command in ["ACK", "NACK"] {
        let mut client = Raw::login_12(broker.stomp_addr());
        let queue = format!("/queue/{}", unique("noid"));
        client.subscribe("s", &queue, "client");
        client.send_frame("SEND", &[("destination", &queue)], b"x");
        let message = client.expect_frame("MESSAGE");
        // 1.0's `message-id` does not stand in for `id` on 1.2.
        client.send_frame(
            command,
            &[
                ("message-id", message.expect_header("message-id")),
                ("subscription", "s"),
            ],
            b"",
        );
        let frames = client.expect_closed();
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0].command, "ERROR");
        assert_eq!(
            frames[0].header("message"),
            Some("Missing header"),
            "{command}"
        );
    }
}

#[test]
fn a_send_with_message_id_is_refused_before_the_destination_is_checked() {
    let broker = broker();
    for destination in ["/queue/fine", "/nowhere/x"] {
        let mut client = Raw::login_12(broker.stomp_addr());
        client.send_frame(
            "SEND",
            &[
                ("destination", destination),
                ("message-id", "m-1"),
                ("receipt", "r"),
            ],
            b"x",
        );
        let frames = client.expect_closed();
        assert_eq!(frames.len(), 1, "{frames:?}");
        let error = &frames[0];
        assert_eq!(error.command, "ERROR");
        assert_eq!(error.header("message"), Some("Invalid header"));
        assert_eq!(error.header("receipt-id"), Some("r"));
        assert!(
            error
                .body
                .starts_with(b"'message-id' is not allowed on 'SEND'.\n"),
            "{:?}",
            String::from_utf8_lossy(&error.body)
        );
    }
}

#[test]
fn a_message_sent_to_an_exchange_without_key_names_that_destination() {
    let broker = broker();
    let mut client = Raw::login_12(broker.stomp_addr());
    client.subscribe("f", "/exchange/amq.fanout", "auto");
    client.send_frame("SEND", &[("destination", "/exchange/amq.fanout")], b"all");
    let message = client.expect_frame("MESSAGE");
    assert_eq!(message.body, b"all");
    assert_eq!(message.header("destination"), Some("/exchange/amq.fanout"));
}

/// Sends one frame as a logged-in 1.2 client and returns the ERROR that refuses it (see
/// [`only_error`]).
#[track_caller]
fn refused(broker: &rosetta_tests::Broker, command: &str, headers: &[(&str, &str)]) -> Received {
    let mut client = Raw::login_12(broker.stomp_addr());
    client.send_frame(command, headers, b"");
    only_error(&mut client)
}

/// The one ERROR the broker sends before it closes the connection; like RabbitMQ's, it names
/// the supported versions.
#[track_caller]
fn only_error(client: &mut Raw) -> Received {
    let frames = client.expect_closed();
    assert_eq!(frames.len(), 1, "{frames:?}");
    let error = frames[0].clone();
    assert_eq!(error.command, "ERROR", "{error:?}");
    assert_eq!(error.header("version"), Some("1.0,1.1,1.2"), "{error:?}");
    error
}

#[track_caller]
fn assert_error(error: &Received, message: &str, body: &str) {
    assert_eq!(error.header("message"), Some(message), "{error:?}");
    assert_eq!(String::from_utf8_lossy(&error.body), body, "{error:?}");
}

#[test]
fn destinations_take_one_segment_and_a_slash_inside_a_name_is_written_2f() {
    let broker = broker();
    for (destination, body) in [
        ("/queue/a/b", "'/a/b' is not a valid queue destination\n"),
        ("/topic/a/b", "'/a/b' is not a valid topic destination\n"),
        (
            "/exchange/x/k/z",
            "'/x/k/z' is not a valid exchange destination\n",
        ),
        (
            "/amq/queue/a/b",
            "'/a/b' is not a valid amqqueue destination\n",
        ),
        ("/queue/", "'/' is not a valid queue destination\n"),
    ] {
        for command in ["SEND", "SUBSCRIBE"] {
            let error = refused(
                &broker,
                command,
                &[("destination", destination), ("id", "s")],
            );
            assert_error(&error, "Invalid destination", body);
        }
    }
    // `%2F` is a slash within the one segment, and MESSAGE names it the same way.
    let mut client = Raw::login_12(broker.stomp_addr());
    client.subscribe("s", "/queue/a%2Fb", "auto");
    client.send_frame("SEND", &[("destination", "/queue/a%2Fb")], b"slash");
    let message = client.expect_frame("MESSAGE");
    assert_eq!(message.body, b"slash");
    assert_eq!(message.header("destination"), Some("/queue/a%2Fb"));
    client.subscribe("k", "/exchange/amq.direct/k%2F1", "auto");
    client.send_frame(
        "SEND",
        &[("destination", "/exchange/amq.direct/k%2F1")],
        b"key",
    );
    let message = client.expect_frame("MESSAGE");
    assert_eq!(message.body, b"key");
    assert_eq!(
        message.header("destination"),
        Some("/exchange/amq.direct/k%2F1")
    );
}

/// CONNECT as guest with `host`.
fn connect_to(broker: &rosetta_tests::Broker, host: &str) -> Raw {
    let mut client = Raw::open(broker.stomp_addr());
    client.send_frame(
        "CONNECT",
        &[
            ("accept-version", "1.2"),
            ("host", host),
            ("login", "guest"),
            ("passcode", "guest"),
        ],
        b"",
    );
    client
}

#[test]
fn a_host_naming_no_virtual_host_is_refused_unless_it_names_a_machine() {
    let broker = broker();
    let mut client = connect_to(&broker, "no-such-vhost");
    let error = only_error(&mut client);
    assert_error(
        &error,
        "Bad CONNECT",
        "Virtual host 'no-such-vhost' access denied",
    );
    // stomp.py and others send the server's host name by default: the default virtual host.
    for machine in ["localhost", "broker.example.com", "127.0.0.1", "::1"] {
        let mut client = connect_to(&broker, machine);
        client.expect_frame("CONNECTED");
        client.send_with_receipt("DISCONNECT", &[], b"");
    }
}

#[test]
fn x_queue_name_names_a_topic_or_exchange_subscriptions_queue() {
    let broker = broker();
    let mut client = Raw::login_12(broker.stomp_addr());
    for (id, destination, queue) in [
        ("t", "/topic/news.named", "named-topic-sub"),
        ("x", "/exchange/amq.fanout", "named-fanout-sub"),
    ] {
        client.send_with_receipt(
            "SUBSCRIBE",
            &[
                ("id", id),
                ("destination", destination),
                ("x-queue-name", queue),
            ],
            b"",
        );
        // `/amq/queue/` publishes to the default exchange with the queue's name as key, as an
        // AMQP client would, and declares nothing: only the named queue can receive it.
        client.send_frame(
            "SEND",
            &[("destination", &format!("/amq/queue/{queue}"))],
            queue.as_bytes(),
        );
        let message = client.expect_frame("MESSAGE");
        assert_eq!(message.header("subscription"), Some(id));
        assert_eq!(message.body, queue.as_bytes());
    }
}

/// Runs `f` with an AMQP channel to `broker`.
fn with_amqp<T>(broker: &rosetta_tests::Broker, f: impl AsyncFnOnce(&lapin::Channel) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let conn =
            lapin::Connection::connect(&broker.amqp_url(), lapin::ConnectionProperties::default())
                .await
                .expect("AMQP connect");
        let channel = conn.create_channel().await.expect("channel");
        f(&channel).await
    })
}

#[test]
fn queue_argument_headers_declare_the_queue_so_an_amqp_redeclare_matches() {
    use lapin::types::{AMQPValue, FieldTable, ShortString};
    let broker = broker();
    let mut client = Raw::login_12(broker.stomp_addr());
    let queue = unique("args");
    client.send_with_receipt(
        "SEND",
        &[
            ("destination", &format!("/queue/{queue}")),
            ("x-max-length", "1"),
            ("x-message-ttl", "60000"),
            ("x-dead-letter-exchange", "amq.fanout"),
            ("x-overflow", "drop-head"),
        ],
        b"first",
    );
    client.send_with_receipt(
        "SEND",
        &[("destination", &format!("/queue/{queue}"))],
        b"second",
    );
    let table = |max_length: i32| {
        let mut t = FieldTable::default();
        t.insert(
            ShortString::from("x-max-length"),
            AMQPValue::LongInt(max_length),
        );
        t.insert(
            ShortString::from("x-message-ttl"),
            AMQPValue::LongInt(60000),
        );
        t.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString("amq.fanout".into()),
        );
        t.insert(
            ShortString::from("x-overflow"),
            AMQPValue::LongString("drop-head".into()),
        );
        t
    };
    with_amqp(&broker, async |channel: &lapin::Channel| {
        let options = lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let declared = channel
            .queue_declare(queue.as_str().into(), options, table(1))
            .await
            .expect("the same arguments, as integers, are equivalent");
        // x-max-length 1 with drop-head: the first message made room for the second.
        assert_eq!(declared.message_count(), 1);
        let refused = channel
            .queue_declare(queue.as_str().into(), options, table(2))
            .await;
        assert!(
            refused.is_err(),
            "a different x-max-length is not equivalent"
        );
    });
}

#[test]
fn a_receipt_inside_a_transaction_comes_at_commit_and_never_after_abort() {
    let broker = broker();
    let queue = format!("/queue/{}", unique("txr"));
    let mut reader = Raw::login_12(broker.stomp_addr());
    reader.subscribe("r", &queue, "client-individual");
    let mut client = Raw::login_12(broker.stomp_addr());
    client.send_with_receipt("BEGIN", &[("transaction", "t")], b"");
    client.send_frame(
        "SEND",
        &[
            ("destination", &queue),
            ("transaction", "t"),
            ("persistent", "true"),
            ("receipt", "in-t"),
        ],
        b"committed",
    );
    expect_nothing_pending(&mut client);
    expect_marker_next(&broker, &mut reader, &queue);
    client.send_frame(
        "COMMIT",
        &[("transaction", "t"), ("receipt", "commit")],
        b"",
    );
    // The SEND's receipt once its message is published and durable, then the COMMIT's.
    assert_eq!(
        client.expect_frame("RECEIPT").header("receipt-id"),
        Some("in-t")
    );
    assert_eq!(
        client.expect_frame("RECEIPT").header("receipt-id"),
        Some("commit")
    );
    let message = reader.expect_frame("MESSAGE");
    assert_eq!(message.body, b"committed");

    // Aborted: the message is never published and its receipt never comes.
    client.send_with_receipt("BEGIN", &[("transaction", "u")], b"");
    client.send_frame(
        "SEND",
        &[
            ("destination", &queue),
            ("transaction", "u"),
            ("receipt", "in-u"),
        ],
        b"aborted",
    );
    client.send_frame("ABORT", &[("transaction", "u"), ("receipt", "abort")], b"");
    assert_eq!(
        client.expect_frame("RECEIPT").header("receipt-id"),
        Some("abort")
    );
    expect_nothing_pending(&mut client);
    expect_marker_next(&broker, &mut reader, &queue);

    // A held ACK is answered when it is held, as RabbitMQ's plugin does.
    reader.send_with_receipt("BEGIN", &[("transaction", "a")], b"");
    reader.send_with_receipt(
        "ACK",
        &[("id", message.expect_header("ack")), ("transaction", "a")],
        b"",
    );
    reader.send_with_receipt("COMMIT", &[("transaction", "a")], b"");
}

#[test]
fn a_durable_subscription_needs_an_id_and_its_queue_is_named_as_rabbitmq_names_it() {
    let broker = broker();
    for command in ["SUBSCRIBE", "UNSUBSCRIBE"] {
        for header in ["durable", "persistent"] {
            let error = refused(
                &broker,
                command,
                &[("destination", "/topic/news.a"), (header, "true")],
            );
            assert_error(
                &error,
                "Missing Header",
                "Header 'id' is required for durable subscriptions",
            );
        }
    }
    // RabbitMQ's names: base64url of Erlang's md5(term_to_binary({Key, Id})) with both
    // as strings (RabbitMQ 3.x to 4.1).
    let news_a = "stomp-subscription-45O9GU1y5DLPYITBdf5jkg";
    let news_b = "stomp-subscription-AdkHDpqI000zT09yP5rhcw";
    let mut client = Raw::login_12(broker.stomp_addr());
    for topic in ["/topic/news.a", "/topic/news.b"] {
        client.send_with_receipt(
            "SUBSCRIBE",
            &[("id", "s1"), ("destination", topic), ("durable", "true")],
            b"",
        );
        client.send_with_receipt("UNSUBSCRIBE", &[("id", "s1")], b"");
        client.send_with_receipt(
            "SEND",
            &[("destination", topic), ("persistent", "true")],
            topic.as_bytes(),
        );
    }
    // One id on two topics is two streams, each in its own queue.
    for (queue, topic) in [(news_a, "/topic/news.a"), (news_b, "/topic/news.b")] {
        client.send_frame(
            "SUBSCRIBE",
            &[
                ("id", queue),
                ("destination", &format!("/amq/queue/{queue}")),
            ],
            b"",
        );
        let message = client.expect_frame("MESSAGE");
        assert_eq!(message.body, topic.as_bytes());
        assert_eq!(message.header("destination"), Some(topic));
    }
    // Neither queue holds the other topic's message: a later message is next on each.
    for queue in [news_a, news_b] {
        expect_marker_next(&broker, &mut client, &format!("/amq/queue/{queue}"));
    }
}

/// A frame that is refused: command and headers, then the ERROR's `message` and body.
type Fault<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);

#[test]
fn error_frames_carry_rabbitmqs_message_and_body() {
    let broker = broker();
    let cases: [Fault; 6] = [
        (
            "SEND",
            &[("receipt", "r")],
            "Missing destination",
            "'SEND' must include a 'destination' header\n",
        ),
        (
            "SEND",
            &[("destination", "/exchange/no-such-exchange/k")],
            "not_found",
            "no exchange 'no-such-exchange' in vhost '/'",
        ),
        (
            "SEND",
            &[("destination", "/queue/q"), ("message-id", "1")],
            "Invalid header",
            "'message-id' is not allowed on 'SEND'.\n",
        ),
        (
            "ACK",
            &[("message-id", "1")],
            "Missing header",
            "'ACK' must include the <<\"id\">> header\n",
        ),
        (
            "SEND",
            &[("destination", "/nowhere/x")],
            "Unknown destination",
            "'/nowhere/x' is not a valid destination.\nValid destination types are: /temp-queue, /exchange, /topic, /queue, /amq/queue, /reply-queue/.\n",
        ),
        (
            "MESSAGE",
            &[("destination", "/queue/q")],
            "Bad command",
            "Could not interpret command \"MESSAGE\"\n",
        ),
    ];
    for (command, headers, message, body) in cases {
        assert_error(&refused(&broker, command, headers), message, body);
    }

    let mut unknown = Raw::login_12(broker.stomp_addr());
    unknown.send_bytes(b"PUBLISH\n\n\0");
    assert_error(
        &only_error(&mut unknown),
        "Bad command",
        "Could not interpret command \"PUBLISH\"\n",
    );

    let mut duplicate = Raw::login_12(broker.stomp_addr());
    duplicate.subscribe("s", "/topic/dup", "auto");
    duplicate.send_frame(
        "SUBSCRIBE",
        &[("id", "s"), ("destination", "/topic/dup")],
        b"",
    );
    assert_error(
        &only_error(&mut duplicate),
        "Duplicated subscription identifier",
        "A subscription identified by 'T_s' already exists.",
    );

    let mut version = Raw::open(broker.stomp_addr());
    version.send_frame("CONNECT", &[("accept-version", "2.0"), ("host", "/")], b"");
    assert_error(
        &only_error(&mut version),
        "Version mismatch",
        "Supported versions are 1.0,1.1,1.2\n",
    );

    let mut wrong = Raw::open(broker.stomp_addr());
    wrong.send_frame(
        "CONNECT",
        &[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "nope"),
        ],
        b"",
    );
    assert_error(
        &only_error(&mut wrong),
        "Bad CONNECT",
        "Access refused for user 'guest'",
    );
}

/// Whether queue `name` exists, asked over AMQP with a passive declare.
fn queue_exists(broker: &rosetta_tests::Broker, name: &str) -> bool {
    with_amqp(broker, async |channel: &lapin::Channel| {
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        channel
            .queue_declare(name.into(), passive, Default::default())
            .await
            .is_ok()
    })
}

#[test]
fn x_queue_name_is_held_to_the_rules_of_an_amqp_declare() {
    let broker = broker();
    let error = refused(
        &broker,
        "SUBSCRIBE",
        &[
            ("id", "s"),
            ("destination", "/topic/reserved"),
            ("x-queue-name", "amq.mine"),
        ],
    );
    assert_error(
        &error,
        "access_refused",
        "queue name 'amq.mine' contains reserved prefix 'amq.*'",
    );

    // Another connection's exclusive queue is locked, and the refused SUBSCRIBE leaves it be.
    let topic = format!("/topic/{}", unique("locked"));
    let queue = unique("exclusive-sub");
    let mut owner = Raw::login_12(broker.stomp_addr());
    owner.send_with_receipt(
        "SUBSCRIBE",
        &[
            ("id", "o"),
            ("destination", &topic),
            ("x-queue-name", &queue),
        ],
        b"",
    );
    let error = refused(
        &broker,
        "SUBSCRIBE",
        &[
            ("id", "s"),
            ("destination", &topic),
            ("x-queue-name", &queue),
        ],
    );
    assert_eq!(
        error.header("message"),
        Some("resource_locked"),
        "{error:?}"
    );
    expect_marker_next(&broker, &mut owner, &topic);
}

#[test]
fn a_failed_durable_subscribe_leaves_no_queue_behind() {
    let broker = broker();
    let queue = unique("never-bound");
    let error = refused(
        &broker,
        "SUBSCRIBE",
        &[
            ("id", "s"),
            ("destination", "/exchange/no-such-exchange/k"),
            ("durable", "true"),
            ("x-queue-name", &queue),
        ],
    );
    assert_eq!(error.header("message"), Some("not_found"), "{error:?}");
    assert!(
        !queue_exists(&broker, &queue),
        "the queue it made went with it"
    );
}

#[test]
fn a_durable_unsubscribe_deletes_only_the_subscriptions_own_queue() {
    let broker = broker();
    let topic = "/topic/owned.t";
    let id = "own";
    let mut owner = Raw::login_12(broker.stomp_addr());
    owner.send_with_receipt(
        "SUBSCRIBE",
        &[("id", id), ("destination", topic), ("durable", "true")],
        b"",
    );
    owner.send_with_receipt("UNSUBSCRIBE", &[("id", id)], b"");
    // RabbitMQ's name: md5(term_to_binary({"owned.t", "own"})) in base64url.
    let queue = "stomp-subscription-PO0SZdCqT11fTtN987SLtA".to_owned();
    assert!(queue_exists(&broker, &queue));

    // Another client reading that queue, by `/amq/queue/` or by naming it in `x-queue-name`,
    // does not end the subscription with its own durable UNSUBSCRIBE.
    let mut other = Raw::login_12(broker.stomp_addr());
    let other_topic = format!("/topic/{}", unique("other"));
    for (sub, headers) in [
        (
            "by-amq",
            vec![("destination", format!("/amq/queue/{queue}"))],
        ),
        (
            "by-name",
            vec![
                ("destination", other_topic.clone()),
                ("durable", "true".to_owned()),
                ("x-queue-name", queue.clone()),
            ],
        ),
    ] {
        let mut headers: Vec<(&str, &str)> =
            headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        headers.push(("id", sub));
        other.send_with_receipt("SUBSCRIBE", &headers, b"");
        other.send_with_receipt("UNSUBSCRIBE", &[("id", sub), ("durable", "true")], b"");
        assert!(queue_exists(&broker, &queue), "{sub} deleted it");
    }

    // Its own subscription ends it.
    owner.send_with_receipt(
        "SUBSCRIBE",
        &[("id", id), ("destination", topic), ("durable", "true")],
        b"",
    );
    owner.send_with_receipt("UNSUBSCRIBE", &[("id", id), ("durable", "true")], b"");
    assert!(!queue_exists(&broker, &queue));
}

#[test]
fn a_queue_of_the_earlier_naming_is_kept_only_if_stomp_made_it_for_that_key() {
    let broker = broker();
    let key = "legacy.k";
    let topic = format!("/topic/{key}");
    let client_id = unique("app");
    let legacy = format!("stomp-subscription-{client_id}-s");
    // A queue with the earlier name that STOMP made, but bound from another exchange; then
    // one with that name that an AMQP client declared, bound from amq.topic with the key.
    let mut maker = Raw::login_12(broker.stomp_addr());
    maker.send_with_receipt(
        "SUBSCRIBE",
        &[
            ("id", "m"),
            ("destination", &format!("/exchange/amq.direct/{key}")),
            ("durable", "true"),
            ("x-queue-name", &legacy),
        ],
        b"",
    );
    maker.send_with_receipt("UNSUBSCRIBE", &[("id", "m")], b"");
    let amqp_legacy = format!("stomp-subscription-{client_id}-t");
    with_amqp(&broker, async |channel: &lapin::Channel| {
        let durable = lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(amqp_legacy.as_str().into(), durable, Default::default())
            .await
            .expect("declare");
        channel
            .queue_bind(
                amqp_legacy.as_str().into(),
                "amq.topic".into(),
                key.into(),
                Default::default(),
                Default::default(),
            )
            .await
            .expect("bind");
    });
    for queue in [&legacy, &amqp_legacy] {
        maker.send_with_receipt(
            "SEND",
            &[("destination", &format!("/amq/queue/{queue}"))],
            b"old",
        );
    }

    let mut client = Raw::open(broker.stomp_addr());
    client.send_frame(
        "CONNECT",
        &[
            ("accept-version", "1.2"),
            ("host", "/"),
            ("login", "guest"),
            ("passcode", "guest"),
            ("client-id", &client_id),
        ],
        b"",
    );
    client.expect_frame("CONNECTED");
    // RabbitMQ's names: md5(term_to_binary({"legacy.k", Id})) in base64url.
    for (id, named) in [
        ("s", "stomp-subscription-0xnkzE69aLoEsW3QKvF1vA"),
        ("t", "stomp-subscription-Ul6_14b-ILD1FE7siLRBNQ"),
    ] {
        client.send_with_receipt(
            "SUBSCRIBE",
            &[("id", id), ("destination", &topic), ("durable", "true")],
            b"",
        );
        assert!(queue_exists(&broker, named), "{id} got RabbitMQ's name");
    }
    // Neither subscription reads the old queue: the first message it gets is a new one.
    let marker = unique("marker");
    maker.send_with_receipt("SEND", &[("destination", &topic)], marker.as_bytes());
    for _ in 0..2 {
        let message = client.expect_frame("MESSAGE");
        assert_eq!(String::from_utf8_lossy(&message.body), marker);
    }
}

#[test]
fn subscriptions_with_and_without_id_are_kept_apart_as_rabbitmq_keeps_them() {
    let broker = broker();
    let queue = format!("/queue/{}", unique("tags"));
    let mut client = Raw::login_12(broker.stomp_addr());
    // `Q_<destination>` and `T_<id>` are different tags, even when the id is the destination.
    client.send_with_receipt("SUBSCRIBE", &[("destination", &queue)], b"");
    client.send_with_receipt("SUBSCRIBE", &[("id", &queue), ("destination", &queue)], b"");
    client.send_with_receipt("UNSUBSCRIBE", &[("destination", &queue)], b"");
    client.send_with_receipt("UNSUBSCRIBE", &[("id", &queue)], b"");

    // A temporary queue's subscription is `T_/temp-queue/<name>`, so that id is taken.
    client.send_with_receipt(
        "SEND",
        &[("destination", &queue), ("reply-to", "/temp-queue/replies")],
        b"ask",
    );
    client.send_frame(
        "SUBSCRIBE",
        &[("id", "/temp-queue/replies"), ("destination", &queue)],
        b"",
    );
    assert_error(
        &only_error(&mut client),
        "Duplicated subscription identifier",
        "A subscription identified by 'T_/temp-queue/replies' already exists.",
    );
}

#[test]
fn queue_argument_headers_are_checked_alike_for_every_send_and_subscribe() {
    let broker = broker();
    let long = "k".repeat(256);
    let fresh = || format!("/queue/{}", unique("argq"));
    let cases: [(&str, String, &str, &str); 3] = [
        (
            "x-dead-letter-routing-key",
            long.clone(),
            "precondition_failed",
            "invalid arg 'x-dead-letter-routing-key': 256 bytes is longer than 255",
        ),
        (
            "x-max-age",
            "1D".into(),
            "precondition_failed",
            "invalid arg 'x-max-age': stream retention is not supported",
        ),
        (
            "x-stream-max-segment-size-bytes",
            "1000".into(),
            "precondition_failed",
            "invalid arg 'x-stream-max-segment-size-bytes': stream arguments are not supported",
        ),
    ];
    // A queue that exists already is used as it is, but the headers are still checked.
    let existing = fresh();
    Raw::login_12(broker.stomp_addr()).send_with_receipt(
        "SEND",
        &[("destination", &existing)],
        b"",
    );
    for (header, value, message, body) in &cases {
        for (command, destination) in [
            ("SEND", fresh()),
            ("SUBSCRIBE", fresh()),
            ("SEND", existing.clone()),
            ("SUBSCRIBE", existing.clone()),
        ] {
            let error = refused(
                &broker,
                command,
                &[
                    ("id", "s"),
                    ("destination", &destination),
                    ("x-dead-letter-exchange", "amq.fanout"),
                    (header, value),
                ],
            );
            assert_error(&error, message, body);
        }
        // Inside a transaction, at the SEND rather than at COMMIT.
        let mut client = Raw::login_12(broker.stomp_addr());
        client.send_with_receipt("BEGIN", &[("transaction", "t")], b"");
        client.send_frame(
            "SEND",
            &[
                ("destination", &fresh()),
                ("transaction", "t"),
                ("x-dead-letter-exchange", "amq.fanout"),
                (header, value),
            ],
            b"",
        );
        assert_error(&only_error(&mut client), message, body);
    }
    // A number that is not one is refused on every SEND and SUBSCRIBE, whatever the
    // destination, as RabbitMQ's plugin reads these headers on each.
    for destination in ["/topic/args", "/exchange/amq.direct/k", "/queue/args"] {
        for transaction in [None, Some("t")] {
            let mut client = Raw::login_12(broker.stomp_addr());
            let mut headers = vec![("destination", destination), ("x-max-length", "ten")];
            if let Some(tx) = transaction {
                client.send_with_receipt("BEGIN", &[("transaction", tx)], b"");
                headers.push(("transaction", tx));
            }
            client.send_frame("SEND", &headers, b"");
            let error = only_error(&mut client);
            assert_eq!(error.header("message"), Some("Invalid header"), "{error:?}");
        }
        let error = refused(
            &broker,
            "SUBSCRIBE",
            &[
                ("id", "s"),
                ("destination", destination),
                ("x-max-length", "ten"),
            ],
        );
        assert_eq!(error.header("message"), Some("Invalid header"), "{error:?}");
    }
}
