//! MQTT sessions plugged into the connection driver, and the MQTT housekeeping task (delayed
//! wills, session expiry).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rosetta_core::Outbound;
use rosetta_mqtt::{MqttConfig, MqttState, Session as MqttSession};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;

use crate::config::Config;
use crate::connection::{drive, Heartbeats, Session};
use crate::state::ServerState;

/// How often delayed wills and expired sessions are looked for; both count in seconds.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(500);

impl Session for MqttSession {
    const PROTOCOL: &'static str = "mqtt";

    fn handle_input(&mut self, input: &mut BytesMut) -> bool {
        MqttSession::handle_input(self, input)
    }
    fn handle_outbound(&mut self, item: Outbound) {
        MqttSession::handle_outbound(self, item);
    }
    fn has_pending_durability(&self) -> bool {
        MqttSession::has_pending_durability(self)
    }
    fn on_durable(&mut self) {
        MqttSession::on_durable(self);
    }
    fn take_output(&mut self) -> Option<Bytes> {
        MqttSession::take_output(self)
    }
    fn after_flush(&mut self) {
        MqttSession::after_flush(self);
    }
    fn output_ready(&self) -> bool {
        MqttSession::output_ready(self)
    }
    fn heartbeats(&self) -> Heartbeats {
        // [MQTT-3.1.2-22]: one and a half keep-alive periods without a packet close the
        // connection. The server never sends pings; PINGRESP answers the client's.
        let keep_alive = self.keep_alive();
        if keep_alive.is_zero() {
            return Heartbeats::default();
        }
        Heartbeats {
            send_after: None,
            expect_within: Some(keep_alive * 3 / 2),
        }
    }
    fn send_heartbeat(&mut self) {}
    fn user(&self) -> Option<&str> {
        MqttSession::user(self)
    }
    fn is_closing(&self) -> bool {
        MqttSession::is_closing(self)
    }
    fn set_alarm(&mut self, on: bool) {
        MqttSession::set_alarm(self, on);
    }
    fn reading_paused(&self) -> bool {
        MqttSession::reading_paused(self)
    }
    fn force_close(&mut self) {
        MqttSession::force_close(self);
    }
    fn shutdown(&mut self) {
        MqttSession::shutdown(self);
    }
    fn take_outbox(&mut self, waker: &Waker) -> Option<UnboundedReceiver<Outbound>> {
        MqttSession::take_outbox(self, waker)
    }
}

/// The MQTT front-end's settings from `[mqtt]`.
pub(crate) fn config(config: &Config) -> MqttConfig {
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

/// The connection's task: the driver itself, not an `async fn` around it, whose state would
/// hold the driver's future beside its own arguments and double what each connection costs.
pub(crate) fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<ServerState>,
    mqtt: Arc<MqttState>,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> {
    // The outbox is created on the first subscription; the driver picks it up then.
    let session = MqttSession::new(mqtt, peer);
    drive(stream, peer, session, None, state, shutdown)
}

/// Sends wills whose delay is over and ends sessions past their expiry, until shutdown.
pub(crate) async fn housekeeping(mqtt: Arc<MqttState>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => mqtt.tick(),
            _ = shutdown.changed() => return,
        }
    }
}
