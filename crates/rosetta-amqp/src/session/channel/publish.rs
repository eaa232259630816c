//! Publishing: `basic.publish` with its content header and body frames, assembled and handed to
//! the core; `basic.return` for a mandatory message nothing took.

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::{basic, AMQPClass};
use rosetta_core::auth::Resource;
use rosetta_core::store::Epoch;
use rosetta_core::vhost::DIRECT_REPLY_TO;
use rosetta_core::Message;

use super::tx::check_tx_frames;
use super::{short_string, write_content, Channel};
use crate::convert::properties_from_amqp;
use crate::session::content::{Complete, Incoming};
use crate::session::exception::BASIC_PUBLISH;
use crate::session::{Ctx, Exception};

impl Channel {
    /// `basic.publish`: the content header and body frames that follow complete the message.
    pub(super) fn start_publish(
        &mut self,
        ctx: &mut Ctx<'_>,
        p: basic::Publish,
    ) -> Result<(), Exception> {
        if p.immediate {
            // RabbitMQ dropped `immediate` in 3.0; refusing it beats silently ignoring it.
            return Err(Exception::not_implemented(&BASIC_PUBLISH, "immediate=true"));
        }
        // Checked before any content is buffered; the grant remembers the answers, so a
        // publisher pays for the patterns once per exchange and routing key.
        ctx.permit(&BASIC_PUBLISH, |g| {
            g.write(Resource::Exchange, p.exchange.as_str())?;
            g.topic_write(p.exchange.as_str(), p.routing_key.as_str())
        })?;
        self.incoming = Some(Incoming::new(p));
        ctx.alarm.published();
        Ok(())
    }

    pub fn handle_header(
        &mut self,
        ctx: &mut Ctx<'_>,
        header: AMQPContentHeader,
    ) -> Result<(), Exception> {
        let Some(incoming) = &mut self.incoming else {
            return Err(Exception::unexpected_frame(
                "content header without basic.publish",
            ));
        };
        if let Some(tx) = &mut self.tx {
            // Checked from the header, before any body byte is buffered for the transaction.
            check_tx_frames(tx, ctx.config.max_transaction_frames, &BASIC_PUBLISH)?;
            let max = ctx.config.max_transaction_bytes;
            let bytes = tx.bytes.saturating_add(header.body_size);
            if max != 0 && bytes > max {
                return Err(Exception::precondition(
                    &BASIC_PUBLISH,
                    format!(
                        "transaction would hold {bytes} body bytes, more than the limit of {max}"
                    ),
                ));
            }
            tx.bytes = bytes;
        }
        incoming.header(header, ctx.config.max_message_size)?;
        self.advance(ctx)
    }

    pub fn handle_body(&mut self, ctx: &mut Ctx<'_>, body: Vec<u8>) -> Result<(), Exception> {
        let Some(incoming) = &mut self.incoming else {
            return Err(Exception::unexpected_frame(
                "content body without basic.publish",
            ));
        };
        incoming.body(body)?;
        self.advance(ctx)
    }

    /// Publishes the incoming message once it is complete, or holds it in a transaction.
    fn advance(&mut self, ctx: &mut Ctx<'_>) -> Result<(), Exception> {
        let Some(complete) = Incoming::take_complete(&mut self.incoming) else {
            return Ok(());
        };
        if let Some(tx) = &mut self.tx {
            tx.publishes.push(complete);
            return Ok(());
        }
        self.route(ctx, complete).map(drop)
    }

    /// Hands a complete message to the core; returns the store epoch if it was written durably.
    pub(super) fn route(
        &mut self,
        ctx: &mut Ctx<'_>,
        complete: Complete,
    ) -> Result<Option<Epoch>, Exception> {
        let Complete {
            publish,
            properties,
            body,
        } = complete;
        let mut message = Message::new(
            String::from(publish.exchange),
            publish.routing_key,
            properties_from_amqp(properties),
            body,
        );
        // Direct reply-to: the request names the pseudo-queue and the responder sees the
        // address of this channel's reply consumer, which must exist (RabbitMQ's rule).
        if message.properties.reply_to.as_deref() == Some(DIRECT_REPLY_TO) {
            let Some(address) = self.direct_reply_address() else {
                return Err(Exception::precondition(
                    &BASIC_PUBLISH,
                    "fast reply consumer does not exist",
                ));
            };
            message.properties.reply_to = Some(address.to_owned());
        }
        let returned = publish.mandatory.then(|| message.clone());
        let vhost = ctx.vhost()?.clone();
        let outcome = vhost
            .publish(message)
            .map_err(|e| Exception::from_core(&e, &BASIC_PUBLISH))?;
        if !outcome.routed {
            if let Some(m) = returned {
                // The names came in short strings, so they fit one.
                let reply = basic::Return {
                    reply_code: 312,
                    reply_text: "NO_ROUTE".into(),
                    exchange: short_string(&m.exchange, "exchange name", &BASIC_PUBLISH)?,
                    routing_key: short_string(&m.routing_key, "routing key", &BASIC_PUBLISH)?,
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
}
