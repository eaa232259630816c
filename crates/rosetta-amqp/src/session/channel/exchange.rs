//! The exchange class: declare, delete, and exchange-to-exchange bind and unbind.

use amq_protocol::protocol::{exchange, AMQPClass};
use rosetta_core::auth::Resource;
use rosetta_core::{Destination, ExchangeDeclare, Value};

use super::{Binding, Channel};
use crate::convert::table_from_amqp;
use crate::session::{Ctx, Exception};

impl Channel {
    pub(super) fn exchange_method(
        &mut self,
        ctx: &mut Ctx<'_>,
        m: exchange::AMQPMethod,
    ) -> Result<(), Exception> {
        let method = AMQPClass::Exchange(m.clone());
        let vhost = ctx.vhost()?.clone();
        let core = |e: rosetta_core::CoreError| Exception::from_core(&e, &method);
        match m {
            exchange::AMQPMethod::Declare(d) => {
                let arguments = table_from_amqp(&d.arguments);
                if !d.passive {
                    // With an alternate exchange, RabbitMQ also asks write on it and read on
                    // the exchange declared, since unroutable messages move from one to the other.
                    let alternate = arguments.get("alternate-exchange").and_then(Value::as_str);
                    ctx.permit(&method, |g| {
                        g.configure(Resource::Exchange, d.exchange.as_str())?;
                        if let Some(alternate) = alternate {
                            g.write(Resource::Exchange, alternate)?;
                            g.read(Resource::Exchange, d.exchange.as_str())?;
                        }
                        Ok(())
                    })?;
                }
                let durable_at = vhost
                    .declare_exchange(ExchangeDeclare {
                        name: d.exchange.to_string(),
                        kind: d.kind.to_string(),
                        passive: d.passive,
                        durable: d.durable,
                        auto_delete: d.auto_delete,
                        internal: d.internal,
                        arguments,
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
                ctx.permit(&method, |g| {
                    g.configure(Resource::Exchange, d.exchange.as_str())
                })?;
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
                let reply = (!b.nowait).then_some(AMQPClass::Exchange(
                    exchange::AMQPMethod::BindOk(exchange::BindOk {}),
                ));
                self.change_binding(
                    ctx,
                    &vhost,
                    true,
                    Binding {
                        source: b.source.as_str(),
                        destination: Destination::Exchange(b.destination.to_string()),
                        routing_key: b.routing_key.as_str(),
                        arguments: &b.arguments,
                    },
                    reply,
                )
                .map_err(core)?;
            }
            exchange::AMQPMethod::Unbind(b) => {
                let reply = (!b.nowait).then_some(AMQPClass::Exchange(
                    exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {}),
                ));
                self.change_binding(
                    ctx,
                    &vhost,
                    false,
                    Binding {
                        source: b.source.as_str(),
                        destination: Destination::Exchange(b.destination.to_string()),
                        routing_key: b.routing_key.as_str(),
                        arguments: &b.arguments,
                    },
                    reply,
                )
                .map_err(core)?;
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
}
