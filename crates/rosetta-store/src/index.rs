//! Queue entries on disk: a slot per entry in per-queue index files, reached through a shared
//! journal.
//!
//! sled held queue entries before, and its log kept growing with their inserts and deletes
//! (hundreds of megabytes for entries that were all gone). Here, as in RabbitMQ's classic queue
//! index, an entry has a fixed place: index file `<queue>-<n>.idx` holds the slots of sequence
//! numbers `n * SLOTS_PER_FILE ..` of its queue, [`SLOT_LEN`] bytes each, so an entry is
//! acknowledged in place and a file whose slots are all settled is deleted whole. Space
//! follows the entries that are really queued.
//!
//! Writing slots directly would cost an fsync per index file touched in every group commit.
//! Instead each commit appends its entry changes to one journal file (see `journal`) and syncs
//! that; the changes collect in memory (the window) and reach the index files at a checkpoint,
//! once the journal has grown by [`CHECKPOINT_BYTES`]: slots written, index files synced, then
//! the journal deleted. An entry put and settled within one window (what a consumer that keeps
//! up produces) never touches an index file at all.
//!
//! # Slot layout
//!
//! `state (u8: 0 empty, 1 live, 2 settled) ++ 0 ++ entry value (keys::ENTRY_VALUE_LEN, with its
//! own checksum) ++ padding`. A checkpoint writes whole slots, so neighbouring changes become
//! one write.
//!
//! # Recovery
//!
//! The journals still present (those of the window not yet checkpointed) are replayed over
//! the index files, then every slot is checked: a live slot whose value fails its checksum is
//! moved to quarantine. Replaying a journal twice changes nothing, so a crash anywhere in a
//! checkpoint is safe: the journals are deleted only after the index files are synced, and
//! oldest first, each deletion durable before the next, so a crash leaves the newest of them
//! (an older one replayed without the newer would roll entries back).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rosetta_core::store::StoreError;

use crate::fs::{FileSystem, SegmentFile};
use crate::journal::{self, Op};
use crate::keys::{self, EntryValue, ENTRY_VALUE_LEN};
use crate::quarantine::BadRecord;

/// Slots per index file: 384 KiB files, so one long-lived entry keeps little space alive and a
/// draining backlog frees space in small steps.
pub const SLOTS_PER_FILE: u64 = 8192;
/// Bytes per slot: state, a reserved byte, the entry value, padding to a round size.
pub const SLOT_LEN: usize = 48;
const VALUE_AT: usize = 2;
const EMPTY: u8 = 0;
const LIVE: u8 = 1;
const SETTLED: u8 = 2;
/// Journal bytes after which the window is checkpointed into the index files. It bounds both
/// the journal on disk (twice this at most, counting a failed checkpoint's retry) and the
/// window in memory (a few megabytes of changes).
pub const CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024;
const INDEX_EXTENSION: &str = "idx";

/// One index file's bookkeeping.
#[derive(Debug, Default, Clone, Copy)]
struct FileInfo {
    /// Live slots in the file as of the last checkpoint.
    live: u64,
    /// Bytes the file holds.
    len: u64,
}

/// The journal file being appended to.
struct ActiveJournal {
    number: u32,
    file: Arc<dyn SegmentFile>,
    len: u64,
    dirty: bool,
}

#[derive(Default)]
struct State {
    /// The last change to each entry since the last checkpoint; durable in the journals.
    window: HashMap<(u64, u64), Op>,
    /// Journal bytes written since the last checkpoint.
    window_bytes: u64,
    /// When the window reaches this many bytes, checkpoint (moved on after a failed attempt).
    checkpoint_at: u64,
    /// The window a checkpoint normally waits for ([`CHECKPOINT_BYTES`]).
    checkpoint_bytes: u64,
    active: Option<ActiveJournal>,
    /// Journal files since the last checkpoint, oldest first; the active one is last.
    journals: Vec<u32>,
    next_journal: u32,
    /// Index files by (queue, file number).
    files: HashMap<(u64, u64), FileInfo>,
    /// A failed checkpoint was logged; cleared by the next one that succeeds.
    checkpoint_failing: bool,
}

/// The queue index of one store. Its writes come from the commit thread (and from recovery,
/// before that thread has work); other threads only read its figures.
pub struct Index {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    journal_dir: PathBuf,
    state: Mutex<State>,
}

/// What one call of [`Index::purge`] did.
pub struct Purged {
    /// Message ids of the live entries removed, one per entry.
    pub released: Vec<u64>,
    /// Index files deleted.
    pub files: usize,
    /// The queue has nothing left.
    pub done: bool,
}

/// How [`Index::recover`] treats what it finds.
pub struct Walk<'a> {
    /// Whether a queue id names an existing queue.
    pub known: &'a dyn Fn(u64) -> bool,
    /// A queue's delivery watermark, if it has one.
    pub delivered: &'a dyn Fn(u64) -> Option<u64>,
    /// A queue record was quarantined, so entries of unknown queues may be its messages.
    pub lost_queues: bool,
    /// Told of every bad record (recovery quarantines it).
    pub bad: &'a mut dyn FnMut(BadRecord<'_>) -> Result<(), StoreError>,
    /// Only read: change no file (for checking a stopped broker's store).
    pub read_only: bool,
}

/// A live entry as recovery finds it.
pub struct Found {
    pub queue: u64,
    pub seq: u64,
    pub value: EntryValue,
    /// The slot as stored, for quarantine.
    pub slot: [u8; SLOT_LEN],
}

impl Index {
    /// Opens the index and journal directories under `data_dir`, creating them if needed. What
    /// they hold is only known after [`Index::recover`].
    pub fn open(fs: Arc<dyn FileSystem>, data_dir: &Path) -> Result<Index, StoreError> {
        let dir = data_dir.join("index");
        let journal_dir = data_dir.join("journal");
        let mut state = State {
            checkpoint_at: CHECKPOINT_BYTES,
            checkpoint_bytes: CHECKPOINT_BYTES,
            ..State::default()
        };
        for d in [&dir, &journal_dir] {
            fs.create_dir_all(d)
                .map_err(|e| io_error("create", d, &e))?;
        }
        for name in fs.list(&dir).map_err(|e| io_error("list", &dir, &e))? {
            let Some(key) = parse_index_name(&name) else {
                continue;
            };
            let path = dir.join(&name);
            let file = fs.open(&path).map_err(|e| io_error("open", &path, &e))?;
            let len = file.size().map_err(|e| io_error("read", &path, &e))?;
            state.files.insert(key, FileInfo { live: 0, len });
        }
        for name in fs
            .list(&journal_dir)
            .map_err(|e| io_error("list", &journal_dir, &e))?
        {
            let number = name
                .strip_suffix(&format!(".{}", journal::EXTENSION))
                .and_then(|stem| u32::from_str_radix(stem, 16).ok());
            if let Some(number) = number {
                state.journals.push(number);
                state.next_journal = state.next_journal.max(number.saturating_add(1));
            }
        }
        state.journals.sort_unstable();
        Ok(Index {
            fs,
            dir,
            journal_dir,
            state: Mutex::new(state),
        })
    }

    /// Appends `ops` to the journal, not yet synced. After an error the journal file is
    /// abandoned (see [`Index::abandon_active`]).
    pub fn append(&self, ops: &[(u64, u64, Op)]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(ops.len() * journal::PUT_LEN);
        for (queue, seq, op) in ops {
            journal::encode(&mut buf, *queue, *seq, op);
        }
        let mut st = self.state.lock();
        let st = &mut *st;
        if st.active.is_none() {
            let number = st.next_journal;
            st.next_journal = number
                .checked_add(1)
                .ok_or_else(|| StoreError::Engine("journal numbers exhausted".into()))?;
            let path = self.journal_path(number);
            let file = self
                .fs
                .create_new(&path)
                .map_err(|e| io_error("create", &path, &e))?;
            // Listed before its directory entry is synced: if that fails, the file is simply
            // deleted with the others at the next checkpoint.
            st.journals.push(number);
            self.fs
                .sync_dir(&self.journal_dir)
                .map_err(|e| io_error("sync", &self.journal_dir, &e))?;
            st.active = Some(ActiveJournal {
                number,
                file,
                len: 0,
                dirty: false,
            });
        }
        let Some(active) = st.active.as_mut() else {
            return Err(StoreError::Engine("no journal file".into()));
        };
        let path = self.journal_path(active.number);
        active
            .file
            .write_all_at(&buf, active.len)
            .map_err(|e| io_error("write", &path, &e))?;
        active.len += buf.len() as u64;
        active.dirty = true;
        st.window_bytes += buf.len() as u64;
        Ok(())
    }

    /// Makes every append so far durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        if let Some(active) = st.active.as_mut().filter(|a| a.dirty) {
            active
                .file
                .sync_data()
                .map_err(|e| io_error("sync", &self.journal_path(active.number), &e))?;
            active.dirty = false;
        }
        Ok(())
    }

    /// After a failed write or fsync: the journal file takes no more appends and is never
    /// synced again (its unsynced tail is unknown). It stays until the next checkpoint, since
    /// it may hold changes synced before; the failed batch goes to a new file.
    pub fn abandon_active(&self) {
        self.state.lock().active = None;
    }

    /// Takes `ops`, appended and synced by a successful commit, into the window, and
    /// checkpoints once the journal is long enough. An entry put and settled within the window
    /// cancels out. A failed checkpoint loses nothing (the journal still holds everything); it
    /// is logged and tried again later.
    pub fn committed(&self, ops: Vec<(u64, u64, Op)>) {
        let mut st = self.state.lock();
        for (queue, seq, op) in ops {
            let key = (queue, seq);
            match op {
                Op::Put(_) => {
                    st.window.insert(key, op);
                }
                Op::Settle => {
                    // A put in this window means the entry is in no index file yet.
                    if matches!(st.window.get(&key), Some(Op::Put(_))) {
                        st.window.remove(&key);
                    } else {
                        st.window.insert(key, op);
                    }
                }
            }
        }
        if st.window_bytes < st.checkpoint_at {
            return;
        }
        self.checkpoint_logged(&mut st);
    }

    /// Checkpoints whatever the window holds, however little (when the store is idle).
    pub fn checkpoint_now(&self) {
        let mut st = self.state.lock();
        if st.window_bytes > 0 {
            self.checkpoint_logged(&mut st);
        }
    }

    /// [`Index::checkpoint`], with a failure logged once and the next attempt put off.
    fn checkpoint_logged(&self, st: &mut State) {
        match self.checkpoint(st) {
            Ok(()) => {
                if std::mem::take(&mut st.checkpoint_failing) {
                    tracing::warn!("queue index checkpoints succeed again");
                }
                st.checkpoint_at = st.checkpoint_bytes;
            }
            Err(e) => {
                if !std::mem::replace(&mut st.checkpoint_failing, true) {
                    tracing::error!(error = %e, "queue index checkpoint failed; the journal keeps the changes and it is retried");
                }
                st.checkpoint_at = st.window_bytes + st.checkpoint_bytes / 4;
            }
        }
    }

    /// Writes the window into the index files, syncs them, deletes the files left with no live
    /// slot, then deletes the journals. A retry after a failure writes every change of the
    /// window again, so nothing depends on pages a failed fsync may have dropped.
    fn checkpoint(&self, st: &mut State) -> Result<(), StoreError> {
        let mut by_file: BTreeMap<(u64, u64), Vec<(u64, Op)>> = BTreeMap::new();
        for (&(queue, seq), op) in &st.window {
            by_file
                .entry((queue, seq / SLOTS_PER_FILE))
                .or_default()
                .push((seq % SLOTS_PER_FILE, *op));
        }
        let mut names_changed = false;
        let mut written = Vec::new();
        for (key, mut ops) in by_file {
            let known = st.files.contains_key(&key);
            // Settling entries of a file that does not exist: nothing to record.
            if !known && ops.iter().all(|(_, op)| matches!(op, Op::Settle)) {
                continue;
            }
            ops.sort_unstable_by_key(|(slot, _)| *slot);
            let path = self.index_path(key);
            let file = if known {
                self.fs.open(&path)
            } else {
                names_changed = true;
                self.fs.create_new(&path)
            }
            .map_err(|e| io_error("open", &path, &e))?;
            let info = st.files.entry(key).or_default();
            let mut i = 0;
            while i < ops.len() {
                // A run of consecutive slots is one write.
                let first = ops[i].0;
                let mut buf = Vec::new();
                while i < ops.len() && ops[i].0 == first + (buf.len() / SLOT_LEN) as u64 {
                    match ops[i].1 {
                        Op::Put(_) => info.live += 1,
                        Op::Settle => info.live = info.live.saturating_sub(1),
                    }
                    buf.extend_from_slice(&slot_bytes(&ops[i].1));
                    i += 1;
                }
                let at = first * SLOT_LEN as u64;
                file.write_all_at(&buf, at)
                    .map_err(|e| io_error("write", &path, &e))?;
                info.len = info.len.max(at + buf.len() as u64);
            }
            written.push((key, file));
        }
        for (key, file) in written {
            let path = self.index_path(key);
            let info = st.files.get_mut(&key).copied().unwrap_or_default();
            if info.live == 0 {
                // The count says empty; the file has the last word, since deleting a file
                // with a live slot would lose that entry.
                let live = count_live(&read_all(&*file, info.len, &path)?);
                if live == 0 {
                    self.fs
                        .remove(&path)
                        .map_err(|e| io_error("delete", &path, &e))?;
                    st.files.remove(&key);
                    names_changed = true;
                    continue;
                }
                tracing::warn!(file = %path.display(), live, "queue index count was off; corrected");
                if let Some(info) = st.files.get_mut(&key) {
                    info.live = live;
                }
            }
            file.sync_data().map_err(|e| io_error("sync", &path, &e))?;
        }
        if names_changed {
            self.fs
                .sync_dir(&self.dir)
                .map_err(|e| io_error("sync", &self.dir, &e))?;
        }
        // Everything the journals say is in the index files now.
        st.active = None;
        st.window.clear();
        st.window_bytes = 0;
        self.remove_journals(st)
    }

    /// Deletes the journals whose changes the index files now hold, oldest first, making each
    /// deletion durable before the next. Replaying the newest journals over the index files
    /// changes nothing, but replaying an older one without the newer ones rolls its entries
    /// back: a settled entry comes back, and an abandoned journal may even hold a failed
    /// commit's put, naming a body in a segment deleted since the retry wrote it elsewhere.
    /// Deleted together, a power cut could keep any of them; deleted in order, it keeps the
    /// newest. All are gone for good once this returns: one coming back later would replay
    /// old changes over newer ones (a queue that drained reuses its sequence numbers after a
    /// restart). A failure leaves the rest listed, for the next checkpoint or recovery.
    fn remove_journals(&self, st: &mut State) -> Result<(), StoreError> {
        while let Some(&number) = st.journals.first() {
            let path = self.journal_path(number);
            match self.fs.remove(&path) {
                Ok(()) => {}
                // A removal whose directory sync failed before.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("delete", &path, &e)),
            }
            self.fs
                .sync_dir(&self.journal_dir)
                .map_err(|e| io_error("sync", &self.journal_dir, &e))?;
            st.journals.remove(0);
        }
        Ok(())
    }

    /// Replays the journals over the index files and hands every live entry to `each`, queue
    /// by queue in seq order, then checkpoints. Entries of queues `known` does not know (a
    /// crash during a deletion left them) are removed; if `lost_queues` (a queue record was
    /// quarantined) they go to `each` first, since they may be its messages.
    /// Bad slots are quarantined and the rest recovers. An entry at or below its queue's
    /// delivery watermark (`delivered`) gets the redelivered flag written into its slot, so
    /// the caller can drop the watermarks afterwards.
    pub fn recover(
        &self,
        walk: Walk<'_>,
        each: &mut dyn FnMut(Found) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let Walk {
            known,
            delivered,
            lost_queues,
            bad,
            read_only,
        } = walk;
        let mut st = self.state.lock();
        let st = &mut *st;
        st.active = None;
        let journals = st.journals.clone();
        for (i, &number) in journals.iter().enumerate() {
            let path = self.journal_path(number);
            let file = self
                .fs
                .open(&path)
                .map_err(|e| io_error("open", &path, &e))?;
            let len = file.size().map_err(|e| io_error("read", &path, &e))?;
            let data = read_all(&*file, len, &path)?;
            let replay = journal::decode_all(&data);
            for (queue, seq, op) in replay.ops {
                st.window.insert((queue, seq), op);
            }
            if replay.unreadable > 0 {
                let tail = &data[data.len() - replay.unreadable..];
                let newest = i + 1 == journals.len();
                if newest || tail.iter().all(|b| *b == 0) {
                    // What a crash during the last commit leaves: never confirmed.
                    tracing::info!(file = %path.display(), bytes = replay.unreadable, "ignoring the journal's unfinished tail");
                } else {
                    bad(BadRecord {
                        place: format!(
                            "{} from offset {}",
                            path.display(),
                            data.len() - replay.unreadable
                        ),
                        reason: "journal records fail their checksum".into(),
                        raw: tail,
                    })?;
                }
            }
        }

        let mut by_file: BTreeMap<(u64, u64), Vec<(u64, Op)>> = BTreeMap::new();
        for (&(queue, seq), op) in &st.window {
            by_file
                .entry((queue, seq / SLOTS_PER_FILE))
                .or_default()
                .push((seq % SLOTS_PER_FILE, *op));
        }
        let keys: BTreeSet<(u64, u64)> = st.files.keys().chain(by_file.keys()).copied().collect();
        let mut names_changed = false;
        for key in keys {
            let path = self.index_path(key);
            let existing = match st.files.get(&key) {
                Some(info) => {
                    let file = self
                        .fs
                        .open(&path)
                        .map_err(|e| io_error("open", &path, &e))?;
                    let data = read_all(&*file, info.len, &path)?;
                    Some((file, data))
                }
                None => None,
            };
            let known = known(key.0);
            if !known && !lost_queues {
                if existing.is_some() && !read_only {
                    tracing::warn!(file = %path.display(), "removing the index file of a deleted queue");
                    self.remove_index_file(st, key)?;
                    names_changed = true;
                }
                by_file.remove(&key);
                continue;
            }
            let (file, mut data) = match existing {
                Some((file, data)) => (Some(file), data),
                None => (None, Vec::new()),
            };
            let mut changed = false;
            for (slot, op) in by_file.remove(&key).unwrap_or_default() {
                let at = slot as usize * SLOT_LEN;
                if data.len() < at + SLOT_LEN {
                    data.resize(at + SLOT_LEN, 0);
                }
                data[at..at + SLOT_LEN].copy_from_slice(&slot_bytes(&op));
                changed = true;
            }
            let mut live = 0;
            let watermark = delivered(key.0);
            for (slot, bytes) in data.chunks_exact_mut(SLOT_LEN).enumerate() {
                let seq = key.1 * SLOTS_PER_FILE + slot as u64;
                let state = bytes[0];
                let stored = &mut bytes[VALUE_AT..VALUE_AT + ENTRY_VALUE_LEN];
                let value = match state {
                    EMPTY | SETTLED => continue,
                    LIVE => keys::parse_slot_value(stored),
                    _ => None,
                };
                match value {
                    Some(value) if !known => {
                        let mut slot = [0u8; SLOT_LEN];
                        slot.copy_from_slice(bytes);
                        each(Found {
                            queue: key.0,
                            seq,
                            value,
                            slot,
                        })?;
                    }
                    Some(mut value) => {
                        if !value.redelivered && watermark.is_some_and(|w| seq <= w) {
                            if let Some(flagged) = keys::with_redelivered(stored) {
                                stored.copy_from_slice(&flagged);
                                value.redelivered = true;
                                changed = true;
                            }
                        }
                        live += 1;
                        let mut slot = [0u8; SLOT_LEN];
                        slot.copy_from_slice(bytes);
                        each(Found {
                            queue: key.0,
                            seq,
                            value,
                            slot,
                        })?;
                    }
                    None => {
                        bad(BadRecord {
                            place: format!(
                                "{} slot {slot} (queue {} seq {seq})",
                                path.display(),
                                key.0
                            ),
                            reason: "queue entry fails its checksum or does not decode".into(),
                            raw: &bytes[..],
                        })?;
                        bytes.copy_from_slice(&slot_bytes(&Op::Settle));
                        changed = true;
                    }
                }
            }
            if read_only {
                continue;
            }
            if live == 0 {
                if file.is_some() {
                    self.remove_index_file(st, key)?;
                    names_changed = true;
                }
                continue;
            }
            let file = match file {
                Some(file) => file,
                None => {
                    names_changed = true;
                    self.fs
                        .create_new(&path)
                        .map_err(|e| io_error("create", &path, &e))?
                }
            };
            if changed {
                file.write_all_at(&data, 0)
                    .map_err(|e| io_error("write", &path, &e))?;
                file.sync_data().map_err(|e| io_error("sync", &path, &e))?;
            }
            st.files.insert(
                key,
                FileInfo {
                    live,
                    len: data.len() as u64,
                },
            );
        }
        if read_only {
            st.window.clear();
            return Ok(());
        }
        if names_changed {
            self.fs
                .sync_dir(&self.dir)
                .map_err(|e| io_error("sync", &self.dir, &e))?;
        }
        st.window.clear();
        st.window_bytes = 0;
        self.remove_journals(st)
    }

    /// Writes entries straight into the index files, synced, outside the journal: for moving
    /// an older layout's entries out of sled at startup, before [`Index::recover`] reads them
    /// (which is why the journals, not replayed yet, must be left alone). Writing the same
    /// entries twice is harmless.
    pub fn import(&self, entries: &[(u64, u64, [u8; ENTRY_VALUE_LEN])]) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        let mut touched: BTreeMap<(u64, u64), Arc<dyn SegmentFile>> = BTreeMap::new();
        let mut created = false;
        for (queue, seq, value) in entries {
            let key = (*queue, seq / SLOTS_PER_FILE);
            let path = self.index_path(key);
            let file = match touched.get(&key) {
                Some(file) => file.clone(),
                None => {
                    let file = if st.files.contains_key(&key) {
                        self.fs.open(&path)
                    } else {
                        created = true;
                        self.fs.create_new(&path)
                    }
                    .map_err(|e| io_error("open", &path, &e))?;
                    touched.insert(key, file.clone());
                    file
                }
            };
            let at = (seq % SLOTS_PER_FILE) * SLOT_LEN as u64;
            file.write_all_at(&slot_bytes(&Op::Put(*value)), at)
                .map_err(|e| io_error("write", &path, &e))?;
            let info = st.files.entry(key).or_default();
            info.len = info.len.max(at + SLOT_LEN as u64);
        }
        for (key, file) in &touched {
            file.sync_data()
                .map_err(|e| io_error("sync", &self.index_path(*key), &e))?;
        }
        if created {
            self.fs
                .sync_dir(&self.dir)
                .map_err(|e| io_error("sync", &self.dir, &e))?;
        }
        Ok(())
    }

    /// Removes up to `max_files` index files of deleted queue `queue`, with its changes in the
    /// window; once none is left, the rest of its window.
    pub fn purge(&self, queue: u64, max_files: usize) -> Result<Purged, StoreError> {
        let mut st = self.state.lock();
        let st = &mut *st;
        let mut numbers: Vec<u64> = st
            .files
            .keys()
            .filter(|(q, _)| *q == queue)
            .map(|(_, n)| *n)
            .collect();
        numbers.sort_unstable();
        let done = numbers.len() <= max_files;
        let files = numbers.len().min(max_files);
        let mut released = Vec::new();
        for n in numbers.into_iter().take(max_files) {
            let key = (queue, n);
            let path = self.index_path(key);
            let len = st.files.get(&key).map_or(0, |i| i.len);
            let file = self
                .fs
                .open(&path)
                .map_err(|e| io_error("open", &path, &e))?;
            let data = read_all(&*file, len, &path)?;
            for (slot, bytes) in data.chunks_exact(SLOT_LEN).enumerate() {
                let seq = n * SLOTS_PER_FILE + slot as u64;
                let live = match st.window.remove(&(queue, seq)) {
                    Some(Op::Put(value)) => keys::parse_slot_value(&value),
                    Some(Op::Settle) => None,
                    None if bytes[0] == LIVE => {
                        keys::parse_slot_value(&bytes[VALUE_AT..VALUE_AT + ENTRY_VALUE_LEN])
                    }
                    None => None,
                };
                if let Some(value) = live {
                    released.push(value.message_id);
                }
            }
            self.remove_index_file(st, key)?;
        }
        if done {
            // What is left in the window are entries of files never written.
            st.window.retain(|&(q, _), op| {
                if q != queue {
                    return true;
                }
                if let Op::Put(value) = op {
                    if let Some(value) = keys::parse_slot_value(&value[..]) {
                        released.push(value.message_id);
                    }
                }
                false
            });
        }
        Ok(Purged {
            released,
            files,
            done,
        })
    }

    /// Checkpoints once the journal holds `bytes` (tests use small windows to reach
    /// checkpoints often).
    pub fn set_checkpoint_bytes(&self, bytes: u64) {
        let mut st = self.state.lock();
        st.checkpoint_bytes = bytes;
        st.checkpoint_at = bytes;
    }

    /// Live entries on disk, across all queues.
    pub fn entry_count(&self) -> usize {
        let st = self.state.lock();
        let in_files: u64 = st.files.values().map(|i| i.live).sum();
        let mut count = i64::try_from(in_files).unwrap_or(i64::MAX);
        for op in st.window.values() {
            count += match op {
                Op::Put(_) => 1,
                Op::Settle => -1,
            };
        }
        usize::try_from(count.max(0)).unwrap_or(usize::MAX)
    }

    /// Bytes the index files and journals occupy.
    pub fn size_on_disk(&self) -> u64 {
        let st = self.state.lock();
        let files: u64 = st.files.values().map(|i| i.len).sum();
        files + st.window_bytes
    }

    fn remove_index_file(&self, st: &mut State, key: (u64, u64)) -> Result<(), StoreError> {
        let path = self.index_path(key);
        match self.fs.remove(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("delete", &path, &e)),
        }
        st.files.remove(&key);
        Ok(())
    }

    fn index_path(&self, (queue, n): (u64, u64)) -> PathBuf {
        self.dir
            .join(format!("{queue:016x}-{n:08x}.{INDEX_EXTENSION}"))
    }

    fn journal_path(&self, number: u32) -> PathBuf {
        self.journal_dir
            .join(format!("{number:08x}.{}", journal::EXTENSION))
    }
}

/// The bytes of a slot after `op`.
fn slot_bytes(op: &Op) -> [u8; SLOT_LEN] {
    let mut slot = [0u8; SLOT_LEN];
    match op {
        Op::Put(value) => {
            slot[0] = LIVE;
            slot[VALUE_AT..VALUE_AT + ENTRY_VALUE_LEN].copy_from_slice(value);
        }
        Op::Settle => slot[0] = SETTLED,
    }
    slot
}

fn count_live(data: &[u8]) -> u64 {
    data.chunks_exact(SLOT_LEN)
        .filter(|slot| slot[0] == LIVE)
        .count() as u64
}

/// (queue, file number) of an index file name.
pub fn parse_index_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(&format!(".{INDEX_EXTENSION}"))?;
    let (queue, n) = stem.split_once('-')?;
    Some((
        u64::from_str_radix(queue, 16).ok()?,
        u64::from_str_radix(n, 16).ok()?,
    ))
}

fn read_all(file: &dyn SegmentFile, len: u64, path: &Path) -> Result<Vec<u8>, StoreError> {
    let len = usize::try_from(len)
        .map_err(|_| StoreError::Engine(format!("{} is too large", path.display())))?;
    let mut data = vec![0u8; len];
    file.read_exact_at(&mut data, 0)
        .map_err(|e| io_error("read", path, &e))?;
    Ok(data)
}

fn io_error(action: &str, path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Engine(format!("cannot {action} {}: {e}", path.display()))
}
