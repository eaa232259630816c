//! The Rosetta server: configuration, listeners, one task per connection, housekeeping and
//! signals. Protocol rules live in the protocol crates' sessions; this crate moves bytes.

mod accounts;
pub mod config;
mod connection;
mod connections;
pub mod definitions;
mod error;
mod http;
mod lifecycle;
mod listener;
pub mod logging;
mod login_signal;
mod metrics;
mod mqtt_status;
mod resources;
mod services;
mod state;
mod tls;
mod vhost_access;
mod websocket;

use std::sync::Arc;
use std::time::Duration;

use rosetta_amqp::session::SessionConfig;
use rosetta_core::store::Store;
use rosetta_core::{Broker, CoreLimits};
use rosetta_mqtt::{MqttConfig, MqttState};
use rosetta_store::SledStore;
use tokio::sync::{watch, Semaphore};

pub use config::Config;
use connection::input_order::InputOrder;
use connections::Connections;
pub use error::Error;
use lifecycle::Lifecycle;
use metrics::Metrics;
use services::{bind, Accept, Amqp, CertLogin, Http, Mqtt, Stomp};
use state::ServerState;
use tls::Tls;

/// How often queues expire TTL'd messages and `x-expires` queues are collected.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(100);
/// How often delayed MQTT wills and expired MQTT sessions are looked for; both count in seconds.
const MQTT_HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(500);

/// Runs the broker until SIGTERM or SIGINT. Returns an error, without panicking, when it cannot
/// start (port taken, data directory unusable, store unreadable).
pub fn run(config: Config) -> Result<(), Error> {
    logging::init(&config.log);
    let workers = match config.server.worker_threads {
        0 => std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|n| n.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        n => n,
    };
    // One worker runs on the thread that starts the broker: tokio's single-threaded scheduler
    // has no siblings to steal from or wake, which the multi-threaded one pays for on every
    // park even with one worker.
    let mut runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        runtime.worker_threads(workers);
        runtime
    };
    let runtime = runtime.enable_all().build().map_err(Error::Runtime)?;
    runtime.block_on(serve(config))
}

/// Reads the `[tls]` files as the broker would at startup, for `rosetta check-config`.
pub fn check_tls(config: &Config) -> Result<(), Error> {
    config.tls.as_ref().map(Tls::load).transpose().map(|_| ())
}

fn open_store(config: &Config) -> Result<Arc<SledStore>, Error> {
    let path = &config.storage.path;
    SledStore::open(path)
        .map(Arc::new)
        .map_err(|e| Error::Storage {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

async fn serve(config: Config) -> Result<(), Error> {
    // Handlers first: a SIGTERM that arrives while the store recovers or the listeners open must
    // mean a clean shutdown, not the default action (death without flushing).
    let signal = shutdown_signal();
    let hangup = hangup_signal();
    // Certificate files first: a TLS setting that cannot work stops the broker before anything
    // is opened.
    let tls = config
        .tls
        .as_ref()
        .map(Tls::load)
        .transpose()?
        .map(Arc::new);
    let store = open_store(&config)?;
    let metrics = Metrics::new()?;
    store.observe_flushes(metrics.flush_observer());
    store.observe_failures(metrics.failure_observer());
    store.observe_quarantine(metrics.quarantine_observer());
    let vhosts: Vec<String> = config.vhosts.iter().map(|v| v.name.clone()).collect();
    let limits = CoreLimits {
        max_queue_length: config.limits.max_queue_length,
        max_queue_bytes: config.limits.max_queue_bytes,
        queue_resident_bytes: config.limits.queue_resident_bytes,
        consumer_buffer_bytes: config.limits.consumer_buffer_bytes,
        max_queues: u64::from(config.limits.max_queues),
        max_exchanges: u64::from(config.limits.max_exchanges),
        max_bindings: u64::from(config.limits.max_bindings),
        quorum_as_classic: config
            .amqp
            .accept_queue_types
            .contains(&config::AcceptedQueueType::Quorum),
    };
    let dyn_store: Arc<dyn Store> = store.clone();
    let broker = Broker::open(dyn_store, &vhosts, limits)?;
    let users = config.core_directory()?;
    let configured = accounts::Configured::of(&users.contents(), config.permissions_are_implicit());
    accounts::load(&users, store.as_ref(), &broker, &configured).map_err(|e| Error::Storage {
        path: config.storage.path.display().to_string(),
        reason: format!("cannot read the stored users and permissions: {e}"),
    })?;
    if config.permissions_are_implicit() {
        tracing::warn!(
            "no [[permissions]] configured: every user has full permissions on every virtual host"
        );
    }
    let monitor = resources::Monitor {
        memory_limit: config.limits.memory_limit,
        disk_free_limit: config.limits.disk_free_limit,
        data_dir: config.storage.path.clone(),
        store_failing: store.failure_flag(),
    };
    // The alarm starts as it stands, not off: the listeners open before the monitor's first
    // check runs, and a broker started above its limits must hold its first publishers too.
    let (alarm_tx, alarm_rx) = watch::channel(monitor.initial());
    let input_order = Arc::new(InputOrder::new(metrics.input_order_timeouts()));
    let state = Arc::new(ServerState {
        broker: broker.clone(),
        users: Arc::new(users),
        configured,
        failed_login_delay: Duration::from_millis(u64::from(config.limits.failed_login_delay_ms)),
        send_timeout: (config.limits.send_timeout_ms > 0)
            .then(|| Duration::from_millis(u64::from(config.limits.send_timeout_ms))),
        amqp: SessionConfig {
            frame_max: config.limits.frame_max,
            channel_max: config.limits.channel_max,
            heartbeat: config.amqp.heartbeat,
            max_message_size: config.limits.max_message_size,
            max_consumers_per_channel: config.limits.max_consumers_per_channel,
            max_transaction_frames: config.limits.max_transaction_frames,
            max_transaction_bytes: config.limits.max_transaction_bytes,
        },
        stomp: rosetta_stomp::session::SessionConfig {
            limits: rosetta_stomp::codec::Limits {
                max_headers: config.stomp.max_headers as usize,
                max_header_length: config.stomp.max_header_length as usize,
                max_body: usize::try_from(config.limits.max_message_size).unwrap_or(usize::MAX),
            },
            heartbeat_ms: config.stomp.heartbeat_ms,
            // The first configured virtual host, "/" by default, as RabbitMQ's default_vhost.
            default_vhost: vhosts.first().cloned().unwrap_or_else(|| "/".to_owned()),
            // A STOMP connection is one channel.
            max_subscriptions: config.limits.max_consumers_per_channel as usize,
            max_transaction_frames: config.limits.max_transaction_frames as usize,
            max_transaction_bytes: config.limits.max_transaction_bytes,
        },
        alarm: alarm_rx,
        connections: Connections::default(),
        metrics,
        lifecycle: Lifecycle::new(),
        metrics_auth: config.http.metrics_auth,
        input_order,
    });
    // Virtual hosts made at run time before this start are not in the configuration (their
    // creators' permissions are stored ones, loaded above).
    for info in broker.vhost_infos().iter().filter(|info| !info.permanent) {
        vhost_access::open_to_everyone(&state.users, &state.configured, &info.vhost.name);
    }
    let max_connections = match config.limits.max_connections {
        0 => Semaphore::MAX_PERMITS,
        n => n as usize,
    };
    let limit = Arc::new(Semaphore::new(max_connections));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // Bind everything first so a taken port fails startup before anything is served.
    let amqp = if config.amqp.enabled {
        Some(bind("amqp", config.amqp.listen, config.amqp.tls_listen).await?)
    } else {
        None
    };
    let stomp = if config.stomp.enabled {
        rosetta_stomp::owner::adopt_queues_made_before_owners(&broker)?;
        Some(bind("stomp", config.stomp.listen, config.stomp.tls_listen).await?)
    } else {
        None
    };
    let mqtt = if config.mqtt.enabled {
        let mqtt = MqttState::open(broker.clone(), state.users.clone(), mqtt_config(&config))?;
        let listeners = bind("mqtt", config.mqtt.listen, config.mqtt.tls_listen).await?;
        Some((listeners, mqtt))
    } else {
        None
    };
    // MQTT and STOMP over WebSocket, for browsers.
    let mqtt_ws = if config.mqtt.enabled {
        let upgrade = websocket::Upgrade::mqtt(
            config.mqtt.max_packet_size,
            config.mqtt.ws_allowed_origins.clone(),
        );
        Some(websocket::bind(upgrade, config.mqtt.ws_listen, config.mqtt.ws_tls_listen).await?)
    } else {
        None
    };
    let stomp_ws = if config.stomp.enabled {
        let upgrade =
            websocket::Upgrade::stomp(&state.stomp.limits, config.stomp.ws_allowed_origins.clone());
        Some(websocket::bind(upgrade, config.stomp.ws_listen, config.stomp.ws_tls_listen).await?)
    } else {
        None
    };
    let http = if config.http.enabled {
        Some(bind("http", config.http.listen, config.http.tls_listen).await?)
    } else {
        None
    };

    let mut tasks = Vec::new();
    let clients = Accept {
        tls: tls.clone(),
        limit: limit.clone(),
        shutdown: shutdown_rx.clone(),
    };
    if let Some(listeners) = amqp {
        clients.start(
            &mut tasks,
            listeners,
            Amqp(state.clone(), CertLogin(config.amqp.ssl_cert_login)),
        );
    }
    if let Some((listeners, mqtt)) = mqtt {
        tasks.push(tokio::spawn(mqtt_housekeeping(
            mqtt.clone(),
            shutdown_rx.clone(),
        )));
        if config.mqtt.sys_interval > 0 {
            tasks.push(tokio::spawn(mqtt_status::publish(
                mqtt.clone(),
                state.clone(),
                Duration::from_secs(u64::from(config.mqtt.sys_interval)),
                shutdown_rx.clone(),
            )));
        }
        let cert_login = CertLogin(config.mqtt.ssl_cert_login);
        if let Some(ws) = mqtt_ws {
            let service = Mqtt(state.clone(), mqtt.clone(), cert_login);
            clients.start_websocket(&mut tasks, ws, service);
        }
        clients.start(&mut tasks, listeners, Mqtt(state.clone(), mqtt, cert_login));
    }
    let stomp_service = Stomp(state.clone(), CertLogin(config.stomp.ssl_cert_login));
    if let Some(listeners) = stomp {
        clients.start(&mut tasks, listeners, stomp_service.clone());
    }
    if let Some(ws) = stomp_ws {
        clients.start_websocket(&mut tasks, ws, stomp_service);
    }
    tasks.push(tokio::spawn(reload_on_hangup(
        hangup,
        tls.clone(),
        shutdown_rx.clone(),
    )));
    // The HTTP endpoint has its own stop signal: it keeps answering (health checks see 503)
    // while connections drain, and stops once the store is flushed.
    let (http_stop_tx, http_stop_rx) = watch::channel(false);
    let mut http_tasks = Vec::new();
    if let Some(listeners) = http {
        let operators = Accept {
            tls: tls.clone(),
            limit: Arc::new(Semaphore::new(http::MAX_CONNECTIONS)),
            shutdown: http_stop_rx,
        };
        operators.start(&mut http_tasks, listeners, Http(state.clone()));
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
    let monitor = tokio::spawn(monitor.run(alarm_tx, shutdown_rx.clone()));
    // Connection tasks sleep until their own deadlines; an alarm raised or cleared wakes them.
    let alarm_relay = {
        let state = state.clone();
        let mut alarm = state.alarm.clone();
        tokio::spawn(async move {
            while alarm.changed().await.is_ok() {
                state.connections.signal_all();
            }
        })
    };
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), data = %config.storage.path.display(), workers, "broker started");

    signal.await;
    let shutdown_timeout = Duration::from_secs(config.server.shutdown_timeout);
    tracing::info!(timeout = ?shutdown_timeout, "shutting down");
    state.lifecycle.begin_shutdown();
    let _ = shutdown_tx.send(true);
    state.connections.signal_all();
    for t in tasks {
        let _ = t.await;
    }
    let _ = housekeeping.await;
    let _ = monitor.await;
    let _ = alarm_relay.await;
    // Connections close themselves on the shutdown signal; wait for them to release their
    // permits, bounded by `server.shutdown_timeout`.
    let deadline = tokio::time::Instant::now() + shutdown_timeout;
    while limit.available_permits() < max_connections && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let remaining = max_connections - limit.available_permits();
    if remaining > 0 {
        tracing::warn!(connections = remaining, timeout = ?shutdown_timeout, "shutdown timeout reached; closing the remaining connections");
    }
    let flushed = tokio::task::spawn_blocking(move || store.sync()).await;
    match flushed {
        Ok(Ok(())) => tracing::info!("store flushed; bye"),
        Ok(Err(e)) => tracing::error!(error = %e, "final store flush failed"),
        Err(e) => tracing::error!(error = %e, "final store flush panicked"),
    }
    let _ = http_stop_tx.send(true);
    for task in http_tasks {
        let _ = task.await;
    }
    Ok(())
}

/// Reloads the TLS certificates on each SIGHUP until shutdown. A failed reload is logged and
/// the certificates in force stay.
async fn reload_on_hangup(
    hangup: Option<tokio::signal::unix::Signal>,
    tls: Option<Arc<Tls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(mut hangup) = hangup else {
        return;
    };
    loop {
        tokio::select! {
            got = hangup.recv() => {
                if got.is_none() {
                    return;
                }
            }
            _ = shutdown.changed() => return,
        }
        match &tls {
            None => tracing::info!("SIGHUP: no [tls] configured, nothing to reload"),
            Some(tls) => match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS reload failed; the previous certificates stay in use")
                }
            },
        }
    }
}

/// Installs the SIGHUP handler now, so a SIGHUP while the broker starts does not end it.
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup()).ok()
}

/// The MQTT front-end's settings from `[mqtt]`.
fn mqtt_config(config: &Config) -> MqttConfig {
    let mqtt = &config.mqtt;
    MqttConfig {
        vhost: mqtt.vhost.clone(),
        max_packet_size: mqtt.max_packet_size,
        max_inflight: mqtt.max_inflight,
        topic_alias_max: mqtt.topic_alias_max,
        max_keep_alive: mqtt.max_keep_alive,
        max_retained: mqtt.max_retained as usize,
        allow_anonymous: mqtt.allow_anonymous,
        max_subscriptions: mqtt.max_subscriptions as usize,
        max_filters_per_subscribe: mqtt.max_filters_per_subscribe as usize,
        max_topic_levels: mqtt.max_topic_levels as usize,
    }
}

/// Sends MQTT wills whose delay is over and ends MQTT sessions past their expiry, until
/// shutdown.
async fn mqtt_housekeeping(mqtt: Arc<MqttState>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(MQTT_HOUSEKEEPING_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => mqtt.tick(),
            _ = shutdown.changed() => return,
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now and returns a future that completes on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without signal handlers the broker can still be stopped with SIGKILL; keep serving.
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
