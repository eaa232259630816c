//! `/api/definitions[/{vhost}]`: the broker's definitions exported and imported in RabbitMQ's
//! format (see `crate::definitions`). Administrators only, as in RabbitMQ: the file carries
//! password hashes, and an import changes the whole broker.

use hyper::StatusCode;
use rosetta_core::store::Epoch;
use serde_json::json;

use super::{error, ok, respond, Answer, Reply};
use crate::accounts::Accounts;
use crate::definitions::{self, Definitions, Hooks};
use crate::state::ServerState;
use crate::vhost_access;

/// The running broker's side of an import by administrator `user`.
struct Online<'a> {
    state: &'a ServerState,
    user: &'a str,
}

impl Hooks for Online<'_> {
    fn creator(&self) -> Option<&str> {
        Some(self.user)
    }

    fn vhost_created(&self, name: &str) -> Option<Epoch> {
        let state = self.state;
        let access = super::accounts(state);
        vhost_access::open(&access, name, Some(self.user))
    }

    fn accounts(&self) -> Accounts<'_> {
        super::accounts(self.state)
    }
}

/// `GET /api/definitions` (everything) or `GET /api/definitions/{vhost}` (one virtual host's
/// topology).
pub(super) fn export(state: &ServerState, vhost: Option<&str>) -> Reply {
    let defs = match vhost {
        None => match definitions::export_accounts(&super::accounts(state)) {
            Ok(accounts) => definitions::export_all(&state.broker, accounts),
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    &e.to_string(),
                )
            }
        },
        Some(name) => match definitions::export_vhost(&state.broker, name) {
            Some(defs) => defs,
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no virtual host '{name}'"),
                )
            }
        },
    };
    match serde_json::to_value(&defs) {
        Ok(body) => ok(body),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            &e.to_string(),
        ),
    }
}

/// `POST /api/definitions[/{vhost}]` with a definitions file as the JSON body. 200 with what
/// was created and skipped, once it is on disk; 400 naming every item that failed when one
/// did (the others are imported all the same, as RabbitMQ does not roll an import back).
pub(super) fn import(state: &ServerState, user: &str, vhost: Option<&str>, body: &[u8]) -> Answer {
    let defs: Definitions = match serde_json::from_slice(body) {
        Ok(defs) => defs,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("not a definitions file: {e}"),
            )
            .into()
        }
    };
    if let Some(name) = vhost {
        if state.broker.vhost(name).is_none() {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no virtual host '{name}'"),
            )
            .into();
        }
    }
    let report = definitions::apply(&state.broker, &defs, vhost, &Online { state, user });
    tracing::info!(
        vhosts = report.created.vhosts,
        users = report.created.users,
        permissions = report.created.permissions,
        topic_permissions = report.created.topic_permissions,
        queues = report.created.queues,
        exchanges = report.created.exchanges,
        bindings = report.created.bindings,
        skipped = report.skipped.len(),
        errors = report.errors.len(),
        "definitions imported through the management API"
    );
    let reply = if report.errors.is_empty() {
        ok(json!({ "created": report.created, "skipped": report.skipped }))
    } else {
        respond(
            StatusCode::BAD_REQUEST,
            "application/json",
            json!({
                "error": "bad_request",
                "reason": report.errors.join("; "),
                "errors": report.errors,
                "created": report.created,
                "skipped": report.skipped,
            })
            .to_string(),
        )
    };
    Answer {
        reply,
        durable_at: report.durable_at,
        refused_login: false,
    }
}
