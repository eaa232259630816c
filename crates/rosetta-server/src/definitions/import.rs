//! A definitions file applied to the broker, as RabbitMQ's import does it: virtual hosts,
//! then users and permissions (see `accounts`), then queues, exchanges and bindings. What is
//! missing is created; a queue or exchange that exists is left as it is, even when the file describes it otherwise
//! (RabbitMQ skips existing queues and exchanges on import, it does not redeclare them), so
//! importing the same file twice changes nothing. Such differences are reported, and one
//! item that fails does not stop the others.

use rosetta_core::broker::VHostMeta;
use rosetta_core::store::Epoch;
use rosetta_core::{Broker, CoreError, Destination, ExchangeDeclare, QueueDeclare, VHost};
use serde::Serialize;

use super::accounts::{self, AccountDefs};
use super::arguments::json_table;
use super::format::{BindingDef, Definitions, ExchangeDef, QueueDef};
use super::Hooks;

/// What an import did. Serialized as the management API's answer.
#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub created: Created,
    /// Items left as they were, and why.
    pub skipped: Vec<String>,
    /// Items that could not be imported, and why.
    pub errors: Vec<String>,
    /// The store epoch the changes wait for.
    #[serde(skip)]
    pub durable_at: Option<Epoch>,
}

#[derive(Debug, Default, Serialize)]
pub struct Created {
    pub vhosts: usize,
    pub users: usize,
    pub permissions: usize,
    pub topic_permissions: usize,
    pub queues: usize,
    pub exchanges: usize,
    pub bindings: usize,
}

impl ImportReport {
    pub(super) fn written(&mut self, epoch: Option<Epoch>) {
        self.durable_at = self.durable_at.max(epoch);
    }
}

/// Applies `defs`; into virtual host `into` alone when given (a per-virtual-host file, whose
/// items' own `vhost` is ignored), which must exist. Users and permissions, and who may use a
/// new virtual host, are the `hooks`' to decide.
pub(crate) fn apply(
    broker: &Broker,
    defs: &Definitions,
    into: Option<&str>,
    hooks: &dyn Hooks,
) -> ImportReport {
    let mut report = ImportReport::default();
    if into.is_none() {
        for v in defs.vhosts.iter().flatten() {
            let creator = match broker.vhost_info(&v.name) {
                Some(info) => info.meta.creator,
                None => hooks.creator().map(str::to_owned),
            };
            let meta = VHostMeta {
                description: v.description().to_owned(),
                tags: v.tags().to_vec(),
                creator,
            };
            match broker.put_vhost(&v.name, meta) {
                Ok(put) => {
                    if put.created {
                        report.created.vhosts += 1;
                        let opened = hooks.vhost_created(&v.name);
                        report.written(opened);
                    }
                    report.written(put.durable_at);
                }
                Err(e) => report
                    .errors
                    .push(format!("virtual host '{}': {e}", v.name)),
            }
        }
    }
    if into.is_none() {
        accounts::import(&hooks.accounts(), &AccountDefs::of(defs), &mut report);
    }
    for (what, items) in [
        ("policies", &defs.policies),
        ("parameters", &defs.parameters),
    ] {
        if !items.is_empty() {
            report.skipped.push(format!(
                "{} {what}: Rosetta has no {what}; set queue arguments instead",
                items.len()
            ));
        }
    }
    // An operator's connection id: declarations are never exclusive.
    let conn = broker.new_connection_id();
    let target = |item_vhost: &Option<String>| -> Result<std::sync::Arc<VHost>, String> {
        let name = into.or(item_vhost.as_deref()).unwrap_or("/");
        broker
            .vhost(name)
            .ok_or_else(|| format!("no virtual host '{name}'"))
    };
    for q in &defs.queues {
        let result = target(&q.vhost).and_then(|v| queue(&v, q, conn, &mut report));
        if let Err(e) = result {
            report.errors.push(format!("queue '{}': {e}", q.name));
        }
    }
    for x in &defs.exchanges {
        let result = target(&x.vhost).and_then(|v| exchange(&v, x, &mut report));
        if let Err(e) = result {
            report.errors.push(format!("exchange '{}': {e}", x.name));
        }
    }
    for b in &defs.bindings {
        let result = target(&b.vhost).and_then(|v| binding(&v, b, conn, &mut report));
        if let Err(e) = result {
            report.errors.push(format!(
                "binding of {} '{}' to exchange '{}' with key '{}': {e}",
                b.destination_type, b.destination, b.source, b.routing_key
            ));
        }
    }
    report
}

fn text(e: CoreError) -> String {
    e.to_string()
}

fn queue(v: &VHost, q: &QueueDef, conn: u64, report: &mut ImportReport) -> Result<(), String> {
    let arguments = json_table(&q.arguments);
    if q.name.starts_with("amq.") {
        report.skipped.push(format!(
            "queue '{}' in vhost '{}': names beginning with 'amq.' are reserved",
            q.name, v.name
        ));
        return Ok(());
    }
    if let Some(existing) = v.queue(&q.name) {
        if existing.durable != q.durable
            || existing.auto_delete != q.auto_delete
            || existing.arguments != arguments
        {
            report.skipped.push(format!(
                "queue '{}' in vhost '{}' exists with other properties; left as it is",
                q.name, v.name
            ));
        }
        return Ok(());
    }
    let declared = v
        .declare_queue(
            QueueDeclare {
                name: q.name.clone(),
                passive: false,
                durable: q.durable,
                exclusive: false,
                auto_delete: q.auto_delete,
                arguments,
            },
            conn,
        )
        .map_err(text)?;
    report.created.queues += 1;
    report.written(declared.durable_at);
    Ok(())
}

fn exchange(v: &VHost, x: &ExchangeDef, report: &mut ImportReport) -> Result<(), String> {
    let arguments = json_table(&x.arguments);
    if x.name.is_empty() || x.name.starts_with("amq.") {
        // The default and predeclared exchanges exist everywhere; RabbitMQ skips them too.
        return Ok(());
    }
    if let Some(existing) = v.exchange(&x.name) {
        if existing.kind.as_str() != x.kind
            || existing.durable != x.durable
            || existing.auto_delete != x.auto_delete
            || existing.internal != x.internal
            || existing.arguments != arguments
        {
            report.skipped.push(format!(
                "exchange '{}' in vhost '{}' exists with other properties; left as it is",
                x.name, v.name
            ));
        }
        return Ok(());
    }
    let written = v
        .declare_exchange(ExchangeDeclare {
            name: x.name.clone(),
            kind: x.kind.clone(),
            passive: false,
            durable: x.durable,
            auto_delete: x.auto_delete,
            internal: x.internal,
            arguments,
        })
        .map_err(text)?;
    report.created.exchanges += 1;
    report.written(written);
    Ok(())
}

fn binding(v: &VHost, b: &BindingDef, conn: u64, report: &mut ImportReport) -> Result<(), String> {
    let destination = match b.destination_type.as_str() {
        "queue" => Destination::Queue(b.destination.clone()),
        "exchange" => Destination::Exchange(b.destination.clone()),
        other => return Err(format!("unknown destination_type '{other}'")),
    };
    if b.source.is_empty() {
        // Every queue is bound to the default exchange by its name; nothing to import.
        return Ok(());
    }
    let before = v.exchange(&b.source).map_or(0, |e| e.binding_count());
    let written = v
        .bind_deferred(
            &b.source,
            destination,
            &b.routing_key,
            json_table(&b.arguments),
            conn,
        )
        .map_err(text)?;
    if v.exchange(&b.source).map_or(0, |e| e.binding_count()) > before {
        report.created.bindings += 1;
    }
    report.written(written);
    Ok(())
}
