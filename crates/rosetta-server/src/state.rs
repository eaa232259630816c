//! What every connection task shares.

use std::sync::Arc;
use std::time::Duration;

use rosetta_amqp::session::SessionConfig;
use rosetta_core::{Broker, Directory};
use tokio::sync::watch;

use crate::connection::input_order::InputOrder;
use crate::connections::Connections;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;

pub(crate) struct ServerState {
    pub broker: Arc<Broker>,
    /// Users and permissions, which front-ends check logins and operations against.
    pub users: Arc<Directory>,
    /// The users and permissions of the configuration file, which the API may not change, and
    /// who has implicit permissions (no `[[permissions]]` configured).
    pub configured: crate::accounts::Configured,
    /// How long a refused login waits before it is answered (`limits.failed_login_delay_ms`).
    pub failed_login_delay: Duration,
    /// How long a connection's output may make no progress before it is closed
    /// (`limits.send_timeout_ms`); `None` waits for ever.
    pub send_timeout: Option<Duration>,
    pub amqp: SessionConfig,
    pub stomp: rosetta_stomp::session::SessionConfig,
    /// On while memory or disk is past its limit; publishers pause.
    pub alarm: watch::Receiver<bool>,
    /// Live connections, for the gauges and the management API.
    pub connections: Connections,
    pub metrics: Metrics,
    pub lifecycle: Lifecycle,
    /// `/metrics` asks for HTTP basic auth of a user with a management tag (`[http]
    /// metrics_auth`).
    pub metrics_auth: bool,
    /// The order in which MQTT connections' input takes effect.
    pub input_order: Arc<InputOrder>,
}

#[cfg(test)]
impl ServerState {
    /// A broker over `store` with the `/` virtual host and the user guest/guest (loopback
    /// only, administrator), no resource alarm, and small default session settings.
    pub(crate) fn for_tests(store: Arc<dyn rosetta_core::store::Store>) -> Arc<ServerState> {
        let broker = Broker::open(
            store,
            &["/".to_owned()],
            rosetta_core::CoreLimits::default(),
        )
        .expect("broker");
        // An administrator, as the default guest is: the management API lets it delete queues.
        let users = rosetta_core::Users::tagged(vec![(
            rosetta_core::User {
                name: "guest".into(),
                password: "guest".into(),
                loopback_only: true,
            },
            vec![rosetta_core::auth::Tag::Administrator],
        )]);
        let (_alarm_tx, alarm) = watch::channel(false);
        let metrics = Metrics::new().expect("metrics");
        let input_order = Arc::new(InputOrder::new(metrics.input_order_timeouts()));
        let users = Directory::new(
            users,
            rosetta_core::auth::Permissions::full_access(["guest"], &["/"]),
        );
        Arc::new(ServerState {
            broker,
            configured: crate::accounts::Configured::of(&users.contents(), true),
            users: Arc::new(users),
            failed_login_delay: Duration::ZERO,
            send_timeout: None,
            amqp: SessionConfig {
                frame_max: 131_072,
                channel_max: 2047,
                heartbeat: 0,
                max_message_size: 1 << 20,
                max_consumers_per_channel: 0,
                max_transaction_frames: 0,
                max_transaction_bytes: 0,
            },
            stomp: rosetta_stomp::session::SessionConfig {
                limits: rosetta_stomp::codec::Limits {
                    max_headers: 100,
                    max_header_length: 1024,
                    max_body: 1 << 20,
                },
                heartbeat_ms: 0,
                default_vhost: "/".into(),
                max_subscriptions: 0,
                max_transaction_frames: 0,
                max_transaction_bytes: 0,
            },
            alarm,
            connections: Connections::default(),
            metrics,
            lifecycle: Lifecycle::new(),
            metrics_auth: false,
            input_order,
        })
    }
}
