//! Retained messages (MQTT 5.0 §3.3.1.3): the last retained message of each topic, kept in memory
//! for matching new subscriptions and in the store so it survives a restart.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mqtt_proto::QoS;
use parking_lot::RwLock;
use rosetta_core::store::{Epoch, Store};

use crate::error::MqttError;
use crate::message::AppMessage;
use crate::persist::{client_key, NS_RETAINED};
use crate::topic::{self, FilterSet};

pub struct Retained {
    store: Arc<dyn Store>,
    vhost: String,
    /// Most topics kept at once (0 = no limit), not counting the broker's `$SYS` topics.
    limit: usize,
    messages: RwLock<BTreeMap<String, AppMessage>>,
    /// How many of `messages` are `$SYS` topics.
    status_topics: AtomicUsize,
}

impl Retained {
    /// Reads back every retained message of `vhost`.
    pub fn load(store: Arc<dyn Store>, vhost: &str, limit: usize) -> Result<Self, MqttError> {
        let mut messages = BTreeMap::new();
        for (key, value) in store.scan_records(NS_RETAINED, &client_key(vhost, ""))? {
            let m = AppMessage::decode(&value, "retained")?;
            // Written by a client before `$SYS` was the broker's own: the broker publishes
            // its status anew once it runs.
            if topic::is_sys(&m.topic) {
                store.delete_record(NS_RETAINED, &key)?;
                continue;
            }
            messages.insert(m.topic.clone(), m);
        }
        Ok(Retained {
            store,
            vhost: vhost.to_owned(),
            limit,
            messages: RwLock::new(messages),
            status_topics: AtomicUsize::new(0),
        })
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.messages.read().len()
    }

    /// Takes a PUBLISH with RETAIN set: an empty payload clears the topic ([MQTT-3.3.1-6]), any
    /// other replaces its retained message ([MQTT-3.3.1-5]). Returns the store write to wait for
    /// before acknowledging, if any.
    pub fn set(&self, message: &AppMessage) -> Result<Option<Epoch>, MqttError> {
        let key = client_key(&self.vhost, &message.topic);
        if message.payload.is_empty() {
            if self.messages.write().remove(&message.topic).is_none() {
                return Ok(None);
            }
            return Ok(Some(self.store.delete_record(NS_RETAINED, &key)?));
        }
        {
            let mut messages = self.messages.write();
            if self.limit > 0
                && messages.len() - self.status_topics.load(Ordering::Relaxed) >= self.limit
                && !messages.contains_key(&message.topic)
            {
                tracing::warn!(topic = %message.topic, limit = self.limit, "retained message limit reached; message not retained");
                return Ok(None);
            }
            messages.insert(message.topic.clone(), message.clone());
        }
        Ok(Some(self.store.put_record(
            NS_RETAINED,
            &key,
            &message.encode(),
        )?))
    }

    /// Sets the retained message of a `$SYS` topic, which the broker publishes anew every
    /// interval. Kept in memory only: a store write per topic and interval would buy nothing,
    /// and values from before a restart would be wrong. Outside the limit, so clients that
    /// fill it cannot hide the broker's status.
    pub fn set_status(&self, message: AppMessage) {
        let mut messages = self.messages.write();
        if messages.insert(message.topic.clone(), message).is_none() {
            self.status_topics.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The retained topics that new subscriptions (filter, granted QoS) match, each once with
    /// the highest QoS among the subscriptions it matches ([MQTT-3.3.4-2] lets overlapping
    /// subscriptions take one delivery). Plain filters are looked up; wildcard ones are
    /// matched together in one pass over the topics their common literal prefix allows, so a
    /// SUBSCRIBE costs one scan however many filters it carries.
    pub fn owed(&self, subscriptions: &[(&str, QoS)]) -> Vec<(String, QoS)> {
        let messages = self.messages.read();
        let mut owed: BTreeMap<&str, QoS> = BTreeMap::new();
        let mut wildcards = FilterSet::default();
        let mut prefix: Option<&str> = None;
        for (i, (filter, qos)) in subscriptions.iter().enumerate() {
            if !topic::has_wildcard(filter) {
                if let Some((t, _)) = messages.get_key_value(*filter) {
                    let q = owed.entry(t.as_str()).or_insert(*qos);
                    *q = (*q).max(*qos);
                }
                continue;
            }
            wildcards.insert(filter, i);
            let literal = topic::literal_prefix(filter);
            prefix = Some(match prefix {
                None => literal,
                Some(p) => common_prefix(p, literal),
            });
        }
        if let Some(prefix) = prefix {
            let mut found = Vec::new();
            let range = messages
                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(t, _)| t.starts_with(prefix));
            for (t, _) in range {
                found.clear();
                wildcards.matching(t, &mut found);
                for &i in &found {
                    let qos = subscriptions[i].1;
                    let q = owed.entry(t.as_str()).or_insert(qos);
                    *q = (*q).max(qos);
                }
            }
        }
        owed.into_iter().map(|(t, q)| (t.to_owned(), q)).collect()
    }

    /// The retained message of `topic`, unless it has expired, in which case it is forgotten
    /// ([MQTT-3.3.2-5]).
    pub fn get(&self, topic: &str, now_ms: u64) -> Option<AppMessage> {
        let message = self.messages.read().get(topic).cloned()?;
        if !message.is_expired(now_ms) {
            return Some(message);
        }
        self.messages.write().remove(topic);
        if let Err(e) = self
            .store
            .delete_record(NS_RETAINED, &client_key(&self.vhost, topic))
        {
            tracing::warn!(%topic, error = %e, "cannot delete an expired retained message");
        }
        None
    }
}

/// The longest common prefix of two strings, cut at a character boundary.
fn common_prefix<'a>(a: &'a str, b: &str) -> &'a str {
    let mut n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    while !a.is_char_boundary(n) {
        n -= 1;
    }
    &a[..n]
}
