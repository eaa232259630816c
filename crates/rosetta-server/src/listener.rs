//! TCP listeners: bind, log, accept, enforce the connection limit, spawn one task per connection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::error::Error;

pub(crate) async fn bind(protocol: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind {
            protocol,
            addr,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| Error::Bind {
        protocol,
        addr,
        source,
    })?;
    tracing::info!(protocol = %protocol, addr = %local, "listener opened");
    Ok(listener)
}

/// Accepts until shutdown. `limit` caps concurrent connections across all listeners; a
/// connection over the limit is closed at once.
pub(crate) async fn accept_loop<F, Fut>(
    protocol: &'static str,
    listener: TcpListener,
    limit: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
    handler: F,
) where
    F: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                tracing::warn!(protocol, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(protocol, %peer, "connection limit reached; refusing connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Boxed: a future captured by the `async` block below is stored twice in the task (once
        // as captured, once while awaited), which for a connection's driver is most of what an
        // idle connection costs.
        let fut = Box::pin(handler(stream, peer, shutdown.clone()));
        tokio::spawn(async move {
            fut.await;
            drop(permit);
        });
    }
}
