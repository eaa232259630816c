//! Key construction for every tree (the layout itself is described in the crate docs).

use rosetta_core::store::BindingRecord;

use crate::codec;

/// Length of a queue entry key: queue id and sequence, both big-endian u64.
pub const ENTRY_KEY_LEN: usize = 16;
/// Length of a queue entry value: message id and a flags byte.
pub const ENTRY_VALUE_LEN: usize = 9;
/// Entry flag: delivered at least once before the restart.
pub const FLAG_REDELIVERED: u8 = 1;

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

/// Big-endian so that sled's lexicographic order is numeric order.
pub fn entry(queue_id: u64, seq: u64) -> [u8; ENTRY_KEY_LEN] {
    let mut k = [0u8; ENTRY_KEY_LEN];
    k[..8].copy_from_slice(&queue_id.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn queue_prefix(queue_id: u64) -> [u8; 8] {
    queue_id.to_be_bytes()
}

pub fn entry_value(message_id: u64, redelivered: bool) -> [u8; ENTRY_VALUE_LEN] {
    let mut v = [0u8; ENTRY_VALUE_LEN];
    v[..8].copy_from_slice(&message_id.to_be_bytes());
    v[8] = if redelivered { FLAG_REDELIVERED } else { 0 };
    v
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

/// Splits an entry value into (message id, redelivered).
pub fn parse_entry_value(value: &[u8]) -> Option<(u64, bool)> {
    let value: &[u8; ENTRY_VALUE_LEN] = value.try_into().ok()?;
    let flags = value[8];
    if flags & !FLAG_REDELIVERED != 0 {
        return None;
    }
    let id = u64::from_be_bytes(value[..8].try_into().ok()?);
    Some((id, flags & FLAG_REDELIVERED != 0))
}

pub fn parse_message_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}
