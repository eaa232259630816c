//! Deliveries: `basic.deliver` for consumers and `basic.get`, each message given the next
//! delivery tag; and what becomes of a message that AMQP cannot carry.

use std::sync::Arc;

use amq_protocol::protocol::{basic, AMQPClass};
use amq_protocol::types::ShortString;
use rosetta_core::front_end::ledger::{give_back, is_for};
use rosetta_core::{Delivery, Message, Queue, Settlement, Value};

use super::consume::client_tag;
use super::{clamp32, write_content, Channel};
use crate::session::{Ctx, Exception};

impl Channel {
    /// A queue hands one of the channel's consumers a message.
    pub(super) fn deliver(&mut self, ctx: &mut Ctx<'_>, d: Delivery) {
        let consumer_tag = client_tag(&d.consumer.tag);
        let live = is_for(&d, self.consumers.get(consumer_tag).map(|(_, c)| c));
        if self.closing || !live {
            give_back(&d);
            return;
        }
        let tag = self.next_tag;
        let written = addressing(&d.message).and_then(|(exchange, routing_key)| {
            let deliver = basic::Deliver {
                consumer_tag: ShortString::try_new(consumer_tag)
                    .map_err(|_| "consumer tag longer than 255 bytes".to_owned())?,
                delivery_tag: tag,
                redelivered: d.redelivered,
                exchange,
                routing_key,
            };
            write_content(
                ctx,
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver)),
                &d.message,
            )
        });
        if let Err(why) = written {
            refuse_delivery(ctx, &d.queue, d.seq, d.consumer.no_ack, &d.message, &why);
            if d.consumer.no_ack {
                ctx.auto_ack.written(&d.consumer, &d.queue);
            }
            return;
        }
        self.next_tag += 1;
        if d.consumer.no_ack {
            ctx.auto_ack.written(&d.consumer, &d.queue);
        } else {
            self.unacked.insert(tag, d.queue, d.seq, ());
        }
    }

    pub(super) fn get(
        &mut self,
        ctx: &mut Ctx<'_>,
        g: basic::Get,
        method: &AMQPClass,
    ) -> Result<(), Exception> {
        let vhost = ctx.vhost()?.clone();
        let name = self.queue_name(g.queue.as_str());
        // Each message AMQP cannot carry leaves the queue (rejected), so this ends.
        loop {
            let (q, got) = vhost
                .get(&name, ctx.conn_id, g.no_ack)
                .map_err(|e| Exception::from_core(&e, method))?;
            let Some(got) = got else {
                ctx.send(
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                );
                return Ok(());
            };
            let tag = self.next_tag;
            let written = addressing(&got.message).and_then(|(exchange, routing_key)| {
                let reply = basic::GetOk {
                    delivery_tag: tag,
                    redelivered: got.redelivered,
                    exchange,
                    routing_key,
                    message_count: clamp32(got.remaining),
                };
                write_content(
                    ctx,
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::GetOk(reply)),
                    &got.message,
                )
            });
            if let Err(why) = written {
                refuse_delivery(ctx, &q, got.seq, g.no_ack, &got.message, &why);
                continue;
            }
            self.next_tag += 1;
            if !g.no_ack {
                self.unacked.insert(tag, q, got.seq, ());
            }
            return Ok(());
        }
    }
}

/// The exchange and routing key of `message` as AMQP short strings. Other protocols refuse
/// longer ones at the source; this is the second line, for whatever route remains.
fn addressing(message: &Message) -> Result<(ShortString, ShortString), String> {
    let exchange = ShortString::try_new(message.exchange.as_str())
        .map_err(|_| format!("exchange name of {} bytes", message.exchange.len()))?;
    let routing_key = ShortString::try_new(message.routing_key.as_str())
        .map_err(|_| format!("routing key of {} bytes", message.routing_key.len()))?;
    Ok((exchange, routing_key))
}

/// Settles a delivery this connection cannot encode: rejected without requeue, so a queue with
/// a dead-letter exchange keeps it, and a consumer is never offered it again. A message that
/// was already rejected from this queue is dropped instead, so a dead-letter route leading
/// back here cannot bounce it between the queue and this connection forever.
fn refuse_delivery(
    ctx: &mut Ctx<'_>,
    queue: &Arc<Queue>,
    seq: u64,
    no_ack: bool,
    message: &Message,
    why: &str,
) {
    let seen = rejected_before(message, &queue.name);
    if std::mem::replace(ctx.undeliverable_reported, true) {
        tracing::debug!(queue = %queue.name, reason = why, "undeliverable over AMQP 0-9-1");
    } else {
        tracing::warn!(
            queue = %queue.name,
            reason = why,
            "a message cannot be carried by AMQP 0-9-1; rejected without requeue (further ones on this connection are logged at debug)"
        );
    }
    if !no_ack {
        if seen {
            queue.finish(&[seq]);
        } else {
            queue.settle(&[seq], Settlement::Reject);
        }
    }
}

/// Whether `message` carries an `x-death` entry for a rejection from `queue`.
fn rejected_before(message: &Message, queue: &str) -> bool {
    let Some(Value::Array(deaths)) = message
        .properties
        .headers
        .as_ref()
        .and_then(|h| h.get("x-death"))
    else {
        return false;
    };
    deaths.iter().any(|d| {
        matches!(d, Value::Table(t)
            if t.get("queue").and_then(Value::as_str) == Some(queue)
                && t.get("reason").and_then(Value::as_str) == Some("rejected"))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::{Bytes, BytesMut};
    use rosetta_core::front_end::ledger::AutoAck;
    use rosetta_core::front_end::AlarmPause;
    use rosetta_core::{
        Broker, ConsumerSpec, CoreLimits, Message, Outbound, Properties, QueueDeclare, Table,
    };
    use rosetta_store::SledStore;
    use tokio::sync::mpsc::unbounded_channel;

    use super::super::consume::core_tag;
    use super::Channel;
    use crate::session::{Ctx, SessionConfig};

    fn config() -> SessionConfig {
        SessionConfig {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 0,
            max_message_size: 1 << 20,
            max_consumers_per_channel: 0,
            max_transaction_frames: 0,
            max_transaction_bytes: 0,
        }
    }

    /// Another protocol's key no AMQP short string holds is refused by its front-end; should
    /// one still reach an AMQP consumer, the delivery is rejected and the channel carries on.
    #[test]
    fn a_delivery_with_a_routing_key_amqp_cannot_carry_is_rejected_and_the_next_one_flows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open(dir.path()).expect("store"));
        let broker = Broker::open(store, &["/".to_owned()], CoreLimits::default()).expect("broker");
        let vhost = broker.vhost("/").expect("vhost");
        let conn = broker.new_connection_id();
        vhost
            .declare_queue(
                QueueDeclare {
                    name: "q".into(),
                    passive: false,
                    durable: false,
                    exclusive: false,
                    auto_delete: false,
                    arguments: Table::new(),
                },
                conn,
            )
            .expect("declare");
        let (outbox, mut deliveries) = unbounded_channel();
        let spec = ConsumerSpec {
            tag: core_tag(1, "c"),
            connection: conn,
            no_ack: false,
            exclusive: false,
            arguments: Table::new(),
            prefetch: 0,
            shared_credit: None,
        };
        let (queue, consumer) = vhost.consume("q", spec, outbox.clone()).expect("consume");
        let mut channel = Channel::new(1, vhost.clone());
        channel
            .consumers
            .insert("c".into(), (queue.clone(), consumer));

        let config = config();
        let mut out = BytesMut::new();
        let (mut alarm, mut auto_ack, mut reported) =
            (AlarmPause::default(), AutoAck::default(), false);
        let mut ctx = Ctx {
            broker: &broker,
            vhost: Some(&vhost),
            conn_id: conn,
            frame_max: config.frame_max,
            config: &config,
            cancel_notify: false,
            outbox: &outbox,
            out: &mut out,
            alarm: &mut alarm,
            auto_ack: &mut auto_ack,
            undeliverable_reported: &mut reported,
        };
        let message = |body: &'static str| {
            Message::new(
                "",
                "q",
                Properties::default(),
                Bytes::from_static(body.as_bytes()),
            )
        };
        let mut next = || match deliveries.try_recv() {
            Ok(Outbound::Deliver(d)) => d,
            other => panic!("expected a delivery, got {other:?}"),
        };

        vhost.publish(message("long")).expect("publish");
        let mut long = next();
        let mut altered = (*long.message).clone();
        altered.routing_key = "k".repeat(300);
        long.message = Arc::new(altered);
        channel.handle_outbound(&mut ctx, Outbound::Deliver(long));
        assert!(
            ctx.out.is_empty(),
            "nothing written for the undeliverable message"
        );
        assert!(*ctx.undeliverable_reported);
        assert!(channel.unacked.is_empty());
        let stats = queue.stats();
        assert_eq!(
            (stats.ready, stats.unacked),
            (0, 0),
            "rejected, not requeued"
        );

        vhost.publish(message("fine")).expect("publish");
        channel.handle_outbound(&mut ctx, Outbound::Deliver(next()));
        assert!(!ctx.out.is_empty(), "the next delivery is written");
        assert_eq!(channel.unacked.len(), 1);
        channel.close();
    }
}
