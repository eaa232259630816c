//! `/api/permissions`, `/api/topic-permissions` and `/api/users/{name}/permissions`: who may
//! do what in which virtual host, set and cleared at run time in RabbitMQ's shapes. Entries of
//! the configuration file are listed with `"configured": true` and cannot be changed here
//! (409). A change applies to open connections at their next operation.

use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::users::{bad_request, created_or_changed};
use super::{accounts, error, no_content, ok, refused, Answer, Reply};
use crate::accounts::{permission, topic_permission};
use crate::state::ServerState;

#[derive(Deserialize)]
struct PermissionBody {
    configure: String,
    write: String,
    read: String,
}

#[derive(Deserialize)]
struct TopicBody {
    exchange: String,
    write: String,
    read: String,
}

/// Which entries a listing shows.
#[derive(Clone, Copy)]
pub(super) struct Only<'a> {
    pub user: Option<&'a str>,
    pub vhost: Option<&'a str>,
}

impl Only<'_> {
    fn admits(&self, user: &str, vhost: &str) -> bool {
        self.user.is_none_or(|u| u == user) && self.vhost.is_none_or(|v| v == vhost)
    }
}

/// Permissions as `[{"user", "vhost", "configure", "write", "read", "configured"}]`, sorted by
/// virtual host and user.
pub(super) fn list(state: &ServerState, only: Only) -> Vec<Json> {
    let contents = state.users.contents();
    let mut all: Vec<Json> = contents
        .permissions
        .iter()
        .filter(|(user, vhost, _)| only.admits(user, vhost))
        .map(|(user, vhost, p)| {
            json!({
                "user": user,
                "vhost": vhost,
                "configure": p.configure.as_str(),
                "write": p.write.as_str(),
                "read": p.read.as_str(),
                "configured": state.configured.permission(user, vhost),
            })
        })
        .collect();
    all.sort_by_key(sort_key);
    all
}

/// Topic permissions as `[{"user", "vhost", "exchange", "write", "read", "configured"}]`.
pub(super) fn topic_list(state: &ServerState, only: Only) -> Vec<Json> {
    let contents = state.users.contents();
    let mut all: Vec<Json> = contents
        .permissions
        .topic_iter()
        .filter(|(user, vhost, _)| only.admits(user, vhost))
        .map(|(user, vhost, t)| {
            json!({
                "user": user,
                "vhost": vhost,
                "exchange": t.exchange,
                "write": t.write.as_str(),
                "read": t.read.as_str(),
                "configured": state.configured.topic_permission(user, vhost, &t.exchange),
            })
        })
        .collect();
    all.sort_by_key(sort_key);
    all
}

fn sort_key(j: &Json) -> (String, String, String) {
    let text = |k: &str| j[k].as_str().unwrap_or("").to_owned();
    (text("vhost"), text("user"), text("exchange"))
}

/// `GET /api/permissions/{vhost}/{user}`: the one entry, 404 without one.
pub(super) fn one(state: &ServerState, vhost: &str, user: &str) -> Reply {
    let only = Only {
        user: Some(user),
        vhost: Some(vhost),
    };
    match list(state, only).into_iter().next() {
        Some(p) => ok(p),
        None => error(
            hyper::StatusCode::NOT_FOUND,
            "not_found",
            &format!("no permission of user '{user}' in virtual host '{vhost}'"),
        ),
    }
}

/// `GET /api/topic-permissions/{vhost}/{user}`: the user's topic permissions there, a list
/// (one per exchange), 404 without any.
pub(super) fn topic_one(state: &ServerState, vhost: &str, user: &str) -> Reply {
    let only = Only {
        user: Some(user),
        vhost: Some(vhost),
    };
    let found = topic_list(state, only);
    if found.is_empty() {
        return error(
            hyper::StatusCode::NOT_FOUND,
            "not_found",
            &format!("no topic permission of user '{user}' in virtual host '{vhost}'"),
        );
    }
    ok(Json::Array(found))
}

/// `PUT /api/permissions/{vhost}/{user}`: 201 new, 204 changed; 400 for a pattern that does
/// not compile, or a user or virtual host that does not exist.
pub(super) fn put(state: &ServerState, vhost: &str, user: &str, body: &[u8]) -> Answer {
    let given: PermissionBody = match serde_json::from_slice(body) {
        Ok(given) => given,
        Err(e) => return bad_request(&format!("invalid JSON body: {e}")).into(),
    };
    let permission = permission(&given.configure, &given.write, &given.read);
    let result = permission.and_then(|p| accounts(state).put_permission(user, vhost, p));
    changed(result)
}

pub(super) fn delete(state: &ServerState, vhost: &str, user: &str) -> Answer {
    deleted(accounts(state).delete_permission(user, vhost))
}

/// `PUT /api/topic-permissions/{vhost}/{user}`: sets the entry for the body's `exchange`.
pub(super) fn topic_put(state: &ServerState, vhost: &str, user: &str, body: &[u8]) -> Answer {
    let given: TopicBody = match serde_json::from_slice(body) {
        Ok(given) => given,
        Err(e) => return bad_request(&format!("invalid JSON body: {e}")).into(),
    };
    let topic = topic_permission(&given.exchange, &given.write, &given.read);
    let result = topic.and_then(|t| accounts(state).put_topic_permission(user, vhost, t));
    changed(result)
}

/// `DELETE /api/topic-permissions/{vhost}/{user}`: every topic permission of the user there.
pub(super) fn topic_delete(state: &ServerState, vhost: &str, user: &str) -> Answer {
    deleted(accounts(state).delete_topic_permissions(user, vhost))
}

fn changed(result: Result<(bool, rosetta_core::store::Epoch), crate::accounts::Refused>) -> Answer {
    match result {
        Ok((created, epoch)) => Answer {
            reply: created_or_changed(created),
            durable_at: Some(epoch),
            refused_login: false,
        },
        Err(e) => refused(&e).into(),
    }
}

fn deleted(result: Result<rosetta_core::store::Epoch, crate::accounts::Refused>) -> Answer {
    match result {
        Ok(epoch) => Answer {
            reply: no_content(),
            durable_at: Some(epoch),
            refused_login: false,
        },
        Err(e) => refused(&e).into(),
    }
}
