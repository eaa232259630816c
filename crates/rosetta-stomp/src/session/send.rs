//! SEND, temporary queues and transactions (BEGIN, COMMIT, ABORT).

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use rosetta_core::auth::Resource;
use rosetta_core::queue::now_ms;
use rosetta_core::queue_config::QueueConfig;
use rosetta_core::store::Epoch;
use rosetta_core::{CoreError, Message, QueueDeclare, Table, VHost, AMQ_TOPIC};

use super::subscribe::{consumer_tag, AckMode};
use super::{required, Session};
use crate::destination::Destination;
use crate::error::StompError;
use crate::frame::{Command, Frame};
use crate::mapping::{check_short_strings, properties_from_send, queue_arguments};
use crate::owner;

/// Most transactions one connection may have open at once: what RabbitMQ's STOMP plugin
/// allows, so clients written for it fit, while a client cannot pile up empty transactions.
const MAX_TRANSACTIONS: usize = 16;

/// An open transaction (STOMP 1.2 BEGIN): frames held back until COMMIT.
#[derive(Default)]
pub(super) struct Transaction {
    frames: Vec<Frame>,
    /// Body and header bytes of `frames`, for `max_transaction_bytes`.
    bytes: u64,
}

impl Transaction {
    /// Whether committing it publishes something.
    pub(super) fn publishes(&self) -> bool {
        self.frames.iter().any(|f| f.command == Command::Send)
    }
}

/// What holding `frame` costs: its body and its headers.
fn held_size(frame: &Frame) -> u64 {
    let headers: usize = frame.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    (frame.body.len() + headers) as u64
}

impl Session {
    /// SEND, or holds it back when it names a transaction (STOMP 1.2 SEND: "the message will
    /// be handled atomically based on the transaction").
    pub(super) fn send_or_hold(&mut self, frame: &Frame) -> Result<Option<Epoch>, StompError> {
        // A MESSAGE's `message-id` is the broker's; RabbitMQ's STOMP plugin refuses a SEND that
        // sets one, before it looks at the destination. `amqp-message-id` sets the AMQP one.
        if frame.get("message-id").is_some() {
            return Err(StompError::HeaderNotAllowed {
                command: "SEND",
                header: "message-id",
            });
        }
        let Some(tx) = frame.get("transaction") else {
            return self.send(frame);
        };
        // Refuse a bad destination or header now rather than at COMMIT, where the client could
        // not tell which SEND was wrong; RabbitMQ's plugin checks them at the SEND too. The
        // queue arguments a `/queue/` destination may be declared with are checked as the
        // declare will check them.
        let destination = Destination::parse(required(frame, "destination")?)?;
        properties_from_send(frame, now_ms())?;
        let arguments = queue_arguments(frame)?;
        if let Destination::Queue(_) = destination {
            QueueConfig::parse(&arguments)?;
        }
        self.hold(tx, frame)?;
        Ok(None)
    }

    /// Adds `frame` to transaction `tx`. One frame past `max_transaction_frames` or
    /// `max_transaction_bytes` drops the whole transaction: none of it will ever take effect.
    pub(super) fn hold(&mut self, tx: &str, frame: &Frame) -> Result<(), StompError> {
        let (max_frames, max_bytes) = (
            self.config.max_transaction_frames,
            self.config.max_transaction_bytes,
        );
        let held = self
            .transactions
            .get_mut(tx)
            .ok_or_else(|| StompError::UnknownTransaction(tx.to_owned()))?;
        let size = held_size(frame);
        let limit = if max_frames > 0 && held.frames.len() >= max_frames {
            Some(format!("{max_frames} frames"))
        } else if max_bytes > 0 && held.bytes.saturating_add(size) > max_bytes {
            Some(format!("{max_bytes} bytes"))
        } else {
            None
        };
        if let Some(limit) = limit {
            self.transactions.remove(tx);
            return Err(StompError::TransactionTooLarge {
                id: tx.to_owned(),
                limit,
            });
        }
        let mut frame = frame.clone();
        // The body is a slice of a read buffer; a copy of its own lets that buffer go, so a held
        // frame costs what it counts.
        frame.body = Bytes::copy_from_slice(&frame.body);
        held.frames.push(frame);
        held.bytes += size;
        Ok(())
    }

    /// Publishes a SEND; returns the store epoch to wait for before the RECEIPT, if the
    /// message or the queue declared for it was written durably.
    fn send(&mut self, frame: &Frame) -> Result<Option<Epoch>, StompError> {
        let destination = Destination::parse(required(frame, "destination")?)?;
        // RabbitMQ's plugin reads the queue argument headers of every SEND, whatever its
        // destination, so a bad number is refused even where no queue is declared.
        let arguments = queue_arguments(frame)?;
        let vhost = self.vhost()?;
        let mut declared = None;
        let (exchange, routing_key): (Cow<'static, str>, _) = match destination {
            Destination::Queue(q) => {
                declared = self.ensure_queue(&vhost, &q, arguments)?;
                ("".into(), q)
            }
            Destination::Topic(key) => (AMQ_TOPIC.into(), key),
            Destination::Exchange { name, key } => (name.into(), key),
            Destination::AmqQueue(q) | Destination::ReplyQueue(q) => ("".into(), q),
            Destination::TempQueue(t) => ("".into(), self.temp_queue(&vhost, &t, true)?),
        };
        self.permit(|g| {
            g.write(Resource::Exchange, &exchange)?;
            g.topic_write(&exchange, &routing_key)
        })?;
        let mut properties = properties_from_send(frame, now_ms())?;
        // RabbitMQ's temporary reply queues: `reply-to:/temp-queue/t` gets this connection a
        // private queue it is subscribed to, and the responder sees where to answer.
        match properties.reply_to.as_deref().map(Destination::parse) {
            Some(Ok(Destination::TempQueue(t))) => {
                let queue = self.temp_queue(&vhost, &t, true)?;
                properties.reply_to = Some(format!("/reply-queue/{queue}"));
            }
            Some(Err(e @ StompError::NameTooLong { .. })) => return Err(e),
            // Any other text is an address for the responder to interpret.
            _ => {}
        }
        check_short_strings(&properties)?;
        let outcome = vhost.publish(Message::new(
            exchange,
            routing_key,
            properties,
            frame.body.clone(),
        ))?;
        self.alarm.published();
        if outcome.rejected && frame.get("receipt").is_some() {
            // The client asked to know the message arrived; a full queue refused it.
            return Err(StompError::Core(
                "a queue is full and refused the message (x-overflow)".into(),
            ));
        }
        // A receipt tells the client the destination exists, so it waits for the new queue's
        // record too.
        Ok(outcome.epoch.max(declared))
    }

    /// `/queue/q`: the durable shared queue `q`, declared on first use with `arguments` (the
    /// frame's `x-…` headers, as RabbitMQ's plugin takes them). A queue that already exists is
    /// used as it is, so one declared differently by another protocol still works. The client
    /// named it for anyone to share, as with an AMQP declare, so it has no owner and STOMP
    /// never deletes it. The arguments are checked as a declare checks them either way, so a
    /// header refused for a new queue is refused for an existing one too. Returns the store
    /// epoch a newly declared queue's record waits for.
    pub(super) fn ensure_queue(
        &mut self,
        vhost: &VHost,
        name: &str,
        arguments: Table,
    ) -> Result<Option<Epoch>, StompError> {
        QueueConfig::parse(&arguments)?;
        match vhost.usable_queue(name, self.conn_id) {
            Ok(_) => Ok(None),
            Err(CoreError::NotFound(_)) => {
                // Declared on the client's behalf, so with the client's permission to, its
                // dead-letter arguments included.
                self.permit(|g| g.declare_queue(name, &arguments))?;
                let declare = QueueDeclare {
                    name: name.to_owned(),
                    durable: true,
                    arguments,
                    ..QueueDeclare::default()
                };
                Ok(vhost.declare_queue(declare, self.conn_id)?.durable_at)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The private queue behind `/temp-queue/t`, created on first use and owned by this
    /// connection. With `listen`, the connection is subscribed to it (auto ack, subscription id
    /// `/temp-queue/t`), as RabbitMQ does for reply queues.
    pub(super) fn temp_queue(
        &mut self,
        vhost: &Arc<VHost>,
        temp: &str,
        listen: bool,
    ) -> Result<String, StompError> {
        let existing = self
            .temp_queues
            .get(temp)
            .filter(|q| vhost.queue(q).is_some())
            .cloned();
        let queue = match existing {
            Some(q) => q,
            None => {
                // Each temporary queue is at most one subscription, so the subscription bound
                // bounds them too (a forgotten name's queue stays until the connection ends).
                let max = self.config.max_subscriptions;
                if max > 0 && self.temp_queues.len() >= max {
                    return Err(StompError::TooManyTempQueues { max });
                }
                let declare = QueueDeclare {
                    exclusive: true,
                    ..QueueDeclare::default()
                };
                let made_for = owner::queue_owner(self.client_id.as_deref());
                let name = vhost
                    .declare_owned_queue(declare, self.conn_id, made_for)?
                    .name;
                // Configure on the name the server gave it, as RabbitMQ checks; a refused
                // queue goes at once.
                if let Err(e) = self.permit(|g| g.configure(Resource::Queue, &name)) {
                    let _ = vhost.delete_owned_queue(&name, owner::OWNER, self.conn_id);
                    return Err(e);
                }
                self.temp_queues.insert(temp.to_owned(), name.clone());
                name
            }
        };
        let id = format!("/temp-queue/{temp}");
        let tag = consumer_tag(Some(&id), &id);
        let subscribed = self.subscriptions.values().any(|s| s.queue.name == queue);
        if listen && !subscribed && !self.subscriptions.contains_key(&tag) {
            self.start_subscription(
                &vhost.clone(),
                tag,
                id.clone(),
                id,
                &queue,
                AckMode::Auto,
                0,
            )?;
        }
        Ok(queue)
    }

    pub(super) fn begin(&mut self, frame: &Frame) -> Result<(), StompError> {
        let tx = required(frame, "transaction")?;
        if self.transactions.contains_key(tx) {
            return Err(StompError::DuplicateTransaction(tx.to_owned()));
        }
        if self.transactions.len() >= MAX_TRANSACTIONS {
            return Err(StompError::TooManyTransactions {
                max: MAX_TRANSACTIONS,
            });
        }
        self.transactions
            .insert(tx.to_owned(), Transaction::default());
        Ok(())
    }

    /// COMMIT: the held SENDs, ACKs and NACKs take effect, in the order they arrived. Each held
    /// SEND's own RECEIPT goes out once its message is published (and durable, if persistent);
    /// the COMMIT's waits for all of them.
    pub(super) fn commit(&mut self, frame: &Frame) -> Result<Option<Epoch>, StompError> {
        let tx = required(frame, "transaction")?;
        let held = self
            .transactions
            .remove(tx)
            .ok_or_else(|| StompError::UnknownTransaction(tx.to_owned()))?;
        let mut wait = None;
        for f in &held.frames {
            match f.command {
                Command::Send => {
                    let published = self.send(f)?;
                    if let Some(receipt) = f.get("receipt") {
                        self.receipt(published.unwrap_or(0), receipt.to_owned());
                    }
                    wait = wait.max(published);
                }
                _ => self.ack(f)?,
            }
        }
        Ok(wait)
    }

    pub(super) fn abort(&mut self, frame: &Frame) -> Result<(), StompError> {
        let tx = required(frame, "transaction")?;
        self.transactions
            .remove(tx)
            .map(drop)
            .ok_or_else(|| StompError::UnknownTransaction(tx.to_owned()))
    }
}
