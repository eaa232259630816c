//! Where the broker is in its life, for health checks: serving, or shutting down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub(crate) struct Lifecycle {
    started: Instant,
    shutting_down: AtomicBool,
}

impl Lifecycle {
    pub fn new() -> Self {
        Lifecycle {
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
        }
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}
