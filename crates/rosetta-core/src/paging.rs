//! A queue's ready list, and which of its messages keep their body in memory (paging).
//!
//! A persistent message in a stored queue has a copy in the store, so its body need not stay in
//! memory while it waits. Each queue keeps bodies for its head, up to a byte budget
//! (`CoreLimits::queue_resident_bytes`); a message that arrives while the budget is spent, or
//! while older messages are paged out, keeps only its [`Entry`] summary. When the head's body is
//! on disk and a consumer can take it, the queue reads the next bodies back in queue order,
//! [`READ_AHEAD`] at a time and with its lock released, so a backlog drains at the speed of
//! sequential store reads, memory holds a window of it, never all of it, and publishers and
//! acknowledgements are not held up by the disk. A consumer whose buffer is full triggers no
//! read: what a slow consumer costs stays on disk.
//!
//! Transient messages, and messages in queues that are not stored (non-durable or exclusive),
//! have no copy on disk: they always stay resident, and count against the budget.

use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroU64;
use std::sync::Arc;

use crate::message::Message;

/// Sort key: inverted priority first, so `pop_first` yields the highest priority, then order.
pub(crate) type Slot = (u8, u64);

/// The slot class of messages without priority (and of priority 0): the last to be served.
const PLAIN: u8 = u8::MAX;
/// Bodies read back at once when the head of a queue is paged out.
pub(crate) const READ_AHEAD: usize = 256;
/// Entries a read-ahead looks at, resident ones included, so that a queue mixing transient and
/// persistent messages does not make one read-ahead walk a long stretch of the list.
const READ_AHEAD_SCAN: usize = 4 * READ_AHEAD;
/// The appended run keeps its allocation until it is at most a quarter full, and never shrinks
/// below this many slots, so a queue that drains and refills does not reallocate each time.
const MIN_RUN_CAPACITY: usize = 4096;

/// One queued message. Kept small: a backlog holds one per message even when every body is on
/// disk.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The message while resident; `None` while paged out (the store holds it under `id`).
    pub message: Option<Arc<Message>>,
    pub id: u64,
    pub body_len: u64,
    /// Wall-clock expiry in ms since the Unix epoch.
    pub expires_at: Option<NonZeroU64>,
    pub redelivered: bool,
    /// Whether the store holds this entry (persistent message in a stored queue).
    pub persisted: bool,
}

/// Ready messages in delivery order, with the byte counts limits and paging need.
///
/// Nearly every message is appended at the end of its queue in sequence order, so those live in
/// `run`, a dense deque of plain-priority entries in increasing seq order (about a third of the
/// memory of a B-tree entry, which matters for a backlog of millions). What arrives out of that
/// order (a requeued delivery, a message with a priority) goes to `sorted`. The head of the
/// queue is whichever of the two heads has the lower slot.
#[derive(Debug, Default)]
pub(crate) struct Ready {
    sorted: BTreeMap<Slot, Entry>,
    /// Plain-priority entries appended in seq order: slot `(PLAIN, seq)`.
    run: VecDeque<(u64, Entry)>,
    /// Body bytes of every ready message (what `x-max-length-bytes` limits).
    bytes: u64,
    /// Body bytes of the ready messages held in memory.
    resident_bytes: u64,
    /// Ready messages whose body is paged out.
    paged: usize,
}

impl Ready {
    pub fn len(&self) -> usize {
        self.sorted.len() + self.run.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty() && self.run.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn resident_bytes(&self) -> u64 {
        self.resident_bytes
    }

    pub fn paged(&self) -> usize {
        self.paged
    }

    /// Whether the head is in `sorted` (rather than `run`).
    fn head_is_sorted(&self) -> Option<bool> {
        match (self.sorted.first_key_value(), self.run.front()) {
            (Some((slot, _)), Some((seq, _))) => Some(*slot < (PLAIN, *seq)),
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (None, None) => None,
        }
    }

    pub fn first(&self) -> Option<&Entry> {
        if self.head_is_sorted()? {
            self.sorted.first_key_value().map(|(_, e)| e)
        } else {
            self.run.front().map(|(_, e)| e)
        }
    }

    fn count_in(&mut self, entry: &Entry) {
        self.bytes += entry.body_len;
        if entry.message.is_some() {
            self.resident_bytes += entry.body_len;
        } else {
            self.paged += 1;
        }
    }

    fn count_out(&mut self, entry: &Entry) {
        self.bytes -= entry.body_len;
        if entry.message.is_some() {
            self.resident_bytes -= entry.body_len;
        } else {
            self.paged -= 1;
        }
    }

    pub fn insert(&mut self, slot: Slot, entry: Entry) {
        self.count_in(&entry);
        let (class, seq) = slot;
        let appends = class == PLAIN
            && match self.run.back() {
                Some((last, _)) => seq > *last,
                None => self.sorted.last_key_value().is_none_or(|(k, _)| *k < slot),
            };
        if appends {
            self.run.push_back((seq, entry));
            return;
        }
        // Inside the run's range only if a caller reinserts out of order; kept correct anyway.
        let inside_run = class == PLAIN && self.run.front().is_some_and(|(first, _)| seq > *first);
        if inside_run {
            let at = self.run.partition_point(|(s, _)| *s < seq);
            self.run.insert(at, (seq, entry));
        } else if let Some(old) = self.sorted.insert(slot, entry) {
            // Slots are unique per queue; should one be reused, the counts still stay true.
            self.count_out(&old);
        }
    }

    pub fn pop_first(&mut self) -> Option<(Slot, Entry)> {
        let (slot, entry) = if self.head_is_sorted()? {
            self.sorted.pop_first()?
        } else {
            let (seq, entry) = self.run.pop_front()?;
            if self.run.capacity() > MIN_RUN_CAPACITY && self.run.len() < self.run.capacity() / 4 {
                self.run
                    .shrink_to((2 * self.run.len()).max(MIN_RUN_CAPACITY));
            }
            ((PLAIN, seq), entry)
        };
        self.count_out(&entry);
        Some((slot, entry))
    }

    /// Empties the list, returning what it held in no particular order.
    pub fn take(&mut self) -> impl Iterator<Item = (Slot, Entry)> {
        self.bytes = 0;
        self.resident_bytes = 0;
        self.paged = 0;
        let sorted = std::mem::take(&mut self.sorted);
        let run = std::mem::take(&mut self.run);
        sorted
            .into_iter()
            .chain(run.into_iter().map(|(seq, e)| ((PLAIN, seq), e)))
    }

    /// Whether a new stored message of `body_len` bytes keeps its body in memory: only while
    /// nothing before it is paged out (so the resident messages are the head) and the budget
    /// (`None` = unlimited) has room.
    pub fn keeps_body(&self, body_len: u64, budget: Option<u64>) -> bool {
        self.paged == 0 && budget.is_none_or(|b| self.resident_bytes + body_len <= b)
    }

    pub fn head_is_paged(&self) -> bool {
        self.first().is_some_and(|e| e.message.is_none())
    }

    /// The head-first order `pop_first` would take entries in: the two sequences merged.
    fn iter(&self) -> impl Iterator<Item = (Slot, &Entry)> {
        let mut sorted = self.sorted.iter().peekable();
        let mut run = self.run.iter().peekable();
        std::iter::from_fn(move || {
            let from_sorted = match (sorted.peek(), run.peek()) {
                (Some((slot, _)), Some((seq, _))) => **slot < (PLAIN, *seq),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return None,
            };
            if from_sorted {
                sorted.next().map(|(slot, e)| (*slot, e))
            } else {
                run.next().map(|(seq, e)| ((PLAIN, *seq), e))
            }
        })
    }

    /// The paged-out entries to read back next, head first, as `(slot, message id)`: up to
    /// [`READ_AHEAD`] of them within the budget (the first one regardless, so the head can
    /// always be delivered). The caller reads them with the queue unlocked and hands the bodies
    /// to [`Ready::attach`].
    pub fn plan_read_ahead(&self, budget: Option<u64>) -> Vec<(Slot, u64)> {
        let mut planned = Vec::new();
        let mut resident = self.resident_bytes;
        for (slot, entry) in self.iter().take(READ_AHEAD_SCAN) {
            if planned.len() == READ_AHEAD {
                break;
            }
            if entry.message.is_some() {
                continue;
            }
            if !planned.is_empty() && budget.is_some_and(|b| resident + entry.body_len > b) {
                break;
            }
            resident += entry.body_len;
            planned.push((slot, entry.id));
        }
        planned
    }

    fn entry_mut(&mut self, slot: Slot) -> Option<&mut Entry> {
        if slot.0 == PLAIN {
            let at = self.run.partition_point(|(s, _)| *s < slot.1);
            if self.run.get(at).is_some_and(|(s, _)| *s == slot.1) {
                return self.run.get_mut(at).map(|(_, e)| e);
            }
        }
        self.sorted.get_mut(&slot)
    }

    /// Gives a paged-out entry its body back. The entry may have left meanwhile (delivered,
    /// expired, purged) or come back resident: then the body is not needed.
    pub fn attach(&mut self, slot: Slot, id: u64, message: Arc<Message>) {
        let Some(entry) = self.entry_mut(slot) else {
            return;
        };
        if entry.id != id || entry.message.is_some() {
            return;
        }
        let body_len = entry.body_len;
        entry.message = Some(message);
        self.resident_bytes += body_len;
        self.paged -= 1;
    }

    /// Takes one entry out, wherever it is (a paged-out entry whose body cannot be read).
    pub fn remove(&mut self, slot: Slot, id: u64) -> Option<Entry> {
        if self.entry_mut(slot)?.id != id {
            return None;
        }
        let entry = if slot.0 == PLAIN && !self.sorted.contains_key(&slot) {
            let at = self.run.partition_point(|(s, _)| *s < slot.1);
            self.run.remove(at).map(|(_, e)| e)?
        } else {
            self.sorted.remove(&slot)?
        };
        self.count_out(&entry);
        Some(entry)
    }
}

#[cfg(test)]
#[path = "paging_tests.rs"]
mod tests;
