//! A data directory whose file system fills up under publisher confirms: the broker may stop
//! confirming, but it must never confirm a message that is not on disk. The data directory is a
//! small tmpfs (so the disk really fills, with ENOSPC from the kernel, not a simulation), grown
//! afterwards so the store's retry can succeed, and the broker is then killed and restarted to
//! see what the disk actually holds.
//!
//! Mounting needs root; without it the test says so on stderr and returns.

use crate::support::*;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use rosetta_tests::Broker;
use std::cell::Cell;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Persistent messages published; together they are far larger than the small disk.
const MESSAGES: u32 = 80;
const BODY_BYTES: usize = 1024 * 1024;
/// The tmpfs while it is "full": room for well under half of the messages.
const SMALL_MIB: u64 = 48;
/// The tmpfs once grown: room for all of them and the store's bookkeeping.
const LARGE_MIB: u64 = 256;
/// The header carrying each message's sequence number (its body starts with it too).
const SEQ_HEADER: &str = "x-seq";
const WRITE_FAILURES: &str = "rosetta_store_write_failures_total";
const ALARM: &str = "rosetta_resource_alarm";
/// How long each phase may take: publishing until the disk fails, the retry after growing it.
const PHASE: Duration = Duration::from_secs(30);

/// A tmpfs mounted on a fresh temporary directory, unmounted when dropped (also while a failing
/// test unwinds), so no mount outlives the test whatever happens.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB, or says why it cannot.
    fn mount(mib: u64) -> Result<Tmpfs, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not running as root".to_string());
        }
        let dir = tempfile::Builder::new()
            .prefix("rosetta-full-disk-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        mount_command(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={mib}m"),
            "tmpfs",
            &dir.path().to_string_lossy(),
        ])?;
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Grows (or shrinks) the mounted file system in place; its files stay.
    fn resize(&self, mib: u64) {
        mount_command(&[
            "-o",
            &format!("remount,size={mib}m"),
            &self.path().to_string_lossy(),
        ])
        .unwrap_or_else(|e| panic!("cannot resize the tmpfs: {e}"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let path = self.path().to_string_lossy().into_owned();
        let unmounted = run_tool("umount", &[&path])
            // Something still holding a file there (a broker that would not die) must not
            // leave the mount behind: detach it now, the kernel frees it when released.
            .or_else(|_| run_tool("umount", &["-l", &path]));
        if let Err(e) = unmounted {
            eprintln!("cannot unmount the test tmpfs at {path}: {e}");
        }
    }
}

fn mount_command(args: &[&str]) -> Result<(), String> {
    run_tool("mount", args)
}

fn run_tool(tool: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {tool}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{tool} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Message `seq`'s body: its number in text, then bytes that differ from every other message's,
/// so a body recovered under the wrong entry or torn halfway is noticed.
fn body(seq: u32) -> Vec<u8> {
    let mut body = format!("message {seq:03}\n").into_bytes();
    let mut state = seq.wrapping_mul(0x9E37_79B9) | 1;
    while body.len() < BODY_BYTES {
        // xorshift32
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        body.extend_from_slice(&state.to_le_bytes());
    }
    body.truncate(BODY_BYTES);
    body
}

fn properties(seq: u32) -> BasicProperties {
    persistent().with_headers(table(&[(SEQ_HEADER, long(i64::from(seq)))]))
}

/// What the broker answered to each publish, by sequence number.
#[derive(Debug, Default)]
struct Answers {
    /// Publishes handed to lapin (their frames went out or are queued to go).
    sent: u32,
    acked: BTreeSet<u32>,
    nacked: BTreeSet<u32>,
    /// Confirms that ended in a client error instead of an answer.
    failed: Vec<(u32, String)>,
}

impl Answers {
    fn answered(&self) -> usize {
        self.acked.len() + self.nacked.len() + self.failed.len()
    }
}

type Shared = Arc<Mutex<Answers>>;

fn answers(shared: &Shared) -> std::sync::MutexGuard<'_, Answers> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Publishes every message without waiting for confirms (a blocked connection would otherwise
/// stall the test before the disk fills) and records each answer as it arrives.
fn publish_everything(channel: Channel, queue: String, shared: Shared) {
    tokio::spawn(async move {
        for seq in 0..MESSAGES {
            let published = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body(seq),
                    properties(seq),
                )
                .await;
            let confirm = match published {
                Ok(confirm) => confirm,
                Err(e) => {
                    answers(&shared)
                        .failed
                        .push((seq, format!("publish: {e:?}")));
                    return;
                }
            };
            answers(&shared).sent += 1;
            let shared = shared.clone();
            tokio::spawn(async move {
                let outcome = confirm.await;
                let mut answers = answers(&shared);
                match outcome {
                    Ok(c) if c.is_ack() => {
                        answers.acked.insert(seq);
                    }
                    Ok(c) if c.is_nack() => {
                        answers.nacked.insert(seq);
                    }
                    Ok(c) => answers.failed.push((seq, format!("{c:?}"))),
                    Err(e) => answers.failed.push((seq, format!("{e:?}"))),
                }
            });
        }
    });
}

/// The value of an unlabelled series on the broker's `/metrics`.
async fn metric(http: SocketAddr, name: &str) -> f64 {
    let mut stream = tokio::net::TcpStream::connect(http)
        .await
        .unwrap_or_else(|e| panic!("connect to {http}: {e}"));
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the scrape request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("read the scrape");
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "/metrics answered {}",
        response.lines().next().unwrap_or("nothing")
    );
    response
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not on /metrics"))
}

/// Waits until `name` reaches at least `at_least`; returns the value seen, or panics with it.
async fn wait_for_metric_at_least(http: SocketAddr, name: &str, at_least: f64) -> f64 {
    let last = Cell::new(f64::NAN);
    let reached = rosetta_tests::eventually(PHASE, || {
        let last = &last;
        async move {
            last.set(metric(http, name).await);
            last.get() >= at_least
        }
    })
    .await;
    assert!(
        reached,
        "{name} did not reach {at_least} within {PHASE:?} (last {})",
        last.get()
    );
    last.get()
}

#[test]
fn a_full_disk_delays_confirms_but_every_confirmed_message_survives_a_kill() {
    // Declared before the broker so it is dropped after it: the broker (killed by its drop)
    // must let go of its files before the tmpfs can be unmounted.
    let disk = match Tmpfs::mount(SMALL_MIB) {
        Ok(disk) => disk,
        Err(reason) => {
            // Straight to the process's stderr: libtest captures `eprintln!` of a passing test,
            // and a skip must not read as a pass.
            let mut stderr = std::io::stderr();
            let _ = writeln!(
                stderr,
                "skipped: needs root to mount a tmpfs ({reason}): \
                 full_disk::a_full_disk_delays_confirms_but_every_confirmed_message_survives_a_kill"
            );
            return;
        }
    };
    let data = disk.path().to_string_lossy().into_owned();
    // The disk alarm is off (limit 0), so publishers are not paused before the disk is full
    // and the store's writes really fail.
    let mut broker = Broker::builder()
        .with_http()
        .config(&format!(
            "[storage]\npath = {data:?}\n[limits]\ndisk_free_limit = 0\n"
        ))
        .start();
    let queue = "full-disk.confirms".to_string();
    let shared: Shared = Arc::default();
    let started = Instant::now();
    run(async {
        let http = broker.http_addr();
        let client = connect(&broker).await;
        let channel = client.confirm_channel().await;
        declare(
            &channel,
            &queue,
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await;
        publish_everything(channel.clone(), queue.clone(), shared.clone());

        // The disk fills and the store says so.
        wait_for_metric_at_least(http, WRITE_FAILURES, 1.0).await;
        assert!(
            broker.wait_for_log("store write failed; retrying", PHASE),
            "no `store write failed` line in the log"
        );
        // Let a few retries fail (0.1 s, 0.2 s, 0.4 s apart), so confirms the broker sent just
        // before its first failure have arrived, then watch two more fail: not one confirm may
        // arrive while nothing new reaches the disk.
        let failures = wait_for_metric_at_least(http, WRITE_FAILURES, 4.0).await;
        let acked_while_full = answers(&shared).acked.clone();
        wait_for_metric_at_least(http, WRITE_FAILURES, failures + 2.0).await;
        {
            let answers = answers(&shared);
            assert_eq!(
                answers.acked, acked_while_full,
                "messages were confirmed while every write failed"
            );
            assert!(
                answers.acked.len() < MESSAGES as usize,
                "every message was confirmed on a disk that cannot hold them: {answers:?}"
            );
            // Every confirmed message holds a whole MiB on the small disk.
            let room = SMALL_MIB * 1024 * 1024 / BODY_BYTES as u64;
            assert!(
                answers.acked.len() as u64 <= room,
                "{} messages confirmed, but the disk holds at most {room}",
                answers.acked.len()
            );
            assert!(
                answers.failed.is_empty(),
                "publishes failed: {:?}",
                answers.failed
            );
        }
        assert_eq!(
            metric(http, ALARM).await,
            1.0,
            "the resource alarm is off while writes fail"
        );
        assert!(broker.is_running(), "the broker died with its disk full");
        assert!(
            client.status().connected(),
            "the publisher's connection was closed while the disk was full"
        );
        let (acked_before, nacked_before, sent_before) = {
            let answers = answers(&shared);
            (answers.acked.len(), answers.nacked.len(), answers.sent)
        };
        let blocked = client.status().blocked();

        // Room again: the store's retry writes the pending batch and the confirms come out, and
        // the rest of the messages follow.
        disk.resize(LARGE_MIB);
        let all_answered = rosetta_tests::eventually(PHASE, || {
            let shared = shared.clone();
            async move { answers(&shared).answered() == MESSAGES as usize }
        })
        .await;
        assert!(
            all_answered,
            "not every publish was answered within {PHASE:?} of growing the disk: {:?}",
            answers(&shared)
        );
        assert!(
            broker.wait_for_log("store writes succeed again", PHASE),
            "no `store writes succeed again` line in the log"
        );
        let answers_now = std::mem::take(&mut *answers(&shared));
        assert!(
            answers_now.failed.is_empty(),
            "confirms failed: {:?}",
            answers_now.failed
        );
        eprintln!(
            "while the disk was full: {sent_before} published, {acked_before} acked, \
             {nacked_before} nacked, publisher blocked: {blocked}; after growing it: \
             {} acked, {} nacked",
            answers_now.acked.len(),
            answers_now.nacked.len()
        );

        // A crash right after the last confirm: the disk must hold everything confirmed.
        broker.kill9();
        drop(channel);
        drop(client);
        broker.restart();
        let client = connect(&broker).await;
        let reader = client.channel().await;
        let mut recovered = BTreeSet::new();
        while let Some(message) = get(&reader, &queue, true).await {
            let delivery = message.delivery;
            let seq = header(&headers(&delivery), SEQ_HEADER)
                .and_then(as_int)
                .and_then(|seq| u32::try_from(seq).ok())
                .unwrap_or_else(|| panic!("a recovered message has no {SEQ_HEADER} header"));
            assert!(
                seq < MESSAGES,
                "recovered message {seq} was never published"
            );
            assert!(
                delivery.data == body(seq),
                "message {seq} came back with a different body ({} bytes, starting {:?})",
                delivery.data.len(),
                String::from_utf8_lossy(&delivery.data[..delivery.data.len().min(16)])
            );
            assert!(recovered.insert(seq), "message {seq} was recovered twice");
        }
        // Only acked messages must be there: a nacked one may or may not have reached the disk.
        let lost: Vec<u32> = answers_now.acked.difference(&recovered).copied().collect();
        assert!(
            lost.is_empty(),
            "{} confirmed messages were lost: {lost:?} (acked {}, nacked {:?}, recovered {})",
            lost.len(),
            answers_now.acked.len(),
            answers_now.nacked,
            recovered.len()
        );
        eprintln!(
            "recovered {} of {MESSAGES} messages after the kill in {:?}",
            recovered.len(),
            started.elapsed()
        );
    });
}
