//! SUBSCRIBE and UNSUBSCRIBE: filters become bindings from `amq.topic` (`$SYS` filters: from
//! [`topic::SYS_EXCHANGE`]) to the session's queue, or to a shared subscription's queue, and
//! retained messages follow the SUBACK.

use mqtt_proto::v5::{
    Packet, RetainHandling, Suback, SubackProperties, Subscribe, SubscribeReasonCode, Unsuback,
    UnsubackProperties, Unsubscribe, UnsubscribeReasonCode,
};
use mqtt_proto::QoS;
use rosetta_core::auth::Resource;
use rosetta_core::store::Epoch;
use rosetta_core::{ConsumerSpec, CoreError, Destination, QueueDeclare, Table, AMQ_TOPIC};

use super::inbound::not_connected;
use super::Inner;
use crate::codec;
use crate::error::MqttError;
use crate::persist::Subscription;
use crate::topic::{
    self, filter_to_binding, parse_filter, session_queue, shared_queue, shared_queue_of,
};

impl Inner {
    /// The queue a subscription's messages arrive in.
    fn queue_of(&self, subscription: &str) -> Option<String> {
        let parsed = parse_filter(subscription)?;
        Some(match parsed.group {
            Some(group) => shared_queue(group, parsed.filter),
            None => session_queue(&self.client_id),
        })
    }

    /// Declares the subscription's queue and binds it. The session's own queue is durable for a
    /// persistent session and exclusive to the connection otherwise; a shared subscription's
    /// queue lives while a session holds the subscription (`MqttState::hold_shared`). Either
    /// records MQTT as its owner when made here; an existing queue of that name is used as it
    /// is. Returns the store epoch that makes a new durable binding safe to acknowledge, if any.
    fn bind_subscription(&self, filter: &str) -> Result<Option<Epoch>, MqttError> {
        let parsed = parse_filter(filter).ok_or_else(|| {
            MqttError::Protocol(format!("invalid shared subscription '{filter}'"))
        })?;
        let vhost = &self.state.vhost;
        let queue = match parsed.group {
            Some(group) => {
                let name = shared_queue(group, parsed.filter);
                self.state
                    .hold_shared(&name, &self.client_id, self.conn_id)?;
                name
            }
            None => {
                let name = session_queue(&self.client_id);
                if vhost.queue(&name).is_none() {
                    let durable = self.durable_queue;
                    let declare = QueueDeclare {
                        name: name.clone(),
                        durable,
                        exclusive: !durable,
                        ..QueueDeclare::default()
                    };
                    let owner = topic::session_queue_owner(&self.client_id);
                    vhost.declare_owned_queue(declare, self.conn_id, owner)?;
                }
                name
            }
        };
        let exchange = topic::exchange_for(parsed.filter);
        if exchange == topic::SYS_EXCHANGE {
            self.state.declare_sys_exchange()?;
        }
        Ok(vhost.bind_deferred(
            exchange,
            Destination::Queue(queue),
            &filter_to_binding(parsed.filter),
            Table::new(),
            self.conn_id,
        )?)
    }

    /// Binds every subscription of a resumed session again: a shared subscription's queue may
    /// have been deleted (by an operator) while the session was away. Returns the epoch of the
    /// last binding written, if any, for CONNACK to wait for.
    pub(super) fn restore_bindings(&mut self) -> Result<Option<Epoch>, MqttError> {
        let filters: Vec<String> = self.subscriptions.keys().cloned().collect();
        let mut written = None;
        for f in filters {
            written = written.max(self.bind_subscription(&f)?);
        }
        Ok(written)
    }

    fn consume(&mut self, queue: &str) -> Result<(), MqttError> {
        if self.consumers.contains_key(queue) {
            return Ok(());
        }
        let spec = ConsumerSpec {
            tag: format!("mqtt-{}-{}", self.conn_id, queue),
            connection: self.conn_id,
            no_ack: false,
            exclusive: false,
            arguments: Table::new(),
            prefetch: 0,
            shared_credit: Some(self.credit.clone()),
        };
        let (q, c) = self
            .state
            .vhost
            .consume(queue, spec, self.outbox.sender())?;
        self.consumers.insert(queue.to_owned(), (q, c));
        Ok(())
    }

    /// Starts consuming from every queue the session's subscriptions fill.
    pub(super) fn consume_all(&mut self) {
        let mut queues: Vec<String> = self
            .subscriptions
            .keys()
            .filter_map(|f| self.queue_of(f))
            .collect();
        queues.dedup();
        for q in queues {
            if let Err(e) = self.consume(&q) {
                tracing::warn!(client_id = %self.client_id, queue = %q, error = %e, "cannot consume from a session queue");
            }
        }
    }

    /// Why a new subscription to `full` (whose share prefix, if any, is already checked) is
    /// refused before anything is bound: the packet carries too many filters, the session holds
    /// too many subscriptions, or the filter is one the front-end does not take.
    fn subscribe_refusal(
        &mut self,
        index: usize,
        full: &str,
        filter: &str,
    ) -> Option<(SubscribeReasonCode, String)> {
        let config = &self.state.config;
        if config.max_filters_per_subscribe > 0 && index >= config.max_filters_per_subscribe {
            let why = format!(
                "more than {} filters in one SUBSCRIBE",
                config.max_filters_per_subscribe
            );
            return Some((SubscribeReasonCode::QuotaExceeded, why));
        }
        if let Some(why) = topic::refusal(filter, config.max_topic_levels) {
            return Some((SubscribeReasonCode::TopicFilterInvalid, why));
        }
        // A subscription replacing one to the same filter adds nothing ([MQTT-3.8.4-3]).
        if config.max_subscriptions > 0
            && self.subscriptions.len() >= config.max_subscriptions
            && !self.subscriptions.contains_key(full)
        {
            let why = format!(
                "the session holds {} subscriptions, the limit",
                config.max_subscriptions
            );
            return Some((SubscribeReasonCode::QuotaExceeded, why));
        }
        if let Err(refused) = self.may_subscribe(filter) {
            return Some((SubscribeReasonCode::NotAuthorized, refused.to_string()));
        }
        None
    }

    /// RabbitMQ's checks for a subscription: read on `amq.topic`, and the topic permission for
    /// the filter as a binding key. The session's own queue needs no permission of its own.
    fn may_subscribe(&mut self, filter: &str) -> Result<(), CoreError> {
        let grant = self.grant.as_mut().ok_or_else(not_connected)?;
        grant.read(Resource::Exchange, AMQ_TOPIC)?;
        grant.topic_read(AMQ_TOPIC, &filter_to_binding(filter))
    }

    pub(super) fn on_subscribe(&mut self, s: Subscribe) -> Result<(), MqttError> {
        let id = s.properties.subscription_id.map_or(0, |v| v.value());
        let mut codes = Vec::with_capacity(s.topics.len());
        let mut retained = Vec::new();
        let mut refused = 0usize;
        let mut first_refusal = String::new();
        // SUBACK waits for the store to hold what it confirms, without blocking on an fsync
        // per filter: one SUBSCRIBE may carry thousands.
        let mut durable_at: Epoch = 0;
        for (index, (filter, options)) in s.topics.into_iter().enumerate() {
            let full = filter.to_string();
            let Some(parsed) = parse_filter(&full) else {
                codes.push(SubscribeReasonCode::TopicFilterInvalid);
                continue;
            };
            // [MQTT-3.8.3-4]: No Local on a shared subscription is a protocol error.
            if parsed.group.is_some() && options.no_local {
                return Err(MqttError::Protocol(
                    "No Local set on a shared subscription".into(),
                ));
            }
            // 3.1.1 clients read every refusal as 0x80 ([MQTT-3.9.3-2]).
            if let Some((code, why)) = self.subscribe_refusal(index, &full, parsed.filter) {
                if refused == 0 {
                    first_refusal = why;
                }
                refused += 1;
                codes.push(code);
                continue;
            }
            let existed = self.subscriptions.contains_key(&full);
            let bound = self.bind_subscription(&full).and_then(|epoch| {
                self.queue_of(&full)
                    .map_or(Ok(()), |q| self.consume(&q))
                    .map(|()| epoch)
            });
            if let Err(e) = bound.map(|epoch| durable_at = durable_at.max(epoch.unwrap_or(0))) {
                if refused == 0 {
                    first_refusal = format!("{full}: {e}");
                }
                refused += 1;
                if !existed {
                    self.release_shared(&full);
                }
                codes.push(if e.is_quota() {
                    SubscribeReasonCode::QuotaExceeded
                } else {
                    SubscribeReasonCode::UnspecifiedError
                });
                continue;
            }
            let subscription = Subscription {
                filter: full.clone(),
                qos: options.max_qos,
                no_local: options.no_local,
                retain_as_published: options.retain_as_published,
                retain_handling: options.retain_handling,
                id,
            };
            self.stamp_client_id |= subscription.no_local;
            // [MQTT-3.8.4-3]: a subscription to an existing filter replaces it.
            self.subscriptions.insert(full.clone(), subscription);
            codes.push(codec::granted(options.max_qos));
            // Retained messages go to new plain subscriptions, by Retain Handling (MQTT 5.0
            // §3.8.3.1), never to shared ones.
            let send = match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendAtSubscribeIfNotExist => !existed,
                RetainHandling::DoNotSend => false,
            };
            if send && parsed.group.is_none() {
                retained.push((full, options.max_qos));
            }
        }
        if refused > 0 {
            let why = format!("{refused} of the filters refused, first: {first_refusal}");
            self.log_refusal("subscription refused", &why);
        }
        durable_at = durable_at.max(self.persist_subscriptions()?);
        self.reply_when_durable(
            Packet::Suback(Suback {
                pid: s.pid,
                properties: SubackProperties::default(),
                topics: codes,
            }),
            durable_at,
        );
        if !retained.is_empty() {
            let filters: Vec<(&str, QoS)> =
                retained.iter().map(|(f, q)| (f.as_str(), *q)).collect();
            let owed = self.state.retained.owed(&filters);
            self.owe_retained(owed, id);
        }
        Ok(())
    }

    pub(super) fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), MqttError> {
        let mut codes = Vec::with_capacity(u.topics.len());
        let mut durable_at: Epoch = 0;
        for filter in u.topics {
            let full = filter.to_string();
            let Some(sub) = self.subscriptions.remove(&full) else {
                codes.push(UnsubscribeReasonCode::NoSubscriptionExisted);
                continue;
            };
            let result = match parse_filter(&sub.filter) {
                Some(p) if p.group.is_some() => {
                    // This session stops taking from the shared queue; the queue stays while
                    // another session holds the subscription.
                    if let Some(queue) = self.queue_of(&sub.filter) {
                        if let Some((q, c)) = self.consumers.remove(&queue) {
                            self.state.vhost.cancel(&q, &c);
                        }
                    }
                    self.release_shared(&sub.filter);
                    Ok(None)
                }
                Some(p) => self.state.vhost.unbind_deferred(
                    topic::exchange_for(p.filter),
                    Destination::Queue(session_queue(&self.client_id)),
                    &filter_to_binding(p.filter),
                    &Table::new(),
                    self.conn_id,
                ),
                None => Ok(None),
            };
            match result {
                Ok(epoch) => {
                    durable_at = durable_at.max(epoch.unwrap_or(0));
                    codes.push(UnsubscribeReasonCode::Success);
                }
                Err(e) => {
                    tracing::warn!(client_id = %self.client_id, filter = %full, error = %e, "unsubscribe failed");
                    codes.push(UnsubscribeReasonCode::UnspecifiedError);
                }
            }
        }
        self.stamp_client_id = self.subscriptions.values().any(|s| s.no_local);
        durable_at = durable_at.max(self.persist_subscriptions()?);
        self.reply_when_durable(
            Packet::Unsuback(Unsuback {
                pid: u.pid,
                properties: UnsubackProperties::default(),
                topics: codes,
            }),
            durable_at,
        );
        Ok(())
    }

    /// The session no longer holds `subscription`, if it is a shared one.
    fn release_shared(&self, subscription: &str) {
        if let Some(queue) = shared_queue_of(subscription) {
            self.state.release_shared(&queue, &self.client_id);
        }
    }

    /// The session ends: it lets go of its shared subscriptions, whose queues go with their
    /// last holder. (A stored session's are also let go by `MqttState::end_session`.)
    pub(super) fn release_all_shared(&self) {
        for filter in self.subscriptions.keys() {
            self.release_shared(filter);
        }
    }

    /// Writes a persistent session's subscriptions; SUBACK or UNSUBACK waits for the returned
    /// epoch to be on disk.
    fn persist_subscriptions(&mut self) -> Result<Epoch, MqttError> {
        if self.expiry == 0 {
            return Ok(0);
        }
        let epoch = self.write_session(None)?;
        self.state.store().request_sync(epoch);
        Ok(epoch)
    }

    /// Sends `reply` once the store's durable point reaches `epoch`, after every earlier
    /// acknowledgement still waiting (replies keep the order of the packets they answer).
    fn reply_when_durable(&mut self, reply: Packet, epoch: Epoch) {
        if epoch == 0 && self.acks.is_empty() {
            self.send(&reply);
        } else {
            self.acks.push(epoch, reply);
        }
    }
}
