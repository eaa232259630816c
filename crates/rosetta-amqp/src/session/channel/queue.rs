//! The queue class: declare, bind, unbind, purge and delete.

use amq_protocol::protocol::{queue, AMQPClass};
use rosetta_core::auth::Resource;
use rosetta_core::{Destination, QueueDeclare};

use super::{clamp32, short_string, Binding, Channel};
use crate::convert::table_from_amqp;
use crate::session::{Ctx, Exception};

impl Channel {
    pub(super) fn queue_method(
        &mut self,
        ctx: &mut Ctx<'_>,
        m: queue::AMQPMethod,
    ) -> Result<(), Exception> {
        let method = AMQPClass::Queue(m.clone());
        let vhost = ctx.vhost()?.clone();
        let core = |e: rosetta_core::CoreError| Exception::from_core(&e, &method);
        match m {
            queue::AMQPMethod::Declare(d) => {
                let arguments = table_from_amqp(&d.arguments);
                // A passive declare creates nothing and needs no permission (RabbitMQ). The
                // arguments are checked as the grant's queue declare rule says, the same rule
                // every front-end's declare follows.
                let checked = (!d.passive).then(|| arguments.clone());
                let grant = ctx.grant.as_deref_mut();
                let allow = move |name: &str| match (grant, &checked) {
                    (Some(g), Some(arguments)) => g.declare_queue(name, arguments),
                    _ => Ok(()),
                };
                let declared = vhost
                    .declare_queue_if(
                        QueueDeclare {
                            name: d.queue.to_string(),
                            passive: d.passive,
                            durable: d.durable,
                            exclusive: d.exclusive,
                            auto_delete: d.auto_delete,
                            arguments,
                        },
                        ctx.conn_id,
                        allow,
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
                let reply = (!b.nowait).then_some(AMQPClass::Queue(queue::AMQPMethod::BindOk(
                    queue::BindOk {},
                )));
                self.change_binding(
                    ctx,
                    &vhost,
                    true,
                    Binding {
                        source: b.exchange.as_str(),
                        destination: dest,
                        routing_key: b.routing_key.as_str(),
                        arguments: &b.arguments,
                    },
                    reply,
                )
                .map_err(core)?;
            }
            queue::AMQPMethod::Unbind(b) => {
                let dest = Destination::Queue(self.queue_name(b.queue.as_str()));
                // queue.unbind has no nowait: it is always answered.
                let reply = AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {}));
                self.change_binding(
                    ctx,
                    &vhost,
                    false,
                    Binding {
                        source: b.exchange.as_str(),
                        destination: dest,
                        routing_key: b.routing_key.as_str(),
                        arguments: &b.arguments,
                    },
                    Some(reply),
                )
                .map_err(core)?;
            }
            queue::AMQPMethod::Purge(p) => {
                let name = self.queue_name(p.queue.as_str());
                ctx.permit(&method, |g| g.read(Resource::Queue, &name))?;
                let count = vhost.purge_queue(&name, ctx.conn_id).map_err(core)?;
                if !p.nowait {
                    let reply = queue::PurgeOk {
                        message_count: clamp32(count),
                    };
                    ctx.send(self.id, AMQPClass::Queue(queue::AMQPMethod::PurgeOk(reply)));
                }
            }
            queue::AMQPMethod::Delete(d) => {
                let name = self.queue_name(d.queue.as_str());
                ctx.permit(&method, |g| g.configure(Resource::Queue, &name))?;
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
}
