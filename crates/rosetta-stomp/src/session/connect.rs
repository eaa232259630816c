//! CONNECT (and STOMP): version and heart-beat negotiation, login, virtual host.

use rosetta_core::AuthFailure;

use super::{Phase, Session};
use crate::error::StompError;
use crate::frame::{Command, Frame, Version};

/// RabbitMQ's `default_user`: a client that sends no `login` is logged in as guest (whose
/// loopback-only rule still applies), so clients written for RabbitMQ move over unchanged.
const DEFAULT_LOGIN: (&str, &str) = ("guest", "guest");

/// STOMP 1.2 Protocol Negotiation: the highest version both sides support; a CONNECT without
/// `accept-version` is a 1.0 client.
fn negotiate(accept: Option<&str>) -> Result<Version, StompError> {
    let Some(accept) = accept else {
        return Ok(Version::V1_0);
    };
    accept
        .split(',')
        .filter_map(Version::parse)
        .max()
        .ok_or(StompError::UnsupportedVersion)
}

/// Parses `heart-beat: cx,cy` (STOMP 1.2 Heart-beating); absent means `0,0`.
fn client_heartbeat(frame: &Frame) -> Result<(u64, u64), StompError> {
    let Some(text) = frame.get("heart-beat") else {
        return Ok((0, 0));
    };
    let invalid = || StompError::InvalidHeader {
        header: "heart-beat",
        reason: format!("'{text}' is not two comma-separated integers"),
    };
    let (x, y) = text.split_once(',').ok_or_else(invalid)?;
    let x = x.trim().parse().map_err(|_| invalid())?;
    let y = y.trim().parse().map_err(|_| invalid())?;
    Ok((x, y))
}

/// STOMP 1.2 Heart-beating: each direction runs at the slower of what the sender can do and
/// the receiver wants, and not at all if either side says 0.
fn negotiate_heartbeat(offer: u64, client: (u64, u64)) -> (u64, u64) {
    let (cx, cy) = client;
    let pick = |a: u64, b: u64| if a == 0 || b == 0 { 0 } else { a.max(b) };
    (pick(offer, cy), pick(cx, offer))
}

/// Whether a `host` header that names no virtual host plainly names a machine instead: a host
/// name with a dot, an address (dots, or colons for IPv6) or `localhost`. Clients such as
/// stomp.py send the server's host name there by default, so such a header means the default
/// virtual host; any other unknown name is refused as RabbitMQ refuses it, so a typo in a
/// virtual host's name is not silently served by another.
fn names_a_machine(host: &str) -> bool {
    host.contains(['.', ':']) || host.eq_ignore_ascii_case("localhost")
}

impl Session {
    pub(super) fn connect(&mut self, frame: &Frame) -> Result<(), StompError> {
        let version = negotiate(frame.get("accept-version"))?;
        self.version = version;
        let certificate_user = self
            .peer_identity
            .clone()
            .filter(|_| frame.get("login").is_none() && frame.get("passcode").is_none());
        let (login, checked) = match (&certificate_user, frame.get("login")) {
            // Without credentials, a verified client certificate names the user (`[stomp]
            // ssl_cert_login`, RabbitMQ's rule), who must be a configured user.
            (Some(name), _) => (
                name.as_str(),
                self.users.check_certificate(Some(name), self.peer.ip()),
            ),
            (None, Some(login)) => {
                let passcode = frame.get("passcode").unwrap_or("");
                (login, self.users.check(login, passcode, self.peer.ip()))
            }
            (None, None) => {
                let (login, passcode) = DEFAULT_LOGIN;
                (login, self.users.check(login, passcode, self.peer.ip()))
            }
        };
        if let Err(why) = checked {
            let (reason, error) = match why {
                AuthFailure::BadCredentials => (
                    "bad credentials",
                    StompError::AccessRefused(login.to_owned()),
                ),
                AuthFailure::LoopbackOnly => (
                    "user may only connect over loopback",
                    StompError::LoopbackOnly(login.to_owned()),
                ),
            };
            tracing::warn!(peer = %self.peer, user = login, reason, "STOMP login refused");
            return Err(error);
        }
        let vhost = match frame.get("host") {
            Some(host) => match self.broker.vhost(host) {
                Some(vhost) => Some(vhost),
                None if names_a_machine(host) => self.broker.vhost(&self.config.default_vhost),
                None => {
                    tracing::warn!(peer = %self.peer, user = login, vhost = host, "STOMP login refused: no such virtual host");
                    return Err(StompError::VhostDenied(host.to_owned()));
                }
            },
            None => self.broker.vhost(&self.config.default_vhost),
        }
        .ok_or_else(|| StompError::VhostDenied(self.config.default_vhost.clone()))?;
        // The user needs permissions on the virtual host, as with a missing one (RabbitMQ).
        let grant = self.users.grant(login, &vhost).map_err(|e| {
            tracing::warn!(peer = %self.peer, user = login, error = %e, "STOMP login refused");
            StompError::VhostDenied(vhost.name.clone())
        })?;
        let offer = u64::from(self.config.heartbeat_ms);
        let mut reply = Frame::new(Command::Connected)
            .header("version", version.as_str())
            .header("server", concat!("Rosetta/", env!("CARGO_PKG_VERSION")))
            .header("session", format!("session-{}", self.conn_id));
        // RabbitMQ's STOMP plugin answers every CONNECT with `heart-beat`, in every version, and
        // with `0,0` to a client that offered none (no header, or `0,0`): clients written
        // against it read the header unconditionally. A 1.0 client that does offer heart-beats
        // gets them, as there.
        let client = client_heartbeat(frame)?;
        self.heartbeat = negotiate_heartbeat(offer, client);
        let answer = if client == (0, 0) { 0 } else { offer };
        reply.push_header("heart-beat", format!("{answer},{answer}"));
        self.client_id = frame.get("client-id").map(str::to_owned);
        self.user = login.to_owned();
        tracing::info!(peer = %self.peer, user = login, vhost = %vhost.name, protocol = "stomp", version = version.as_str(), "connection opened");
        self.vhost = Some(vhost);
        self.grant = Some(grant);
        self.phase = Phase::Connected;
        self.write(&reply);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_common_version_wins_and_absent_means_1_0() {
        assert_eq!(negotiate(None), Ok(Version::V1_0));
        assert_eq!(negotiate(Some("1.0,1.1,1.2")), Ok(Version::V1_2));
        assert_eq!(negotiate(Some("1.1,1.0")), Ok(Version::V1_1));
        assert_eq!(
            negotiate(Some("1.3,2.0")),
            Err(StompError::UnsupportedVersion)
        );
    }

    #[test]
    fn host_names_and_addresses_are_told_from_virtual_host_names() {
        for machine in [
            "localhost",
            "LOCALHOST",
            "broker.example",
            "127.0.0.1",
            "::1",
        ] {
            assert!(names_a_machine(machine), "{machine}");
        }
        for vhost in ["/", "staging", "my-vhost", ""] {
            assert!(!names_a_machine(vhost), "{vhost}");
        }
    }

    #[test]
    fn heartbeats_take_the_slower_side_and_zero_disables() {
        assert_eq!(negotiate_heartbeat(10_000, (0, 0)), (0, 0));
        assert_eq!(
            negotiate_heartbeat(10_000, (5_000, 20_000)),
            (20_000, 10_000)
        );
        assert_eq!(negotiate_heartbeat(0, (5_000, 5_000)), (0, 0));
        assert_eq!(negotiate_heartbeat(1_000, (0, 3_000)), (3_000, 0));
    }
}
