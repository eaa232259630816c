//! Retained messages (MQTT 5.0 §3.3.1.3): the last retained message of each topic, kept in memory
//! for matching new subscriptions and in the store so it survives a restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use rosetta_core::store::{Epoch, Store};

use crate::error::MqttError;
use crate::message::AppMessage;
use crate::persist::{client_key, NS_RETAINED};
use crate::topic;

pub struct Retained {
    store: Arc<dyn Store>,
    vhost: String,
    /// Most topics kept at once (0 = no limit).
    limit: usize,
    messages: RwLock<BTreeMap<String, AppMessage>>,
}

impl Retained {
    /// Reads back every retained message of `vhost`.
    pub fn load(store: Arc<dyn Store>, vhost: &str, limit: usize) -> Result<Self, MqttError> {
        let mut messages = BTreeMap::new();
        for (_, value) in store.scan_records(NS_RETAINED, &client_key(vhost, ""))? {
            let m = AppMessage::decode(&value, "retained")?;
            messages.insert(m.topic.clone(), m);
        }
        Ok(Retained {
            store,
            vhost: vhost.to_owned(),
            limit,
            messages: RwLock::new(messages),
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
                && messages.len() >= self.limit
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

    /// The retained messages whose topic matches `filter`, leaving out (and forgetting) expired
    /// ones ([MQTT-3.3.2-5]).
    pub fn matching(&self, filter: &str, now_ms: u64) -> Vec<AppMessage> {
        let mut expired = Vec::new();
        let found: Vec<AppMessage> = {
            let messages = self.messages.read();
            messages
                .values()
                .filter(|m| topic::matches(filter, &m.topic))
                .filter(|m| {
                    let live = !m.is_expired(now_ms);
                    if !live {
                        expired.push(m.topic.clone());
                    }
                    live
                })
                .cloned()
                .collect()
        };
        for topic in expired {
            self.messages.write().remove(&topic);
            if let Err(e) = self
                .store
                .delete_record(NS_RETAINED, &client_key(&self.vhost, &topic))
            {
                tracing::warn!(%topic, error = %e, "cannot delete an expired retained message");
            }
        }
        found
    }
}
