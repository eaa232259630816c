//! The namespaced records front-ends keep (MQTT sessions, retained messages): put, replace,
//! delete, prefix scans kept within their namespace, and durability across a reopen.

mod common;

use common::open;
use rosetta_core::store::Store;

#[test]
fn records_are_replaced_scanned_by_prefix_and_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store
        .put_record("mqtt.session", b"/\0a", b"one")
        .expect("put");
    store
        .put_record("mqtt.session", b"/\0b", b"two")
        .expect("put");
    store
        .put_record("mqtt.session", b"/\0a", b"uno")
        .expect("replace");
    store
        .put_record("mqtt.session", b"x\0c", b"other vhost")
        .expect("put");

    let all = store.scan_records("mqtt.session", b"").expect("scan");
    assert_eq!(
        all,
        vec![
            (b"/\0a".to_vec(), b"uno".to_vec()),
            (b"/\0b".to_vec(), b"two".to_vec()),
            (b"x\0c".to_vec(), b"other vhost".to_vec()),
        ]
    );
    let vhost = store.scan_records("mqtt.session", b"/\0").expect("scan");
    assert_eq!(vhost.len(), 2);

    store
        .delete_record("mqtt.session", b"/\0b")
        .expect("delete");
    store
        .delete_record("mqtt.session", b"never\0there")
        .expect("delete missing");
    assert_eq!(
        store
            .scan_records("mqtt.session", b"/\0")
            .expect("scan")
            .len(),
        1
    );

    store
        .delete_records("mqtt.session", b"/\0")
        .expect("delete prefix");
    let left = store.scan_records("mqtt.session", b"").expect("scan");
    assert_eq!(left, vec![(b"x\0c".to_vec(), b"other vhost".to_vec())]);
}

#[test]
fn namespaces_do_not_see_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store
        .put_record("mqtt", b"k", b"short namespace")
        .expect("put");
    store
        .put_record("mqtt.retained", b"k", b"long namespace")
        .expect("put");
    assert_eq!(
        store.scan_records("mqtt", b"").expect("scan"),
        vec![(b"k".to_vec(), b"short namespace".to_vec())]
    );
    store
        .delete_records("mqtt", b"")
        .expect("delete all of one namespace");
    assert_eq!(
        store
            .scan_records("mqtt.retained", b"")
            .expect("scan")
            .len(),
        1
    );
}

#[test]
fn a_namespace_with_a_nul_byte_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    assert!(store.put_record("bad\0ns", b"k", b"v").is_err());
    assert!(store.scan_records("bad\0ns", b"").is_err());
}

#[test]
fn synced_records_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path());
        let epoch = store
            .put_record("mqtt.retained", b"/\0a/b", b"payload")
            .expect("put");
        store
            .put_record("mqtt.retained", b"/\0gone", b"x")
            .expect("put");
        store
            .delete_record("mqtt.retained", b"/\0gone")
            .expect("delete");
        store.sync().expect("sync");
        assert!(store.durable_epoch() >= epoch);
    }
    let store = open(dir.path());
    store.recover().expect("recover");
    assert_eq!(
        store.scan_records("mqtt.retained", b"").expect("scan"),
        vec![(b"/\0a/b".to_vec(), b"payload".to_vec())]
    );
}

#[test]
fn a_record_failing_its_checksum_is_quarantined_and_the_others_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path());
        for key in [&b"a"[..], b"b", b"c"] {
            store
                .put_record("mqtt.retained", key, b"retained payload")
                .expect("put");
        }
        store.sync().expect("sync");
    }
    {
        let db = common::raw_open(dir.path());
        let tree = db.open_tree("sealed_records").expect("tree");
        let key = b"mqtt.retained\0b";
        let mut value = tree.get(key).expect("get").expect("record").to_vec();
        value[2] ^= 0x01;
        tree.insert(key, value).expect("damage");
        db.flush().expect("flush");
    }
    let store = open(dir.path());
    let loaded = store.scan_records("mqtt.retained", b"").expect("scan");
    let keys: Vec<&[u8]> = loaded.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(keys, [&b"a"[..], b"c"]);
    assert_eq!(store.quarantined_records(), 1);
    // Moved aside, not met again.
    assert_eq!(
        store
            .scan_records("mqtt.retained", b"")
            .expect("scan")
            .len(),
        2
    );
    assert_eq!(store.quarantined_records(), 1);
}

#[test]
fn records_of_a_layout_4_store_are_sealed_at_the_upgrade() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = common::raw_open(dir.path());
        db.insert("rosetta-format", &[4u8][..]).expect("marker");
        db.open_tree("records")
            .expect("tree")
            .insert(b"mqtt.session\0/\0dev-1", &b"session bytes"[..])
            .expect("insert");
        db.flush().expect("flush");
    }
    let store = open(dir.path());
    assert_eq!(
        store.scan_records("mqtt.session", b"").expect("scan"),
        vec![(b"/\0dev-1".to_vec(), b"session bytes".to_vec())]
    );
    assert_eq!(store.quarantined_records(), 0);
}
