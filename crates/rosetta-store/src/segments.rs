//! Message bodies in append-only segment files beside the sled database.
//!
//! sled keeps values inside its copy-on-write tree nodes, so every insert or delete of a 1 KiB
//! body cloned and rewrote nodes full of other bodies: profiled, the store's threads spent about
//! two thirds of the broker's CPU on persistent messaging that way. Here a body is written once,
//! sequentially, in the batch of the group commit that makes it durable, and never rewritten:
//! sled only holds queue entries, which name the body's place in a segment.
//!
//! Space comes back a segment at a time: each segment counts its live bodies, and a segment
//! that is no longer appended to and has none left is deleted, after the commit that made its
//! bodies' deletions durable (so a crash never finds an entry whose segment is gone). So that a
//! few bodies that stay queued do not keep whole segments alive, a segment whose live bytes
//! fall below half its size, and which nobody has released a body of for a while (a backlog
//! being consumed frees its segments without help), is compacted: its live bodies are copied
//! to the active segment and it is then deleted like an empty one (see `compact`).
//!
//! # Record layout
//!
//! `length (u32 BE) ++ crc32 (u32 BE) ++ encoded message`, where the length and checksum cover
//! the encoded message. sled may write entries to disk before the segment's fsync, so after a
//! crash an entry can name a record that never fully reached the disk; the checksum turns that
//! into a missing body instead of a wrong one. Such an entry was never confirmed, since
//! confirms wait for the fsync of both.
//!
//! # Failures
//!
//! A failed write or fsync leaves the active segment's unsynced tail in an unknown state: after
//! a failed fsync, Linux may have dropped the dirty pages and a second fsync would report
//! success without writing them. So the segment is never synced or appended to again
//! ([`Segments::abandon_active`]); the bodies of the failed batch are written anew to a fresh
//! segment by the next attempt. Bodies synced there before stay readable.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use rosetta_core::message::Message;
use rosetta_core::store::StoreError;

use crate::codec;
use crate::fs::{FileSystem, SegmentFile};

/// A segment takes no more appends once it is this large.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// How often compaction looks for a sparse segment.
const SPARSE_SCAN_EVERY: Duration = Duration::from_secs(1);
/// Length and checksum before each record.
const RECORD_HEADER: usize = 8;
const EXTENSION: &str = "seg";

/// Where a body lives: segment number, offset of its record, length of the whole record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: u32,
    pub offset: u32,
    pub len: u32,
}

impl Location {
    pub const ENCODED_LEN: usize = 12;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[..4].copy_from_slice(&self.segment.to_be_bytes());
        b[4..8].copy_from_slice(&self.offset.to_be_bytes());
        b[8..].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Location> {
        let b: &[u8; Self::ENCODED_LEN] = b.try_into().ok()?;
        let u32_at = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Some(Location {
            segment: u32_at(0),
            offset: u32_at(4),
            len: u32_at(8),
        })
    }
}

/// What is still live in one segment.
#[derive(Debug, Clone, Copy)]
struct Live {
    bodies: u64,
    /// Bytes of the live bodies' records.
    bytes: u64,
    /// When a body of it was last released: a segment still being consumed is left alone.
    last_release: Instant,
}

/// The segment being appended to. Only the commit thread appends.
struct Active {
    segment: u32,
    file: Arc<dyn SegmentFile>,
    len: u64,
    /// Appended to since its last fsync.
    dirty: bool,
}

pub struct Segments {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    /// Open handles for reading, by segment number.
    files: RwLock<HashMap<u32, Arc<dyn SegmentFile>>>,
    active: Mutex<Option<Active>>,
    /// Live bodies per segment. A segment missing here holds none.
    live: Mutex<HashMap<u32, Live>>,
    /// Segments compaction copied what it could from: never picked again (a body that cannot
    /// be read stays behind, and would otherwise have its segment picked over and over).
    compacted: Mutex<HashSet<u32>>,
    /// When [`Segments::sparse_segment`] may look again: it asks every segment file its size,
    /// which is too many system calls to make after each of thousands of commits a second.
    next_sparse_scan: Mutex<Instant>,
    /// The next segment number to create.
    next: Mutex<u32>,
    /// Segments with no live body left and no more appends coming, to delete once the
    /// deletions that emptied them are durable ([`Segments::take_retired`]).
    retired: Mutex<Vec<u32>>,
    /// Reused encoding buffer of the commit thread.
    scratch: Mutex<Vec<u8>>,
}

impl Segments {
    /// Opens the segment directory, creating it if needed. Existing segments are readable at
    /// once; which of them still hold live bodies is only known after recovery
    /// ([`Segments::recovered`]).
    pub fn open(fs: Arc<dyn FileSystem>, dir: &Path) -> Result<Segments, StoreError> {
        fs.create_dir_all(dir)
            .map_err(|e| io_error("create", dir, &e))?;
        let mut files = HashMap::new();
        let mut highest = 0u32;
        for number in list(&*fs, dir)? {
            let path = segment_path(dir, number);
            let file = fs.open(&path).map_err(|e| io_error("open", &path, &e))?;
            files.insert(number, file);
            highest = highest.max(number);
        }
        Ok(Segments {
            fs,
            dir: dir.to_owned(),
            files: RwLock::new(files),
            active: Mutex::new(None),
            live: Mutex::new(HashMap::new()),
            compacted: Mutex::new(HashSet::new()),
            next_sparse_scan: Mutex::new(Instant::now()),
            // Never append to a segment from before the restart: its tail may be torn.
            next: Mutex::new(highest + 1),
            retired: Mutex::new(Vec::new()),
            scratch: Mutex::new(Vec::new()),
        })
    }

    /// Appends `messages` (not yet durable: see [`Segments::sync`]) and returns their places,
    /// in the same order. Each counts as a live body of its segment; on error none does.
    pub fn append(&self, messages: &[&Message]) -> Result<Vec<Location>, StoreError> {
        let mut counted = Vec::new();
        let result = self.append_counting(messages, &mut counted);
        if result.is_err() {
            for (segment, n, bytes) in counted {
                self.discard(segment, n, bytes);
            }
        }
        result
    }

    /// [`Segments::append`], recording in `counted` the live bodies it added per segment, so
    /// that a failure part way through can take them back.
    fn append_counting(
        &self,
        messages: &[&Message],
        counted: &mut Vec<(u32, u64, u64)>,
    ) -> Result<Vec<Location>, StoreError> {
        let mut locations = Vec::with_capacity(messages.len());
        let mut scratch = self.scratch.lock();
        let mut active = self.active.lock();
        let mut i = 0;
        while i < messages.len() {
            let current = match active.as_mut() {
                Some(a) if a.len < SEGMENT_BYTES => a,
                _ => self.roll(&mut active)?,
            };
            // Encode records until the segment is full, then write them in one call.
            scratch.clear();
            let start = current.len;
            let mut added = 0u64;
            while i < messages.len() && start + (scratch.len() as u64) < SEGMENT_BYTES {
                let offset = start + scratch.len() as u64;
                let at = scratch.len();
                scratch.extend_from_slice(&[0u8; RECORD_HEADER]);
                codec::encode_message_into(messages[i], &mut scratch);
                let payload_len = scratch.len() - at - RECORD_HEADER;
                let (Ok(len32), Ok(offset32), Ok(record_len)) = (
                    u32::try_from(payload_len),
                    u32::try_from(offset),
                    u32::try_from(payload_len + RECORD_HEADER),
                ) else {
                    return Err(StoreError::Engine(format!(
                        "message {} does not fit a segment record",
                        messages[i].id
                    )));
                };
                let crc = crc32fast::hash(&scratch[at + RECORD_HEADER..]);
                scratch[at..at + 4].copy_from_slice(&len32.to_be_bytes());
                scratch[at + 4..at + RECORD_HEADER].copy_from_slice(&crc.to_be_bytes());
                locations.push(Location {
                    segment: current.segment,
                    offset: offset32,
                    len: record_len,
                });
                added += 1;
                i += 1;
            }
            current
                .file
                .write_all_at(&scratch, start)
                .map_err(|e| io_error("write", &self.path(current.segment), &e))?;
            current.len += scratch.len() as u64;
            current.dirty = true;
            self.count(current.segment, added, scratch.len() as u64);
            counted.push((current.segment, added, scratch.len() as u64));
        }
        // Large bodies would otherwise keep a large buffer for good.
        if scratch.capacity() > 2 * SEGMENT_BYTES as usize {
            *scratch = Vec::new();
        }
        Ok(locations)
    }

    /// Makes every append so far durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        let mut active = self.active.lock();
        if let Some(a) = active.as_mut().filter(|a| a.dirty) {
            a.file
                .sync_data()
                .map_err(|e| io_error("sync", &self.path(a.segment), &e))?;
            a.dirty = false;
        }
        Ok(())
    }

    /// The bytes stored at `location`, as far as the file holds them (for quarantine).
    pub fn read_raw(&self, location: Location) -> Option<Vec<u8>> {
        let file = self.files.read().get(&location.segment).cloned()?;
        let size = file.size().ok()?;
        let end = (u64::from(location.offset) + u64::from(location.len)).min(size);
        let len = usize::try_from(end.checked_sub(u64::from(location.offset))?).ok()?;
        let mut raw = vec![0u8; len];
        file.read_exact_at(&mut raw, u64::from(location.offset))
            .ok()?;
        Some(raw)
    }

    /// Reads the message at `location`; `key` labels errors. A record that does not check out
    /// (torn by a crash, or damaged) is reported as corrupt.
    pub fn read(&self, location: Location, key: &[u8]) -> Result<Message, StoreError> {
        let file = self
            .files
            .read()
            .get(&location.segment)
            .cloned()
            .ok_or_else(|| codec::corrupt(key, "message body segment is missing"))?;
        let mut record = vec![0u8; location.len as usize];
        file.read_exact_at(&mut record, u64::from(location.offset))
            .map_err(|_| codec::corrupt(key, "message body record is cut short"))?;
        let (header, payload) = record
            .split_at_checked(RECORD_HEADER)
            .ok_or_else(|| codec::corrupt(key, "message body record is cut short"))?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if len as usize != payload.len() || crc32fast::hash(payload) != crc {
            return Err(codec::corrupt(
                key,
                "message body record fails its checksum",
            ));
        }
        codec::decode_message(payload, key)
    }

    /// Counts a recovered body as live in its segment.
    pub fn recovered_body(&self, location: Location) {
        self.count(location.segment, 1, u64::from(location.len));
    }

    fn count(&self, segment: u32, bodies: u64, bytes: u64) {
        let mut live = self.live.lock();
        let entry = live.entry(segment).or_insert(Live {
            bodies: 0,
            bytes: 0,
            last_release: Instant::now(),
        });
        entry.bodies += bodies;
        entry.bytes += bytes;
    }

    /// A segment worth compacting: not being appended to, less than half of it live, and no
    /// body of it released for `quiet`. The sparsest such segment.
    pub fn sparse_segment(&self, quiet: Duration) -> Option<u32> {
        {
            let mut next = self.next_sparse_scan.lock();
            let now = Instant::now();
            if now < *next {
                return None;
            }
            *next = now + SPARSE_SCAN_EVERY;
        }
        let active = self.active.lock().as_ref().map(|a| a.segment);
        let compacted = self.compacted.lock();
        let live = self.live.lock();
        let files = self.files.read();
        let now = Instant::now();
        live.iter()
            .filter(|(n, l)| {
                Some(**n) != active
                    && !compacted.contains(n)
                    && now.duration_since(l.last_release) >= quiet
            })
            .filter_map(|(n, l)| {
                let size = files.get(n)?.size().ok()?;
                (l.bytes * 2 < size).then_some((l.bytes * 1000 / size.max(1), *n))
            })
            .min()
            .map(|(_, n)| n)
    }

    /// Every record of segment `number` that reads back whole, with its place. Marks the
    /// segment compacted: it is not offered again.
    pub fn records(&self, number: u32) -> Result<Vec<(Location, Message)>, StoreError> {
        self.compacted.lock().insert(number);
        let Some(file) = self.files.read().get(&number).cloned() else {
            return Ok(Vec::new());
        };
        let path = self.path(number);
        let size = file.size().map_err(|e| io_error("read", &path, &e))?;
        let mut data = vec![0u8; usize::try_from(size).unwrap_or(0)];
        file.read_exact_at(&mut data, 0)
            .map_err(|e| io_error("read", &path, &e))?;
        let mut out = Vec::new();
        let mut at = 0usize;
        while let Some(header) = data.get(at..at + RECORD_HEADER) {
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
            let Some(payload) = data.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else {
                break;
            };
            if crc32fast::hash(payload) != crc {
                // Nothing after a bad length can be trusted to start a record.
                break;
            }
            let location = Location {
                segment: number,
                offset: at as u32,
                len: (RECORD_HEADER + len) as u32,
            };
            if let Ok(message) = codec::decode_message(payload, &location.encode()) {
                out.push((location, message));
            }
            at += RECORD_HEADER + len;
        }
        Ok(out)
    }

    /// After recovery: deletes the segments no entry refers to.
    pub fn recovered(&self) -> Result<usize, StoreError> {
        let dead: Vec<u32> = {
            let live = self.live.lock();
            let files = self.files.read();
            files
                .keys()
                .filter(|n| !live.contains_key(n))
                .copied()
                .collect()
        };
        for &number in &dead {
            self.remove(number)?;
        }
        Ok(dead.len())
    }

    /// One body of `location`'s segment is gone. If that was its last one and nothing more
    /// will be appended to it, the segment is retired.
    pub fn release(&self, location: Location) {
        self.discard(location.segment, 1, u64::from(location.len));
    }

    /// `n` bodies of `segment`, `bytes` long together, are gone (see [`Segments::release`]).
    fn discard(&self, segment: u32, n: u64, bytes: u64) {
        let mut live = self.live.lock();
        let Some(count) = live.get_mut(&segment) else {
            return;
        };
        count.bodies = count.bodies.saturating_sub(n);
        count.bytes = count.bytes.saturating_sub(bytes);
        count.last_release = Instant::now();
        if count.bodies > 0 {
            return;
        }
        live.remove(&segment);
        drop(live);
        let active = self.active.lock();
        // The active segment stays, since more bodies are coming; the roll retires it if it is
        // empty by then.
        if active.as_ref().map(|a| a.segment) != Some(segment) {
            self.retired.lock().push(segment);
        }
    }

    /// After a failed write or fsync: the active segment takes no more appends and is never
    /// synced again, since its unsynced contents are unknown (see the module docs). The
    /// caller releases the failed batch's bodies first; the segment is retired if none of its
    /// bodies is left.
    pub fn abandon_active(&self) {
        let mut active = self.active.lock();
        let Some(old) = active.take() else {
            return;
        };
        if !self.live.lock().contains_key(&old.segment) {
            self.retired.lock().push(old.segment);
        }
    }

    /// The segments retired so far. The caller takes them together with the batch of
    /// deletions that emptied them, and deletes them ([`Segments::remove`]) once that batch
    /// is durable.
    pub fn take_retired(&self) -> Vec<u32> {
        std::mem::take(&mut *self.retired.lock())
    }

    /// Puts back segments taken by [`Segments::take_retired`] whose batch failed.
    pub fn restore_retired(&self, numbers: Vec<u32>) {
        self.retired.lock().extend(numbers);
    }

    /// Deletes a segment file.
    pub fn remove(&self, number: u32) -> Result<(), StoreError> {
        self.files.write().remove(&number);
        self.compacted.lock().remove(&number);
        let path = self.path(number);
        match self.fs.remove(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("delete", &path, &e)),
        }
    }

    /// Live bodies across all segments.
    pub fn live_bodies(&self) -> u64 {
        self.live.lock().values().map(|l| l.bodies).sum()
    }

    /// Bytes the segment files occupy.
    pub fn size_on_disk(&self) -> u64 {
        let files = self.files.read();
        files.values().filter_map(|f| f.size().ok()).sum()
    }

    /// Starts a new active segment, after syncing the previous one, which is retired if all its
    /// bodies are already gone. If that sync fails, the previous segment is left behind as
    /// [`Segments::abandon_active`] would.
    fn roll<'a>(&self, active: &'a mut Option<Active>) -> Result<&'a mut Active, StoreError> {
        if let Some(old) = active.take() {
            if !self.live.lock().contains_key(&old.segment) {
                self.retired.lock().push(old.segment);
            }
            if old.dirty {
                old.file
                    .sync_data()
                    .map_err(|e| io_error("sync", &self.path(old.segment), &e))?;
            }
        }
        let number = {
            let mut next = self.next.lock();
            let n = *next;
            *next = n
                .checked_add(1)
                .ok_or_else(|| StoreError::Engine("segment numbers exhausted".into()))?;
            n
        };
        let path = self.path(number);
        let file = self
            .fs
            .create_new(&path)
            .map_err(|e| io_error("create", &path, &e))?;
        // The new file's directory entry must be durable before any entry names it.
        if let Err(e) = self.fs.sync_dir(&self.dir) {
            // Nothing names the file yet; it goes with the next successful commit.
            self.retired.lock().push(number);
            return Err(io_error("sync", &self.dir, &e));
        }
        self.files.write().insert(number, file.clone());
        Ok(active.insert(Active {
            segment: number,
            file,
            len: 0,
            dirty: false,
        }))
    }

    fn path(&self, number: u32) -> PathBuf {
        segment_path(&self.dir, number)
    }
}

fn segment_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("{number:08x}.{EXTENSION}"))
}

/// Segment numbers present in `dir`. Other files are left alone.
fn list(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<u32>, StoreError> {
    let mut numbers = Vec::new();
    for name in fs.list(dir).map_err(|e| io_error("list", dir, &e))? {
        let Some(stem) = name.strip_suffix(&format!(".{EXTENSION}")) else {
            continue;
        };
        if let Ok(n) = u32::from_str_radix(stem, 16) {
            numbers.push(n);
        }
    }
    Ok(numbers)
}

fn io_error(action: &str, path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Engine(format!("cannot {action} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StdFs;
    use bytes::Bytes;
    use rosetta_core::message::Properties;
    use std::fs::{File, OpenOptions};
    use std::os::unix::fs::FileExt;

    fn message(id: u64, size: usize) -> Message {
        let mut m = Message::new(
            "ex",
            "key",
            Properties::default(),
            Bytes::from(vec![7u8; size]),
        );
        m.id = id;
        m
    }

    #[test]
    fn appended_bodies_read_back_and_a_segment_goes_with_its_last_body() {
        let dir = tempfile::tempdir().expect("tempdir");
        let segments = Segments::open(Arc::new(StdFs), dir.path()).expect("open");
        // Big enough to fill more than one segment.
        let messages: Vec<Message> = (1..=40).map(|id| message(id, 1024 * 1024)).collect();
        let refs: Vec<&Message> = messages.iter().collect();
        let locations = segments.append(&refs).expect("append");
        segments.sync().expect("sync");
        assert!(locations.last().expect("some").segment > locations[0].segment);
        for (m, l) in messages.iter().zip(&locations) {
            assert_eq!(&segments.read(*l, b"k").expect("read"), m);
        }
        let first = locations[0].segment;
        let in_first: Vec<&Location> = locations.iter().filter(|l| l.segment == first).collect();
        for l in &in_first[1..] {
            segments.release(**l);
        }
        assert!(segments.take_retired().is_empty(), "one body still lives");
        segments.release(*in_first[0]);
        assert_eq!(
            segments.take_retired(),
            vec![first],
            "freed by its last body"
        );
        segments.remove(first).expect("remove");
        assert!(!segment_path(dir.path(), first).exists());
        assert!(segments.read(locations[0], b"k").is_err());
    }

    #[test]
    fn a_damaged_record_is_corrupt_not_a_wrong_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let segments = Segments::open(Arc::new(StdFs), dir.path()).expect("open");
        let m = message(1, 100);
        let l = segments.append(&[&m]).expect("append")[0];
        segments.sync().expect("sync");
        let path = segment_path(dir.path(), l.segment);
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        FileExt::write_all_at(&file, b"X", u64::from(l.offset) + 50).expect("damage");
        let err = segments.read(l, b"k").expect_err("damaged");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn after_a_restart_appends_go_to_a_new_segment_and_unreferenced_ones_are_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (kept, dropped) = {
            let segments = Segments::open(Arc::new(StdFs), dir.path()).expect("open");
            let a = segments.append(&[&message(1, 10)]).expect("append")[0];
            segments.sync().expect("sync");
            (a, a.segment)
        };
        let segments = Segments::open(Arc::new(StdFs), dir.path()).expect("reopen");
        let fresh = segments.append(&[&message(2, 10)]).expect("append")[0];
        assert!(fresh.segment > kept.segment);
        // Nothing recovered refers to the old segment.
        assert_eq!(segments.recovered().expect("recovered"), 1);
        assert!(!segment_path(dir.path(), dropped).exists());
        let mut out = Vec::new();
        File::open(segment_path(dir.path(), fresh.segment))
            .and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut out))
            .expect("fresh segment kept");
        assert_eq!(out.len() as u32, fresh.len);
    }
}
