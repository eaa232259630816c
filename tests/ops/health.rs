//! `/healthz` and `/readyz`, and how they behave while the broker shuts down.

use crate::http::{get, request, try_request};
use crate::support::WAIT;
use rosetta_tests::raw::{code, RawConnection};
use rosetta_tests::{wait_until, Broker};

/// An AMQP client that completed its handshake and then goes silent: it never answers the
/// broker's `connection.close`, so the broker has to wait for it during shutdown.
fn silent_client(broker: &Broker) -> RawConnection {
    let mut raw = RawConnection::connect(broker.amqp_addr()).expect("connect");
    raw.handshake().expect("handshake");
    raw
}

#[test]
fn healthz_and_readyz_answer_200_while_the_broker_serves() {
    let broker = Broker::builder().with_http().start();
    let http = broker.http_addr();
    let health = get(http, "/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = get(http, "/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    assert_eq!(request(http, "HEAD", "/healthz", None).status, 200);
}

#[test]
fn unknown_paths_are_404_and_writes_to_health_are_405() {
    let broker = Broker::builder().with_http().start();
    let http = broker.http_addr();
    assert_eq!(get(http, "/nope").status, 404);
    let post = request(http, "POST", "/healthz", None);
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    assert_eq!(request(http, "DELETE", "/metrics", None).status, 405);
}

#[test]
fn health_turns_503_while_connections_drain_after_sigterm_and_the_exit_is_clean() {
    let mut broker = Broker::builder().with_http().start();
    let http = broker.http_addr();
    let mut client = silent_client(&broker);
    assert_eq!(get(http, "/healthz").status, 200);

    broker.terminate();
    // AMQP 0-9-1 connection.close with 320 CONNECTION_FORCED tells the client why.
    let close = client
        .expect_connection_close(WAIT)
        .expect("connection.close");
    assert_eq!(close.reply_code, code::CONNECTION_FORCED, "{close:?}");
    // The client has not answered, so the broker is still draining: health says so.
    let mut seen = (0, 0);
    let unhealthy = wait_until(WAIT, || {
        let health = try_request(http, "GET", "/healthz", None).map(|r| r.status);
        let ready = try_request(http, "GET", "/readyz", None).map(|r| r.status);
        seen = (health.unwrap_or(0), ready.unwrap_or(0));
        seen == (503, 503)
    });
    assert!(unhealthy, "healthz/readyz during shutdown: {seen:?}");
    assert!(
        broker.is_running(),
        "the broker exited before health could be checked"
    );

    let status = broker
        .wait_for_exit(WAIT)
        .expect("broker exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(
        try_request(http, "GET", "/healthz", None).is_err(),
        "HTTP still answers after exit"
    );
}

#[test]
fn shutdown_timeout_caps_the_wait_for_a_silent_client() {
    let mut broker = Broker::builder()
        .with_http()
        .config("[server]\nshutdown_timeout = 1\n")
        .start();
    let mut client = silent_client(&broker);
    broker.terminate();
    let close = client
        .expect_connection_close(WAIT)
        .expect("connection.close");
    assert_eq!(close.reply_code, code::CONNECTION_FORCED);
    let status = broker
        .wait_for_exit(WAIT)
        .expect("broker exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    // The silent client would hold the connection for the 3 s close handshake timeout; the
    // 1 s shutdown timeout cut that short.
    assert!(
        broker.log_contains("shutdown timeout reached"),
        "{}",
        broker.log()
    );
}
