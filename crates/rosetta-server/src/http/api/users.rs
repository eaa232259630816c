//! `/api/users`, `/api/whoami`: users listed, created, changed and deleted at run time, in
//! RabbitMQ's shapes. Users of the configuration file are listed with `"configured": true`
//! and cannot be changed here (409). Password hashes are never listed: only a definitions
//! export carries them, as in RabbitMQ's own listings since 3.x they are best kept out of
//! every other answer.

use hyper::StatusCode;
use rosetta_core::auth::{HashAlgorithm, PasswordHash};
use rosetta_core::store::StoreError;
use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::{accounts, error, no_content, ok, refused, Answer, Reply};
use crate::accounts::NewUser;
use crate::definitions::format::tag_list;
use crate::state::ServerState;

/// The body of `PUT /api/users/{name}`. What it leaves out keeps its value for an existing
/// user (a new one gets no password and no tags). Other fields (RabbitMQ's `limits`) are
/// ignored.
#[derive(Deserialize)]
struct UserBody {
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    hashing_algorithm: Option<String>,
    #[serde(default, deserialize_with = "some_tags")]
    tags: Option<Vec<String>>,
}

fn some_tags<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    tag_list(d).map(Some)
}

/// Each user as `[{"name", "tags", "limits", "configured"}]`, sorted by name.
pub(super) fn list(state: &ServerState) -> Reply {
    match users(state) {
        Ok(users) => ok(Json::Array(users)),
        Err(e) => store_error(&e),
    }
}

pub(super) fn one(state: &ServerState, name: &str) -> Reply {
    match users(state) {
        Ok(users) => match users.into_iter().find(|u| u["name"] == name) {
            Some(user) => ok(user),
            None => not_found(name),
        },
        Err(e) => store_error(&e),
    }
}

/// `GET /api/whoami`: the caller's name and tags.
pub(super) fn whoami(state: &ServerState, user: &str) -> Reply {
    match users(state) {
        Ok(users) => match users.into_iter().find(|u| u["name"] == user) {
            Some(found) => ok(json!({ "name": user, "tags": found["tags"] })),
            None => not_found(user),
        },
        Err(e) => store_error(&e),
    }
}

fn not_found(name: &str) -> Reply {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no user '{name}'"),
    )
}

fn store_error(e: &StoreError) -> Reply {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        &e.to_string(),
    )
}

/// Every user in the listings' shape, sorted by name.
fn users(state: &ServerState) -> Result<Vec<Json>, StoreError> {
    let written = crate::accounts::stored_tags(state.broker.store().as_ref())?;
    let contents = state.users.contents();
    let mut users: Vec<Json> = contents
        .users
        .iter()
        .map(|(user, tags)| {
            let configured = state.configured.user(&user.name);
            let tags: Vec<String> = match written.get(&user.name) {
                Some(written) if !configured => written.clone(),
                _ => tags.iter().map(|t| t.name().to_owned()).collect(),
            };
            json!({
                "name": user.name,
                "tags": tags,
                "limits": {},
                "configured": configured,
            })
        })
        .collect();
    users.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(users)
}

/// `PUT /api/users/{name}`: 201 for a new user, 204 for a changed one, once on disk. Open
/// connections of the user are not touched (a new password counts from the next login).
pub(super) fn put(state: &ServerState, name: &str, body: &[u8]) -> Answer {
    let given: UserBody = match serde_json::from_slice(body) {
        Ok(given) => given,
        Err(e) => return bad_request(&format!("invalid JSON body: {e}")).into(),
    };
    let password = match password(&given) {
        Ok(password) => password,
        Err(reason) => return bad_request(&reason).into(),
    };
    let tags = match given.tags {
        Some(tags) => tags,
        None => crate::accounts::stored_tags(state.broker.store().as_ref())
            .ok()
            .and_then(|mut all| all.remove(name))
            .unwrap_or_default(),
    };
    let user = NewUser {
        name: name.to_owned(),
        password,
        tags,
    };
    match accounts(state).put_user(user) {
        Ok((created, epoch)) => Answer {
            reply: created_or_changed(created),
            durable_at: Some(epoch),
            refused_login: false,
        },
        Err(e) => refused(&e).into(),
    }
}

/// The password a body gives: `password` hashed, or `password_hash` read (RabbitMQ's
/// SHA-256 scheme only); `None` when it gives neither.
fn password(given: &UserBody) -> Result<Option<PasswordHash>, String> {
    const SHA256: &str = "rabbit_password_hashing_sha256";
    if let Some(algorithm) = given.hashing_algorithm.as_deref() {
        if algorithm != SHA256 {
            return Err(format!(
                "hashing_algorithm '{algorithm}' is not supported; only {SHA256} is"
            ));
        }
    }
    match (&given.password, &given.password_hash) {
        (Some(_), Some(_)) => Err("give either password or password_hash, not both".into()),
        (Some(plain), None) if plain.is_empty() => Err(
            "a blank password never logs in; leave password out, or set password_hash to \"\" \
             for a user without one"
                .into(),
        ),
        (Some(plain), None) => Ok(Some(PasswordHash::new(plain))),
        (None, Some(hash)) => match PasswordHash::parse(hash) {
            Ok(parsed) if parsed.is_none() || parsed.algorithm() == HashAlgorithm::Sha256 => {
                Ok(Some(parsed))
            }
            Ok(_) => Err(format!(
                "password_hash is not a {SHA256} hash (it has the length of a SHA-512 one)"
            )),
            Err(e) => Err(format!("password_hash: {e}")),
        },
        (None, None) => Ok(None),
    }
}

/// `DELETE /api/users/{name}`: the user and its permissions go, its connections are closed
/// (AMQP 320 CONNECTION_FORCED, MQTT and STOMP closed); 204 once on disk.
pub(super) fn delete(state: &ServerState, name: &str) -> Answer {
    match accounts(state).delete_user(name) {
        Ok(epoch) => {
            let closed = state.connections.evict_user(name);
            if closed > 0 {
                tracing::info!(
                    user = name,
                    connections = closed,
                    "closing the deleted user's connections"
                );
            }
            Answer {
                reply: no_content(),
                durable_at: Some(epoch),
                refused_login: false,
            }
        }
        Err(e) => refused(&e).into(),
    }
}

pub(super) fn bad_request(reason: &str) -> Reply {
    error(StatusCode::BAD_REQUEST, "bad_request", reason)
}

/// 201 for something new, 204 for a change, as RabbitMQ answers a PUT.
pub(super) fn created_or_changed(created: bool) -> Reply {
    let mut reply = no_content();
    if created {
        *reply.status_mut() = StatusCode::CREATED;
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> UserBody {
        serde_json::from_str(json).expect("body")
    }

    #[test]
    fn passwords_come_plain_or_as_a_sha256_hash_only() {
        let plain = password(&body(r#"{"password": "s3cret"}"#)).expect("ok");
        assert!(plain.expect("some").verify("s3cret"));
        let hash = r#"{"password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
                       "hashing_algorithm": "rabbit_password_hashing_sha256"}"#;
        assert!(password(&body(hash))
            .expect("ok")
            .expect("some")
            .verify("test12"));
        let sha512 =
            r#"{"password_hash": "x", "hashing_algorithm": "rabbit_password_hashing_sha512"}"#;
        let refused = password(&body(sha512)).expect_err("sha512");
        assert!(
            refused.contains("rabbit_password_hashing_sha512"),
            "{refused}"
        );
        assert!(password(&body(r#"{"password": "a", "password_hash": ""}"#)).is_err());
        assert!(password(&body(r#"{"password": ""}"#)).is_err());
        assert!(password(&body(r#"{"password_hash": "!!"}"#)).is_err());
        assert!(password(&body(r#"{"password_hash": ""}"#))
            .expect("ok")
            .expect("some")
            .is_none());
        assert!(password(&body(r#"{"tags": "administrator"}"#))
            .expect("ok")
            .is_none());
    }
}
