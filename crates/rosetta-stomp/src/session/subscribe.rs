//! SUBSCRIBE and UNSUBSCRIBE, MESSAGE frames for deliveries, ACK and NACK.

use std::sync::Arc;

use rosetta_core::auth::Resource;
use rosetta_core::front_end::ledger::{give_back, is_for};
use rosetta_core::store::Epoch;
use rosetta_core::{
    Consumer, ConsumerSpec, Destination as Bind, Outbound, Queue, QueueDeclare, Settlement, Table,
    VHost, AMQ_TOPIC,
};

use super::{required, Session};
use crate::codec::FrameWriter;
use crate::destination::{
    bounded, durable_subscription_queue, legacy_durable_subscription_queue, Destination,
};
use crate::error::StompError;
use crate::frame::{Command, Frame, Version};
use crate::mapping::{add_message_headers, boolean, queue_arguments};
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
    /// What MESSAGE frames carry as `subscription`: the SUBSCRIBE's `id`, or its destination
    /// for one without id.
    id: String,
    /// The destination as the client named it, for MESSAGE frames of temporary queues.
    destination: String,
    pub queue: Arc<Queue>,
    pub consumer: Arc<Consumer>,
    ack: AckMode,
    /// Whether the queue is this durable topic or exchange subscription's own: the one named
    /// after its key and id, or one its `x-queue-name` made for this client. Only such a queue
    /// goes with UNSUBSCRIBE `durable:true`; a queue the subscription merely reads (named by
    /// `/amq/queue/`, `/queue/` or `x-queue-name`) is left to whoever made it.
    durable_queue: bool,
}

/// The queue a SUBSCRIBE reads from, as it was found or made.
struct Source {
    queue: String,
    /// Whether this SUBSCRIBE made the queue, so a failure after it undoes that.
    created: bool,
    /// See [`Subscription::durable_queue`].
    durable_queue: bool,
    /// The store epoch the queue and binding it wrote wait for.
    written: Option<Epoch>,
}

/// RabbitMQ's consumer tag for a subscription: `T_` and its id, or `Q_` and its destination
/// for one without id (what STOMP 1.0 allows), so the two kinds never collide and a duplicate
/// is named as RabbitMQ names it. A temporary queue's subscription is `T_/temp-queue/<name>`,
/// as there, so an explicit id of that form is a duplicate of it.
pub(super) fn consumer_tag(id: Option<&str>, destination: &str) -> String {
    match id {
        Some(id) => format!("T_{id}"),
        None => format!("Q_{destination}"),
    }
}

fn truthy(frame: &Frame, header: &str) -> bool {
    boolean(frame, header) == Some(true)
}

impl Session {
    /// Subscribes; returns the store epoch the queue and binding it wrote wait for, if any.
    pub(super) fn subscribe(&mut self, frame: &Frame) -> Result<Option<Epoch>, StompError> {
        // RabbitMQ: `durable:true` (or the older `persistent:true`) on a topic subscription.
        // Its queue is named after the subscription's id, so that comes first.
        let durable = truthy(frame, "durable") || truthy(frame, "persistent");
        if durable && frame.get("id").is_none() {
            return Err(StompError::DurableWithoutId);
        }
        let text = required(frame, "destination")?;
        let destination = Destination::parse(text)?;
        // STOMP 1.1 made `id` mandatory, but RabbitMQ's plugin, like STOMP 1.0, knows a
        // subscription without one by its destination, and clients written for it rely on that.
        let id = frame.get("id").unwrap_or(text);
        let tag = consumer_tag(frame.get("id"), text);
        if self.subscriptions.contains_key(&tag) {
            return Err(StompError::DuplicateSubscription(tag));
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
        let arguments = queue_arguments(frame)?;
        let vhost = self.vhost()?;
        let found = |queue: &str, written| Source {
            queue: queue.to_owned(),
            created: false,
            durable_queue: false,
            written,
        };
        let source = match &destination {
            Destination::Queue(q) => found(q, self.ensure_queue(&vhost, q, arguments)?),
            Destination::AmqQueue(q) | Destination::ReplyQueue(q) => found(q, None),
            Destination::TempQueue(t) => found(&self.temp_queue(&vhost, t, false)?, None),
            Destination::Topic(key) => {
                self.subscription_queue(&vhost, frame, AMQ_TOPIC, key, id, durable, arguments)?
            }
            Destination::Exchange { name, key } => {
                self.subscription_queue(&vhost, frame, name, key, id, durable, arguments)?
            }
        };
        // Consuming needs read on the queue, whichever destination led to it.
        let started = self
            .permit(|g| g.read(Resource::Queue, &source.queue))
            .and_then(|()| {
                self.start_subscription(
                    &vhost,
                    tag,
                    id.to_owned(),
                    text.to_owned(),
                    &source.queue,
                    ack,
                    prefetch,
                )
            });
        match started {
            Ok(sub) => {
                sub.durable_queue = source.durable_queue;
                Ok(source.written)
            }
            Err(e) => {
                if source.created {
                    // Nobody will ever read the queue made for this subscription.
                    let _ = vhost.delete_owned_queue(&source.queue, owner::OWNER, self.conn_id);
                }
                Err(e)
            }
        }
    }

    /// The queue a topic or exchange subscription reads: a new exclusive auto-delete queue,
    /// or for a durable subscription a durable one named after it that outlives the connection
    /// (an existing queue of that name is used as it is). `x-queue-name` names either, so AMQP
    /// clients can reach it through the default exchange. A queue made here records STOMP as
    /// its owner, and goes again if the binding is refused.
    #[allow(clippy::too_many_arguments)]
    fn subscription_queue(
        &mut self,
        vhost: &VHost,
        frame: &Frame,
        exchange: &str,
        key: &str,
        id: &str,
        durable: bool,
        arguments: Table,
    ) -> Result<Source, StompError> {
        // RabbitMQ's `x-queue-name` names the queue, durable or not.
        let named = frame.get("x-queue-name");
        let name = match named {
            Some(name) => name.to_owned(),
            None if durable => self.durable_queue_name(vhost, exchange, key, id),
            None => String::new(),
        };
        bounded("subscription queue name", &name)?;
        // Declared on the client's behalf, as a declare with these arguments: checked before a
        // named one is made; a server-named one is checked once it has its name, and goes if
        // refused.
        let server_named = name.is_empty();
        if !server_named {
            self.permit(|g| g.declare_queue(&name, &arguments))?;
        }
        let checked = server_named.then(|| arguments.clone());
        let declare = QueueDeclare {
            name,
            durable,
            exclusive: !durable,
            auto_delete: !durable,
            arguments,
            ..QueueDeclare::default()
        };
        let made_for = owner::queue_owner(self.client_id.as_deref());
        let declared = vhost.declare_owned_queue(declare, self.conn_id, made_for.clone())?;
        let name = declared.name;
        // A durable subscription's own queue: the one named after it, or one its
        // `x-queue-name` made now or earlier for the same `client-id`.
        let durable_queue = durable
            && (named.is_none()
                || declared.created
                || self.client_id.is_some()
                    && vhost
                        .queue(&name)
                        .is_some_and(|q| q.owner() == Some(&made_for)));
        // The binding: write on the queue, read on the exchange, and the exchange's topic
        // permission for the key.
        let allowed = self.permit(|g| {
            if let Some(arguments) = &checked {
                g.declare_queue(&name, arguments)?;
            }
            g.write(Resource::Queue, &name)?;
            g.read(Resource::Exchange, exchange)?;
            g.topic_read(exchange, key)
        });
        let bound = allowed.and_then(|()| {
            Ok(vhost.bind_deferred(
                exchange,
                Bind::Queue(name.clone()),
                key,
                Table::new(),
                self.conn_id,
            )?)
        });
        match bound {
            Ok(bound) => Ok(Source {
                queue: name,
                created: declared.created,
                durable_queue,
                written: declared.durable_at.max(bound),
            }),
            Err(e) => {
                if declared.created {
                    let _ = vhost.delete_owned_queue(&name, owner::OWNER, self.conn_id);
                }
                Err(e)
            }
        }
    }

    /// The queue of durable subscription `id` on `key`: RabbitMQ's name for it, unless a
    /// queue made for it under this server's earlier naming (`stomp-subscription-` then the
    /// `client-id` and the id) exists, is STOMP's and is bound from the same exchange with the
    /// same key. That one is kept, with whatever it collected, so subscriptions made before the
    /// naming changed survive the upgrade; one bound elsewhere is another subscription's
    /// stream and is left alone.
    fn durable_queue_name(&self, vhost: &VHost, exchange: &str, key: &str, id: &str) -> String {
        let name = durable_subscription_queue(key, id);
        if vhost.queue(&name).is_some() {
            return name;
        }
        let legacy = legacy_durable_subscription_queue(self.client_id.as_deref(), id);
        let ours = vhost
            .queue(&legacy)
            .is_some_and(|q| q.durable && q.owned_by(owner::OWNER));
        let bound_here = || {
            let target = Bind::Queue(legacy.clone());
            vhost.exchange(exchange).is_some_and(|x| {
                x.bindings()
                    .iter()
                    .any(|b| b.destination == target && b.routing_key == key)
            })
        };
        if ours && bound_here() {
            tracing::debug!(peer = %self.peer, queue = %legacy, "durable subscription keeps its queue from before RabbitMQ's naming");
            legacy
        } else {
            name
        }
    }

    /// Consumes `queue` for a subscription known by consumer tag `tag`; returns it, so the
    /// caller can complete it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_subscription(
        &mut self,
        vhost: &Arc<VHost>,
        tag: String,
        id: String,
        destination: String,
        queue: &str,
        ack: AckMode,
        prefetch: u32,
    ) -> Result<&mut Subscription, StompError> {
        let max = self.config.max_subscriptions;
        if max > 0 && self.subscriptions.len() >= max {
            return Err(StompError::TooManySubscriptions { max });
        }
        let spec = ConsumerSpec {
            tag: tag.clone(),
            connection: self.conn_id,
            no_ack: ack == AckMode::Auto,
            exclusive: false,
            arguments: Table::new(),
            prefetch,
            shared_credit: None,
        };
        let (queue, consumer) = vhost.consume(queue, spec, self.outbox.clone())?;
        tracing::debug!(peer = %self.peer, tag = %tag, queue = %queue.name, "subscribed");
        let sub = Subscription {
            id,
            destination,
            queue,
            consumer,
            ack,
            durable_queue: false,
        };
        Ok(self.subscriptions.entry(tag).insert_entry(sub).into_mut())
    }

    /// Unsubscribes; returns the store epoch a durable subscription's deletion waits for.
    pub(super) fn unsubscribe(&mut self, frame: &Frame) -> Result<Option<Epoch>, StompError> {
        let durable = truthy(frame, "durable") || truthy(frame, "persistent");
        if durable && frame.get("id").is_none() {
            return Err(StompError::DurableWithoutId);
        }
        // As at SUBSCRIBE, a subscription without id is known by its destination.
        let (tag, description) = match (frame.get("id"), frame.get("destination")) {
            (Some(id), _) => (consumer_tag(Some(id), ""), format!("id='{id}'")),
            (None, Some(d)) => (consumer_tag(None, d), format!("destination='{d}'")),
            (None, None) => {
                return Err(StompError::MissingHeader {
                    command: "UNSUBSCRIBE",
                    header: "id",
                })
            }
        };
        let sub = self
            .subscriptions
            .remove(&tag)
            .ok_or(StompError::UnknownSubscription(description))?;
        let vhost = self.vhost()?;
        vhost.cancel(&sub.queue, &sub.consumer);
        // RabbitMQ: UNSUBSCRIBE with `durable:true` ends a durable subscription for good;
        // without it the queue keeps collecting messages for the next SUBSCRIBE. Only the
        // subscription's own queue goes, and only if STOMP made it: a durable subscription may
        // read one an AMQP client declared under its name, and a queue it merely reads
        // (`/queue/`, `/amq/queue/`, another's `x-queue-name`) is not its to end.
        if durable && sub.durable_queue {
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
                let client_ack = sub.ack != AckMode::Auto;
                // Written straight into the output: once per message, so no frame of owned
                // strings is built first.
                let mut frame = FrameWriter::new(Command::Message, self.version, &mut self.out);
                frame.header("subscription", &sub.id);
                frame.number("message-id", id);
                if sub.destination.starts_with("/temp-queue/") {
                    frame.header("destination", &sub.destination);
                } else {
                    let destination =
                        Destination::of_message(&d.message.exchange, &d.message.routing_key);
                    frame.display("destination", destination);
                }
                // STOMP 1.2 MESSAGE: with client acknowledgement the frame carries an `ack`
                // header whose value the ACK names.
                if client_ack && self.version == Version::V1_2 {
                    frame.number("ack", id);
                }
                frame.header("redelivered", if d.redelivered { "true" } else { "false" });
                add_message_headers(&mut frame, &d.message);
                frame.finish(&d.message.body);
                if client_ack {
                    self.unacked
                        .insert(id, d.queue.clone(), d.seq, d.consumer.tag.clone());
                } else {
                    self.auto_ack.written(&d.consumer, &d.queue);
                }
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
        let header = match self.version {
            Version::V1_2 => "id",
            _ => "message-id",
        };
        let text = required(frame, header)?;
        // An id this server never hands out is a bad header; one it did, but that is settled
        // or unknown here, names no message (RabbitMQ's two answers).
        let id = text.parse::<u64>().map_err(|_| StompError::InvalidAckId {
            command: frame.command.as_str(),
            header,
        })?;
        if !self.unacked.contains(id) {
            return Err(StompError::UnknownAckId(text.to_owned()));
        }
        Ok(id)
    }

    pub(super) fn ack(&mut self, frame: &Frame) -> Result<(), StompError> {
        let id = self.ack_id(frame)?;
        let Some(subscription) = self.unacked.get(id).map(|u| u.extra.clone()) else {
            return Err(StompError::UnknownAckId(id.to_string()));
        };
        let mode = self
            .subscriptions
            .get(&*subscription)
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
