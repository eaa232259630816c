//! Open-loop pacing for the fixed-rate scenarios: message `n` of a publisher is due at
//! `start + n / rate` by the wall clock, whatever became of message `n - 1`. A broker that
//! answers slowly therefore meets the same offered load as a fast one, and its slow answers show
//! in the latency percentiles instead of quietly lowering the rate (coordinated omission). A
//! publisher that fell behind sends what is due at once.
//!
//! The tokio timer has millisecond granularity: at 1,000 msg/s every message waits for its own
//! tick; at higher rates several messages share one.

use std::time::Duration;

use tokio::time::Instant;

pub struct Pacer {
    start: Instant,
    /// Messages per second.
    rate: f64,
    sent: u64,
}

impl Pacer {
    /// A pacer for `rate` messages per second (at least 1), starting now.
    pub fn new(rate: u64) -> Self {
        Pacer {
            start: Instant::now(),
            rate: rate.max(1) as f64,
            sent: 0,
        }
    }

    /// Waits until the next message is due.
    pub async fn next(&mut self) {
        let due = self.due(self.sent);
        self.sent += 1;
        tokio::time::sleep_until(due).await;
    }

    /// When message `n` (from 0) is due: by the clock, not after the one before it.
    fn due(&self, n: u64) -> Instant {
        self.start + Duration::from_secs_f64(n as f64 / self.rate)
    }
}

/// Splits a total rate over `publishers`, each paced on its own; None (as fast as possible)
/// stays None.
pub fn per_publisher(rate: Option<u64>, publishers: usize) -> Option<u64> {
    rate.map(|r| (r / publishers.max(1) as u64).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_n_is_due_n_intervals_after_the_start() {
        let pacer = Pacer::new(1000);
        assert_eq!(pacer.due(0), pacer.start);
        assert_eq!(pacer.due(1), pacer.start + Duration::from_millis(1));
        assert_eq!(pacer.due(2500), pacer.start + Duration::from_millis(2500));
        let odd = Pacer::new(3);
        assert_eq!(odd.due(3) - odd.start, Duration::from_secs(1));
    }

    #[test]
    fn a_total_rate_is_shared_between_publishers() {
        assert_eq!(per_publisher(Some(1000), 4), Some(250));
        assert_eq!(per_publisher(Some(3), 4), Some(1));
        assert_eq!(per_publisher(None, 4), None);
    }
}
