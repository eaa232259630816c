//! The one JSON line a run ends with. Written by hand: the format is flat and fixed, and the
//! generator should not need a serialization crate for it.

use crate::stats::{percentile, ProcSample, Tally};

#[derive(Default)]
pub struct Report {
    pub scenario: &'static str,
    pub label: String,
    pub producers: usize,
    pub consumers: usize,
    pub queues: usize,
    pub size: usize,
    pub persistent: bool,
    pub confirm: bool,
    pub prefetch: u16,
    /// Messages published (confirmed, when confirms are on).
    pub sent: u64,
    /// Deliveries expected in total (sent × queues for fan-out).
    pub expected: u64,
    pub received: u64,
    pub distinct: u64,
    pub duplicates: u64,
    pub malformed: u64,
    pub elapsed_s: f64,
    /// Backlog only: the publish phase alone.
    pub publish_s: Option<f64>,
    pub latencies_us: Vec<u64>,
    pub broker_before: Option<ProcSample>,
    pub broker_after: Option<ProcSample>,
    /// Backlog only: broker RSS right after publishing.
    pub broker_rss_after_publish: Option<u64>,
    /// Churn only: (messages received, data directory bytes) samples.
    pub size_curve: Vec<(u64, u64)>,
    /// Scenario-specific fields, appended as they are: (name, JSON value).
    pub extra: Vec<(&'static str, String)>,
}

impl Report {
    pub fn absorb(&mut self, tally: Tally) {
        self.received = tally.received;
        self.distinct = tally.distinct();
        self.duplicates = tally.duplicates;
        self.malformed = tally.malformed;
        self.latencies_us = tally.latencies_us;
    }

    pub fn to_json(&self) -> String {
        let mut lat = self.latencies_us.clone();
        lat.sort_unstable();
        let rate = if self.elapsed_s > 0.0 {
            self.received as f64 / self.elapsed_s
        } else {
            0.0
        };
        let mut fields = vec![
            format!("\"scenario\":\"{}\"", self.scenario),
            format!("\"label\":\"{}\"", self.label.replace('"', "'")),
            format!("\"producers\":{}", self.producers),
            format!("\"consumers\":{}", self.consumers),
            format!("\"queues\":{}", self.queues),
            format!("\"size\":{}", self.size),
            format!("\"persistent\":{}", self.persistent),
            format!("\"confirm\":{}", self.confirm),
            format!("\"prefetch\":{}", self.prefetch),
            format!("\"sent\":{}", self.sent),
            format!("\"expected\":{}", self.expected),
            format!("\"received\":{}", self.received),
            format!("\"lost\":{}", self.expected.saturating_sub(self.distinct)),
            format!("\"duplicates\":{}", self.duplicates),
            format!("\"malformed\":{}", self.malformed),
            format!("\"elapsed_s\":{:.3}", self.elapsed_s),
            format!("\"deliveries_per_s\":{rate:.0}"),
        ];
        if let Some(p) = self.publish_s {
            fields.push(format!("\"publish_s\":{p:.3}"));
            fields.push(format!(
                "\"publish_per_s\":{:.0}",
                self.sent as f64 / p.max(1e-9)
            ));
            let drain = self.elapsed_s - p;
            fields.push(format!("\"drain_s\":{drain:.3}"));
            fields.push(format!(
                "\"drain_per_s\":{:.0}",
                self.received as f64 / drain.max(1e-9)
            ));
        }
        if !lat.is_empty() {
            fields.push(format!(
                "\"latency_us\":{{\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
                percentile(&lat, 50.0),
                percentile(&lat, 99.0),
                percentile(&lat, 99.9),
                lat.last().copied().unwrap_or(0)
            ));
        }
        if let (Some(before), Some(after)) = (self.broker_before, self.broker_after) {
            let cpu = after.cpu_seconds - before.cpu_seconds;
            fields.push(format!("\"broker_cpu_s\":{cpu:.2}"));
            if self.received > 0 {
                let per_msg = |v: f64| v / self.received as f64;
                fields.push(format!(
                    "\"broker_cpu_us_per_msg\":{:.2}",
                    per_msg(cpu * 1e6)
                ));
                let user = after.user_seconds - before.user_seconds;
                fields.push(format!(
                    "\"broker_user_us_per_msg\":{:.2}",
                    per_msg(user * 1e6)
                ));
                let switches = after
                    .context_switches
                    .saturating_sub(before.context_switches);
                fields.push(format!(
                    "\"broker_switches_per_msg\":{:.3}",
                    per_msg(switches as f64)
                ));
            }
            fields.push(format!(
                "\"broker_peak_rss_bytes\":{}",
                after.peak_rss_bytes
            ));
        }
        if let Some(rss) = self.broker_rss_after_publish {
            fields.push(format!("\"broker_rss_after_publish_bytes\":{rss}"));
        }
        if !self.size_curve.is_empty() {
            let points: Vec<String> = self
                .size_curve
                .iter()
                .map(|(n, b)| format!("[{n},{b}]"))
                .collect();
            fields.push(format!("\"size_curve\":[{}]", points.join(",")));
        }
        fields.extend(self.extra.iter().map(|(k, v)| format!("\"{k}\":{v}")));
        format!("{{{}}}", fields.join(","))
    }
}
