//! Builders shared by the store tests.

#![allow(dead_code)]

use bytes::Bytes;
use rosetta_core::message::{Message, Properties, Table, Value};
use rosetta_core::store::QueueRecord;
use rosetta_store::SledStore;
use std::sync::Arc;

/// Opens the store, retrying while sled's threads of a store just dropped still hold the lock.
pub fn open(dir: &std::path::Path) -> SledStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open(dir) {
            Ok(store) => return store,
            Err(e) if e.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("store opens: {e}"),
        }
    }
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
        owner: None,
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

/// The body segment files of a store, in order.
pub fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("segments"))
        .expect("segments directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

/// Rewrites a store as a layout 1 or 2 build left it: the format marker, `message`'s body in
/// sled's `bodies` tree, and `entries` (key, value) as given; no segments.
pub fn forge_legacy(
    dir: &std::path::Path,
    layout: u8,
    message: &Message,
    entries: &[([u8; 16], Vec<u8>)],
) {
    // Older layouts had neither segments nor the queue index: their entries were in sled.
    for sub in ["segments", "index", "journal"] {
        std::fs::remove_dir_all(dir.join(sub)).expect("remove what older layouts lacked");
    }
    let db = raw_open(dir);
    db.insert("rosetta-format", &[layout][..]).expect("marker");
    db.open_tree("bodies")
        .expect("tree")
        .insert(
            message.id.to_be_bytes(),
            rosetta_store::codec::encode_message(message),
        )
        .expect("insert");
    let tree = db.open_tree("entries").expect("tree");
    tree.clear().expect("clear");
    for (key, value) in entries {
        tree.insert(key, value.clone()).expect("insert");
    }
    db.flush().expect("flush");
}

/// An entry key: queue id and seq, big-endian.
pub fn entry_key(queue: u64, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&queue.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}
