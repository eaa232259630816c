//! Publisher confirms (RabbitMQ's extension to AMQP 0-9-1): `confirm.select`, and the
//! `basic.ack` and `basic.nack` that answer each publish once the store has made it durable.

use std::collections::VecDeque;

use amq_protocol::protocol::{basic, confirm, AMQPClass};
use rosetta_core::store::Epoch;

use super::Channel;
use crate::session::{Ctx, Exception};

/// Publisher confirms (RabbitMQ extension): each publish gets a sequence number, confirmed in
/// order once the store has made it durable.
#[derive(Default)]
pub(super) struct Confirms {
    pub(super) next: u64,
    /// (sequence number, epoch to wait for, nack)
    pub(super) pending: VecDeque<(u64, Epoch, bool)>,
}

impl Channel {
    pub(super) fn confirm_method(
        &mut self,
        ctx: &mut Ctx<'_>,
        m: confirm::AMQPMethod,
    ) -> Result<(), Exception> {
        let s = match m {
            confirm::AMQPMethod::Select(s) => s,
            other => {
                return Err(Exception::command_invalid(
                    &AMQPClass::Confirm(other),
                    "method not valid from a client",
                ))
            }
        };
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
}
