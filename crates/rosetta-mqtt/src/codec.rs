//! Packets in and out, for every protocol version, on top of the `mqtt-proto` codec.
//!
//! The session works with MQTT 5.0's packet types only: MQTT 3.1 and 3.1.1 packets are decoded
//! into their 5.0 counterparts (no properties, success reason codes), and 5.0 packets are
//! encoded back into 3.x form for 3.x clients. This wrapper reads the fixed header itself, so a
//! packet is refused for its size before its body is buffered, and it hands the decoder exactly
//! one packet's bytes, so a packet that claims more than it holds is malformed rather than
//! silently continued into the next one.

use bytes::{Buf, BufMut, BytesMut};
use mqtt_proto::v5::{
    Connack, ConnectReasonCode, Packet, Puback, PubackReasonCode, Pubcomp, PubcompReasonCode,
    Publish, PublishProperties, Pubrec, PubrecReasonCode, Pubrel, PubrelReasonCode, RetainHandling,
    Subscribe, SubscribeProperties, SubscribeReasonCode, SubscriptionOptions, Unsubscribe,
    UnsubscribeProperties,
};
use mqtt_proto::{v3, v5, Encodable, PollHeader, Protocol, QoS, QosPid};

use crate::error::MqttError;

/// Packet type of CONNECT in the fixed header's high nibble.
const CONNECT: u8 = 1;
/// Packet types without a body beyond their fixed header.
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;

/// A fixed header (MQTT 5.0 §2.1.1): the first byte and the Remaining Length.
#[derive(Debug, Clone, Copy)]
struct Fixed {
    first: u8,
    header_len: usize,
    remaining: usize,
}

impl Fixed {
    fn total(&self) -> usize {
        self.header_len + self.remaining
    }
}

/// The largest value a Variable Byte Integer holds (MQTT 5.0 §1.5.5).
const VAR_INT_MAX: usize = 268_435_455;
/// Property identifier of Subscription Identifier (MQTT 5.0 §2.2.2.2).
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;

/// Reads a Variable Byte Integer (MQTT 5.0 §1.5.5) from the start of `input`: its value and how
/// many bytes it took, or `None` when `input` ends first. A fifth byte makes it malformed.
fn read_var_int(input: &[u8]) -> Result<Option<(usize, usize)>, MqttError> {
    let mut value: usize = 0;
    for i in 0..4 {
        let Some(&byte) = input.get(i) else {
            return Ok(None);
        };
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Err(MqttError::Malformed(
        "variable byte integer longer than four bytes".into(),
    ))
}

/// Appends `value` as a Variable Byte Integer; the caller keeps it within [`VAR_INT_MAX`].
fn write_var_int(out: &mut impl BufMut, mut value: usize) {
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        out.put_u8(if value > 0 { byte | 0x80 } else { byte });
        if value == 0 {
            return;
        }
    }
}

fn var_int_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Reads the fixed header, if complete: the Remaining Length is a Variable Byte Integer.
fn fixed_header(input: &[u8], max_packet_size: u32) -> Result<Option<Fixed>, MqttError> {
    let Some(&first) = input.first() else {
        return Ok(None);
    };
    let Some((remaining, len)) = read_var_int(&input[1..])? else {
        return Ok(None);
    };
    let fixed = Fixed {
        first,
        header_len: 1 + len,
        remaining,
    };
    // Maximum Packet Size: judged on the whole packet, before buffering.
    if fixed.total() as u64 > u64::from(max_packet_size) {
        return Err(MqttError::TooLarge {
            size: fixed.total() as u64,
            max: max_packet_size,
        });
    }
    Ok(Some(fixed))
}

/// The protocol a CONNECT asks for, from its protocol name and level (MQTT 5.0 §3.1.2.1-2).
fn connect_protocol(body: &[u8]) -> Result<Protocol, MqttError> {
    let short = || MqttError::Malformed("CONNECT too short for its protocol name".into());
    let len = usize::from(u16::from_be_bytes([
        *body.first().ok_or_else(short)?,
        *body.get(1).ok_or_else(short)?,
    ]));
    let name = body.get(2..2 + len).ok_or_else(short)?;
    let level = *body.get(2 + len).ok_or_else(short)?;
    match (name, level) {
        (b"MQIsdp", 3) => Ok(Protocol::V310),
        (b"MQTT", 4) => Ok(Protocol::V311),
        (b"MQTT", 5) => Ok(Protocol::V500),
        (b"MQTT" | b"MQIsdp", level) => Err(MqttError::UnsupportedVersion(level)),
        (other, _) => Err(MqttError::ProtocolName(
            String::from_utf8_lossy(other).into_owned(),
        )),
    }
}

/// The outcome of reading a CONNECT whose protocol is known: the packet, or why it is invalid.
pub type ConnectResult = Result<v5::Connect, MqttError>;

/// Decodes the first packet of a connection, which must be CONNECT ([MQTT-3.1.0-1]), and tells
/// which protocol version the rest of the connection speaks. 3.x CONNECTs come back as 5.0
/// CONNECTs with `clean_start` holding Clean Session. The outer error means not even the
/// protocol could be told; the inner one, a CONNECT of a known protocol that does not decode.
pub fn decode_connect(
    input: &mut BytesMut,
    max_packet_size: u32,
) -> Result<Option<(Protocol, ConnectResult)>, MqttError> {
    let Some(&first) = input.first() else {
        return Ok(None);
    };
    if first != CONNECT << 4 {
        return Err(MqttError::NotConnect);
    }
    let Some(fixed) = fixed_header(input, max_packet_size)? else {
        return Ok(None);
    };
    if input.len() < fixed.total() {
        // No room is made for the announced rest: before authentication, five bytes could
        // otherwise hold a Maximum Packet Size of memory per connection. The reader grows the
        // buffer as bytes arrive.
        return Ok(None);
    }
    let packet = input.split_to(fixed.total());
    let body = &packet[fixed.header_len..];
    let protocol = connect_protocol(body)?;
    let connect = match decode_body(protocol, fixed, body) {
        Ok(Packet::Connect(c)) => Ok(c),
        Ok(_) => Err(MqttError::NotConnect),
        Err(e) => Err(e),
    };
    Ok(Some((protocol, connect)))
}

/// What the packets in a batch of input may do to routing, as their fixed headers tell it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoutingEffects {
    /// A PUBLISH, or a DISCONNECT (which may publish a will), is among them.
    pub publishes: bool,
    /// A SUBSCRIBE, an UNSUBSCRIBE or a CONNECT (which may take a session over) is among them.
    pub subscribes: bool,
}

/// Reads the fixed headers of the packets in `input`, skipping their bodies, to tell what they
/// do to routing before they are decoded. A header cut short or malformed is taken as a
/// PUBLISH: it costs only a wait for earlier input, and decoding will judge it.
pub fn routing_effects(input: &[u8]) -> RoutingEffects {
    const PUBLISH: u8 = 3;
    const SUBSCRIBE: u8 = 8;
    const UNSUBSCRIBE: u8 = 10;
    const DISCONNECT: u8 = 14;
    let mut effects = RoutingEffects::default();
    let mut at = 0;
    while let Some(&first) = input.get(at) {
        match first >> 4 {
            // A DISCONNECT may publish the client's will (MQTT 5.0 reason 0x04).
            PUBLISH | DISCONNECT => effects.publishes = true,
            // A CONNECT may take over a session, dropping its subscriptions.
            SUBSCRIBE | UNSUBSCRIBE | CONNECT => effects.subscribes = true,
            _ => {}
        }
        match read_var_int(&input[at + 1..]) {
            Ok(Some((remaining, len))) => at += 1 + len + remaining,
            Ok(None) | Err(_) => {
                effects.publishes = true;
                break;
            }
        }
    }
    effects
}

/// Decodes the next complete packet of a connected client, if `input` holds one.
pub fn decode(
    input: &mut BytesMut,
    protocol: Protocol,
    max_packet_size: u32,
) -> Result<Option<Packet>, MqttError> {
    let Some(fixed) = fixed_header(input, max_packet_size)? else {
        return Ok(None);
    };
    if input.len() < fixed.total() {
        // As for CONNECT: memory follows the bytes received, not the length announced.
        return Ok(None);
    }
    let mut packet = input.split_to(fixed.total());
    packet.advance(fixed.header_len);
    decode_body(protocol, fixed, &packet).map(Some)
}

fn decode_body(protocol: Protocol, fixed: Fixed, body: &[u8]) -> Result<Packet, MqttError> {
    let kind = fixed.first >> 4;
    if matches!(kind, PINGREQ | PINGRESP) && !body.is_empty() {
        return Err(MqttError::Malformed("PINGREQ with a body".into()));
    }
    let remaining = u32::try_from(fixed.remaining)
        .map_err(|_| MqttError::Malformed("remaining length".into()))?;
    let total = u32::try_from(fixed.total())
        .map_err(|_| MqttError::Malformed("remaining length".into()))?;
    let mut offset = 0;
    let packet = if protocol == Protocol::V500 {
        let header = v5::Header::new_with(fixed.first, remaining, total)?;
        match header.build_empty_packet() {
            Some(p) if body.is_empty() => p,
            _ => header.decode_buffer(body, &mut offset)?,
        }
    } else {
        let header = v3::Header::new_with(fixed.first, remaining, total)?;
        match header.build_empty_packet() {
            Some(p) if body.is_empty() => from_v3(p),
            // PINGREQ, PINGRESP and DISCONNECT have no body in 3.x (MQTT 3.1.1 §3.12-3.14).
            Some(_) => return Err(MqttError::Malformed("packet without a body has one".into())),
            None => from_v3(header.decode_buffer(body, &mut offset)?),
        }
    };
    if offset != body.len() && !body.is_empty() {
        return Err(MqttError::Malformed(format!(
            "{} bytes left after the packet's fields",
            body.len() - offset
        )));
    }
    Ok(packet)
}

/// A 3.x packet as its 5.0 counterpart.
fn from_v3(packet: v3::Packet) -> Packet {
    match packet {
        v3::Packet::Connect(c) => Packet::Connect(v5::Connect {
            protocol: c.protocol,
            clean_start: c.clean_session,
            keep_alive: c.keep_alive,
            properties: v5::ConnectProperties::default(),
            client_id: c.client_id,
            last_will: c.last_will.map(|w| v5::LastWill {
                qos: w.qos,
                retain: w.retain,
                topic_name: w.topic_name,
                payload: w.message,
                properties: v5::WillProperties::default(),
            }),
            username: c.username,
            password: c.password,
        }),
        v3::Packet::Connack(c) => {
            Packet::Connack(Connack::new(c.session_present, ConnectReasonCode::Success))
        }
        v3::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            retain: p.retain,
            qos_pid: p.qos_pid,
            topic_name: p.topic_name,
            payload: p.payload,
            properties: PublishProperties::default(),
        }),
        v3::Packet::Puback(pid) => Packet::Puback(Puback::new_success(pid)),
        v3::Packet::Pubrec(pid) => Packet::Pubrec(Pubrec::new_success(pid)),
        v3::Packet::Pubrel(pid) => Packet::Pubrel(Pubrel::new_success(pid)),
        v3::Packet::Pubcomp(pid) => Packet::Pubcomp(Pubcomp::new_success(pid)),
        v3::Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            pid: s.pid,
            properties: SubscribeProperties::default(),
            topics: s
                .topics
                .into_iter()
                .map(|(filter, qos)| {
                    // 3.x has none of 5.0's options: deliver own messages, clear RETAIN on
                    // forwarding, send retained messages on every subscribe.
                    let options = SubscriptionOptions {
                        max_qos: qos,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: RetainHandling::SendAtSubscribe,
                    };
                    (filter, options)
                })
                .collect(),
        }),
        v3::Packet::Suback(s) => Packet::Suback(v5::Suback::new(s.pid, Vec::new())),
        v3::Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            pid: u.pid,
            properties: UnsubscribeProperties::default(),
            topics: u.topics,
        }),
        v3::Packet::Unsuback(pid) => Packet::Unsuback(v5::Unsuback::new(pid, Vec::new())),
        v3::Packet::Pingreq => Packet::Pingreq,
        v3::Packet::Pingresp => Packet::Pingresp,
        v3::Packet::Disconnect => Packet::Disconnect(v5::Disconnect::new_normal()),
    }
}

/// The 3.1.1 CONNACK return code for a 5.0 reason code (MQTT 3.1.1 §3.2.2.3).
fn return_code(reason: ConnectReasonCode) -> v3::ConnectReturnCode {
    use v3::ConnectReturnCode as R;
    match reason {
        ConnectReasonCode::Success => R::Accepted,
        ConnectReasonCode::UnsupportedProtocolVersion => R::UnacceptableProtocolVersion,
        ConnectReasonCode::ClientIdentifierNotValid => R::IdentifierRejected,
        ConnectReasonCode::BadUserNameOrPassword => R::BadUserNameOrPassword,
        ConnectReasonCode::NotAuthorized | ConnectReasonCode::Banned => R::NotAuthorized,
        _ => R::ServerUnavailable,
    }
}

/// A 5.0 packet in 3.x form; `None` for what 3.x cannot say (a server DISCONNECT, AUTH) and
/// for what [`encode`] writes itself.
fn to_v3(packet: &Packet) -> Option<v3::Packet> {
    Some(match packet {
        Packet::Connack(c) => v3::Packet::Connack(v3::Connack::new(
            c.session_present,
            return_code(c.reason_code),
        )),
        Packet::Publish(p) => v3::Packet::Publish(v3::Publish {
            dup: p.dup,
            retain: p.retain,
            qos_pid: p.qos_pid,
            topic_name: p.topic_name.clone(),
            payload: p.payload.clone(),
        }),
        Packet::Puback(p) => v3::Packet::Puback(p.pid),
        Packet::Pubrec(p) => v3::Packet::Pubrec(p.pid),
        Packet::Pubrel(p) => v3::Packet::Pubrel(p.pid),
        Packet::Pubcomp(p) => v3::Packet::Pubcomp(p.pid),
        Packet::Unsuback(u) => v3::Packet::Unsuback(u.pid),
        Packet::Pingresp => v3::Packet::Pingresp,
        Packet::Pingreq => v3::Packet::Pingreq,
        // SUBACK is written by `suback_v3`.
        Packet::Connect(_)
        | Packet::Subscribe(_)
        | Packet::Suback(_)
        | Packet::Unsubscribe(_)
        | Packet::Disconnect(_)
        | Packet::Auth(_) => return None,
    })
}

/// A 3.1.1 SUBACK (MQTT 3.1.1 §3.9.3), written here because the codec crate encodes the
/// failure return code as 0x03 instead of 0x80.
fn suback_v3(s: &v5::Suback) -> Vec<u8> {
    let mut out = vec![0x90];
    write_var_int(&mut out, 2 + s.topics.len());
    out.extend_from_slice(&s.pid.value().to_be_bytes());
    out.extend(s.topics.iter().map(|code| match code {
        SubscribeReasonCode::GrantedQoS0 => 0x00,
        SubscribeReasonCode::GrantedQoS1 => 0x01,
        SubscribeReasonCode::GrantedQoS2 => 0x02,
        _ => 0x80,
    }));
    out
}

/// Appends `packet` to `out` as [`encode`] encodes it; on failure `out` is left as it was.
/// Acknowledgements, one or more for every message a client publishes, are written straight
/// into `out` rather than into a buffer of their own first.
pub fn encode_into(
    packet: &Packet,
    protocol: Protocol,
    out: &mut BytesMut,
) -> Result<(), MqttError> {
    let start = out.len();
    let written = match packet {
        Packet::Puback(p) => put_ack(0x40, p.pid, p, protocol, out),
        Packet::Pubrec(p) => put_ack(0x50, p.pid, p, protocol, out),
        Packet::Pubrel(p) => put_ack(0x62, p.pid, p, protocol, out),
        Packet::Pubcomp(p) => put_ack(0x70, p.pid, p, protocol, out),
        other => encode(other, protocol).map(|bytes| out.extend_from_slice(&bytes)),
    };
    if written.is_err() {
        out.truncate(start);
    }
    written
}

/// Writes a PUBACK, PUBREC, PUBREL or PUBCOMP: in 3.x only the packet id follows the fixed
/// header (MQTT 3.1.1 §3.4-3.7); 5.0 may add a reason code and properties.
fn put_ack(
    first: u8,
    pid: mqtt_proto::Pid,
    body: &impl Encodable,
    protocol: Protocol,
    out: &mut BytesMut,
) -> Result<(), MqttError> {
    if protocol == Protocol::V500 {
        return put_packet(first, body, out);
    }
    out.reserve(4);
    out.put_u8(first);
    out.put_u8(2);
    out.put_u16(pid.value());
    Ok(())
}

/// Encodes `packet` for a client speaking `protocol`; returns the encoded bytes (empty when
/// 3.x has no such packet).
pub fn encode(packet: &Packet, protocol: Protocol) -> Result<Vec<u8>, MqttError> {
    let bytes = if protocol == Protocol::V500 {
        packet.encode()?
    } else if let Packet::Suback(s) = packet {
        return Ok(suback_v3(s));
    } else {
        match to_v3(packet) {
            Some(p) => p.encode()?,
            None => return Ok(Vec::new()),
        }
    };
    Ok(bytes.as_ref().to_vec())
}

/// Encodes a PUBLISH carrying every identifier of `ids` as its own Subscription Identifier
/// property, as [`encode_publish_into`] does, into a vector of its own.
pub fn encode_publish(
    publish: Publish,
    ids: &[u32],
    protocol: Protocol,
) -> Result<Vec<u8>, MqttError> {
    let mut out = BytesMut::new();
    encode_publish_into(publish, ids, protocol, &mut out)?;
    Ok(out.to_vec())
}

/// Appends a PUBLISH to `out` carrying every identifier of `ids` as its own Subscription
/// Identifier property: a message that matches several subscriptions carries the identifiers
/// of all of them ([MQTT-3.3.4-3], [MQTT-3.3.4-4]). 3.x clients get the PUBLISH without them.
/// Returns the packet's size; on failure `out` is left as it was.
///
/// The packet is written by mqtt-proto's encoder straight into `out` (a delivery is encoded
/// once per message, so it gets no buffer of its own). mqtt-proto's properties hold one
/// identifier, so the packet is encoded without any and the identifiers are then written at the
/// start of its property list, with the Property Length and the Remaining Length grown to match
/// (the order of properties carries no meaning).
pub fn encode_publish_into(
    mut publish: Publish,
    ids: &[u32],
    protocol: Protocol,
    out: &mut BytesMut,
) -> Result<usize, MqttError> {
    publish.properties.subscription_id = None;
    let start = out.len();
    let written = put_publish(&publish, protocol, out).and_then(|()| {
        if ids.is_empty() || protocol != Protocol::V500 {
            return Ok(());
        }
        let has_pid = publish.qos_pid.qos() != QoS::Level0;
        let with_ids = with_subscription_ids(&out[start..], has_pid, ids)?;
        out.truncate(start);
        out.extend_from_slice(&with_ids);
        Ok(())
    });
    match written {
        Ok(()) => Ok(out.len() - start),
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Writes a PUBLISH's fixed header (MQTT 5.0 §3.3.1) and the packet's body, in `protocol`'s
/// form.
fn put_publish(publish: &Publish, protocol: Protocol, out: &mut BytesMut) -> Result<(), MqttError> {
    let mut first = match publish.qos_pid {
        QosPid::Level0 => 0x30,
        QosPid::Level1(_) => 0x32,
        QosPid::Level2(_) => 0x34,
    };
    if publish.dup {
        first |= 0x08;
    }
    if publish.retain {
        first |= 0x01;
    }
    if protocol == Protocol::V500 {
        put_packet(first, publish, out)
    } else {
        let v3 = v3::Publish {
            dup: publish.dup,
            retain: publish.retain,
            qos_pid: publish.qos_pid,
            topic_name: publish.topic_name.clone(),
            payload: publish.payload.clone(),
        };
        put_packet(first, &v3, out)
    }
}

/// Writes a packet's fixed header and body straight into `out`.
fn put_packet(first: u8, body: &impl Encodable, out: &mut BytesMut) -> Result<(), MqttError> {
    let remaining = body.encode_len();
    let total = mqtt_proto::total_len(remaining)?;
    out.reserve(total);
    out.put_u8(first);
    write_var_int(out, remaining);
    body.encode(&mut (&mut *out).writer())?;
    Ok(())
}

/// `plain`, a PUBLISH encoded without subscription identifiers, with `ids` added.
fn with_subscription_ids(plain: &[u8], has_pid: bool, ids: &[u32]) -> Result<Vec<u8>, MqttError> {
    let broken = || MqttError::Malformed("PUBLISH as encoded".into());
    let fixed = fixed_header(plain, u32::MAX)?.ok_or_else(broken)?;
    let body = plain.get(fixed.header_len..).ok_or_else(broken)?;
    // Variable header: Topic Name (two-byte length and the bytes), Packet Identifier if QoS > 0,
    // then the Property Length (MQTT 5.0 §3.3.2).
    let topic_len = usize::from(u16::from_be_bytes([
        *body.first().ok_or_else(broken)?,
        *body.get(1).ok_or_else(broken)?,
    ]));
    let at = 2 + topic_len + if has_pid { 2 } else { 0 };
    let (properties_len, properties_len_len) = body
        .get(at..)
        .map(read_var_int)
        .transpose()?
        .flatten()
        .ok_or_else(broken)?;
    let mut added = Vec::with_capacity(ids.len() * 5);
    for &id in ids {
        let id = id as usize;
        // A Subscription Identifier is 1 to 268,435,455 (MQTT 5.0 §3.8.2.1.2).
        if id == 0 || id > VAR_INT_MAX {
            return Err(MqttError::Protocol(format!(
                "subscription identifier {id} out of range"
            )));
        }
        added.push(SUBSCRIPTION_IDENTIFIER);
        write_var_int(&mut added, id);
    }
    let new_properties_len = properties_len + added.len();
    let new_remaining =
        fixed.remaining - properties_len_len + var_int_len(new_properties_len) + added.len();
    if new_properties_len > VAR_INT_MAX || new_remaining > VAR_INT_MAX {
        return Err(MqttError::TooLarge {
            size: new_remaining as u64,
            max: VAR_INT_MAX as u32,
        });
    }
    let rest = body.get(at + properties_len_len..).ok_or_else(broken)?;
    let mut out = Vec::with_capacity(5 + new_remaining);
    out.push(fixed.first);
    write_var_int(&mut out, new_remaining);
    out.extend_from_slice(&body[..at]);
    write_var_int(&mut out, new_properties_len);
    out.extend_from_slice(&added);
    out.extend_from_slice(rest);
    Ok(out)
}

/// The granted-QoS reason code (MQTT 5.0 §3.9.3).
pub fn granted(qos: QoS) -> SubscribeReasonCode {
    match qos {
        QoS::Level0 => SubscribeReasonCode::GrantedQoS0,
        QoS::Level1 => SubscribeReasonCode::GrantedQoS1,
        QoS::Level2 => SubscribeReasonCode::GrantedQoS2,
    }
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP reason code stays a success unless said otherwise; these
/// helpers keep the session's call sites short.
pub fn puback(pid: mqtt_proto::Pid, reason: PubackReasonCode) -> Packet {
    Packet::Puback(Puback::new(pid, reason))
}

pub fn pubrec(pid: mqtt_proto::Pid, reason: PubrecReasonCode) -> Packet {
    Packet::Pubrec(Pubrec::new(pid, reason))
}

pub fn pubrel(pid: mqtt_proto::Pid, reason: PubrelReasonCode) -> Packet {
    Packet::Pubrel(Pubrel::new(pid, reason))
}

pub fn pubcomp(pid: mqtt_proto::Pid, reason: PubcompReasonCode) -> Packet {
    Packet::Pubcomp(Pubcomp::new(pid, reason))
}
