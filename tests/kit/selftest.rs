//! The kit's own tests, against a stand-in "broker" shell script instead of the real binary.

use crate::{wait_until, Broker};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

/// Writes an executable stand-in that logs a listener line (port taken from its first run
/// number), echoes its arguments, and exits 0 on SIGTERM.
fn stand_in(dir: &tempfile::TempDir, body: &str) -> PathBuf {
    let path = dir.path().join("fake-rosetta");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    let mut perms = std::fs::metadata(&path).expect("stat").permissions();
    perms.set_mode(0o755);
    std::fs::set_permissions(&path, perms).expect("chmod");
    path
}

const LISTENING: &str = r#"
trap 'echo "got SIGTERM"; exit 0' TERM
echo "args: $*"
printf '\033[2m2024-01-01T00:00:00Z\033[0m \033[32m INFO\033[0m rosetta_server: listener opened protocol="amqp" addr=127.0.0.1:5999\n'
echo "config follows" >&2
cat "$2" >&2
while :; do sleep 0.05; done
"#;

#[test]
fn broker_start_reads_the_listener_address_from_the_log() {
    let scripts = tempfile::tempdir().expect("tempdir");
    let broker = Broker::builder()
        .binary(stand_in(&scripts, LISTENING))
        .start();
    assert_eq!(broker.amqp_port(), 5999);
    assert_eq!(broker.amqp_url(), "amqp://guest:guest@127.0.0.1:5999/%2f");
    assert!(broker.log_contains("args: --config"));
    assert!(broker.data_dir().starts_with(broker.dir()));
    // The config reaches the process, with the data dir and listener defaults.
    assert!(
        broker.wait_for_log("[mqtt]", Duration::from_secs(5)),
        "{}",
        broker.log()
    );
    let config = std::fs::read_to_string(broker.config_path()).expect("config");
    assert!(config.contains(&format!("path = \"{}\"", broker.data_dir().display())));
    assert!(config.contains("listen = \"127.0.0.1:0\""));
}

#[test]
fn broker_stop_sends_sigterm_and_returns_the_exit_status() {
    let scripts = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::builder()
        .binary(stand_in(&scripts, LISTENING))
        .start();
    assert!(broker.is_running());
    let status = broker.stop();
    assert!(status.success(), "{status}");
    assert!(broker.log_contains("got SIGTERM"), "{}", broker.log());
    assert!(!broker.is_running());
}

#[test]
fn broker_kill9_then_restart_runs_again_on_the_same_directory() {
    let scripts = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::builder()
        .binary(stand_in(&scripts, LISTENING))
        .start();
    let first_pid = broker.pid().expect("pid");
    broker.kill9();
    assert!(!broker.is_running());
    assert!(!broker.log_contains("got SIGTERM"));
    broker.restart();
    assert!(broker.is_running());
    assert_ne!(broker.pid(), Some(first_pid));
    assert_eq!(
        broker.log().matches("listener opened").count(),
        2,
        "{}",
        broker.log()
    );
}

#[test]
fn broker_that_exits_early_fails_the_start_with_its_log() {
    let scripts = tempfile::tempdir().expect("tempdir");
    let binary = stand_in(&scripts, "echo 'error: bad config' >&2; exit 3");
    let result = std::panic::catch_unwind(|| Broker::builder().binary(binary).start());
    let message = match result {
        Ok(_) => panic!("start should have failed"),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default(),
    };
    assert!(message.contains("exited"), "{message}");
    assert!(message.contains("error: bad config"), "{message}");
}

#[test]
fn extra_listeners_in_the_config_are_waited_for() {
    let scripts = tempfile::tempdir().expect("tempdir");
    let body = r#"
echo "listener opened protocol=amqp addr=127.0.0.1:1001"
echo "listener opened protocol=mqtt addr=127.0.0.1:1002"
echo "listener opened protocol=mqtt-ws addr=127.0.0.1:1003"
while :; do sleep 0.05; done
"#;
    let broker = Broker::builder()
        .binary(stand_in(&scripts, body))
        .config("[mqtt]\nenabled = true\nlisten = \"127.0.0.1:0\"")
        .start();
    assert_eq!(broker.addr("mqtt").map(|a| a.port()), Some(1002));
    // MQTT's WebSocket listener opens with it, so it is waited for too.
    assert_eq!(broker.addr("mqtt-ws").map(|a| a.port()), Some(1003));
    assert_eq!(broker.amqp_port(), 1001);
}

#[test]
fn dropping_a_broker_kills_its_process() {
    let scripts = tempfile::tempdir().expect("tempdir");
    let broker = Broker::builder()
        .binary(stand_in(&scripts, LISTENING))
        .start();
    let proc_dir = PathBuf::from(format!("/proc/{}", broker.pid().expect("pid")));
    assert!(proc_dir.exists());
    drop(broker);
    assert!(wait_until(Duration::from_secs(5), || !proc_dir.exists()));
}
