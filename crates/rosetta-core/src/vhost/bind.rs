//! Bindings of a virtual host: bind and unbind (queue and exchange destinations), restore at
//! startup, and forgetting a binding when one of its ends goes (an auto-delete exchange goes
//! with its last binding).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{VHost, MAX_KEY_BYTES};
use crate::consumer::ConnectionId;
use crate::error::CoreError;
use crate::exchange::{Destination, Exchange, Route};
use crate::message::Table;
use crate::store::{BindingRecord, Epoch};

impl VHost {
    fn binding_record(
        &self,
        source: &Exchange,
        destination: &Destination,
        routing_key: &str,
        arguments: &Table,
    ) -> BindingRecord {
        BindingRecord {
            vhost: self.name.clone(),
            source: source.name.clone(),
            destination: destination.name().to_owned(),
            destination_is_queue: matches!(destination, Destination::Queue(_)),
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
        }
    }

    fn destination_durable(&self, destination: &Destination) -> bool {
        match destination {
            Destination::Queue(n) => self
                .queue(n)
                .is_some_and(|q| q.durable && q.exclusive_owner.is_none()),
            Destination::Exchange(n) => self.exchange(n).is_some_and(|e| e.durable),
        }
    }

    /// Drops a binding's durable record, and an auto-delete source left without bindings;
    /// returns the latest epoch written, if any.
    pub(super) fn forget_binding(
        &self,
        source: &Arc<Exchange>,
        destination: &Destination,
        routing_key: &str,
        arguments: &Table,
    ) -> Result<Option<Epoch>, CoreError> {
        let mut written = None;
        // Deleting a record that was never written is harmless, and the destination may
        // already be gone, so durability is judged by the source alone.
        if source.durable {
            let record = self.binding_record(source, destination, routing_key, arguments);
            written = Some(self.shared.store.delete_binding(&record)?);
        }
        if source.auto_delete
            && source.binding_count() == 0
            && self.exchanges.contains_key(&source.name)
        {
            written = written.max(self.remove_exchange(source)?);
        }
        Ok(written)
    }

    fn source_exchange(&self, name: &str) -> Result<Arc<Exchange>, CoreError> {
        if name.is_empty() {
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        self.exchange(name)
            .ok_or_else(|| self.not_found_exchange(name))
    }

    /// Binds; a durable binding's record is written and its fsync requested, and the epoch to
    /// wait for comes back, so a front-end can hold its reply until the store's durable point
    /// passes it instead of blocking on an fsync.
    pub fn bind_deferred(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: Table,
        conn: ConnectionId,
    ) -> Result<Option<Epoch>, CoreError> {
        let route = match &destination {
            Destination::Queue(q) => Route::Queue(self.usable_queue(q, conn)?),
            Destination::Exchange(e) => {
                if e.is_empty() {
                    return Err(CoreError::AccessRefused(
                        "operation not permitted on the default exchange".into(),
                    ));
                }
                Route::Exchange(self.exchange(e).ok_or_else(|| self.not_found_exchange(e))?)
            }
        };
        let ex = self.source_exchange(source)?;
        if routing_key.len() > MAX_KEY_BYTES {
            return Err(CoreError::LimitReached(format!(
                "binding key of {} bytes is longer than {MAX_KEY_BYTES}",
                routing_key.len()
            )));
        }
        let max = self.shared.limits.max_bindings;
        if max > 0 && self.binding_count.load(Ordering::Relaxed) >= max {
            return Err(CoreError::LimitReached(format!(
                "binding limit in vhost '{}' is reached ({max})",
                self.name
            )));
        }
        let durable = ex.durable && self.destination_durable(&destination);
        let record =
            durable.then(|| self.binding_record(&ex, &destination, routing_key, &arguments));
        if !ex.bind(destination, route, routing_key, arguments) {
            return Ok(None);
        }
        self.binding_count.fetch_add(1, Ordering::Relaxed);
        let Some(record) = record else {
            return Ok(None);
        };
        let epoch = self.shared.store.save_binding(&record)?;
        self.shared.store.request_sync(epoch);
        Ok(Some(epoch))
    }

    pub(crate) fn restore_binding(&self, r: &BindingRecord) {
        let Some(ex) = self.exchange(&r.source) else {
            return;
        };
        let (dest, route) = if r.destination_is_queue {
            let Some(q) = self.queue(&r.destination) else {
                return;
            };
            (Destination::Queue(r.destination.clone()), Route::Queue(q))
        } else {
            let Some(e) = self.exchange(&r.destination) else {
                return;
            };
            (
                Destination::Exchange(r.destination.clone()),
                Route::Exchange(e),
            )
        };
        if ex.bind(dest, route, &r.routing_key, r.arguments.clone()) {
            self.binding_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Unbinds; like [`VHost::bind_deferred`], returns the epoch to wait for when the store
    /// changed. There is no blocking variant: front-ends run on async worker threads.
    pub fn unbind_deferred(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &Table,
        conn: ConnectionId,
    ) -> Result<Option<Epoch>, CoreError> {
        match &destination {
            Destination::Queue(q) => {
                self.usable_queue(q, conn)?;
            }
            Destination::Exchange(e) => {
                self.exchange(e).ok_or_else(|| self.not_found_exchange(e))?;
            }
        }
        let ex = self.source_exchange(source)?;
        if !ex.unbind(&destination, routing_key, arguments) {
            return Ok(None);
        }
        self.binding_count.fetch_sub(1, Ordering::Relaxed);
        let written = self.forget_binding(&ex, &destination, routing_key, arguments)?;
        self.request_sync(written);
        Ok(written)
    }
}
