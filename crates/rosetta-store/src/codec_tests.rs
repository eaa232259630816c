use super::*;

fn every_value() -> Table {
    let mut inner = Table::new();
    inner.insert(
        "deep".into(),
        Value::Array(vec![Value::Void, Value::Table(Table::new())]),
    );
    inner.insert("n".into(), Value::I64(-1));

    let mut t = Table::new();
    t.insert("bool".into(), Value::Bool(true));
    t.insert("i8".into(), Value::I8(-8));
    t.insert("u8".into(), Value::U8(200));
    t.insert("i16".into(), Value::I16(-1600));
    t.insert("u16".into(), Value::U16(60000));
    t.insert("i32".into(), Value::I32(i32::MIN));
    t.insert("u32".into(), Value::U32(u32::MAX));
    t.insert("i64".into(), Value::I64(i64::MIN));
    t.insert("f32".into(), Value::F32(1.5));
    t.insert("f64".into(), Value::F64(-2.25e300));
    t.insert("decimal".into(), Value::Decimal(2, 12345));
    t.insert("str".into(), Value::Str("héllo".into()));
    t.insert(
        "bytes".into(),
        Value::Bytes(Bytes::from_static(&[0, 255, 7])),
    );
    t.insert("timestamp".into(), Value::Timestamp(1_700_000_000));
    t.insert("table".into(), Value::Table(inner.clone()));
    t.insert(
        "array".into(),
        Value::Array(vec![
            Value::Str("a".into()),
            Value::Table(inner),
            Value::Array(vec![Value::U8(1)]),
        ]),
    );
    t.insert("void".into(), Value::Void);
    t
}

fn full_message() -> Message {
    Message {
        id: 0x0123_4567_89ab_cdef,
        exchange: "amq.topic".into(),
        routing_key: "sensors.t1".into(),
        properties: Properties {
            content_type: Some("application/json".into()),
            content_encoding: Some("gzip".into()),
            headers: Some(every_value()),
            delivery_mode: Some(2),
            priority: Some(9),
            correlation_id: Some("corr".into()),
            reply_to: Some("amq.rabbitmq.reply-to".into()),
            expiration: Some("60000".into()),
            message_id: Some("m-1".into()),
            timestamp: Some(u64::MAX),
            kind: Some("reading".into()),
            user_id: Some("guest".into()),
            app_id: Some("probe".into()),
            cluster_id: Some("c1".into()),
        },
        body: Bytes::from_static(b"{\"t\":21.5}"),
    }
}

#[test]
fn message_with_every_value_variant_round_trips() {
    let m = full_message();
    let encoded = encode_message(&m);
    assert_eq!(decode_message(&encoded, b"k").expect("decodes"), m);
}

#[test]
fn message_without_properties_round_trips() {
    let m = Message::new("", "q", Properties::default(), Bytes::new());
    assert_eq!(
        decode_message(&encode_message(&m), b"k").expect("decodes"),
        m
    );
}

#[test]
fn records_round_trip() {
    let e = ExchangeRecord {
        vhost: "/".into(),
        name: "logs".into(),
        kind: "topic".into(),
        auto_delete: true,
        internal: true,
        arguments: every_value(),
    };
    assert_eq!(
        decode_exchange(&encode_exchange(&e), b"k").expect("exchange"),
        e
    );

    let q = QueueRecord {
        id: u64::MAX,
        vhost: "v".into(),
        name: "q".into(),
        auto_delete: true,
        arguments: every_value(),
        owner: None,
    };
    assert_eq!(decode_queue(&encode_queue(&q), b"k").expect("queue"), q);

    let b = BindingRecord {
        vhost: "v".into(),
        source: "amq.topic".into(),
        destination: "q".into(),
        destination_is_queue: true,
        routing_key: "a.*.#".into(),
        arguments: every_value(),
    };
    assert_eq!(
        decode_binding(&encode_binding(&b), b"k").expect("binding"),
        b
    );
}

#[test]
fn truncated_message_at_every_length_is_an_error() {
    let encoded = encode_message(&full_message());
    for len in 0..encoded.len() {
        let err = decode_message(&encoded[..len], b"k").expect_err("truncated input must fail");
        assert!(
            matches!(err, StoreError::Corrupt { .. }),
            "length {len}: {err}"
        );
    }
}

#[test]
fn truncated_records_at_every_length_are_errors() {
    let q = QueueRecord {
        id: 7,
        vhost: "v".into(),
        name: "q".into(),
        auto_delete: false,
        arguments: every_value(),
        owner: None,
    };
    let encoded = encode_queue(&q);
    for len in 0..encoded.len() {
        assert!(decode_queue(&encoded[..len], b"k").is_err(), "length {len}");
    }
}

#[test]
fn trailing_bytes_wrong_kind_and_wrong_version_are_errors() {
    let mut encoded = encode_message(&full_message());
    encoded.push(0);
    assert!(decode_message(&encoded, b"k").is_err());

    let exchange = encode_exchange(&ExchangeRecord {
        vhost: "/".into(),
        name: "x".into(),
        kind: "direct".into(),
        auto_delete: false,
        internal: false,
        arguments: Table::new(),
    });
    assert!(decode_message(&exchange, b"k").is_err());

    let mut wrong_version = exchange.clone();
    wrong_version[0] = CHECKED_VERSION + 1;
    assert!(decode_exchange(&wrong_version, b"k").is_err());
}

#[test]
fn garbage_never_panics() {
    // A small deterministic generator: the point is coverage of odd byte patterns, not
    // statistical quality.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let valid = encode_message(&full_message());
    for _ in 0..2000 {
        let mut input = valid.clone();
        let flips = (next() % 4 + 1) as usize;
        for _ in 0..flips {
            let at = (next() as usize) % input.len();
            input[at] = next() as u8;
        }
        let _ = decode_message(&input, b"k");
        let _ = decode_binding(&input, b"k");
    }
    for len in 0..64 {
        let input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = decode_message(&input, b"k");
        let _ = decode_exchange(&input, b"k");
    }
}

#[test]
fn hostile_nesting_and_counts_are_rejected() {
    // An array of arrays far deeper than any real header.
    let mut w = Writer::with_capacity(0);
    w.u8(FORMAT_VERSION);
    w.u8(KIND_QUEUE);
    w.varint(1);
    w.str("v");
    w.str("q");
    w.u8(0);
    w.varint(1);
    w.str("k");
    for _ in 0..10_000 {
        w.u8(T_ARRAY);
        w.varint(1);
    }
    w.u8(T_VOID);
    assert!(decode_queue(&w.finish(), b"k").is_err());

    // A count claiming more elements than bytes remain.
    let mut w = Writer::with_capacity(0);
    w.u8(FORMAT_VERSION);
    w.u8(KIND_QUEUE);
    w.varint(1);
    w.str("v");
    w.str("q");
    w.u8(0);
    w.varint(u64::MAX);
    assert!(decode_queue(&w.finish(), b"k").is_err());
}

#[test]
fn varints_round_trip_at_boundaries() {
    for v in [
        0,
        1,
        127,
        128,
        16383,
        16384,
        u64::from(u32::MAX),
        u64::MAX - 1,
        u64::MAX,
    ] {
        let mut w = Writer::with_capacity(10);
        w.varint(v);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.varint(), Ok(v));
        assert!(r.is_empty());
    }
    // Eleven continuation bytes, and a tenth byte carrying more than one bit.
    assert!(Reader::new(&[0xff; 11]).varint().is_err());
    let mut over = vec![0xff; 9];
    over.push(0x02);
    assert!(Reader::new(&over).varint().is_err());
}

fn owned_queue(owner: Option<QueueOwner>) -> QueueRecord {
    QueueRecord {
        id: 42,
        vhost: "/".into(),
        name: "mqtt-subscription-c1".into(),
        auto_delete: true,
        arguments: every_value(),
        owner,
    }
}

/// A queue record exactly as the encoder wrote it before queues carried an owner.
fn record_without_owner_field(version: u8, record: &QueueRecord) -> Vec<u8> {
    let mut w = Writer::with_capacity(64);
    w.u8(version);
    w.u8(KIND_QUEUE);
    w.varint(record.id);
    w.str(&record.vhost);
    w.str(&record.name);
    w.u8(u8::from(record.auto_delete));
    encode_table(&mut w, &record.arguments);
    match version {
        FORMAT_VERSION => w.finish(),
        _ => seal(w.finish()),
    }
}

#[test]
fn queue_records_round_trip_with_every_kind_of_owner() {
    for owner in [
        None,
        Some(QueueOwner::front_end("mqtt")),
        Some(QueueOwner::client("mqtt", "c1")),
        Some(QueueOwner::client("stomp", "")),
    ] {
        let q = owned_queue(owner.clone());
        let encoded = encode_queue(&q);
        assert_eq!(decode_queue(&encoded, b"k").expect("queue"), q, "{owner:?}");
        for len in 0..encoded.len() {
            assert!(
                decode_queue(&encoded[..len], b"k").is_err(),
                "{owner:?} cut at {len}"
            );
        }
    }
}

#[test]
fn queue_records_written_before_owners_decode_as_unowned() {
    let q = owned_queue(None);
    for version in [FORMAT_VERSION, CHECKED_VERSION] {
        let old = record_without_owner_field(version, &q);
        assert_eq!(
            decode_queue(&old, b"k").expect("an old record decodes"),
            q,
            "version {version}"
        );
    }
    // An unowned queue is still written byte for byte as before, checksum included, so a
    // record read back and written again is unchanged.
    assert_eq!(
        encode_queue(&q),
        record_without_owner_field(CHECKED_VERSION, &q)
    );
}

#[test]
fn queue_owner_flags_without_their_fields_are_errors() {
    let q = owned_queue(None);
    let mut w = Writer::with_capacity(64);
    w.u8(CHECKED_VERSION);
    w.u8(KIND_QUEUE);
    w.varint(q.id);
    w.str(&q.vhost);
    w.str(&q.name);
    // A client flag without the owner flag.
    w.u8(Q_OWNER_CLIENT);
    encode_table(&mut w, &q.arguments);
    w.str("c1");
    assert!(decode_queue(&seal(w.finish()), b"k").is_err());

    // The owner flag with nothing after the arguments.
    let mut w = Writer::with_capacity(64);
    w.u8(CHECKED_VERSION);
    w.u8(KIND_QUEUE);
    w.varint(q.id);
    w.str(&q.vhost);
    w.str(&q.name);
    w.u8(Q_OWNED);
    encode_table(&mut w, &q.arguments);
    assert!(decode_queue(&seal(w.finish()), b"k").is_err());

    // A damaged owner fails the checksum like any other byte.
    let mut encoded = encode_queue(&owned_queue(Some(QueueOwner::client("mqtt", "c1"))));
    let at = encoded.len() - CRC_LEN - 1;
    encoded[at] ^= 0x20;
    assert!(decode_queue(&encoded, b"k").is_err());
}
