//! The users, permissions and topic permissions of a definitions file: exported from the
//! directory (every user, with its password hash, as RabbitMQ exports them) and imported as
//! run-time entries, which RabbitMQ's import overwrites and so does this one. Entries of the
//! configuration file are never changed by an import: a file that says otherwise is reported.

use std::collections::HashMap;

use rosetta_core::auth::{HashAlgorithm, PasswordHash};
use rosetta_core::store::StoreError;
use serde::Serialize;

use super::format::{Definitions, PermissionDef, TopicPermissionDef, UserDef};
use super::ImportReport;
use crate::accounts::{clean_tags, permission, stored_tags, topic_permission, Accounts, NewUser};

/// The users, permissions and topic permissions of a definitions file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AccountDefs {
    pub users: Vec<UserDef>,
    pub permissions: Vec<PermissionDef>,
    pub topic_permissions: Vec<TopicPermissionDef>,
}

impl AccountDefs {
    /// What `defs` carries of them.
    pub fn of(defs: &Definitions) -> AccountDefs {
        AccountDefs {
            users: defs.users.clone().unwrap_or_default(),
            permissions: defs.permissions.clone().unwrap_or_default(),
            topic_permissions: defs.topic_permissions.clone().unwrap_or_default(),
        }
    }
}

/// Every user (the configuration's and the run-time ones) with its hash, and every permission
/// and topic permission of a user, sorted by name.
pub(crate) fn export(accounts: &Accounts) -> Result<AccountDefs, StoreError> {
    let written = stored_tags(accounts.store)?;
    let contents = accounts.directory.contents();
    let mut users: Vec<UserDef> = contents
        .users
        .iter()
        .map(|(user, tags)| {
            let tags = match written.get(&user.name) {
                Some(written) if !accounts.configured.user(&user.name) => written.clone(),
                _ => tags.iter().map(|t| t.name().to_owned()).collect(),
            };
            UserDef {
                name: user.name.clone(),
                password_hash: user.password.to_string(),
                hashing_algorithm: user.password.algorithm().rabbitmq_name().to_owned(),
                tags,
                limits: serde_json::Map::new(),
            }
        })
        .collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    // A permission must name a user of the file (RabbitMQ refuses the file otherwise), so
    // `anonymous`'s, who is no user, stay out.
    let is_user = |name: &str| contents.users.get(name).is_some();
    let mut permissions: Vec<PermissionDef> = contents
        .permissions
        .iter()
        .filter(|(user, _, _)| is_user(user))
        .map(|(user, vhost, p)| PermissionDef {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            configure: p.configure.as_str().to_owned(),
            write: p.write.as_str().to_owned(),
            read: p.read.as_str().to_owned(),
        })
        .collect();
    permissions.sort_by(|a, b| (&a.vhost, &a.user).cmp(&(&b.vhost, &b.user)));
    let mut topic_permissions: Vec<TopicPermissionDef> = contents
        .permissions
        .topic_iter()
        .filter(|(user, _, _)| is_user(user))
        .map(|(user, vhost, t)| TopicPermissionDef {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            exchange: t.exchange.clone(),
            write: t.write.as_str().to_owned(),
            read: t.read.as_str().to_owned(),
        })
        .collect();
    topic_permissions
        .sort_by(|a, b| (&a.vhost, &a.user, &a.exchange).cmp(&(&b.vhost, &b.user, &b.exchange)));
    Ok(AccountDefs {
        users,
        permissions,
        topic_permissions,
    })
}

/// A user's hash as the file gives it, checked against its `hashing_algorithm`.
fn password(user: &UserDef) -> Result<PasswordHash, String> {
    let algorithm = [HashAlgorithm::Sha256, HashAlgorithm::Sha512]
        .into_iter()
        .find(|a| a.rabbitmq_name() == user.hashing_algorithm)
        .ok_or_else(|| {
            format!(
                "hashing_algorithm '{}' is not supported (rabbit_password_hashing_sha256 or \
                 rabbit_password_hashing_sha512)",
                user.hashing_algorithm
            )
        })?;
    let hash =
        PasswordHash::parse(&user.password_hash).map_err(|e| format!("password_hash {e}"))?;
    if !hash.is_none() && hash.algorithm() != algorithm {
        return Err(format!(
            "password_hash is not a {} hash",
            user.hashing_algorithm
        ));
    }
    Ok(hash)
}

/// Imports the file's users, then its permissions and topic permissions, each as a run-time
/// entry: created when missing, overwritten when it differs, untouched when equal (so a
/// second import writes nothing). An entry of the configuration that the file describes
/// otherwise is reported in `skipped` and left alone.
pub(crate) fn import(accounts: &Accounts, given: &AccountDefs, report: &mut ImportReport) {
    let written: HashMap<String, Vec<String>> = match stored_tags(accounts.store) {
        Ok(written) => written,
        Err(e) => {
            report.errors.push(format!("users: {e}"));
            return;
        }
    };
    for u in &given.users {
        let hash = match password(u) {
            Ok(hash) => hash,
            Err(e) => {
                report.errors.push(format!("user '{}': {e}", u.name));
                continue;
            }
        };
        let tags = clean_tags(u.tags.clone());
        let contents = accounts.directory.contents();
        let configured = accounts.configured.user(&u.name);
        let same = contents
            .users
            .get(&u.name)
            .is_some_and(|(have, have_tags)| {
                let have_tags: Vec<String> = match written.get(&u.name) {
                    Some(written) if !configured => written.clone(),
                    _ => have_tags.iter().map(|t| t.name().to_owned()).collect(),
                };
                have.password == hash && have_tags == tags
            });
        if same {
            continue;
        }
        if configured {
            // A plain-text password of the configuration is hashed with a fresh salt at each
            // start, so its hash differs from any file's even when the password is the same.
            report.skipped.push(format!(
                "user '{}' is defined in the configuration file; left as it is",
                u.name
            ));
            continue;
        }
        let user = NewUser {
            name: u.name.clone(),
            password: Some(hash),
            tags,
        };
        match accounts.put_user(user) {
            Ok((created, epoch)) => {
                report.created.users += usize::from(created);
                report.written(Some(epoch));
            }
            Err(e) => report.errors.push(format!("user '{}': {e}", u.name)),
        }
    }
    for p in &given.permissions {
        let what = format!(
            "permission of user '{}' in virtual host '{}'",
            p.user, p.vhost
        );
        let permission = match permission(&p.configure, &p.write, &p.read) {
            Ok(permission) => permission,
            Err(e) => {
                report.errors.push(format!("{what}: {e}"));
                continue;
            }
        };
        let contents = accounts.directory.contents();
        if contents.permissions.get(&p.user, &p.vhost) == Some(&permission) {
            continue;
        }
        if accounts.configured.permission(&p.user, &p.vhost) {
            report.skipped.push(format!(
                "{what} is defined in the configuration file; left as it is"
            ));
            continue;
        }
        match accounts.put_permission(&p.user, &p.vhost, permission) {
            Ok((created, epoch)) => {
                report.created.permissions += usize::from(created);
                report.written(Some(epoch));
            }
            Err(e) => report.errors.push(format!("{what}: {e}")),
        }
    }
    for t in &given.topic_permissions {
        let what = format!(
            "topic permission of user '{}' for exchange '{}' in virtual host '{}'",
            t.user, t.exchange, t.vhost
        );
        let topic = match topic_permission(&t.exchange, &t.write, &t.read) {
            Ok(topic) => topic,
            Err(e) => {
                report.errors.push(format!("{what}: {e}"));
                continue;
            }
        };
        let contents = accounts.directory.contents();
        if contents.permissions.topic(&t.user, &t.vhost, &t.exchange) == Some(&topic) {
            continue;
        }
        if accounts
            .configured
            .topic_permission(&t.user, &t.vhost, &t.exchange)
        {
            report.skipped.push(format!(
                "{what} is defined in the configuration file; left as it is"
            ));
            continue;
        }
        match accounts.put_topic_permission(&t.user, &t.vhost, topic) {
            Ok((created, epoch)) => {
                report.created.topic_permissions += usize::from(created);
                report.written(Some(epoch));
            }
            Err(e) => report.errors.push(format!("{what}: {e}")),
        }
    }
}
