//! Builders shared by the store tests.

#![allow(dead_code)]

use std::sync::Arc;
use bytes::Bytes;
use rosetta_core::message::{Message, Properties, Table, Value};
use rosetta_core::store::QueueRecord;
use rosetta_store::SledStore;

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
