//! Settling deliveries: `basic.ack`, `basic.nack`, `basic.reject` and `basic.recover`, by the
//! delivery tags the channel assigned. In a transaction they wait for `tx.commit`.

use amq_protocol::protocol::{basic, AMQPClass};
use rosetta_core::Settlement;

use super::tx::check_tx_frames;
use super::Channel;
use crate::session::{Ctx, Exception};

impl Channel {
    pub(super) fn ack(
        &mut self,
        ctx: &mut Ctx<'_>,
        a: basic::Ack,
        method: &AMQPClass,
    ) -> Result<(), Exception> {
        self.settle_or_defer(ctx, a.delivery_tag, a.multiple, Settlement::Ack, method)
    }

    pub(super) fn reject(
        &mut self,
        ctx: &mut Ctx<'_>,
        r: basic::Reject,
        method: &AMQPClass,
    ) -> Result<(), Exception> {
        let kind = if r.requeue {
            Settlement::Requeue
        } else {
            Settlement::Reject
        };
        self.settle_or_defer(ctx, r.delivery_tag, false, kind, method)
    }

    pub(super) fn nack(
        &mut self,
        ctx: &mut Ctx<'_>,
        n: basic::Nack,
        method: &AMQPClass,
    ) -> Result<(), Exception> {
        let kind = if n.requeue {
            Settlement::Requeue
        } else {
            Settlement::Reject
        };
        self.settle_or_defer(ctx, n.delivery_tag, n.multiple, kind, method)
    }

    /// `basic.recover` and `basic.recover-async`.
    pub(super) fn recover(&mut self, ctx: &mut Ctx<'_>, method: &AMQPClass) {
        // RabbitMQ requeues on recover whatever `requeue` says; redelivering to the same
        // consumer is not something it (or we) support.
        self.unacked.requeue_all();
        if matches!(method, AMQPClass::Basic(basic::AMQPMethod::Recover(_))) {
            ctx.send(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
            );
        }
    }

    /// Settles now, or at `tx.commit` on a transactional channel.
    fn settle_or_defer(
        &mut self,
        ctx: &mut Ctx<'_>,
        tag: u64,
        multiple: bool,
        kind: Settlement,
        method: &AMQPClass,
    ) -> Result<(), Exception> {
        if let Some(tx) = &mut self.tx {
            if !multiple && !self.unacked.contains(tag) {
                return Err(Exception::precondition(
                    method,
                    format!("unknown delivery tag {tag}"),
                ));
            }
            check_tx_frames(tx, ctx.config.max_transaction_frames, method)?;
            tx.settles.push((tag, multiple, kind));
            return Ok(());
        }
        self.settle(tag, multiple, kind, method)
    }

    /// Settles delivery `tag` (with `multiple`, every delivery up to it) as `kind`.
    pub(super) fn settle(
        &mut self,
        tag: u64,
        multiple: bool,
        kind: Settlement,
        method: &AMQPClass,
    ) -> Result<(), Exception> {
        let found = if multiple {
            // AMQP 0-9-1 basic.ack: multiple with tag 0 means every outstanding delivery.
            let upto = if tag == 0 { u64::MAX } else { tag };
            self.unacked.settle_up_to(upto, |_| true, kind) > 0 || tag == 0
        } else {
            self.unacked.settle(tag, kind)
        };
        if !found {
            return Err(Exception::precondition(
                method,
                format!("unknown delivery tag {tag}"),
            ));
        }
        // A channel-wide window freed by this settle may unblock consumers on other queues.
        if self.shared_credit.limit() > 0 {
            for (queue, _) in self.consumers.values() {
                queue.dispatch();
            }
        }
        Ok(())
    }
}
