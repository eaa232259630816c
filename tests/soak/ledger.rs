//! What was sent, what the broker confirmed, and what each consumer saw: the soak's evidence.
//!
//! A message id is a `u64`: the publisher's number in the high bits, its sequence number in the
//! low ones, so ids are unique without coordination. A confirmed message is expected at every
//! sink its route reaches; a delivery is recorded at the sink that received it, before the
//! consumer acknowledges it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Where confirmed messages must end up: one durable queue (or MQTT session) and its consumers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sink {
    /// Durable queue `soak.a`, consumed over AMQP with manual acks.
    AmqpQueue,
    /// Durable queue `soak.s`, consumed over STOMP (`/queue/soak.s`, client-individual acks).
    StompQueue,
    /// The persistent MQTT session subscribed to `soak/m/#` at QoS 1.
    MqttSession,
    /// Durable queue `soak.x` bound to `amq.topic` with `soak.m.#`, consumed over STOMP
    /// (`/amq/queue/soak.x`): the cross-protocol sink.
    CrossQueue,
}

pub const SINKS: [Sink; 4] = [
    Sink::AmqpQueue,
    Sink::StompQueue,
    Sink::MqttSession,
    Sink::CrossQueue,
];

/// Everything routed through `amq.topic` with a `soak.m.*` key reaches these two.
pub const TOPIC_ROUTE: &[Sink] = &[Sink::MqttSession, Sink::CrossQueue];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Amqp,
    Mqtt,
    Stomp,
}

pub const PROTOCOLS: [Protocol; 3] = [Protocol::Amqp, Protocol::Mqtt, Protocol::Stomp];

/// Builds a message id from a publisher number and its sequence number.
pub fn message_id(publisher: u64, seq: u64) -> u64 {
    (publisher << 40) | seq
}

/// The body every soak message carries: its id in text, so any protocol can carry it.
pub fn body_of(id: u64) -> String {
    format!("soak:{id}")
}

/// The id in a body, if it is a soak body.
pub fn id_of(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body)
        .ok()?
        .strip_prefix("soak:")?
        .parse()
        .ok()
}

#[derive(Default)]
struct State {
    /// Every id a publisher put on the wire, whatever became of it.
    sent: HashSet<u64>,
    /// Per sink, the confirmed ids it must deliver.
    expected: HashMap<Sink, HashSet<u64>>,
    /// Per sink, how many times each id was delivered.
    seen: HashMap<Sink, HashMap<u64, u32>>,
    /// Deliveries whose body was not a soak id, or an id nobody sent: corruption.
    strangers: Vec<String>,
    confirmed: HashMap<Protocol, u64>,
    refused: HashMap<Protocol, u64>,
    /// (sink, id) pairs confirmed and not delivered yet, kept up to date on every call: the
    /// drain polls it, and a scan of millions of ids under the lock would stall every client.
    outstanding: u64,
}

/// Shared by every client task; short critical sections only.
#[derive(Default)]
pub struct Ledger {
    state: Mutex<State>,
    pub lost_mqtt_sessions: AtomicU64,
}

/// The figures the soak prints and asserts on.
#[derive(Debug, Default)]
pub struct Tally {
    pub sent: u64,
    pub confirmed: HashMap<Protocol, u64>,
    pub refused: HashMap<Protocol, u64>,
    /// Per sink: confirmed ids expected, distinct ids delivered, extra deliveries (duplicates).
    pub expected: HashMap<Sink, u64>,
    pub delivered: HashMap<Sink, u64>,
    pub duplicates: HashMap<Sink, u64>,
    /// Per sink, confirmed ids never delivered (first few, and how many).
    pub missing: HashMap<Sink, (u64, Vec<u64>)>,
    /// Delivered although the confirm never reached the publisher (allowed, counted).
    pub delivered_unconfirmed: u64,
    pub strangers: Vec<String>,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A publisher is about to put `id` on the wire.
    pub fn sent(&self, id: u64) {
        self.lock().sent.insert(id);
    }

    /// The broker confirmed `id` (confirm ack, PUBACK or RECEIPT): it must reach every sink of
    /// `route`.
    pub fn confirmed(&self, protocol: Protocol, id: u64, route: &[Sink]) {
        let mut state = self.lock();
        let state = &mut *state;
        for sink in route {
            let fresh = state.expected.entry(*sink).or_default().insert(id);
            let seen = state.seen.get(sink).is_some_and(|s| s.contains_key(&id));
            if fresh && !seen {
                state.outstanding += 1;
            }
        }
        *state.confirmed.entry(protocol).or_default() += 1;
    }

    /// The broker refused a publish (an AMQP nack): allowed, but counted.
    pub fn refused(&self, protocol: Protocol) {
        *self.lock().refused.entry(protocol).or_default() += 1;
    }

    /// A consumer of `sink` received `body`; called before it acknowledges the delivery.
    pub fn delivered(&self, sink: Sink, body: &[u8]) {
        let mut state = self.lock();
        let state = &mut *state;
        match id_of(body) {
            Some(id) if state.sent.contains(&id) => {
                let count = state.seen.entry(sink).or_default().entry(id).or_default();
                *count += 1;
                let expected = state.expected.get(&sink).is_some_and(|e| e.contains(&id));
                if *count == 1 && expected {
                    state.outstanding -= 1;
                }
            }
            _ => {
                let text = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
                state.strangers.push(format!("{sink:?}: {text:?}"));
            }
        }
    }

    /// Confirmed ids not yet delivered, over all sinks.
    pub fn outstanding(&self) -> u64 {
        self.lock().outstanding
    }

    pub fn confirmed_total(&self) -> u64 {
        self.lock().confirmed.values().sum()
    }

    pub fn tally(&self) -> Tally {
        let state = self.lock();
        let mut tally = Tally {
            sent: state.sent.len() as u64,
            confirmed: state.confirmed.clone(),
            refused: state.refused.clone(),
            strangers: state.strangers.clone(),
            ..Tally::default()
        };
        let empty_seen = HashMap::new();
        let empty_expected = HashSet::new();
        let mut confirmed_anywhere: HashSet<u64> = HashSet::new();
        for sink in SINKS {
            let expected = state.expected.get(&sink).unwrap_or(&empty_expected);
            confirmed_anywhere.extend(expected.iter().copied());
            let seen = state.seen.get(&sink).unwrap_or(&empty_seen);
            let mut missing: Vec<u64> = expected
                .iter()
                .copied()
                .filter(|id| !seen.contains_key(id))
                .collect();
            missing.sort_unstable();
            let count = missing.len() as u64;
            missing.truncate(20);
            tally.expected.insert(sink, expected.len() as u64);
            tally.delivered.insert(sink, seen.len() as u64);
            tally.duplicates.insert(
                sink,
                seen.values().map(|n| u64::from(n.saturating_sub(1))).sum(),
            );
            tally.missing.insert(sink, (count, missing));
        }
        let mut delivered_ids: HashSet<u64> = HashSet::new();
        for seen in state.seen.values() {
            delivered_ids.extend(seen.keys().copied());
        }
        tally.delivered_unconfirmed = delivered_ids
            .iter()
            .filter(|id| !confirmed_anywhere.contains(id))
            .count() as u64;
        tally
    }
}

/// Counts events by name (reconnects per client kind, hostile runs per kind).
#[derive(Default)]
pub struct Counts(Mutex<HashMap<String, u64>>);

impl Counts {
    pub fn add(&self, name: impl Into<String>) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.into())
            .or_default() += 1;
    }

    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let mut all: Vec<_> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        all.sort();
        all
    }

    pub fn total(&self) -> u64 {
        self.snapshot().iter().map(|(_, n)| n).sum()
    }
}

/// Random pauses and choices for one task, from the run's seed and the task's number.
pub fn rng_for(seed: u64, task: u64) -> fastrand::Rng {
    fastrand::Rng::with_seed(seed ^ task.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Distinct publisher numbers, so message ids never collide.
pub fn next_publisher() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
