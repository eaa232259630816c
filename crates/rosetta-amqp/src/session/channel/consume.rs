//! Consumers: `basic.qos`, `basic.consume` and `basic.cancel`, the cancel notification a queue
//! sends when it is deleted under a consumer, and how a consumer is named in the core.
//!
//! AMQP consumer tags are scoped to their channel, and the core knows nothing of channels: it
//! names a consumer with a tag the front-end chooses and hands that tag back, unread, with
//! every delivery and cancel notification. So the tag the channel gives the core is its own
//! number, `:`, then the client's tag ([`core_tag`]); the session reads the number back to find
//! the channel ([`channel_of`]), and the channel reads the client's tag back to find the
//! consumer and answer in the client's terms ([`client_tag`]).

use std::sync::Arc;

use amq_protocol::protocol::{basic, AMQPClass};
use amq_protocol::types::ShortString;
use rosetta_core::auth::Resource;
use rosetta_core::vhost::{is_direct_reply, DIRECT_REPLY_TO};
use rosetta_core::ConsumerSpec;

use super::{short_string, Channel};
use crate::convert::table_from_amqp;
use crate::session::{Ctx, Exception};

/// The tag the core knows the consumer `tag` of channel `channel` by.
pub(super) fn core_tag(channel: u16, tag: &str) -> String {
    format!("{channel}:{tag}")
}

/// The channel whose consumer the core knows by `core_tag`; 0, which is the connection's own
/// and never holds a consumer, for a tag no channel made.
pub(crate) fn channel_of(core_tag: &str) -> u16 {
    core_tag
        .split_once(':')
        .and_then(|(channel, _)| channel.parse().ok())
        .unwrap_or(0)
}

/// The client's consumer tag within the tag the core knows the consumer by.
pub(super) fn client_tag(core_tag: &str) -> &str {
    core_tag.split_once(':').map_or(core_tag, |(_, tag)| tag)
}

impl Channel {
    pub(super) fn qos(&mut self, ctx: &mut Ctx<'_>, q: basic::Qos) -> Result<(), Exception> {
        if q.global {
            self.shared_credit.set_limit(u32::from(q.prefetch_count));
            for (queue, _) in self.consumers.values() {
                queue.dispatch();
            }
        } else {
            self.prefetch = u32::from(q.prefetch_count);
        }
        ctx.send(
            self.id,
            AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        );
        Ok(())
    }

    pub(super) fn consume(
        &mut self,
        ctx: &mut Ctx<'_>,
        c: basic::Consume,
        method: &AMQPClass,
    ) -> Result<(), Exception> {
        let tag: Arc<str> = if c.consumer_tag.as_str().is_empty() {
            format!(
                "amq.ctag-{}-{}-{}",
                ctx.conn_id,
                self.id,
                self.next_tag + self.consumers.len() as u64
            )
            .into()
        } else {
            c.consumer_tag.as_str().into()
        };
        if self.consumers.contains_key(&tag) {
            return Err(Exception::not_allowed(
                method,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        // RabbitMQ's consumer_max_per_channel: 530, which closes the connection.
        let max = ctx.config.max_consumers_per_channel;
        if max != 0 && self.consumers.len() >= max as usize {
            return Err(Exception::not_allowed(
                method,
                format!("reached maximum ({max}) of consumers per channel"),
            ));
        }
        let spec = ConsumerSpec {
            tag: core_tag(self.id, &tag),
            connection: ctx.conn_id,
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            arguments: table_from_amqp(&c.arguments),
            prefetch: self.prefetch,
            shared_credit: Some(self.shared_credit.clone()),
        };
        let queue = self.queue_name(c.queue.as_str());
        let vhost = ctx.vhost()?.clone();
        let consumed = if queue == DIRECT_REPLY_TO {
            // One reply consumer per channel: the channel's requests name its address.
            if self.direct_reply_address().is_some() {
                return Err(Exception::precondition(
                    method,
                    "reply consumer already set",
                ));
            }
            vhost.consume_direct_reply(spec, ctx.outbox.clone())
        } else {
            ctx.permit(method, |g| g.read(Resource::Queue, &queue))?;
            vhost.consume(&queue, spec, ctx.outbox.clone())
        };
        let (q, consumer) = consumed.map_err(|e| Exception::from_core(&e, method))?;
        // consume-ok precedes the first delivery: deliveries travel through the outbox, which
        // the connection drains only after this output.
        if !c.nowait {
            ctx.send(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: short_string(&tag, "consumer tag", method)?,
                })),
            );
        }
        self.consumers.insert(tag, (q, consumer));
        Ok(())
    }

    /// The address of the channel's direct reply consumer, which replaces the pseudo-queue's
    /// name in the reply-to of the requests the channel publishes.
    pub(super) fn direct_reply_address(&self) -> Option<&str> {
        self.consumers
            .values()
            .find(|(q, _)| is_direct_reply(q))
            .map(|(q, _)| q.name.as_str())
    }

    pub(super) fn cancel(&mut self, ctx: &mut Ctx<'_>, c: basic::Cancel) -> Result<(), Exception> {
        let tag: Arc<str> = c.consumer_tag.as_str().into();
        if let Some((q, consumer)) = self.consumers.remove(&tag) {
            ctx.vhost()?.cancel(&q, &consumer);
        }
        if !c.nowait {
            ctx.send(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                    consumer_tag: c.consumer_tag,
                })),
            );
        }
        Ok(())
    }

    /// The queue was deleted under one of the channel's consumers: the client hears of it by
    /// a `basic.cancel` if it said it understands one (RabbitMQ's consumer cancel notification).
    pub(super) fn cancelled_by_queue(&mut self, ctx: &mut Ctx<'_>, consumer_tag: &str) {
        let consumer_tag = client_tag(consumer_tag);
        if self.consumers.remove(consumer_tag).is_some() && ctx.cancel_notify {
            // The tag came from this channel's basic.consume, so it fits.
            if let Ok(consumer_tag) = ShortString::try_new(consumer_tag) {
                let cancel = basic::Cancel {
                    consumer_tag,
                    nowait: true,
                };
                ctx.send(self.id, AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{channel_of, client_tag, core_tag};

    #[test]
    fn a_consumer_tag_given_to_the_core_names_its_channel_and_the_clients_tag() {
        let tag = core_tag(7, "amq.ctag:a:b");
        assert_eq!(channel_of(&tag), 7);
        assert_eq!(client_tag(&tag), "amq.ctag:a:b");
        let empty = core_tag(65535, "");
        assert_eq!((channel_of(&empty), client_tag(&empty)), (65535, ""));
    }

    #[test]
    fn a_tag_no_channel_made_names_no_channel() {
        assert_eq!(channel_of("c"), 0);
        assert_eq!(channel_of("x:c"), 0);
    }
}
