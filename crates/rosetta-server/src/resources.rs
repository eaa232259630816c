//! The resource alarm: while the process uses more memory than `limits.memory_limit`, or the
//! data directory's disk has less than `limits.disk_free_limit` free, publishers are paused
//! (AMQP `connection.blocked`, TCP backpressure elsewhere) instead of letting the broker die.
//! The alarm is also raised while the store's writes fail: nothing new can be confirmed then,
//! and a disk that is full between two checks (or below a limit of 0) would otherwise keep
//! publishers sending into memory.

use std::path::PathBuf;
use std::time::Duration;

use rosetta_store::FailureFlag;
use tokio::sync::watch;

const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Resident set size of this process, from /proc (Linux). `None` where unavailable.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Free bytes on the file system holding `path` (statvfs, through fs4 so no unsafe code is
/// needed here).
fn free_disk_bytes(path: &std::path::Path) -> Option<u64> {
    fs4::available_space(path).ok()
}

pub struct Monitor {
    pub memory_limit: u64,
    pub disk_free_limit: u64,
    pub data_dir: PathBuf,
    pub store_failing: FailureFlag,
}

impl Monitor {
    /// The alarm as it stands now, logged when it is on; the value the broker starts with.
    pub fn initial(&self) -> bool {
        let on = self.alarm();
        if on {
            self.log_change(on);
        }
        on
    }

    fn alarm(&self) -> bool {
        let memory =
            self.memory_limit > 0 && resident_bytes().is_some_and(|rss| rss > self.memory_limit);
        let disk = self.disk_free_limit > 0
            && free_disk_bytes(&self.data_dir).is_some_and(|free| free < self.disk_free_limit);
        memory || disk || self.store_failing.is_set()
    }

    /// Publishes alarm changes until shutdown.
    pub async fn run(self, alarm: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let on = self.alarm();
            if *alarm.borrow() != on {
                self.log_change(on);
                let _ = alarm.send(on);
            }
        }
    }

    fn log_change(&self, on: bool) {
        if on {
            tracing::warn!(
                memory = ?resident_bytes(),
                disk_free = ?free_disk_bytes(&self.data_dir),
                store_writes_failing = self.store_failing.is_set(),
                "resource alarm: publishers paused"
            );
        } else {
            tracing::info!("resource alarm cleared: publishers resume");
        }
    }
}
