//! `/api/vhosts`: virtual hosts listed, created, described and deleted at run time, in
//! RabbitMQ's shapes. Virtual hosts of the configuration's `[[vhosts]]` cannot be deleted.

use hyper::StatusCode;
use rosetta_core::broker::{VHostInfo, VHostMeta};
use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::{core_error, error, no_content, ok, Answer};
use crate::definitions::format::tag_list;
use crate::state::ServerState;
use crate::vhost_access;

/// The body of `PUT /api/vhosts/{name}`; what it leaves out keeps its value.
#[derive(Deserialize)]
struct VHostBody {
    #[serde(default)]
    description: Option<String>,
    #[serde(default, deserialize_with = "some_tags")]
    tags: Option<Vec<String>>,
}

fn some_tags<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    tag_list(d).map(Some)
}

pub(super) fn list(state: &ServerState) -> Json {
    Json::Array(state.broker.vhost_infos().iter().map(vhost_json).collect())
}

pub(super) fn one(state: &ServerState, name: &str) -> super::Reply {
    match state.broker.vhost_info(name) {
        Some(info) => ok(vhost_json(&info)),
        None => not_found(name),
    }
}

fn not_found(name: &str) -> super::Reply {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no virtual host '{name}'"),
    )
}

fn vhost_json(info: &VHostInfo) -> Json {
    let (mut ready, mut unacked) = (0, 0);
    for q in info.vhost.queues() {
        let stats = q.stats();
        ready += stats.ready;
        unacked += stats.unacked;
    }
    json!({
        "name": info.vhost.name,
        "description": info.meta.description,
        "tags": info.meta.tags,
        "metadata": { "description": info.meta.description, "tags": info.meta.tags },
        "default_queue_type": "classic",
        "tracing": false,
        // Defined in broker.toml: cannot be deleted through the API.
        "configured": info.permanent,
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
    })
}

/// `PUT /api/vhosts/{name}` by administrator `user`: 201 for a new virtual host, which `user`
/// may use (see `vhost_access`), 204 for new metadata, once the record is on disk.
pub(super) fn put(state: &ServerState, user: &str, name: &str, body: &[u8]) -> Answer {
    let given: VHostBody = if body.iter().all(u8::is_ascii_whitespace) {
        VHostBody {
            description: None,
            tags: None,
        }
    } else {
        match serde_json::from_slice(body) {
            Ok(given) => given,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("invalid JSON body: {e}"),
                )
                .into()
            }
        }
    };
    let current = state.broker.vhost_info(name).map(|info| info.meta);
    let creator = match &current {
        Some(meta) => meta.creator.clone(),
        None => Some(user.to_owned()),
    };
    let current = current.unwrap_or_default();
    let meta = VHostMeta {
        description: given.description.unwrap_or(current.description),
        tags: given.tags.unwrap_or(current.tags),
        creator,
    };
    match state.broker.put_vhost(name, meta) {
        Ok(put) => {
            let mut reply = no_content();
            let mut durable_at = put.durable_at;
            if put.created {
                let access = super::accounts(state);
                let opened = vhost_access::open(&access, name, Some(user));
                durable_at = durable_at.max(opened);
                *reply.status_mut() = StatusCode::CREATED;
            }
            Answer {
                reply,
                durable_at,
                refused_login: false,
            }
        }
        Err(e) => core_error(&e).into(),
    }
}

/// `DELETE /api/vhosts/{name}`: its connections are closed (AMQP 320 CONNECTION_FORCED, STOMP
/// ERROR), its exchanges, queues and messages deleted; 204 once that is on disk.
pub(super) fn delete(state: &ServerState, name: &str) -> Answer {
    if state.broker.vhost(name).is_none() {
        return not_found(name).into();
    }
    if state.broker.is_permanent(name) {
        return error(
            StatusCode::CONFLICT,
            "vhost_configured",
            &format!(
                "virtual host '{name}' is defined in the configuration ([[vhosts]] in broker.toml) and cannot be deleted"
            ),
        )
        .into();
    }
    match state.broker.delete_vhost(name) {
        Ok(deleted) => {
            let closed = vhost_access::close(&state.users, state.broker.store().as_ref(), name);
            // Each connection task looks at its virtual host when signalled.
            state.connections.signal_all();
            match closed {
                Ok(epoch) => Answer {
                    reply: no_content(),
                    durable_at: deleted.durable_at.max(epoch),
                    refused_login: false,
                },
                Err(e) => core_error(&e.into()).into(),
            }
        }
        Err(e) => core_error(&e).into(),
    }
}
