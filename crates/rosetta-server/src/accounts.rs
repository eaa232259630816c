//! Users, permissions and topic permissions changed at run time, through the management API or
//! a definitions import, beside those of the configuration file.
//!
//! The rule: an entry defined in `broker.toml` (a `[[users]]` table, the administrator from the
//! environment, a `[[permissions]]` or `[[topic_permissions]]` table) is read-only at run time,
//! since the file would bring it back at the next start; everything else is a run-time entry,
//! kept in the store (`rosetta_core::auth::records`) and loaded into the directory at startup.
//! A change is written to the store first, then made in the directory, so a reader never sees
//! what would be lost by a crash before the fsync the caller waits for.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use rosetta_core::auth::records::{self, StoredUser};
use rosetta_core::auth::{
    Contents, Directory, PasswordHash, Pattern, Permission, Tag, TopicPermission, User,
};
use rosetta_core::store::{Epoch, Store, StoreError};
use rosetta_core::Broker;

/// What the configuration file defines, which the API may not change.
#[derive(Debug, Clone, Default)]
pub(crate) struct Configured {
    users: HashSet<String>,
    /// (user, vhost).
    permissions: HashSet<(String, String)>,
    /// (user, vhost, exchange).
    topic_permissions: HashSet<(String, String, String)>,
    /// With implicit permissions, the users who have them (the configuration's, and
    /// `anonymous` when MQTT allows it): a virtual host made at run time is theirs too.
    implicit_users: Vec<String>,
}

impl Configured {
    /// The entries of a directory built from the configuration alone. With implicit
    /// permissions (no `[[permissions]]` at all) the full permissions every user was given
    /// are not in the file, so they are not read-only.
    pub fn of(contents: &Contents, implicit_permissions: bool) -> Configured {
        let mut configured = Configured {
            users: contents.users.iter().map(|(u, _)| u.name.clone()).collect(),
            ..Configured::default()
        };
        let holders = contents
            .permissions
            .iter()
            .map(|(u, v, _)| (u.to_owned(), v.to_owned()));
        if implicit_permissions {
            let mut users: Vec<String> = holders.map(|(u, _)| u).collect();
            users.sort();
            users.dedup();
            configured.implicit_users = users;
        } else {
            configured.permissions = holders.collect();
        }
        configured.topic_permissions = contents
            .permissions
            .topic_iter()
            .map(|(u, v, t)| (u.to_owned(), v.to_owned(), t.exchange.clone()))
            .collect();
        configured
    }

    pub fn implicit_users(&self) -> &[String] {
        &self.implicit_users
    }

    pub fn user(&self, name: &str) -> bool {
        self.users.contains(name)
    }

    pub fn permission(&self, user: &str, vhost: &str) -> bool {
        self.permissions
            .contains(&(user.to_owned(), vhost.to_owned()))
    }

    pub fn topic_permission(&self, user: &str, vhost: &str, exchange: &str) -> bool {
        self.topic_permissions
            .contains(&(user.to_owned(), vhost.to_owned(), exchange.to_owned()))
    }

    /// Whether any topic permission of `user` in `vhost` is configured.
    fn any_topic_permission(&self, user: &str, vhost: &str) -> bool {
        self.topic_permissions
            .iter()
            .any(|(u, v, _)| u == user && v == vhost)
    }
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// The entry is defined in the configuration file (409).
    #[error("{0} is defined in the configuration file")]
    Configured(String),
    /// The request names something that does not exist or is not valid (400).
    #[error("{0}")]
    Invalid(String),
    /// Nothing to delete (404).
    #[error("{0}")]
    NotFound(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// The run-time side of the directory: the store it is kept in and what may not change.
#[derive(Clone, Copy)]
pub(crate) struct Accounts<'a> {
    pub directory: &'a Directory,
    pub store: &'a dyn Store,
    pub broker: &'a Broker,
    pub configured: &'a Configured,
}

/// A user as an operator gives it: its password hash and its tags as written.
pub(crate) struct NewUser {
    pub name: String,
    /// `None` keeps an existing user's password (a new user gets none, and can log in only
    /// with a client certificate, as in RabbitMQ).
    pub password: Option<PasswordHash>,
    pub tags: Vec<String>,
}

/// The tags the broker acts on; others (RabbitMQ's `policymaker`, `impersonator`, any word)
/// are kept for exports but give no rights here.
pub(crate) fn known_tags(tags: &[String]) -> Vec<Tag> {
    let mut known: Vec<Tag> = tags.iter().filter_map(|t| Tag::from_name(t)).collect();
    known.dedup();
    known
}

/// Tags as an operator writes them: `none` and empty words stand for no tag.
pub(crate) fn clean_tags(tags: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for tag in tags {
        let tag = tag.trim().to_owned();
        if !tag.is_empty() && tag != "none" && !out.contains(&tag) {
            out.push(tag);
        }
    }
    out
}

/// A permission pattern, or the 400 naming the field whose regular expression does not compile.
fn pattern(field: &str, source: &str) -> Result<Pattern, Refused> {
    Pattern::new(source)
        .map_err(|e| Refused::Invalid(format!("invalid regular expression in '{field}': {e}")))
}

/// A permission from its three patterns as written.
pub(crate) fn permission(configure: &str, write: &str, read: &str) -> Result<Permission, Refused> {
    Ok(Permission {
        configure: pattern("configure", configure)?,
        write: pattern("write", write)?,
        read: pattern("read", read)?,
    })
}

/// A topic permission from its exchange and two patterns as written.
pub(crate) fn topic_permission(
    exchange: &str,
    write: &str,
    read: &str,
) -> Result<TopicPermission, Refused> {
    Ok(TopicPermission {
        exchange: exchange.to_owned(),
        write: pattern("write", write)?,
        read: pattern("read", read)?,
    })
}

/// RabbitMQ's rule for a user nobody configured: only `guest` is confined to loopback.
fn core_user(name: &str, password: PasswordHash) -> User {
    User {
        name: name.to_owned(),
        password,
        loopback_only: name == "guest",
    }
}

/// Loads the stored run-time entries into `directory`, which holds the configuration's. A
/// stored entry that the configuration now defines too (added to the file since) is left out:
/// the file wins. A permission whose user or virtual host no longer exists is left out too.
pub(crate) fn load(
    directory: &Directory,
    store: &dyn Store,
    broker: &Broker,
    configured: &Configured,
) -> Result<(), StoreError> {
    let stored = records::load(store)?;
    let (mut users, mut permissions, mut topics) = (0, 0, 0);
    directory.update(|c| {
        for u in stored.users {
            if configured.user(&u.name) {
                tracing::warn!(user = %u.name, "a stored user is also in the configuration file, which wins");
                continue;
            }
            let tags = known_tags(&u.tags);
            c.users.upsert(core_user(&u.name, u.password), tags);
            users += 1;
        }
        let usable = |c: &Contents, user: &str, vhost: &str| {
            c.users.get(user).is_some() && broker.vhost(vhost).is_some()
        };
        for p in stored.permissions {
            if configured.permission(&p.user, &p.vhost) || !usable(c, &p.user, &p.vhost) {
                continue;
            }
            c.permissions.set(&p.user, &p.vhost, p.permission);
            permissions += 1;
        }
        for t in stored.topic_permissions {
            let exchange = t.topic.exchange.as_str();
            if configured.topic_permission(&t.user, &t.vhost, exchange)
                || !usable(c, &t.user, &t.vhost)
            {
                continue;
            }
            c.permissions.set_topic(&t.user, &t.vhost, t.topic);
            topics += 1;
        }
    });
    if users + permissions + topics > 0 {
        tracing::info!(
            users,
            permissions,
            topic_permissions = topics,
            "run-time users and permissions loaded"
        );
    }
    Ok(())
}

/// Held while users or permissions change: a permission set while its user is deleted must
/// not outlive the user in the store (and come back with a user of the same name).
static CHANGES: Mutex<()> = Mutex::new(());

fn one_change_at_a_time() -> MutexGuard<'static, ()> {
    // Nothing is left half-done under the lock: a panic cannot break an invariant it guards.
    CHANGES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Accounts<'_> {
    fn not_configured_user(&self, name: &str) -> Result<(), Refused> {
        if self.configured.user(name) {
            return Err(Refused::Configured(format!("user '{name}'")));
        }
        Ok(())
    }

    fn existing(&self, user: &str, vhost: &str) -> Result<(), Refused> {
        if self.directory.contents().users.get(user).is_none() {
            return Err(Refused::Invalid(format!("no user '{user}'")));
        }
        if self.broker.vhost(vhost).is_none() {
            return Err(Refused::Invalid(format!("no virtual host '{vhost}'")));
        }
        Ok(())
    }

    /// Creates or replaces a run-time user; whether it is new, and the epoch to wait for.
    pub fn put_user(&self, user: NewUser) -> Result<(bool, Epoch), Refused> {
        let _changing = one_change_at_a_time();
        self.not_configured_user(&user.name)?;
        if user.name.is_empty() {
            return Err(Refused::Invalid("a user needs a name".into()));
        }
        let current = self.directory.contents();
        let existing = current
            .users
            .get(&user.name)
            .map(|(u, _)| u.password.clone());
        let created = existing.is_none();
        let password = user
            .password
            .or(existing)
            .unwrap_or_else(PasswordHash::none);
        let tags = clean_tags(user.tags);
        let stored = StoredUser {
            name: user.name,
            password,
            tags,
        };
        let epoch = records::put_user(self.store, &stored)?;
        let known = known_tags(&stored.tags);
        self.directory.update(|c| {
            c.users
                .upsert(core_user(&stored.name, stored.password), known)
        });
        tracing::info!(user = %stored.name, created, "user saved");
        Ok((created, epoch))
    }

    /// Deletes a run-time user with its permissions. Its connections are the caller's to close.
    pub fn delete_user(&self, name: &str) -> Result<Epoch, Refused> {
        let _changing = one_change_at_a_time();
        self.not_configured_user(name)?;
        if self.directory.contents().users.get(name).is_none() {
            return Err(Refused::NotFound(format!("no user '{name}'")));
        }
        let epoch = records::delete_user(self.store, name)?;
        self.directory.update(|c| {
            c.users.remove(name);
            let vhosts: Vec<String> = c
                .permissions
                .iter()
                .filter(|(u, _, _)| *u == name)
                .map(|(_, v, _)| v.to_owned())
                .collect();
            for vhost in vhosts {
                c.permissions.clear(name, &vhost);
            }
            let topics: Vec<(String, String)> = c
                .permissions
                .topic_iter()
                .filter(|(u, _, _)| *u == name)
                .map(|(_, v, t)| (v.to_owned(), t.exchange.clone()))
                .collect();
            for (vhost, exchange) in topics {
                c.permissions.clear_topic(name, &vhost, &exchange);
            }
        });
        tracing::info!(user = name, "user deleted");
        Ok(epoch)
    }

    /// Sets `user`'s permission in `vhost`; whether it is new.
    pub fn put_permission(
        &self,
        user: &str,
        vhost: &str,
        permission: Permission,
    ) -> Result<(bool, Epoch), Refused> {
        let _changing = one_change_at_a_time();
        if self.configured.permission(user, vhost) {
            return Err(Refused::Configured(format!(
                "the permission of user '{user}' in virtual host '{vhost}'"
            )));
        }
        self.existing(user, vhost)?;
        let epoch = records::put_permission(self.store, user, vhost, &permission)?;
        let created = self.directory.update(|c| {
            let created = c.permissions.get(user, vhost).is_none();
            c.permissions.set(user, vhost, permission);
            created
        });
        tracing::info!(user, vhost, "permission set");
        Ok((created, epoch))
    }

    pub fn delete_permission(&self, user: &str, vhost: &str) -> Result<Epoch, Refused> {
        let _changing = one_change_at_a_time();
        if self.configured.permission(user, vhost) {
            return Err(Refused::Configured(format!(
                "the permission of user '{user}' in virtual host '{vhost}'"
            )));
        }
        if self
            .directory
            .contents()
            .permissions
            .get(user, vhost)
            .is_none()
        {
            return Err(Refused::NotFound(format!(
                "no permission of user '{user}' in virtual host '{vhost}'"
            )));
        }
        let epoch = records::delete_permission(self.store, user, vhost)?;
        self.directory.update(|c| c.permissions.clear(user, vhost));
        tracing::info!(user, vhost, "permission cleared");
        Ok(epoch)
    }

    /// Sets `user`'s topic permission for `topic.exchange` in `vhost`; whether it is new.
    pub fn put_topic_permission(
        &self,
        user: &str,
        vhost: &str,
        topic: TopicPermission,
    ) -> Result<(bool, Epoch), Refused> {
        let _changing = one_change_at_a_time();
        if self
            .configured
            .topic_permission(user, vhost, &topic.exchange)
        {
            return Err(Refused::Configured(format!(
                "the topic permission of user '{user}' for exchange '{}' in virtual host '{vhost}'",
                topic.exchange
            )));
        }
        self.existing(user, vhost)?;
        let epoch = records::put_topic_permission(self.store, user, vhost, &topic)?;
        let created = self.directory.update(|c| {
            let created = c.permissions.topic(user, vhost, &topic.exchange).is_none();
            c.permissions.set_topic(user, vhost, topic);
            created
        });
        tracing::info!(user, vhost, "topic permission set");
        Ok((created, epoch))
    }

    /// Deletes every topic permission of `user` in `vhost`.
    pub fn delete_topic_permissions(&self, user: &str, vhost: &str) -> Result<Epoch, Refused> {
        let _changing = one_change_at_a_time();
        if self.configured.any_topic_permission(user, vhost) {
            return Err(Refused::Configured(format!(
                "a topic permission of user '{user}' in virtual host '{vhost}'"
            )));
        }
        let exchanges: Vec<String> = self
            .directory
            .contents()
            .permissions
            .topic_iter()
            .filter(|(u, v, _)| *u == user && *v == vhost)
            .map(|(_, _, t)| t.exchange.clone())
            .collect();
        if exchanges.is_empty() {
            return Err(Refused::NotFound(format!(
                "no topic permission of user '{user}' in virtual host '{vhost}'"
            )));
        }
        let epoch = records::delete_topic_permissions(self.store, user, vhost)?;
        self.directory.update(|c| {
            for exchange in &exchanges {
                c.permissions.clear_topic(user, vhost, exchange);
            }
        });
        tracing::info!(user, vhost, "topic permissions cleared");
        Ok(epoch)
    }
}

/// Forgets the stored permissions on a deleted virtual host (the directory's go with
/// `vhost_access::close`).
pub(crate) fn vhost_deleted(store: &dyn Store, vhost: &str) -> Result<Option<Epoch>, StoreError> {
    let _changing = one_change_at_a_time();
    records::delete_vhost(store, vhost)
}

/// The tags of every run-time user as written (the directory keeps only those it acts on).
pub(crate) fn stored_tags(
    store: &dyn Store,
) -> Result<std::collections::HashMap<String, Vec<String>>, StoreError> {
    Ok(records::load(store)?
        .users
        .into_iter()
        .map(|u| (u.name, u.tags))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rosetta_core::auth::{Permissions, Users};
    use std::sync::Arc;

    fn setup(data: &std::path::Path) -> (Arc<Broker>, Directory, Configured) {
        let store: Arc<dyn Store> = Arc::new(rosetta_store::SledStore::open(data).expect("store"));
        let broker = Broker::open(store, &["/".to_owned()], Default::default()).expect("broker");
        let users = Users::tagged(vec![(
            core_user("admin", "pw".into()),
            vec![Tag::Administrator],
        )]);
        let directory = Directory::new(users, Permissions::full_access(["admin"], &["/"]));
        let configured = Configured::of(&directory.contents(), false);
        (broker, directory, configured)
    }

    #[test]
    fn configured_entries_are_refused_and_runtime_ones_come_back_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (broker, directory, configured) = setup(dir.path());
        let store = broker.store().as_ref();
        let accounts = Accounts {
            directory: &directory,
            store,
            broker: &broker,
            configured: &configured,
        };
        let admin = NewUser {
            name: "admin".into(),
            password: Some("x".into()),
            tags: vec![],
        };
        assert!(matches!(
            accounts.put_user(admin),
            Err(Refused::Configured(_))
        ));
        assert!(matches!(
            accounts.put_permission("admin", "/", Permission::full()),
            Err(Refused::Configured(_))
        ));
        let bob = NewUser {
            name: "bob".into(),
            password: Some("s3cret".into()),
            tags: vec!["monitoring".into(), "policymaker".into(), "none".into()],
        };
        assert!(accounts.put_user(bob).expect("bob").0);
        assert!(matches!(
            accounts.put_permission("bob", "nowhere", Permission::full()),
            Err(Refused::Invalid(_))
        ));
        assert!(
            accounts
                .put_permission("bob", "/", Permission::full())
                .expect("perm")
                .0
        );
        assert_eq!(directory.tags("bob"), vec![Tag::Monitoring]);

        // A fresh directory from the same configuration, as at the next start.
        let restarted = Directory::new(
            Users::tagged(vec![(
                core_user("admin", "pw".into()),
                vec![Tag::Administrator],
            )]),
            Permissions::full_access(["admin"], &["/"]),
        );
        load(&restarted, store, &broker, &configured).expect("load");
        let local = "127.0.0.1".parse().expect("ip");
        assert!(restarted.check("bob", "s3cret", local).is_ok());
        assert!(restarted.vhost_access("bob", "/"));
        assert_eq!(
            stored_tags(store).expect("tags")["bob"],
            vec!["monitoring".to_owned(), "policymaker".to_owned()]
        );

        accounts.delete_user("bob").expect("delete");
        assert!(!directory.vhost_access("bob", "/"));
        let again = Directory::new(Users::default(), Permissions::default());
        load(&again, store, &broker, &configured).expect("load");
        assert!(again.contents().users.get("bob").is_none());
        assert!(matches!(
            accounts.delete_user("bob"),
            Err(Refused::NotFound(_))
        ));
    }
}
