//! Builders shared by the store tests.

#![allow(dead_code)]

use bytes::Bytes;
use rosetta_core::message::{Message, Properties, Table, Value};
use rosetta_core::store::QueueRecord;
use rosetta_store::SledStore;
use std::sync::Arc;

pub fn open(dir: &std::path::Path) -> SledStore {
    SledStore::open(dir).expect("store opens")
}

pub fn message(id: u64, body: &str) -> Arc<Message> {
    let mut headers = Table::new();
    headers.insert("x-origin".into(), Value::Str("test".into()));
    let properties = Properties {
        delivery_mode: Some(2),
        headers: Some(headers),
        ..Properties::default()
    };
    let mut m = Message::new(
        "amq.direct",
        "key",
        properties,
        Bytes::copy_from_slice(body.as_bytes()),
    );
    m.id = id;
    Arc::new(m)
}

pub fn queue(id: u64, name: &str) -> QueueRecord {
    QueueRecord {
        id,
        vhost: "/".into(),
        name: name.into(),
        auto_delete: false,
        arguments: Table::new(),
    }
}

/// Opens the database directly, as a crash or an older build would have left it. sled's own
/// threads can hold the file lock for a moment after a store is dropped, so this retries.
pub fn raw_open(dir: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("raw open: {e:?}"),
        }
    }
}
