//! What one session (a user in a virtual host) may do, checked at each operation.
//!
//! Matching a regular expression on every publish would cost more than routing the message, so
//! a grant remembers each answer by name, as RabbitMQ's channels do, until the directory's
//! generation moves. An allowed publish to an exchange already seen is a counter load and a
//! hash lookup. The remembered answers are bounded: past [`CACHE_LIMIT`] names of one kind the
//! list starts over, so a client cycling through routing keys cannot grow it.

use std::collections::HashMap;
use std::sync::Arc;

use super::directory::{Contents, Directory};
use super::permissions::{
    resource_name, resource_refusal, topic_refusal, Access, Resource, TopicPermission,
};
use crate::error::CoreError;
use crate::exchange::ExchangeKind;
use crate::hash::KeyedState;
use crate::message::{Table, Value};
use crate::vhost::VHost;

/// Answers remembered per kind of check (and per exchange for routing keys).
const CACHE_LIMIT: usize = 128;

pub struct Grant {
    directory: Arc<Directory>,
    user: String,
    vhost: Arc<VHost>,
    /// Built at the first check, so a session that never checks pays nothing for it.
    cache: Option<Box<Cache>>,
}

/// Answers remembered at one generation of the directory.
struct Cache {
    generation: u64,
    contents: Arc<Contents>,
    /// By access and resource kind (see [`slot`]): name → allowed.
    resources: [Answers; 6],
    /// By exchange: where in `topic_answers` its entry is, so that finding one that is there
    /// costs one hash.
    topics: HashMap<Box<str>, usize, KeyedState>,
    /// The user's topic permission on each exchange in `topics`, and the keys already checked.
    topic_answers: Vec<TopicAnswers>,
}

/// Names are the client's choice, hence the keyed hasher.
#[derive(Default)]
struct Answers(HashMap<Box<str>, bool, KeyedState>);

impl Answers {
    fn get_or(&mut self, name: &str, decide: impl FnOnce() -> bool) -> bool {
        if let Some(&allowed) = self.0.get(name) {
            return allowed;
        }
        let allowed = decide();
        if self.0.len() >= CACHE_LIMIT {
            self.0.clear();
        }
        self.0.insert(name.into(), allowed);
        allowed
    }
}

struct TopicAnswers {
    /// `None`: no topic permission for this exchange, so every key goes.
    rule: Option<TopicPermission>,
    write: Answers,
    read: Answers,
}

fn slot(access: Access, kind: Resource) -> usize {
    let a = match access {
        Access::Configure => 0,
        Access::Write => 1,
        Access::Read => 2,
    };
    a * 2 + usize::from(kind == Resource::Exchange)
}

impl Grant {
    pub(super) fn new(directory: Arc<Directory>, user: &str, vhost: Arc<VHost>) -> Grant {
        Grant {
            directory,
            user: user.to_owned(),
            vhost,
            cache: None,
        }
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn vhost(&self) -> &Arc<VHost> {
        &self.vhost
    }

    /// Declaring or deleting queue or exchange `name`.
    pub fn configure(&mut self, kind: Resource, name: &str) -> Result<(), CoreError> {
        self.resource(Access::Configure, kind, name)
    }

    /// Declaring (creating) queue `name` with `arguments`: configure on the queue and, with a
    /// dead-letter exchange, read on the queue and write on that exchange, since dead letters
    /// move from one to the other (RabbitMQ's rule). A fixed dead-letter routing key must also
    /// pass the exchange's topic permission. Every front-end that declares a queue for a
    /// client asks this, so queue arguments cannot route around a publish check.
    pub fn declare_queue(&mut self, name: &str, arguments: &Table) -> Result<(), CoreError> {
        self.configure(Resource::Queue, name)?;
        let Some(exchange) = arguments
            .get("x-dead-letter-exchange")
            .and_then(Value::as_str)
        else {
            return Ok(());
        };
        self.read(Resource::Queue, name)?;
        self.write(Resource::Exchange, exchange)?;
        match arguments
            .get("x-dead-letter-routing-key")
            .and_then(Value::as_str)
        {
            Some(key) => self.topic_write(exchange, key),
            None => Ok(()),
        }
    }

    /// Publishing to exchange `name` (`""` is the default exchange, `amq.default`), or binding
    /// to queue or exchange `name` as the destination.
    pub fn write(&mut self, kind: Resource, name: &str) -> Result<(), CoreError> {
        self.resource(Access::Write, kind, name)
    }

    /// Consuming, getting or purging from queue `name`, or binding from exchange `name`.
    pub fn read(&mut self, kind: Resource, name: &str) -> Result<(), CoreError> {
        self.resource(Access::Read, kind, name)
    }

    /// Publishing to topic exchange `exchange` with routing key `key`.
    pub fn topic_write(&mut self, exchange: &str, key: &str) -> Result<(), CoreError> {
        self.topic(Access::Write, exchange, key)
    }

    /// Binding to topic exchange `exchange` with binding key `key`.
    pub fn topic_read(&mut self, exchange: &str, key: &str) -> Result<(), CoreError> {
        self.topic(Access::Read, exchange, key)
    }

    /// The most answers any one kind of check remembers.
    #[cfg(test)]
    pub(super) fn remembered(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| {
            c.resources.iter().map(|a| a.0.len()).max().unwrap_or(0)
        })
    }

    fn resource(&mut self, access: Access, kind: Resource, name: &str) -> Result<(), CoreError> {
        let (user, vhost) = (self.user.as_str(), self.vhost.name.as_str());
        let cache = fresh(&mut self.cache, &self.directory);
        let contents = &cache.contents;
        let allowed = cache.resources[slot(access, kind)].get_or(name, || {
            contents
                .permissions
                .get(user, vhost)
                .is_some_and(|p| p.pattern(access).matches(resource_name(kind, name)))
        });
        if allowed {
            Ok(())
        } else {
            Err(CoreError::AccessRefused(resource_refusal(
                kind, name, vhost, user,
            )))
        }
    }

    /// Whether the user has a topic permission for `exchange`, so that its keys are checked.
    /// A front-end whose routing keys cost something to compute asks this first.
    pub fn restricts_topics(&mut self, exchange: &str) -> bool {
        let cache = fresh(&mut self.cache, &self.directory);
        topic_answers(cache, &self.user, &self.vhost.name, exchange)
            .rule
            .is_some()
    }

    fn topic(&mut self, access: Access, exchange: &str, key: &str) -> Result<(), CoreError> {
        let cache = fresh(&mut self.cache, &self.directory);
        let answers = topic_answers(cache, &self.user, &self.vhost.name, exchange);
        let Some(rule) = &answers.rule else {
            return Ok(());
        };
        // Topic permissions apply to topic exchanges only (RabbitMQ's rule); whether this one
        // is one is asked each time, since it may be deleted and declared again as another.
        let is_topic = self
            .vhost
            .exchange(exchange)
            .is_some_and(|e| e.kind == ExchangeKind::Topic);
        if !is_topic {
            return Ok(());
        }
        let (pattern, seen) = match access {
            Access::Write => (&rule.write, &mut answers.write),
            _ => (&rule.read, &mut answers.read),
        };
        if seen.get_or(key, || pattern.matches(key)) {
            Ok(())
        } else {
            Err(CoreError::AccessRefused(topic_refusal(
                access,
                key,
                exchange,
                &self.vhost.name,
                &self.user,
            )))
        }
    }
}

/// The grant's cache, started over if the directory changed since it was filled.
fn fresh<'a>(cache: &'a mut Option<Box<Cache>>, directory: &Directory) -> &'a mut Cache {
    let generation = directory.generation();
    if cache.as_ref().is_none_or(|c| c.generation != generation) {
        // Read after the generation: contents at least as new as it.
        *cache = Some(Box::new(Cache {
            generation,
            contents: directory.contents(),
            resources: Default::default(),
            topics: HashMap::default(),
            topic_answers: Vec::new(),
        }));
    }
    cache.as_mut().expect("cache just filled")
}

/// What the cache knows of `exchange`'s topic permission, looked up on first use.
fn topic_answers<'a>(
    cache: &'a mut Cache,
    user: &str,
    vhost: &str,
    exchange: &str,
) -> &'a mut TopicAnswers {
    let at = match cache.topics.get(exchange) {
        Some(&at) => at,
        None => {
            let rule = cache
                .contents
                .permissions
                .topic(user, vhost, exchange)
                .cloned();
            if cache.topics.len() >= CACHE_LIMIT {
                cache.topics.clear();
                cache.topic_answers.clear();
            }
            cache.topic_answers.push(TopicAnswers {
                rule,
                write: Answers::default(),
                read: Answers::default(),
            });
            let at = cache.topic_answers.len() - 1;
            cache.topics.insert(exchange.into(), at);
            at
        }
    };
    &mut cache.topic_answers[at]
}
