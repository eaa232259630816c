//! SUBSCRIBE and UNSUBSCRIBE, MESSAGE frames for deliveries, ACK and NACK.

use std::sync::Arc;

use rosetta_core::front_end::ledger::{give_back, is_for};
use rosetta_core::store::Epoch;
use rosetta_core::{
    Consumer, ConsumerSpec, Destination as Bind, Outbound, Queue, QueueDeclare, Settlement, Table,
    VHost, AMQ_TOPIC,
};

use super::{required, Session};
use crate::codec;
use crate::destination::{durable_subscription_queue, Destination};
use crate::error::StompError;
use crate::frame::{Command, Frame, Version};
use crate::mapping::{add_message_headers, boolean};
use crate::owner;

/// STOMP 1.2 SUBSCRIBE `ack` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AckMode {
    /// The message counts as acknowledged once sent.
    Auto,
    /// An ACK acknowledges that message and every earlier one of the subscription.
    Client,
    /// An ACK acknowledges just that message.
    ClientIndividual,
}

impl AckMode {
    /// STOMP 1.0 defines only `auto` and `client`, but RabbitMQ's STOMP plugin takes
    /// `client-individual` (and NACK) from 1.0 clients too, and clients written for it use them.
    fn parse(text: Option<&str>) -> Result<AckMode, StompError> {
        match text {
            None | Some("auto") => Ok(AckMode::Auto),
            Some("client") => Ok(AckMode::Client),
            Some("client-individual") => Ok(AckMode::ClientIndividual),
            Some(other) => Err(StompError::InvalidHeader {
                header: "ack",
                reason: format!("'{other}' is not an acknowledgement mode"),
            }),
        }
    }
}

pub(super) struct Subscription {
    /// The destination as the client named it, for MESSAGE frames of temporary queues.
    destination: String,
    pub queue: Arc<Queue>,
    pub consumer: Arc<Consumer>,
    ack: AckMode,
}

fn truthy(frame: &Frame, header: &str) -> bool {
    boolean(frame, header) == Some(true)
}

impl Session {
    /// Subscribes; returns the store epoch the queue and binding it wrote wait for, if any.
    pub(super) fn subscribe(&mut self, frame: &Frame) -> Result<Option<Epoch>, StompError> {
        let text = required(frame, "destination")?;
        let destination = Destination::parse(text)?;
        // STOMP 1.1 made `id` mandatory; a 1.0 subscription is known by its destination.
        let id = match (frame.get("id"), self.version) {
            (Some(id), _) => id,
            (None, Version::V1_0) => text,
            (None, _) => required(frame, "id")?,
        };
        if self.subscriptions.contains_key(id) {
            return Err(StompError::DuplicateSubscription(id.to_owned()));
        }
        let ack = AckMode::parse(frame.get("ack"))?;
        // RabbitMQ's `prefetch-count`: the most unacknowledged messages in flight (0 = no limit).
        let prefetch = match frame.get("prefetch-count") {
            None => 0,
            Some(v) => v
                .trim()
                .parse::<u32>()
                .map_err(|_| StompError::InvalidHeader {
                    header: "prefetch-count",
                    reason: format!("'{v}' is not a non-negative integer"),
                })?,
        };
        // RabbitMQ: `durable:true` (or the older `persistent:true`) on a topic subscription.
        let durable = truthy(frame, "durable") || truthy(frame, "persistent");
        let vhost = self.vhost()?;
        let (queue, transient, written) = match destination {
            Destination::Queue(q) => {
                let written = self.ensure_queue(&vhost, &q)?;
                (q, false, written)
            }
            Destination::AmqQueue(q) | Destination::ReplyQueue(q) => (q, false, None),
            Destination::TempQueue(t) => (self.temp_queue(&vhost, &t, false)?, false, None),
            Destination::Topic(key) => {
                self.subscription_queue(&vhost, AMQ_TOPIC, &key, id, durable)?
            }
            Destination::Exchange { name, key } => {
                self.subscription_queue(&vhost, &name, &key, id, durable)?
            }
        };
        let started = self.start_subscription(
            &vhost,
            id.to_owned(),
            text.to_owned(),
            &queue,
            ack,
            prefetch,
        );
        if started.is_err() && transient {
            // Nobody will ever read the queue made for this subscription.
            let _ = vhost.delete_owned_queue(&queue, owner::OWNER, self.conn_id);
        }
        started.map(|()| written)
    }

    /// The queue a topic or exchange subscription reads: a new exclusive auto-delete queue,
    /// or for a durable subscription a durable one named after it that outlives the connection
    /// (an existing queue of that name is used as it is). A queue made here records STOMP as
    /// its owner. Returns the queue, whether it was made for this subscription alone, and the
    /// store epoch its durable records wait for.
    fn subscription_queue(
        &self,
        vhost: &VHost,
        exchange: &str,
        key: &str,
        id: &str,
        durable: bool,
    ) -> Result<(String, bool, Option<Epoch>), StompError> {
        let declare = if durable {
            QueueDeclare {
                name: durable_subscription_queue(self.client_id.as_deref(), id)?,
                durable: true,
                ..QueueDeclare::default()
            }
        } else {
            QueueDeclare {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclare::default()
            }
        };
        let made_for = owner::queue_owner(self.client_id.as_deref());
        let declared = vhost.declare_owned_queue(declare, self.conn_id, made_for)?;
        let name = declared.name;
        match vhost.bind_deferred(
            exchange,
            Bind::Queue(name.clone()),
            key,
            Table::new(),
            self.conn_id,
        ) {
            Ok(bound) => Ok((name, !durable, declared.durable_at.max(bound))),
            Err(e) => {
                if !durable {
                    let _ = vhost.delete_owned_queue(&name, owner::OWNER, self.conn_id);
                }
                Err(e.into())
            }
        }
    }

    pub(super) fn start_subscription(
        &mut self,
        vhost: &Arc<VHost>,
        id: String,
        destination: String,
        queue: &str,
        ack: AckMode,
        prefetch: u32,
    ) -> Result<(), StompError> {
        let max = self.config.max_subscriptions;
        if max > 0 && self.subscriptions.len() >= max {
            return Err(StompError::TooManySubscriptions { max });
        }
        let spec = ConsumerSpec {
            tag: id.clone(),
            connection: self.conn_id,
            no_ack: ack == AckMode::Auto,
            exclusive: false,
            arguments: Table::new(),
            prefetch,
            shared_credit: None,
        };
        let (queue, consumer) = vhost.consume(queue, spec, self.outbox.clone())?;
        tracing::debug!(peer = %self.peer, id = %id, queue = %queue.name, "subscribed");
        self.subscriptions.insert(
            id,
            Subscription {
                destination,
                queue,
                consumer,
                ack,
            },
        );
        Ok(())
    }

    /// Unsubscribes; returns the store epoch a durable subscription's deletion waits for.
    pub(super) fn unsubscribe(&mut self, frame: &Frame) -> Result<Option<Epoch>, StompError> {
        let id = match (frame.get("id"), self.version) {
            (Some(id), _) => id,
            (None, Version::V1_0) => required(frame, "destination")?,
            (None, _) => required(frame, "id")?,
        };
        let sub = self
            .subscriptions
            .remove(id)
            .ok_or_else(|| StompError::UnknownSubscription(id.to_owned()))?;
        let vhost = self.vhost()?;
        vhost.cancel(&sub.queue, &sub.consumer);
        // RabbitMQ: UNSUBSCRIBE with `durable:true` ends a durable subscription for good;
        // without it the queue keeps collecting messages for the next SUBSCRIBE. Only a queue
        // STOMP made goes: a durable subscription may read one an AMQP client declared under
        // its name, and a `/queue/` destination's queue is nobody's.
        let durable = truthy(frame, "durable") || truthy(frame, "persistent");
        if durable && sub.queue.durable {
            let deleted = vhost.delete_owned_queue(&sub.queue.name, owner::OWNER, self.conn_id)?;
            return Ok(deleted.and_then(|d| d.durable_at));
        }
        Ok(None)
    }

    /// A delivery or notification from a queue.
    pub(super) fn deliver(&mut self, item: Outbound) {
        match item {
            Outbound::Deliver(d) => {
                let live = self
                    .subscriptions
                    .get(&*d.consumer.tag)
                    .filter(|s| is_for(&d, Some(&s.consumer)));
                let Some(sub) = live else {
                    // The subscription ended meanwhile; its message goes back.
                    give_back(&d);
                    return;
                };
                let id = self.next_message_id;
                self.next_message_id += 1;
                let destination = if sub.destination.starts_with("/temp-queue/") {
                    sub.destination.clone()
                } else {
                    Destination::of_message(&d.message.exchange, &d.message.routing_key)
                };
                let mut frame = Frame::new(Command::Message)
                    .header("subscription", &*d.consumer.tag)
                    .header("message-id", id.to_string())
                    .header("destination", destination);
                if sub.ack == AckMode::Auto {
                    self.auto_ack.written(&d.consumer, &d.queue);
                } else {
                    // STOMP 1.2 MESSAGE: with client acknowledgement the frame carries an
                    // `ack` header whose value the ACK names.
                    if self.version == Version::V1_2 {
                        frame.push_header("ack", id.to_string());
                    }
                    self.unacked
                        .insert(id, d.queue.clone(), d.seq, d.consumer.tag.to_string());
                }
                frame.push_header("redelivered", d.redelivered.to_string());
                add_message_headers(&mut frame, &d.message);
                let frame = codec::with_body(frame, d.message.body.clone());
                self.write(&frame);
            }
            Outbound::Cancelled { consumer_tag, .. } => {
                // The queue was deleted under the subscription; STOMP has no cancel
                // notification, so the subscription just ends.
                if self.subscriptions.remove(&*consumer_tag).is_some() {
                    tracing::debug!(peer = %self.peer, id = %consumer_tag, "subscription's queue deleted");
                }
            }
            Outbound::Close(reason) => self.close_forced(reason.as_str()),
        }
    }

    /// ACK or NACK, or holds it back when it names a transaction.
    pub(super) fn ack_or_hold(&mut self, frame: &Frame) -> Result<(), StompError> {
        let Some(tx) = frame.get("transaction") else {
            return self.ack(frame);
        };
        self.ack_id(frame)?;
        self.hold(tx, frame)
    }

    /// The outstanding message an ACK or NACK names: STOMP 1.2 uses `id` (the MESSAGE's `ack`
    /// header) and nothing else, as RabbitMQ's STOMP plugin requires; 1.0 and 1.1 use
    /// `message-id` (1.1 adds `subscription`, which the message id already implies here).
    fn ack_id(&self, frame: &Frame) -> Result<u64, StompError> {
        let text = match self.version {
            Version::V1_2 => required(frame, "id")?,
            _ => required(frame, "message-id")?,
        };
        text.parse::<u64>()
            .ok()
            .filter(|id| self.unacked.contains(*id))
            .ok_or_else(|| StompError::UnknownAckId(text.to_owned()))
    }

    pub(super) fn ack(&mut self, frame: &Frame) -> Result<(), StompError> {
        let id = self.ack_id(frame)?;
        let Some(subscription) = self.unacked.get(id).map(|u| u.extra.clone()) else {
            return Err(StompError::UnknownAckId(id.to_string()));
        };
        let mode = self
            .subscriptions
            .get(&subscription)
            .map_or(AckMode::ClientIndividual, |s| s.ack);
        // NACK gives the message back, flagged redelivered; RabbitMQ's `requeue:false` drops it
        // (or dead-letters it, if its queue says so).
        let how = match (
            frame.command == Command::Nack,
            boolean(frame, "requeue") != Some(false),
        ) {
            (false, _) => Settlement::Ack,
            (true, true) => Settlement::Requeue,
            (true, false) => Settlement::Reject,
        };
        if mode == AckMode::Client {
            // STOMP 1.2 SUBSCRIBE ack:client: "the ACK is treated as a cumulative
            // acknowledgment", within the subscription.
            self.unacked.settle_up_to(id, |s| *s == subscription, how);
        } else {
            self.unacked.settle(id, how);
        }
        Ok(())
    }
}
