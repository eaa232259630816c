//! The Rosetta server: configuration, listeners, one task per connection, housekeeping and
//! signals. Protocol rules live in the protocol crates' sessions; this crate moves bytes.

mod amqp_driver;
mod connection;
pub mod config;
mod error;
mod listener;
pub mod logging;
mod resources;
mod state;

use std::sync::Arc;
use std::time::Duration;

use rosetta_amqp::session::SessionConfig;
use rosetta_core::store::Store;
use rosetta_core::{Broker, CoreLimits, User as CoreUser, Users};
use rosetta_store::SledStore;
use tokio::sync::{watch, Semaphore};

pub use config::Config;
pub use error::Error;
use state::ServerState;

/// How often queues expire TTL'd messages and `x-expires` queues are collected.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(100);
/// How long connections get to say goodbye on shutdown before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs the broker until SIGTERM or SIGINT. Returns an error, without panicking, when it cannot
/// start (port taken, data directory unusable, store unreadable).
pub fn run(config: Config) -> Result<(), Error> {
    logging::init(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(Error::Runtime)?;
    runtime.block_on(serve(config))
}

fn open_store(config: &Config) -> Result<Arc<SledStore>, Error> {
    let path = &config.storage.path;
    SledStore::open(path).map(Arc::new).map_err(|e| Error::Storage { path: path.display().to_string(), reason: e.to_string() })
}

async fn serve(config: Config) -> Result<(), Error> {
    let store = open_store(&config)?;
    let vhosts: Vec<String> = config.vhosts.iter().map(|v| v.name.clone()).collect();
    let limits = CoreLimits { max_queue_length: config.limits.max_queue_length, max_queue_bytes: config.limits.max_queue_bytes };
    let dyn_store: Arc<dyn Store> = store.clone();
    let broker = Broker::open(dyn_store, &vhosts, limits)?;
    let users = config
        .users
        .iter()
        .map(|u| CoreUser { name: u.name.clone(), password: u.password.clone(), loopback_only: u.is_loopback_only() })
        .collect();
    let (alarm_tx, alarm_rx) = watch::channel(false);
    let state = Arc::new(ServerState {
        broker: broker.clone(),
        users: Arc::new(Users::new(users)),
        amqp: SessionConfig {
            frame_max: config.limits.frame_max,
            channel_max: config.limits.channel_max,
            heartbeat: config.amqp.heartbeat,
            max_message_size: config.limits.max_message_size,
        },
        alarm: alarm_rx,
    });
    let max_connections = match config.limits.max_connections {
        0 => Semaphore::MAX_PERMITS,
        n => n as usize,
    };
    let limit = Arc::new(Semaphore::new(max_connections));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // Bind everything first so a taken port fails startup before anything is served.
    let amqp = if config.amqp.enabled { Some(listener::bind("amqp", config.amqp.listen).await?) } else { None };

    let mut tasks = Vec::new();
    if let Some(l) = amqp {
        let state = state.clone();
        tasks.push(tokio::spawn(listener::accept_loop("amqp", l, limit.clone(), shutdown_rx.clone(), move |stream, peer, shutdown| {
            amqp_driver::serve(stream, peer, state.clone(), shutdown)
        })));
    }
    let housekeeping = {
        let broker = broker.clone();
        let mut shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => broker.tick(),
                    _ = shutdown.changed() => return,
                }
            }
        })
    };
    let monitor = resources::Monitor {
        memory_limit: config.limits.memory_limit,
        disk_free_limit: config.limits.disk_free_limit,
        data_dir: config.storage.path.clone(),
    };
    let monitor = tokio::spawn(monitor.run(alarm_tx, shutdown_rx.clone()));
    tracing::info!(version = env!("CARGO_PKG_VERSION"), data = %config.storage.path.display(), "broker started");

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let _ = housekeeping.await;
    let _ = monitor.await;
    // Connections close themselves on the shutdown signal; wait for them to release their
    // permits, bounded by the grace period.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while limit.available_permits() < max_connections && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flushed = tokio::task::spawn_blocking(move || store.sync()).await;
    match flushed {
        Ok(Ok(())) => tracing::info!("store flushed; bye"),
        Ok(Err(e)) => tracing::error!(error = %e, "final store flush failed"),
        Err(e) => tracing::error!(error = %e, "final store flush panicked"),
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the broker can still be stopped with SIGKILL; keep serving.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
