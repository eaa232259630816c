//! A simulated file layer for the body segments: written data stays volatile until fsynced, a
//! power cut keeps only what was synced plus a random prefix of the unsynced writes (the last
//! of them possibly torn), and writes or fsyncs can be made to fail.
//!
//! A failed fsync behaves as Linux's did before 4.13 and as several file systems still do: the
//! unsynced writes are dropped from what will reach the disk while reads still see them, and
//! the next fsync of the file reports success. A store that retried the fsync and trusted it
//! would lose confirmed data at the next power cut, which the tests then see.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rosetta_store::fs::{FileSystem, SegmentFile};

/// A small deterministic generator (SplitMix64), so a failing seed can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

#[derive(Default)]
struct Contents {
    /// What reads see.
    volatile: Vec<u8>,
    /// What is on the disk for sure.
    durable: Vec<u8>,
    /// Writes since the last fsync, in order; any prefix of them may reach the disk.
    unsynced: Vec<(u64, Vec<u8>)>,
    /// An fsync of this file failed.
    sync_failed: bool,
}

fn write_into(data: &mut Vec<u8>, offset: u64, buf: &[u8]) {
    let offset = usize::try_from(offset).expect("offset fits memory");
    if data.len() < offset {
        // A hole reads as zeros. Copied rather than `resize`d, which is a byte loop in an
        // unoptimised test build.
        data.extend_from_slice(&vec![0; offset - data.len()]);
    }
    let overlap = (data.len() - offset).min(buf.len());
    data[offset..offset + overlap].copy_from_slice(&buf[..overlap]);
    data.extend_from_slice(&buf[overlap..]);
}

struct State {
    rng: Rng,
    /// Names as the running system sees them.
    names: HashMap<PathBuf, Arc<Mutex<Contents>>>,
    /// Names as they are on disk: set by `sync_dir`.
    durable_names: HashMap<PathBuf, Arc<Mutex<Contents>>>,
    /// Mutating operations so far, and the one at which the power goes.
    ops: u64,
    crash_at: Option<u64>,
    crashed: bool,
    fail_writes: bool,
    fail_syncs: bool,
    /// Failures still to inject by `fail_next`.
    fail_count: u64,
    /// Writes and fsyncs failed on purpose so far.
    injected: u64,
    /// Writes and fsyncs of a file after an fsync of it failed.
    reused: u64,
}

/// The simulated file system; clones share it.
#[derive(Clone)]
pub struct SimFs(Arc<Mutex<State>>);

struct SimFile {
    fs: SimFs,
    contents: Arc<Mutex<Contents>>,
}

fn dead() -> io::Error {
    io::Error::other("simulated power loss: the machine is off")
}

impl SimFs {
    pub fn new(seed: u64) -> SimFs {
        SimFs(Arc::new(Mutex::new(State {
            rng: Rng::new(seed),
            names: HashMap::new(),
            durable_names: HashMap::new(),
            ops: 0,
            crash_at: None,
            crashed: false,
            fail_writes: false,
            fail_syncs: false,
            fail_count: 0,
            injected: 0,
            reused: 0,
        })))
    }

    /// The power goes at the `after`-th mutating operation from now; it and every later one
    /// fail.
    pub fn crash_after(&self, after: u64) {
        let mut st = self.0.lock();
        st.crash_at = Some(st.ops + after);
    }

    pub fn crashed(&self) -> bool {
        self.0.lock().crashed
    }

    /// Writes fail with ENOSPC (after writing a random part of their data) while set.
    pub fn fail_writes(&self, on: bool) {
        self.0.lock().fail_writes = on;
    }

    /// Fsyncs fail with EIO, losing the file's unsynced writes, while set.
    pub fn fail_syncs(&self, on: bool) {
        self.0.lock().fail_syncs = on;
    }

    /// The next `count` writes (or fsyncs, unless `writes`) fail, then they work again.
    pub fn fail_next(&self, writes: bool, count: u64) {
        let mut st = self.0.lock();
        st.fail_writes = writes;
        st.fail_syncs = !writes;
        st.fail_count = count;
    }

    /// How often a file was written or synced again after an fsync of it failed: a store that
    /// does so trusts a file whose contents it no longer knows.
    pub fn reused_after_failed_sync(&self) -> u64 {
        self.0.lock().reused
    }

    pub fn injected_failures(&self) -> u64 {
        self.0.lock().injected
    }

    /// What a machine restarted after a power cut now would find: the synced contents of the
    /// files whose names were synced, each with a random prefix of its unsynced writes, the
    /// last one possibly cut short. Names created or removed since their directory's last
    /// sync may or may not be there.
    pub fn after_power_loss(&self, seed: u64) -> SimFs {
        let mut st = self.0.lock();
        st.crashed = true;
        let mut candidates: HashSet<PathBuf> = st.durable_names.keys().cloned().collect();
        candidates.extend(st.names.keys().cloned());
        let mut sorted: Vec<PathBuf> = candidates.into_iter().collect();
        sorted.sort();
        let mut files = HashMap::new();
        for path in sorted {
            let durable = st.durable_names.get(&path).cloned();
            let current = st.names.get(&path).cloned();
            let survives = match (&durable, &current) {
                (Some(a), Some(b)) if Arc::ptr_eq(a, b) => Some(a.clone()),
                // Created or removed since the last directory sync: either way.
                (Some(a), _) | (None, Some(a)) => st.rng.chance(2).then(|| a.clone()),
                (None, None) => None,
            };
            let Some(contents) = survives else { continue };
            let contents = contents.lock();
            let mut data = contents.durable.clone();
            let reached = st.rng.below(contents.unsynced.len() as u64 + 1) as usize;
            for (i, (offset, buf)) in contents.unsynced.iter().enumerate().take(reached + 1) {
                if i < reached {
                    write_into(&mut data, *offset, buf);
                } else if !buf.is_empty() && st.rng.chance(2) {
                    // Torn: the next write only partly made it.
                    let cut = st.rng.below(buf.len() as u64) as usize;
                    write_into(&mut data, *offset, &buf[..cut]);
                }
            }
            files.insert(
                path,
                Arc::new(Mutex::new(Contents {
                    volatile: data.clone(),
                    durable: data,
                    unsynced: Vec::new(),
                    sync_failed: false,
                })),
            );
        }
        let next = st.rng.next() ^ seed;
        drop(st);
        let fs = SimFs::new(next);
        {
            let mut st = fs.0.lock();
            st.durable_names = files.clone();
            st.names = files;
        }
        fs
    }
}

impl State {
    /// Counts an injected failure; the last one `fail_next` asked for turns failures off.
    fn injected(&mut self) {
        self.injected += 1;
        if self.fail_count > 0 {
            self.fail_count -= 1;
            if self.fail_count == 0 {
                self.fail_writes = false;
                self.fail_syncs = false;
            }
        }
    }

    /// Counts a mutating operation; an error once the power is gone.
    fn step(&mut self) -> io::Result<()> {
        if self.crashed {
            return Err(dead());
        }
        self.ops += 1;
        if self.crash_at.is_some_and(|at| self.ops >= at) {
            self.crashed = true;
            return Err(dead());
        }
        Ok(())
    }
}

impl SegmentFile for SimFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.fs.0.lock();
        st.step()?;
        let mut contents = self.contents.lock();
        if contents.sync_failed {
            st.reused += 1;
        }
        if st.fail_writes {
            st.injected();
            let part = st.rng.below(buf.len() as u64 + 1) as usize;
            write_into(&mut contents.volatile, offset, &buf[..part]);
            contents.unsynced.push((offset, buf[..part].to_vec()));
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        write_into(&mut contents.volatile, offset, buf);
        contents.unsynced.push((offset, buf.to_vec()));
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let contents = self.contents.lock();
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start + buf.len();
        let data = contents
            .volatile
            .get(start..end)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(data);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.fs.0.lock();
        st.step()?;
        let mut contents = self.contents.lock();
        if contents.sync_failed {
            st.reused += 1;
        }
        if st.fail_syncs {
            st.injected();
            // The pages are marked clean without reaching the disk.
            contents.unsynced.clear();
            contents.sync_failed = true;
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        let pending = std::mem::take(&mut contents.unsynced);
        for (offset, buf) in pending {
            write_into(&mut contents.durable, offset, &buf);
        }
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.contents.lock().volatile.len() as u64)
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.0.lock();
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let st = self.0.lock();
        let contents = st.names.get(path).ok_or(io::ErrorKind::NotFound)?.clone();
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            contents,
        }))
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let mut st = self.0.lock();
        st.step()?;
        if st.names.contains_key(path) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        let contents = Arc::new(Mutex::new(Contents::default()));
        st.names.insert(path.to_owned(), contents.clone());
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            contents,
        }))
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        let mut st = self.0.lock();
        st.step()?;
        st.durable_names = st.names.clone();
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.0.lock();
        st.step()?;
        st.names
            .remove(path)
            .map(drop)
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }
}
