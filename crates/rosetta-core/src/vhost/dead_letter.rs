//! Republishing dead letters: a message that died in a queue goes to the queue's dead-letter
//! exchange with its `x-death` history (built by `crate::dead_letter`), iteratively rather than
//! recursively, within a budget per operation.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::VHost;
use crate::dead_letter::{dead_lettered_message, DeadLetter};
use crate::message::Message;
use crate::queue::Queue;

/// Dead letters one operation may set off beyond its own: a message that dies again in the
/// queue it is dead-lettered to starts another round, and a fan-out of such queues multiplies
/// them. Past this the rest are dropped and counted.
const MAX_CASCADED_DEAD_LETTERS: usize = 1_000;

thread_local! {
    /// Dead letters waiting to be republished on this thread. Dead-lettering happens inside a
    /// publish (a full queue drops its head), so republishing at once would recurse without
    /// bound through chains of queues; instead the first dead-lettering on the thread drains
    /// this list in a loop and nested ones only append.
    static DEAD_LETTERS: RefCell<Option<DeadLetterRun>> = const { RefCell::new(None) };
}

struct DeadLetterRun {
    pending: VecDeque<(Arc<VHost>, Message)>,
    /// Cascaded dead letters still allowed in this run.
    budget: usize,
}

/// Clears the thread's run when the draining call ends, even by a panic, so later calls on the
/// thread do not queue behind a run nobody drains.
struct RunGuard;

impl Drop for RunGuard {
    fn drop(&mut self) {
        DEAD_LETTERS.with(|run| run.borrow_mut().take());
    }
}

impl VHost {
    /// Republishes messages that left `queue` dead to its dead-letter exchange. A message that
    /// would go back into a queue it already died in, with no client rejection among its
    /// deaths, is dropped (RabbitMQ's cycle rule); see [`DEAD_LETTERS`] for why republishing
    /// waits for the outermost call.
    pub(crate) fn dead_letter(&self, queue: &Queue, dead: Vec<DeadLetter>) {
        let Some(dlx) = queue.config.dead_letter_exchange.as_deref() else {
            return;
        };
        if !dlx.is_empty() && !self.exchanges.contains_key(dlx) {
            tracing::debug!(queue = %queue.name, dlx, "dead-letter exchange missing; messages dropped");
            return;
        }
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let dlrk = queue.config.dead_letter_routing_key.as_deref();
        let mut messages: Vec<Message> = dead
            .into_iter()
            .map(|d| dead_lettered_message(&d.message, &queue.name, d.reason, dlx, dlrk))
            .collect();
        let nested = DEAD_LETTERS.with(|run| {
            let mut run = run.borrow_mut();
            let Some(run) = run.as_mut() else {
                return false;
            };
            for m in messages.drain(..) {
                if run.budget == 0 {
                    self.shared
                        .counters
                        .dead_letter_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                run.budget -= 1;
                run.pending.push_back((me.clone(), m));
            }
            true
        });
        if nested {
            return;
        }
        DEAD_LETTERS.with(|run| {
            *run.borrow_mut() = Some(DeadLetterRun {
                pending: VecDeque::new(),
                budget: MAX_CASCADED_DEAD_LETTERS,
            })
        });
        let _run = RunGuard;
        for m in messages {
            self.republish_dead(m);
        }
        while let Some((vhost, m)) =
            DEAD_LETTERS.with(|run| run.borrow_mut().as_mut()?.pending.pop_front())
        {
            vhost.republish_dead(m);
        }
    }

    fn republish_dead(&self, message: Message) {
        match self.publish_from(message, true) {
            Ok(o) if o.routed => {
                self.shared
                    .counters
                    .dead_lettered
                    .fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(vhost = %self.name, error = %e, "dead-lettering failed"),
        }
    }
}
