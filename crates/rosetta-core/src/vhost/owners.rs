//! Taking over queues made before queues carried an owner.
//!
//! A store written before then holds the queues front-ends made with no owner, like any client's.
//! A front-end that left them so could never remove them (an MQTT session's queue would outlive
//! the session), so it claims its own once, at its first start on such a store. Once only: from
//! then on every queue it makes records its owner, and a queue a client declares later under a
//! name the front-end uses must stay the client's.

use crate::error::CoreError;
use crate::queue::Queue;
use crate::queue_owner::QueueOwner;
use crate::store::QueueRecord;

use super::VHost;

/// Namespace of the records saying that a front-end took over its queues in a virtual host
/// (key: front-end, NUL, virtual host; empty value).
const NS_QUEUE_OWNERS: &str = "core.queue-owners";

impl VHost {
    /// Once per store, front-end and virtual host: records an owner for the queues without one
    /// that `claim` picks (it returns the owner to record, or `None` to leave the queue as it
    /// is). Later calls claim nothing, and neither does the first on a new store, which has no
    /// queues yet. Only at startup, before clients connect: a rewritten record would bring back
    /// a queue deleted meanwhile. Returns how many queues were adopted.
    pub fn adopt_queues_made_before_owners(
        &self,
        front_end: &str,
        mut claim: impl FnMut(&Queue) -> Option<QueueOwner>,
    ) -> Result<usize, CoreError> {
        let store = &self.shared.store;
        let mut key = front_end.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(self.name.as_bytes());
        let done = store
            .scan_records(NS_QUEUE_OWNERS, &key)?
            .iter()
            .any(|(k, _)| *k == key);
        if done {
            return Ok(0);
        }
        let mut adopted = 0;
        for q in self.queues() {
            if q.owner().is_some() {
                continue;
            }
            let Some(owner) = claim(&q) else {
                continue;
            };
            if !q.adopt(owner.clone()) {
                continue;
            }
            if q.durable && q.exclusive_owner.is_none() {
                let record = QueueRecord {
                    id: q.id,
                    vhost: self.name.clone(),
                    name: q.name.clone(),
                    auto_delete: q.auto_delete,
                    arguments: q.arguments.clone(),
                    owner: Some(owner),
                };
                self.persist(|| store.save_queue(&record))?;
            }
            tracing::info!(
                vhost = %self.name,
                queue = %q.name,
                front_end,
                "queue adopted by the front-end that made it"
            );
            adopted += 1;
        }
        // Written after the queues: a crash before it is durable only repeats the adoptions.
        self.persist(|| store.put_record(NS_QUEUE_OWNERS, &key, &[]))?;
        Ok(adopted)
    }
}
