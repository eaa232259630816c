//! The HTTP endpoint for operators: `/metrics` (Prometheus text format, behind basic auth with
//! `[http] metrics_auth`), `/healthz` and `/readyz`, and a small JSON management API under
//! `/api/` (see docs/operations.md).
//!
//! It keeps answering while the broker shuts down, so health checks see 503 rather than a
//! refused connection, and stops only after the store has been flushed.

mod api;
mod auth;
mod scrape;
#[cfg(test)]
mod tests;
mod totals;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;

use crate::state::ServerState;

/// Concurrent HTTP connections; operators' tools need a handful, and the cap keeps a flood of
/// them from competing with client connections.
pub(crate) const MAX_CONNECTIONS: usize = 128;
/// A client that has not sent a complete request head within this time is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body accepted (an imported definitions file).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// The Prometheus text exposition format, version 0.0.4.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

type Reply = Response<Full<Bytes>>;

/// Serves one HTTP connection until the client leaves or `stop` fires.
pub(crate) async fn serve_connection<T>(
    stream: T,
    peer: SocketAddr,
    state: Arc<ServerState>,
    mut stop: watch::Receiver<bool>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(state, peer, request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "http connection ended with an error");
    }
}

async fn route(state: Arc<ServerState>, peer: SocketAddr, request: Request<Incoming>) -> Reply {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let readable = parts.method == Method::GET || parts.method == Method::HEAD;
    match path {
        "/metrics" | "/healthz" | "/readyz" if !readable => method_not_allowed("GET, HEAD"),
        "/metrics" if state.metrics_auth && !api::may_scrape(&state, peer, &parts).await => {
            api::scrape_refused()
        }
        "/metrics" => {
            // Walking every queue takes milliseconds on a large broker: keep it off the
            // workers that drive client connections.
            let render = move || {
                let started = std::time::Instant::now();
                let text = scrape::render(&state);
                tracing::debug!(elapsed = ?started.elapsed(), bytes = text.len(), "metrics rendered");
                text
            };
            match tokio::task::spawn_blocking(render).await {
                Ok(text) => respond(StatusCode::OK, PROMETHEUS_TEXT, text),
                Err(e) => internal_error(&e),
            }
        }
        "/healthz" => healthz(&state),
        "/readyz" => readyz(&state),
        _ if path == "/api" || path.starts_with("/api/") => {
            // Only an administrator's change has a body worth reading; anyone else's is left
            // unread, so that no client can make the broker buffer megabytes before it is
            // refused.
            let body = if api::takes_body(&state, peer, &parts) {
                match read_body(body).await {
                    Ok(body) => body,
                    Err(reply) => return reply,
                }
            } else {
                Bytes::new()
            };
            api::serve(state, peer, parts, body).await
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The whole request body, at most [`MAX_BODY`] bytes (a definitions file of a large broker
/// runs to megabytes); a larger one is refused with 413 without reading the rest.
async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large\n",
        )),
        Err(e) => {
            tracing::debug!(error = %e, "http request body unreadable");
            Err(text(StatusCode::BAD_REQUEST, "request body unreadable\n"))
        }
    }
}

/// Liveness: 200 while the broker serves, 503 once it is shutting down.
fn healthz(state: &ServerState) -> Reply {
    if state.lifecycle.is_shutting_down() {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        text(StatusCode::OK, "ok\n")
    }
}

/// Readiness: like `/healthz`, and also 503 while the resource alarm blocks publishers, so a
/// load balancer sends new clients elsewhere until memory or disk recovers.
fn readyz(state: &ServerState) -> Reply {
    if state.lifecycle.is_shutting_down() {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if *state.alarm.borrow() {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "resource alarm: publishers are blocked\n",
        )
    } else {
        text(StatusCode::OK, "ready\n")
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut reply = Response::new(Full::new(body.into()));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}

fn text(status: StatusCode, body: &'static str) -> Reply {
    respond(status, "text/plain; charset=utf-8", body)
}

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut reply = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    reply
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    reply
}

fn internal_error(error: &tokio::task::JoinError) -> Reply {
    tracing::error!(%error, "http handler failed");
    text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
}
