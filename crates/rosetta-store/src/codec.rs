//! The on-disk encoding of messages and metadata records.
//!
//! Every value starts with a format version byte and a record kind byte, so a future format can
//! be read side by side with this one and a value filed under the wrong tree is caught instead of
//! misread. Metadata records (version 2) end with a CRC-32 of everything before it, so a damaged
//! value is told apart from one that merely decodes to something else; message bodies keep
//! version 1, without the trailer, because the segment record around them is already checked.
//! Version 1 metadata, written before the checksum existed, is still read. Integers that are usually small (lengths, counts, ids) are LEB128 varints; the rest
//! are fixed-width big-endian. Decoding treats its input as untrusted: every length is checked
//! against what remains, nesting depth is bounded, and any inconsistency becomes
//! [`StoreError::Corrupt`] rather than a panic.

use bytes::Bytes;
use rosetta_core::message::{Message, Properties, Table, Value};
use rosetta_core::queue_owner::QueueOwner;
use rosetta_core::store::{BindingRecord, ExchangeRecord, QueueRecord, StoreError};

use crate::wire::{Reader, Writer};

/// The encoding without a checksum: message bodies, and metadata written by store layouts 1-3.
pub const FORMAT_VERSION: u8 = 1;
/// The same encoding followed by a CRC-32 (u32 BE) of every byte before it; metadata records
/// are written this way from store layout 4 on.
pub const CHECKED_VERSION: u8 = 2;
/// Length of the checksum trailer.
const CRC_LEN: usize = 4;

const KIND_MESSAGE: u8 = 1;
const KIND_EXCHANGE: u8 = 2;
const KIND_QUEUE: u8 = 3;
const KIND_BINDING: u8 = 4;

/// Deeper nesting than this is treated as corruption: real header tables are shallow, and the
/// bound keeps recursive decoding of hostile bytes from exhausting the stack.
const MAX_DEPTH: usize = 64;

// Value tags. Fixed forever once written: they are the on-disk meaning of each variant.
const T_BOOL: u8 = 1;
const T_I8: u8 = 2;
const T_U8: u8 = 3;
const T_I16: u8 = 4;
const T_U16: u8 = 5;
const T_I32: u8 = 6;
const T_U32: u8 = 7;
const T_I64: u8 = 8;
const T_F32: u8 = 9;
const T_F64: u8 = 10;
const T_DECIMAL: u8 = 11;
const T_STR: u8 = 12;
const T_BYTES: u8 = 13;
const T_TIMESTAMP: u8 = 14;
const T_TABLE: u8 = 15;
const T_ARRAY: u8 = 16;
const T_VOID: u8 = 17;

// Presence bits for the optional properties, in field order.
const P_CONTENT_TYPE: u16 = 1 << 0;
const P_CONTENT_ENCODING: u16 = 1 << 1;
const P_HEADERS: u16 = 1 << 2;
const P_DELIVERY_MODE: u16 = 1 << 3;
const P_PRIORITY: u16 = 1 << 4;
const P_CORRELATION_ID: u16 = 1 << 5;
const P_REPLY_TO: u16 = 1 << 6;
const P_EXPIRATION: u16 = 1 << 7;
const P_MESSAGE_ID: u16 = 1 << 8;
const P_TIMESTAMP: u16 = 1 << 9;
const P_KIND: u16 = 1 << 10;
const P_USER_ID: u16 = 1 << 11;
const P_APP_ID: u16 = 1 << 12;
const P_CLUSTER_ID: u16 = 1 << 13;
const P_ALL: u16 = (1 << 14) - 1;

pub fn encode_message(message: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + message.body.len());
    encode_message_into(message, &mut out);
    out
}

/// [`encode_message`] appended to `out`.
pub fn encode_message_into(message: &Message, out: &mut Vec<u8>) {
    let mut w = Writer::append_to(std::mem::take(out));
    header(&mut w, KIND_MESSAGE);
    w.varint(message.id);
    w.str(&message.exchange);
    w.str(&message.routing_key);
    encode_properties(&mut w, &message.properties);
    w.bytes(&message.body);
    *out = w.finish();
}

/// Decodes a message body record. `key` only labels the error.
pub fn decode_message(input: &[u8], key: &[u8]) -> Result<Message, StoreError> {
    decode(input, key, KIND_MESSAGE, |r| {
        let id = r.varint()?;
        let exchange = r.string()?;
        let routing_key = r.string()?;
        let properties = decode_properties(r)?;
        let body = Bytes::copy_from_slice(r.bytes()?);
        Ok(Message {
            id,
            exchange: exchange.into(),
            routing_key,
            properties,
            body,
        })
    })
}

pub fn encode_exchange(record: &ExchangeRecord) -> Vec<u8> {
    let mut w = Writer::with_capacity(64);
    w.u8(CHECKED_VERSION);
    w.u8(KIND_EXCHANGE);
    w.str(&record.vhost);
    w.str(&record.name);
    w.str(&record.kind);
    w.u8(u8::from(record.auto_delete) | u8::from(record.internal) << 1);
    encode_table(&mut w, &record.arguments);
    seal(w.finish())
}

pub fn decode_exchange(input: &[u8], key: &[u8]) -> Result<ExchangeRecord, StoreError> {
    decode(input, key, KIND_EXCHANGE, |r| {
        let vhost = r.string()?;
        let name = r.string()?;
        let kind = r.string()?;
        let flags = flags(r, 0b11)?;
        let arguments = decode_table(r, 0)?;
        Ok(ExchangeRecord {
            vhost,
            name,
            kind,
            auto_delete: flags & 1 != 0,
            internal: flags & 2 != 0,
            arguments,
        })
    })
}

/// Queue flag: auto-delete.
const Q_AUTO_DELETE: u8 = 1 << 0;
/// Queue flag: an owner (its front-end's name) follows the arguments. A record without it,
/// which is every record written before queues carried an owner, has none.
const Q_OWNED: u8 = 1 << 1;
/// Queue flag: the owner names a client, which follows its front-end.
const Q_OWNER_CLIENT: u8 = 1 << 2;

pub fn encode_queue(record: &QueueRecord) -> Vec<u8> {
    let mut w = Writer::with_capacity(64);
    w.u8(CHECKED_VERSION);
    w.u8(KIND_QUEUE);
    w.varint(record.id);
    w.str(&record.vhost);
    w.str(&record.name);
    let mut flags = 0;
    if record.auto_delete {
        flags |= Q_AUTO_DELETE;
    }
    if let Some(owner) = &record.owner {
        flags |= Q_OWNED;
        if owner.client.is_some() {
            flags |= Q_OWNER_CLIENT;
        }
    }
    w.u8(flags);
    encode_table(&mut w, &record.arguments);
    // After the arguments, so that an unowned queue's record is byte for byte what it was
    // before owners existed.
    if let Some(owner) = &record.owner {
        w.str(&owner.front_end);
        if let Some(client) = &owner.client {
            w.str(client);
        }
    }
    seal(w.finish())
}

pub fn decode_queue(input: &[u8], key: &[u8]) -> Result<QueueRecord, StoreError> {
    decode(input, key, KIND_QUEUE, |r| {
        let id = r.varint()?;
        let vhost = r.string()?;
        let name = r.string()?;
        let flags = flags(r, Q_AUTO_DELETE | Q_OWNED | Q_OWNER_CLIENT)?;
        let arguments = decode_table(r, 0)?;
        let owner = match (flags & Q_OWNED != 0, flags & Q_OWNER_CLIENT != 0) {
            (false, false) => None,
            (false, true) => return Err("owner client without an owner"),
            (true, has_client) => Some(QueueOwner {
                front_end: r.string()?,
                client: if has_client { Some(r.string()?) } else { None },
            }),
        };
        Ok(QueueRecord {
            id,
            vhost,
            name,
            auto_delete: flags & Q_AUTO_DELETE != 0,
            arguments,
            owner,
        })
    })
}

pub fn encode_binding(record: &BindingRecord) -> Vec<u8> {
    let mut w = Writer::with_capacity(64);
    w.u8(CHECKED_VERSION);
    w.u8(KIND_BINDING);
    w.str(&record.vhost);
    w.str(&record.source);
    w.str(&record.destination);
    w.u8(u8::from(record.destination_is_queue));
    w.str(&record.routing_key);
    encode_table(&mut w, &record.arguments);
    seal(w.finish())
}

pub fn decode_binding(input: &[u8], key: &[u8]) -> Result<BindingRecord, StoreError> {
    decode(input, key, KIND_BINDING, |r| {
        let vhost = r.string()?;
        let source = r.string()?;
        let destination = r.string()?;
        let destination_is_queue = flags(r, 1)? != 0;
        let routing_key = r.string()?;
        let arguments = decode_table(r, 0)?;
        Ok(BindingRecord {
            vhost,
            source,
            destination,
            destination_is_queue,
            routing_key,
            arguments,
        })
    })
}

/// Encodes a table alone (no header). Deterministic because `Table` is ordered, which lets the
/// binding key include a binding's arguments.
pub fn encode_table_bytes(table: &Table) -> Vec<u8> {
    let mut w = Writer::with_capacity(16);
    encode_table(&mut w, table);
    w.finish()
}

fn header(w: &mut Writer, kind: u8) {
    w.u8(FORMAT_VERSION);
    w.u8(kind);
}

/// Appends the CRC-32 of `value` to it.
pub fn seal(mut value: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&value);
    value.extend_from_slice(&crc.to_be_bytes());
    value
}

/// The value a [`seal`]ed input carries, or `None` if its checksum does not match.
pub fn unseal(input: &[u8]) -> Option<&[u8]> {
    let (value, crc) = input.split_at_checked(input.len().checked_sub(CRC_LEN)?)?;
    let crc = u32::from_be_bytes(crc.try_into().ok()?);
    (crc32fast::hash(value) == crc).then_some(value)
}

/// Checks the header, runs `body`, and insists the whole input was consumed: trailing bytes
/// mean the record is not what we think it is.
fn decode<T>(
    input: &[u8],
    key: &[u8],
    kind: u8,
    body: impl FnOnce(&mut Reader<'_>) -> Result<T, &'static str>,
) -> Result<T, StoreError> {
    let run = || {
        let input = match input.first() {
            Some(&FORMAT_VERSION) => input,
            Some(&CHECKED_VERSION) => unseal(input).ok_or("checksum mismatch")?,
            _ => return Err("unknown format version"),
        };
        let mut r = Reader::new(input);
        r.u8()?;
        if r.u8()? != kind {
            return Err("unexpected record kind");
        }
        let value = body(&mut r)?;
        if !r.is_empty() {
            return Err("trailing bytes");
        }
        Ok(value)
    };
    run().map_err(|reason| corrupt(key, reason))
}

/// Builds the corruption error, naming the key in hex so an operator can find the record.
pub fn corrupt(key: &[u8], reason: &str) -> StoreError {
    let key = key.iter().map(|b| format!("{b:02x}")).collect::<String>();
    StoreError::Corrupt {
        key,
        reason: reason.to_owned(),
    }
}

fn flags(r: &mut Reader<'_>, allowed: u8) -> Result<u8, &'static str> {
    let f = r.u8()?;
    if f & !allowed != 0 {
        return Err("unknown flag bits");
    }
    Ok(f)
}

fn encode_properties(w: &mut Writer, p: &Properties) {
    let present = [
        (p.content_type.is_some(), P_CONTENT_TYPE),
        (p.content_encoding.is_some(), P_CONTENT_ENCODING),
        (p.headers.is_some(), P_HEADERS),
        (p.delivery_mode.is_some(), P_DELIVERY_MODE),
        (p.priority.is_some(), P_PRIORITY),
        (p.correlation_id.is_some(), P_CORRELATION_ID),
        (p.reply_to.is_some(), P_REPLY_TO),
        (p.expiration.is_some(), P_EXPIRATION),
        (p.message_id.is_some(), P_MESSAGE_ID),
        (p.timestamp.is_some(), P_TIMESTAMP),
        (p.kind.is_some(), P_KIND),
        (p.user_id.is_some(), P_USER_ID),
        (p.app_id.is_some(), P_APP_ID),
        (p.cluster_id.is_some(), P_CLUSTER_ID),
    ]
    .iter()
    .filter(|(is, _)| *is)
    .fold(0u16, |acc, (_, bit)| acc | bit);
    w.u16(present);
    let opt_str = |w: &mut Writer, s: &Option<String>| {
        if let Some(s) = s {
            w.str(s);
        }
    };
    opt_str(w, &p.content_type);
    opt_str(w, &p.content_encoding);
    if let Some(h) = &p.headers {
        encode_table(w, h);
    }
    if let Some(v) = p.delivery_mode {
        w.u8(v);
    }
    if let Some(v) = p.priority {
        w.u8(v);
    }
    opt_str(w, &p.correlation_id);
    opt_str(w, &p.reply_to);
    opt_str(w, &p.expiration);
    opt_str(w, &p.message_id);
    if let Some(v) = p.timestamp {
        w.varint(v);
    }
    opt_str(w, &p.kind);
    opt_str(w, &p.user_id);
    opt_str(w, &p.app_id);
    opt_str(w, &p.cluster_id);
}

fn decode_properties(r: &mut Reader<'_>) -> Result<Properties, &'static str> {
    let present = r.u16()?;
    if present & !P_ALL != 0 {
        return Err("unknown property bits");
    }
    let has = |bit: u16| present & bit != 0;
    let opt_str = |r: &mut Reader<'_>, bit: u16| -> Result<Option<String>, &'static str> {
        if has(bit) {
            r.string().map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(Properties {
        content_type: opt_str(r, P_CONTENT_TYPE)?,
        content_encoding: opt_str(r, P_CONTENT_ENCODING)?,
        headers: if has(P_HEADERS) {
            Some(decode_table(r, 0)?)
        } else {
            None
        },
        delivery_mode: if has(P_DELIVERY_MODE) {
            Some(r.u8()?)
        } else {
            None
        },
        priority: if has(P_PRIORITY) { Some(r.u8()?) } else { None },
        correlation_id: opt_str(r, P_CORRELATION_ID)?,
        reply_to: opt_str(r, P_REPLY_TO)?,
        expiration: opt_str(r, P_EXPIRATION)?,
        message_id: opt_str(r, P_MESSAGE_ID)?,
        timestamp: if has(P_TIMESTAMP) {
            Some(r.varint()?)
        } else {
            None
        },
        kind: opt_str(r, P_KIND)?,
        user_id: opt_str(r, P_USER_ID)?,
        app_id: opt_str(r, P_APP_ID)?,
        cluster_id: opt_str(r, P_CLUSTER_ID)?,
    })
}

fn encode_table(w: &mut Writer, table: &Table) {
    w.varint(table.len() as u64);
    for (k, v) in table {
        w.str(k);
        encode_value(w, v);
    }
}

fn decode_table(r: &mut Reader<'_>, depth: usize) -> Result<Table, &'static str> {
    if depth > MAX_DEPTH {
        return Err("tables nested too deeply");
    }
    let count = r.count()?;
    let mut table = Table::new();
    for _ in 0..count {
        let k = r.string()?;
        let v = decode_value(r, depth + 1)?;
        if table.insert(k, v).is_some() {
            return Err("duplicate table key");
        }
    }
    Ok(table)
}

fn encode_value(w: &mut Writer, v: &Value) {
    match v {
        Value::Bool(b) => {
            w.u8(T_BOOL);
            w.u8(u8::from(*b));
        }
        Value::I8(x) => {
            w.u8(T_I8);
            w.put(&x.to_be_bytes());
        }
        Value::U8(x) => {
            w.u8(T_U8);
            w.u8(*x);
        }
        Value::I16(x) => {
            w.u8(T_I16);
            w.put(&x.to_be_bytes());
        }
        Value::U16(x) => {
            w.u8(T_U16);
            w.u16(*x);
        }
        Value::I32(x) => {
            w.u8(T_I32);
            w.put(&x.to_be_bytes());
        }
        Value::U32(x) => {
            w.u8(T_U32);
            w.put(&x.to_be_bytes());
        }
        Value::I64(x) => {
            w.u8(T_I64);
            w.put(&x.to_be_bytes());
        }
        Value::F32(x) => {
            w.u8(T_F32);
            w.put(&x.to_bits().to_be_bytes());
        }
        Value::F64(x) => {
            w.u8(T_F64);
            w.put(&x.to_bits().to_be_bytes());
        }
        Value::Decimal(scale, unscaled) => {
            w.u8(T_DECIMAL);
            w.u8(*scale);
            w.put(&unscaled.to_be_bytes());
        }
        Value::Str(s) => {
            w.u8(T_STR);
            w.str(s);
        }
        Value::Bytes(b) => {
            w.u8(T_BYTES);
            w.bytes(b);
        }
        Value::Timestamp(t) => {
            w.u8(T_TIMESTAMP);
            w.put(&t.to_be_bytes());
        }
        Value::Table(t) => {
            w.u8(T_TABLE);
            encode_table(w, t);
        }
        Value::Array(items) => {
            w.u8(T_ARRAY);
            w.varint(items.len() as u64);
            for item in items {
                encode_value(w, item);
            }
        }
        Value::Void => w.u8(T_VOID),
    }
}

fn decode_value(r: &mut Reader<'_>, depth: usize) -> Result<Value, &'static str> {
    if depth > MAX_DEPTH {
        return Err("values nested too deeply");
    }
    Ok(match r.u8()? {
        T_BOOL => match r.u8()? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            _ => return Err("invalid bool"),
        },
        T_I8 => Value::I8(i8::from_be_bytes(r.array()?)),
        T_U8 => Value::U8(r.u8()?),
        T_I16 => Value::I16(i16::from_be_bytes(r.array()?)),
        T_U16 => Value::U16(r.u16()?),
        T_I32 => Value::I32(i32::from_be_bytes(r.array()?)),
        T_U32 => Value::U32(u32::from_be_bytes(r.array()?)),
        T_I64 => Value::I64(i64::from_be_bytes(r.array()?)),
        T_F32 => Value::F32(f32::from_bits(u32::from_be_bytes(r.array()?))),
        T_F64 => Value::F64(f64::from_bits(u64::from_be_bytes(r.array()?))),
        T_DECIMAL => {
            let scale = r.u8()?;
            Value::Decimal(scale, u32::from_be_bytes(r.array()?))
        }
        T_STR => Value::Str(r.string()?),
        T_BYTES => Value::Bytes(Bytes::copy_from_slice(r.bytes()?)),
        T_TIMESTAMP => Value::Timestamp(u64::from_be_bytes(r.array()?)),
        T_TABLE => Value::Table(decode_table(r, depth + 1)?),
        T_ARRAY => {
            let count = r.count()?;
            // Capacity bounded by the input left, so a forged count cannot force a huge
            // allocation: every element takes at least one byte.
            let mut items = Vec::with_capacity(count.min(r.remaining()));
            for _ in 0..count {
                items.push(decode_value(r, depth + 1)?);
            }
            Value::Array(items)
        }
        T_VOID => Value::Void,
        _ => return Err("unknown value tag"),
    })
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
