//! The instruments updated as things happen: bytes moved per protocol, fsync latency, and the
//! process collector (CPU, memory, open files). Values that already live elsewhere (queue depths,
//! message counters, connection counts) are read at scrape time instead; see `http::scrape`.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use rosetta_store::{FailureObserver, FlushObserver, QuarantineObserver};

/// The protocols the broker speaks; labelled series exist for each from the start, so a
/// dashboard shows 0 rather than "no data" before the first client.
pub(crate) const PROTOCOLS: [&str; 3] = ["amqp", "mqtt", "stomp"];

/// fsync latency buckets: 50 µs (a write cache) up to about 3 s (a disk in trouble).
const FSYNC_BUCKET_START: f64 = 0.000_05;
const FSYNC_BUCKET_FACTOR: f64 = 2.0;
const FSYNC_BUCKET_COUNT: usize = 17;

pub(crate) struct Metrics {
    registry: Registry,
    fsync: Histogram,
    write_failures: IntCounter,
    quarantined: IntCounter,
    received: IntCounterVec,
    sent: IntCounterVec,
    auth_failures: IntCounterVec,
    input_order_timeouts: IntCounter,
}

/// One connection's handles on its protocol's byte counters, looked up once so that counting a
/// read or a write is a single atomic add.
pub(crate) struct Traffic {
    pub received: IntCounter,
    pub sent: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let buckets = prometheus::exponential_buckets(
            FSYNC_BUCKET_START,
            FSYNC_BUCKET_FACTOR,
            FSYNC_BUCKET_COUNT,
        )?;
        let fsync = Histogram::with_opts(
            HistogramOpts::new(
                "rosetta_store_fsync_seconds",
                "Duration of store flushes (write-out and fsync); one flush covers many publishers (group commit).",
            )
            .buckets(buckets),
        )?;
        let write_failures = IntCounter::new(
            "rosetta_store_write_failures_total",
            "Store flushes whose write or fsync failed (e.g. a full disk); each is retried, and nothing new is confirmed until one succeeds.",
        )?;
        let quarantined = IntCounter::new(
            "rosetta_store_quarantined_records_total",
            "Store records that failed their checksum or did not decode and were moved to the quarantine directory.",
        )?;
        let received = IntCounterVec::new(
            Opts::new(
                "rosetta_received_bytes_total",
                "Bytes read from client connections.",
            ),
            &["protocol"],
        )?;
        let sent = IntCounterVec::new(
            Opts::new(
                "rosetta_sent_bytes_total",
                "Bytes written to client connections.",
            ),
            &["protocol"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "rosetta_auth_failures_total",
                "Refused logins: unknown user, wrong password, or a loopback-only user from elsewhere.",
            ),
            &["protocol"],
        )?;
        let input_order_timeouts = IntCounter::new(
            "rosetta_mqtt_input_order_timeouts_total",
            "Publishing MQTT input that went ahead after waiting the longest allowed (100 ms) for earlier input: the order of arrival was given up.",
        )?;
        for protocol in PROTOCOLS {
            received.with_label_values(&[protocol]);
            sent.with_label_values(&[protocol]);
            auth_failures.with_label_values(&[protocol]);
        }
        // The management API's basic-auth logins count too.
        auth_failures.with_label_values(&["http"]);
        registry.register(Box::new(fsync.clone()))?;
        registry.register(Box::new(write_failures.clone()))?;
        registry.register(Box::new(quarantined.clone()))?;
        registry.register(Box::new(received.clone()))?;
        registry.register(Box::new(sent.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(input_order_timeouts.clone()))?;
        register_process_collector(&registry)?;
        Ok(Metrics {
            registry,
            fsync,
            write_failures,
            quarantined,
            received,
            sent,
            auth_failures,
            input_order_timeouts,
        })
    }

    /// Feeds the fsync histogram; hand it to the store.
    pub fn flush_observer(&self) -> FlushObserver {
        let fsync = self.fsync.clone();
        Arc::new(move |elapsed: Duration| fsync.observe(elapsed.as_secs_f64()))
    }

    /// Counts failed store flushes; hand it to the store.
    pub fn failure_observer(&self) -> FailureObserver {
        let failures = self.write_failures.clone();
        Arc::new(move || failures.inc())
    }

    /// Counts records the store moves to quarantine; hand it to the store before recovery.
    pub fn quarantine_observer(&self) -> QuarantineObserver {
        let quarantined = self.quarantined.clone();
        Arc::new(move || quarantined.inc())
    }

    pub fn traffic(&self, protocol: &str) -> Traffic {
        Traffic {
            received: self.received.with_label_values(&[protocol]),
            sent: self.sent.with_label_values(&[protocol]),
        }
    }

    /// Bytes read from and written to client connections of every protocol since the start.
    pub fn bytes_total(&self) -> (u64, u64) {
        PROTOCOLS.iter().fold((0, 0), |(received, sent), protocol| {
            (
                received + self.received.with_label_values(&[protocol]).get(),
                sent + self.sent.with_label_values(&[protocol]).get(),
            )
        })
    }

    /// Counts `refused` logins on a `protocol` connection.
    pub fn auth_failures(&self, protocol: &str, refused: u32) {
        self.auth_failures
            .with_label_values(&[protocol])
            .inc_by(u64::from(refused));
    }

    /// The counter of MQTT input that stopped waiting for earlier input; hand it to the
    /// `InputOrder`, which counts each give-up with one atomic add.
    pub fn input_order_timeouts(&self) -> IntCounter {
        self.input_order_timeouts.clone()
    }

    /// Appends the registered instruments in the Prometheus text format.
    pub fn encode(&self, out: &mut String) -> Result<(), prometheus::Error> {
        prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), out)
    }
}

#[cfg(target_os = "linux")]
fn register_process_collector(registry: &Registry) -> Result<(), prometheus::Error> {
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
}

/// The process collector reads /proc; elsewhere the process_* series are simply absent.
#[cfg(not(target_os = "linux"))]
fn register_process_collector(_registry: &Registry) -> Result<(), prometheus::Error> {
    Ok(())
}
