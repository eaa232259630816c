//! What a persistent session keeps in the store, beside its durable queue and bindings (which
//! the core stores): subscription options, expiry, packet ids of unfinished QoS 2 exchanges, and
//! will messages waiting out their delay. Every record is keyed `vhost \0 client id`, packet-id
//! records add `\0` and the id, so one prefix scan finds all of a client's records.

use std::sync::Arc;

use mqtt_proto::v5::RetainHandling;
use mqtt_proto::QoS;
use rosetta_core::store::{Epoch, Store};

use crate::error::MqttError;
use crate::message::AppMessage;
use crate::record::{Reader, Writer};

pub const NS_SESSION: &str = "mqtt.session";
/// QoS 2 publishes received, PUBREC sent, PUBREL awaited (MQTT 5.0 §4.3.3, method B).
pub const NS_QOS2_IN: &str = "mqtt.qos2-in";
/// QoS 2 publishes sent to the client and not yet completed.
pub const NS_QOS2_OUT: &str = "mqtt.qos2-out";
pub const NS_WILL: &str = "mqtt.will";
pub const NS_RETAINED: &str = "mqtt.retained";

/// Session Expiry Interval meaning "never" (MQTT 5.0 §3.1.2.11.2); 3.x persistent sessions.
pub const NEVER_EXPIRES: u32 = u32::MAX;

pub fn client_key(vhost: &str, client_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(vhost.len() + client_id.len() + 1);
    k.extend_from_slice(vhost.as_bytes());
    k.push(0);
    k.extend_from_slice(client_id.as_bytes());
    k
}

/// The prefix of every packet-id record of a client.
pub fn pid_prefix(vhost: &str, client_id: &str) -> Vec<u8> {
    let mut k = client_key(vhost, client_id);
    k.push(0);
    k
}

pub fn pid_key(vhost: &str, client_id: &str, pid: u16) -> Vec<u8> {
    let mut k = pid_prefix(vhost, client_id);
    k.extend_from_slice(&pid.to_be_bytes());
    k
}

/// Splits a key of [`client_key`] form.
pub fn split_client_key(key: &[u8]) -> Option<(String, String)> {
    let pos = key.iter().position(|&b| b == 0)?;
    let vhost = std::str::from_utf8(&key[..pos]).ok()?;
    let client = std::str::from_utf8(&key[pos + 1..]).ok()?;
    Some((vhost.to_owned(), client.to_owned()))
}

fn pid_of(key: &[u8]) -> Option<u16> {
    let tail: [u8; 2] = key.get(key.len().checked_sub(2)?..)?.try_into().ok()?;
    Some(u16::from_be_bytes(tail))
}

/// One subscription with its MQTT 5.0 options (3.x subscriptions use the 3.x defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// As the client wrote it, `$share/group/` prefix included.
    pub filter: String,
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
    /// Subscription Identifier, 0 for none.
    pub id: u32,
}

/// A persistent session as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredSession {
    /// Seconds the session outlives its connection; [`NEVER_EXPIRES`] for ever.
    pub expiry: u32,
    /// When its last connection ended; `None` while one is open.
    pub disconnected_at_ms: Option<u64>,
    pub subscriptions: Vec<Subscription>,
    /// The user the session belongs to: another user's CONNECT with its client id is
    /// refused. `None` for a session stored before sessions had owners.
    pub user: Option<String>,
}

impl StoredSession {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.expiry).opt_u64(self.disconnected_at_ms);
        w.u32(u32::try_from(self.subscriptions.len()).unwrap_or(u32::MAX));
        for s in &self.subscriptions {
            w.str(&s.filter)
                .u8(s.qos as u8)
                .u8(u8::from(s.no_local))
                .u8(u8::from(s.retain_as_published));
            w.u8(s.retain_handling as u8).u32(s.id);
        }
        if let Some(user) = &self.user {
            w.str(user);
        }
        w.finish()
    }

    pub fn decode(data: &[u8]) -> Result<Self, MqttError> {
        let mut r = Reader::new(data, "session")?;
        let expiry = r.u32()?;
        let disconnected_at_ms = r.opt_u64()?;
        let n = r.u32()?;
        let mut subscriptions = Vec::new();
        for _ in 0..n {
            let filter = r.str()?;
            let qos =
                QoS::from_u8(r.u8()?).map_err(|e| MqttError::corrupt("session", e.to_string()))?;
            let no_local = r.u8()? != 0;
            let retain_as_published = r.u8()? != 0;
            let retain_handling = RetainHandling::from_u8(r.u8()?)
                .ok_or_else(|| MqttError::corrupt("session", "retain handling"))?;
            let id = r.u32()?;
            subscriptions.push(Subscription {
                filter,
                qos,
                no_local,
                retain_as_published,
                retain_handling,
                id,
            });
        }
        // Added later: a session written before has no owner.
        let user = if r.at_end() { None } else { Some(r.str()?) };
        r.end()?;
        Ok(StoredSession {
            expiry,
            disconnected_at_ms,
            subscriptions,
            user,
        })
    }
}

/// Where an outgoing QoS 2 exchange stands (MQTT 5.0 §4.3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutStage {
    /// PUBLISH sent, PUBREC awaited: the message is still an unacknowledged entry `seq` of
    /// queue `queue`, and goes out again with the same packet id after a reconnect.
    Published { queue: String, seq: u64 },
    /// PUBREC received, PUBREL sent, PUBCOMP awaited.
    Released,
}

impl OutStage {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            OutStage::Published { queue, seq } => w.u8(1).str(queue).u64(*seq),
            OutStage::Released => w.u8(2),
        };
        w.finish()
    }

    fn decode(data: &[u8]) -> Result<Self, MqttError> {
        let mut r = Reader::new(data, "qos2-out")?;
        let stage = match r.u8()? {
            1 => OutStage::Published {
                queue: r.str()?,
                seq: r.u64()?,
            },
            2 => OutStage::Released,
            other => return Err(MqttError::corrupt("qos2-out", format!("stage {other}"))),
        };
        r.end()?;
        Ok(stage)
    }
}

/// A will waiting for its delay, or for its session to end (MQTT 5.0 §3.1.3.2.2).
#[derive(Debug, Clone, PartialEq)]
pub struct PendingWill {
    pub due_ms: u64,
    pub message: AppMessage,
}

impl PendingWill {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.due_ms).bytes(&self.message.encode());
        w.finish()
    }

    pub fn decode(data: &[u8]) -> Result<Self, MqttError> {
        let mut r = Reader::new(data, "will")?;
        let due_ms = r.u64()?;
        let message = AppMessage::decode(&r.bytes()?, "will")?;
        r.end()?;
        Ok(PendingWill { due_ms, message })
    }
}

/// The store, seen through one client's records.
pub struct ClientRecords<'a> {
    pub store: &'a Arc<dyn Store>,
    pub vhost: &'a str,
    pub client_id: &'a str,
}

impl ClientRecords<'_> {
    pub fn save_session(&self, session: &StoredSession) -> Result<Epoch, MqttError> {
        Ok(self.store.put_record(
            NS_SESSION,
            &client_key(self.vhost, self.client_id),
            &session.encode(),
        )?)
    }

    /// Forgets the session and every packet-id record with it.
    pub fn delete_session(&self) -> Result<Epoch, MqttError> {
        self.store
            .delete_record(NS_SESSION, &client_key(self.vhost, self.client_id))?;
        let prefix = pid_prefix(self.vhost, self.client_id);
        self.store.delete_records(NS_QOS2_IN, &prefix)?;
        Ok(self.store.delete_records(NS_QOS2_OUT, &prefix)?)
    }

    pub fn qos2_in(&self) -> Result<Vec<u16>, MqttError> {
        let found = self
            .store
            .scan_records(NS_QOS2_IN, &pid_prefix(self.vhost, self.client_id))?;
        Ok(found.iter().filter_map(|(k, _)| pid_of(k)).collect())
    }

    pub fn put_qos2_in(&self, pid: u16) -> Result<Epoch, MqttError> {
        Ok(self
            .store
            .put_record(NS_QOS2_IN, &pid_key(self.vhost, self.client_id, pid), &[])?)
    }

    pub fn delete_qos2_in(&self, pid: u16) -> Result<Epoch, MqttError> {
        Ok(self
            .store
            .delete_record(NS_QOS2_IN, &pid_key(self.vhost, self.client_id, pid))?)
    }

    pub fn qos2_out(&self) -> Result<Vec<(u16, OutStage)>, MqttError> {
        let found = self
            .store
            .scan_records(NS_QOS2_OUT, &pid_prefix(self.vhost, self.client_id))?;
        let mut out = Vec::new();
        for (k, v) in found {
            let pid = pid_of(&k).ok_or_else(|| MqttError::corrupt("qos2-out", "key"))?;
            out.push((pid, OutStage::decode(&v)?));
        }
        Ok(out)
    }

    pub fn put_qos2_out(&self, pid: u16, stage: &OutStage) -> Result<Epoch, MqttError> {
        Ok(self.store.put_record(
            NS_QOS2_OUT,
            &pid_key(self.vhost, self.client_id, pid),
            &stage.encode(),
        )?)
    }

    pub fn delete_qos2_out(&self, pid: u16) -> Result<Epoch, MqttError> {
        Ok(self
            .store
            .delete_record(NS_QOS2_OUT, &pid_key(self.vhost, self.client_id, pid))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_round_trip() {
        let s = StoredSession {
            expiry: 3600,
            disconnected_at_ms: Some(42),
            subscriptions: vec![Subscription {
                filter: "$share/g/a/+".into(),
                qos: QoS::Level2,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
                id: 7,
            }],
            user: Some("alice".into()),
        };
        assert_eq!(StoredSession::decode(&s.encode()).expect("decodes"), s);
        // A session stored before owners existed decodes with none.
        let older = StoredSession { user: None, ..s };
        assert_eq!(
            StoredSession::decode(&older.encode()).expect("decodes"),
            older
        );
    }

    #[test]
    fn stages_and_keys_round_trip() {
        for stage in [
            OutStage::Published {
                queue: "q".into(),
                seq: 9,
            },
            OutStage::Released,
        ] {
            assert_eq!(OutStage::decode(&stage.encode()).expect("decodes"), stage);
        }
        assert_eq!(pid_of(&pid_key("/", "c", 513)), Some(513));
        assert_eq!(
            split_client_key(&client_key("/", "a\u{e9}b")),
            Some(("/".into(), "a\u{e9}b".into()))
        );
    }
}
