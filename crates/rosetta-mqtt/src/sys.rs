//! The broker's status under `$SYS/broker/...`, with Mosquitto's topic names and payload
//! formats (mosquitto(8), "Broker Status"), so dashboards made for Mosquitto work unchanged.
//!
//! The server samples its counters every `[mqtt] sys_interval` seconds and hands them to
//! [`SysTree::sample`], which turns them into topics and payloads and keeps only those that
//! changed; [`MqttState::publish_status`] retains them and routes them to subscribers. Nothing
//! here runs per message.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use mqtt_proto::QoS;
use rosetta_core::queue::now_ms;

use crate::message::{AppMessage, AppProperties};
use crate::state::MqttState;
use crate::topic;

/// Broker-wide totals since the broker started, and what the store holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages published by clients of any protocol.
    pub messages_received: u64,
    /// Messages delivered to clients of any protocol.
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Messages in queues (ready or unacknowledged), retained messages not included.
    pub queued_messages: u64,
    /// Body bytes of those messages.
    pub queued_bytes: u64,
}

/// What the MQTT front-end counts of its own clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clients {
    /// Connections holding a client id.
    pub connected: u64,
    /// Persistent sessions whose client is not connected.
    pub disconnected: u64,
    /// Subscriptions of every session, connected or not.
    pub subscriptions: u64,
    pub retained: u64,
}

/// Mosquitto's load windows: the moving averages it publishes, per minute.
const WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// Moving averages of one counter's rate per minute over each of [`WINDOWS`].
#[derive(Debug, Default, Clone, Copy)]
struct Load([f64; 3]);

impl Load {
    /// Folds in the rate seen over the last `elapsed` seconds: each average decays by
    /// e^(-elapsed/window) towards it, as a load average does.
    fn update(&mut self, delta: u64, elapsed: f64) {
        let per_minute = delta as f64 * 60.0 / elapsed;
        for (average, (_, window)) in self.0.iter_mut().zip(WINDOWS) {
            let keep = (-elapsed / window).exp();
            *average = *average * keep + per_minute * (1.0 - keep);
        }
    }
}

/// The `$SYS` topics' state between samples: the load averages, the most clients seen, and the
/// payload last published on each topic.
#[derive(Debug)]
pub struct SysTree {
    version: String,
    started: Instant,
    previous: Option<(Instant, Counters)>,
    /// messages received, messages sent, bytes received, bytes sent.
    load: [Load; 4],
    max_clients: u64,
    published: HashMap<&'static str, String>,
}

impl SysTree {
    /// `version` is the broker's version, published as `rosetta version {version}`; `started`
    /// is when the broker started, for the uptime.
    pub fn new(version: &str, started: Instant) -> Self {
        SysTree {
            version: version.to_owned(),
            started,
            previous: None,
            load: [Load::default(); 4],
            max_clients: 0,
            published: HashMap::new(),
        }
    }

    /// The topics whose payload changed since the last sample, with their new payloads.
    pub fn sample(
        &mut self,
        now: Instant,
        counters: Counters,
        clients: Clients,
    ) -> Vec<(&'static str, String)> {
        if let Some((then, before)) = self.previous {
            let elapsed = now.duration_since(then).as_secs_f64();
            if elapsed > 0.0 {
                let deltas = [
                    counters
                        .messages_received
                        .saturating_sub(before.messages_received),
                    counters.messages_sent.saturating_sub(before.messages_sent),
                    counters
                        .bytes_received
                        .saturating_sub(before.bytes_received),
                    counters.bytes_sent.saturating_sub(before.bytes_sent),
                ];
                for (load, delta) in self.load.iter_mut().zip(deltas) {
                    load.update(delta, elapsed);
                }
            }
        }
        self.previous = Some((now, counters));
        self.max_clients = self.max_clients.max(clients.connected);
        let uptime = now.duration_since(self.started).as_secs();
        let stored = counters.queued_messages + clients.retained;
        let mut values: Vec<(&'static str, String)> = vec![
            (
                "$SYS/broker/version",
                format!("rosetta version {}", self.version),
            ),
            ("$SYS/broker/uptime", format!("{uptime} seconds")),
            (
                "$SYS/broker/clients/connected",
                clients.connected.to_string(),
            ),
            (
                "$SYS/broker/clients/disconnected",
                clients.disconnected.to_string(),
            ),
            (
                "$SYS/broker/clients/total",
                (clients.connected + clients.disconnected).to_string(),
            ),
            ("$SYS/broker/clients/maximum", self.max_clients.to_string()),
            (
                "$SYS/broker/messages/received",
                counters.messages_received.to_string(),
            ),
            (
                "$SYS/broker/messages/sent",
                counters.messages_sent.to_string(),
            ),
            (
                "$SYS/broker/publish/messages/received",
                counters.messages_received.to_string(),
            ),
            (
                "$SYS/broker/publish/messages/sent",
                counters.messages_sent.to_string(),
            ),
            (
                "$SYS/broker/bytes/received",
                counters.bytes_received.to_string(),
            ),
            ("$SYS/broker/bytes/sent", counters.bytes_sent.to_string()),
            (
                "$SYS/broker/subscriptions/count",
                clients.subscriptions.to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                clients.retained.to_string(),
            ),
            ("$SYS/broker/store/messages/count", stored.to_string()),
            ("$SYS/broker/messages/stored", stored.to_string()),
            (
                "$SYS/broker/store/messages/bytes",
                counters.queued_bytes.to_string(),
            ),
        ];
        const LOAD_TOPICS: [[&str; 3]; 4] = [
            [
                "$SYS/broker/load/messages/received/1min",
                "$SYS/broker/load/messages/received/5min",
                "$SYS/broker/load/messages/received/15min",
            ],
            [
                "$SYS/broker/load/messages/sent/1min",
                "$SYS/broker/load/messages/sent/5min",
                "$SYS/broker/load/messages/sent/15min",
            ],
            [
                "$SYS/broker/load/bytes/received/1min",
                "$SYS/broker/load/bytes/received/5min",
                "$SYS/broker/load/bytes/received/15min",
            ],
            [
                "$SYS/broker/load/bytes/sent/1min",
                "$SYS/broker/load/bytes/sent/5min",
                "$SYS/broker/load/bytes/sent/15min",
            ],
        ];
        for (load, topics) in self.load.iter().zip(LOAD_TOPICS) {
            for (average, topic) in load.0.iter().zip(topics) {
                values.push((topic, format!("{average:.2}")));
            }
        }
        values.retain(|(topic, payload)| {
            if self.published.get(topic) == Some(payload) {
                return false;
            }
            self.published.insert(topic, payload.clone());
            true
        });
        values
    }
}

impl MqttState {
    /// What [`SysTree::sample`] needs to know of MQTT's clients. Walks the live sessions, so it
    /// is meant for the status interval, not for every message.
    pub fn status_clients(&self) -> Clients {
        let census = self.census();
        let live: u64 = census
            .connected
            .iter()
            .map(|session| session.lock().subscription_count() as u64)
            .sum();
        Clients {
            connected: census.connected.len() as u64,
            disconnected: census.disconnected,
            subscriptions: live + census.disconnected_subscriptions,
            retained: self.retained.len() as u64,
        }
    }

    /// Retains each `(topic, payload)` in memory and routes it through
    /// [`topic::SYS_EXCHANGE`] as a QoS 0 retained message, as any publisher's would be; when
    /// nothing is bound there (no `$SYS` subscriber), nothing is routed.
    pub fn publish_status(&self, values: Vec<(&'static str, String)>) {
        let now = now_ms();
        let subscribed = match self.declare_sys_exchange() {
            Ok(exchange) => exchange.binding_count() > 0,
            Err(e) => {
                tracing::debug!(error = %e, "$SYS exchange unavailable; status kept for new subscribers only");
                false
            }
        };
        for (topic, payload) in values {
            let message = AppMessage {
                topic: topic.to_owned(),
                payload: Bytes::from(payload),
                qos: QoS::Level0,
                retain: true,
                props: AppProperties::default(),
            };
            if subscribed {
                let mut core = message.to_core(None, now);
                core.exchange = topic::SYS_EXCHANGE.into();
                if let Err(e) = self.vhost.publish(core) {
                    tracing::debug!(topic, error = %e, "$SYS message not routed");
                }
            }
            self.retained.set_status(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn payload<'a>(values: &'a [(&str, String)], topic: &str) -> Option<&'a str> {
        values
            .iter()
            .find(|(t, _)| *t == topic)
            .map(|(_, p)| p.as_str())
    }

    #[test]
    fn the_first_sample_names_every_topic_as_mosquitto_does() {
        let start = Instant::now();
        let mut tree = SysTree::new("1.2.3", start);
        let counters = Counters {
            messages_received: 7,
            messages_sent: 5,
            bytes_received: 1000,
            bytes_sent: 2000,
            queued_messages: 3,
            queued_bytes: 30,
        };
        let clients = Clients {
            connected: 2,
            disconnected: 1,
            subscriptions: 4,
            retained: 6,
        };
        let values = tree.sample(start + Duration::from_secs(42), counters, clients);
        let expected = [
            ("$SYS/broker/version", "rosetta version 1.2.3"),
            ("$SYS/broker/uptime", "42 seconds"),
            ("$SYS/broker/clients/connected", "2"),
            ("$SYS/broker/clients/disconnected", "1"),
            ("$SYS/broker/clients/total", "3"),
            ("$SYS/broker/clients/maximum", "2"),
            ("$SYS/broker/messages/received", "7"),
            ("$SYS/broker/messages/sent", "5"),
            ("$SYS/broker/bytes/received", "1000"),
            ("$SYS/broker/bytes/sent", "2000"),
            ("$SYS/broker/subscriptions/count", "4"),
            ("$SYS/broker/retained messages/count", "6"),
            ("$SYS/broker/store/messages/count", "9"),
            ("$SYS/broker/load/messages/received/1min", "0.00"),
            ("$SYS/broker/load/bytes/sent/15min", "0.00"),
        ];
        for (topic, want) in expected {
            assert_eq!(payload(&values, topic), Some(want), "{topic}");
        }
        assert!(values.iter().all(|(t, _)| topic::is_sys(t)));
    }

    #[test]
    fn only_changed_values_are_published_again_and_loads_average_per_minute() {
        let start = Instant::now();
        let mut tree = SysTree::new("1", start);
        let clients = Clients {
            connected: 3,
            ..Clients::default()
        };
        tree.sample(start, Counters::default(), clients);
        // 120 messages received in one minute: 120 a minute, of which a 1-minute average
        // has taken in 1 - 1/e.
        let counters = Counters {
            messages_received: 120,
            ..Counters::default()
        };
        let later = Clients {
            connected: 1,
            ..clients
        };
        let values = tree.sample(start + Duration::from_secs(60), counters, later);
        assert_eq!(
            payload(&values, "$SYS/broker/load/messages/received/1min"),
            Some("75.85")
        );
        assert_eq!(
            payload(&values, "$SYS/broker/load/messages/received/5min"),
            Some("21.75")
        );
        assert_eq!(payload(&values, "$SYS/broker/clients/connected"), Some("1"));
        // The most clients seen stays 3, so it is not published again; nor is the version.
        assert_eq!(payload(&values, "$SYS/broker/clients/maximum"), None);
        assert_eq!(payload(&values, "$SYS/broker/version"), None);
        assert_eq!(payload(&values, "$SYS/broker/uptime"), Some("60 seconds"));
        assert_eq!(
            payload(&values, "$SYS/broker/load/messages/sent/1min"),
            None
        );
    }
}
