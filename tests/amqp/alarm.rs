//! The resource alarm (RabbitMQ's connection.blocked extension): above the memory limit,
//! a connection that publishes is told `connection.blocked` at its publish and no longer read
//! from, while connections that only consume keep working.

use crate::support::*;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use rosetta_tests::Broker;

/// One byte: the broker is always above it, so the alarm is on from the start.
const ALWAYS_ALARMED: &str = "[limits]\nmemory_limit = 1\n";

#[test]
fn publisher_is_blocked_while_the_memory_alarm_is_on_and_consumers_still_work() {
    run(async {
        let broker = Broker::start_with(ALWAYS_ALARMED);
        let setup = connect(&broker).await;
        let channel = setup.channel().await;
        let queue = unique("alarm");
        declare_queue(&channel, &queue).await;

        let publisher = connect(&broker).await;
        assert!(
            !publisher.conn.status().blocked(),
            "nobody is blocked before publishing"
        );
        let pub_channel = publisher.channel().await;
        pub_channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                b"first",
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        let blocked =
            rosetta_tests::eventually(WAIT, || async { publisher.conn.status().blocked() }).await;
        assert!(blocked, "the publisher received connection.blocked");

        // The publish waits for the alarm to clear (RabbitMQ blocks on the first publish
        // frame), while a connection that only consumes keeps working.
        tokio::time::sleep(QUIET).await;
        assert!(get(&channel, &queue, true).await.is_none());
        assert!(setup.status().connected());
    });
}
