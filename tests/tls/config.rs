//! Configuration errors: a `tls_listen` without `[tls]`, and certificate files that cannot be
//! used, stop the broker with one line naming the key or the file.

use std::process::{Command, Output};

use rosetta_tests::broker_binary;

use super::*;

fn run(dir: &Path, config: &str, args: &[&str]) -> Output {
    let path = dir.join("broker.toml");
    std::fs::write(&path, config).expect("write config");
    Command::new(broker_binary())
        .arg("--config")
        .arg(&path)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run rosetta")
}

#[test]
fn tls_listen_without_a_tls_section_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(
        dir.path(),
        "[mqtt]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n",
        &["check-config"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 3") && stderr.contains("mqtt.tls_listen"),
        "{stderr}"
    );
    assert!(stderr.contains("[tls]"), "{stderr}");
}

#[test]
fn an_unreadable_certificate_stops_startup_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("Rosetta test CA");
    let server = pki.server("rosetta server");
    let key = dir.path().join("server.key");
    server.write(&dir.path().join("server.pem"), &key);
    let missing = dir.path().join("missing.pem");
    let config = format!(
        "[storage]\npath = \"data\"\n[amqp]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n\
         [mqtt]\nenabled = false\n[stomp]\nenabled = false\n[http]\nenabled = false\n\
         [tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        missing.display().to_string(),
        key.display().to_string()
    );
    let out = run(dir.path(), &config, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert!(stderr.contains("cert_file"), "{stderr}");
    // `check-config` reads the files too.
    let out = run(dir.path(), &config, &["check-config"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");

    // A key that is no key: named too.
    std::fs::write(&key, "garbage\n").expect("write");
    let config = config.replace(
        &format!("{:?}", missing.display().to_string()),
        &format!("{:?}", dir.path().join("server.pem").display().to_string()),
    );
    let out = run(dir.path(), &config, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&key.display().to_string()) && stderr.contains("key_file"),
        "{stderr}"
    );
}
