//! Publishing: a message's target queues are resolved in the publisher's own task, through
//! exchange-to-exchange bindings and alternate exchanges, then each queue admits it and the
//! durable ones share one store write.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use smallvec::SmallVec;

use super::{VHost, MAX_KEY_BYTES};
use crate::dead_letter::{DeadLetter, DeathHistory, DeathReason};
use crate::error::CoreError;
use crate::exchange::{Exchange, Route};
use crate::message::Message;
use crate::queue::{Admission, Queue};
use crate::store::Epoch;

/// Exchange-to-exchange and alternate-exchange hops one publish follows. Each exchange is
/// visited once anyway; the bound keeps a long chain from making every publish walk it.
pub const MAX_EXCHANGE_HOPS: usize = 32;

/// Queues (or bindings) one publish usually reaches, kept inline: a publish to a few queues
/// then builds its lists without the allocator.
const INLINE_TARGETS: usize = 4;

/// A publish's target queues.
type Targets = SmallVec<[Arc<Queue>; INLINE_TARGETS]>;

/// What happened to a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublishOutcome {
    /// At least one queue matched (AMQP `mandatory` returns the message otherwise).
    pub routed: bool,
    /// A full queue refused it (`x-overflow = reject-publish…`): confirm with a nack.
    pub rejected: bool,
    /// The store write to wait for before confirming, if the message was written durably.
    pub epoch: Option<Epoch>,
}

impl VHost {
    /// Collects target queues: follows exchange-to-exchange bindings (each exchange once, at
    /// most [`MAX_EXCHANGE_HOPS`] deep) and alternate exchanges for exchanges that matched
    /// nothing. Iterative, so a chain of exchanges cannot exhaust the stack.
    fn route(&self, start: &Arc<Exchange>, message: &Message, queues: &mut Targets) {
        let mut hits: SmallVec<[Route; INLINE_TARGETS]> = SmallVec::new();
        // Exchanges still to visit, with their hop count; the start needs no allocation.
        let mut current = Some((start.clone(), 0));
        let mut next: Vec<(Arc<Exchange>, usize)> = Vec::new();
        let mut visited: Option<HashSet<usize>> = None;
        while let Some((ex, depth)) = current.take().or_else(|| next.pop()) {
            if depth > 0 {
                if depth > MAX_EXCHANGE_HOPS {
                    tracing::debug!(exchange = %ex.name, "exchange hop limit reached; route not followed");
                    continue;
                }
                let visited =
                    visited.get_or_insert_with(|| HashSet::from([Arc::as_ptr(start) as usize]));
                if !visited.insert(Arc::as_ptr(&ex) as usize) {
                    continue;
                }
            }
            ex.route(message, &mut hits);
            if hits.is_empty() {
                if let Some(ae) = ex.alternate_exchange().and_then(|n| self.exchange(n)) {
                    next.push((ae, depth + 1));
                }
            }
            for hit in hits.drain(..) {
                match hit {
                    Route::Queue(q) => queues.push(q),
                    Route::Exchange(e) => next.push((e, depth + 1)),
                }
            }
        }
        if queues.len() > 1 {
            queues.sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
            queues.dedup_by(|a, b| Arc::ptr_eq(a, b));
        }
    }

    /// Publishes a message as a client would. Internal exchanges refuse clients (403). Every
    /// message a client published is counted here, whatever its protocol, and so is one that
    /// matched no queue.
    pub fn publish(&self, message: Message) -> Result<PublishOutcome, CoreError> {
        let outcome = self.publish_from(message, false)?;
        let counters = &self.shared.counters;
        counters.published.fetch_add(1, Ordering::Relaxed);
        if !outcome.routed {
            counters.unroutable.fetch_add(1, Ordering::Relaxed);
        }
        Ok(outcome)
    }

    pub(super) fn publish_from(
        &self,
        mut message: Message,
        dead_lettered: bool,
    ) -> Result<PublishOutcome, CoreError> {
        if message.routing_key.len() > MAX_KEY_BYTES {
            return Err(CoreError::LimitReached(format!(
                "routing key of {} bytes is longer than {MAX_KEY_BYTES}",
                message.routing_key.len()
            )));
        }
        let mut targets = Targets::new();
        if message.exchange.is_empty() {
            let queue = self.queue(&message.routing_key);
            if let Some(q) = queue.or_else(|| self.direct_reply_queue(&message.routing_key)) {
                targets.push(q);
            }
        } else {
            let ex = self
                .exchange(&message.exchange)
                .ok_or_else(|| self.not_found_exchange(&message.exchange))?;
            if ex.internal && !dead_lettered {
                return Err(CoreError::AccessRefused(format!(
                    "cannot publish to internal exchange '{}' in vhost '{}'",
                    ex.name, self.name
                )));
            }
            self.route(&ex, &message, &mut targets);
        }
        if dead_lettered {
            let history = DeathHistory::of(&message);
            let before = targets.len();
            targets.retain(|q| !history.is_cycle_into(&q.name));
            let dropped = before - targets.len();
            if dropped > 0 {
                self.shared
                    .counters
                    .dead_letter_dropped
                    .fetch_add(dropped as u64, Ordering::Relaxed);
                tracing::debug!(vhost = %self.name, dropped, "dead-letter cycle broken");
            }
        }
        let mut outcome = PublishOutcome {
            routed: !targets.is_empty(),
            ..PublishOutcome::default()
        };
        if targets.is_empty() {
            return Ok(outcome);
        }
        message.id = self.shared.next_message_id.fetch_add(1, Ordering::Relaxed);
        let persistent = message.properties.is_persistent();
        let mut accepted: SmallVec<[(&Arc<Queue>, u64); INLINE_TARGETS]> = SmallVec::new();
        let mut refused_dlx = Vec::new();
        for q in &targets {
            match q.admit(&message) {
                Admission::Accept(seq) => accepted.push((q, seq)),
                Admission::Gone => {}
                Admission::Reject => outcome.rejected = true,
                Admission::RejectDeadLetter => {
                    outcome.rejected = true;
                    refused_dlx.push(q);
                }
            }
        }
        // Queues deleted on the way do not count as routes.
        outcome.routed = !accepted.is_empty() || outcome.rejected;
        let durable: SmallVec<[(u64, u64); INLINE_TARGETS]> = accepted
            .iter()
            .filter(|(q, _)| persistent && q.durable && q.exclusive_owner.is_none())
            .map(|(q, seq)| (q.id, *seq))
            .collect();
        let message = Arc::new(message);
        if !durable.is_empty() {
            let epoch = self.shared.store.enqueue(&message, &durable)?;
            self.shared.store.request_sync(epoch);
            outcome.epoch = Some(epoch);
        }
        for (q, seq) in accepted {
            let persisted = persistent && q.durable && q.exclusive_owner.is_none();
            q.push(seq, message.clone(), persisted);
        }
        for q in refused_dlx {
            self.dead_letter(
                q,
                vec![DeadLetter {
                    message: message.clone(),
                    reason: DeathReason::MaxLen,
                }],
            );
        }
        Ok(outcome)
    }
}
