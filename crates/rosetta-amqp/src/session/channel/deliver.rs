//! Deliveries: `basic.deliver` for consumers and `basic.get`, each message given the next
//! delivery tag; and what becomes of a message that AMQP cannot carry.

use std::sync::Arc;

use amq_protocol::protocol::{basic, AMQPClass};
use rosetta_core::auth::Resource;
use rosetta_core::front_end::ledger::{give_back, is_for};
use rosetta_core::{Delivery, Message, Queue, Settlement, Value};

use super::consume::client_tag;
use super::{clamp32, Channel};
use crate::codec::{self, ServerContent};
use crate::convert::put_properties;
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
            let deliver = ServerContent::Deliver {
                consumer_tag,
                delivery_tag: tag,
                redelivered: d.redelivered,
                exchange,
                routing_key,
            };
            write_delivery(ctx, self.id, deliver, &d.message)
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
        ctx.permit(method, |g| g.read(Resource::Queue, &name))?;
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
                let reply = ServerContent::GetOk {
                    delivery_tag: tag,
                    redelivered: got.redelivered,
                    exchange,
                    routing_key,
                    message_count: clamp32(got.remaining),
                };
                write_delivery(ctx, self.id, reply, &got.message)
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

/// The exchange and routing key of `message`, if AMQP short strings hold them. Other
/// protocols refuse longer ones at the source; this is the second line, for whatever route
/// remains.
fn addressing(message: &Message) -> Result<(&str, &str), String> {
    let fits = |s: &str| s.len() <= usize::from(u8::MAX);
    if !fits(&message.exchange) {
        return Err(format!("exchange name of {} bytes", message.exchange.len()));
    }
    if !fits(&message.routing_key) {
        return Err(format!(
            "routing key of {} bytes",
            message.routing_key.len()
        ));
    }
    Ok((&message.exchange, &message.routing_key))
}

/// Writes a delivery (`basic.deliver` or `basic.get-ok`) with the message's header and body,
/// from the message's own fields: once per message, so nothing is copied on the way. On
/// failure nothing is written and the error says why, for the log.
fn write_delivery(
    ctx: &mut Ctx<'_>,
    channel: u16,
    method: ServerContent<'_>,
    message: &Message,
) -> Result<(), String> {
    codec::encode_server_content(
        channel,
        method,
        |out| put_properties(&message.properties, out),
        &message.body,
        ctx.frame_max,
        ctx.out,
    )
    .map_err(|e| e.to_string())
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
        Broker, ConsumerSpec, CoreLimits, Delivery, Message, Outbound, Properties, Queue,
        QueueDeclare, Settlement, Table, VHost,
    };
    use rosetta_store::SledStore;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

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

    type Deliveries = UnboundedReceiver<Outbound>;

    /// Runs `test` with channel 1 holding the acknowledging consumer "c" on queue "q" of a
    /// fresh broker, and the context a connection would hand it; the consumer's deliveries
    /// arrive on the receiver.
    fn with_consumer(
        test: impl FnOnce(&mut Channel, &mut Ctx<'_>, &VHost, &Arc<Queue>, &mut Deliveries),
    ) {
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
            grant: None,
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
        test(&mut channel, &mut ctx, &vhost, &queue, &mut deliveries);
        channel.close();
    }

    fn message(body: &'static str) -> Message {
        Message::new(
            "",
            "q",
            Properties::default(),
            Bytes::from_static(body.as_bytes()),
        )
    }

    fn next(deliveries: &mut Deliveries) -> Delivery {
        match deliveries.try_recv() {
            Ok(Outbound::Deliver(d)) => d,
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    /// Another protocol's key no AMQP short string holds is refused by its front-end; should
    /// one still reach an AMQP consumer, the delivery is rejected and the channel carries on.
    #[test]
    fn a_delivery_with_a_routing_key_amqp_cannot_carry_is_rejected_and_the_next_one_flows() {
        with_consumer(|channel, ctx, vhost, queue, deliveries| {
            vhost.publish(message("long")).expect("publish");
            let mut long = next(deliveries);
            let mut altered = (*long.message).clone();
            altered.routing_key = "k".repeat(300);
            long.message = Arc::new(altered);
            channel.handle_outbound(ctx, Outbound::Deliver(long));
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
            channel.handle_outbound(ctx, Outbound::Deliver(next(deliveries)));
            assert!(!ctx.out.is_empty(), "the next delivery is written");
            assert_eq!(channel.unacked.len(), 1);
        });
    }

    /// `basic.deliver` is written straight from the message into the connection's output
    /// buffer: once the buffer and the unacked ledger have their room, a delivery allocates
    /// nothing.
    #[test]
    fn a_delivery_allocates_nothing_once_the_buffers_are_warm() {
        const MESSAGES: u64 = 1_000;
        with_consumer(|channel, ctx, vhost, queue, deliveries| {
            let deliver = |channel: &mut Channel, ctx: &mut Ctx<'_>, d: Delivery| {
                let seq = d.seq;
                channel.handle_outbound(ctx, Outbound::Deliver(d));
                seq
            };
            let mut allocations = 0;
            for i in 0..2 * MESSAGES {
                vhost.publish(message("sixteen-byte-msg")).expect("publish");
                let d = next(deliveries);
                let seq = if i < MESSAGES {
                    deliver(channel, ctx, d)
                } else {
                    let mut seq = 0;
                    let used = allocation_counter::measure(|| seq = deliver(channel, ctx, d));
                    allocations += used.count_total;
                    seq
                };
                assert!(!ctx.out.is_empty(), "delivery {i} written");
                // What the connection does once the output is on the socket, and the client's ack.
                ctx.out.clear();
                let tag = channel.next_tag - 1;
                assert!(channel.unacked.settle(tag, Settlement::Ack));
                assert_eq!(queue.stats().unacked, 0, "delivery {i} (seq {seq}) acked");
            }
            assert_eq!(allocations, 0, "allocations in {MESSAGES} deliveries");
        });
    }
}
