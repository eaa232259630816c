//! `listen = "host:port"` or `listen = 5672`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::de::{self, Deserializer, Visitor};

/// Deserializes a listen address from either a "host:port" string or a bare port number.
pub(super) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    deserializer.deserialize_any(ListenVisitor)
}

pub(super) fn deserialize_some<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    deserialize(deserializer).map(Some)
}

/// Deserializes an optional listener that is on by default: an address as for [`deserialize`],
/// or `false` to turn it off.
pub(super) fn deserialize_or_off<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    deserializer.deserialize_any(OrOff)
}

struct OrOff;

impl<'de> Visitor<'de> for OrOff {
    type Value = Option<SocketAddr>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a listen address \"host:port\", a port number, or false")
    }

    fn visit_bool<E: de::Error>(self, on: bool) -> Result<Self::Value, E> {
        if on {
            Err(E::custom(
                "expected a listen address \"host:port\", a port number, or false (off)",
            ))
        } else {
            Ok(None)
        }
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        ListenVisitor.visit_str(text).map(Some)
    }

    fn visit_i64<E: de::Error>(self, port: i64) -> Result<Self::Value, E> {
        ListenVisitor.visit_i64(port).map(Some)
    }

    fn visit_u64<E: de::Error>(self, port: u64) -> Result<Self::Value, E> {
        ListenVisitor.visit_u64(port).map(Some)
    }
}

/// Parses a "host:port" listen address. Hosts are IP literals, plus `localhost` because operators
/// write it; other names are refused rather than resolved, so a config never depends on DNS.
pub fn parse(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = text.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        }
    }
    Err(format!(
        "invalid listen address `{text}`: expected \"ip:port\" (e.g. \"0.0.0.0:5672\", \"[::]:5672\") or a port number"
    ))
}

struct ListenVisitor;

impl Visitor<'_> for ListenVisitor {
    type Value = SocketAddr;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a listen address \"host:port\" or a port number")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<SocketAddr, E> {
        parse(text).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, port: i64) -> Result<SocketAddr, E> {
        u16::try_from(port)
            .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
            .map_err(|_| E::custom(format!("port {port} is out of range 0..=65535")))
    }

    fn visit_u64<E: de::Error>(self, port: u64) -> Result<SocketAddr, E> {
        u16::try_from(port)
            .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
            .map_err(|_| E::custom(format!("port {port} is out of range 0..=65535")))
    }
}
