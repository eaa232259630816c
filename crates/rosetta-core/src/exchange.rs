//! Exchanges and their bindings. Routing reads the bindings under a read lock that is only
//! written when a binding changes, so publishers on many connections route in parallel.
//!
//! What a publish costs must not depend on what other clients bound: bindings are indexed by
//! kind (a hash map of routing keys for direct exchanges, a trie of words for topic exchanges),
//! and each index entry holds the destination's handle, so routing never looks a name up again.
//! Binding and unbinding cost one hash or trie step per word, whatever the number of bindings.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::hash::KeyedState;
use crate::headers_match::headers_match;
use crate::message::{Message, Table, Value};
use crate::queue::Queue;
use crate::topic::TopicTrie;

/// The topic exchange every virtual host has. MQTT publishes and subscribes through it, and
/// STOMP's `/topic/` destinations name it (RabbitMQ's conventions).
pub const AMQ_TOPIC: &str = "amq.topic";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding leads, by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    Queue(String),
    Exchange(String),
}

impl Destination {
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(n) | Destination::Exchange(n) => n,
        }
    }
}

/// Where a binding leads, by handle: what routing hands back.
#[derive(Debug, Clone)]
pub enum Route {
    Queue(Arc<Queue>),
    Exchange(Arc<Exchange>),
}

/// One binding, as listed or removed.
#[derive(Debug, Clone)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: Table,
}

/// The destinations one index entry leads to, each with the number of bindings behind it (a
/// destination may be bound twice with the same key and different arguments).
#[derive(Debug, Default)]
struct Targets(HashMap<Destination, (Route, u32)>);

impl Targets {
    fn add(&mut self, destination: &Destination, route: &Route) {
        self.0
            .entry(destination.clone())
            .or_insert_with(|| (route.clone(), 0))
            .1 += 1;
    }

    /// Returns true when nothing is left.
    fn remove(&mut self, destination: &Destination) -> bool {
        if let Some((_, n)) = self.0.get_mut(destination) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(destination);
            }
        }
        self.0.is_empty()
    }

    fn routes(&self) -> impl Iterator<Item = &Route> {
        self.0.values().map(|(r, _)| r)
    }
}

/// Every binding of one destination: its handle and its keys with their argument tables.
#[derive(Debug)]
struct Bound {
    route: Route,
    keys: HashMap<String, Vec<Table>>,
}

#[derive(Debug, Default)]
struct BindingTable {
    by_destination: HashMap<Destination, Bound>,
    count: usize,
    /// Direct exchanges: routing key to destinations.
    direct: HashMap<String, Targets, KeyedState>,
    /// Topic exchanges: pattern trie to destinations.
    topic: TopicTrie<Targets>,
}

#[derive(Debug)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Table,
    bindings: RwLock<BindingTable>,
}

impl Exchange {
    pub fn new(
        name: String,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: Table,
    ) -> Self {
        Exchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            bindings: RwLock::new(BindingTable::default()),
        }
    }

    /// The `alternate-exchange` argument: where messages go that no binding matched.
    pub fn alternate_exchange(&self) -> Option<&str> {
        self.arguments
            .get("alternate-exchange")
            .and_then(Value::as_str)
    }

    /// Adds a binding; returns false if an identical one already existed (bind is idempotent).
    pub fn bind(
        &self,
        destination: Destination,
        route: Route,
        routing_key: &str,
        arguments: Table,
    ) -> bool {
        let mut guard = self.bindings.write();
        let table = &mut *guard;
        let bound = table
            .by_destination
            .entry(destination.clone())
            .or_insert_with(|| Bound {
                route,
                keys: HashMap::new(),
            });
        let tables = bound.keys.entry(routing_key.to_owned()).or_default();
        if tables.contains(&arguments) {
            return false;
        }
        tables.push(arguments);
        table.count += 1;
        match self.kind {
            ExchangeKind::Direct => table
                .direct
                .entry(routing_key.to_owned())
                .or_default()
                .add(&destination, &bound.route),
            ExchangeKind::Topic => table
                .topic
                .entry(routing_key, Targets::default)
                .add(&destination, &bound.route),
            ExchangeKind::Fanout | ExchangeKind::Headers => {}
        }
        true
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&self, destination: &Destination, routing_key: &str, arguments: &Table) -> bool {
        let mut guard = self.bindings.write();
        let table = &mut *guard;
        let Some(bound) = table.by_destination.get_mut(destination) else {
            return false;
        };
        let Some(tables) = bound.keys.get_mut(routing_key) else {
            return false;
        };
        let Some(at) = tables.iter().position(|t| t == arguments) else {
            return false;
        };
        tables.swap_remove(at);
        if tables.is_empty() {
            bound.keys.remove(routing_key);
        }
        if bound.keys.is_empty() {
            table.by_destination.remove(destination);
        }
        table.count -= 1;
        self.unindex(table, destination, routing_key);
        true
    }

    fn unindex(&self, table: &mut BindingTable, destination: &Destination, routing_key: &str) {
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(targets) = table.direct.get_mut(routing_key) {
                    if targets.remove(destination) {
                        table.direct.remove(routing_key);
                    }
                }
            }
            ExchangeKind::Topic => table
                .topic
                .edit(routing_key, |targets| targets.remove(destination)),
            ExchangeKind::Fanout | ExchangeKind::Headers => {}
        }
    }

    /// Removes every binding to `destination` (the destination was deleted); returns them.
    pub fn unbind_all_to(&self, destination: &Destination) -> Vec<Binding> {
        let mut guard = self.bindings.write();
        let table = &mut *guard;
        let Some(bound) = table.by_destination.remove(destination) else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        for (routing_key, tables) in bound.keys {
            for arguments in tables {
                table.count -= 1;
                self.unindex(table, destination, &routing_key);
                gone.push(Binding {
                    destination: destination.clone(),
                    routing_key: routing_key.clone(),
                    arguments,
                });
            }
        }
        gone
    }

    pub fn binding_count(&self) -> usize {
        self.bindings.read().count
    }

    pub fn bindings(&self) -> Vec<Binding> {
        let table = self.bindings.read();
        let mut all = Vec::with_capacity(table.count);
        for (destination, bound) in &table.by_destination {
            for (routing_key, tables) in &bound.keys {
                for arguments in tables {
                    all.push(Binding {
                        destination: destination.clone(),
                        routing_key: routing_key.clone(),
                        arguments: arguments.clone(),
                    });
                }
            }
        }
        all
    }

    pub fn has_binding_to(&self, destination: &Destination) -> bool {
        self.bindings
            .read()
            .by_destination
            .contains_key(destination)
    }

    /// Appends to `out` every destination whose binding matches the message, each once. `out`
    /// is any growable list, so the caller can keep the usual few hits inline.
    pub fn route(&self, message: &Message, out: &mut impl Extend<Route>) {
        let table = self.bindings.read();
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(targets) = table.direct.get(message.routing_key.as_str()) {
                    out.extend(targets.routes().cloned());
                }
            }
            ExchangeKind::Fanout => {
                out.extend(table.by_destination.values().map(|b| b.route.clone()));
            }
            ExchangeKind::Topic => table.topic.for_each_match(&message.routing_key, |targets| {
                out.extend(targets.routes().cloned())
            }),
            ExchangeKind::Headers => {
                let headers = message.properties.headers.as_ref();
                for bound in table.by_destination.values() {
                    let hit = bound
                        .keys
                        .values()
                        .flatten()
                        .any(|arguments| headers_match(arguments, headers));
                    if hit {
                        out.extend([bound.route.clone()]);
                    }
                }
            }
        }
    }
}
