//! Key construction for every tree (the layout itself is described in the crate docs).

use rosetta_core::store::{BindingRecord, MessageSummary};

use crate::codec;
use crate::segments::Location;

/// Length of a queue entry key: queue id and sequence, both big-endian u64.
pub const ENTRY_KEY_LEN: usize = 16;
/// Length of a queue entry value: message id (u64 BE), flags, body length (u64 BE), priority,
/// per-message TTL in ms (u64 BE), the body's segment location, then a CRC-32 (u32 BE) of the
/// bytes before it. The summary fields let recovery rebuild a queue without reading any body.
pub const ENTRY_VALUE_LEN: usize = LOCATED_VALUE_LEN + CRC_LEN;
/// The same naming a body kept in sled's `bodies` tree: no location.
pub const UNLOCATED_VALUE_LEN: usize = SUMMARY_VALUE_LEN + CRC_LEN;
/// Length of an entry value written by layout 3: summary and location, no checksum.
pub const LOCATED_VALUE_LEN: usize = SUMMARY_VALUE_LEN + Location::ENCODED_LEN;
/// Length of an entry value written by layout 2 (or by layout 3 naming a body kept in sled's
/// `bodies` tree): the summary alone.
pub const SUMMARY_VALUE_LEN: usize = 26;
/// Length of the checksum trailer of layout 4 entry values.
const CRC_LEN: usize = 4;
/// Length of an entry value written by layout 1: message id and flags only.
pub const LEGACY_ENTRY_VALUE_LEN: usize = 9;
/// Offset of the flags byte, the same in both layouts.
const FLAGS_AT: usize = 8;
/// Entry flag: delivered at least once before the restart.
pub const FLAG_REDELIVERED: u8 = 1;
/// Entry flag: the message has a priority (the priority byte is meaningful).
const FLAG_PRIORITY: u8 = 2;
/// Entry flag: the message has a per-message TTL (the expiration field is meaningful).
const FLAG_EXPIRATION: u8 = 4;
const ALL_FLAGS: u8 = FLAG_REDELIVERED | FLAG_PRIORITY | FLAG_EXPIRATION;

/// `vhost \0 name`, for exchanges and queues. Grouping by vhost lets a vhost be listed with a
/// prefix scan.
pub fn named(vhost: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(vhost.len() + 1 + name.len());
    k.extend_from_slice(vhost.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

/// `namespace \0 key`, for the records front-ends keep. The namespace holds no NUL, so the first
/// NUL ends it and two namespaces never share a key; a prefix scan within one namespace is a
/// prefix scan of the tree.
pub fn record(namespace: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(namespace.len() + 1 + key.len());
    k.extend_from_slice(namespace.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// A key determined by every field of the binding, so the same binding declared twice maps to
/// one record and bindings that differ only in arguments stay apart. After the vhost, fields are
/// length-prefixed: names may contain any byte, and separators alone could make two different
/// bindings collide.
pub fn binding(b: &BindingRecord) -> Vec<u8> {
    let args = codec::encode_table_bytes(&b.arguments);
    let mut k = Vec::with_capacity(
        b.vhost.len()
            + b.source.len()
            + b.destination.len()
            + b.routing_key.len()
            + args.len()
            + 20,
    );
    k.extend_from_slice(b.vhost.as_bytes());
    k.push(0);
    for field in [b.source.as_bytes(), b.destination.as_bytes()] {
        push_prefixed(&mut k, field);
    }
    k.push(if b.destination_is_queue { b'q' } else { b'e' });
    push_prefixed(&mut k, b.routing_key.as_bytes());
    k.extend_from_slice(&args);
    k
}

fn push_prefixed(k: &mut Vec<u8>, field: &[u8]) {
    // u32 is ample: AMQP names are short strings, and routing keys are bounded by frame sizes.
    k.extend_from_slice(&(field.len() as u32).to_be_bytes());
    k.extend_from_slice(field);
}

pub fn message(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub fn queue_prefix(queue_id: u64) -> [u8; 8] {
    queue_id.to_be_bytes()
}

/// The entry value, checksummed; without a location (a body in sled's `bodies` tree) it is
/// shorter.
pub fn entry_value(
    summary: &MessageSummary,
    redelivered: bool,
    location: Option<Location>,
) -> Vec<u8> {
    let mut v = vec![0u8; SUMMARY_VALUE_LEN];
    v[..8].copy_from_slice(&summary.id.to_be_bytes());
    let mut flags = if redelivered { FLAG_REDELIVERED } else { 0 };
    if summary.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if summary.expiration_ms.is_some() {
        flags |= FLAG_EXPIRATION;
    }
    v[FLAGS_AT] = flags;
    v[9..17].copy_from_slice(&summary.body_len.to_be_bytes());
    v[17] = summary.priority.unwrap_or(0);
    v[18..].copy_from_slice(&summary.expiration_ms.unwrap_or(0).to_be_bytes());
    if let Some(location) = location {
        v.extend_from_slice(&location.encode());
    }
    codec::seal(v)
}

/// A segment number no segment ever has (numbering stops before it): an entry value with this
/// location names a body kept in sled's `bodies` tree by an older layout.
const IN_SLED: u32 = u32::MAX;

/// The entry value as index slots and the journal hold it: always located, so always
/// [`ENTRY_VALUE_LEN`] bytes.
pub fn slot_value(
    summary: &MessageSummary,
    redelivered: bool,
    location: Option<Location>,
) -> [u8; ENTRY_VALUE_LEN] {
    let location = location.unwrap_or(Location {
        segment: IN_SLED,
        offset: 0,
        len: 0,
    });
    let mut out = [0u8; ENTRY_VALUE_LEN];
    out.copy_from_slice(&entry_value(summary, redelivered, Some(location)));
    out
}

/// Parses a value written by [`slot_value`]; `None` if it fails its checksum or does not decode.
pub fn parse_slot_value(value: &[u8]) -> Option<EntryValue> {
    let mut parsed = parse_entry_value(value)?;
    parsed.summary?;
    if parsed.location.is_some_and(|l| l.segment == IN_SLED) {
        parsed.location = None;
    }
    Some(parsed)
}

/// A parsed queue entry value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryValue {
    pub message_id: u64,
    pub redelivered: bool,
    /// `None` for a layout 1 value, which has no summary: the body must be read for it.
    pub summary: Option<MessageSummary>,
    /// Where the body is in the segments; `None` when it is in sled's `bodies` tree.
    pub location: Option<Location>,
}

/// The same entry value with the redelivered flag set, in this layout's form whatever the
/// layout it was written in (a checksummed value needs its checksum recomputed anyway).
pub fn with_redelivered(value: &[u8]) -> Option<Vec<u8>> {
    let parsed = parse_entry_value(value)?;
    match parsed.summary {
        Some(summary) => Some(entry_value(&summary, true, parsed.location)),
        // Layout 1 has no summary to write a newer value with; it keeps its form.
        None => {
            let mut v = value.to_vec();
            v[FLAGS_AT] |= FLAG_REDELIVERED;
            Some(v)
        }
    }
}

/// Splits an entry key into (queue id, seq).
pub fn parse_entry_key(key: &[u8]) -> Option<(u64, u64)> {
    let key: &[u8; ENTRY_KEY_LEN] = key.try_into().ok()?;
    let (q, s) = key.split_at(8);
    Some((
        u64::from_be_bytes(q.try_into().ok()?),
        u64::from_be_bytes(s.try_into().ok()?),
    ))
}

/// Parses an entry value of any layout; `None` if it is none of them or fails its checksum.
/// The layouts differ in length, which is what tells them apart.
pub fn parse_entry_value(value: &[u8]) -> Option<EntryValue> {
    let value = match value.len() {
        UNLOCATED_VALUE_LEN | ENTRY_VALUE_LEN => codec::unseal(value)?,
        _ => value,
    };
    let u64_at = |at: usize| {
        value
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    };
    let message_id = u64_at(0)?;
    let flags = *value.get(FLAGS_AT)?;
    let redelivered = flags & FLAG_REDELIVERED != 0;
    match value.len() {
        LEGACY_ENTRY_VALUE_LEN if flags & !FLAG_REDELIVERED == 0 => Some(EntryValue {
            message_id,
            redelivered,
            summary: None,
            location: None,
        }),
        SUMMARY_VALUE_LEN | LOCATED_VALUE_LEN if flags & !ALL_FLAGS == 0 => {
            let summary = MessageSummary {
                id: message_id,
                body_len: u64_at(9)?,
                priority: (flags & FLAG_PRIORITY != 0).then_some(value[17]),
                expiration_ms: if flags & FLAG_EXPIRATION != 0 {
                    Some(u64_at(18)?)
                } else {
                    None
                },
            };
            let location = match value.get(SUMMARY_VALUE_LEN..) {
                Some([]) | None => None,
                Some(rest) => Some(Location::decode(rest)?),
            };
            Some(EntryValue {
                message_id,
                redelivered,
                summary: Some(summary),
                location,
            })
        }
        _ => None,
    }
}

/// A big-endian u64 value, as the `delivered` tree holds.
pub fn parse_seq(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

pub fn parse_message_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}
