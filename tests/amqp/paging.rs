//! Paging: a durable queue's persistent backlog waits on disk, not in the broker's memory, and
//! still comes back complete and in order, across a crash too. Each test has its own broker with
//! a small `queue_resident_bytes`, so nearly every message is paged out.

use crate::support::*;
use lapin::options::{BasicAckOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use rosetta_tests::Broker;

/// About ten 1 KiB messages per queue stay in memory.
const SMALL_BUDGET: &str = "[limits]\nqueue_resident_bytes = 10240\n";
/// Confirms awaited together when publishing a backlog.
const CONFIRM_WINDOW: usize = 500;

/// A body of `size` bytes that names message `i` and differs from every other message's.
fn body(i: usize, size: usize) -> Vec<u8> {
    let mut b = format!("message {i:07} ").into_bytes();
    b.extend((0..size.saturating_sub(b.len())).map(|k| b'a' + ((i + k) % 26) as u8));
    b
}

/// Publishes bodies `range` persistently to `queue`, waiting for confirms a window at a time.
pub(crate) async fn publish_backlog(
    channel: &Channel,
    queue: &str,
    range: std::ops::Range<usize>,
    size: usize,
) {
    let mut confirms = Vec::with_capacity(CONFIRM_WINDOW);
    for i in range {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body(i, size),
                persistent(),
            )
            .await
            .unwrap_or_else(|e| panic!("basic.publish {i}: {e:?}"));
        confirms.push(confirm);
        if confirms.len() == CONFIRM_WINDOW {
            await_acks(&mut confirms).await;
        }
    }
    await_acks(&mut confirms).await;
}

async fn await_acks(confirms: &mut Vec<lapin::PublisherConfirm>) {
    for confirm in confirms.drain(..) {
        let confirmation = tokio::time::timeout(WAIT, confirm)
            .await
            .expect("confirm within the deadline")
            .expect("confirm");
        assert!(confirmation.is_ack(), "publish not acked: {confirmation:?}");
    }
}

/// Consumes `range.len()` messages with manual acks on a channel of its own and checks each is
/// the next expected body. Closing the channel at the end returns what was prefetched beyond
/// the range to the queue, in place.
async fn consume_in_order(
    client: &Client,
    queue: &str,
    range: std::ops::Range<usize>,
    size: usize,
) {
    let channel = client.channel().await;
    channel
        .basic_qos(200, BasicQosOptions::default())
        .await
        .expect("basic.qos");
    let mut consumer = consume(&channel, queue, false).await;
    for i in range {
        let delivery = next(&mut consumer).await;
        assert!(
            delivery.data == body(i, size),
            "message {i}: got {:?}",
            text(&delivery).get(..16)
        );
        delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("basic.ack");
    }
    channel
        .close(200, "done".into())
        .await
        .expect("channel.close");
}

#[test]
fn a_paged_backlog_drains_in_order_before_and_after_kill_nine() {
    let mut broker = Broker::start_with(SMALL_BUDGET);
    const TOTAL: usize = 5_000;
    const BEFORE_KILL: usize = 1_000;
    const SIZE: usize = 1024;
    run(async {
        let queue = "paged.backlog";
        {
            let client = connect(&broker).await;
            let channel = client.confirm_channel().await;
            declare(
                &channel,
                queue,
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await;
            publish_backlog(&channel, queue, 0..TOTAL, SIZE).await;
            assert_eq!(message_count(&client, queue).await, TOTAL as u32);
            // The head is read back from the store while the broker runs.
            consume_in_order(&client, queue, 0..BEFORE_KILL, SIZE).await;
            wait_for_count(&client, queue, (TOTAL - BEFORE_KILL) as u32).await;
            // Acks are not fsynced on their own; a confirmed publish after them is, and its
            // group commit covers every write before it, the acks included.
            declare(
                &channel,
                "paged.marker",
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await;
            publish_persistent(&channel, "paged.marker", "flush").await;
        }
        broker.kill9();
        broker.restart();
        let client = connect(&broker).await;
        assert_eq!(
            message_count(&client, queue).await,
            (TOTAL - BEFORE_KILL) as u32
        );
        consume_in_order(&client, queue, BEFORE_KILL..TOTAL, SIZE).await;
        let channel = client.channel().await;
        assert!(
            get(&channel, queue, true).await.is_none(),
            "nothing beyond the backlog"
        );
    });
}

/// VmRSS of process `pid`, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

#[test]
fn a_backlog_far_larger_than_memory_use_keeps_the_broker_rss_low() {
    // 192 MiB of bodies in 4 KiB messages: large against the broker's footprint, yet quick to
    // publish in a debug build.
    const COUNT: usize = 48 * 1024;
    const SIZE: usize = 4096;
    let broker = Broker::start_with(SMALL_BUDGET);
    let pid = broker.pid().expect("broker pid");
    run(async {
        let queue = "paged.rss";
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        declare(
            &channel,
            queue,
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await;
        let before = rss_bytes(pid);
        publish_backlog(&channel, queue, 0..COUNT, SIZE).await;
        assert_eq!(message_count(&client, queue).await, COUNT as u32);
        let after = rss_bytes(pid);
        let data = (COUNT * SIZE) as u64;
        eprintln!(
            "broker RSS {} MiB before, {} MiB after {} MiB of backlog",
            before >> 20,
            after >> 20,
            data >> 20
        );
        assert!(
            after < data / 2,
            "broker RSS {after} bytes holds a large part of the {data}-byte backlog"
        );
        // The paged-out head reads back in order.
        consume_in_order(&client, queue, 0..100, SIZE).await;
    });
}
