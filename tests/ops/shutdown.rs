//! SIGTERM in the middle of confirmed publishing: the broker exits 0 and, after a restart,
//! every message it confirmed is in the queue.

use crate::support::*;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use rosetta_tests::Broker;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const QUEUE: &str = "shutdown.q";
const PUBLISHERS: usize = 4;
/// Confirmed messages to wait for before SIGTERM, so the shutdown lands mid-stream.
const CONFIRMED_BEFORE_SIGTERM: usize = 100;

/// Publishes persistent messages one after another, each awaiting its confirm, until the
/// connection goes away. Returns the bodies the broker confirmed with an ack.
async fn publish_until_closed(
    channel: Channel,
    publisher: usize,
    progress: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut confirmed = Vec::new();
    for i in 0.. {
        let body = format!("p{publisher}-m{i}");
        let Ok(confirm) = channel
            .basic_publish(
                "".into(),
                QUEUE.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                persistent(),
            )
            .await
        else {
            break;
        };
        match confirm.await {
            Ok(confirmation) if confirmation.is_ack() => {
                confirmed.push(body);
                progress.fetch_add(1, Ordering::SeqCst);
            }
            // A nack or no answer: the broker promised nothing for this one.
            Ok(_) => {}
            Err(_) => break,
        }
    }
    confirmed
}

#[test]
fn sigterm_during_confirmed_publishing_exits_0_and_loses_no_confirmed_message() {
    let mut broker = Broker::builder().start();
    run(async {
        let client = connect(&broker).await;
        let setup = client.channel().await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        declare(&setup, QUEUE, durable, FieldTable::default()).await;

        let progress = Arc::new(AtomicUsize::new(0));
        let mut publishers = Vec::new();
        for p in 0..PUBLISHERS {
            let channel = client.confirm_channel().await;
            publishers.push(tokio::spawn(publish_until_closed(
                channel,
                p,
                progress.clone(),
            )));
        }
        let started = rosetta_tests::eventually(WAIT, || {
            let progress = progress.clone();
            async move { progress.load(Ordering::SeqCst) >= CONFIRMED_BEFORE_SIGTERM }
        })
        .await;
        assert!(
            started,
            "publishers got only {} confirms",
            progress.load(Ordering::SeqCst)
        );

        broker.terminate();
        let mut confirmed = Vec::new();
        for publisher in publishers {
            let bodies = tokio::time::timeout(WAIT, publisher)
                .await
                .expect("publisher stops once the broker closes the connection")
                .expect("publisher task");
            confirmed.extend(bodies);
        }
        let status = tokio::task::block_in_place(|| broker.wait_for_exit(WAIT))
            .expect("broker exits after SIGTERM");
        assert!(status.success(), "exit status {status}");

        tokio::task::block_in_place(|| broker.restart());
        let client = connect(&broker).await;
        let channel = client.channel().await;
        let stored: HashSet<String> = drain(&channel, QUEUE).await.into_iter().collect();
        let lost: Vec<&String> = confirmed.iter().filter(|b| !stored.contains(*b)).collect();
        assert!(
            lost.is_empty(),
            "{} of {} confirmed messages lost, e.g. {:?}",
            lost.len(),
            confirmed.len(),
            &lost[..lost.len().min(5)]
        );
        assert!(confirmed.len() >= CONFIRMED_BEFORE_SIGTERM);
        client.close().await;
    });
}
