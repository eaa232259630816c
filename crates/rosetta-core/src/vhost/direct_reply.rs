//! Direct reply-to (RabbitMQ's `amq.rabbitmq.reply-to`): RPC replies that reach the
//! requesting consumer without a queue the client declares.
//!
//! A client consumes from the pseudo-queue [`DIRECT_REPLY_TO`] without acknowledgements; its
//! consumer gets an address `amq.rabbitmq.reply-to.<token>`, which the front-end writes into the
//! reply-to of the requests it publishes. A responder publishing to the default exchange with
//! that address as routing key reaches the consumer; once the consumer is gone the address
//! routes nowhere (the message is dropped, or returned when mandatory).
//!
//! Each address is backed by a private queue that is never in the virtual host's queue table:
//! nobody can declare, bind, purge or list it, it is never stored, and it goes with its
//! consumer. It holds replies only while the consumer's connection is slow to take them, so
//! the deliveries use the same credit and buffer budget as any other consumer's. The token
//! carries 128 random bits, so no other client can guess an address to send into it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::Engine as _;
use tokio::sync::mpsc::UnboundedSender;

use super::VHost;
use crate::consumer::{Consumer, ConsumerSpec, Outbound};
use crate::error::CoreError;
use crate::message::Table;
use crate::queue::{Queue, QueueParams};
use crate::queue_config::QueueConfig;
use crate::vhost::QueueDeclared;

/// The pseudo-queue a client consumes from to receive direct replies, and the reply-to a
/// request names to ask for one.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Whether `name` is a direct reply address (`amq.rabbitmq.reply-to.<token>`).
fn is_address(name: &str) -> bool {
    name.strip_prefix(DIRECT_REPLY_TO)
        .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.'))
}

/// 128 bits from the operating system's random generator, URL-safe so that the address is also
/// a valid STOMP destination and AMQP short string. Should the generator fail, std's randomly
/// keyed hasher (keys from the same source) still gives values no client can predict.
fn token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        use std::hash::{BuildHasher, Hasher};
        for chunk in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default(),
            );
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `queue` backs a direct reply address (its name is the address).
pub fn is_direct_reply(queue: &Queue) -> bool {
    is_address(&queue.name)
}

impl VHost {
    /// Starts a direct reply consumer; the returned queue's name is the address responders
    /// publish to. The consumer must not acknowledge: replies are not kept for redelivery
    /// (406, as RabbitMQ: "reply consumer cannot acknowledge").
    pub fn consume_direct_reply(
        &self,
        spec: ConsumerSpec,
        outbox: UnboundedSender<Outbound>,
    ) -> Result<(Arc<Queue>, Arc<Consumer>), CoreError> {
        if !spec.no_ack {
            return Err(CoreError::PreconditionFailed(
                "reply consumer cannot acknowledge".to_owned(),
            ));
        }
        let connection = spec.connection;
        let consumer = Consumer::new(spec, outbox, self.shared.limits.consumer_buffer_bytes)?;
        let params = QueueParams {
            name: format!("{DIRECT_REPLY_TO}.{}", token()),
            id: self.shared.next_queue_id.fetch_add(1, Ordering::Relaxed),
            durable: false,
            auto_delete: true,
            exclusive_owner: Some(connection),
            arguments: Table::new(),
            config: QueueConfig::default(),
            owner: None,
            limits: self.shared.limits.clone(),
            counters: self.shared.counters.clone(),
        };
        let queue = Queue::new(params, self.shared.store.clone(), self.me.clone());
        queue.add_consumer(consumer.clone())?;
        self.direct_replies
            .insert(queue.name.clone(), queue.clone());
        Ok((queue, consumer))
    }

    /// The queue behind the direct reply address `name`, while its consumer lasts.
    pub(super) fn direct_reply_queue(&self, name: &str) -> Option<Arc<Queue>> {
        if !is_address(name) {
            return None;
        }
        self.direct_replies.get(name).map(|q| q.clone())
    }

    /// Forgets the queue behind a direct reply address once its consumer left; false if
    /// `queue` is not one.
    pub(super) fn remove_direct_reply(&self, queue: &Arc<Queue>) -> bool {
        if self
            .direct_replies
            .remove_if(&queue.name, |_, q| Arc::ptr_eq(q, queue))
            .is_none()
        {
            return false;
        }
        queue.mark_deleted();
        true
    }

    /// A declare naming the pseudo-queue or an address, which clients use to check them:
    /// the pseudo-queue always exists (no messages, no consumers), an address while its
    /// consumer lasts (one consumer), as with RabbitMQ. `None` for any other name.
    pub(super) fn declare_direct_reply(
        &self,
        name: &str,
    ) -> Option<Result<QueueDeclared, CoreError>> {
        let consumers = if name == DIRECT_REPLY_TO {
            0
        } else if is_address(name) {
            if self.direct_reply_queue(name).is_none() {
                return Some(Err(self.not_found_queue(name)));
            }
            1
        } else {
            return None;
        };
        Some(Ok(QueueDeclared {
            name: name.to_owned(),
            message_count: 0,
            consumer_count: consumers,
            durable_at: None,
            created: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::{is_address, token, DIRECT_REPLY_TO};

    #[test]
    fn addresses_are_the_pseudo_queue_name_a_dot_and_a_token() {
        assert!(is_address("amq.rabbitmq.reply-to.abc"));
        assert!(!is_address(DIRECT_REPLY_TO));
        assert!(!is_address("amq.rabbitmq.reply-to."));
        assert!(!is_address("amq.rabbitmq.reply-tox"));
    }

    #[test]
    fn tokens_differ_and_fit_a_destination() {
        let (a, b) = (token(), token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }
}
