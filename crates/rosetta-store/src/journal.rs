//! The entry journal: the one file queue entry changes are appended to and synced with each
//! group commit, before they reach their queue's index files (see `index`).
//!
//! # Record layout
//!
//! `kind (u8) ++ queue id (u64 BE) ++ seq (u64 BE) ++ [entry value, for a put] ++ crc32 (u32 BE)`,
//! the checksum covering everything before it. Kind 1 puts an entry (its value is
//! `keys::ENTRY_VALUE_LEN` bytes, checksummed on its own too, as in an index slot), kind 2
//! settles one. Records have a fixed length per kind, so a reader needs no length field, and a
//! record cut short by a crash or damaged fails its checksum: reading stops there.

use crate::keys::ENTRY_VALUE_LEN;

/// File name extension of journal files.
pub const EXTENSION: &str = "jnl";

const KIND_PUT: u8 = 1;
const KIND_SETTLE: u8 = 2;
const HEADER_LEN: usize = 17;
const CRC_LEN: usize = 4;
/// Length of a put record.
pub const PUT_LEN: usize = HEADER_LEN + ENTRY_VALUE_LEN + CRC_LEN;
/// Length of a settle record.
pub const SETTLE_LEN: usize = HEADER_LEN + CRC_LEN;

/// One change to a queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The entry exists with this value (see `keys::entry_value`).
    Put([u8; ENTRY_VALUE_LEN]),
    /// The entry is acknowledged, expired or otherwise gone.
    Settle,
}

/// Appends the record of `op` on entry (`queue`, `seq`) to `out`.
pub fn encode(out: &mut Vec<u8>, queue: u64, seq: u64, op: &Op) {
    let start = out.len();
    out.push(match op {
        Op::Put(_) => KIND_PUT,
        Op::Settle => KIND_SETTLE,
    });
    out.extend_from_slice(&queue.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    if let Op::Put(value) = op {
        out.extend_from_slice(value);
    }
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// What reading a journal file found.
pub struct Replay {
    /// The records, in the order they were written.
    pub ops: Vec<(u64, u64, Op)>,
    /// Bytes after the last good record: the tail a crash cut short, or damage.
    pub unreadable: usize,
}

/// Parses the records of a whole journal file, stopping at the first that does not check out.
pub fn decode_all(data: &[u8]) -> Replay {
    let mut ops = Vec::new();
    let mut at = 0;
    while let Some((queue, seq, op, len)) = decode_one(&data[at..]) {
        ops.push((queue, seq, op));
        at += len;
    }
    Replay {
        ops,
        unreadable: data.len() - at,
    }
}

fn decode_one(data: &[u8]) -> Option<(u64, u64, Op, usize)> {
    let len = match *data.first()? {
        KIND_PUT => PUT_LEN,
        KIND_SETTLE => SETTLE_LEN,
        _ => return None,
    };
    let record = data.get(..len)?;
    let (body, crc) = record.split_at(len - CRC_LEN);
    if crc32fast::hash(body) != u32::from_be_bytes(crc.try_into().ok()?) {
        return None;
    }
    let queue = u64::from_be_bytes(body[1..9].try_into().ok()?);
    let seq = u64::from_be_bytes(body[9..17].try_into().ok()?);
    let op = if body[0] == KIND_PUT {
        Op::Put(body[HEADER_LEN..].try_into().ok()?)
    } else {
        Op::Settle
    };
    Some((queue, seq, op, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_a_torn_tail_stops_the_reading() {
        let mut data = Vec::new();
        encode(&mut data, 7, 1, &Op::Put([9; ENTRY_VALUE_LEN]));
        encode(&mut data, 7, 1, &Op::Settle);
        encode(&mut data, 8, 2, &Op::Put([3; ENTRY_VALUE_LEN]));
        assert_eq!(data.len(), 2 * PUT_LEN + SETTLE_LEN);
        let all = decode_all(&data);
        assert_eq!(all.unreadable, 0);
        assert_eq!(
            all.ops,
            vec![
                (7, 1, Op::Put([9; ENTRY_VALUE_LEN])),
                (7, 1, Op::Settle),
                (8, 2, Op::Put([3; ENTRY_VALUE_LEN])),
            ]
        );
        for cut in 1..PUT_LEN {
            let torn = decode_all(&data[..data.len() - cut]);
            assert_eq!(torn.ops.len(), 2, "cut {cut}");
            assert_eq!(torn.unreadable, PUT_LEN - cut);
        }
        let mut damaged = data.clone();
        damaged[PUT_LEN + 3] ^= 1;
        let read = decode_all(&damaged);
        assert_eq!(read.ops.len(), 1);
        assert_eq!(read.unreadable, PUT_LEN + SETTLE_LEN);
    }
}
