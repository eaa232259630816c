//! The JSON management API under `/api/`, every request authenticated with HTTP basic auth
//! against the configured users. Field names follow RabbitMQ's management API where one exists,
//! so existing scripts need few changes. docs/operations.md lists the endpoints. Virtual hosts
//! (`vhosts`) and definitions (`definitions`) have a file each; the rest is here.
//!
//! Handlers run on the blocking pool, as they may walk every queue of a large broker. A reply
//! that confirms a durable change (a deleted durable queue) then waits for the store's durable
//! point without holding a thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, WWW_AUTHENTICATE};
use hyper::http::request::Parts;
use hyper::{Method, StatusCode};
use rosetta_core::auth::Tag;
use rosetta_core::durable;
use rosetta_core::store::Epoch;
use rosetta_core::{CoreError, Queue, VHost};
use serde_json::{json, Value as Json};

use super::auth::{authenticate, Denied};
use super::totals::{exchange_count, walk_queues};
use super::{internal_error, respond, Reply};
use crate::accounts::{Accounts, Refused};
use crate::definitions::arguments::table_json;
use crate::state::ServerState;

mod definitions;
mod permissions;
mod users;
mod vhosts;

/// How long a reply waits for its change to reach the disk before the caller hears 503 instead:
/// a failing disk must not hold the request, and with it the broker's shutdown (which lets
/// requests finish), for ever.
const DURABLE_WAIT: Duration = Duration::from_secs(10);

/// What a path allows, decided before authentication so that a wrong method is a 405 only for
/// callers who may know the endpoint exists.
const READ: &str = "GET, HEAD";
const READ_DELETE: &str = "GET, HEAD, DELETE";
const DELETE: &str = "DELETE";
const READ_PUT_DELETE: &str = "GET, HEAD, PUT, DELETE";
const READ_POST: &str = "GET, HEAD, POST";

/// A reply, and the store epoch it must wait for when it confirms a durable change.
struct Answer {
    reply: Reply,
    durable_at: Option<Epoch>,
    /// The credentials were wrong: counted, and answered after the failed-login delay.
    refused_login: bool,
}

impl From<Reply> for Answer {
    fn from(reply: Reply) -> Self {
        Answer {
            reply,
            refused_login: false,
            durable_at: None,
        }
    }
}

/// Answers one request: handled on the blocking pool, then sent once what it confirms is on
/// disk. A store that closes or stays behind meanwhile turns the reply into a 503, since the
/// change may not survive a crash.
pub(crate) async fn serve(
    state: Arc<ServerState>,
    peer: SocketAddr,
    request: Parts,
    body: Bytes,
) -> Reply {
    let store = state.broker.store().clone();
    let handler_state = state.clone();
    let handler = move || handle(&handler_state, peer, &request, &body);
    let answer = match tokio::task::spawn_blocking(handler).await {
        Ok(answer) => answer,
        Err(e) => return internal_error(&e),
    };
    if answer.refused_login {
        // As for client connections: guessing passwords through the API is as slow.
        state.metrics.auth_failures("http", 1);
        tokio::time::sleep(state.failed_login_delay).await;
        return answer.reply;
    }
    let Some(epoch) = answer.durable_at else {
        return answer.reply;
    };
    match tokio::time::timeout(DURABLE_WAIT, durable::reached(store.as_ref(), epoch)).await {
        Ok(Ok(())) => answer.reply,
        Ok(Err(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &e.to_string(),
        ),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &format!("the change is made but not yet on disk after {DURABLE_WAIT:?}"),
        ),
    }
}

/// Whether a `/metrics` request may be answered when `[http] metrics_auth` is on: basic auth
/// of a user with any management tag. A refused password waits out the failed-login delay.
pub(crate) async fn may_scrape(state: &ServerState, peer: SocketAddr, request: &Parts) -> bool {
    match authenticate(&state.users, &request.headers, peer) {
        Ok(user) => !state.users.tags(&user).is_empty(),
        Err(Denied::Missing) => false,
        Err(Denied::Refused(_)) => {
            state.metrics.auth_failures("http", 1);
            tokio::time::sleep(state.failed_login_delay).await;
            false
        }
    }
}

/// Whether the request is one whose body the API reads (`PUT`, `POST`) from an administrator.
/// The request is authenticated again, and answered, by [`serve`].
pub(crate) fn takes_body(state: &ServerState, peer: SocketAddr, request: &Parts) -> bool {
    (request.method == Method::PUT || request.method == Method::POST)
        && authenticate(&state.users, &request.headers, peer)
            .is_ok_and(|user| state.users.tags(&user).contains(&Tag::Administrator))
}

/// The answer to a `/metrics` request [`may_scrape`] refused.
pub(crate) fn scrape_refused() -> Reply {
    unauthorized(Denied::Missing)
}

fn handle(state: &ServerState, peer: SocketAddr, request: &Parts, body: &[u8]) -> Answer {
    let user = match authenticate(&state.users, &request.headers, peer) {
        Ok(user) => user,
        Err(denied) => {
            return Answer {
                refused_login: matches!(denied, Denied::Refused(_)),
                ..unauthorized(denied).into()
            }
        }
    };
    let tags = state.users.tags(&user);
    let Some(segments) = segments(request.uri.path()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "path segments must be percent-encoded UTF-8",
        )
        .into();
    };
    let path: Vec<&str> = segments.iter().map(String::as_str).collect();
    let Some(allowed) = allowed_methods(&path) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such endpoint").into();
    };
    let method = if request.method == Method::HEAD {
        Method::GET
    } else {
        request.method.clone()
    };
    if !allowed.split(", ").any(|m| m == method.as_str()) {
        let mut reply = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("allowed: {allowed}"),
        );
        reply
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allowed));
        return reply.into();
    }
    if let Err(reason) = authorise(&tags, &method, &path) {
        // RabbitMQ answers these with 401 and the same texts, which clients match on.
        return error(StatusCode::UNAUTHORIZED, "not_authorised", reason).into();
    }
    let query = request.uri.query().unwrap_or("");
    let reply = match (method, path.as_slice()) {
        (Method::GET, ["overview"]) => ok(overview(state)),
        (Method::GET, ["queues"]) => ok(queues(state, None)),
        (Method::GET, ["queues", vhost]) => {
            with_vhost(state, vhost, |_| ok(queues(state, Some(vhost))))
        }
        (Method::GET, ["queues", vhost, name]) => {
            with_queue(state, vhost, name, |_, queue| ok(queue_json(vhost, queue)))
        }
        (Method::DELETE, ["queues", vhost, name]) => {
            return delete_queue(state, vhost, name, query)
        }
        (Method::DELETE, ["queues", vhost, name, "contents"]) => purge_queue(state, vhost, name),
        (Method::GET, ["exchanges"]) => ok(exchanges(state, None)),
        (Method::GET, ["exchanges", vhost]) => {
            with_vhost(state, vhost, |_| ok(exchanges(state, Some(vhost))))
        }
        (Method::GET, ["connections"]) => ok(connections(state)),
        (Method::GET, ["vhosts"]) => ok(vhosts::list(state)),
        (Method::GET, ["vhosts", name]) => vhosts::one(state, name),
        (Method::PUT, ["vhosts", name]) => return vhosts::put(state, &user, name, body),
        (Method::DELETE, ["vhosts", name]) => return vhosts::delete(state, name),
        (Method::GET, ["whoami"]) => users::whoami(state, &user),
        (Method::GET, ["users"]) => users::list(state),
        (Method::GET, ["users", name]) => users::one(state, name),
        (Method::PUT, ["users", name]) => return users::put(state, name, body),
        (Method::DELETE, ["users", name]) => return users::delete(state, name),
        (Method::GET, ["users", name, "permissions"]) => ok(Json::Array(permissions::list(
            state,
            permissions::Only {
                user: Some(name),
                vhost: None,
            },
        ))),
        (Method::GET, ["users", name, "topic-permissions"]) => {
            ok(Json::Array(permissions::topic_list(
                state,
                permissions::Only {
                    user: Some(name),
                    vhost: None,
                },
            )))
        }
        (Method::GET, ["permissions"]) => ok(Json::Array(permissions::list(state, EVERY))),
        (Method::GET, ["permissions", vhost, name]) => permissions::one(state, vhost, name),
        (Method::PUT, ["permissions", vhost, name]) => {
            return permissions::put(state, vhost, name, body)
        }
        (Method::DELETE, ["permissions", vhost, name]) => {
            return permissions::delete(state, vhost, name)
        }
        (Method::GET, ["topic-permissions"]) => {
            ok(Json::Array(permissions::topic_list(state, EVERY)))
        }
        (Method::GET, ["topic-permissions", vhost, name]) => {
            permissions::topic_one(state, vhost, name)
        }
        (Method::PUT, ["topic-permissions", vhost, name]) => {
            return permissions::topic_put(state, vhost, name, body)
        }
        (Method::DELETE, ["topic-permissions", vhost, name]) => {
            return permissions::topic_delete(state, vhost, name)
        }
        (Method::GET, ["definitions"]) => definitions::export(state, None),
        (Method::GET, ["definitions", vhost]) => definitions::export(state, Some(vhost)),
        (Method::POST, ["definitions"]) => return definitions::import(state, &user, None, body),
        (Method::POST, ["definitions", vhost]) => {
            return definitions::import(state, &user, Some(vhost), body)
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    };
    reply.into()
}

/// What the user's tags allow, as RabbitMQ's management plugin decides it: `monitoring` and
/// `management` read, `administrator` also changes; a user without any of them has no API.
/// (`management` is meant to see only its own virtual hosts; it reads them all here.)
/// Definitions, users and permissions describe who may do what: reading them takes an
/// administrator too, as in RabbitMQ; `whoami` is anyone's.
fn authorise(tags: &[Tag], method: &Method, path: &[&str]) -> Result<(), &'static str> {
    if tags.is_empty() {
        return Err("Not management user");
    }
    let accounts = matches!(
        path.first(),
        Some(&("definitions" | "users" | "permissions" | "topic-permissions"))
    );
    let administration = *method != Method::GET || accounts;
    if administration && !tags.contains(&Tag::Administrator) {
        return Err("Not administrator user");
    }
    Ok(())
}

fn allowed_methods(path: &[&str]) -> Option<&'static str> {
    match path {
        ["overview"]
        | ["queues"]
        | ["queues", _]
        | ["exchanges"]
        | ["exchanges", _]
        | ["connections"] => Some(READ),
        ["queues", _, _] => Some(READ_DELETE),
        ["queues", _, _, "contents"] => Some(DELETE),
        ["vhosts"] => Some(READ),
        ["vhosts", _] => Some(READ_PUT_DELETE),
        ["definitions"] | ["definitions", _] => Some(READ_POST),
        ["whoami"]
        | ["users"]
        | ["users", _, "permissions" | "topic-permissions"]
        | ["permissions"]
        | ["topic-permissions"] => Some(READ),
        ["users", _] | ["permissions", _, _] | ["topic-permissions", _, _] => Some(READ_PUT_DELETE),
        _ => None,
    }
}

/// The path after `/api`, split at `/` and percent-decoded, so vhost `/` is written `%2F`.
/// A trailing slash is ignored. `None` if a segment does not decode to UTF-8.
fn segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix("/api").unwrap_or(path);
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Some(Vec::new());
    }
    rest.split('/').map(percent_decode).collect()
}

fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                // Two hex digits make at most 255.
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn query_flag(query: &str, name: &str) -> bool {
    query.split('&').any(|pair| {
        pair.split_once('=')
            .is_some_and(|(k, v)| k == name && v == "true")
    })
}

fn overview(state: &ServerState) -> Json {
    let broker = &state.broker;
    let totals = walk_queues(broker, |_, _, _| {});
    let connections = state.connections.totals();
    let counters = broker.counters();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let mut vhosts: Vec<String> = broker.vhosts().iter().map(|v| v.name.clone()).collect();
    vhosts.sort();
    json!({
        "product_name": "rosetta",
        "product_version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.lifecycle.uptime_seconds(),
        "vhosts": vhosts,
        "object_totals": {
            "connections": connections.connections.values().sum::<u64>(),
            "channels": connections.channels,
            "consumers": totals.consumers,
            "queues": totals.queues,
            "exchanges": exchange_count(broker),
        },
        "connections_by_protocol": connections.connections,
        "queue_totals": {
            "messages": totals.ready + totals.unacked,
            "messages_ready": totals.ready,
            "messages_unacknowledged": totals.unacked,
            "message_bytes": totals.ready_bytes + totals.unacked_bytes,
        },
        "message_stats": {
            "publish": load(&counters.published),
            "deliver": load(&counters.delivered),
            "ack": load(&counters.acked),
            "redeliver": load(&counters.redelivered),
            "dead_lettered": load(&counters.dead_lettered),
            "unroutable": load(&counters.unroutable),
        },
        "store_disk_bytes": broker.store().size_on_disk(),
        "resource_alarm": *state.alarm.borrow(),
        "shutting_down": state.lifecycle.is_shutting_down(),
    })
}

/// Queues of one virtual host or of all, sorted by virtual host then name.
fn queues(state: &ServerState, only: Option<&str>) -> Json {
    let mut all: Vec<(String, std::sync::Arc<Queue>)> = Vec::new();
    for vhost in state.broker.vhosts() {
        if only.is_none_or(|name| name == vhost.name) {
            all.extend(vhost.queues().into_iter().map(|q| (vhost.name.clone(), q)));
        }
    }
    all.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
    Json::Array(all.iter().map(|(vhost, q)| queue_json(vhost, q)).collect())
}

fn queue_json(vhost: &str, queue: &Queue) -> Json {
    let stats = queue.stats();
    json!({
        "vhost": vhost,
        "name": queue.name,
        "durable": queue.durable,
        "auto_delete": queue.auto_delete,
        "exclusive": queue.exclusive_owner.is_some(),
        // The front-end that made the queue for its own use (null for a client's or an
        // operator's queue): the queues MQTT or STOMP may delete on their own.
        "owner": queue.owner().map(|o| json!({ "front_end": o.front_end, "client": o.client })),
        "arguments": table_json(&queue.arguments),
        "consumers": stats.consumers,
        "messages": stats.ready + stats.unacked,
        "messages_ready": stats.ready,
        "messages_unacknowledged": stats.unacked,
        "message_bytes": stats.ready_bytes + stats.unacked_bytes,
        "message_bytes_ready": stats.ready_bytes,
        "message_bytes_unacknowledged": stats.unacked_bytes,
    })
}

fn exchanges(state: &ServerState, only: Option<&str>) -> Json {
    let mut all = Vec::new();
    for vhost in state.broker.vhosts() {
        if only.is_none_or(|name| name == vhost.name) {
            for e in vhost.exchanges() {
                all.push(json!({
                    "vhost": vhost.name,
                    "name": e.name,
                    "type": e.kind.as_str(),
                    "durable": e.durable,
                    "auto_delete": e.auto_delete,
                    "internal": e.internal,
                    "arguments": table_json(&e.arguments),
                    "bindings": e.binding_count(),
                }));
            }
        }
    }
    let key = |j: &Json| {
        (
            j["vhost"].as_str().unwrap_or("").to_owned(),
            j["name"].as_str().unwrap_or("").to_owned(),
        )
    };
    all.sort_by_key(key);
    Json::Array(all)
}

fn connections(state: &ServerState) -> Json {
    let live = state.connections.list();
    let list = live.iter().map(|c| {
        let connected_at = c
            .opened_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        json!({
            "name": format!("{} ({})", c.peer, c.id),
            "protocol": c.protocol,
            "transport": c.transport,
            "peer_host": c.peer.ip().to_string(),
            "peer_port": c.peer.port(),
            "user": c.user(),
            "channels": c.channels(),
            "connected_at": connected_at,
        })
    });
    Json::Array(list.collect())
}

fn with_vhost(state: &ServerState, vhost: &str, then: impl FnOnce(&VHost) -> Reply) -> Reply {
    match state.broker.vhost(vhost) {
        Some(v) => then(&v),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no virtual host '{vhost}'"),
        ),
    }
}

fn with_queue(
    state: &ServerState,
    vhost: &str,
    name: &str,
    then: impl FnOnce(&VHost, &Queue) -> Reply,
) -> Reply {
    with_vhost(state, vhost, |v| match v.queue(name) {
        Some(q) => then(v, &q),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no queue '{name}' in vhost '{vhost}'"),
        ),
    })
}

/// `DELETE /api/queues/{vhost}/{name}[?if-empty=true][&if-unused=true]`. An operator may delete
/// an exclusive queue too, as the owning connection could. The 204 waits for a durable
/// queue's removal to be on disk.
fn delete_queue(state: &ServerState, vhost: &str, name: &str, query: &str) -> Answer {
    let mut durable_at = None;
    let reply = with_queue(state, vhost, name, |v, queue| {
        let conn = queue
            .exclusive_owner
            .unwrap_or_else(|| state.broker.new_connection_id());
        match v.delete_queue(
            name,
            query_flag(query, "if-unused"),
            query_flag(query, "if-empty"),
            conn,
        ) {
            Ok(deleted) => {
                tracing::info!(
                    vhost,
                    queue = name,
                    messages = deleted.messages,
                    "queue deleted through the management API"
                );
                durable_at = deleted.durable_at;
                no_content()
            }
            Err(e) => core_error(&e),
        }
    });
    Answer {
        reply,
        durable_at,
        refused_login: false,
    }
}

/// `DELETE /api/queues/{vhost}/{name}/contents`: drops the ready messages, keeps the queue.
fn purge_queue(state: &ServerState, vhost: &str, name: &str) -> Reply {
    with_queue(state, vhost, name, |v, queue| {
        let conn = queue
            .exclusive_owner
            .unwrap_or_else(|| state.broker.new_connection_id());
        match v.purge_queue(name, conn) {
            Ok(messages) => {
                tracing::info!(
                    vhost,
                    queue = name,
                    messages,
                    "queue purged through the management API"
                );
                no_content()
            }
            Err(e) => core_error(&e),
        }
    })
}

fn ok(body: Json) -> Reply {
    respond(StatusCode::OK, "application/json", body.to_string())
}

fn no_content() -> Reply {
    let mut reply = Reply::new(Full::default());
    *reply.status_mut() = StatusCode::NO_CONTENT;
    reply
}

fn error(status: StatusCode, kind: &str, reason: &str) -> Reply {
    respond(
        status,
        "application/json",
        json!({ "error": kind, "reason": reason }).to_string(),
    )
}

fn unauthorized(denied: Denied) -> Reply {
    let reason = match denied {
        Denied::Missing => "basic authentication required",
        Denied::Refused(rosetta_core::AuthFailure::BadCredentials) => "wrong user name or password",
        Denied::Refused(rosetta_core::AuthFailure::LoopbackOnly) => {
            "this user may only connect from localhost"
        }
    };
    let mut reply = error(StatusCode::UNAUTHORIZED, "not_authorized", reason);
    reply.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"rosetta\""),
    );
    reply
}

/// Every entry, for a listing.
const EVERY: permissions::Only<'static> = permissions::Only {
    user: None,
    vhost: None,
};

/// The run-time users and permissions of the running broker.
fn accounts(state: &ServerState) -> Accounts<'_> {
    Accounts {
        directory: &state.users,
        store: state.broker.store().as_ref(),
        broker: &state.broker,
        configured: &state.configured,
    }
}

/// A refused change to users or permissions: 409 for an entry of the configuration file.
fn refused(e: &Refused) -> Reply {
    let (status, kind) = match e {
        Refused::Configured(_) => (StatusCode::CONFLICT, "configured"),
        Refused::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        Refused::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        Refused::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
    };
    error(status, kind, &e.to_string())
}

fn core_error(e: &CoreError) -> Reply {
    let (status, kind) = match e {
        CoreError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        CoreError::AccessRefused(_) => (StatusCode::FORBIDDEN, "access_refused"),
        CoreError::ResourceLocked(_) => (StatusCode::CONFLICT, "resource_locked"),
        CoreError::PreconditionFailed(_)
        | CoreError::InvalidArgument { .. }
        | CoreError::LimitReached(_) => (StatusCode::BAD_REQUEST, "precondition_failed"),
        CoreError::UnknownExchangeType(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        CoreError::ResourceLimit(_) => (StatusCode::SERVICE_UNAVAILABLE, "resource_error"),
        CoreError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
    };
    error(status, kind, &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoded_vhost_slash_stays_one_segment() {
        assert_eq!(
            segments("/api/queues/%2F/my%20queue"),
            Some(vec!["queues".into(), "/".into(), "my queue".into()])
        );
        assert_eq!(segments("/api/queues/"), Some(vec!["queues".into()]));
        assert_eq!(segments("/api"), Some(vec![]));
    }

    #[test]
    fn a_lone_percent_is_kept_and_invalid_utf8_is_refused() {
        assert_eq!(percent_decode("50%"), Some("50%".into()));
        assert_eq!(percent_decode("%zz"), Some("%zz".into()));
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn query_flags_must_be_true_to_count() {
        assert!(query_flag("if-empty=true&if-unused=false", "if-empty"));
        assert!(!query_flag("if-empty=true&if-unused=false", "if-unused"));
        assert!(!query_flag("", "if-empty"));
    }
}
