//! Connection negotiation (AMQP 0-9-1 §4.2.1 / class connection): start, SASL, tune, open.

use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use rosetta_core::AuthFailure;

use super::{Exception, Phase, Session};
use crate::codec::FRAME_MIN_SIZE;

/// Advertised to clients; each names an extension this server implements.
const CAPABILITIES: [&str; 7] = [
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "authentication_failure_close",
    "per_consumer_qos",
    "connection.blocked",
];

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Splits a SASL PLAIN response `authzid \0 authcid \0 password` (RFC 4616).
fn parse_plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let pass = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    parts.next().is_none().then_some((user, pass))
}

/// AMQPLAIN: a field table without its length prefix, holding LOGIN and PASSWORD.
fn parse_amqplain(response: &[u8]) -> Option<(String, String)> {
    let mut framed = Vec::with_capacity(response.len() + 4);
    framed.extend_from_slice(&u32::try_from(response.len()).ok()?.to_be_bytes());
    framed.extend_from_slice(response);
    let (_, table) = amq_protocol::types::parsing::parse_field_table(framed.as_slice()).ok()?;
    let get = |k: &str| match table.inner().get(k)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    };
    Some((get("LOGIN")?, get("PASSWORD")?))
}

/// A refused login, told before the connection closes (`authentication_failure_close`, as
/// RabbitMQ does).
fn login_refused(mechanism: &str, reason: &str, method: &AMQPClass) -> Exception {
    Exception::for_method(
        403,
        format!(
            "ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}: {reason}"
        ),
        method,
    )
}

fn client_capability(props: &FieldTable, name: &str) -> bool {
    match props.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(caps)) => {
            matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

impl Session {
    pub(super) fn send_start(&mut self) {
        let mut caps = FieldTable::default();
        for c in CAPABILITIES {
            caps.insert(c.into(), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        props.insert("product".into(), text("Rosetta"));
        props.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
        props.insert("platform".into(), text("Rust"));
        props.insert(
            "information".into(),
            text("AMQP 0-9-1, MQTT and STOMP on one routing core"),
        );
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        let start = connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: props,
            mechanisms: LongString::from(self.mechanisms().as_bytes().to_vec()),
            locales: LongString::from(b"en_US".to_vec()),
        };
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(start)),
        );
    }

    /// The SASL mechanisms `connection.start` offers: `EXTERNAL` (RabbitMQ's
    /// rabbitmq_auth_mechanism_ssl) only when a verified client certificate names a user.
    fn mechanisms(&self) -> &'static str {
        if self.peer_identity.is_some() {
            "PLAIN AMQPLAIN EXTERNAL"
        } else {
            "PLAIN AMQPLAIN"
        }
    }

    pub(super) fn on_start_ok(&mut self, m: connection::StartOk) -> Result<(), Exception> {
        let method = AMQPClass::Connection(connection::AMQPMethod::StartOk(m.clone()));
        let mechanism = m.mechanism.as_str();
        let creds = match mechanism {
            "PLAIN" => parse_plain(m.response.as_bytes()),
            "AMQPLAIN" => parse_amqplain(m.response.as_bytes()),
            // The certificate is the credential; the response (an optional authorization
            // identity) is not looked at, as RabbitMQ does not.
            "EXTERNAL" => return self.log_in_by_certificate(&m, &method),
            other => {
                return Err(Exception::for_method(
                    403,
                    format!("ACCESS_REFUSED - unsupported authentication mechanism '{other}'"),
                    &method,
                ))
            }
        };
        let Some((user, pass)) = creds else {
            return Err(Exception::for_method(
                403,
                format!("ACCESS_REFUSED - malformed {mechanism} response"),
                &method,
            ));
        };
        if let Err(why) = self.users.check(&user, &pass, self.peer.ip()) {
            let reason = match why {
                AuthFailure::BadCredentials => "invalid credentials",
                AuthFailure::LoopbackOnly => "user can only connect via localhost",
            };
            return Err(login_refused(mechanism, reason, &method));
        }
        self.logged_in(user, &m);
        Ok(())
    }

    /// `EXTERNAL`: the user the verified client certificate names, if it is a configured user.
    /// Without a certificate (a plain connection, none presented) it is refused, delayed and
    /// counted like a wrong password.
    fn log_in_by_certificate(
        &mut self,
        m: &connection::StartOk,
        method: &AMQPClass,
    ) -> Result<(), Exception> {
        let identity = self.peer_identity.clone();
        if let Err(why) = self
            .users
            .check_certificate(identity.as_deref(), self.peer.ip())
        {
            let reason = match (why, &identity) {
                (_, None) => "no verified client certificate".to_owned(),
                (AuthFailure::BadCredentials, Some(name)) => {
                    format!("certificate user '{name}' is not a known user")
                }
                (AuthFailure::LoopbackOnly, Some(_)) => {
                    "user can only connect via localhost".to_owned()
                }
            };
            return Err(login_refused("EXTERNAL", &reason, method));
        }
        self.logged_in(identity.unwrap_or_default(), m);
        Ok(())
    }

    /// A login accepted: the client's capabilities noted, `connection.tune` sent.
    fn logged_in(&mut self, user: String, m: &connection::StartOk) {
        self.user = user;
        self.cancel_notify = client_capability(&m.client_properties, "consumer_cancel_notify");
        self.blocked_notify = client_capability(&m.client_properties, "connection.blocked");
        let tune = connection::Tune {
            channel_max: self.channel_max,
            frame_max: self.frame_max,
            heartbeat: self.heartbeat,
        };
        self.send(0, AMQPClass::Connection(connection::AMQPMethod::Tune(tune)));
        self.phase = Phase::AwaitingTuneOk;
    }

    /// RabbitMQ's `connection.update-secret`: a client replacing an expiring credential. The
    /// new secret must be the same user's valid password now, as a fresh login would check it;
    /// otherwise the connection closes with 403, as a failed login does.
    pub(super) fn on_update_secret(
        &mut self,
        m: connection::UpdateSecret,
    ) -> Result<(), Exception> {
        let Ok(secret) = std::str::from_utf8(m.new_secret.as_bytes()) else {
            let method = AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(m.clone()));
            return Err(Exception::for_method(
                403,
                "ACCESS_REFUSED - new secret is not valid UTF-8".to_owned(),
                &method,
            ));
        };
        if let Err(why) = self.users.check(&self.user, secret, self.peer.ip()) {
            let method = AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(m.clone()));
            let reason = match why {
                AuthFailure::BadCredentials => "invalid credentials",
                AuthFailure::LoopbackOnly => "user can only connect via localhost",
            };
            return Err(Exception::for_method(
                403,
                format!(
                    "ACCESS_REFUSED - secret update refused for user '{}': {reason}",
                    self.user
                ),
                &method,
            ));
        }
        tracing::info!(peer = %self.peer, user = %self.user, reason = %m.reason, "secret updated");
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                connection::UpdateSecretOk {},
            )),
        );
        Ok(())
    }

    pub(super) fn on_tune_ok(&mut self, m: connection::TuneOk) -> Result<(), Exception> {
        let method = AMQPClass::Connection(connection::AMQPMethod::TuneOk(m.clone()));
        // The client may lower our proposals, never raise them; 0 means "no limit" on its side.
        if m.frame_max != 0 && m.frame_max < FRAME_MIN_SIZE {
            return Err(Exception::not_allowed(
                &method,
                format!(
                    "frame_max {} below the minimum {FRAME_MIN_SIZE}",
                    m.frame_max
                ),
            ));
        }
        if m.frame_max > self.frame_max {
            return Err(Exception::not_allowed(
                &method,
                format!(
                    "frame_max {} above the server's {}",
                    m.frame_max, self.frame_max
                ),
            ));
        }
        if m.channel_max > self.channel_max {
            return Err(Exception::not_allowed(
                &method,
                format!(
                    "channel_max {} above the server's {}",
                    m.channel_max, self.channel_max
                ),
            ));
        }
        if m.frame_max != 0 {
            self.frame_max = m.frame_max;
        }
        if m.channel_max != 0 {
            self.channel_max = m.channel_max;
        }
        self.heartbeat = m.heartbeat;
        self.phase = Phase::AwaitingOpen;
        Ok(())
    }

    pub(super) fn on_open(&mut self, m: connection::Open) -> Result<(), Exception> {
        let name = m.virtual_host.as_str();
        let method = || AMQPClass::Connection(connection::AMQPMethod::Open(m.clone()));
        let Some(vhost) = self.broker.vhost(name) else {
            return Err(Exception::not_allowed(
                &method(),
                format!("vhost '{name}' not found"),
            ));
        };
        // A user without permissions on the virtual host may not open it (530, RabbitMQ's text).
        let grant = match self.users.grant(&self.user, &vhost) {
            Ok(grant) => grant,
            Err(e) => {
                let text = match e {
                    rosetta_core::CoreError::AccessRefused(text) => text,
                    other => other.to_string(),
                };
                return Err(Exception::not_allowed(&method(), text));
            }
        };
        self.grant = Some(grant);
        tracing::info!(peer = %self.peer, user = %self.user, vhost = name, protocol = "amqp", "connection opened");
        self.vhost = Some(vhost);
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        );
        self.phase = Phase::Open;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_response_splits_into_user_and_password() {
        assert_eq!(
            parse_plain(b"\0guest\0secret"),
            Some(("guest".into(), "secret".into()))
        );
        assert_eq!(parse_plain(b"guest"), None);
        assert_eq!(parse_plain(b"\0a\0b\0c"), None);
    }

    fn field(out: &mut Vec<u8>, name: &str, value: &str) {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(b'S');
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }

    #[test]
    fn amqplain_response_reads_login_and_password() {
        let mut response = Vec::new();
        field(&mut response, "LOGIN", "guest");
        field(&mut response, "PASSWORD", "pw");
        assert_eq!(
            parse_amqplain(&response),
            Some(("guest".into(), "pw".into()))
        );
        assert_eq!(parse_amqplain(&response[..5]), None);
    }
}
