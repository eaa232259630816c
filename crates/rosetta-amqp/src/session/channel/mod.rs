//! One AMQP channel: the exchange, queue, basic, confirm and tx classes turned into core calls,
//! and core deliveries turned into `basic.deliver`.
//!
//! This file holds the channel's state, its end, the replies it holds back until the store's
//! durable point, and the dispatch of each method and core event to the file of its concept:
//!
//! - `exchange.rs`: exchange.declare, delete, bind and unbind;
//! - `queue.rs`: queue.declare, bind, unbind, purge and delete;
//! - `publish.rs`: basic.publish and its content, handed to the core; basic.return;
//! - `consume.rs`: basic.qos, basic.consume, basic.cancel and how consumers are named in the core;
//! - `deliver.rs`: basic.deliver and basic.get, and what happens to a message AMQP cannot carry;
//! - `ack.rs`: basic.ack, nack, reject and recover: settling deliveries;
//! - `confirm.rs`: confirm.select and publisher confirms;
//! - `tx.rs`: tx.select, commit and rollback;
//! - `flow.rs`: channel.flow.

mod ack;
mod confirm;
mod consume;
mod deliver;
mod exchange;
mod flow;
mod publish;
mod queue;
mod tx;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{access, basic, AMQPClass};
use amq_protocol::types::ShortString;
use bytes::BytesMut;
use rosetta_core::auth::Resource;
use rosetta_core::front_end::ledger::{give_back, Ledger};
use rosetta_core::store::Epoch;
use rosetta_core::{Consumer, Credit, Message, Outbound, Queue, VHost};

use super::content::Incoming;
use super::exception::MethodIds;
use super::held::HeldOutput;
use super::{Ctx, Exception};
use crate::codec;
use crate::convert::properties_to_amqp;
use confirm::Confirms;
pub(super) use consume::channel_of;
use tx::Tx;

/// One open channel's state.
pub(super) struct Channel {
    id: u16,
    vhost: Arc<VHost>,
    closing: bool,
    incoming: Option<Incoming>,
    next_tag: u64,
    /// Deliveries the client has not settled, by delivery tag.
    unacked: Ledger<u64>,
    /// By the client's consumer tag, which is scoped to this channel.
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

/// A binding as `queue.bind`/`unbind` and `exchange.bind`/`unbind` name it.
pub(super) struct Binding<'a> {
    pub source: &'a str,
    pub destination: rosetta_core::Destination,
    pub routing_key: &'a str,
    pub arguments: &'a amq_protocol::types::FieldTable,
}

impl Channel {
    pub fn new(id: u16, vhost: Arc<VHost>) -> Self {
        Channel {
            id,
            vhost,
            closing: false,
            incoming: None,
            next_tag: 1,
            unacked: Ledger::default(),
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
    /// `queue.bind`/`unbind` and `exchange.bind`/`unbind`: adds (`bind`) or removes the
    /// binding and sends `reply` (none for `nowait`) once it is durable. The four methods
    /// differ only in the destination's kind and the reply.
    pub(super) fn change_binding(
        &mut self,
        ctx: &mut Ctx<'_>,
        vhost: &rosetta_core::VHost,
        bind: bool,
        b: Binding<'_>,
        reply: Option<AMQPClass>,
    ) -> Result<(), rosetta_core::CoreError> {
        // RabbitMQ's rule for all four: write on the destination, read on the source, and the
        // source's topic permission for the key. Every open channel's connection has a grant.
        if let Some(grant) = ctx.grant.as_deref_mut() {
            let kind = match &b.destination {
                rosetta_core::Destination::Queue(_) => Resource::Queue,
                rosetta_core::Destination::Exchange(_) => Resource::Exchange,
            };
            grant.write(kind, b.destination.name())?;
            grant.read(Resource::Exchange, b.source)?;
            grant.topic_read(b.source, b.routing_key)?;
        }
        let arguments = crate::convert::table_from_amqp(b.arguments);
        let durable_at = if bind {
            vhost.bind_deferred(
                b.source,
                b.destination,
                b.routing_key,
                arguments,
                ctx.conn_id,
            )?
        } else {
            vhost.unbind_deferred(
                b.source,
                b.destination,
                b.routing_key,
                &arguments,
                ctx.conn_id,
            )?
        };
        if let Some(reply) = reply {
            self.send_when_durable(ctx, reply, durable_at);
        }
        Ok(())
    }

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
        self.unacked.requeue_all();
        for item in self.paused.drain(..) {
            if let Outbound::Deliver(d) = item {
                give_back(&d);
            }
        }
    }

    fn queue_name(&self, name: &str) -> String {
        if name.is_empty() {
            self.last_queue.clone()
        } else {
            name.to_owned()
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
            AMQPClass::Confirm(m) => self.confirm_method(ctx, m),
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

    /// The basic class spans several concepts, each in its own file.
    fn basic_method(&mut self, ctx: &mut Ctx<'_>, m: basic::AMQPMethod) -> Result<(), Exception> {
        // A publish, one per message, goes on without a copy of its arguments for errors.
        let m = match m {
            basic::AMQPMethod::Publish(p) => return self.start_publish(ctx, p),
            other => other,
        };
        let method = AMQPClass::Basic(m.clone());
        match m {
            basic::AMQPMethod::Qos(q) => self.qos(ctx, q),
            basic::AMQPMethod::Consume(c) => self.consume(ctx, c, &method),
            basic::AMQPMethod::Cancel(c) => self.cancel(ctx, c),
            basic::AMQPMethod::Get(g) => self.get(ctx, g, &method),
            basic::AMQPMethod::Ack(a) => self.ack(ctx, a, &method),
            basic::AMQPMethod::Reject(r) => self.reject(ctx, r, &method),
            basic::AMQPMethod::Nack(n) => self.nack(ctx, n, &method),
            basic::AMQPMethod::Recover(_) | basic::AMQPMethod::RecoverAsync(_) => {
                self.recover(ctx, &method);
                Ok(())
            }
            _ => Err(Exception::command_invalid(
                &method,
                "method not valid from a client",
            )),
        }
    }

    /// A delivery or cancel notification from a queue, for one of this channel's consumers.
    pub fn handle_outbound(&mut self, ctx: &mut Ctx<'_>, item: Outbound) {
        if !self.flow_active {
            self.paused.push_back(item);
            return;
        }
        match item {
            Outbound::Deliver(d) => self.deliver(ctx, d),
            Outbound::Cancelled { consumer_tag } => self.cancelled_by_queue(ctx, &consumer_tag),
            // Handled by the session before it reaches a channel.
            Outbound::Close(_) => {}
        }
    }
}

impl Drop for Channel {
    /// A channel dropped without [`Channel::close`] (its session dropped while a panic
    /// unwinds) still gives back what it holds, so no delivery stays unacknowledged with
    /// nobody left to settle it. After `close` there is nothing left to give back.
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

/// A server-chosen or server-echoed name as a short string; failing is the server's fault.
fn short_string(
    value: &str,
    what: &str,
    method: &impl MethodIds,
) -> Result<ShortString, Exception> {
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
