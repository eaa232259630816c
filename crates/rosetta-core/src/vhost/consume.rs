//! Consumers and polling: subscribe a consumer to a queue, cancel it (an auto-delete queue
//! goes with its last consumer), and `basic.get`.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use super::VHost;
use crate::consumer::{ConnectionId, Consumer, ConsumerSpec, Outbound};
use crate::error::CoreError;
use crate::queue::{Got, Queue};

impl VHost {
    pub fn consume(
        &self,
        queue: &str,
        spec: ConsumerSpec,
        outbox: UnboundedSender<Outbound>,
    ) -> Result<(Arc<Queue>, Arc<Consumer>), CoreError> {
        let q = self.usable_queue(queue, spec.connection)?;
        let consumer = Consumer::new(spec, outbox, self.shared.limits.consumer_buffer_bytes)?;
        q.add_consumer(consumer.clone())?;
        Ok((q, consumer))
    }

    /// Stops a consumer; an auto-delete queue that lost its last consumer is deleted, and so is
    /// the queue behind a direct reply consumer.
    pub fn cancel(&self, queue: &Arc<Queue>, consumer: &Arc<Consumer>) {
        if queue.remove_consumer(consumer) && !self.remove_direct_reply(queue) {
            if let Err(e) = self.remove_queue(queue) {
                tracing::warn!(queue = %queue.name, error = %e, "auto-delete failed");
            }
        }
    }

    pub fn get(
        &self,
        queue: &str,
        conn: ConnectionId,
        no_ack: bool,
    ) -> Result<(Arc<Queue>, Option<Got>), CoreError> {
        let q = self.usable_queue(queue, conn)?;
        let got = q.get(no_ack);
        Ok((q, got))
    }
}
