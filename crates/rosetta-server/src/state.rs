//! What every connection task shares.

use std::sync::Arc;

use rosetta_amqp::session::SessionConfig;
use rosetta_core::{Broker, Users};
use tokio::sync::watch;

use crate::connections::Connections;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;

pub(crate) struct ServerState {
    pub broker: Arc<Broker>,
    pub users: Arc<Users>,
    pub amqp: SessionConfig,
    pub stomp: rosetta_stomp::session::SessionConfig,
    /// On while memory or disk is past its limit; publishers pause.
    pub alarm: watch::Receiver<bool>,
    /// Live connections, for the gauges and the management API.
    pub connections: Connections,
    pub metrics: Metrics,
    pub lifecycle: Lifecycle,
}
