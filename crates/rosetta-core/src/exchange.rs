//! Exchanges and their bindings. Routing reads the bindings under a read lock that is only
//! written when a binding changes, so publishers on many connections route in parallel.

use parking_lot::RwLock;

use crate::headers_match::headers_match;
use crate::message::{Message, Table, Value};
use crate::topic::TopicPattern;

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

/// Where a binding leads.
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

#[derive(Debug, Clone)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: Table,
    /// Pre-split topic pattern; only set on topic exchanges.
    topic: Option<TopicPattern>,
}

impl Binding {
    fn same_as(&self, destination: &Destination, routing_key: &str, arguments: &Table) -> bool {
        self.destination == *destination
            && self.routing_key == routing_key
            && self.arguments == *arguments
    }
}

#[derive(Debug)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Table,
    bindings: RwLock<Vec<Binding>>,
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
            bindings: RwLock::new(Vec::new()),
        }
    }

    /// The `alternate-exchange` argument: where messages go that no binding matched.
    pub fn alternate_exchange(&self) -> Option<&str> {
        self.arguments
            .get("alternate-exchange")
            .and_then(Value::as_str)
    }

    /// Adds a binding; returns false if an identical one already existed (bind is idempotent).
    pub fn bind(&self, destination: Destination, routing_key: &str, arguments: Table) -> bool {
        let mut bindings = self.bindings.write();
        if bindings
            .iter()
            .any(|b| b.same_as(&destination, routing_key, &arguments))
        {
            return false;
        }
        let topic = (self.kind == ExchangeKind::Topic).then(|| TopicPattern::new(routing_key));
        bindings.push(Binding {
            destination,
            routing_key: routing_key.to_owned(),
            arguments,
            topic,
        });
        true
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&self, destination: &Destination, routing_key: &str, arguments: &Table) -> bool {
        let mut bindings = self.bindings.write();
        let before = bindings.len();
        bindings.retain(|b| !b.same_as(destination, routing_key, arguments));
        bindings.len() != before
    }

    /// Removes every binding to `destination` (the destination was deleted); returns them.
    pub fn unbind_all_to(&self, destination: &Destination) -> Vec<Binding> {
        let mut bindings = self.bindings.write();
        let (gone, kept): (Vec<_>, Vec<_>) = bindings
            .drain(..)
            .partition(|b| b.destination == *destination);
        *bindings = kept;
        gone
    }

    pub fn binding_count(&self) -> usize {
        self.bindings.read().len()
    }

    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.read().clone()
    }

    pub fn has_binding_to(&self, destination: &Destination) -> bool {
        self.bindings
            .read()
            .iter()
            .any(|b| b.destination == *destination)
    }

    /// Appends to `out` every destination whose binding matches the message.
    pub fn route(&self, message: &Message, out: &mut Vec<Destination>) {
        let bindings = self.bindings.read();
        let key = message.routing_key.as_str();
        for b in bindings.iter() {
            let hit = match self.kind {
                ExchangeKind::Direct => b.routing_key == key,
                ExchangeKind::Fanout => true,
                ExchangeKind::Topic => b.topic.as_ref().is_some_and(|t| t.matches(key)),
                ExchangeKind::Headers => {
                    headers_match(&b.arguments, message.properties.headers.as_ref())
                }
            };
            if hit {
                out.push(b.destination.clone());
            }
        }
    }
}
