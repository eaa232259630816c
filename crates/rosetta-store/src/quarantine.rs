//! Records that fail their checksum or do not decode are moved aside rather than stopping the
//! broker or vanishing: each is copied to its own file in `<data dir>/quarantine/`, then removed
//! from the live store, counted and logged once with where it was.
//!
//! A file per record rather than one append-only file: each is written whole, synced and then
//! renamed into place, so a crash while quarantining leaves either a complete file or none (an
//! append-only file could be left with a torn last record), and an operator can inspect, send
//! or delete each one on its own. Bad records are rare, so the number of files stays small.
//!
//! A file holds a short text header (`where`, `reason`, `length`, then an empty line) followed
//! by the record's raw bytes, exactly as they were stored.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use rosetta_core::store::StoreError;

/// Subdirectory of the data directory holding quarantined records.
pub const QUARANTINE_DIR: &str = "quarantine";
const EXTENSION: &str = "rec";

/// Told of every record quarantined (e.g. to count it in a metric).
pub type QuarantineObserver = Arc<dyn Fn() + Send + Sync>;

/// The quarantine directory of one store, and how many records went there since it opened.
pub struct Quarantine {
    dir: PathBuf,
    count: AtomicU64,
    next: AtomicU64,
    observer: RwLock<Option<QuarantineObserver>>,
}

/// A record found bad: where it was (a tree and key, or a segment file and offset), why it is
/// bad, and its bytes as stored.
pub struct BadRecord<'a> {
    pub place: String,
    pub reason: String,
    pub raw: &'a [u8],
}

impl Quarantine {
    pub fn new(data_dir: &Path) -> Quarantine {
        Quarantine {
            dir: data_dir.join(QUARANTINE_DIR),
            count: AtomicU64::new(0),
            next: AtomicU64::new(0),
            observer: RwLock::new(None),
        }
    }

    /// Has `observer` told of every record quarantined from now on (replacing an earlier one).
    pub fn set_observer(&self, observer: QuarantineObserver) {
        *self.observer.write() = Some(observer);
    }

    /// Records quarantined since the store opened.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Copies `bad` to a new file and makes it durable; only then may the caller remove the
    /// record from the live store. Returns the file's path.
    pub fn put(&self, bad: &BadRecord<'_>) -> Result<PathBuf, StoreError> {
        let path = self.write(bad).map_err(|e| {
            StoreError::Engine(format!(
                "cannot quarantine the bad record at {} in {}: {e}",
                bad.place,
                self.dir.display()
            ))
        })?;
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Some(observer) = &*self.observer.read() {
            observer();
        }
        tracing::error!(
            place = %bad.place,
            reason = %bad.reason,
            file = %path.display(),
            "bad store record moved to quarantine"
        );
        Ok(path)
    }

    fn write(&self, bad: &BadRecord<'_>) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let mut contents = format!(
            "where: {}\nreason: {}\nlength: {}\n\n",
            bad.place,
            bad.reason,
            bad.raw.len()
        )
        .into_bytes();
        contents.extend_from_slice(bad.raw);
        let (path, temp) = self.fresh_name()?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(&contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }

    /// A name no file has yet, and the temporary name it is written under. Named by time so
    /// that a listing sorts in the order records were found, across restarts.
    fn fresh_name(&self) -> std::io::Result<(PathBuf, PathBuf)> {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let path = self.dir.join(format!("{millis:013}-{n:04}.{EXTENSION}"));
            match std::fs::symlink_metadata(&path) {
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    let temp = path.with_extension("tmp");
                    return Ok((path, temp));
                }
                Err(e) => return Err(e),
                Ok(_) => continue,
            }
        }
    }
}

/// A key as hex, the way the logs and the quarantine files name it.
pub fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a record of a tree is, for logs and quarantine files.
pub fn tree_place(tree: &str, key: &[u8]) -> String {
    format!("tree {tree}, key {}", hex(key))
}
