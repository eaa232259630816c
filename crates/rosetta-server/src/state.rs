//! What every connection task shares.

use std::sync::Arc;

use rosetta_amqp::session::SessionConfig;
use rosetta_core::{Broker, Users};

pub(crate) struct ServerState {
    pub broker: Arc<Broker>,
    pub users: Arc<Users>,
    pub amqp: SessionConfig,
}
