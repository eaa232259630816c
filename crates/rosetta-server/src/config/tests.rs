use std::net::SocketAddr;
use std::path::PathBuf;

use rosetta_core::auth::Tag;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, "broker.toml")
}

fn error(text: &str) -> (Option<usize>, Option<String>, String) {
    let err = parse(text).expect_err("config should be rejected");
    let shown = err.to_string();
    assert!(!shown.contains('\n'), "error spans lines: {shown}");
    match err {
        ConfigError::Invalid { line, key, .. } => (line, key, shown),
        other => panic!("expected an invalid-config error, got {other:?}"),
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

#[test]
fn default_toml_parses_and_equals_config_default() {
    let parsed = parse(DEFAULT_TOML).expect("default config is valid");
    assert_eq!(parsed, Config::default());
}

#[test]
fn empty_file_is_the_default_config() {
    // Except for `[[permissions]]`: broker.toml lists guest's entry, while leaving every entry
    // out gives every user full permissions, which for the default users and virtual hosts is
    // the same thing.
    let empty = parse("").expect("empty config");
    assert!(empty.permissions_are_implicit());
    assert_eq!(
        empty,
        Config {
            permissions: Vec::new(),
            ..Config::default()
        }
    );
}

#[test]
fn default_toml_sets_every_key() {
    for key in [
        "shutdown_timeout",
        "worker_threads",
        "path",
        "enabled",
        "listen",
        "ws_listen",
        "ws_allowed_origins",
        "ssl_cert_login",
        "heartbeat",
        "heartbeat_ms",
        "accept_queue_types",
        "max_headers",
        "max_header_length",
        "vhost",
        "max_packet_size",
        "max_inflight",
        "topic_alias_max",
        "max_keep_alive",
        "max_retained",
        "allow_anonymous",
        "max_subscriptions",
        "max_filters_per_subscribe",
        "max_topic_levels",
        "max_consumers_per_channel",
        "max_queues",
        "max_exchanges",
        "max_bindings",
        "max_transaction_frames",
        "max_transaction_bytes",
        "frame_max",
        "channel_max",
        "max_connections",
        "max_message_size",
        "max_queue_length",
        "max_queue_bytes",
        "consumer_buffer_bytes",
        "memory_limit",
        "disk_free_limit",
        "level",
        "format",
        "failed_login_delay_ms",
        "send_timeout_ms",
        "name",
        "password_hash",
        "tags",
        "loopback_only",
    ] {
        let set = DEFAULT_TOML
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{key} = ")));
        assert!(set, "broker.toml does not set `{key}`");
    }
}

#[test]
fn unknown_key_error_names_key_section_and_line() {
    let text = "[storage]\npath = \"x\"\n\n[amqp]\nenabled = true\nlistn = 5672\n";
    let (line, key, shown) = error(text);
    assert_eq!(line, Some(6));
    assert_eq!(key.as_deref(), Some("amqp.listn"));
    assert!(
        shown.starts_with("broker.toml line 6: unknown key `listn` in [amqp]"),
        "{shown}"
    );
}

#[test]
fn unknown_section_is_reported_at_its_header() {
    let (line, key, shown) = error("[amqp]\nheartbeat = 5\n\n[amqpp]\nenabled = true\n");
    assert_eq!(line, Some(4));
    assert_eq!(key.as_deref(), Some("amqpp"));
    assert!(shown.contains("unknown key `amqpp`"), "{shown}");
}

#[test]
fn unknown_key_in_array_of_tables_names_the_entry() {
    let text =
        "[[users]]\nname = \"a\"\npassword = \"a\"\n\n[[users]]\nname = \"b\"\npasword = \"b\"\n";
    let (line, key, shown) = error(text);
    assert_eq!(line, Some(7));
    assert_eq!(key.as_deref(), Some("users[1].pasword"));
    assert!(
        shown.contains("unknown key `pasword` in [[users]] (entry 2)"),
        "{shown}"
    );
}

#[test]
fn wrong_type_names_key_and_line() {
    let (line, key, shown) = error("[limits]\nchannel_max = 10\nframe_max = \"big\"\n");
    assert_eq!(line, Some(3));
    assert_eq!(key.as_deref(), Some("limits.frame_max"));
    assert!(
        shown.starts_with("broker.toml line 3: limits.frame_max: "),
        "{shown}"
    );
}

#[test]
fn syntax_error_has_a_line_and_one_line_message() {
    let (line, _, _) = error("[amqp]\nheartbeat = \n");
    assert_eq!(line, Some(2));
}

#[test]
fn bad_listen_value_is_rejected_with_key_and_line() {
    for bad in ["\"localhost\"", "\"not an address\"", "70000", "-1", "true"] {
        let (line, key, shown) = error(&format!("[mqtt]\nlisten = {bad}\n"));
        assert_eq!(line, Some(2), "{bad}: {shown}");
        assert_eq!(key.as_deref(), Some("mqtt.listen"), "{bad}: {shown}");
    }
}

#[test]
fn listen_accepts_a_bare_port_or_host_and_port() {
    let config = parse(
        "[amqp]\nlisten = 5673\n[mqtt]\nlisten = \"127.0.0.1:0\"\n\
         [stomp]\nlisten = \"[::]:61614\"\n[http]\nlisten = \"localhost:8080\"\n",
    )
    .expect("valid listen forms");
    assert_eq!(config.amqp.listen, addr("0.0.0.0:5673"));
    assert_eq!(config.mqtt.listen, addr("127.0.0.1:0"));
    assert_eq!(config.stomp.listen, addr("[::]:61614"));
    assert_eq!(config.http.listen, addr("127.0.0.1:8080"));
}

#[test]
fn partial_listener_section_keeps_its_own_default_port() {
    let config = parse("[stomp]\nenabled = false\n").expect("partial section");
    assert!(!config.stomp.enabled);
    assert_eq!(config.stomp.listen, addr("0.0.0.0:61613"));
}

#[test]
fn frame_max_below_minimum_names_key_and_line() {
    let (line, key, shown) = error("[limits]\nchannel_max = 1\nframe_max = 1024\n");
    assert_eq!(line, Some(3));
    assert_eq!(key.as_deref(), Some("limits.frame_max"));
    assert!(shown.contains("at least 4096"), "{shown}");
}

#[test]
fn empty_users_and_vhosts_are_rejected() {
    let (line, key, _) = error("users = []\n");
    assert_eq!((line, key.as_deref()), (Some(1), Some("users")));
    let (line, key, _) = error("vhosts = []\n");
    assert_eq!((line, key.as_deref()), (Some(1), Some("vhosts")));
}

#[test]
fn empty_and_duplicate_names_are_rejected() {
    let (line, key, _) = error("[[vhosts]]\nname = \"\"\n");
    assert_eq!((line, key.as_deref()), (Some(2), Some("vhosts[0].name")));
    let text =
        "[[users]]\nname = \"a\"\npassword = \"x\"\n[[users]]\nname = \"a\"\npassword = \"y\"\n";
    let (line, key, shown) = error(text);
    assert_eq!((line, key.as_deref()), (Some(5), Some("users[1].name")));
    assert!(shown.contains("duplicate"), "{shown}");
}

#[test]
fn clashing_listeners_are_rejected_unless_port_zero_or_disabled() {
    let (line, key, shown) = error("[amqp]\nlisten = 1883\n");
    assert_eq!(key.as_deref(), Some("mqtt.listen"));
    // mqtt.listen is left at its default, so there is no line to point at.
    assert_eq!(line, None);
    assert!(shown.starts_with("broker.toml: mqtt.listen: "), "{shown}");

    let (line, key, _) = error("[amqp]\nlisten = 9000\n[http]\nlisten = \"127.0.0.1:9000\"\n");
    assert_eq!((line, key.as_deref()), (Some(4), Some("http.listen")));

    parse("[amqp]\nlisten = 0\n[mqtt]\nlisten = 0\n").expect("port 0 never clashes");
    parse("[amqp]\nlisten = 1883\n[mqtt]\nenabled = false\n").expect("disabled never clashes");
    parse("[amqp]\nlisten = \"127.0.0.1:1883\"\n[mqtt]\nlisten = \"127.0.0.2:1883\"\n")
        .expect("distinct addresses on one port");
}

#[test]
fn invalid_log_format_names_the_key() {
    let (line, key, _) = error("[log]\nformat = \"xml\"\n");
    assert_eq!((line, key.as_deref()), (Some(2), Some("log.format")));
}

#[test]
fn guest_is_loopback_only_unless_overridden() {
    let user = |name: &str, loopback_only| User {
        name: name.into(),
        password: Some("p".into()),
        password_hash: None,
        tags: Vec::new(),
        loopback_only,
    };
    assert!(user("guest", None).is_loopback_only());
    assert!(!user("guest", Some(false)).is_loopback_only());
    assert!(!user("admin", None).is_loopback_only());
    assert!(user("admin", Some(true)).is_loopback_only());
}

#[test]
fn load_names_an_unreadable_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.toml");
    let shown = Config::load(&missing)
        .expect_err("missing file")
        .to_string();
    assert!(shown.contains("missing.toml"), "{shown}");
}

#[test]
fn load_reports_errors_under_the_file_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.toml");
    std::fs::write(&path, "[log]\nlevle = \"debug\"\n").expect("write");
    let shown = Config::load(&path).expect_err("unknown key").to_string();
    assert!(
        shown.starts_with(&format!("{} line 2:", path.display())),
        "{shown}"
    );
}

#[test]
fn shutdown_timeout_is_read_from_the_server_section() {
    let config = parse("[server]\nshutdown_timeout = 30\n").expect("valid");
    assert_eq!(config.server.shutdown_timeout, 30);
}

#[test]
fn worker_threads_are_read_from_the_server_section() {
    assert_eq!(parse("").expect("valid").server.worker_threads, 0);
    let config = parse("[server]\nworker_threads = 1\n").expect("valid");
    assert_eq!(config.server.worker_threads, 1);
}

#[test]
fn misspelt_server_key_is_named_with_its_line() {
    let (line, key, shown) = error("[server]\nshutdown_timout = 1\n");
    assert_eq!(
        (line, key.as_deref()),
        (Some(2), Some("server.shutdown_timout"))
    );
    assert!(
        shown.contains("unknown key `shutdown_timout` in [server]"),
        "{shown}"
    );
}

#[test]
fn negative_shutdown_timeout_names_the_key() {
    let (line, key, _) = error("[server]\nshutdown_timeout = -1\n");
    assert_eq!(
        (line, key.as_deref()),
        (Some(2), Some("server.shutdown_timeout"))
    );
}

#[test]
fn stomp_section_takes_heartbeat_and_frame_limits() {
    let config = parse("[stomp]\nheartbeat_ms = 0\nmax_headers = 5\nmax_header_length = 100\n")
        .expect("valid");
    assert_eq!(config.stomp.heartbeat_ms, 0);
    assert_eq!(config.stomp.max_headers, 5);
    assert_eq!(config.stomp.max_header_length, 100);
    assert_eq!(config.stomp.listen, addr("0.0.0.0:61613"));
    let (line, key, _) = error("[stomp]\nmax_header_length = 0\n");
    assert_eq!(
        (line, key.as_deref()),
        (Some(2), Some("stomp.max_header_length"))
    );
}

/// RabbitMQ's documented example: the hash of "test12" with salt 0x908DC60A.
const TEST12_HASH: &str = "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR";

#[test]
fn users_take_a_password_hash_tags_and_loopback_only() {
    let text = format!(
        "[[users]]\nname = \"alice\"\npassword_hash = \"{TEST12_HASH}\"\n\
         tags = [\"administrator\", \"monitoring\"]\nloopback_only = false\n\n\
         [[users]]\nname = \"bob\"\npassword = \"plain\"\ntags = [\"none\"]\n\n\
         [[users]]\nname = \"carol\"\npassword = \"x\"\nloopback_only = true\n"
    );
    let config = parse(&text).expect("valid users");
    let [alice, bob, carol] = &config.users[..] else {
        panic!("three users expected: {:?}", config.users);
    };
    let hash = alice.credential().expect("alice's hash");
    assert!(hash.verify("test12"));
    assert_eq!(
        alice.tag_set(),
        Ok(vec![Tag::Administrator, Tag::Monitoring])
    );
    assert!(!alice.is_loopback_only());
    // A plain password is hashed, with a fresh salt each time.
    let first = bob.credential().expect("bob's password");
    assert!(first.verify("plain"));
    assert_ne!(
        first.to_string(),
        bob.credential().expect("again").to_string()
    );
    assert_eq!(bob.tag_set(), Ok(vec![]));
    assert!(!bob.is_loopback_only());
    assert_eq!(carol.tag_set(), Ok(vec![]));
    assert!(carol.is_loopback_only());
}

#[test]
fn the_default_guest_logs_in_with_guest_as_administrator_from_loopback_only() {
    let config = Config::default();
    let [guest] = &config.users[..] else {
        panic!("one default user expected");
    };
    assert_eq!(guest.name, "guest");
    assert!(guest.credential().expect("guest's hash").verify("guest"));
    assert_eq!(guest.tag_set(), Ok(vec![Tag::Administrator]));
    assert!(guest.is_loopback_only());
}

#[test]
fn a_user_needs_exactly_one_of_password_and_password_hash() {
    let (line, key, shown) = error("[[users]]\nname = \"a\"\n");
    assert_eq!((line, key.as_deref()), (Some(1), Some("users[0].password")));
    assert!(shown.contains("password_hash"), "{shown}");

    let text =
        format!("[[users]]\nname = \"a\"\npassword = \"x\"\npassword_hash = \"{TEST12_HASH}\"\n");
    let (line, key, shown) = error(&text);
    assert_eq!(
        (line, key.as_deref()),
        (Some(4), Some("users[0].password_hash"))
    );
    assert!(shown.contains("not both"), "{shown}");

    let (line, key, shown) = error("[[users]]\nname = \"a\"\npassword = \"\"\n");
    assert_eq!((line, key.as_deref()), (Some(3), Some("users[0].password")));
    assert!(shown.contains("must not be empty"), "{shown}");
}

#[test]
fn an_empty_password_hash_is_a_user_who_logs_in_only_by_certificate() {
    let config = parse("[[users]]\nname = \"sensor-17\"\npassword_hash = \"\"\n").expect("valid");
    let [user] = &config.users[..] else {
        panic!("one user expected");
    };
    let hash = user.credential().expect("no password is a credential");
    assert!(hash.is_none());
    assert!(!hash.verify(""));
    let users = config.core_users().expect("core users");
    let local = "127.0.0.1".parse().expect("ip");
    assert!(users.check("sensor-17", "", local).is_err());
    assert_eq!(users.check_certificate(Some("sensor-17"), local), Ok(()));
}

#[test]
fn a_malformed_password_hash_names_the_key_and_the_reason() {
    let text = "[[users]]\nname = \"a\"\npassword = \"x\"\n\n[[users]]\nname = \"b\"\npassword_hash = \"not base64!\"\n";
    let (line, key, shown) = error(text);
    assert_eq!(
        (line, key.as_deref()),
        (Some(7), Some("users[1].password_hash"))
    );
    assert!(shown.contains("base64"), "{shown}");

    let (_, key, shown) = error("[[users]]\nname = \"a\"\npassword_hash = \"c2hvcnQ=\"\n");
    assert_eq!(key.as_deref(), Some("users[0].password_hash"));
    assert!(shown.contains("5 bytes"), "{shown}");
}

#[test]
fn an_unknown_tag_names_the_key_and_the_known_tags() {
    let (line, key, shown) =
        error("[[users]]\nname = \"a\"\npassword = \"x\"\ntags = [\"admin\"]\n");
    assert_eq!((line, key.as_deref()), (Some(4), Some("users[0].tags")));
    assert!(
        shown.contains("unknown tag `admin`, expected one of `administrator`, `management`, `monitoring`, `none`"),
        "{shown}"
    );
    let (_, key, _) =
        error("[[users]]\nname = \"a\"\npassword = \"x\"\ntags = \"administrator\"\n");
    assert_eq!(key.as_deref(), Some("users[0].tags"));
}

#[test]
fn failed_login_delay_is_read_and_bounded() {
    let config = parse("[limits]\nfailed_login_delay_ms = 0\n").expect("valid");
    assert_eq!(config.limits.failed_login_delay_ms, 0);
    assert_eq!(Config::default().limits.failed_login_delay_ms, 1000);
    let (line, key, shown) = error("[limits]\nfailed_login_delay_ms = 60000\n");
    assert_eq!(
        (line, key.as_deref()),
        (Some(2), Some("limits.failed_login_delay_ms"))
    );
    assert!(shown.contains("at most 10000"), "{shown}");
}

const TLS: &str =
    "[tls]\ncert_file = \"/etc/rosetta/server.pem\"\nkey_file = \"/etc/rosetta/server.key\"\n";

#[test]
fn tls_section_and_tls_listen_keys_are_read() {
    let text = format!(
        "{TLS}ca_file = \"/etc/rosetta/ca.pem\"\nverify_peer = true\nfail_if_no_peer_cert = true\n\
         [amqp]\ntls_listen = \"0.0.0.0:5671\"\n[mqtt]\ntls_listen = 8883\n\
         [stomp]\ntls_listen = \"0.0.0.0:61614\"\n[http]\ntls_listen = \"0.0.0.0:15691\"\n"
    );
    let config = parse(&text).expect("valid");
    let tls = config.tls.expect("[tls]");
    assert_eq!(tls.cert_file, PathBuf::from("/etc/rosetta/server.pem"));
    assert_eq!(tls.key_file, PathBuf::from("/etc/rosetta/server.key"));
    assert_eq!(tls.ca_file, Some(PathBuf::from("/etc/rosetta/ca.pem")));
    assert!(tls.verify_peer && tls.fail_if_no_peer_cert);
    assert_eq!(config.amqp.tls_listen, Some(addr("0.0.0.0:5671")));
    assert_eq!(config.mqtt.tls_listen, Some(addr("0.0.0.0:8883")));
    assert_eq!(config.stomp.tls_listen, Some(addr("0.0.0.0:61614")));
    assert_eq!(config.http.tls_listen, Some(addr("0.0.0.0:15691")));
    // Absent: no TLS listener, and no [tls] needed.
    let plain = Config::default();
    assert_eq!(plain.tls, None);
    assert_eq!(plain.amqp.tls_listen, None);
    assert_eq!(plain.http.tls_listen, None);
}

#[test]
fn tls_listen_without_a_tls_section_names_the_key() {
    for section in ["amqp", "mqtt", "stomp", "http"] {
        let (line, key, shown) = error(&format!("[{section}]\ntls_listen = 7000\n"));
        assert_eq!(line, Some(2), "{shown}");
        assert_eq!(key, Some(format!("{section}.tls_listen")));
        assert!(shown.contains("needs a [tls] section"), "{shown}");
    }
}

#[test]
fn tls_settings_that_cannot_work_name_their_key() {
    let (line, key, _) = error("[tls]\ncert_file = \"c\"\n");
    assert_eq!((line, key.as_deref()), (Some(1), Some("tls")));
    let (line, key, shown) = error(&format!("{TLS}verify_peer = true\n"));
    assert_eq!((line, key.as_deref()), (Some(4), Some("tls.verify_peer")));
    assert!(shown.contains("ca_file"), "{shown}");
    let (line, key, _) = error(&format!("{TLS}fail_if_no_peer_cert = true\n"));
    assert_eq!(
        (line, key.as_deref()),
        (Some(4), Some("tls.fail_if_no_peer_cert"))
    );
    let (line, key, _) = error(&format!("{TLS}verify = true\n"));
    assert_eq!((line, key.as_deref()), (Some(4), Some("tls.verify")));
}

#[test]
fn certificate_login_keys_are_read_and_need_verify_peer() {
    let verified = format!("{TLS}ca_file = \"/etc/rosetta/ca.pem\"\nverify_peer = true\n");
    let config = parse(&verified).expect("valid");
    let tls = config.tls.expect("[tls]");
    assert_eq!(tls.ssl_cert_login_from, CertLoginFrom::CommonName);
    assert!(!config.amqp.ssl_cert_login);
    assert!(!config.mqtt.ssl_cert_login && !config.stomp.ssl_cert_login);

    let text = format!(
        "{verified}ssl_cert_login_from = \"distinguished_name\"\n\
         [amqp]\nssl_cert_login = true\n\
         [mqtt]\nssl_cert_login = true\n[stomp]\nssl_cert_login = true\n"
    );
    let config = parse(&text).expect("valid");
    assert_eq!(
        config.tls.expect("[tls]").ssl_cert_login_from,
        CertLoginFrom::DistinguishedName
    );
    assert!(config.amqp.ssl_cert_login);
    assert!(config.mqtt.ssl_cert_login && config.stomp.ssl_cert_login);

    let (_, key, _) = error(&format!("{verified}ssl_cert_login_from = \"email\"\n"));
    assert_eq!(key.as_deref(), Some("tls.ssl_cert_login_from"));
    for section in ["amqp", "mqtt", "stomp"] {
        for text in [
            format!("[{section}]\nssl_cert_login = true\n"),
            format!("{TLS}[{section}]\nssl_cert_login = true\n"),
        ] {
            let (_, key, shown) = error(&text);
            assert_eq!(key, Some(format!("{section}.ssl_cert_login")), "{shown}");
            assert!(shown.contains("verify_peer"), "{shown}");
        }
    }
}

#[test]
fn a_tls_listener_may_not_share_a_port_with_another_listener() {
    let (line, key, shown) = error(&format!(
        "{TLS}[amqp]\nlisten = 5671\ntls_listen = \"127.0.0.1:5671\"\n"
    ));
    assert_eq!((line, key.as_deref()), (Some(6), Some("amqp.tls_listen")));
    assert!(shown.contains("amqp.listen"), "{shown}");
    parse(&format!(
        "{TLS}[amqp]\ntls_listen = 5671\n[mqtt]\ntls_listen = 8883\n"
    ))
    .expect("distinct ports");
    parse(&format!(
        "{TLS}[amqp]\nenabled = false\ntls_listen = 1883\n"
    ))
    .expect("a disabled listener's tls_listen never clashes");
}

#[test]
fn websocket_listeners_default_to_rabbitmq_ports_and_turn_off_with_false() {
    let config = parse("").expect("defaults");
    assert_eq!(config.mqtt.ws_listen, Some(addr("0.0.0.0:15675")));
    assert_eq!(config.stomp.ws_listen, Some(addr("0.0.0.0:15674")));
    assert_eq!(config.mqtt.ws_tls_listen, None);
    let config = parse("[mqtt]\nws_listen = false\n[stomp]\nws_listen = 8080\n").expect("off");
    assert_eq!(config.mqtt.ws_listen, None);
    assert_eq!(config.stomp.ws_listen, Some(addr("0.0.0.0:8080")));
    let (line, key, _) = error("[stomp]\nws_listen = true\n");
    assert_eq!((line, key.as_deref()), (Some(2), Some("stomp.ws_listen")));
    let (line, key, shown) = error("[mqtt]\nws_tls_listen = 15676\n");
    assert_eq!(
        (line, key.as_deref()),
        (Some(2), Some("mqtt.ws_tls_listen"))
    );
    assert!(shown.contains("[tls]"), "{shown}");
    let (_, key, _) = error("[stomp]\nws_listen = 15675\n");
    assert_eq!(key.as_deref(), Some("stomp.ws_listen"));
}

const ALICE: &str = "[[users]]\nname = \"alice\"\npassword = \"pw\"\n\n[[vhosts]]\nname = \"/\"\n";

#[test]
fn permissions_are_read_and_checked_against_users_vhosts_and_regex_syntax() {
    let ok = format!(
        "{ALICE}\n[[permissions]]\nuser = \"alice\"\nvhost = \"/\"\nconfigure = \"^a\\\\.\"\nwrite = \".*\"\nread = \"\"\n\n\
         [[topic_permissions]]\nuser = \"alice\"\nvhost = \"/\"\nexchange = \"amq.topic\"\nwrite = \"^sensors\\\\..*\"\nread = \".*\"\n"
    );
    let config = parse(&ok).expect("valid permissions");
    let directory = config.core_directory().expect("directory");
    let contents = directory.contents();
    let alice = contents.permissions.get("alice", "/").expect("alice on /");
    assert!(alice.configure.matches("a.q") && !alice.configure.matches("b.q"));
    assert!(
        !alice.read.matches("anything"),
        "an empty pattern matches nothing"
    );
    let topic = contents
        .permissions
        .topic("alice", "/", "amq.topic")
        .expect("topic permission");
    assert!(topic.write.matches("sensors.kitchen"));

    let entry = |user: &str, vhost: &str, configure: &str| {
        format!(
            "{ALICE}\n[[permissions]]\nuser = \"{user}\"\nvhost = \"{vhost}\"\nconfigure = \"{configure}\"\nwrite = \".*\"\nread = \".*\"\n"
        )
    };
    let (line, key, shown) = error(&entry("bob", "/", ".*"));
    assert_eq!(key.as_deref(), Some("permissions[0].user"));
    assert!(
        line.is_some() && shown.contains("unknown user `bob`"),
        "{shown}"
    );
    let (_, key, shown) = error(&entry("alice", "prod", ".*"));
    assert_eq!(key.as_deref(), Some("permissions[0].vhost"));
    assert!(shown.contains("unknown vhost `prod`"), "{shown}");
    let (_, key, shown) = error(&entry("alice", "/", "("));
    assert_eq!(key.as_deref(), Some("permissions[0].configure"));
    assert!(
        shown.contains("invalid regular expression `(`: unclosed group"),
        "{shown}"
    );
    assert!(!shown.contains('\n'), "one line: {shown}");
    let twice = format!(
        "{}{}",
        entry("alice", "/", ".*"),
        &entry("alice", "/", ".*")[ALICE.len()..]
    );
    let (_, key, _) = error(&twice);
    assert_eq!(key.as_deref(), Some("permissions[1].vhost"));
}

#[test]
fn without_permissions_every_user_may_do_everything_on_every_vhost() {
    let text = format!("{ALICE}\n[[vhosts]]\nname = \"other\"\n");
    let config = parse(&text).expect("valid");
    assert!(config.permissions_are_implicit());
    let directory = config.core_directory().expect("directory");
    assert!(directory.vhost_access("alice", "/"));
    assert!(directory.vhost_access("alice", "other"));
    assert!(!directory.vhost_access("anonymous", "/"));
}
