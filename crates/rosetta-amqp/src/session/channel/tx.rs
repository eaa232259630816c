//! The tx class: select, commit and rollback. A transactional channel holds its publishes and
//! acknowledgements until `tx.commit`.

use amq_protocol::protocol::{tx, AMQPClass};
use rosetta_core::Settlement;

use super::Channel;
use crate::session::content::Complete;
use crate::session::exception::MethodIds;
use crate::session::{Ctx, Exception};

/// Work held back until `tx.commit` (AMQP 0-9-1 class tx).
#[derive(Default)]
pub(super) struct Tx {
    pub(super) publishes: Vec<Complete>,
    pub(super) settles: Vec<(u64, bool, Settlement)>,
    /// Body bytes of the held publishes, announced ones included.
    pub(super) bytes: u64,
}

impl Tx {
    fn frames(&self) -> usize {
        self.publishes.len() + self.settles.len()
    }
}

impl Channel {
    pub(super) fn tx_method(
        &mut self,
        ctx: &mut Ctx<'_>,
        m: tx::AMQPMethod,
    ) -> Result<(), Exception> {
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
                    self.settle(tag, multiple, kind, &method)?;
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
}

/// Refuses one more publish or acknowledgement into a transaction that holds the most allowed.
pub(super) fn check_tx_frames(tx: &Tx, max: u32, method: &impl MethodIds) -> Result<(), Exception> {
    if max != 0 && tx.frames() >= max as usize {
        return Err(Exception::precondition(
            method,
            format!("transaction already holds {max} publishes and acknowledgements, the limit"),
        ));
    }
    Ok(())
}
