//! What every connection task shares.

use std::sync::Arc;

use rosetta_amqp::session::SessionConfig;
use rosetta_core::{Broker, Users};
use tokio::sync::watch;

pub(crate) struct ServerState {
    pub broker: Arc<Broker>,
    pub users: Arc<Users>,
    pub amqp: SessionConfig,
    /// On while memory or disk is past its limit; publishers pause.
    pub alarm: watch::Receiver<bool>,
}
