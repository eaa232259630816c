//! A bad record is moved to the quarantine directory at recovery, counted, and everything else
//! recovers. sled's own file format makes flipping bytes on disk impractical, so the bad values
//! are written through sled's API, as a damaged disk would have left them.

mod common;

use common::{message, open, queue, raw_open};
use rosetta_core::message::Table;
use rosetta_core::store::{ExchangeRecord, Store};

fn exchange(name: &str) -> ExchangeRecord {
    ExchangeRecord {
        vhost: "/".into(),
        name: name.into(),
        kind: "direct".into(),
        auto_delete: false,
        internal: false,
        arguments: Table::new(),
    }
}

/// Two exchanges, two queues and three messages (ids 1-3) in queue 1, one (id 4) in queue 2.
fn populate(dir: &std::path::Path) {
    let store = open(dir);
    store.save_exchange(&exchange("x1")).expect("exchange");
    store.save_exchange(&exchange("x2")).expect("exchange");
    store.save_queue(&queue(1, "q1")).expect("queue");
    store.save_queue(&queue(2, "q2")).expect("queue");
    for (id, seq) in [(1, 1), (2, 2), (3, 3)] {
        store
            .enqueue(&message(id, "body"), &[(1, seq)])
            .expect("enqueue");
    }
    store
        .enqueue(&message(4, "body"), &[(2, 1)])
        .expect("enqueue");
    store.sync().expect("sync");
}

/// Overwrites the value under `key` of `tree`, keeping its length, with one bit flipped: the
/// value still has its layout's length, so only the checksum can tell.
fn flip_a_bit(dir: &std::path::Path, tree: &str, key: &[u8]) {
    let db = raw_open(dir);
    let tree = db.open_tree(tree).expect("tree");
    let mut value = tree.get(key).expect("get").expect("record exists").to_vec();
    value[3] ^= 0x10;
    tree.insert(key, value).expect("insert");
    db.flush().expect("flush");
}

fn quarantine_files(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let Ok(list) = std::fs::read_dir(dir.join("quarantine")) else {
        return Vec::new();
    };
    let mut files: Vec<_> = list.map(|e| e.expect("entry").path()).collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("read quarantine file"))
        .collect()
}

fn entry_key(queue: u64, seq: u64) -> Vec<u8> {
    let mut k = queue.to_be_bytes().to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Bytes per queue index slot, and where its entry value starts.
const SLOT_LEN: usize = 48;
const VALUE_AT: usize = 2;
const VALUE_LEN: usize = 42;

/// The index file holding the first slots of `queue`, after a restart has moved the journal
/// into the index files.
fn index_file(dir: &std::path::Path, queue: u64) -> std::path::PathBuf {
    open(dir).recover().expect("recover");
    dir.join("index").join(format!("{queue:016x}-00000000.idx"))
}

#[test]
fn a_metadata_record_failing_its_checksum_is_quarantined_and_the_rest_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    populate(dir.path());
    flip_a_bit(dir.path(), "exchanges", b"/\0x1");

    let store = open(dir.path());
    let recovered = store.recover().expect("recovery succeeds");
    let names: Vec<_> = recovered
        .exchanges
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(names, ["x2"]);
    assert_eq!(recovered.queues.len(), 2);
    assert_eq!(store.quarantined_records(), 1);
    let files = quarantine_files(dir.path());
    assert_eq!(files.len(), 1);
    let text = String::from_utf8_lossy(&files[0]);
    assert!(text.contains("tree exchanges, key 2f007831"), "{text}");
    assert!(text.contains("checksum mismatch"), "{text}");
    drop(store);

    // Removed from the live store: the next start finds nothing more to quarantine.
    let store = open(dir.path());
    store.recover().expect("recovery succeeds");
    assert_eq!(store.quarantined_records(), 0);
}

#[test]
fn a_queue_entry_that_does_not_decode_is_quarantined_and_its_queue_keeps_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    populate(dir.path());
    let path = index_file(dir.path(), 1);
    let mut bytes = std::fs::read(&path).expect("read index file");
    bytes[2 * SLOT_LEN + VALUE_AT + 3] ^= 0x10;
    std::fs::write(&path, bytes).expect("damage");

    let store = open(dir.path());
    let recovered = store.recover().expect("recovery succeeds");
    let q1 = recovered
        .queues
        .iter()
        .find(|(q, _)| q.id == 1)
        .expect("queue 1 recovers");
    let ids: Vec<u64> = q1.1.iter().map(|e| e.summary.id).collect();
    assert_eq!(ids, [1, 3]);
    assert_eq!(store.quarantined_records(), 1);
    let files = quarantine_files(dir.path());
    let text = String::from_utf8_lossy(&files[0]);
    assert!(
        text.contains("0000000000000001-00000000.idx slot 2 (queue 1 seq 2)"),
        "{text}"
    );
    // The bodies of the recovered entries are still readable.
    assert_eq!(
        store.load_message(3).expect("read").expect("present").body,
        &b"body"[..]
    );
}

#[test]
fn entries_of_a_quarantined_queue_are_quarantined_with_their_bodies() {
    let dir = tempfile::tempdir().expect("tempdir");
    populate(dir.path());
    flip_a_bit(dir.path(), "queues", b"/\0q2");

    let store = open(dir.path());
    let recovered = store.recover().expect("recovery succeeds");
    let ids: Vec<u64> = recovered.queues.iter().map(|(q, _)| q.id).collect();
    assert_eq!(ids, [1]);
    assert_eq!(recovered.queues[0].1.len(), 3);
    // The queue record, its one entry, and that entry's body.
    assert_eq!(store.quarantined_records(), 3);
    let files = quarantine_files(dir.path());
    assert!(files
        .iter()
        .any(|f| String::from_utf8_lossy(f).contains("body of queue 2 seq 1")));
}

#[test]
fn records_written_before_checksums_existed_still_recover() {
    let dir = tempfile::tempdir().expect("tempdir");
    populate(dir.path());
    // A layout 3 store kept entries in sled, their values without a checksum: the one of
    // queue 1, seq 1 moves there from the index.
    let path = index_file(dir.path(), 1);
    let mut index = std::fs::read(&path).expect("read index file");
    let mut legacy_value = index[SLOT_LEN + VALUE_AT..SLOT_LEN + VALUE_AT + VALUE_LEN].to_vec();
    legacy_value.truncate(VALUE_LEN - 4);
    index[SLOT_LEN] = 0;
    std::fs::write(&path, index).expect("write index file");
    {
        // Metadata with format version 1 (no checksum trailer).
        let db = raw_open(dir.path());
        let exchanges = db.open_tree("exchanges").expect("tree");
        let mut value = exchanges.get(b"/\0x1").expect("get").expect("x1").to_vec();
        value.truncate(value.len() - 4);
        value[0] = 1;
        exchanges.insert(b"/\0x1", value).expect("insert");
        let entries = db.open_tree("entries").expect("tree");
        entries
            .insert(entry_key(1, 1), legacy_value)
            .expect("insert");
        db.insert(b"rosetta-format", &[3]).expect("marker");
        db.flush().expect("flush");
    }
    let store = open(dir.path());
    let recovered = store.recover().expect("recovery succeeds");
    assert_eq!(recovered.exchanges.len(), 2);
    let q1 = recovered
        .queues
        .iter()
        .find(|(q, _)| q.id == 1)
        .expect("q1");
    assert_eq!(q1.1.len(), 3);
    assert_eq!(store.quarantined_records(), 0);
}
