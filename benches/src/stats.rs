//! Counting what arrived: every message body starts with (producer, sequence, send time), so
//! consumers can tell losses and duplicates apart and measure latency.

use std::time::Instant;

/// Bytes at the start of every body: producer id (u32), sequence (u32), send time in µs (u64).
/// Sixteen, so the small-message scenarios can send 16-byte bodies as other benchmarks do.
pub const STAMP: usize = 16;

/// Stamps `body`; sequences past `u32::MAX` (4 billion messages from one producer) are not
/// told apart.
pub fn stamp(body: &mut [u8], producer: u32, seq: u64, epoch: Instant) {
    let sent = epoch.elapsed().as_micros() as u64;
    body[0..4].copy_from_slice(&producer.to_be_bytes());
    body[4..8].copy_from_slice(&u32::try_from(seq).unwrap_or(u32::MAX).to_be_bytes());
    body[8..16].copy_from_slice(&sent.to_be_bytes());
}

pub struct Stamp {
    pub producer: u32,
    pub seq: u64,
    pub sent_us: u64,
}

pub fn read(body: &[u8]) -> Option<Stamp> {
    if body.len() < STAMP {
        return None;
    }
    let producer = u32::from_be_bytes(body[0..4].try_into().ok()?);
    let seq = u64::from(u32::from_be_bytes(body[4..8].try_into().ok()?));
    let sent_us = u64::from_be_bytes(body[8..16].try_into().ok()?);
    Some(Stamp {
        producer,
        seq,
        sent_us,
    })
}

/// One bit per (lane, producer, sequence) a consumer saw, plus latencies. A lane is one queue
/// of a fan-out: the same message is expected once in each.
pub struct Tally {
    producers: usize,
    bits: Vec<Vec<u64>>,
    pub received: u64,
    pub duplicates: u64,
    pub malformed: u64,
    pub latencies_us: Vec<u64>,
}

impl Tally {
    pub fn new(lanes: usize, producers: usize, per_producer: u64) -> Self {
        let words = per_producer.div_ceil(64) as usize;
        Tally {
            producers,
            bits: vec![vec![0; words]; producers * lanes],
            received: 0,
            duplicates: 0,
            malformed: 0,
            latencies_us: Vec::new(),
        }
    }

    pub fn record(&mut self, body: &[u8], lane: usize, now_us: u64, keep_latency: bool) {
        self.received += 1;
        let Some(s) = read(body) else {
            self.malformed += 1;
            return;
        };
        let index = lane * self.producers + s.producer as usize;
        let Some(words) = self
            .bits
            .get_mut(index)
            .filter(|_| (s.producer as usize) < self.producers)
        else {
            self.malformed += 1;
            return;
        };
        let (w, b) = ((s.seq / 64) as usize, s.seq % 64);
        let Some(word) = words.get_mut(w) else {
            self.malformed += 1;
            return;
        };
        if *word & (1 << b) != 0 {
            self.duplicates += 1;
        }
        *word |= 1 << b;
        if keep_latency {
            self.latencies_us.push(now_us.saturating_sub(s.sent_us));
        }
    }

    /// Folds another consumer's tally in; a message seen by both counts as a duplicate.
    pub fn merge(&mut self, other: Tally) {
        self.received += other.received;
        self.duplicates += other.duplicates;
        self.malformed += other.malformed;
        self.latencies_us.extend(other.latencies_us);
        for (mine, theirs) in self.bits.iter_mut().zip(other.bits) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                self.duplicates += u64::from((*a & b).count_ones());
                *a |= b;
            }
        }
    }

    pub fn distinct(&self) -> u64 {
        self.bits
            .iter()
            .flatten()
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }
}

/// Percentile of a sorted slice (nearest rank).
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// CPU seconds (user + system) and peak resident memory of another process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub cpu_seconds: f64,
    /// The part of `cpu_seconds` spent in the process's own code, the rest being the kernel's.
    pub user_seconds: f64,
    pub peak_rss_bytes: u64,
    pub rss_bytes: u64,
    /// Context switches of all its threads, voluntary (it waited) and not (it was preempted):
    /// each wake-up costs the kernel work, and unlike CPU time this count barely moves when
    /// other programs load the machine.
    pub context_switches: u64,
}

pub fn sample_process(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is parenthesised and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    let user_ticks: f64 = fields.get(11)?.parse().ok()?;
    let ticks: f64 = user_ticks + fields.get(12)?.parse::<f64>().ok()?;
    // The kernel reports in USER_HZ, which is 100 on Linux for every common architecture.
    let cpu_seconds = ticks / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    };
    Some(ProcSample {
        cpu_seconds,
        user_seconds: user_ticks / 100.0,
        peak_rss_bytes: kib("VmHWM:")?,
        rss_bytes: kib("VmRSS:")?,
        context_switches: context_switches(pid),
    })
}

/// The context switches of every thread of `pid`. The process's own status file counts its
/// main thread only, and a broker's work happens in the others. Threads that ended are no
/// longer counted, which between two samples of a broker at work is none that matters.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches:")
                        || l.starts_with("nonvoluntary_ctxt_switches:")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_losses_and_duplicates_across_consumers() {
        let epoch = Instant::now();
        let mut body = vec![0u8; 32];
        let mut a = Tally::new(2, 2, 10);
        let mut b = Tally::new(2, 2, 10);
        stamp(&mut body, 0, 3, epoch);
        a.record(&body, 0, 0, false);
        b.record(&body, 0, 0, false);
        // The same message in another lane (fan-out queue) is not a duplicate.
        b.record(&body, 1, 0, false);
        stamp(&mut body, 1, 9, epoch);
        a.record(&body, 0, 0, false);
        a.record(&body, 0, 0, false);
        a.merge(b);
        assert_eq!(a.received, 5);
        assert_eq!(a.distinct(), 3);
        assert_eq!(a.duplicates, 2);
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[], 99.0), 0);
    }
}
