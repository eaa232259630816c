//! sled batches applied in bounded chunks.
//!
//! sled applies a batch under one epoch guard and one exclusive lock: every page the batch
//! replaces stays allocated until the batch ends, and readers wait meanwhile. Draining a
//! backlog of a few hundred thousand messages and writing their acknowledgements as one batch
//! held over a gigabyte this way. Chunks keep both short. None of our writes needs a batch to be
//! atomic: bodies are written before the entries that name them and deleted after, so a crash
//! between two chunks leaves at worst orphan bodies, which recovery removes.

use sled::IVec;

use rosetta_core::store::StoreError;

use crate::sled_store::engine;

/// Writes per sled batch.
const CHUNK: usize = 1024;

pub(crate) struct Chunked<'a> {
    tree: &'a sled::Tree,
    batch: sled::Batch,
    len: usize,
}

impl<'a> Chunked<'a> {
    pub fn new(tree: &'a sled::Tree) -> Self {
        Chunked {
            tree,
            batch: sled::Batch::default(),
            len: 0,
        }
    }

    pub fn remove(&mut self, key: impl Into<IVec>) -> Result<(), StoreError> {
        self.batch.remove(key);
        self.count()
    }

    fn count(&mut self) -> Result<(), StoreError> {
        self.len += 1;
        if self.len == CHUNK {
            self.apply()?;
        }
        Ok(())
    }

    fn apply(&mut self) -> Result<(), StoreError> {
        let ops = std::mem::take(&mut self.len);
        self.tree
            .apply_batch(std::mem::take(&mut self.batch))
            .map_err(engine)?;
        reclaim(ops);
        Ok(())
    }

    /// Applies what is left.
    pub fn finish(mut self) -> Result<(), StoreError> {
        if self.len > 0 {
            self.apply()?;
        }
        Ok(())
    }
}

/// Frees the tree nodes a batch of `ops` writes replaced.
///
/// sled defers freeing every node version it replaces to crossbeam's epoch collector, which
/// frees at most a few hundred deferred items per collection and collects only every 128 pins
/// of a thread or when a thread flushes. Our writes all come from the commit thread, one pin
/// per batch, so without help garbage piles up far faster than it is freed: draining a backlog
/// of 300,000 messages grew the heap by 250 MiB of old nodes. Each flush collects up to 8 bags
/// of 64 items; a write replaces about two versions.
fn reclaim(ops: usize) {
    for _ in 0..=ops / 256 {
        crossbeam_epoch::pin().flush();
    }
}
