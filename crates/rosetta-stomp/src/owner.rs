//! The queues STOMP makes for its own use, and only those, are STOMP's to delete.
//!
//! A durable topic subscription's queue, a plain topic subscription's exclusive queue and a
//! temporary queue record STOMP (and the connection's `client-id`, when it gave one) as their
//! owner. UNSUBSCRIBE with `durable:true` deletes the subscription's queue only if STOMP owns it,
//! so a queue an AMQP client declared under a durable subscription's name survives it. A
//! `/queue/q` destination names a queue any protocol may share, as an AMQP declare does: STOMP
//! declares it on demand without an owner and never deletes it.

use rosetta_core::{Broker, CoreError, QueueOwner};

use crate::destination::DURABLE_SUBSCRIPTION_PREFIX;

/// The owner STOMP records on the queues it makes.
pub const OWNER: &str = "stomp";

/// The owner of a queue STOMP makes for a connection that gave `client_id` (or none).
pub fn queue_owner(client_id: Option<&str>) -> QueueOwner {
    match client_id {
        Some(c) => QueueOwner::client(OWNER, c),
        None => QueueOwner::front_end(OWNER),
    }
}

/// Takes over, at STOMP's first start on a store written before queues carried an owner, the
/// durable subscriptions' queues made then. Their name was all that marked them as STOMP's,
/// and UNSUBSCRIBE with `durable:true` deleted any queue so named; adopting them keeps that for
/// the queues of that time, while every later one is told by its owner. The `client-id` that
/// named such a queue cannot be told from its name, so none is recorded.
pub fn adopt_queues_made_before_owners(broker: &Broker) -> Result<(), CoreError> {
    for vhost in broker.vhosts() {
        vhost.adopt_queues_made_before_owners(OWNER, |q| {
            let ours = q.durable
                && q.exclusive_owner.is_none()
                && q.name.starts_with(DURABLE_SUBSCRIPTION_PREFIX);
            ours.then(|| queue_owner(None))
        })?;
    }
    Ok(())
}
