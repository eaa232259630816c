//! PUBLISH from the client and the QoS 1 and 2 acknowledgements the server owes it.
//!
//! An acknowledgement (PUBACK, PUBREC) waits until the message is durable wherever it was
//! stored: in a durable queue (a persistent session's, or any AMQP one), in the retained store,
//! and for QoS 2 the packet id that makes redelivery exactly-once.

use mqtt_proto::v5::{Packet, PubackReasonCode, PubcompReasonCode, Publish, PubrecReasonCode};
use mqtt_proto::{Pid, Protocol, QosPid};
use rosetta_core::auth::Resource;
use rosetta_core::queue::now_ms;
use rosetta_core::{CoreError, PublishOutcome, AMQ_TOPIC};

use super::Inner;
use crate::codec;
use crate::error::MqttError;
use crate::message::AppMessage;
use crate::topic;

impl Inner {
    /// The topic a PUBLISH addresses, resolving and recording topic aliases (MQTT 5.0 §3.3.2.3.4).
    fn resolve_topic(&mut self, p: &Publish) -> Result<String, MqttError> {
        let topic = String::from(&*p.topic_name);
        // Checked before an alias records it, so a refused topic never stands behind one.
        if let Some(why) = topic::refusal(&topic, self.state.config.max_topic_levels) {
            return Err(MqttError::TopicNameInvalid(why));
        }
        let Some(alias) = p.properties.topic_alias else {
            if topic.is_empty() {
                // [MQTT-4.7.3-1]: a topic name has at least one character.
                return Err(MqttError::Protocol(
                    "PUBLISH with an empty topic name and no topic alias".into(),
                ));
            }
            return Ok(topic);
        };
        // [MQTT-3.3.2-8], [MQTT-3.3.2-9]: 0 and values above our maximum are invalid.
        if alias == 0 || alias > self.state.config.topic_alias_max {
            return Err(MqttError::TopicAliasInvalid(alias));
        }
        if topic.is_empty() {
            return self
                .alias_in
                .get(&alias)
                .cloned()
                .ok_or_else(|| MqttError::Protocol(format!("unknown topic alias {alias}")));
        }
        self.alias_in.insert(alias, topic.clone());
        Ok(topic)
    }

    /// QoS 1 and 2 publishes the client has not had completed yet, against Receive Maximum.
    fn inbound_in_flight(&self) -> usize {
        self.acks
            .iter()
            .filter(|p| matches!(p, Packet::Puback(_)))
            .count()
            + self.qos2_in.len()
    }

    pub(super) fn on_publish(&mut self, p: Publish) -> Result<(), MqttError> {
        let topic = match self.resolve_topic(&p) {
            Ok(topic) => topic,
            // A 5.0 client can be told that this one message is refused and keep its
            // connection (MQTT 5.0 §3.4.2.1, §3.5.2.1: reason 0x90); QoS 0 has no reply, so
            // it and 3.x clients are disconnected, as RabbitMQ does.
            Err(MqttError::TopicNameInvalid(why)) if self.protocol == Protocol::V500 => {
                let ack = match p.qos_pid {
                    QosPid::Level0 => return Err(MqttError::TopicNameInvalid(why)),
                    QosPid::Level1(pid) => codec::puback(pid, PubackReasonCode::TopicNameInvalid),
                    QosPid::Level2(pid) => codec::pubrec(pid, PubrecReasonCode::TopicNameInvalid),
                };
                self.log_refusal("publish refused", &why);
                self.acks.push(0, ack);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if p.qos_pid != QosPid::Level0
            && self.protocol == Protocol::V500
            && self.inbound_in_flight() >= usize::from(self.state.config.max_inflight)
        {
            // [MQTT-3.3.4-9]
            return Err(MqttError::ReceiveMaximumExceeded(
                self.state.config.max_inflight,
            ));
        }
        if topic::is_sys(&topic) {
            // The `$SYS` tree is the broker's own. As Mosquitto does, the message is dropped
            // and a QoS 1 or 2 publish still answered, so the client does not resend it (5.0:
            // reason 0x87 Not authorized, which ends a QoS 2 exchange at PUBREC).
            tracing::debug!(peer = %self.peer, client_id = %self.client_id, %topic, "publish to $SYS dropped");
            match p.qos_pid {
                QosPid::Level0 => {}
                QosPid::Level1(pid) => self
                    .acks
                    .push(0, codec::puback(pid, PubackReasonCode::NotAuthorized)),
                QosPid::Level2(pid) => self
                    .acks
                    .push(0, codec::pubrec(pid, PubrecReasonCode::NotAuthorized)),
            }
            return Ok(());
        }
        if let Err(refused) = self.may_publish(&topic) {
            // 3.x cannot be told of one refused message: the connection closes (RabbitMQ).
            if self.protocol != Protocol::V500 {
                return Err(refused.into());
            }
            // 5.0: the message is dropped and the connection stays; QoS 1 and 2 hear 0x87
            // Not authorized (which ends a QoS 2 exchange at PUBREC), QoS 0 is only logged.
            self.log_refusal("publish refused", &refused.to_string());
            match p.qos_pid {
                QosPid::Level0 => {}
                QosPid::Level1(pid) => self
                    .acks
                    .push(0, codec::puback(pid, PubackReasonCode::NotAuthorized)),
                QosPid::Level2(pid) => self
                    .acks
                    .push(0, codec::pubrec(pid, PubrecReasonCode::NotAuthorized)),
            }
            return Ok(());
        }
        if let QosPid::Level2(pid) = p.qos_pid {
            if self.qos2_in.contains(&pid.value()) {
                // A resent PUBLISH whose PUBREC was lost: acknowledged again, not routed again
                // (MQTT 5.0 §4.3.3, method B).
                self.acks
                    .push(0, codec::pubrec(pid, PubrecReasonCode::Success));
                return Ok(());
            }
        }
        let now = now_ms();
        let message = AppMessage::from_publish(&p, topic, now);
        let publisher = self.stamp_client_id.then_some(self.client_id.as_str());
        let (outcome, epoch) = self.state.publish(&message, publisher, now)?;
        self.alarm.published();
        let epoch = epoch.unwrap_or(0);
        match p.qos_pid {
            QosPid::Level0 => {}
            QosPid::Level1(pid) => {
                self.acks
                    .push(epoch, codec::puback(pid, puback_reason(outcome)));
            }
            // A refused QoS 2 message ends its exchange at PUBREC (reason >= 0x80).
            QosPid::Level2(pid) if outcome.rejected => {
                self.acks
                    .push(epoch, codec::pubrec(pid, PubrecReasonCode::QuotaExceeded));
            }
            QosPid::Level2(pid) => {
                self.qos2_in.insert(pid.value());
                let mut epoch = epoch;
                if self.durable_queue {
                    let written = self
                        .state
                        .records(&self.client_id)
                        .put_qos2_in(pid.value())?;
                    self.state.store().request_sync(written);
                    epoch = epoch.max(written);
                }
                self.acks
                    .push(epoch, codec::pubrec(pid, pubrec_reason(outcome)));
            }
        }
        Ok(())
    }

    /// RabbitMQ's checks for an MQTT publish, the client's or its will: write on `amq.topic`,
    /// and the topic permission for the topic as a routing key.
    pub(super) fn may_publish(&mut self, topic: &str) -> Result<(), CoreError> {
        let grant = self.grant.as_mut().ok_or_else(not_connected)?;
        grant.write(Resource::Exchange, AMQ_TOPIC)?;
        // The key costs an allocation, so it is made only when there is a rule to check.
        if grant.restricts_topics(AMQ_TOPIC) {
            grant.topic_write(AMQ_TOPIC, &topic::topic_to_key(topic))?;
        }
        Ok(())
    }

    /// PUBREL: the QoS 2 exchange is complete; the packet id may be reused.
    pub(super) fn on_pubrel(&mut self, pid: Pid) {
        let reason = if self.qos2_in.remove(&pid.value()) {
            if self.durable_queue {
                if let Err(e) = self
                    .state
                    .records(&self.client_id)
                    .delete_qos2_in(pid.value())
                {
                    tracing::warn!(client_id = %self.client_id, error = %e, "cannot forget a released packet id");
                }
            }
            PubcompReasonCode::Success
        } else {
            PubcompReasonCode::PacketIdentifierNotFound
        };
        // Queued behind pending acknowledgements so replies keep the order of requests.
        self.acks.push(0, codec::pubcomp(pid, reason));
    }
}

/// A permission check before CONNECT was accepted: nothing is allowed yet.
pub(super) fn not_connected() -> CoreError {
    CoreError::AccessRefused("not connected".into())
}

fn puback_reason(outcome: PublishOutcome) -> PubackReasonCode {
    if outcome.rejected {
        PubackReasonCode::QuotaExceeded
    } else if !outcome.routed {
        PubackReasonCode::NoMatchingSubscribers
    } else {
        PubackReasonCode::Success
    }
}

fn pubrec_reason(outcome: PublishOutcome) -> PubrecReasonCode {
    if !outcome.routed {
        PubrecReasonCode::NoMatchingSubscribers
    } else {
        PubrecReasonCode::Success
    }
}
