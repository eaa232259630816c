//! One AMQP channel: the exchange, queue, basic, confirm and tx classes turned into core calls,
//! and core deliveries turned into `basic.deliver`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{
    access, basic, channel as chan, confirm, exchange, queue, tx, AMQPClass,
};
use amq_protocol::types::ShortString;
use bytes::BytesMut;
use rosetta_core::store::Epoch;
use rosetta_core::{
    Consumer, ConsumerSpec, Credit, Destination, ExchangeDeclare, Message, Outbound, Queue,
    QueueDeclare, Settlement, VHost, Value,
};

use super::content::{Complete, Incoming, Progress};
use super::held::HeldOutput;
use super::{Ctx, Exception};
use crate::codec;
use crate::convert::{properties_from_amqp, properties_to_amqp, table_from_amqp};

/// An unacknowledged delivery, by delivery tag.
struct Pending {
    queue: Arc<Queue>,
    seq: u64,
}

/// Publisher confirms (RabbitMQ extension): each publish gets a sequence number, confirmed in
/// order once the store has made it durable.
#[derive(Default)]
struct Confirms {
    next: u64,
    /// (sequence number, epoch to wait for, nack)
    pending: VecDeque<(u64, Epoch, bool)>,
}

/// Work held back until `tx.commit` (AMQP 0-9-1 class tx).
#[derive(Default)]
struct Tx {
    publishes: Vec<Complete>,
    settles: Vec<(u64, bool, Settlement)>,
    /// Body bytes of the held publishes, announced ones included.
    bytes: u64,
}

impl Tx {
    fn frames(&self) -> usize {
        self.publishes.len() + self.settles.len()
    }
}

pub(super) struct Channel {
    id: u16,
    vhost: Arc<VHost>,
    closing: bool,
    incoming: Option<Incoming>,
    next_tag: u64,
    unacked: BTreeMap<u64, Pending>,
    consumers: HashMap<Arc<str>, (Arc<Queue>, Arc<Consumer>)>,
    /// `basic.qos` global=false: the window of consumers created afterwards.
    prefetch: u32,
    /// `basic.qos` global=true: one window shared by the channel's consumers.
    shared_credit: Arc<Credit>,
    confirms: Option<Confirms>,
    tx: Option<Tx>,
    /// The queue named by the last declare, for methods that leave the queue name empty.
    last_queue: String,
    flow_active: bool,
    paused: VecDeque<Outbound>,
    /// Replies waiting for the store's durable point, and what the channel wrote after them.
    held: HeldOutput,
    /// The client closed the channel while replies were held: its `close-ok` waits behind them,
    /// and the channel goes once they are out.
    closed_by_peer: bool,
}

impl Channel {
    pub fn new(id: u16, vhost: Arc<VHost>) -> Self {
        Channel {
            id,
            vhost,
            closing: false,
            incoming: None,
            next_tag: 1,
            unacked: BTreeMap::new(),
            consumers: HashMap::new(),
            prefetch: 0,
            shared_credit: Credit::new(0),
            confirms: None,
            tx: None,
            last_queue: String::new(),
            flow_active: true,
            paused: VecDeque::new(),
            held: HeldOutput::default(),
            closed_by_peer: false,
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Whether a confirm or a held reply waits for the store's durable point.
    pub fn has_pending_durability(&self) -> bool {
        !self.held.is_empty()
            || self
                .confirms
                .as_ref()
                .is_some_and(|c| !c.pending.is_empty())
    }

    /// Before the channel writes to the session's output: see [`HeldOutput::begin`].
    pub fn begin_output(&mut self, out: &BytesMut) {
        self.held.begin(out);
    }

    /// After the channel wrote to the session's output: see [`HeldOutput::end`].
    pub fn end_output(&mut self, out: &mut BytesMut) {
        self.held.end(out);
    }

    /// Writes to `out` the held output whose epoch is now durable.
    pub fn release_held(&mut self, out: &mut BytesMut, durable: Epoch) {
        self.held.release(out, durable);
    }

    /// The client closed the channel; a channel with held replies lingers until they are out.
    pub fn close_by_peer(&mut self) {
        self.close();
        self.closed_by_peer = true;
    }

    /// A channel the client closed whose last held reply (its `close-ok`) has gone out.
    pub fn is_finished(&self) -> bool {
        self.closed_by_peer && self.held.is_empty()
    }

    /// Sends `method` now, or once the store's durable point reaches `epoch` when the method
    /// promises a durable change; either way after everything the channel sent before it.
    fn send_when_durable(&mut self, ctx: &mut Ctx<'_>, method: AMQPClass, epoch: Option<Epoch>) {
        let durable = ctx.broker.store().durable_epoch();
        match epoch {
            Some(epoch) if !self.held.passes(Some(epoch), durable) => {
                let mut frames = BytesMut::new();
                codec::encode_frame(&AMQPFrame::Method(self.id, method), &mut frames);
                self.held.hold(ctx.out, epoch, frames);
            }
            // Nothing to wait for of its own: it goes to the output, which `end_output` moves
            // behind anything already held.
            _ => ctx.send(self.id, method),
        }
    }

    /// Ends the channel: consumers stop, unacked messages go back to their queues in their
    /// original order with the redelivered flag (AMQP 0-9-1 basic.recover semantics).
    pub fn close(&mut self) {
        self.closing = true;
        self.incoming = None;
        self.tx = None;
        self.confirms = None;
        for (_, (q, c)) in self.consumers.drain() {
            self.vhost.cancel(&q, &c);
        }
        self.requeue_all();
        for item in self.paused.drain(..) {
            if let Outbound::Deliver(d) = item {
                if !d.consumer.no_ack {
                    d.queue.requeue(&[d.seq]);
                }
            }
        }
    }

    fn requeue_all(&mut self) {
        let all: Vec<(u64, Pending)> = std::mem::take(&mut self.unacked).into_iter().collect();
        for (queue, seqs) in group_by_queue(all.into_iter().map(|(_, p)| p)) {
            queue.requeue(&seqs);
        }
    }

    fn queue_name(&self, name: &str) -> String {
        if name.is_empty() {
            self.last_queue.clone()
        } else {
            name.to_owned()
        }
    }

    pub fn handle_channel_method(
        &mut self,
        ctx: &mut Ctx<'_>,
        method: chan::AMQPMethod,
    ) -> Result<(), Exception> {
        match method {
            chan::AMQPMethod::Flow(f) => {
                self.flow_active = f.active;
                ctx.send(
                    self.id,
                    AMQPClass::Channel(chan::AMQPMethod::FlowOk(chan::FlowOk { active: f.active })),
                );
                if f.active {
                    for item in std::mem::take(&mut self.paused) {
                        self.handle_outbound(ctx, item);
                    }
                }
                Ok(())
            }
            chan::AMQPMethod::FlowOk(_) => Ok(()),
            other => Err(Exception::command_invalid(
                &AMQPClass::Channel(other),
                "unexpected channel method",
            )),
        }
    }

    pub fn handle_method(&mut self, ctx: &mut Ctx<'_>, method: AMQPClass) -> Result<(), Exception> {
        if self.incoming.is_some() {
            return Err(Exception::unexpected_frame(
                "method frame while content was expected",
            ));
        }
        match method {
            AMQPClass::Exchange(m) => self.exchange_method(ctx, m),
            AMQPClass::Queue(m) => self.queue_method(ctx, m),
            AMQPClass::Basic(m) => self.basic_method(ctx, m),
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                let method = AMQPClass::Confirm(confirm::AMQPMethod::Select(s.clone()));
                if self.tx.is_some() {
                    return Err(Exception::precondition(
                        &method,
                        "cannot switch from tx to confirm mode",
                    ));
                }
                self.confirms.get_or_insert_with(|| Confirms {
                    next: 1,
                    pending: VecDeque::new(),
                });
                if !s.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Tx(m) => self.tx_method(ctx, m),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                // Deprecated in 0-9-1 but still sent by old clients; RabbitMQ grants it.
                ctx.send(
                    self.id,
                    AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
                Ok(())
            }
            other => Err(Exception::command_invalid(
                &other,
                "method not valid from a client",
            )),
        }
    }

    fn exchange_method(
        &mut self,
        ctx: &mut Ctx<'_>,
        m: exchange::AMQPMethod,
    ) -> Result<(), Exception> {
        let method = AMQPClass::Exchange(m.clone());
        let vhost = ctx.vhost()?.clone();
        let core = |e: rosetta_core::CoreError| Exception::from_core(&e, &method);
        match m {
            exchange::AMQPMethod::Declare(d) => {
                let durable_at = vhost
                    .declare_exchange(ExchangeDeclare {
                        name: d.exchange.to_string(),
                        kind: d.kind.to_string(),
                        passive: d.passive,
                        durable: d.durable,
                        auto_delete: d.auto_delete,
                        internal: d.internal,
                        arguments: table_from_amqp(&d.arguments),
                    })
                    .map_err(core)?;
                if !d.nowait {
                    self.send_when_durable(
                        ctx,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                            exchange::DeclareOk {},
                        )),
                        durable_at,
                    );
                }
            }
            exchange::AMQPMethod::Delete(d) => {
                let durable_at = vhost
                    .delete_exchange(d.exchange.as_str(), d.if_unused)
                    .map_err(core)?;
                if !d.nowait {
                    self.send_when_durable(
                        ctx,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                        durable_at,
                    );
                }
            }
            exchange::AMQPMethod::Bind(b) => {
                let dest = Destination::Exchange(b.destination.to_string());
                let durable_at = vhost
                    .bind_deferred(
                        b.source.as_str(),
                        dest,
                        b.routing_key.as_str(),
                        table_from_amqp(&b.arguments),
                        ctx.conn_id,
                    )
                    .map_err(core)?;
                if !b.nowait {
                    self.send_when_durable(
                        ctx,
                        AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                        durable_at,
                    );
                }
            }
            exchange::AMQPMethod::Unbind(b) => {
                let dest = Destination::Exchange(b.destination.to_string());
                let durable_at = vhost
                    .unbind_deferred(
                        b.source.as_str(),
                        dest,
                        b.routing_key.as_str(),
                        &table_from_amqp(&b.arguments),
                        ctx.conn_id,
                    )
                    .map_err(core)?;
                if !b.nowait {
                    self.send_when_durable(
                        ctx,
                        AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
                        durable_at,
                    );
                }
            }
            other => {
                return Err(Exception::command_invalid(
                    &AMQPClass::Exchange(other),
                    "method not valid from a client",
                ))
            }
        }
        Ok(())
    }

    fn queue_method(&mut self, ctx: &mut Ctx<'_>, m: queue::AMQPMethod) -> Result<(), Exception> {
        let method = AMQPClass::Queue(m.clone());
        let vhost = ctx.vhost()?.clone();
        let core = |e: rosetta_core::CoreError| Exception::from_core(&e, &method);
        match m {
            queue::AMQPMethod::Declare(d) => {
                let declared = vhost
                    .declare_queue(
                        QueueDeclare {
                            name: d.queue.to_string(),
                            passive: d.passive,
                            durable: d.durable,
                            exclusive: d.exclusive,
                            auto_delete: d.auto_delete,
                            arguments: table_from_amqp(&d.arguments),
                        },
                        ctx.conn_id,
                    )
                    .map_err(core)?;
                self.last_queue = declared.name.clone();
                if !d.nowait {
                    let reply = queue::DeclareOk {
                        queue: short_string(&declared.name, "queue name", &method)?,
                        message_count: clamp32(declared.message_count),
                        consumer_count: clamp32(declared.consumer_count),
                    };
                    self.send_when_durable(
                        ctx,
                        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(reply)),
                        declared.durable_at,
                    );
                }
            }
            queue::AMQPMethod::Bind(b) => {
                let dest = Destination::Queue(self.queue_name(b.queue.as_str()));
                let durable_at = vhost
                    .bind_deferred(
                        b.exchange.as_str(),
                        dest,
                        b.routing_key.as_str(),
                        table_from_amqp(&b.arguments),
                        ctx.conn_id,
                    )
                    .map_err(core)?;
                if !b.nowait {
                    self.send_when_durable(
                        ctx,
                        AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                        durable_at,
                    );
                }
            }
            queue::AMQPMethod::Unbind(b) => {
                let dest = Destination::Queue(self.queue_name(b.queue.as_str()));
                let durable_at = vhost
                    .unbind_deferred(
                        b.exchange.as_str(),
                        dest,
                        b.routing_key.as_str(),
                        &table_from_amqp(&b.arguments),
                        ctx.conn_id,
                    )
                    .map_err(core)?;
                self.send_when_durable(
                    ctx,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                    durable_at,
                );
            }
            queue::AMQPMethod::Purge(p) => {
                let count = vhost
                    .purge_queue(&self.queue_name(p.queue.as_str()), ctx.conn_id)
                    .map_err(core)?;
                if !p.nowait {
                    let reply = queue::PurgeOk {
                        message_count: clamp32(count),
                    };
                    ctx.send(self.id, AMQPClass::Queue(queue::AMQPMethod::PurgeOk(reply)));
                }
            }
            queue::AMQPMethod::Delete(d) => {
                let name = self.queue_name(d.queue.as_str());
                let deleted = vhost
                    .delete_queue(&name, d.if_unused, d.if_empty, ctx.conn_id)
                    .map_err(core)?;
                if !d.nowait {
                    let reply = queue::DeleteOk {
                        message_count: clamp32(deleted.messages),
                    };
                    self.send_when_durable(
                        ctx,
                        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(reply)),
                        deleted.durable_at,
                    );
                }
            }
            other => {
                return Err(Exception::command_invalid(
                    &AMQPClass::Queue(other),
                    "method not valid from a client",
                ))
            }
        }
        Ok(())
    }

    fn basic_method(&mut self, ctx: &mut Ctx<'_>, m: basic::AMQPMethod) -> Result<(), Exception> {
        let method = AMQPClass::Basic(m.clone());
        match m {
            basic::AMQPMethod::Publish(p) => {
                if p.immediate {
                    // RabbitMQ dropped `immediate` in 3.0; refusing it beats silently ignoring it.
                    return Err(Exception::not_implemented(&method, "immediate=true"));
                }
                self.incoming = Some(Incoming::new(p));
                *ctx.published = true;
                Ok(())
            }
            basic::AMQPMethod::Qos(q) => {
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
            basic::AMQPMethod::Consume(c) => self.consume(ctx, c, &method),
            basic::AMQPMethod::Cancel(c) => {
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
            basic::AMQPMethod::Get(g) => self.get(ctx, g, &method),
            basic::AMQPMethod::Ack(a) => {
                self.settle_or_defer(ctx, a.delivery_tag, a.multiple, Settlement::Ack, &method)
            }
            basic::AMQPMethod::Reject(r) => {
                let kind = if r.requeue {
                    Settlement::Requeue
                } else {
                    Settlement::Reject
                };
                self.settle_or_defer(ctx, r.delivery_tag, false, kind, &method)
            }
            basic::AMQPMethod::Nack(n) => {
                let kind = if n.requeue {
                    Settlement::Requeue
                } else {
                    Settlement::Reject
                };
                self.settle_or_defer(ctx, n.delivery_tag, n.multiple, kind, &method)
            }
            basic::AMQPMethod::Recover(_) | basic::AMQPMethod::RecoverAsync(_) => {
                // RabbitMQ requeues on recover whatever `requeue` says; redelivering to the same
                // consumer is not something it (or we) support.
                self.requeue_all();
                if matches!(method, AMQPClass::Basic(basic::AMQPMethod::Recover(_))) {
                    ctx.send(
                        self.id,
                        AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                    );
                }
                Ok(())
            }
            _ => Err(Exception::command_invalid(
                &method,
                "method not valid from a client",
            )),
        }
    }

    fn consume(
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
            tag: tag.to_string(),
            channel: self.id,
            connection: ctx.conn_id,
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            arguments: table_from_amqp(&c.arguments),
            prefetch: self.prefetch,
            shared_credit: Some(self.shared_credit.clone()),
        };
        let queue = self.queue_name(c.queue.as_str());
        let vhost = ctx.vhost()?.clone();
        let (q, consumer) = vhost
            .consume(&queue, spec, ctx.outbox.clone())
            .map_err(|e| Exception::from_core(&e, method))?;
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

    fn get(
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
                self.unacked.insert(
                    tag,
                    Pending {
                        queue: q,
                        seq: got.seq,
                    },
                );
            }
            let counters = ctx.broker.counters();
            counters.delivered.fetch_add(1, Ordering::Relaxed);
            if got.redelivered {
                counters.redelivered.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(());
        }
    }

    fn settle_or_defer(
        &mut self,
        ctx: &mut Ctx<'_>,
        tag: u64,
        multiple: bool,
        kind: Settlement,
        method: &AMQPClass,
    ) -> Result<(), Exception> {
        if let Some(tx) = &mut self.tx {
            if !multiple && !self.unacked.contains_key(&tag) {
                return Err(Exception::precondition(
                    method,
                    format!("unknown delivery tag {tag}"),
                ));
            }
            check_tx_frames(tx, ctx.config.max_transaction_frames, method)?;
            tx.settles.push((tag, multiple, kind));
            return Ok(());
        }
        self.settle(ctx, tag, multiple, kind, method)
    }

    fn settle(
        &mut self,
        ctx: &mut Ctx<'_>,
        tag: u64,
        multiple: bool,
        kind: Settlement,
        method: &AMQPClass,
    ) -> Result<(), Exception> {
        let taken: Vec<Pending> = if multiple {
            // AMQP 0-9-1 basic.ack: multiple with tag 0 means every outstanding delivery.
            let upto = if tag == 0 { u64::MAX } else { tag };
            let keep = self.unacked.split_off(&upto.saturating_add(1));
            let taken = std::mem::replace(&mut self.unacked, keep);
            if taken.is_empty() && tag != 0 {
                return Err(Exception::precondition(
                    method,
                    format!("unknown delivery tag {tag}"),
                ));
            }
            taken.into_values().collect()
        } else {
            match self.unacked.remove(&tag) {
                Some(p) => vec![p],
                None => {
                    return Err(Exception::precondition(
                        method,
                        format!("unknown delivery tag {tag}"),
                    ))
                }
            }
        };
        if kind == Settlement::Ack {
            ctx.broker
                .counters()
                .acked
                .fetch_add(taken.len() as u64, Ordering::Relaxed);
        }
        for (queue, seqs) in group_by_queue(taken.into_iter()) {
            queue.settle(&seqs, kind);
        }
        // A channel-wide window freed by this settle may unblock consumers on other queues.
        if self.shared_credit.limit() > 0 {
            for (queue, _) in self.consumers.values() {
                queue.dispatch();
            }
        }
        Ok(())
    }

    fn tx_method(&mut self, ctx: &mut Ctx<'_>, m: tx::AMQPMethod) -> Result<(), Exception> {
        let method = AMQPClass::Tx(m.clone());
        match m {
            tx::AMQPMethod::Select(_) => {
                if self.confirms.is_some() {
                    return Err(Exception::precondition(
                        &method,
                        "cannot switch from confirm to tx mode",
                    ));
                }
                self.tx.get_or_insert_with(Tx::default);
                ctx.send(
                    self.id,
                    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                );
            }
            tx::AMQPMethod::Commit(_) => {
                let Some(tx) = self.tx.take() else {
                    return Err(Exception::precondition(
                        &method,
                        "channel is not transactional",
                    ));
                };
                self.tx = Some(Tx::default());
                let mut durable_at = None;
                for complete in tx.publishes {
                    durable_at = durable_at.max(self.route(ctx, complete)?);
                }
                for (tag, multiple, kind) in tx.settles {
                    self.settle(ctx, tag, multiple, kind, &method)?;
                }
                // tx.commit-ok promises the publishes are safe (AMQP 0-9-1 class tx), so it
                // waits for their writes' fsync, which publishing already asked for.
                self.send_when_durable(
                    ctx,
                    AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                    durable_at,
                );
            }
            tx::AMQPMethod::Rollback(_) => {
                if self.tx.is_none() {
                    return Err(Exception::precondition(
                        &method,
                        "channel is not transactional",
                    ));
                }
                self.tx = Some(Tx::default());
                ctx.send(
                    self.id,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
            }
            other => {
                return Err(Exception::command_invalid(
                    &AMQPClass::Tx(other),
                    "method not valid from a client",
                ))
            }
        }
        Ok(())
    }

    pub fn handle_header(
        &mut self,
        ctx: &mut Ctx<'_>,
        header: AMQPContentHeader,
    ) -> Result<(), Exception> {
        let Some(incoming) = self.incoming.take() else {
            return Err(Exception::unexpected_frame(
                "content header without basic.publish",
            ));
        };
        if let Some(tx) = &mut self.tx {
            // Checked from the header, before any body byte is buffered for the transaction.
            let method = AMQPClass::Basic(basic::AMQPMethod::Publish(incoming.publish.clone()));
            check_tx_frames(tx, ctx.config.max_transaction_frames, &method)?;
            let max = ctx.config.max_transaction_bytes;
            let bytes = tx.bytes.saturating_add(header.body_size);
            if max != 0 && bytes > max {
                return Err(Exception::precondition(
                    &method,
                    format!(
                        "transaction would hold {bytes} body bytes, more than the limit of {max}"
                    ),
                ));
            }
            tx.bytes = bytes;
        }
        let progress = incoming.header(header, ctx.config.max_message_size)?;
        self.advance(ctx, progress)
    }

    pub fn handle_body(&mut self, ctx: &mut Ctx<'_>, body: Vec<u8>) -> Result<(), Exception> {
        let Some(incoming) = self.incoming.take() else {
            return Err(Exception::unexpected_frame(
                "content body without basic.publish",
            ));
        };
        let progress = incoming.body(&body)?;
        self.advance(ctx, progress)
    }

    fn advance(&mut self, ctx: &mut Ctx<'_>, progress: Progress) -> Result<(), Exception> {
        match progress {
            Progress::More(incoming) => {
                self.incoming = Some(incoming);
                Ok(())
            }
            Progress::Done(complete) => {
                if let Some(tx) = &mut self.tx {
                    tx.publishes.push(complete);
                    return Ok(());
                }
                self.route(ctx, complete).map(drop)
            }
        }
    }

    /// Hands a complete message to the core; returns the store epoch if it was written durably.
    fn route(&mut self, ctx: &mut Ctx<'_>, complete: Complete) -> Result<Option<Epoch>, Exception> {
        let Complete {
            publish,
            properties,
            body,
        } = complete;
        let method = AMQPClass::Basic(basic::AMQPMethod::Publish(publish.clone()));
        let message = Message::new(
            publish.exchange.as_str(),
            publish.routing_key.as_str(),
            properties_from_amqp(properties),
            body,
        );
        let returned = publish.mandatory.then(|| message.clone());
        let vhost = ctx.vhost()?.clone();
        let outcome = vhost
            .publish(message)
            .map_err(|e| Exception::from_core(&e, &method))?;
        let counters = ctx.broker.counters();
        counters.published.fetch_add(1, Ordering::Relaxed);
        if !outcome.routed {
            counters.unroutable.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = returned {
                let reply = basic::Return {
                    reply_code: 312,
                    reply_text: "NO_ROUTE".into(),
                    exchange: publish.exchange.clone(),
                    routing_key: publish.routing_key.clone(),
                };
                let returned = write_content(
                    ctx,
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::Return(reply)),
                    &m,
                );
                if let Err(why) = returned {
                    tracing::warn!(reason = %why, "unroutable message cannot be returned; dropped");
                }
            }
        }
        if let Some(confirms) = &mut self.confirms {
            // The confirm follows any basic.return, since both go out in order.
            confirms.pending.push_back((
                confirms.next,
                outcome.epoch.unwrap_or(0),
                outcome.rejected,
            ));
            confirms.next += 1;
        }
        Ok(outcome.epoch)
    }

    /// Sends, in order, the confirms whose writes are durable, coalescing runs of acks into one
    /// `multiple` ack.
    pub fn release_confirms(&mut self, ctx: &mut Ctx<'_>, durable: Epoch) {
        let Some(confirms) = &mut self.confirms else {
            return;
        };
        let mut run: Option<(u64, usize)> = None;
        let id = self.id;
        let flush = |ctx: &mut Ctx<'_>, run: &mut Option<(u64, usize)>| {
            if let Some((tag, n)) = run.take() {
                let ack = basic::Ack {
                    delivery_tag: tag,
                    multiple: n > 1,
                };
                ctx.send(id, AMQPClass::Basic(basic::AMQPMethod::Ack(ack)));
            }
        };
        while let Some(&(tag, epoch, nack)) = confirms.pending.front() {
            if epoch > durable {
                break;
            }
            confirms.pending.pop_front();
            if nack {
                flush(ctx, &mut run);
                let nack = basic::Nack {
                    delivery_tag: tag,
                    multiple: false,
                    requeue: false,
                };
                ctx.send(id, AMQPClass::Basic(basic::AMQPMethod::Nack(nack)));
            } else {
                run = Some((tag, run.map_or(1, |(_, n)| n + 1)));
            }
        }
        flush(ctx, &mut run);
    }

    pub fn handle_outbound(&mut self, ctx: &mut Ctx<'_>, item: Outbound) {
        if !self.flow_active {
            self.paused.push_back(item);
            return;
        }
        match item {
            Outbound::Deliver(d) => {
                let live = self
                    .consumers
                    .get(&d.consumer.tag)
                    .is_some_and(|(_, c)| Arc::ptr_eq(c, &d.consumer));
                if self.closing || !live {
                    if !d.consumer.no_ack {
                        d.queue.requeue(&[d.seq]);
                    }
                    return;
                }
                let tag = self.next_tag;
                let written = addressing(&d.message).and_then(|(exchange, routing_key)| {
                    let deliver = basic::Deliver {
                        consumer_tag: ShortString::try_new(d.consumer.tag.as_ref())
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
                        release_auto_ack(ctx, &d.consumer, &d.queue);
                    }
                    return;
                }
                self.next_tag += 1;
                if d.consumer.no_ack {
                    release_auto_ack(ctx, &d.consumer, &d.queue);
                } else {
                    self.unacked.insert(
                        tag,
                        Pending {
                            queue: d.queue.clone(),
                            seq: d.seq,
                        },
                    );
                }
                let counters = ctx.broker.counters();
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                if d.redelivered {
                    counters.redelivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Outbound::Cancelled { consumer_tag, .. } => {
                if self.consumers.remove(&consumer_tag).is_some() && ctx.cancel_notify {
                    // The tag came from this channel's basic.consume, so it fits.
                    if let Ok(consumer_tag) = ShortString::try_new(consumer_tag.as_ref()) {
                        let cancel = basic::Cancel {
                            consumer_tag,
                            nowait: true,
                        };
                        ctx.send(self.id, AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)));
                    }
                }
            }
            // Handled by the session before it reaches a channel.
            Outbound::Close(_) => {}
        }
    }
}

impl Drop for Channel {
    /// A channel dropped without [`Channel::close`] (a panic unwinding through its handler)
    /// still gives back what it holds, so no delivery stays unacknowledged with nobody left to
    /// settle it. After `close` there is nothing left to give back.
    fn drop(&mut self) {
        if !self.closing {
            self.close();
        }
    }
}

fn clamp32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Writes a content-carrying method with the message's header and body; on failure nothing
/// is written and the error says why, for the log.
fn write_content(
    ctx: &mut Ctx<'_>,
    channel: u16,
    method: AMQPClass,
    message: &Message,
) -> Result<(), String> {
    let props = properties_to_amqp(&message.properties);
    codec::encode_content(
        channel,
        &method,
        &props,
        &message.body,
        ctx.frame_max,
        ctx.out,
    )
    .map_err(|e| e.to_string())
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

/// A server-chosen or server-echoed name as a short string; failing is the server's fault.
fn short_string(value: &str, what: &str, method: &AMQPClass) -> Result<ShortString, Exception> {
    ShortString::try_new(value).map_err(|_| {
        Exception::for_method(
            crate::error::INTERNAL_ERROR,
            format!(
                "INTERNAL_ERROR - {what} of {} bytes does not fit AMQP",
                value.len()
            ),
            method,
        )
    })
}

/// An auto-ack delivery is settled once written (or given up): its credit comes back and the
/// queue may dispatch again after the flush.
fn release_auto_ack(ctx: &mut Ctx<'_>, consumer: &Arc<Consumer>, queue: &Arc<Queue>) {
    consumer.release();
    if !ctx.to_dispatch.iter().any(|q| Arc::ptr_eq(q, queue)) {
        ctx.to_dispatch.push(queue.clone());
    }
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
        let how = if seen {
            Settlement::Ack
        } else {
            Settlement::Reject
        };
        queue.settle(&[seq], how);
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

/// Refuses one more publish or acknowledgement into a transaction that holds the most allowed.
fn check_tx_frames(tx: &Tx, max: u32, method: &AMQPClass) -> Result<(), Exception> {
    if max != 0 && tx.frames() >= max as usize {
        return Err(Exception::precondition(
            method,
            format!("transaction already holds {max} publishes and acknowledgements, the limit"),
        ));
    }
    Ok(())
}

/// Groups settled deliveries by queue, keeping delivery order within each queue.
fn group_by_queue(items: impl Iterator<Item = Pending>) -> Vec<(Arc<Queue>, Vec<u64>)> {
    let mut groups: Vec<(Arc<Queue>, Vec<u64>)> = Vec::new();
    for p in items {
        match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &p.queue)) {
            Some((_, seqs)) => seqs.push(p.seq),
            None => groups.push((p.queue, vec![p.seq])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::{Bytes, BytesMut};
    use rosetta_core::{
        Broker, ConsumerSpec, CoreLimits, Message, Outbound, Properties, QueueDeclare, Table,
    };
    use rosetta_store::SledStore;
    use tokio::sync::mpsc::unbounded_channel;

    use super::super::{Ctx, SessionConfig};
    use super::Channel;

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
            tag: "c".into(),
            channel: 1,
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
        let (mut published, mut to_dispatch, mut reported) = (false, Vec::new(), false);
        let mut ctx = Ctx {
            broker: &broker,
            vhost: Some(&vhost),
            conn_id: conn,
            frame_max: config.frame_max,
            config: &config,
            cancel_notify: false,
            outbox: &outbox,
            out: &mut out,
            published: &mut published,
            to_dispatch: &mut to_dispatch,
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
