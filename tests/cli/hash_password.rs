//! `rosetta hash-password`: reads a password from standard input and prints the hash that a
//! user's `password_hash` takes.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use lapin::{Connection, ConnectionProperties};
use rosetta_core::auth::PasswordHash;
use rosetta_tests::Broker;

use crate::{binary, text};

/// Runs `rosetta hash-password` in `dir` with `input` on standard input.
fn hash_password(dir: &Path, input: &[u8]) -> Output {
    let mut child = Command::new(binary())
        .arg("hash-password")
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rosetta hash-password");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write the password");
    child.wait_with_output().expect("hash-password output")
}

/// The hash printed for `input`, checked to be one line.
fn hash_of(input: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = hash_password(dir.path(), input);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let hash = stdout
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("one line expected: {stdout:?}"));
    assert!(!hash.contains('\n'), "one line expected: {stdout:?}");
    hash.to_owned()
}

fn connect(url: &str) -> Result<Connection, lapin::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            Connection::connect(url, ConnectionProperties::default()),
        )
        .await
        .expect("the login neither succeeded nor failed")
    })
}

#[test]
fn hash_password_output_logs_a_user_in_as_its_password_hash() {
    let hash = hash_of(b"s3cret-Pass\n");
    // RabbitMQ's SHA-256 format: base64 of 4 salt bytes and a 32-byte digest.
    assert_eq!(hash.len(), 48, "{hash}");
    let broker = Broker::start_with(&format!(
        "[limits]\nfailed_login_delay_ms = 0\n\n[[users]]\nname = \"app\"\npassword_hash = \"{hash}\"\ntags = [\"management\"]\n"
    ));
    let addr = broker.amqp_addr();
    let client = connect(&format!("amqp://app:s3cret-Pass@{addr}/%2f")).expect("app logs in");
    assert_eq!(client.status().username(), "app");
    let wrong = connect(&format!("amqp://app:s3cret-pass@{addr}/%2f"));
    assert!(wrong.is_err(), "a wrong password was let in");
    // The configured users replace the default guest.
    let guest = connect(&format!("amqp://guest:guest@{addr}/%2f"));
    assert!(guest.is_err(), "guest was let in");
}

#[test]
fn hash_password_salts_each_hash_afresh() {
    let first = hash_of(b"same");
    let second = hash_of(b"same");
    assert_ne!(first, second);
    for hash in [first, second] {
        let parsed = PasswordHash::parse(&hash).expect("RabbitMQ format");
        assert!(parsed.verify("same"));
    }
}

#[test]
fn hash_password_reads_only_the_first_line_without_its_line_ending() {
    let hash = hash_of(b"pass word\r\nsecond line\n");
    let parsed = PasswordHash::parse(&hash).expect("RabbitMQ format");
    assert!(parsed.verify("pass word"));
    // Without a final newline the whole input is the password.
    let hash = hash_of(b"no newline");
    assert!(PasswordHash::parse(&hash)
        .expect("RabbitMQ format")
        .verify("no newline"));
}

#[test]
fn hash_password_refuses_an_empty_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    for input in [&b""[..], b"\n", b"\r\n"] {
        let out = hash_password(dir.path(), input);
        assert_eq!(out.status.code(), Some(1), "input {input:?}");
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
        let stderr = text(&out.stderr);
        assert!(stderr.starts_with("error: empty password"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}
