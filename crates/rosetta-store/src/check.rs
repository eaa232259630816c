//! Offline verification of a stopped broker's store (`rosetta check-store`): every record is
//! decoded and checksummed, every queue entry's body is looked up, and what is wrong is listed
//! with where it is. Nothing is changed except what sled itself does when it opens.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rosetta_core::store::{Store, StoreError};

use crate::codec;
use crate::fs::StdFs;
use crate::index::{Index, Walk};
use crate::keys::{self, EntryValue};
use crate::quarantine::tree_place;
use crate::segments::Location;
use crate::sled_store::{engine, SledStore};

/// Length and checksum before each segment record (see `segments`).
const RECORD_HEADER: usize = 8;

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    /// Records that verified, per kind.
    pub counts: BTreeMap<&'static str, u64>,
    /// Records that fail their checksum or do not decode, with where they are and why.
    pub bad: Vec<String>,
    /// Queue entries whose body is missing or unreadable.
    pub dangling: Vec<String>,
    /// Segment files no entry refers to (the broker deletes them at its next start) and torn
    /// segment tails (left by a crash during a write that was never confirmed).
    pub notes: Vec<String>,
}

impl Report {
    /// No bad record and no dangling reference. Notes do not count: they are what a crash
    /// normally leaves, and the next start clears them.
    pub fn is_clean(&self) -> bool {
        self.bad.is_empty() && self.dangling.is_empty()
    }

    fn count(&mut self, kind: &'static str) {
        *self.counts.entry(kind).or_default() += 1;
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (kind, n) in &self.counts {
            writeln!(f, "{kind}: {n}")?;
        }
        for bad in &self.bad {
            writeln!(f, "bad record: {bad}")?;
        }
        for dangling in &self.dangling {
            writeln!(f, "dangling entry: {dangling}")?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        let verdict = if self.is_clean() {
            "store OK"
        } else {
            "store has problems"
        };
        writeln!(f, "{verdict}")
    }
}

/// Verifies the store in `path`. Fails if there is no store there or the broker is running:
/// sled locks its files while a broker has them open.
pub fn check(path: &Path) -> Result<Report, StoreError> {
    if !path.join("db").is_file() {
        return Err(StoreError::Engine(format!(
            "no store at {}",
            path.display()
        )));
    }
    let db = sled::Config::new().path(path).open().map_err(|e| {
        StoreError::Engine(format!(
            "cannot open the store at {} (a running broker holds it locked; stop it first): {e}",
            path.display()
        ))
    })?;
    let tree = |name: &str| db.open_tree(name).map_err(engine);
    let mut report = Report::default();

    check_tree(&tree("exchanges")?, "exchanges", &mut report, |k, v| {
        codec::decode_exchange(v, k).map(drop)
    })?;
    check_tree(&tree("bindings")?, "bindings", &mut report, |k, v| {
        codec::decode_binding(v, k).map(drop)
    })?;
    let mut queue_ids = HashSet::new();
    check_tree(&tree("queues")?, "queues", &mut report, |k, v| {
        codec::decode_queue(v, k).map(|q| {
            queue_ids.insert(q.id);
        })
    })?;
    check_tree(&tree("delivered")?, "delivered", &mut report, |k, v| {
        keys::parse_seq(k)
            .zip(keys::parse_seq(v))
            .map(drop)
            .ok_or_else(|| codec::corrupt(k, "delivery watermark does not decode"))
    })?;
    // Front-end records are opaque to the store: only their checksums can be checked.
    check_tree(&tree("sealed_records")?, "records", &mut report, |k, v| {
        codec::unseal(v)
            .map(drop)
            .ok_or_else(|| codec::corrupt(k, "record fails its checksum"))
    })?;
    let bodies = tree("bodies")?;
    check_tree(&bodies, "bodies (older layouts)", &mut report, |k, v| {
        codec::decode_message(v, k).map(drop)
    })?;

    let mut moved = HashMap::new();
    check_tree(&tree("moved")?, "moved", &mut report, |k, v| {
        let parsed = keys::parse_message_key(k)
            .zip(codec::unseal(v).and_then(Location::decode))
            .ok_or_else(|| codec::corrupt(k, "moved body record does not decode"))?;
        moved.insert(parsed.0, parsed.1);
        Ok(())
    })?;
    let mut known = Known {
        queue_ids: &queue_ids,
        segments: read_segments(&path.join("segments"), &mut report)?,
        bodies: &bodies,
        moved,
        referenced: BTreeSet::new(),
    };
    // Entries an older layout kept in sled (the broker moves them at its next start).
    for item in tree("entries")?.iter() {
        let (k, v) = item.map_err(engine)?;
        let place = tree_place("entries", &k);
        let Some(((queue, _), value)) = keys::parse_entry_key(&k).zip(keys::parse_entry_value(&v))
        else {
            report
                .bad
                .push(format!("{place}: fails its checksum or does not decode"));
            continue;
        };
        known.check_entry(&mut report, &place, queue, &value)?;
    }
    let index = Index::open(Arc::new(StdFs), path)?;
    let mut bad = Vec::new();
    let mut found = Vec::new();
    index.recover(
        Walk {
            known: &|queue| queue_ids.contains(&queue),
            delivered: &|_| None,
            lost_queues: true,
            bad: &mut |record| {
                bad.push(format!("{}: {}", record.place, record.reason));
                Ok(())
            },
            read_only: true,
        },
        &mut |entry| {
            found.push((entry.queue, entry.seq, entry.value));
            Ok(())
        },
    )?;
    report.bad.extend(bad);
    for (queue, seq, value) in found {
        let place = format!("queue {queue} seq {seq} in the queue index");
        known.check_entry(&mut report, &place, queue, &value)?;
    }
    for number in known.segments.files.keys() {
        if !known.referenced.contains(number) {
            report.notes.push(format!(
                "segment {number:08x} holds no referenced body (removed at the next start)"
            ));
        }
    }
    Ok(report)
}

/// What entries are checked against.
struct Known<'a> {
    queue_ids: &'a HashSet<u64>,
    segments: SegmentRecords,
    bodies: &'a sled::Tree,
    /// Where compaction moved bodies to.
    moved: HashMap<u64, Location>,
    /// Segments some entry's body is in.
    referenced: BTreeSet<u32>,
}

impl Known<'_> {
    /// Counts one entry and checks that its queue exists and its body is readable.
    fn check_entry(
        &mut self,
        report: &mut Report,
        place: &str,
        queue: u64,
        value: &EntryValue,
    ) -> Result<(), StoreError> {
        report.count("entries");
        if !self.queue_ids.contains(&queue) {
            report.notes.push(format!(
                "{place}: its queue {queue} does not exist (removed at the next start)"
            ));
        }
        let location = self
            .moved
            .get(&value.message_id)
            .copied()
            .or(value.location);
        match location {
            Some(location) => {
                self.referenced.insert(location.segment);
                if let Err(reason) = self.segments.verify(location) {
                    report.dangling.push(format!(
                        "{place} -> segment {:08x}, offset {}: {reason}",
                        location.segment, location.offset
                    ));
                }
            }
            None => {
                if !self
                    .bodies
                    .contains_key(keys::message(value.message_id))
                    .map_err(engine)?
                {
                    report.dangling.push(format!(
                        "{place} -> body {} in sled: missing",
                        value.message_id
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Opens the store as the broker would and runs its recovery, which quarantines every bad
/// record (and clears what a crash left behind). Returns how many records were quarantined.
pub fn repair(path: &Path) -> Result<u64, StoreError> {
    let store = SledStore::open(path)?;
    store.recover_streaming(&mut |_, _| {})?;
    store.sync()?;
    Ok(store.quarantined_records())
}

fn check_tree(
    tree: &sled::Tree,
    kind: &'static str,
    report: &mut Report,
    mut decode: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    report.counts.entry(kind).or_default();
    for item in tree.iter() {
        let (k, v) = item.map_err(engine)?;
        match decode(&k, &v) {
            Ok(()) => report.count(kind),
            Err(e) => {
                let reason = match e {
                    StoreError::Corrupt { reason, .. } => reason,
                    other => other.to_string(),
                };
                let place = tree_place(tree_name(kind), &k);
                report.bad.push(format!("{place}: {reason}"));
            }
        }
    }
    Ok(())
}

/// The tree a kind is counted under (older layouts' bodies are labelled for the reader).
fn tree_name(kind: &str) -> &str {
    kind.split(' ').next().unwrap_or(kind)
}

/// Every segment file, with the offsets and lengths of the records in it that verify.
struct SegmentRecords {
    files: BTreeMap<u32, HashSet<(u32, u32)>>,
}

impl SegmentRecords {
    fn verify(&self, location: Location) -> Result<(), &'static str> {
        let file = self
            .files
            .get(&location.segment)
            .ok_or("the segment file is missing")?;
        if file.contains(&(location.offset, location.len)) {
            Ok(())
        } else {
            Err("no intact record there (checksum mismatch, cut short, or undecodable)")
        }
    }
}

/// Reads every segment record and keeps the places of those that pass their checksum and
/// decode. A record that fails ends the walk of its file: its length cannot be trusted.
fn read_segments(dir: &Path, report: &mut Report) -> Result<SegmentRecords, StoreError> {
    let mut files = BTreeMap::new();
    report.counts.entry("segment bodies").or_default();
    let list = match std::fs::read_dir(dir) {
        Ok(list) => list,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(SegmentRecords { files });
        }
        Err(e) => return Err(io_error(dir, &e)),
    };
    for item in list {
        let path = item.map_err(|e| io_error(dir, &e))?.path();
        let Some(number) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| u32::from_str_radix(n, 16).ok())
        else {
            continue;
        };
        let data = std::fs::read(&path).map_err(|e| io_error(&path, &e))?;
        let mut intact = HashSet::new();
        let mut at = 0usize;
        while at < data.len() {
            match segment_record(&data[at..]) {
                Ok(len) => {
                    report.count("segment bodies");
                    // Segments stay far below 4 GiB, so offsets and lengths fit a u32.
                    if let (Ok(offset), Ok(len32)) = (u32::try_from(at), u32::try_from(len)) {
                        intact.insert((offset, len32));
                    }
                    at += len;
                }
                Err(reason) => {
                    report.notes.push(format!(
                        "segment {number:08x}, offset {at}: {reason}; the rest of the file is not read"
                    ));
                    break;
                }
            }
        }
        report.count("segments");
        files.insert(number, intact);
    }
    Ok(SegmentRecords { files })
}

/// The whole length of the record at the start of `data`, if it is intact.
fn segment_record(data: &[u8]) -> Result<usize, &'static str> {
    let (header, rest) = data
        .split_at_checked(RECORD_HEADER)
        .ok_or("record header cut short")?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let payload = rest.get(..len).ok_or("record cut short")?;
    if crc32fast::hash(payload) != crc {
        return Err("record fails its checksum");
    }
    codec::decode_message(payload, b"").map_err(|_| "record does not decode")?;
    Ok(RECORD_HEADER + len)
}

fn io_error(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Engine(format!("cannot read {}: {e}", path.display()))
}
