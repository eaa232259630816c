//! Settling deliveries: `basic.ack`, `basic.nack`, `basic.reject` and `basic.recover`, by the
//! delivery tags the channel assigned. In a transaction they wait for `tx.commit`.

use std::sync::Arc;

use amq_protocol::protocol::{basic, AMQPClass};
use rosetta_core::{Queue, Settlement};

use super::tx::check_tx_frames;
use super::Channel;
use crate::session::{Ctx, Exception};

/// An unacknowledged delivery, by delivery tag.
pub(super) struct Pending {
    pub(super) queue: Arc<Queue>,
    pub(super) seq: u64,
}

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
        self.requeue_all();
        if matches!(method, AMQPClass::Basic(basic::AMQPMethod::Recover(_))) {
            ctx.send(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
            );
        }
    }

    /// Every unacknowledged delivery goes back to its queue.
    pub(super) fn requeue_all(&mut self) {
        let all: Vec<(u64, Pending)> = std::mem::take(&mut self.unacked).into_iter().collect();
        for (queue, seqs) in group_by_queue(all.into_iter().map(|(_, p)| p)) {
            queue.requeue(&seqs);
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
