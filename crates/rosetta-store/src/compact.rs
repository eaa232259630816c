//! Segment compaction: the live bodies of a sparse segment are copied to the active one, so the
//! sparse segment can be deleted and disk use follows the bodies still queued.
//!
//! Queue entries keep naming a body's first place (rewriting every entry of a moved body would
//! need to find them all); sled's `moved` tree maps the id of each moved body to its new place,
//! recovery prefers that, and the record goes when the body does. Moves are rare and few, which
//! is what sled is good at.
//!
//! # Order
//!
//! The copies are synced before anyone is pointed at them, so a failure part way leaves the old
//! places in use. The old segment is then released like any emptied one: it is deleted only
//! after a later commit has made the `moved` records durable (see `Segments::take_retired`).

use std::time::Duration;

use rosetta_core::message::Message;
use rosetta_core::store::StoreError;

use crate::codec;
use crate::keys;
use crate::sled_store::{engine, Writer};

/// A segment is compacted only once no body of it has been released for this long: a backlog
/// being consumed empties its segments by itself, and copying bodies about to be consumed
/// would only add writes.
const QUIET: Duration = Duration::from_secs(5);

impl Writer {
    /// What the commit thread does when it has had nothing to commit for a while: moves the
    /// journal into the index files (deleting the files whose entries are all settled) and
    /// compacts a sparse segment. After a backlog drains and traffic stops, this is what gives
    /// the last of the space back.
    pub(crate) fn tidy(&self) {
        self.index.checkpoint_now();
        self.compact();
    }

    /// Compacts one sparse segment, if there is one. Runs on the commit thread after a commit;
    /// a failure is logged and leaves everything where it was.
    pub(crate) fn compact(&self) {
        let Some(segment) = self.segments.sparse_segment(QUIET) else {
            return;
        };
        match self.move_live_bodies(segment) {
            Ok(moved) => tracing::debug!(segment, moved, "segment compacted"),
            Err(e) => tracing::warn!(segment, error = %e, "segment compaction failed"),
        }
    }

    /// Copies the live bodies of `segment` to the active segment and points the store at the
    /// copies; returns how many moved.
    fn move_live_bodies(&self, segment: u32) -> Result<usize, StoreError> {
        let live: Vec<_> = self
            .segments
            .records(segment)?
            .into_iter()
            .filter(|(location, message)| self.refs.location(message.id) == Some(*location))
            .collect();
        if live.is_empty() {
            return Ok(0);
        }
        let messages: Vec<&Message> = live.iter().map(|(_, m)| m).collect();
        let copies = self.segments.append(&messages)?;
        if let Err(e) = self.segments.sync() {
            for copy in copies {
                self.segments.release(copy);
            }
            self.segments.abandon_active();
            return Err(e);
        }
        let mut moved = Vec::with_capacity(live.len());
        for ((old, message), copy) in live.iter().zip(copies) {
            let mut refs = self.refs.lock(message.id);
            match refs.get_mut(&message.id) {
                Some(body) if body.location == Some(*old) => {
                    body.location = Some(copy);
                    body.moved = true;
                    self.segments.release(*old);
                    moved.push((message.id, copy));
                }
                // Consumed meanwhile.
                _ => self.segments.release(copy),
            }
        }
        // Outside the reference locks, which publishers take. A body consumed in between
        // leaves a record of an unknown id, which recovery removes.
        for (id, copy) in &moved {
            self.moved
                .insert(keys::message(*id), codec::seal(copy.encode().to_vec()))
                .map_err(engine)?;
        }
        // Nobody else may commit soon; the old segment goes once the records are durable.
        self.committer.request(self.committer.advance());
        Ok(moved.len())
    }
}
