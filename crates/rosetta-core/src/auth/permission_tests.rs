//! Grants against a real virtual host: RabbitMQ's pattern semantics, topic permissions on
//! topic exchanges only, the texts of refusals, and a directory changed at run time.

use std::sync::Arc;

use super::permissions::DEFAULT_EXCHANGE;
use super::*;
use crate::broker::{Broker, CoreLimits};
use crate::error::CoreError;
use crate::memory_store::MemoryStore;
use crate::store::Store;
use crate::vhost::{ExchangeDeclare, VHost};

fn vhost() -> (Arc<Broker>, Arc<VHost>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let broker = Broker::open(store, &["/".to_owned()], CoreLimits::default()).expect("broker");
    let vhost = broker.vhost("/").expect("vhost");
    (broker, vhost)
}

fn pattern(source: &str) -> Pattern {
    Pattern::new(source).expect("pattern")
}

fn users() -> Users {
    let user = |name: &str| User {
        name: name.into(),
        password: "pw".into(),
        loopback_only: false,
    };
    Users::new(vec![user("alice"), user("bob")])
}

/// bob: configure `^bob\.`, write `^(bob\.|amq\.default$|amq\.topic$)`, read `^bob\.|^amq\.topic$`;
/// topic write `^sensors\.` and read `^sensors\.` on amq.topic.
fn directory() -> Arc<Directory> {
    let mut permissions = Permissions::full_access(["alice"], &["/"]);
    permissions.set(
        "bob",
        "/",
        Permission {
            configure: pattern("^bob\\."),
            write: pattern("^(bob\\.|amq\\.default$|amq\\.topic$)"),
            read: pattern("^bob\\.|^amq\\.topic$"),
        },
    );
    permissions.set_topic(
        "bob",
        "/",
        TopicPermission {
            exchange: "amq.topic".into(),
            write: pattern("^sensors\\."),
            read: pattern("^sensors\\."),
        },
    );
    Arc::new(Directory::new(users(), permissions))
}

fn refusal(result: Result<(), CoreError>) -> String {
    match result {
        Err(CoreError::AccessRefused(text)) => text,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_user_without_an_entry_may_not_use_the_virtual_host() {
    let (_broker, vhost) = vhost();
    let mut permissions = Permissions::default();
    permissions.set("alice", "/", Permission::full());
    let directory = Arc::new(Directory::new(users(), permissions));
    assert!(directory.vhost_access("alice", "/"));
    assert!(!directory.vhost_access("bob", "/"));
    assert!(!directory.vhost_access("alice", "other"));
    match directory.grant("bob", &vhost) {
        Err(CoreError::AccessRefused(text)) => {
            assert_eq!(text, "access to vhost '/' refused for user 'bob'")
        }
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("bob has no permission on /"),
    }
}

#[test]
fn resources_are_matched_by_kind_and_access_with_rabbitmq_texts() {
    let (_broker, vhost) = vhost();
    let mut bob = directory().grant("bob", &vhost).expect("bob may use /");
    assert!(bob.configure(Resource::Queue, "bob.q").is_ok());
    assert!(bob.configure(Resource::Exchange, "bob.x").is_ok());
    assert_eq!(
        refusal(bob.configure(Resource::Queue, "q")),
        "access to queue 'q' in vhost '/' refused for user 'bob'"
    );
    // Unanchored: the pattern may match anywhere unless it says otherwise.
    assert!(bob.configure(Resource::Queue, "xbob.q").is_err());
    assert!(bob.write(Resource::Exchange, "").is_ok(), "amq.default");
    assert!(bob.write(Resource::Exchange, DEFAULT_EXCHANGE).is_ok());
    assert_eq!(
        refusal(bob.write(Resource::Exchange, "amq.direct")),
        "access to exchange 'amq.direct' in vhost '/' refused for user 'bob'"
    );
    assert!(bob.read(Resource::Queue, "bob.q").is_ok());
    assert!(bob.read(Resource::Queue, "amq.gen-xyz").is_err());
    // Server-named queues are names like any other.
    let mut alice = directory().grant("alice", &vhost).expect("alice");
    assert!(alice.configure(Resource::Queue, "amq.gen-xyz").is_ok());
}

#[test]
fn topic_permissions_check_keys_on_topic_exchanges_only() {
    let (_broker, vhost) = vhost();
    let mut bob = directory().grant("bob", &vhost).expect("bob");
    assert!(bob.topic_write("amq.topic", "sensors.kitchen").is_ok());
    assert_eq!(
        refusal(bob.topic_write("amq.topic", "alarms.kitchen")),
        "write access to topic 'alarms.kitchen' in exchange 'amq.topic' in vhost '/' refused for user 'bob'"
    );
    assert!(bob.topic_read("amq.topic", "sensors.#").is_ok());
    assert!(refusal(bob.topic_read("amq.topic", "#")).starts_with("read access to topic '#'"));
    // No topic permission for this exchange: every key goes.
    assert!(bob.topic_write("amq.direct", "anything").is_ok());
    // alice has none at all.
    let mut alice = directory().grant("alice", &vhost).expect("alice");
    assert!(alice.topic_write("amq.topic", "alarms.kitchen").is_ok());
}

#[test]
fn a_topic_permission_on_an_exchange_that_is_not_a_topic_exchange_is_ignored() {
    let (_broker, vhost) = vhost();
    vhost
        .declare_exchange(ExchangeDeclare {
            name: "events".into(),
            kind: "direct".into(),
            ..ExchangeDeclare::default()
        })
        .expect("declared");
    let directory = directory();
    directory.update(|c| {
        c.permissions.set_topic(
            "bob",
            "/",
            TopicPermission {
                exchange: "events".into(),
                write: Pattern::nothing(),
                read: Pattern::nothing(),
            },
        )
    });
    let mut bob = directory.grant("bob", &vhost).expect("bob");
    assert!(bob.topic_write("events", "k").is_ok());
    vhost.delete_exchange("events", false).expect("deleted");
    vhost
        .declare_exchange(ExchangeDeclare {
            name: "events".into(),
            kind: "topic".into(),
            ..ExchangeDeclare::default()
        })
        .expect("declared again");
    assert!(
        bob.topic_write("events", "k").is_err(),
        "now a topic exchange"
    );
}

#[test]
fn a_change_to_the_directory_reaches_existing_grants() {
    let (_broker, vhost) = vhost();
    let directory = directory();
    let mut bob = directory.grant("bob", &vhost).expect("bob");
    assert!(bob.write(Resource::Exchange, "amq.direct").is_err());
    let before = directory.generation();
    directory.update(|c| c.permissions.set("bob", "/", Permission::full()));
    assert!(directory.generation() > before);
    assert!(bob.write(Resource::Exchange, "amq.direct").is_ok());
    directory.update(|c| c.permissions.clear("bob", "/"));
    assert!(!directory.vhost_access("bob", "/"));
    assert!(bob.read(Resource::Queue, "bob.q").is_err());
    directory.replace(users(), Permissions::full_access(["bob"], &["/"]));
    assert!(bob.read(Resource::Queue, "anything").is_ok());
    assert!(directory.check("bob", "pw", [127, 0, 0, 1].into()).is_ok());
}

#[test]
fn a_grant_caches_answers_without_growing_past_its_bound() {
    let (_broker, vhost) = vhost();
    let mut alice = directory().grant("alice", &vhost).expect("alice");
    assert!(alice.write(Resource::Exchange, "x").is_ok());
    assert!(alice.write(Resource::Exchange, "x").is_ok());
    assert_eq!(
        alice.remembered(),
        1,
        "the second publish reused the first answer"
    );
    for i in 0..3000 {
        assert!(alice.write(Resource::Exchange, &format!("x{i}")).is_ok());
    }
    assert!(
        alice.remembered() <= 128,
        "3000 names, at most 128 answers kept"
    );
}

#[test]
fn a_queue_declare_with_a_dead_letter_exchange_needs_write_there() {
    let (_broker, vhost) = vhost();
    let mut bob = directory().grant("bob", &vhost).expect("bob");
    let arguments = |pairs: &[(&str, &str)]| -> crate::Table {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), crate::Value::Str((*v).into())))
            .collect()
    };
    assert!(bob.declare_queue("bob.q", &arguments(&[])).is_ok());
    assert!(
        refusal(bob.declare_queue("other", &arguments(&[]))).starts_with("access to queue 'other'")
    );
    // bob may not write to amq.direct: its queue may not dead-letter there either.
    let to_direct = arguments(&[("x-dead-letter-exchange", "amq.direct")]);
    assert_eq!(
        refusal(bob.declare_queue("bob.q", &to_direct)),
        "access to exchange 'amq.direct' in vhost '/' refused for user 'bob'"
    );
    let to_own = arguments(&[("x-dead-letter-exchange", "bob.dlx")]);
    assert!(bob.declare_queue("bob.q", &to_own).is_ok());
    // The fixed dead-letter key passes the topic permission of a topic exchange.
    let keyed = |key| {
        arguments(&[
            ("x-dead-letter-exchange", "amq.topic"),
            ("x-dead-letter-routing-key", key),
        ])
    };
    assert!(bob.declare_queue("bob.q", &keyed("sensors.dead")).is_ok());
    assert!(refusal(bob.declare_queue("bob.q", &keyed("alarms.dead")))
        .starts_with("write access to topic 'alarms.dead'"));
}

#[test]
fn an_allowed_publish_after_the_first_allocates_nothing() {
    let (_broker, vhost) = vhost();
    let mut bob = directory().grant("bob", &vhost).expect("bob");
    let publish = |grant: &mut Grant| {
        grant.write(Resource::Exchange, "amq.topic").expect("write");
        grant
            .topic_write("amq.topic", "sensors.kitchen")
            .expect("topic write");
    };
    publish(&mut bob);
    let used = allocation_counter::measure(|| {
        for _ in 0..100 {
            publish(&mut bob);
        }
    });
    // No regular expression runs and no answer is stored: the cache answers.
    assert_eq!(used.count_total, 0);
}
