//! Users, permissions and topic permissions made at run time (the management API, a definitions
//! import), kept in the store's generic records so they come back after a restart. The
//! configuration's entries are not stored: they are read from the file at each start.
//!
//! Keys are length-prefixed texts (`record_texts`), so every permission of one user shares a
//! key prefix and deleting a user takes them in one call: `users` is keyed by the user name,
//! `permissions` by user and virtual host, `topic_permissions` by user, virtual host and
//! exchange. Values are a version byte and texts; passwords are kept only as their salted hash
//! in RabbitMQ's format. A record that does not decode is skipped with a warning at load (the
//! store has already checked its checksum), never half-applied.

use super::permissions::{Pattern, Permission, TopicPermission};
use super::PasswordHash;
use crate::record_texts;
use crate::store::{Epoch, Store, StoreError};

const NS_USERS: &str = "users";
const NS_PERMISSIONS: &str = "permissions";
const NS_TOPIC_PERMISSIONS: &str = "topic_permissions";
/// The first byte of each value: its encoding, so a later one can add fields.
const RECORD_VERSION: u8 = 1;

/// A run-time user. Tags are kept as given (RabbitMQ's `policymaker`, or any other word, go
/// back out in an export); the ones the broker knows decide what the user may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUser {
    pub name: String,
    pub password: PasswordHash,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredPermission {
    pub user: String,
    pub vhost: String,
    pub permission: Permission,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredTopicPermission {
    pub user: String,
    pub vhost: String,
    pub topic: TopicPermission,
}

/// Everything stored, as [`load`] finds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    pub users: Vec<StoredUser>,
    pub permissions: Vec<StoredPermission>,
    pub topic_permissions: Vec<StoredTopicPermission>,
}

/// Every stored user, permission and topic permission. Records that do not decode are skipped,
/// each with a warning.
pub fn load(store: &dyn Store) -> Result<Stored, StoreError> {
    let mut stored = Stored::default();
    for (key, value) in store.scan_records(NS_USERS, b"")? {
        match decode_user(&key, &value) {
            Some(user) => stored.users.push(user),
            None => tracing::warn!(
                key = %String::from_utf8_lossy(&key),
                "a stored user does not decode; skipped"
            ),
        }
    }
    for (key, value) in store.scan_records(NS_PERMISSIONS, b"")? {
        match decode_permission(&key, &value) {
            Some(p) => stored.permissions.push(p),
            None => tracing::warn!("a stored permission does not decode; skipped"),
        }
    }
    for (key, value) in store.scan_records(NS_TOPIC_PERMISSIONS, b"")? {
        match decode_topic(&key, &value) {
            Some(t) => stored.topic_permissions.push(t),
            None => tracing::warn!("a stored topic permission does not decode; skipped"),
        }
    }
    Ok(stored)
}

/// Writes (or replaces) a user and asks for its fsync; the caller waits for the epoch.
pub fn put_user(store: &dyn Store, user: &StoredUser) -> Result<Epoch, StoreError> {
    let hash = user.password.to_string();
    let value = record_texts::encode(
        RECORD_VERSION,
        std::iter::once(hash.as_str()).chain(user.tags.iter().map(String::as_str)),
    );
    synced(
        store,
        store.put_record(NS_USERS, user.name.as_bytes(), &value)?,
    )
}

/// Deletes a user with every permission and topic permission it has.
pub fn delete_user(store: &dyn Store, name: &str) -> Result<Epoch, StoreError> {
    let prefix = key(&[name]);
    store.delete_records(NS_PERMISSIONS, &prefix)?;
    store.delete_records(NS_TOPIC_PERMISSIONS, &prefix)?;
    synced(store, store.delete_record(NS_USERS, name.as_bytes())?)
}

pub fn put_permission(
    store: &dyn Store,
    user: &str,
    vhost: &str,
    permission: &Permission,
) -> Result<Epoch, StoreError> {
    let value = record_texts::encode(
        RECORD_VERSION,
        [
            permission.configure.as_str(),
            permission.write.as_str(),
            permission.read.as_str(),
        ],
    );
    let epoch = store.put_record(NS_PERMISSIONS, &key(&[user, vhost]), &value)?;
    synced(store, epoch)
}

pub fn delete_permission(store: &dyn Store, user: &str, vhost: &str) -> Result<Epoch, StoreError> {
    synced(
        store,
        store.delete_record(NS_PERMISSIONS, &key(&[user, vhost]))?,
    )
}

pub fn put_topic_permission(
    store: &dyn Store,
    user: &str,
    vhost: &str,
    topic: &TopicPermission,
) -> Result<Epoch, StoreError> {
    let value = record_texts::encode(RECORD_VERSION, [topic.write.as_str(), topic.read.as_str()]);
    let epoch = store.put_record(
        NS_TOPIC_PERMISSIONS,
        &key(&[user, vhost, &topic.exchange]),
        &value,
    )?;
    synced(store, epoch)
}

/// Deletes every topic permission of `user` in `vhost` (RabbitMQ's `DELETE
/// /api/topic-permissions/{vhost}/{user}` takes them all).
pub fn delete_topic_permissions(
    store: &dyn Store,
    user: &str,
    vhost: &str,
) -> Result<Epoch, StoreError> {
    synced(
        store,
        store.delete_records(NS_TOPIC_PERMISSIONS, &key(&[user, vhost]))?,
    )
}

/// Deletes every permission and topic permission on `vhost`, which is being deleted.
pub fn delete_vhost(store: &dyn Store, vhost: &str) -> Result<Option<Epoch>, StoreError> {
    let mut last = None;
    for (ns, names) in [(NS_PERMISSIONS, 2), (NS_TOPIC_PERMISSIONS, 3)] {
        for (k, _) in store.scan_records(ns, b"")? {
            let on_vhost = record_texts::split(&k)
                .is_some_and(|texts| texts.len() == names && texts[1] == vhost);
            if on_vhost {
                last = last.max(Some(store.delete_record(ns, &k)?));
            }
        }
    }
    last.map(|epoch| synced(store, epoch)).transpose()
}

fn synced(store: &dyn Store, epoch: Epoch) -> Result<Epoch, StoreError> {
    store.request_sync(epoch);
    Ok(epoch)
}

/// A key of length-prefixed texts; a shorter list is a prefix of the longer keys.
fn key(texts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for text in texts {
        record_texts::put(&mut out, text);
    }
    out
}

fn decode_user(key: &[u8], value: &[u8]) -> Option<StoredUser> {
    let name = String::from_utf8(key.to_vec()).ok()?;
    let mut texts = record_texts::decode(RECORD_VERSION, value)?.into_iter();
    let password = PasswordHash::parse(&texts.next()?).ok()?;
    Some(StoredUser {
        name,
        password,
        tags: texts.collect(),
    })
}

fn decode_permission(key: &[u8], value: &[u8]) -> Option<StoredPermission> {
    let [user, vhost]: [String; 2] = record_texts::split(key)?.try_into().ok()?;
    let [configure, write, read]: [String; 3] = record_texts::decode(RECORD_VERSION, value)?
        .try_into()
        .ok()?;
    Some(StoredPermission {
        user,
        vhost,
        permission: Permission {
            configure: Pattern::new(&configure).ok()?,
            write: Pattern::new(&write).ok()?,
            read: Pattern::new(&read).ok()?,
        },
    })
}

fn decode_topic(key: &[u8], value: &[u8]) -> Option<StoredTopicPermission> {
    let [user, vhost, exchange]: [String; 3] = record_texts::split(key)?.try_into().ok()?;
    let [write, read]: [String; 2] = record_texts::decode(RECORD_VERSION, value)?
        .try_into()
        .ok()?;
    Some(StoredTopicPermission {
        user,
        vhost,
        topic: TopicPermission {
            exchange,
            write: Pattern::new(&write).ok()?,
            read: Pattern::new(&read).ok()?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_store::MemoryStore;

    fn p(source: &str) -> Pattern {
        Pattern::new(source).expect("pattern")
    }

    fn alice() -> StoredUser {
        StoredUser {
            name: "alice".into(),
            password: PasswordHash::parse("kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR")
                .expect("hash"),
            tags: vec!["administrator".into(), "policymaker".into()],
        }
    }

    fn topic(exchange: &str) -> TopicPermission {
        TopicPermission {
            exchange: exchange.into(),
            write: p("^a\\."),
            read: p(""),
        }
    }

    #[test]
    fn users_and_permissions_come_back_as_written() {
        let store = MemoryStore::default();
        put_user(&store, &alice()).expect("user");
        let bob = StoredUser {
            name: "bob:/x".into(),
            password: PasswordHash::none(),
            tags: Vec::new(),
        };
        put_user(&store, &bob).expect("user");
        let perm = Permission {
            configure: p("^q"),
            write: p(""),
            read: p(".*"),
        };
        put_permission(&store, "alice", "/", &perm).expect("permission");
        put_topic_permission(&store, "alice", "/", &topic("amq.topic")).expect("topic");
        let stored = load(&store).expect("load");
        assert_eq!(stored.users.len(), 2);
        assert!(stored.users.contains(&alice()));
        assert!(stored.users.contains(&bob));
        assert!(alice().password.verify("test12"));
        assert_eq!(
            stored.permissions,
            vec![StoredPermission {
                user: "alice".into(),
                vhost: "/".into(),
                permission: perm,
            }]
        );
        assert_eq!(
            stored.topic_permissions,
            vec![StoredTopicPermission {
                user: "alice".into(),
                vhost: "/".into(),
                topic: topic("amq.topic"),
            }]
        );
    }

    #[test]
    fn deleting_a_user_takes_its_permissions_but_not_a_prefix_namesakes() {
        let store = MemoryStore::default();
        for name in ["al", "alice"] {
            let user = StoredUser {
                name: name.into(),
                ..alice()
            };
            put_user(&store, &user).expect("user");
            put_permission(&store, name, "/", &Permission::full()).expect("permission");
            put_topic_permission(&store, name, "/", &topic("x")).expect("topic");
        }
        delete_user(&store, "al").expect("delete");
        let stored = load(&store).expect("load");
        assert_eq!(stored.users.len(), 1);
        assert_eq!(stored.users[0].name, "alice");
        assert_eq!(stored.permissions.len(), 1);
        assert_eq!(stored.permissions[0].user, "alice");
        assert_eq!(stored.topic_permissions.len(), 1);
    }

    #[test]
    fn topic_permissions_go_per_user_and_vhost_and_with_their_vhost() {
        let store = MemoryStore::default();
        put_topic_permission(&store, "a", "v", &topic("x")).expect("topic");
        put_topic_permission(&store, "a", "v", &topic("y")).expect("topic");
        put_topic_permission(&store, "a", "w", &topic("x")).expect("topic");
        put_permission(&store, "a", "w", &Permission::full()).expect("permission");
        put_permission(&store, "a", "v", &Permission::full()).expect("permission");
        delete_topic_permissions(&store, "a", "v").expect("delete");
        let stored = load(&store).expect("load");
        assert_eq!(stored.topic_permissions.len(), 1);
        assert_eq!(stored.topic_permissions[0].vhost, "w");
        assert!(delete_vhost(&store, "w").expect("vhost").is_some());
        let stored = load(&store).expect("load");
        assert!(stored.topic_permissions.is_empty());
        assert_eq!(stored.permissions.len(), 1);
        assert_eq!(stored.permissions[0].vhost, "v");
        delete_permission(&store, "a", "v").expect("delete");
        assert_eq!(load(&store).expect("load"), Stored::default());
    }

    #[test]
    fn records_that_do_not_decode_are_skipped() {
        let store = MemoryStore::default();
        put_user(&store, &alice()).expect("user");
        store
            .put_record(NS_USERS, b"broken", &[RECORD_VERSION, 0, 0, 0, 9])
            .expect("put");
        store
            .put_record(
                NS_USERS,
                b"hash",
                &record_texts::encode(RECORD_VERSION, ["!!"]),
            )
            .expect("put");
        store
            .put_record(
                NS_PERMISSIONS,
                &key(&["a", "/"]),
                &record_texts::encode(RECORD_VERSION, ["(", ".*", ".*"]),
            )
            .expect("put");
        store
            .put_record(
                NS_TOPIC_PERMISSIONS,
                &key(&["a", "/"]),
                &record_texts::encode(RECORD_VERSION, [".*", ".*"]),
            )
            .expect("put");
        let stored = load(&store).expect("load");
        assert_eq!(stored.users, vec![alice()]);
        assert!(stored.permissions.is_empty() && stored.topic_permissions.is_empty());
    }
}
