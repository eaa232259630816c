//! Group commit: one thread turns many durability requests into few fsyncs.
//!
//! Writers bump the current epoch after their write is buffered. A requester records the epoch it
//! needs and wakes the committer; the committer reads the current epoch as its target, writes the
//! pending batch, fsyncs the body segments and flushes sled (which ends in fsync), and publishes
//! the target as durable. Reading the target
//! *before* flushing is what makes this correct: every epoch at or below it belongs to a write
//! that was buffered before the flush began, so the flush covers it. Requests that arrive during
//! a flush are batched into the next one.
//!
//! A flush that fails (a full disk, an I/O error) publishes nothing: its batch goes back to the
//! pending set (see `Writer::commit`) and the thread tries again, waiting longer each time, until
//! a flush succeeds. The durable epoch therefore never passes a write that is not on disk, and
//! whoever waits on it (publisher confirms) keeps waiting; [`FailureFlag`] tells the broker to
//! pause publishers meanwhile.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use rosetta_core::store::{Epoch, StoreError};

use crate::sled_store::Writer;
use tokio::sync::watch;

/// After a failed flush, wait this long before trying again, so a persistent disk error does
/// not turn into a busy loop...
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(100);
/// ...doubling after each further failure up to this, which bounds both the delay before the
/// store notices that space is back and the segment files abandoned while it is not.
const RETRY_AFTER_ERROR_MAX: Duration = Duration::from_secs(2);
/// A flush of at least this many message writes means several publishers (or one with many
/// confirms outstanding) are waiting on the store...
const BUSY_BATCH: usize = 16;
/// ...so the next flush waits this long for more writes to join it. Each flush costs two fsyncs
/// and a round of wake-ups whatever its size; under load, fewer and larger ones leave more CPU
/// for the messages themselves. A lone publisher waiting on each confirm writes batches of one
/// and never waits.
const BUSY_LINGER: Duration = Duration::from_micros(500);

/// With nothing to commit for this long, the thread tidies the store (see `Writer::tidy`): space
/// held by settled entries and sparse segments comes back even when no traffic follows.
const IDLE_AFTER: Duration = Duration::from_secs(5);

/// Told how long each flush (write-out plus fsync) took, e.g. to feed a latency histogram.
/// Called on the commit thread, so it must be quick and must not block.
pub type FlushObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// Told of every failed flush (write or fsync error), e.g. to count them. Called on the commit
/// thread, so it must be quick and must not block.
pub type FailureObserver = Arc<dyn Fn() + Send + Sync>;

/// Whether the store's writes are failing right now: set by a failed flush, cleared by the
/// next successful one. While it is set nothing new becomes durable.
#[derive(Clone)]
pub struct FailureFlag(Arc<AtomicBool>);

impl FailureFlag {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct State {
    /// The highest epoch anyone asked to make durable.
    requested: Epoch,
    shutdown: bool,
    /// Number of failed flushes so far; a waiter that sees it move knows its flush failed.
    failures: u64,
    /// `failures` when the last outage ended, so its end can say how many attempts failed.
    failures_reported: u64,
    last_error: Option<String>,
}

/// State shared by the store handle and the committer thread.
pub struct Committer {
    state: Mutex<State>,
    /// Wakes the committer thread.
    work: Condvar,
    /// Wakes `sync` callers when the durable epoch advances or a flush fails.
    done: Condvar,
    current: AtomicU64,
    durable: AtomicU64,
    durable_tx: watch::Sender<Epoch>,
    last_flush_micros: AtomicU64,
    flush_count: AtomicU64,
    observer: RwLock<Option<FlushObserver>>,
    failure_observer: RwLock<Option<FailureObserver>>,
    failing: Arc<AtomicBool>,
}

impl Committer {
    pub fn new() -> Arc<Self> {
        let (durable_tx, _) = watch::channel(0);
        Arc::new(Committer {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            current: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            durable_tx,
            last_flush_micros: AtomicU64::new(0),
            flush_count: AtomicU64::new(0),
            observer: RwLock::new(None),
            failure_observer: RwLock::new(None),
            failing: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Starts the committer thread, which writes pending batches through `writer`.
    pub fn spawn(self: &Arc<Self>, writer: Writer) -> std::io::Result<JoinHandle<()>> {
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("rosetta-fsync".into())
            .spawn(move || me.run(&writer))
    }

    /// Called after a write is buffered; returns the write's epoch.
    pub fn advance(&self) -> Epoch {
        // SeqCst so the committer's load of the target is ordered after this write's bump.
        self.current.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn current(&self) -> Epoch {
        self.current.load(Ordering::SeqCst)
    }

    pub fn durable(&self) -> Epoch {
        self.durable.load(Ordering::SeqCst)
    }

    pub fn subscribe(&self) -> watch::Receiver<Epoch> {
        self.durable_tx.subscribe()
    }

    pub fn last_flush_micros(&self) -> u64 {
        self.last_flush_micros.load(Ordering::Relaxed)
    }

    pub fn flush_count(&self) -> u64 {
        self.flush_count.load(Ordering::Relaxed)
    }

    /// Replaces the flush observer.
    pub fn set_observer(&self, observer: FlushObserver) {
        *self.observer.write() = Some(observer);
    }

    /// Replaces the failure observer.
    pub fn set_failure_observer(&self, observer: FailureObserver) {
        *self.failure_observer.write() = Some(observer);
    }

    pub fn failure_flag(&self) -> FailureFlag {
        FailureFlag(self.failing.clone())
    }

    pub fn request(&self, epoch: Epoch) {
        if epoch <= self.durable() {
            return;
        }
        let mut st = self.state.lock();
        if epoch > st.requested {
            st.requested = epoch;
            self.work.notify_one();
        }
    }

    /// Requests everything written so far and blocks until it is durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        let target = self.current();
        if target <= self.durable() {
            return Ok(());
        }
        let mut st = self.state.lock();
        let failures_before = st.failures;
        if target > st.requested {
            st.requested = target;
            self.work.notify_one();
        }
        while self.durable() < target {
            if st.failures != failures_before {
                let reason = st.last_error.clone().unwrap_or_default();
                return Err(StoreError::Engine(format!("flush failed: {reason}")));
            }
            if st.shutdown {
                return Err(StoreError::Engine("store is shutting down".into()));
            }
            self.done.wait(&mut st);
        }
        Ok(())
    }

    /// Tells the thread to stop; the caller joins it and does the final flush itself.
    pub fn shutdown(&self) {
        let mut st = self.state.lock();
        st.shutdown = true;
        self.work.notify_one();
        self.done.notify_all();
    }

    fn run(&self, writer: &Writer) {
        let mut retry_after = RETRY_AFTER_ERROR;
        loop {
            let mut idle = false;
            {
                let mut st = self.state.lock();
                // A failed batch is retried even if nobody waits on it (acknowledgements only):
                // the failure flag, and with it the publishers' pause, stays until it is written.
                while !st.shutdown
                    && st.requested <= self.durable()
                    && !self.failing.load(Ordering::Relaxed)
                {
                    if self.work.wait_for(&mut st, IDLE_AFTER).timed_out() {
                        idle = true;
                        break;
                    }
                }
                if st.shutdown {
                    return;
                }
            }
            if idle {
                writer.tidy();
                continue;
            }
            match self.flush(writer) {
                Ok(writes) => {
                    retry_after = RETRY_AFTER_ERROR;
                    if writes >= BUSY_BATCH {
                        std::thread::sleep(BUSY_LINGER);
                    }
                }
                Err(_) => {
                    self.pause(retry_after);
                    retry_after = (retry_after * 2).min(RETRY_AFTER_ERROR_MAX);
                }
            }
        }
    }

    /// Waits `how_long` before a retry, or until shutdown: a store closed while its disk
    /// fails should not wait out the back-off. New requests do not cut it short.
    fn pause(&self, how_long: Duration) {
        let deadline = Instant::now() + how_long;
        let mut st = self.state.lock();
        while !st.shutdown && !self.work.wait_until(&mut st, deadline).timed_out() {}
    }

    /// One flush covering every write buffered so far; also used for the final flush on drop.
    /// Returns how many message writes it covered.
    pub fn flush(&self, writer: &Writer) -> Result<usize, StoreError> {
        let started = Instant::now();
        let (target, result) = match writer.commit() {
            Ok(written) => {
                writer.remove_segments(written.retired);
                (written.target, Ok(written.writes))
            }
            Err(e) => (0, Err(e.to_string())),
        };
        let elapsed = started.elapsed();
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.last_flush_micros.store(micros, Ordering::Relaxed);
        self.flush_count.fetch_add(1, Ordering::Relaxed);
        if let Some(observe) = self.observer.read().as_ref() {
            observe(elapsed);
        }

        let mut st = self.state.lock();
        match result {
            Ok(writes) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        failed_attempts = st.failures - st.failures_reported,
                        "store writes succeed again"
                    );
                    st.failures_reported = st.failures;
                }
                // fetch_max: a concurrent final flush may already have published a later epoch.
                let previous = self.durable.fetch_max(target, Ordering::SeqCst);
                if target > previous {
                    self.durable_tx.send_replace(target);
                }
                self.done.notify_all();
                Ok(writes)
            }
            Err(reason) => {
                // Logged once per outage, not per retry; the metric counts every attempt.
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        error = %reason,
                        "store write failed; retrying, nothing more is confirmed until it succeeds"
                    );
                } else {
                    tracing::debug!(error = %reason, "store write failed again");
                }
                if let Some(observe) = self.failure_observer.read().as_ref() {
                    observe();
                }
                st.failures += 1;
                st.last_error = Some(reason.clone());
                self.done.notify_all();
                Err(StoreError::Engine(format!("flush failed: {reason}")))
            }
        }
    }
}
