//! CONNECT and DISCONNECT: authentication, client ids and takeover, resuming or starting the
//! session, CONNACK, and what the end of a connection does to the will and the session.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use mqtt_proto::v5::{
    Connack, ConnackProperties, Connect, ConnectReasonCode, Disconnect, DisconnectReasonCode,
    Packet, PubrelReasonCode,
};
use mqtt_proto::{Pid, Protocol};
use rosetta_core::queue::now_ms;
use rosetta_core::store::Epoch;
use rosetta_core::{AuthFailure, CloseReason, Outbound};

use super::{End, Inner, Phase, Shared};
use crate::codec;
use crate::error::MqttError;
use crate::message::Will;
use crate::persist::{OutStage, PendingWill, StoredSession, NEVER_EXPIRES};
use crate::state::Live;
use crate::topic;

/// The user a client without a user name is known as, when anonymous login is allowed.
pub const ANONYMOUS: &str = "anonymous";
/// Who a client without a user name logs in as otherwise (RabbitMQ's MQTT `default_user` and
/// `default_pass`): guest, whose loopback-only rule then decides.
const DEFAULT_LOGIN: (&str, &str) = ("guest", "guest");

/// Receive Maximum when a 5.0 client names none (MQTT 5.0 §3.1.2.11.3).
const DEFAULT_RECEIVE_MAXIMUM: u16 = 65_535;

/// A client id for a client that sent none (MQTT 5.0 §3.1.3.1): unguessable enough that two
/// assigned ids do not collide, without a random number crate.
fn assigned_client_id(conn_id: u64) -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(conn_id);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("rosetta-{conn_id}-{:016x}", h.finish())
}

fn auth_reason(failure: AuthFailure) -> ConnectReasonCode {
    match failure {
        AuthFailure::BadCredentials => ConnectReasonCode::BadUserNameOrPassword,
        AuthFailure::LoopbackOnly => ConnectReasonCode::NotAuthorized,
    }
}

impl Inner {
    /// Refuses the CONNECT with a CONNACK (for 3.x clients, as its return code) and closes.
    fn refuse(&mut self, reason: ConnectReasonCode, why: &str) {
        tracing::warn!(peer = %self.peer, client_id = %self.client_id, reason = ?reason, why, "mqtt connection refused");
        let mut connack = Connack::new(false, reason);
        if self.protocol == Protocol::V500 {
            connack.properties.reason_string = Some(why.into());
        }
        self.send(&Packet::Connack(connack));
        self.phase = Phase::Closed;
    }

    /// A CONNECT of a known protocol whose fields do not decode. 5.0 clients hear why
    /// (MQTT 5.0 §4.13.1); 3.x has no code for it and is just closed.
    pub(super) fn refuse_malformed_connect(&mut self, e: &MqttError) {
        if self.protocol == Protocol::V500 {
            let reason = match e {
                MqttError::Protocol(_) => ConnectReasonCode::ProtocolError,
                MqttError::TopicNameInvalid(_) => ConnectReasonCode::TopicNameInvalid,
                _ => ConnectReasonCode::MalformedPacket,
            };
            self.refuse(reason, &e.to_string());
        } else {
            tracing::warn!(peer = %self.peer, error = %e, "malformed CONNECT; closing");
            self.phase = Phase::Closed;
        }
    }

    /// A first packet that is not a CONNECT we can read.
    pub(super) fn refuse_unreadable_connect(&mut self, e: &MqttError) {
        match e {
            // [MQTT-3.1.2-2]: an unsupported level is answered with return code 0x01 in 3.1.1
            // form, which every version's client can read, then the connection closes.
            MqttError::UnsupportedVersion(_) => {
                self.protocol = Protocol::V311;
                self.refuse(
                    ConnectReasonCode::UnsupportedProtocolVersion,
                    &e.to_string(),
                );
            }
            // [MQTT-3.1.2-1], [MQTT-3.1.0-1], oversized or garbled: close without a reply.
            _ => {
                tracing::warn!(peer = %self.peer, error = %e, "not an MQTT CONNECT; closing");
                self.phase = Phase::Closed;
            }
        }
    }

    pub(super) fn on_connect(&mut self, c: Connect, me: &Shared) {
        let v5 = self.protocol == Protocol::V500;
        self.client_id = c.client_id.to_string();
        // [MQTT-1.5.4-2]: no U+0000 in strings; ids also key store records, which rely on it.
        if self.client_id.contains('\0') {
            return self.refuse(
                ConnectReasonCode::ClientIdentifierNotValid,
                "client id contains U+0000",
            );
        }
        let mut assigned = None;
        if self.client_id.is_empty() {
            // 3.1 requires an id; 3.1.1 only for a persistent session ([MQTT-3.1.3-8]).
            if self.protocol == Protocol::V310
                || (self.protocol == Protocol::V311 && !c.clean_start)
            {
                return self.refuse(
                    ConnectReasonCode::ClientIdentifierNotValid,
                    "empty client id",
                );
            }
            self.client_id = assigned_client_id(self.conn_id);
            assigned = Some(self.client_id.clone());
        }
        let props = &c.properties;
        if props.auth_method.is_some() {
            return self.refuse(
                ConnectReasonCode::BadAuthMethod,
                "enhanced authentication is not supported",
            );
        }
        if props.receive_max == Some(0) || props.max_packet_size == Some(0) {
            return self.refuse(
                ConnectReasonCode::ProtocolError,
                "receive maximum and maximum packet size must not be 0",
            );
        }
        // A will is published like any PUBLISH, so its topic passes the same checks; 5.0
        // has a CONNACK reason for it (0x90), 3.x only the closed connection.
        if let Some(why) = c
            .last_will
            .as_ref()
            .and_then(|w| topic::refusal(&w.topic_name, self.state.config.max_topic_levels))
        {
            return self.refuse_malformed_connect(&MqttError::TopicNameInvalid(why));
        }
        let certificate_user = self
            .peer_identity
            .clone()
            .filter(|_| c.username.is_none() && c.password.is_none());
        let user = match c.username.as_deref() {
            // Without credentials, a verified client certificate names the user (`[mqtt]
            // ssl_cert_login`, RabbitMQ's rule), who must be a configured user.
            None if certificate_user.is_some() => {
                let ip = self.peer.ip();
                if let Err(failure) = self
                    .state
                    .users
                    .check_certificate(certificate_user.as_deref(), ip)
                {
                    return self.refuse(auth_reason(failure), "certificate login refused");
                }
                certificate_user.as_deref().unwrap_or_default()
            }
            // Without a user name there is nothing to check; `[mqtt] allow_anonymous` lets
            // such a client in from anywhere. A password alone (5.0 allows one) names no one
            // either.
            None if self.state.config.allow_anonymous => ANONYMOUS,
            // Otherwise it logs in as guest with guest's default password, as RabbitMQ's MQTT
            // plugin does, and guest's loopback rule refuses it from elsewhere: so
            // `mosquitto_pub -h localhost` works out of the box, as with Mosquitto's
            // local-only default.
            None => {
                let (user, password) = DEFAULT_LOGIN;
                if let Err(failure) = self.state.users.check(user, password, self.peer.ip()) {
                    return self.refuse(auth_reason(failure), "anonymous login refused");
                }
                user
            }
            Some(name) => {
                let user = name;
                let password = c
                    .password
                    .as_deref()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_default();
                let ip: IpAddr = self.peer.ip();
                if let Err(failure) = self.state.users.check(user, &password, ip) {
                    return self.refuse(auth_reason(failure), "login refused");
                }
                user
            }
        };
        // The user needs permissions on MQTT's virtual host (5.0 0x87, 3.1.1 return code 5).
        let grant = match self.state.users.grant(user, &self.state.vhost) {
            Ok(grant) => grant,
            Err(e) => return self.refuse(ConnectReasonCode::NotAuthorized, &e.to_string()),
        };
        // A client id belongs to the user whose session holds it: another user could
        // otherwise take over a device's session and read what is queued for it.
        let existing = self.state.stored_session(&self.client_id);
        if existing
            .as_ref()
            .and_then(|s| s.user.as_deref())
            .is_some_and(|owner| owner != user)
        {
            return self.refuse(
                ConnectReasonCode::NotAuthorized,
                "client id belongs to another user's session",
            );
        }
        // Takeover: one connection per client id ([MQTT-3.1.4-3]). The old connection's
        // session is detached here, synchronously, so the session below resumes from a settled
        // state; the old connection is then told to close.
        let live = Live {
            conn_id: self.conn_id,
            session: me.clone(),
            user: user.to_owned(),
        };
        let taken_over = match self.state.register(&self.client_id, live) {
            Ok(taken_over) => taken_over,
            Err(_) => {
                return self.refuse(
                    ConnectReasonCode::NotAuthorized,
                    "client id is held by another user's connection",
                );
            }
        };
        self.user = Some(user.to_owned());
        self.grant = Some(grant);
        if let Some(old) = taken_over {
            let mut old_session = old.session.lock();
            old_session.end(End::TakenOver);
            let _ = old_session
                .outbox
                .sender()
                .send(Outbound::Close(CloseReason::TakenOver));
        }
        self.state.cancel_will(&self.client_id);

        self.expiry = if v5 {
            props.session_expiry_interval.unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            NEVER_EXPIRES
        };
        // The store writes CONNACK confirms: a session discarded, resumed or written down.
        let mut durable_at = None;
        if c.clean_start && existing.is_some() {
            match self.state.end_session(&self.client_id) {
                Ok(epoch) => durable_at = Some(epoch),
                Err(e) => {
                    tracing::warn!(client_id = %self.client_id, error = %e, "cannot discard the previous session");
                }
            }
        }
        let resumed = if c.clean_start { None } else { existing };
        let session_present = resumed.is_some();
        match self.start_session(resumed) {
            Ok(epoch) => durable_at = durable_at.max(epoch),
            Err(e) => {
                tracing::warn!(client_id = %self.client_id, error = %e, "cannot start the session");
                let reason = if e.is_quota() {
                    ConnectReasonCode::QuotaExceeded
                } else {
                    ConnectReasonCode::ServerUnavailable
                };
                return self.refuse(reason, "session could not be restored");
            }
        }

        self.client_alias_max = props.topic_alias_max.unwrap_or(0);
        self.client_max_packet = props.max_packet_size.unwrap_or(u32::MAX);
        self.problem_info = props.request_problem_info.unwrap_or(true);
        let window = props
            .receive_max
            .unwrap_or(DEFAULT_RECEIVE_MAXIMUM)
            .min(self.state.config.max_inflight);
        self.credit.set_limit(u32::from(window));
        let max_keep_alive = self.state.config.max_keep_alive;
        let server_keep_alive = (max_keep_alive > 0
            && (c.keep_alive == 0 || c.keep_alive > max_keep_alive))
            .then_some(max_keep_alive);
        // 3.x clients cannot be told another keep-alive, so theirs is kept.
        self.keep_alive = if v5 {
            server_keep_alive.unwrap_or(c.keep_alive)
        } else {
            c.keep_alive
        };
        self.will = c.last_will.as_ref().map(|w| Box::new(Will::new(w)));

        // 3.1 has no Session Present flag; a 3.1.1 or 5.0 client learns whether its session
        // was resumed ([MQTT-3.2.2-2], [MQTT-3.2.2-3]).
        let mut connack = Connack::new(
            session_present && self.protocol != Protocol::V310,
            ConnectReasonCode::Success,
        );
        if v5 {
            let config = &self.state.config;
            connack.properties = ConnackProperties {
                receive_max: Some(config.max_inflight),
                max_packet_size: Some(config.max_packet_size),
                assigned_client_id: assigned.as_deref().map(Into::into),
                topic_alias_max: Some(config.topic_alias_max),
                server_keep_alive,
                response_info: props
                    .request_response_info
                    .unwrap_or(false)
                    .then(|| format!("response/{}", self.client_id).into()),
                ..ConnackProperties::default()
            };
        }
        self.send(&Packet::Connack(connack));
        if let Some(epoch) = durable_at {
            self.hold_output_until(epoch);
        }
        self.phase = Phase::Connected;
        tracing::info!(
            peer = %self.peer,
            client_id = %self.client_id,
            user,
            protocol = "mqtt",
            version = %self.protocol,
            session_present,
            "connection opened"
        );
        // [MQTT-4.4.0-1]: PUBRELs of QoS 2 exchanges cut short go out again; unacknowledged
        // PUBLISHes follow from the queue as redeliveries, under their earlier packet ids.
        let released: Vec<u16> = self
            .out_flight
            .iter()
            .filter(|(_, f)| f.extra.is_released())
            .map(|(pid, _)| pid)
            .collect();
        for pid in released {
            if let Ok(pid) = Pid::try_from(pid) {
                self.send(&codec::pubrel(pid, PubrelReasonCode::Success));
            }
        }
        self.consume_all();
    }

    /// Holds the output, CONNACK first, until the durable point reaches `epoch`: a session
    /// is confirmed once it is on disk, and waiting for that here, on an async worker thread,
    /// would stall every connection scheduled on it.
    fn hold_output_until(&mut self, epoch: Epoch) {
        let store = self.state.store();
        if epoch > store.durable_epoch() {
            store.request_sync(epoch);
            self.output_held_until = Some(epoch);
        }
    }

    /// Sets up the session: a resumed one gets its subscriptions and unfinished QoS 2 exchanges
    /// back; a persistent one is written down. Returns the epoch of the last store write, if
    /// any, which CONNACK waits for.
    fn start_session(
        &mut self,
        resumed: Option<StoredSession>,
    ) -> Result<Option<Epoch>, MqttError> {
        let mut written = None;
        let records = self.state.records(&self.client_id);
        // Taken in any case, so that ids kept for a session that is not resumed go with it.
        let unacked = self.state.take_unacked_ids(&self.client_id);
        if let Some(stored) = resumed {
            self.durable_queue = true;
            // [MQTT-4.4.0-1]: QoS 1 messages the last connection left unacknowledged go out
            // again under their packet ids; QoS 2 ones from their records, below.
            self.resend = unacked;
            self.qos2_in = records.qos2_in()?.into_iter().collect();
            for (pid, stage) in records.qos2_out()? {
                match stage {
                    OutStage::Published { queue, seq } => {
                        self.resend.insert((queue, seq), pid);
                    }
                    OutStage::Released => {
                        self.out_flight
                            .hold(pid, super::outbound::OutFlight::released(true));
                    }
                }
            }
            for s in stored.subscriptions {
                self.stamp_client_id |= s.no_local;
                self.subscriptions.insert(s.filter.clone(), s);
            }
            written = self.restore_bindings()?;
        }
        if self.expiry > 0 {
            self.durable_queue = true;
            written = written.max(Some(self.write_session(None)?));
        }
        Ok(written)
    }

    /// Writes the session down (persistent sessions only).
    pub(super) fn save_session(
        &mut self,
        disconnected_at_ms: Option<u64>,
    ) -> Result<(), MqttError> {
        if self.expiry == 0 {
            return Ok(());
        }
        self.write_session(disconnected_at_ms)?;
        Ok(())
    }

    /// Writes a persistent session's record; the epoch says when it is on disk.
    pub(super) fn write_session(
        &mut self,
        disconnected_at_ms: Option<u64>,
    ) -> Result<Epoch, MqttError> {
        let stored = StoredSession {
            expiry: self.expiry,
            disconnected_at_ms,
            subscriptions: self.subscriptions.values().cloned().collect(),
            user: self.user.clone(),
        };
        self.state.save_session(&self.client_id, stored)
    }

    pub(super) fn on_disconnect(&mut self, d: Disconnect) -> Result<(), MqttError> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            // [MQTT-3.14.2-2]: a session that was to end with its connection cannot be revived.
            if self.expiry == 0 && expiry != 0 {
                return Err(MqttError::Protocol(
                    "session expiry set on DISCONNECT after CONNECT set none".into(),
                ));
            }
            self.expiry = expiry;
        }
        let how = if d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage {
            End::WithWill
        } else {
            End::Normal
        };
        tracing::info!(peer = %self.peer, client_id = %self.client_id, reason = ?d.reason_code, "mqtt client disconnected");
        self.end(how);
        self.phase = Phase::Closed;
        Ok(())
    }

    /// Detaches the connection from its session. Runs once, from this connection's task or,
    /// on takeover, from the newer connection's.
    pub(super) fn end(&mut self, how: End) {
        if self.ended || self.user.is_none() {
            self.ended = true;
            return;
        }
        self.ended = true;
        let unacked = self.release_deliveries();
        let now = now_ms();
        // A will is published as its client: the same permission checks as a PUBLISH, made
        // here, with the permissions of the connection that set it. A normal DISCONNECT drops it.
        let will = self.will.take().filter(|_| how != End::Normal);
        let will = will.filter(|w| match self.may_publish(w.topic()) {
            Ok(()) => true,
            Err(refused) => {
                tracing::warn!(client_id = %self.client_id, error = %refused, "will message refused");
                false
            }
        });
        if let Some(will) = will {
            let delay = will.delay_secs;
            match how {
                End::Normal => {}
                // A new connection within the delay cancels a delayed will (MQTT 5.0 §3.1.2.5).
                End::TakenOver if delay > 0 => {}
                End::TakenOver => self
                    .state
                    .publish_will(&self.client_id, &will.published_at(now)),
                End::WithWill if delay == 0 || self.expiry == 0 => self
                    .state
                    .publish_will(&self.client_id, &will.published_at(now)),
                End::WithWill => {
                    // Sent when the delay is over or the session ends, whichever is first.
                    let due_ms = now.saturating_add(u64::from(delay.min(self.expiry)) * 1000);
                    let pending = PendingWill {
                        due_ms,
                        message: will.published_at(due_ms),
                    };
                    self.state.schedule_will(&self.client_id, pending);
                }
            }
        }
        if self.expiry > 0 {
            self.state.keep_unacked_ids(&self.client_id, unacked);
            // The session outlives the connection; unless taken over, its clock starts now.
            if how != End::TakenOver {
                if let Err(e) = self.save_session(Some(now)) {
                    tracing::warn!(client_id = %self.client_id, error = %e, "cannot record the session's disconnect time");
                }
            }
        } else {
            // The session ends with the connection.
            self.release_all_shared();
            if self.durable_queue {
                if let Err(e) = self.state.end_session(&self.client_id) {
                    tracing::warn!(client_id = %self.client_id, error = %e, "cannot end the session");
                }
            }
        }
        // A clean session's queue is exclusive to this connection and goes with it.
        self.state.broker.connection_closed(self.conn_id);
        // Last: until now a new connection for the client id finds this one registered and
        // waits on its lock, so it sees the will scheduled and the session settled.
        self.state.unregister(&self.client_id, self.conn_id);
    }
}
