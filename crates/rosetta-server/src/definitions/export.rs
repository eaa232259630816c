//! The broker's topology as a definitions file. Only what a restart keeps is exported, as
//! RabbitMQ does: durable exchanges, durable queues that are neither exclusive nor
//! server-named, and bindings between them. Queues a front-end made for its own use (MQTT
//! sessions, STOMP durable subscriptions) go with that front-end's session state, which a
//! definitions file does not carry, so they are left out too.

use rosetta_core::{Broker, Destination, Queue};

use super::arguments::table_map;
use super::format::{BindingDef, Definitions, ExchangeDef, QueueDef, VHostDef, VHostMetadata};
use super::AccountDefs;

/// Rosetta's version, where RabbitMQ writes its own.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Every virtual host, with users and permissions.
pub(crate) fn all(broker: &Broker, accounts: AccountDefs) -> Definitions {
    let infos = broker.vhost_infos();
    let mut d = topology(broker, None);
    d.rabbit_version = Some(VERSION.to_owned());
    d.rabbitmq_version = Some(VERSION.to_owned());
    d.product_name = Some("Rosetta".to_owned());
    d.product_version = Some(VERSION.to_owned());
    d.users = Some(accounts.users);
    d.permissions = Some(accounts.permissions);
    d.topic_permissions = Some(accounts.topic_permissions);
    d.global_parameters = Some(Vec::new());
    d.vhosts = Some(
        infos
            .iter()
            .map(|info| VHostDef {
                name: info.vhost.name.clone(),
                description: info.meta.description.clone(),
                tags: info.meta.tags.clone(),
                metadata: Some(VHostMetadata {
                    description: info.meta.description.clone(),
                    tags: info.meta.tags.clone(),
                }),
            })
            .collect(),
    );
    d
}

/// One virtual host's exchanges, queues and bindings, its items naming no virtual host (as
/// RabbitMQ writes `GET /api/definitions/{vhost}`). `None` if there is no such virtual host.
pub(crate) fn one(broker: &Broker, vhost: &str) -> Option<Definitions> {
    broker.vhost(vhost)?;
    let mut d = topology(broker, Some(vhost));
    d.rabbit_version = Some(VERSION.to_owned());
    d.rabbitmq_version = Some(VERSION.to_owned());
    for q in &mut d.queues {
        q.vhost = None;
    }
    for e in &mut d.exchanges {
        e.vhost = None;
    }
    for b in &mut d.bindings {
        b.vhost = None;
    }
    Some(d)
}

/// Whether a queue belongs in a definitions file.
fn exported(q: &Queue) -> bool {
    q.durable
        && q.exclusive_owner.is_none()
        && q.owner().is_none()
        && !q.name.starts_with("amq.gen-")
}

/// Exchanges, queues and bindings of every virtual host or of `only`, sorted by virtual host
/// and name so two exports of the same broker are equal.
fn topology(broker: &Broker, only: Option<&str>) -> Definitions {
    let mut d = Definitions::default();
    for vhost in broker.vhosts() {
        if only.is_some_and(|name| name != vhost.name) {
            continue;
        }
        let queues: Vec<_> = vhost.queues().into_iter().filter(|q| exported(q)).collect();
        for q in &queues {
            d.queues.push(QueueDef {
                name: q.name.clone(),
                vhost: Some(vhost.name.clone()),
                durable: q.durable,
                auto_delete: q.auto_delete,
                arguments: table_map(&q.arguments),
            });
        }
        for e in vhost.exchanges() {
            // The predeclared amq.* exchanges exist in every virtual host; RabbitMQ leaves them
            // out too.
            if !e.durable || e.name.starts_with("amq.") {
                continue;
            }
            d.exchanges.push(ExchangeDef {
                name: e.name.clone(),
                vhost: Some(vhost.name.clone()),
                kind: e.kind.as_str().to_owned(),
                durable: e.durable,
                auto_delete: e.auto_delete,
                internal: e.internal,
                arguments: table_map(&e.arguments),
            });
        }
        for e in vhost.exchanges() {
            if !e.durable {
                continue;
            }
            for b in e.bindings() {
                let (destination, destination_type) = match &b.destination {
                    Destination::Queue(name) if queues.iter().any(|q| q.name == *name) => {
                        (name.clone(), "queue")
                    }
                    Destination::Exchange(name)
                        if vhost.exchange(name).is_some_and(|x| x.durable) =>
                    {
                        (name.clone(), "exchange")
                    }
                    _ => continue,
                };
                d.bindings.push(BindingDef {
                    source: e.name.clone(),
                    vhost: Some(vhost.name.clone()),
                    destination,
                    destination_type: destination_type.to_owned(),
                    routing_key: b.routing_key.clone(),
                    arguments: table_map(&b.arguments),
                });
            }
        }
    }
    d.queues
        .sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    d.exchanges
        .sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    d.bindings.sort_by(|a, b| {
        let key = |x: &BindingDef| {
            (
                x.vhost.clone(),
                x.source.clone(),
                x.destination_type.clone(),
                x.destination.clone(),
                x.routing_key.clone(),
                serde_json::Value::Object(x.arguments.clone()).to_string(),
            )
        };
        key(a).cmp(&key(b))
    });
    d
}
