//! What every MQTT connection of the broker shares: configuration, the registry of live
//! connections by client id (for takeover), persistent sessions and their expiry, wills waiting
//! out their delay, and retained messages.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use rosetta_core::exchange::Exchange;
use rosetta_core::queue::now_ms;
use rosetta_core::store::{Epoch, Store};
use rosetta_core::{
    Broker, ConnectionId, Directory, ExchangeDeclare, PublishOutcome, QueueDeclare, QueueOwner,
    VHost,
};

use crate::error::MqttError;
use crate::message::AppMessage;
use crate::persist::{
    client_key, split_client_key, ClientRecords, PendingWill, StoredSession, NEVER_EXPIRES,
    NS_SESSION, NS_WILL,
};
use crate::retained::Retained;
use crate::session::Shared;
use crate::topic;

/// Limits and defaults the server configures.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// The virtual host MQTT clients use.
    pub vhost: String,
    /// Largest packet accepted, announced to 5.0 clients as Maximum Packet Size.
    pub max_packet_size: u32,
    /// QoS 1 and 2 messages in flight per direction: announced as Receive Maximum, and the
    /// window of unacknowledged deliveries to a client (further capped by its Receive Maximum).
    pub max_inflight: u16,
    /// Topic aliases a 5.0 client may use towards the server (Topic Alias Maximum).
    pub topic_alias_max: u16,
    /// Longest keep-alive granted; a client asking for more, or for none, is told this value
    /// as Server Keep Alive (5.0) (0 = grant what clients ask).
    pub max_keep_alive: u16,
    /// Most retained topics kept (0 = no limit).
    pub max_retained: usize,
    /// A CONNECT without a user name is accepted, as user `anonymous`.
    pub allow_anonymous: bool,
    /// Most subscriptions one session holds (0 = no limit).
    pub max_subscriptions: usize,
    /// Most topic filters one SUBSCRIBE may carry (0 = no limit).
    pub max_filters_per_subscribe: usize,
    /// Most levels in a topic name or filter (0 = no limit).
    pub max_topic_levels: usize,
}

/// Packet ids of QoS 1 and 2 PUBLISHes sent and not acknowledged, by the queue entry
/// (queue name, sequence number) they carry.
pub(crate) type PacketIds = HashMap<(String, u64), u16>;

/// A connection that holds a client id.
pub(crate) struct Live {
    pub conn_id: ConnectionId,
    pub session: Shared,
    /// Who logged in: only the same user may take the client id over.
    pub user: String,
}

pub struct MqttState {
    pub(crate) broker: Arc<Broker>,
    pub(crate) users: Arc<Directory>,
    pub(crate) config: MqttConfig,
    pub(crate) vhost: Arc<VHost>,
    pub(crate) retained: Retained,
    live: Mutex<HashMap<String, Live>>,
    /// Persistent sessions, mirrored from the store.
    sessions: Mutex<HashMap<String, StoredSession>>,
    /// Wills waiting for their delay or their session's end, mirrored from the store.
    wills: Mutex<HashMap<String, PendingWill>>,
    /// Packet ids of QoS 1 deliveries a persistent session's last connection left
    /// unacknowledged, by client id, so the next connection resends them under the same ids
    /// ([MQTT-4.4.0-1]). Memory only, which spares a store write per QoS 1 message: after a
    /// broker restart they go out with new ids (QoS 2 ids are stored, see `mqtt.qos2-out`).
    unacked_ids: Mutex<HashMap<String, PacketIds>>,
    /// Shared subscriptions' queues, by the client ids of the sessions holding the
    /// subscription, connected or not. A queue lives while it has a holder, collecting messages
    /// for members that come back (MQTT 5.0 §4.8.2: the subscription exists while one session
    /// holds it), and goes with its last.
    shared: Mutex<HashMap<String, HashSet<String>>>,
}

/// MQTT's clients as [`MqttState::census`] counts them.
pub(crate) struct Census {
    pub connected: Vec<Shared>,
    /// Persistent sessions whose client is not connected.
    pub disconnected: u64,
    /// The subscriptions those sessions hold.
    pub disconnected_subscriptions: u64,
}

/// The shared subscriptions' queues the stored sessions hold, with their holders.
fn shared_holders(sessions: &HashMap<String, StoredSession>) -> HashMap<String, HashSet<String>> {
    let mut holders: HashMap<String, HashSet<String>> = HashMap::new();
    for (client, s) in sessions {
        for sub in &s.subscriptions {
            if let Some(queue) = topic::shared_queue_of(&sub.filter) {
                holders.entry(queue).or_default().insert(client.clone());
            }
        }
    }
    holders
}

/// Takes over the queues MQTT made before queues carried an owner, at its first start on such
/// a store: the queue of each stored session and the shared subscriptions' queues stored
/// sessions hold. Any other queue with an MQTT-style name is left to whoever declared it, as
/// nothing but its name would say it was MQTT's.
fn adopt_queues_made_before_owners(
    vhost: &VHost,
    sessions: &HashMap<String, StoredSession>,
    shared: &HashMap<String, HashSet<String>>,
) -> Result<(), MqttError> {
    let mut ours: HashMap<String, QueueOwner> = sessions
        .keys()
        .map(|c| (topic::session_queue(c), topic::session_queue_owner(c)))
        .chain(
            shared
                .keys()
                .map(|q| (q.clone(), topic::shared_queue_owner())),
        )
        .collect();
    vhost.adopt_queues_made_before_owners(topic::OWNER, |q| ours.remove(&q.name))?;
    Ok(())
}

/// Deletes the durable queues MQTT made that no persistent session needs any more: a session
/// queue whose session is gone (a crash between the two deletes), and a shared subscription's
/// queue whose members were all clean sessions, which ended with the broker. Only queues MQTT
/// owns: a queue another protocol's client declared stays, whatever its name.
fn remove_orphan_queues(
    vhost: &VHost,
    sessions: &HashMap<String, StoredSession>,
    shared: &HashMap<String, HashSet<String>>,
) {
    let wanted: HashSet<String> = sessions
        .keys()
        .map(|c| topic::session_queue(c))
        .chain(shared.keys().cloned())
        .collect();
    for q in vhost.queues() {
        if q.owned_by(topic::OWNER) && !wanted.contains(&q.name) {
            tracing::info!(queue = %q.name, "removing an mqtt queue no session uses");
            if let Err(e) = vhost.delete_owned_queue(&q.name, topic::OWNER, 0) {
                tracing::warn!(queue = %q.name, error = %e, "cannot remove an unused mqtt queue");
            }
        }
    }
}

impl MqttState {
    /// Loads persistent sessions, pending wills and retained messages from the store. Sessions
    /// whose connection was open when the broker stopped count as disconnected from now.
    pub fn open(
        broker: Arc<Broker>,
        users: Arc<Directory>,
        config: MqttConfig,
    ) -> Result<Arc<Self>, MqttError> {
        let vhost = broker.vhost(&config.vhost).ok_or_else(|| {
            MqttError::Protocol(format!(
                "MQTT virtual host '{}' is not configured",
                config.vhost
            ))
        })?;
        let store = broker.store().clone();
        let prefix = client_key(&config.vhost, "");
        let now = now_ms();
        let mut sessions = HashMap::new();
        for (key, value) in store.scan_records(NS_SESSION, &prefix)? {
            let Some((_, client)) = split_client_key(&key) else {
                continue;
            };
            let mut s = StoredSession::decode(&value)?;
            s.disconnected_at_ms.get_or_insert(now);
            sessions.insert(client, s);
        }
        let mut wills = HashMap::new();
        for (key, value) in store.scan_records(NS_WILL, &prefix)? {
            let Some((_, client)) = split_client_key(&key) else {
                continue;
            };
            wills.insert(client, PendingWill::decode(&value)?);
        }
        let shared = shared_holders(&sessions);
        adopt_queues_made_before_owners(&vhost, &sessions, &shared)?;
        let retained = Retained::load(store, &config.vhost, config.max_retained)?;
        remove_orphan_queues(&vhost, &sessions, &shared);
        tracing::info!(
            sessions = sessions.len(),
            wills = wills.len(),
            retained = retained.len(),
            "mqtt state recovered"
        );
        let state = Arc::new(MqttState {
            broker,
            users,
            vhost,
            retained,
            config,
            live: Mutex::new(HashMap::new()),
            sessions: Mutex::new(sessions),
            wills: Mutex::new(wills),
            unacked_ids: Mutex::new(HashMap::new()),
            shared: Mutex::new(shared),
        });
        // There from the start, so AMQP clients can bind to it before any status is published.
        state.declare_sys_exchange()?;
        Ok(state)
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        self.broker.store()
    }

    pub(crate) fn records<'a>(&'a self, client_id: &'a str) -> ClientRecords<'a> {
        ClientRecords {
            store: self.broker.store(),
            vhost: &self.config.vhost,
            client_id,
        }
    }

    /// Registers the connection now holding `client_id`; returns the one it replaces.
    /// Makes `live` the holder of `client_id` and returns the connection it takes over, or,
    /// when another user holds the client id, refuses and leaves that connection alone (the
    /// check and the takeover are one step, so two logins cannot both pass it).
    pub(crate) fn register(&self, client_id: &str, live: Live) -> Result<Option<Live>, String> {
        let mut holders = self.live.lock();
        if let Some(holder) = holders.get(client_id).filter(|h| h.user != live.user) {
            return Err(holder.user.clone());
        }
        Ok(holders.insert(client_id.to_owned(), live))
    }

    /// Forgets `conn_id` as the holder of `client_id`, unless a newer connection holds it.
    pub(crate) fn unregister(&self, client_id: &str, conn_id: ConnectionId) {
        let mut live = self.live.lock();
        if live.get(client_id).is_some_and(|l| l.conn_id == conn_id) {
            live.remove(client_id);
        }
    }

    pub fn connected_clients(&self) -> usize {
        self.live.lock().len()
    }

    /// The sessions of the connected clients, and the persistent sessions of the others: how
    /// many, and the subscriptions they hold. The connected clients' sessions are handed out
    /// (an `Arc` each, no client id copied) so that none is locked while the registry is
    /// (sessions take the registry's lock while locked); the registries are locked in the
    /// order session expiry takes them, and only counted under the locks.
    pub(crate) fn census(&self) -> Census {
        let live = self.live.lock();
        let connected = live.values().map(|l| l.session.clone()).collect();
        let (mut disconnected, mut subscriptions) = (0, 0);
        for (client, stored) in self.sessions.lock().iter() {
            if !live.contains_key(client) {
                disconnected += 1;
                subscriptions += stored.subscriptions.len() as u64;
            }
        }
        Census {
            connected,
            disconnected,
            disconnected_subscriptions: subscriptions,
        }
    }

    /// The exchange `$SYS` topics go through, declared (not durable: bindings are made again
    /// as sessions connect) when missing, e.g. at first use or after an AMQP client deleted it.
    pub(crate) fn declare_sys_exchange(&self) -> Result<Arc<Exchange>, MqttError> {
        if let Some(exchange) = self.vhost.exchange(topic::SYS_EXCHANGE) {
            return Ok(exchange);
        }
        self.vhost.declare_exchange(ExchangeDeclare {
            name: topic::SYS_EXCHANGE.to_owned(),
            kind: "topic".to_owned(),
            ..ExchangeDeclare::default()
        })?;
        self.vhost
            .exchange(topic::SYS_EXCHANGE)
            .ok_or_else(|| MqttError::Protocol("the $SYS exchange vanished as it was made".into()))
    }

    pub(crate) fn stored_session(&self, client_id: &str) -> Option<StoredSession> {
        self.sessions.lock().get(client_id).cloned()
    }

    pub(crate) fn save_session(
        &self,
        client_id: &str,
        session: StoredSession,
    ) -> Result<Epoch, MqttError> {
        let epoch = self.records(client_id).save_session(&session)?;
        self.sessions.lock().insert(client_id.to_owned(), session);
        Ok(epoch)
    }

    /// Keeps the packet ids of a persistent session's unacknowledged deliveries for its next
    /// connection.
    pub(crate) fn keep_unacked_ids(&self, client_id: &str, ids: PacketIds) {
        let mut kept = self.unacked_ids.lock();
        if ids.is_empty() {
            kept.remove(client_id);
        } else {
            kept.insert(client_id.to_owned(), ids);
        }
    }

    /// The packet ids [`MqttState::keep_unacked_ids`] kept for `client_id`, handed over once.
    pub(crate) fn take_unacked_ids(&self, client_id: &str) -> PacketIds {
        self.unacked_ids
            .lock()
            .remove(client_id)
            .unwrap_or_default()
    }

    /// Counts `client_id` among the holders of the shared subscription queue `queue`, and
    /// declares the queue if it does not exist. The queue is durable, so that it keeps its
    /// messages for persistent sessions across a restart (a queue only clean sessions held is
    /// removed at startup), and is not auto-deleted: it goes with its last holder. A queue MQTT
    /// did not make (an AMQP client declared one of that name) is used but never removed.
    pub(crate) fn hold_shared(
        &self,
        queue: &str,
        client_id: &str,
        conn: ConnectionId,
    ) -> Result<(), MqttError> {
        let mut shared = self.shared.lock();
        if self.vhost.queue(queue).is_none() {
            let declare = QueueDeclare {
                name: queue.to_owned(),
                durable: true,
                ..QueueDeclare::default()
            };
            self.vhost
                .declare_owned_queue(declare, conn, topic::shared_queue_owner())?;
        }
        shared
            .entry(queue.to_owned())
            .or_default()
            .insert(client_id.to_owned());
        Ok(())
    }

    /// `client_id`'s session no longer holds the shared subscription of `queue` (it
    /// unsubscribed or ended); the last holder to go takes the queue with it.
    pub(crate) fn release_shared(&self, queue: &str, client_id: &str) {
        let mut shared = self.shared.lock();
        let Some(holders) = shared.get_mut(queue) else {
            return;
        };
        holders.remove(client_id);
        if !holders.is_empty() {
            return;
        }
        shared.remove(queue);
        match self.vhost.delete_owned_queue(queue, topic::OWNER, 0) {
            Ok(Some(_)) => tracing::info!(
                queue,
                "removed a shared subscription's queue: no session holds it"
            ),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(queue, error = %e, "cannot remove a shared subscription's queue")
            }
        }
    }

    /// Ends a session for good: its queue, its bindings and its records go ([MQTT-4.1.0-?]
    /// session state ends with the session), and so does its hold on shared subscriptions.
    /// The queue goes only if MQTT made it: one of that name another protocol's client
    /// declared stays. Returns the epoch of the last store write, which covers the earlier ones.
    pub(crate) fn end_session(&self, client_id: &str) -> Result<Epoch, MqttError> {
        let ended = self.sessions.lock().remove(client_id);
        for sub in ended.iter().flat_map(|s| &s.subscriptions) {
            if let Some(queue) = topic::shared_queue_of(&sub.filter) {
                self.release_shared(&queue, client_id);
            }
        }
        self.unacked_ids.lock().remove(client_id);
        self.vhost
            .delete_owned_queue(&topic::session_queue(client_id), topic::OWNER, 0)?;
        self.records(client_id).delete_session()
    }

    /// Publishes an application message as a client would: retained if asked, then routed
    /// through `amq.topic`. Returns the outcome and the store write to wait for, if any.
    pub(crate) fn publish(
        &self,
        message: &AppMessage,
        publisher: Option<&str>,
        now: u64,
    ) -> Result<(PublishOutcome, Option<Epoch>), MqttError> {
        let retained = if message.retain {
            self.retained.set(message)?
        } else {
            None
        };
        let outcome = self.vhost.publish(message.to_core(publisher, now))?;
        if let Some(epoch) = retained {
            self.store().request_sync(epoch);
        }
        let epoch = match (outcome.epoch, retained) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Ok((outcome, epoch))
    }

    pub(crate) fn publish_will(&self, client_id: &str, message: &AppMessage) {
        let now = now_ms();
        if message.is_expired(now) {
            return;
        }
        match self.publish(message, None, now) {
            Ok(_) => tracing::info!(client_id, topic = %message.topic, "will message published"),
            Err(e) => tracing::warn!(client_id, error = %e, "will message could not be published"),
        }
    }

    /// Keeps a will until `will.due_ms`, or until its session ends, whichever comes first.
    pub(crate) fn schedule_will(&self, client_id: &str, will: PendingWill) {
        let key = client_key(&self.config.vhost, client_id);
        if let Err(e) = self.store().put_record(NS_WILL, &key, &will.encode()) {
            tracing::warn!(client_id, error = %e, "cannot store a delayed will");
        }
        self.wills.lock().insert(client_id.to_owned(), will);
    }

    /// A new connection for the client arrived before the will's delay ran out: it is not sent
    /// (MQTT 5.0 §3.1.2.5).
    pub(crate) fn cancel_will(&self, client_id: &str) {
        if self.wills.lock().remove(client_id).is_some() {
            let key = client_key(&self.config.vhost, client_id);
            if let Err(e) = self.store().delete_record(NS_WILL, &key) {
                tracing::warn!(client_id, error = %e, "cannot delete a delayed will");
            }
        }
    }

    fn take_will(&self, client_id: &str) -> Option<PendingWill> {
        let will = self.wills.lock().remove(client_id)?;
        let key = client_key(&self.config.vhost, client_id);
        if let Err(e) = self.store().delete_record(NS_WILL, &key) {
            tracing::warn!(client_id, error = %e, "cannot delete a delayed will");
        }
        Some(will)
    }

    /// Housekeeping, called about once a second: sends wills whose delay is over and ends
    /// sessions whose expiry interval has passed since their connection closed
    /// (MQTT 5.0 §3.1.2.11.2), sending their wills too.
    pub fn tick(&self) {
        let now = now_ms();
        let due: Vec<String> = self
            .wills
            .lock()
            .iter()
            .filter(|(_, w)| w.due_ms <= now)
            .map(|(c, _)| c.clone())
            .collect();
        for client in due {
            if let Some(w) = self.take_will(&client) {
                self.publish_will(&client, &w.message);
            }
        }
        // The registry stays locked while expired sessions end, so a client reconnecting at
        // that moment waits and then finds no session, rather than half of one.
        let live = self.live.lock();
        let expired: Vec<String> = self
            .sessions
            .lock()
            .iter()
            .filter(|(client, s)| {
                let deadline = s
                    .disconnected_at_ms
                    .map(|t| t.saturating_add(u64::from(s.expiry) * 1000));
                s.expiry != NEVER_EXPIRES
                    && deadline.is_some_and(|d| d <= now)
                    && !live.contains_key(*client)
            })
            .map(|(c, _)| c.clone())
            .collect();
        for client in expired {
            tracing::info!(client_id = %client, "mqtt session expired");
            if let Some(w) = self.take_will(&client) {
                self.publish_will(&client, &w.message);
            }
            if let Err(e) = self.end_session(&client) {
                tracing::warn!(client_id = %client, error = %e, "cannot end an expired session");
            }
        }
        drop(live);
    }
}
