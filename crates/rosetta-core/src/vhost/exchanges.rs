//! Exchanges of a virtual host: declare (with RabbitMQ's equivalence checks), restore at
//! startup, delete. Deleting an exchange takes the bindings from and to it along.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{inequivalent, VHost, MAX_KEY_BYTES};
use crate::error::CoreError;
use crate::exchange::{Destination, Exchange, ExchangeKind};
use crate::message::Table;
use crate::store::{Epoch, ExchangeRecord};

#[derive(Debug, Clone, Default)]
pub struct ExchangeDeclare {
    pub name: String,
    pub kind: String,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Table,
}

impl VHost {
    /// Declares an exchange; returns the epoch a durable exchange's new record waits for.
    pub fn declare_exchange(&self, d: ExchangeDeclare) -> Result<Option<Epoch>, CoreError> {
        if d.name.is_empty() {
            if d.passive {
                return Ok(None);
            }
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        if let Some(existing) = self.exchange(&d.name) {
            if d.passive {
                return Ok(None);
            }
            let what = "exchange";
            if existing.kind.as_str() != d.kind {
                return Err(inequivalent(
                    what,
                    "type",
                    &d.name,
                    &self.name,
                    &d.kind,
                    existing.kind.as_str(),
                ));
            }
            if existing.durable != d.durable {
                return Err(inequivalent(
                    what,
                    "durable",
                    &d.name,
                    &self.name,
                    d.durable,
                    existing.durable,
                ));
            }
            if existing.auto_delete != d.auto_delete {
                return Err(inequivalent(
                    what,
                    "auto_delete",
                    &d.name,
                    &self.name,
                    d.auto_delete,
                    existing.auto_delete,
                ));
            }
            if existing.internal != d.internal {
                return Err(inequivalent(
                    what,
                    "internal",
                    &d.name,
                    &self.name,
                    d.internal,
                    existing.internal,
                ));
            }
            return Ok(None);
        }
        if d.passive {
            return Err(self.not_found_exchange(&d.name));
        }
        if d.name.starts_with("amq.") {
            return Err(CoreError::AccessRefused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        let kind = ExchangeKind::parse(&d.kind)
            .ok_or_else(|| CoreError::UnknownExchangeType(d.kind.clone()))?;
        if d.name.len() > MAX_KEY_BYTES {
            return Err(CoreError::LimitReached(format!(
                "exchange name of {} bytes is longer than {MAX_KEY_BYTES}",
                d.name.len()
            )));
        }
        let max = self.shared.limits.max_exchanges;
        if max > 0 && self.exchanges.len() as u64 >= max {
            return Err(CoreError::LimitReached(format!(
                "cannot declare exchange '{}': exchange limit in vhost '{}' is reached ({max})",
                d.name, self.name
            )));
        }
        let mut durable_at = None;
        if d.durable {
            let record = ExchangeRecord {
                vhost: self.name.clone(),
                name: d.name.clone(),
                kind: d.kind.clone(),
                auto_delete: d.auto_delete,
                internal: d.internal,
                arguments: d.arguments.clone(),
            };
            durable_at = Some(self.persist(|| self.shared.store.save_exchange(&record))?);
        }
        let ex = Exchange::new(
            d.name.clone(),
            kind,
            d.durable,
            d.auto_delete,
            d.internal,
            d.arguments,
        );
        self.exchanges.insert(d.name, Arc::new(ex));
        Ok(durable_at)
    }

    pub(crate) fn restore_exchange(&self, r: &ExchangeRecord) {
        if let Some(kind) = ExchangeKind::parse(&r.kind) {
            let ex = Exchange::new(
                r.name.clone(),
                kind,
                true,
                r.auto_delete,
                r.internal,
                r.arguments.clone(),
            );
            self.exchanges.insert(r.name.clone(), Arc::new(ex));
        }
    }

    /// Deletes an exchange; returns the epoch its removal from the store waits for.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<Option<Epoch>, CoreError> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(CoreError::AccessRefused(format!(
                "operation not permitted on exchange '{name}'"
            )));
        }
        let Some(ex) = self.exchange(name) else {
            return Ok(None);
        };
        if if_unused && ex.binding_count() > 0 {
            return Err(CoreError::PreconditionFailed(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        self.remove_exchange(&ex)
    }

    /// Removes an exchange and its bindings; returns the latest epoch written, if any.
    pub(super) fn remove_exchange(&self, ex: &Arc<Exchange>) -> Result<Option<Epoch>, CoreError> {
        self.exchanges.remove(&ex.name);
        // Bindings from it go with it; bindings to it (exchange-to-exchange) too.
        let dest = Destination::Exchange(ex.name.clone());
        let own = ex.bindings();
        self.binding_count
            .fetch_sub(own.len() as u64, Ordering::Relaxed);
        let mut written = None;
        for b in own {
            written = written.max(self.forget_binding(
                ex,
                &b.destination,
                &b.routing_key,
                &b.arguments,
            )?);
        }
        for other in self.exchanges() {
            let gone = other.unbind_all_to(&dest);
            self.binding_count
                .fetch_sub(gone.len() as u64, Ordering::Relaxed);
            for b in gone {
                written = written.max(self.forget_binding(
                    &other,
                    &b.destination,
                    &b.routing_key,
                    &b.arguments,
                )?);
            }
        }
        if ex.durable {
            written =
                written.max(Some(self.persist(|| {
                    self.shared.store.delete_exchange(&self.name, &ex.name)
                })?));
        }
        self.request_sync(written);
        Ok(written)
    }
}
