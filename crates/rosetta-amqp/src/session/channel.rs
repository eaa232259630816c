//! One AMQP channel: the exchange, queue, basic, confirm and tx classes turned into core calls,
//! and core deliveries turned into `basic.deliver`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::{
    access, basic, channel as chan, confirm, exchange, queue, tx, AMQPClass,
};
use rosetta_core::store::Epoch;
use rosetta_core::{
    Consumer, ConsumerSpec, Credit, Destination, ExchangeDeclare, Message, Outbound, Queue,
    QueueDeclare, Settlement,
};

use super::content::{Complete, Incoming, Progress};
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
}

pub(super) struct Channel {
    id: u16,
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
}

impl Channel {
    pub fn new(id: u16) -> Self {
        Channel {
            id,
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
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    pub fn has_pending_confirms(&self) -> bool {
        self.confirms
            .as_ref()
            .is_some_and(|c| !c.pending.is_empty())
    }

    /// Ends the channel: consumers stop, unacked messages go back to their queues in their
    /// original order with the redelivered flag (AMQP 0-9-1 basic.recover semantics).
    pub fn close(&mut self, ctx: &mut Ctx<'_>) {
        self.closing = true;
        self.incoming = None;
        self.tx = None;
        self.confirms = None;
        if let Ok(vhost) = ctx.vhost() {
            for (_, (q, c)) in self.consumers.drain() {
                vhost.cancel(&q, &c);
            }
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
                vhost
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
                    ctx.send(
                        self.id,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                            exchange::DeclareOk {},
                        )),
                    );
                }
            }
            exchange::AMQPMethod::Delete(d) => {
                vhost
                    .delete_exchange(d.exchange.as_str(), d.if_unused)
                    .map_err(core)?;
                if !d.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                    );
                }
            }
            exchange::AMQPMethod::Bind(b) => {
                let dest = Destination::Exchange(b.destination.to_string());
                vhost
                    .bind(
                        b.source.as_str(),
                        dest,
                        b.routing_key.as_str(),
                        table_from_amqp(&b.arguments),
                        ctx.conn_id,
                    )
                    .map_err(core)?;
                if !b.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                    );
                }
            }
            exchange::AMQPMethod::Unbind(b) => {
                let dest = Destination::Exchange(b.destination.to_string());
                vhost
                    .unbind(
                        b.source.as_str(),
                        dest,
                        b.routing_key.as_str(),
                        &table_from_amqp(&b.arguments),
                        ctx.conn_id,
                    )
                    .map_err(core)?;
                if !b.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
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
                        queue: declared.name.into(),
                        message_count: clamp32(declared.message_count),
                        consumer_count: clamp32(declared.consumer_count),
                    };
                    ctx.send(
                        self.id,
                        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(reply)),
                    );
                }
            }
            queue::AMQPMethod::Bind(b) => {
                let dest = Destination::Queue(self.queue_name(b.queue.as_str()));
                vhost
                    .bind(
                        b.exchange.as_str(),
                        dest,
                        b.routing_key.as_str(),
                        table_from_amqp(&b.arguments),
                        ctx.conn_id,
                    )
                    .map_err(core)?;
                if !b.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                    );
                }
            }
            queue::AMQPMethod::Unbind(b) => {
                let dest = Destination::Queue(self.queue_name(b.queue.as_str()));
                vhost
                    .unbind(
                        b.exchange.as_str(),
                        dest,
                        b.routing_key.as_str(),
                        &table_from_amqp(&b.arguments),
                        ctx.conn_id,
                    )
                    .map_err(core)?;
                ctx.send(
                    self.id,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
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
                let count = vhost
                    .delete_queue(&name, d.if_unused, d.if_empty, ctx.conn_id)
                    .map_err(core)?;
                if !d.nowait {
                    let reply = queue::DeleteOk {
                        message_count: clamp32(count),
                    };
                    ctx.send(
                        self.id,
                        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(reply)),
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
                    consumer_tag: tag.to_string().into(),
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
        let (q, got) = vhost
            .get(&self.queue_name(g.queue.as_str()), ctx.conn_id, g.no_ack)
            .map_err(|e| Exception::from_core(&e, method))?;
        let Some(got) = got else {
            ctx.send(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
            );
            return Ok(());
        };
        let tag = self.next_tag;
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
        let reply = basic::GetOk {
            delivery_tag: tag,
            redelivered: got.redelivered,
            exchange: got.message.exchange.as_str().into(),
            routing_key: got.message.routing_key.as_str().into(),
            message_count: clamp32(got.remaining),
        };
        write_content(
            ctx,
            self.id,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(reply)),
            &got.message,
        );
        Ok(())
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
                let mut durable = false;
                for complete in tx.publishes {
                    durable |= self.route(ctx, complete)?.is_some();
                }
                if durable {
                    // tx.commit-ok promises the publishes are safe (AMQP 0-9-1 class tx).
                    ctx.broker
                        .store()
                        .sync()
                        .map_err(|e| Exception::from_core(&e.into(), &method))?;
                }
                for (tag, multiple, kind) in tx.settles {
                    self.settle(ctx, tag, multiple, kind, &method)?;
                }
                ctx.send(
                    self.id,
                    AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
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
        let progress = incoming.header(header, ctx.max_message_size)?;
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
        *ctx.published = true;
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
                write_content(
                    ctx,
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::Return(reply)),
                    &m,
                );
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
                self.next_tag += 1;
                if d.consumer.no_ack {
                    d.consumer.release();
                    if !ctx.to_dispatch.iter().any(|q| Arc::ptr_eq(q, &d.queue)) {
                        ctx.to_dispatch.push(d.queue.clone());
                    }
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
                let deliver = basic::Deliver {
                    consumer_tag: d.consumer.tag.to_string().into(),
                    delivery_tag: tag,
                    redelivered: d.redelivered,
                    exchange: d.message.exchange.as_str().into(),
                    routing_key: d.message.routing_key.as_str().into(),
                };
                write_content(
                    ctx,
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver)),
                    &d.message,
                );
            }
            Outbound::Cancelled { consumer_tag, .. } => {
                if self.consumers.remove(&consumer_tag).is_some() && ctx.cancel_notify {
                    let cancel = basic::Cancel {
                        consumer_tag: consumer_tag.to_string().into(),
                        nowait: true,
                    };
                    ctx.send(self.id, AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)));
                }
            }
            // Handled by the session before it reaches a channel.
            Outbound::Close(_) => {}
        }
    }
}

fn clamp32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn write_content(ctx: &mut Ctx<'_>, channel: u16, method: AMQPClass, message: &Message) {
    let props = properties_to_amqp(&message.properties);
    if let Err(e) = codec::encode_content(
        channel,
        &method,
        &props,
        &message.body,
        ctx.frame_max,
        ctx.out,
    ) {
        tracing::warn!(error = %e, "message properties too large to deliver; dropped");
    }
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
