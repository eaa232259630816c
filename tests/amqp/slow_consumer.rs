//! Slow consumers: a client that consumes with prefetch 0 (unlimited, the AMQP default) and
//! then stops reading its socket gets what fills its socket and its consumer buffer
//! (`consumer_buffer_bytes`), no more. Its backlog stays in the queue, on disk, the broker's
//! memory stays flat, other clients are served, and delivery resumes once it reads again. One
//! that reads nothing for `send_timeout_ms` is closed, and what it held goes back to the queue.

use std::time::{Duration, Instant};

use crate::paging::{publish_backlog, rss_bytes};
use crate::support::*;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use rosetta_tests::raw::{Args, RawConnection, FRAME_METHOD};
use rosetta_tests::{eventually, Broker};

const BASIC_CONSUME: (u16, u16) = (60, 20);
const BASIC_CONSUME_OK: (u16, u16) = (60, 21);
const BASIC_DELIVER: (u16, u16) = (60, 60);

/// 200 MiB of persistent backlog in 64 KiB messages (one body frame each).
const COUNT: usize = 3200;
const SIZE: usize = 64 * 1024;
/// The messages a stalled consumer holds are given back once its socket has taken nothing for
/// the send timeout, one second here.
const SEND_TIMEOUT_CONFIG: &str = "[limits]\nsend_timeout_ms = 1000\n";
/// Enough 64 KiB messages to fill both socket buffers and the consumer buffer.
const STALL_COUNT: usize = 400;
/// Messages the stalled client may be sent: its consumer buffer (1 MiB by default) and what the
/// two socket buffers absorb (a few MiB on loopback) make well under this.
const MAX_SENT: usize = 800;
/// Growth of the broker's RSS allowed while the client is stalled; pushing the backlog into its
/// outbox would cost the whole 200 MiB.
const MAX_GROWTH: u64 = 100 << 20;
/// How long the stalled client is watched.
const OBSERVE: Duration = Duration::from_secs(3);

#[test]
fn a_prefetch_zero_consumer_that_stops_reading_holds_its_backlog_on_disk_not_in_memory() {
    let broker = Broker::start();
    let pid = broker.pid().expect("broker pid");
    run(async {
        let queue = "slow.backlog";
        let client = connect(&broker).await;
        durable_backlog(&client, queue, COUNT).await;
        let baseline = rss_bytes(pid);

        let mut raw = raw_consumer(&broker, queue);
        // From here on the client reads nothing.

        assert!(
            eventually(WAIT, || async {
                message_count(&client, queue).await < COUNT as u32
            })
            .await,
            "the broker starts delivering"
        );
        let end = Instant::now() + OBSERVE;
        let mut peak = baseline;
        while Instant::now() < end {
            let ready = message_count(&client, queue).await as usize;
            assert!(
                ready >= COUNT - MAX_SENT,
                "{} messages were pushed to a client that reads nothing",
                COUNT - ready
            );
            peak = peak.max(rss_bytes(pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "broker RSS {} MiB before the stalled consumer, peak {} MiB",
            baseline >> 20,
            peak >> 20
        );
        assert!(
            peak < baseline + MAX_GROWTH,
            "broker RSS grew from {baseline} to {peak} bytes behind a stalled consumer"
        );

        // Another client is served promptly meanwhile.
        let started = Instant::now();
        let other = client.channel().await;
        let ping = unique("slow.ping");
        declare_queue(&other, &ping).await;
        publish(&other, "", &ping, "ping").await;
        assert!(
            eventually(Duration::from_secs(5), || async {
                get(&other, &ping, true).await.is_some()
            })
            .await,
            "a publish and get round trip completes"
        );
        assert!(started.elapsed() < Duration::from_secs(5));

        // Once the client reads again, deliveries resume past what was buffered.
        let mut delivered = 0;
        let reading = Instant::now() + TEST_DEADLINE / 2;
        while delivered < MAX_SENT + 100 {
            let left = reading.saturating_duration_since(Instant::now());
            let frame = raw.read_frame(left).expect("deliveries resume");
            if frame.kind == FRAME_METHOD && frame.is_method(BASIC_DELIVER) {
                delivered += 1;
            }
        }
        assert!(message_count(&client, queue).await as usize <= COUNT - delivered);
    });
}

/// A durable queue holding `count` persistent messages of [`SIZE`] bytes.
async fn durable_backlog(client: &Client, queue: &str, count: usize) {
    let channel = client.confirm_channel().await;
    declare(
        &channel,
        queue,
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await;
    publish_backlog(&channel, queue, 0..count, SIZE).await;
}

/// An acknowledging consumer on a raw connection, which reads only what the test reads.
fn raw_consumer(broker: &Broker, queue: &str) -> RawConnection {
    let mut raw = RawConnection::connect(broker.amqp_addr()).expect("connect");
    raw.handshake().expect("handshake");
    raw.open_channel(1).expect("channel.open");
    let consume = Args::new()
        .u16(0)
        .shortstr(queue)
        .shortstr("slow")
        // no-local, no-ack, exclusive, no-wait: an acknowledging consumer, and no basic.qos
        // before it, so its prefetch is 0 (unlimited).
        .bits(&[false, false, false, false])
        .table(&Vec::new());
    raw.send_method(1, BASIC_CONSUME, consume)
        .expect("basic.consume");
    raw.expect_method(BASIC_CONSUME_OK, WAIT)
        .expect("basic.consume-ok");
    raw
}

#[test]
fn a_consumer_whose_socket_takes_nothing_for_the_send_timeout_is_closed_and_its_messages_requeued()
{
    let broker = Broker::start_with(SEND_TIMEOUT_CONFIG);
    run(async {
        let queue = "slow.stalled";
        let client = connect(&broker).await;
        durable_backlog(&client, queue, STALL_COUNT).await;

        // Held open, and never read, until the end of the test. The log line below says the
        // broker's writes to it filled its socket; the messages are not counted out of the
        // queue first, as they may be back within a second.
        let _stalled = raw_consumer(&broker, queue);
        assert!(
            broker.wait_for_log("within the send timeout", WAIT),
            "the broker closes the stalled connection, and says why: {}",
            broker.log()
        );
        assert!(
            eventually(WAIT, || async {
                message_count(&client, queue).await == STALL_COUNT as u32
            })
            .await,
            "every message the stalled consumer held is back in the queue"
        );
    });
}

#[test]
fn a_consumer_that_reads_slowly_is_not_closed_by_the_send_timeout() {
    // The timeout counts time without progress, not the whole write: a client that keeps
    // reading keeps its connection. (Unit tests in the server's `connection::send` hold the
    // timer to that; this is the same over a real socket.)
    let broker = Broker::start_with("[limits]\nsend_timeout_ms = 2000\n");
    run(async {
        let queue = "slow.reader";
        let client = connect(&broker).await;
        durable_backlog(&client, queue, STALL_COUNT).await;
        let mut raw = raw_consumer(&broker, queue);
        // Reads a delivery every 10 ms, for two and a half send timeouts or until the queue is
        // empty (four seconds at that pace). TCP reports the broker's socket writable again
        // only once the client has taken a good part of the buffered bytes, so a reader slower
        // than that per timeout would look stalled; this one reads several MiB a second.
        let mut delivered = 0;
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end && delivered < STALL_COUNT {
            let frame = raw.read_frame(WAIT).expect("the connection stays open");
            if frame.kind == FRAME_METHOD && frame.is_method(BASIC_DELIVER) {
                delivered += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert!(delivered > 10, "{delivered} deliveries read");
        assert!(
            !broker.log_contains("within the send timeout"),
            "{}",
            broker.log()
        );
    });
}
