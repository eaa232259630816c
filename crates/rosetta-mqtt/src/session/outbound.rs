//! Messages to the client: core deliveries and retained messages become PUBLISH packets, with
//! packet ids, topic aliases and the QoS 1 and 2 exchanges that settle them in their queues.

use std::collections::hash_map::Entry;
use std::sync::Arc;

use mqtt_proto::v5::{PubrecReasonCode, PubrelReasonCode};
use mqtt_proto::{Pid, QoS, QosPid, TopicName};
use rosetta_core::front_end::ledger::{give_back, is_for};
use rosetta_core::queue::now_ms;
use rosetta_core::{Delivery, Queue, Settlement};

use super::{Inner, Phase};
use crate::codec;
use crate::message::AppMessage;
use crate::persist::OutStage;
use crate::state::PacketIds;
use crate::topic::{self, parse_filter, session_queue, shared_queue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    /// QoS 1.
    Puback,
    /// QoS 2, PUBLISH sent.
    Pubrec,
    /// QoS 2, PUBREL sent.
    Pubcomp,
}

/// Where a QoS 1 or 2 PUBLISH sent and not yet completed stands. The session's ledger keeps it
/// under the packet id, with the queue entry the message came from, which is settled when the
/// client has the message (PUBACK, PUBREC); retained messages come from no queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutFlight {
    awaiting: Awaiting,
    /// The exchange is recorded in the store (QoS 2 to a persistent session).
    persisted: bool,
}

impl OutFlight {
    /// An exchange resumed after a reconnect at the PUBREL step.
    pub fn released(persisted: bool) -> Self {
        OutFlight {
            awaiting: Awaiting::Pubcomp,
            persisted,
        }
    }

    pub fn is_released(&self) -> bool {
        self.awaiting == Awaiting::Pubcomp
    }
}

/// Output that owed retained messages fill up to before the socket takes it: the socket's own
/// pace then sets theirs.
const RETAINED_BATCH_BYTES: usize = 64 * 1024;

impl Inner {
    /// Records retained messages (topic, QoS) owed to new subscriptions with identifier `id`
    /// (0 = none), and sends what the window allows. A topic already owed is sent once, at the
    /// higher QoS and with both identifiers ([MQTT-3.3.4-2]), so what is owed never exceeds the
    /// retained topics however often a client subscribes.
    pub(super) fn owe_retained(&mut self, owed: Vec<(String, QoS)>, id: u32) {
        for (topic, qos) in owed {
            match self.retained_due.entry(topic) {
                Entry::Occupied(mut e) => {
                    let (q, ids) = e.get_mut();
                    *q = (*q).max(qos);
                    if id != 0 && !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                Entry::Vacant(e) => {
                    self.retained_order.push_back(e.key().clone());
                    e.insert((qos, if id != 0 { vec![id] } else { Vec::new() }));
                }
            }
        }
        self.send_retained();
    }

    /// QoS 1 and 2 messages in flight are below the client's window (its Receive Maximum,
    /// capped by ours).
    fn window_open(&self) -> bool {
        let limit = usize::try_from(self.credit.limit()).unwrap_or(usize::MAX);
        limit == 0 || self.out_flight.len() < limit
    }

    /// The next owed retained message could be written now (not while the output waits behind
    /// CONNACK: it would only pile up there).
    pub(super) fn retained_ready(&self) -> bool {
        let Some(topic) = self.retained_order.front() else {
            return false;
        };
        let qos = self
            .retained_due
            .get(topic)
            .map_or(QoS::Level0, |(q, _)| *q);
        self.phase == Phase::Connected
            && !self.ended
            && self.output_held_until.is_none()
            && self.out.len() < RETAINED_BATCH_BYTES
            && (qos == QoS::Level0 || self.window_open())
    }

    /// Writes owed retained messages while the output is short of a batch and, for QoS 1 and
    /// 2, the window has room; the rest wait for the next call.
    pub(super) fn send_retained(&mut self) {
        // Asked after every batch of output: a session that owes nothing does not read the clock.
        if self.retained_order.is_empty() {
            return;
        }
        let now = now_ms();
        while self.retained_ready() {
            let Some(topic) = self.retained_order.pop_front() else {
                return;
            };
            let Some((qos, ids)) = self.retained_due.remove(&topic) else {
                continue;
            };
            // The topic's retained message as it is now: it may have been replaced or cleared
            // since the SUBSCRIBE.
            let Some(message) = self.state.retained.get(&topic, now) else {
                continue;
            };
            // [MQTT-3.3.1-8]: retained messages sent for a new subscription keep RETAIN.
            self.send_message(&message, message.qos.min(qos), true, &ids, None, false);
        }
    }

    /// A message from one of the session's queues.
    pub(super) fn deliver(&mut self, d: Delivery) {
        let live = !self.ended && self.phase == Phase::Connected && self.holds(&d);
        if !live {
            give_back(&d);
            return;
        }
        let now = now_ms();
        let message =
            AppMessage::from_core(&d.message, now, std::mem::take(&mut self.topic_buffer));
        self.deliver_message(d, &message);
        self.topic_buffer = message.topic;
    }

    /// [`Inner::deliver`] once the delivery is known to be the session's, as `message`.
    fn deliver_message(&mut self, d: Delivery, message: &AppMessage) {
        let own = self.stamp_client_id && AppMessage::published_by(&d.message, &self.client_id);
        let from_session_queue = topic::is_session_queue(&d.queue.name, &self.client_id);
        // The subscriptions this message answers: in the session's queue every plain filter
        // that matches (they overlap freely), in a shared queue the one subscription it serves.
        // Matching again here also applies the `$` rule the AMQP matcher does not know.
        let mut granted: Option<QoS> = None;
        let mut retain = false;
        let mut ids = Vec::new();
        for s in self.subscriptions.values() {
            let Some(p) = parse_filter(&s.filter) else {
                continue;
            };
            let serves = match p.group {
                Some(group) => shared_queue(group, p.filter) == d.queue.name,
                None => from_session_queue,
            };
            if !serves || !topic::matches(p.filter, &message.topic) || (s.no_local && own) {
                continue;
            }
            // [MQTT-3.3.4-2]: overlapping subscriptions deliver once at the highest QoS.
            granted = Some(granted.map_or(s.qos, |g| g.max(s.qos)));
            // [MQTT-3.3.1-12], [MQTT-3.3.1-13]: RETAIN is kept only for Retain As Published.
            retain |= s.retain_as_published && message.retain;
            // [MQTT-3.3.4-3], [MQTT-3.3.4-4]: the identifiers of every matching subscription
            // that has one go out with the one PUBLISH.
            if s.id != 0 {
                ids.push(s.id);
            }
        }
        let Some(granted) = granted else {
            d.queue.finish(&[d.seq]);
            return;
        };
        self.send_message(
            message,
            message.qos.min(granted),
            retain,
            &ids,
            Some((d.queue, d.seq)),
            d.redelivered,
        );
    }

    /// Whether the delivery's consumer is still one of the session's. Most sessions have a
    /// single consumer (their own queue's), which is compared directly rather than found by
    /// hashing the queue's name.
    fn holds(&self, d: &Delivery) -> bool {
        let live = if self.consumers.len() == 1 {
            self.consumers.values().next()
        } else {
            self.consumers.get(&d.queue.name)
        };
        is_for(d, live.map(|(_, c)| c))
    }

    fn next_free_pid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let pid = self.next_pid;
            self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
            if !self.out_flight.contains(pid) && !self.resend.values().any(|p| *p == pid) {
                return Some(pid);
            }
        }
        None
    }

    /// The topic to put in the packet and the alias to use (MQTT 5.0 §3.3.2.3.4): a topic the
    /// client already knows by alias goes out empty; a new one gets the next free alias while
    /// the client's Topic Alias Maximum allows. The third value is an alias to remember once
    /// the packet is really sent.
    fn outgoing_topic(&self, topic: &TopicName) -> (TopicName, Option<u16>, Option<u16>) {
        if self.client_alias_max == 0 {
            return (topic.clone(), None, None);
        }
        if let Some(&alias) = self.alias_out.get(&**topic) {
            if let Ok(empty) = TopicName::try_from("") {
                return (empty, Some(alias), None);
            }
        }
        let count = self.alias_out.len();
        match u16::try_from(count + 1) {
            Ok(next) if next <= self.client_alias_max => (topic.clone(), Some(next), Some(next)),
            _ => (topic.clone(), None, None),
        }
    }

    /// `topic` as a PUBLISH carries it, if it is a valid and non-empty topic name. The last one
    /// is kept: a subscriber often gets message after message on one topic, and each new name
    /// is an allocation.
    fn topic_name(&mut self, topic: &str) -> Option<TopicName> {
        if let Some(last) = self.last_topic.as_ref().filter(|t| ***t == *topic) {
            return Some(last.clone());
        }
        let name = TopicName::try_from(topic).ok().filter(|t| !t.is_empty())?;
        self.last_topic = Some(name.clone());
        Some(name)
    }

    /// Writes one PUBLISH. `ids` are the subscription identifiers it carries, `source` is the
    /// queue entry to settle; `redelivered` sets DUP.
    pub(super) fn send_message(
        &mut self,
        message: &AppMessage,
        qos: QoS,
        retain: bool,
        ids: &[u32],
        source: Option<(Arc<Queue>, u64)>,
        redelivered: bool,
    ) {
        let now = now_ms();
        // [MQTT-4.4.0-1]: a message sent before a reconnect and not acknowledged goes out again
        // under its packet id. The id is taken whatever happens next, so that it is not held
        // for a message delivered at QoS 0 or not at all.
        let resent = match &source {
            Some((q, seq)) if !self.resend.is_empty() => {
                self.resend.remove(&(q.name.clone(), *seq))
            }
            _ => None,
        };
        // [MQTT-3.3.2-5]: an expired message is not delivered.
        let Some(mut properties) = message.publish_properties(now) else {
            not_sent(source);
            return;
        };
        let Some(topic) = self.topic_name(&message.topic) else {
            // A routing key from an AMQP publisher that is no MQTT topic name (`#`, `+` or
            // empty): no MQTT client can receive it.
            tracing::debug!(client_id = %self.client_id, topic = %message.topic, "not a valid MQTT topic name; not delivered");
            not_sent(source);
            return;
        };
        let pid = if qos == QoS::Level0 {
            None
        } else {
            match resent.or_else(|| self.next_free_pid()) {
                Some(pid) => Some(pid),
                None => {
                    tracing::warn!(client_id = %self.client_id, "no free packet id; message returned to its queue");
                    if let Some((q, seq)) = source {
                        q.requeue(&[seq]);
                    }
                    return;
                }
            }
        };
        let qos_pid = match (qos, pid.and_then(|p| Pid::try_from(p).ok())) {
            (QoS::Level1, Some(p)) => QosPid::Level1(p),
            (QoS::Level2, Some(p)) => QosPid::Level2(p),
            _ => QosPid::Level0,
        };
        // [MQTT-3.3.1-1], [MQTT-3.3.1-2]: DUP marks a resend, and never a QoS 0 message.
        let dup = redelivered && qos_pid != QosPid::Level0;
        let (wire_topic, alias, new_alias) = self.outgoing_topic(&topic);
        properties.topic_alias = alias;
        let publish = message.to_publish(wire_topic, qos_pid, dup, retain, properties);
        // Written straight into the output, and taken back out if it may not go.
        let start = self.out.len();
        let size = match codec::encode_publish_into(publish, ids, self.protocol, &mut self.out) {
            Ok(size) => size,
            Err(e) => {
                tracing::warn!(client_id = %self.client_id, error = %e, "cannot encode a PUBLISH; not delivered");
                not_sent(source);
                return;
            }
        };
        // [MQTT-3.1.2-25]: a packet above the client's Maximum Packet Size is discarded as if
        // it had been delivered.
        if size as u64 > u64::from(self.client_max_packet) {
            self.out.truncate(start);
            tracing::debug!(client_id = %self.client_id, size, "message larger than the client accepts; discarded");
            not_sent(source);
            return;
        }
        if let Some(a) = new_alias {
            self.alias_out.insert(topic.to_string(), a);
        }
        if source.is_none() {
            // A retained message comes from no queue, so no queue counted it.
            self.state.broker.counters().count_delivery(false);
        }
        let Some(pid) = pid else {
            if let Some((q, seq)) = source {
                self.written.push(q, seq);
            }
            return;
        };
        let mut persisted = false;
        if qos == QoS::Level2 && self.durable_queue {
            if let Some((q, seq)) = &source {
                let stage = OutStage::Published {
                    queue: q.name.clone(),
                    seq: *seq,
                };
                match self
                    .state
                    .records(&self.client_id)
                    .put_qos2_out(pid, &stage)
                {
                    Ok(_) => persisted = true,
                    Err(e) => {
                        tracing::warn!(client_id = %self.client_id, error = %e, "cannot record a QoS 2 delivery")
                    }
                }
            }
        }
        let awaiting = if qos == QoS::Level1 {
            Awaiting::Puback
        } else {
            Awaiting::Pubrec
        };
        let flight = OutFlight {
            awaiting,
            persisted,
        };
        match source {
            Some((q, seq)) => self.out_flight.insert(pid, q, seq, flight),
            None => self.out_flight.hold(pid, flight),
        }
    }

    fn forget_qos2_out(&self, pid: u16) {
        if let Err(e) = self.state.records(&self.client_id).delete_qos2_out(pid) {
            tracing::warn!(client_id = %self.client_id, error = %e, "cannot forget a completed QoS 2 delivery");
        }
    }

    /// PUBACK: a QoS 1 delivery is complete. An unknown id is ignored: it may answer a PUBLISH
    /// sent to an earlier connection.
    pub(super) fn on_puback(&mut self, pid: u16) {
        if self
            .in_flight(pid)
            .is_some_and(|f| f.awaiting == Awaiting::Puback)
        {
            self.out_flight.settle(pid, Settlement::Ack);
        }
    }

    /// Where the PUBLISH under packet id `pid` stands, if one is in flight.
    fn in_flight(&self, pid: u16) -> Option<OutFlight> {
        self.out_flight.get(pid).map(|f| f.extra)
    }

    /// PUBREC: the client has a QoS 2 message; the server releases it with PUBREL.
    pub(super) fn on_pubrec(&mut self, pid: Pid, reason: PubrecReasonCode) {
        let id = pid.value();
        let Some(f) = self.in_flight(id) else {
            self.send(&codec::pubrel(
                pid,
                PubrelReasonCode::PacketIdentifierNotFound,
            ));
            return;
        };
        if f.awaiting == Awaiting::Puback {
            return;
        }
        // A PUBREC reason of 0x80 or above ends the exchange there (MQTT 5.0 §4.3.3).
        if reason as u8 >= 0x80 {
            self.out_flight.settle(id, Settlement::Ack);
            if f.persisted {
                self.forget_qos2_out(id);
            }
            return;
        }
        // The client has the message, so its queue entry is settled; the packet id stays in
        // use until PUBCOMP.
        if let Some(f) = self.out_flight.settle_entry(id, Settlement::Ack) {
            f.awaiting = Awaiting::Pubcomp;
        }
        if f.persisted {
            if let Err(e) = self
                .state
                .records(&self.client_id)
                .put_qos2_out(id, &OutStage::Released)
            {
                tracing::warn!(client_id = %self.client_id, error = %e, "cannot record a released QoS 2 delivery");
            }
        }
        self.send(&codec::pubrel(pid, PubrelReasonCode::Success));
    }

    /// PUBCOMP: the QoS 2 exchange is over and its packet id free.
    pub(super) fn on_pubcomp(&mut self, pid: u16) {
        let Some(f) = self.in_flight(pid) else {
            return;
        };
        if f.awaiting == Awaiting::Pubcomp {
            // Its queue entry was settled at PUBREC: only the packet id is freed.
            self.out_flight.settle(pid, Settlement::Ack);
            if f.persisted {
                self.forget_qos2_out(pid);
            }
        }
    }

    /// The connection is leaving its session: consumers stop, and what the client did not
    /// acknowledge goes back to its queues, to be sent again (DUP) to the next connection.
    ///
    /// Returns the packet ids of those deliveries from the session's own queue, for a resumed
    /// session to send them under the same ids ([MQTT-4.4.0-1]). A shared subscription's
    /// message may meanwhile go to another member, so its id is not kept.
    pub(super) fn release_deliveries(&mut self) -> PacketIds {
        // Owed retained messages are not queue entries; a new subscription owes them again.
        self.retained_due.clear();
        self.retained_order.clear();
        for (_, (q, c)) in self.consumers.drain() {
            self.state.vhost.cancel(&q, &c);
        }
        // Only a session that outlives the connection needs them.
        let keep = self.expiry > 0;
        let own = session_queue(&self.client_id);
        let mut kept = PacketIds::new();
        if keep {
            for (pid, f) in self.out_flight.iter() {
                if let Some((q, seq)) = &f.source {
                    if q.name == own {
                        kept.insert((own.clone(), *seq), pid);
                    }
                }
            }
        }
        self.out_flight.requeue_all();
        std::mem::take(&mut self.written).finish();
        // Ids this connection was to resend but did not get to (its window was full) stay
        // reserved, as long as the queue holds enough messages to need them: an entry that
        // expired or was purged meanwhile never comes back, and would pin its id for good.
        let leftovers = std::mem::take(&mut self.resend);
        if !keep || leftovers.is_empty() {
            return kept;
        }
        let ready = self.state.vhost.queue(&own).map_or(0, |q| {
            usize::try_from(q.stats().ready).unwrap_or(usize::MAX)
        });
        if kept.len() + leftovers.len() <= ready {
            kept.extend(leftovers.into_iter().filter(|((q, _), _)| *q == own));
        }
        kept
    }
}

/// Settles the queue entry of a message that is not sent at all (expired, or one the client
/// cannot take): it needs no acknowledgement and must not come back.
fn not_sent(source: Option<(Arc<Queue>, u64)>) {
    if let Some((q, seq)) = source {
        q.finish(&[seq]);
    }
}
