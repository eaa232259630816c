//! Who may use a virtual host made at run time. The configuration's `[[permissions]]` name
//! configured virtual hosts; one created through the management API (or a definitions import)
//! is opened to the administrator who created it, as RabbitMQ does, with a run-time permission
//! kept in the store like any other (so it can be changed or cleared later), and, while no
//! `[[permissions]]` are configured at all (every user may use every virtual host), to every
//! user. Deleting a virtual host takes its permissions along, stored ones included, so one
//! created again under the same name starts closed.

use rosetta_core::auth::{Directory, Permission};
use rosetta_core::store::Epoch;

use crate::accounts::{self, Accounts, Configured};

/// Gives a virtual host just created its users; the epoch the creator's permission waits for.
pub(crate) fn open(accounts: &Accounts, vhost: &str, creator: Option<&str>) -> Option<Epoch> {
    open_to_everyone(accounts.directory, accounts.configured, vhost);
    match accounts.put_permission(creator?, vhost, Permission::full()) {
        Ok((_, epoch)) => Some(epoch),
        Err(e) => {
            tracing::warn!(vhost, error = %e, "the creator of a virtual host gets no permission on it");
            None
        }
    }
}

/// With implicit permissions, every user that has them may use every virtual host, this one
/// too (users made at run time get only what they are given).
pub(crate) fn open_to_everyone(directory: &Directory, configured: &Configured, vhost: &str) {
    let users = configured.implicit_users();
    if users.is_empty() {
        return;
    }
    directory.update(|c| {
        for user in users {
            c.permissions.set(user, vhost, Permission::full());
        }
    });
}

/// Forgets every permission and topic permission on a deleted virtual host, in the store too;
/// the epoch that removal waits for.
pub(crate) fn close(
    directory: &Directory,
    store: &dyn rosetta_core::store::Store,
    vhost: &str,
) -> Result<Option<Epoch>, rosetta_core::store::StoreError> {
    let epoch = accounts::vhost_deleted(store, vhost)?;
    forget(directory, vhost);
    Ok(epoch)
}

fn forget(directory: &Directory, vhost: &str) {
    directory.update(|c| {
        let users: Vec<String> = c
            .permissions
            .iter()
            .filter(|(_, v, _)| *v == vhost)
            .map(|(u, _, _)| u.to_owned())
            .collect();
        for user in users {
            c.permissions.clear(&user, vhost);
        }
        let topics: Vec<(String, String)> = c
            .permissions
            .topic_iter()
            .filter(|(_, v, _)| *v == vhost)
            .map(|(u, _, t)| (u.to_owned(), t.exchange.clone()))
            .collect();
        for (user, exchange) in topics {
            c.permissions.clear_topic(&user, vhost, &exchange);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rosetta_core::auth::{Permissions, Users};

    fn directory() -> Directory {
        Directory::new(
            Users::default(),
            Permissions::full_access(["alice", "bob"], &["/"]),
        )
    }

    #[test]
    fn implicit_permissions_open_a_new_vhost_to_everyone_and_deletion_closes_it() {
        let d = directory();
        let configured = Configured::of(&d.contents(), true);
        open_to_everyone(&d, &configured, "tenant");
        assert!(d.vhost_access("alice", "tenant") && d.vhost_access("bob", "tenant"));
        forget(&d, "tenant");
        assert!(!d.vhost_access("alice", "tenant") && !d.vhost_access("bob", "tenant"));
        assert!(
            d.vhost_access("alice", "/"),
            "other virtual hosts keep theirs"
        );
    }
}
