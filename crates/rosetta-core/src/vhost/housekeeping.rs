//! Housekeeping: exclusive queues go with their connection, and a periodic sweep expires
//! message TTLs at queue heads and deletes queues whose `x-expires` lease ran out.

use std::sync::Arc;

use super::VHost;
use crate::consumer::ConnectionId;
use crate::queue::{now_ms, Queue};

impl VHost {
    /// A connection ended: its exclusive queues go with it.
    pub fn connection_closed(&self, conn: ConnectionId) {
        let owned: Vec<Arc<Queue>> = self
            .queues
            .iter()
            .filter(|q| q.exclusive_owner == Some(conn))
            .map(|q| q.clone())
            .collect();
        for q in owned {
            if let Err(e) = self.remove_queue(&q) {
                tracing::warn!(queue = %q.name, error = %e, "exclusive queue cleanup failed");
            }
        }
    }

    /// Periodic housekeeping: expire message TTLs at queue heads and delete `x-expires` queues.
    pub fn tick(&self) {
        let now = now_ms();
        for q in self.queues() {
            if q.lease_expired(now) {
                tracing::debug!(queue = %q.name, "queue expired (x-expires)");
                if let Err(e) = self.remove_queue(&q) {
                    tracing::warn!(queue = %q.name, error = %e, "x-expires delete failed");
                }
            } else {
                q.expire();
            }
        }
    }
}
