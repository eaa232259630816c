//! The `rosetta` command line as operators use it: exit codes and what is printed.
//!
//! Runs the already built binary (`cargo build -p rosetta`), found in the workspace target
//! directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod hash_password;
mod import_definitions;

fn workspace_root() -> PathBuf {
    let tests_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests_dir.parent().unwrap_or(tests_dir).to_path_buf()
}

fn binary() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        // Cargo resolves a relative target dir against where it was invoked; the workspace root
        // is the usual place.
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    };
    let path = target.join("debug").join("rosetta");
    assert!(
        path.is_file(),
        "{} not found: build it first with `cargo build -p rosetta`",
        path.display()
    );
    path
}

/// Runs `rosetta` with `args` in `dir`, so that no stray ./broker.toml is picked up.
fn rosetta(dir: &Path, args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run rosetta")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn default_config_path() -> String {
    workspace_root().join("broker.toml").display().to_string()
}

#[test]
fn check_config_accepts_the_default_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = rosetta(
        dir.path(),
        &["check-config", "--config", &default_config_path()],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "config OK");
}

#[test]
fn a_default_user_password_without_its_name_is_a_config_error_naming_the_variables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(binary())
        .args(["check-config"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("ROSETTA_DEFAULT_USER")
        .env("ROSETTA_DEFAULT_PASS", "pw")
        .output()
        .expect("run rosetta");
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("ROSETTA_DEFAULT_PASS") && stderr.contains("ROSETTA_DEFAULT_USER"),
        "{stderr}"
    );
}

#[test]
fn check_config_without_a_file_uses_the_built_in_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = rosetta(dir.path(), &["check-config"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "config OK");
}

#[test]
fn check_config_picks_up_broker_toml_in_the_working_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("broker.toml"), "[amqp]\nheartbeat = -1\n").expect("write");
    let out = rosetta(dir.path(), &["check-config"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("amqp.heartbeat"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_config_rejects_an_unknown_key_naming_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("typo.toml");
    let config = "[storage]\npath = \"./data\"\n\n[amqp]\nenabled = true\nlistn = 5672\n";
    std::fs::write(&path, config).expect("write config");
    let path = path.display().to_string();

    let out = rosetta(dir.path(), &["check-config", "--config", &path]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("`listn`"), "{stderr}");
    assert!(stderr.contains("line 6"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn check_config_rejects_an_invalid_value_naming_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("small.toml");
    std::fs::write(&path, "[limits]\nframe_max = 512\n").expect("write config");

    let out = rosetta(
        dir.path(),
        &["--config", &path.display().to_string(), "check-config"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("limits.frame_max"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[test]
fn print_default_config_output_is_the_default_file_and_checks_ok() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = rosetta(dir.path(), &["print-default-config"]);
    assert_eq!(out.status.code(), Some(0));
    let printed = text(&out.stdout);
    let shipped = std::fs::read_to_string(default_config_path()).expect("read broker.toml");
    assert_eq!(printed, shipped);

    let path = dir.path().join("printed.toml");
    std::fs::write(&path, &printed).expect("write printed config");
    let out = rosetta(
        dir.path(),
        &["check-config", "--config", &path.display().to_string()],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
}

#[test]
fn running_with_a_missing_config_file_exits_1_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = rosetta(dir.path(), &["--config", "missing.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("missing.toml"), "{stderr}");
}

#[test]
fn running_with_an_invalid_config_exits_1_without_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[mqtt]\nlisten = \"nowhere\"\n").expect("write config");
    let out = rosetta(dir.path(), &["--config", &path.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("mqtt.listen"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A store with one exchange, one queue and one message in it, closed, under `dir/data`; and a
/// config naming it.
fn stopped_store(dir: &Path) -> (PathBuf, PathBuf) {
    use rosetta_core::message::{Message, Properties, Table};
    use rosetta_core::store::{ExchangeRecord, Store};

    let data = dir.join("data");
    let store = rosetta_store::SledStore::open(&data).expect("store opens");
    store
        .save_exchange(&ExchangeRecord {
            vhost: "/".into(),
            name: "x".into(),
            kind: "direct".into(),
            auto_delete: false,
            internal: false,
            arguments: Table::new(),
        })
        .expect("exchange");
    store
        .save_queue(&rosetta_core::store::QueueRecord {
            id: 1,
            vhost: "/".into(),
            name: "q".into(),
            auto_delete: false,
            arguments: Table::new(),
            owner: None,
        })
        .expect("queue");
    let mut message = Message::new("x", "k", Properties::default(), "body".into());
    message.id = 1;
    store
        .enqueue(&std::sync::Arc::new(message), &[(1, 1)])
        .expect("enqueue");
    store.sync().expect("sync");
    drop(store);
    let config = dir.join("store.toml");
    std::fs::write(
        &config,
        format!("[storage]\npath = {:?}\n", data.display().to_string()),
    )
    .expect("write config");
    (data, config)
}

/// Runs `check-store`. sled's background threads of a store just closed may hold its lock for
/// a moment, and the command refuses a locked store, so a "locked" refusal is retried until a
/// deadline.
fn check_store(dir: &Path, config: &Path) -> Output {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = rosetta(
            dir,
            &["check-store", "--config", &config.display().to_string()],
        );
        if !text(&out.stderr).contains("locked") || std::time::Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn check_store_on_a_sound_store_exits_0_with_the_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, config) = stopped_store(dir.path());
    let out = check_store(dir.path(), &config);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("exchanges: 1\n"), "{stdout}");
    assert!(stdout.contains("queues: 1\n"), "{stdout}");
    assert!(stdout.contains("entries: 1\n"), "{stdout}");
    assert!(stdout.contains("segment bodies: 1\n"), "{stdout}");
    assert!(stdout.ends_with("store OK\n"), "{stdout}");
}

#[test]
fn check_store_names_a_planted_bad_record_and_exits_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, config) = stopped_store(dir.path());
    {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match sled::open(&data) {
                Ok(db) => break db,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("raw open: {e:?}"),
            }
        };
        let queues = db.open_tree("queues").expect("tree");
        queues
            .insert(b"/\0bad", &b"not a record"[..])
            .expect("plant");
        db.flush().expect("flush");
    }
    let out = check_store(dir.path(), &config);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("bad record: tree queues, key 2f00626164"),
        "{stdout}"
    );
    assert!(stdout.ends_with("store has problems\n"), "{stdout}");
}
