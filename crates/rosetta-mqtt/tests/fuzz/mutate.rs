//! Mutations of valid encoded packets: what a buggy or hostile client sends once it has learnt
//! the framing. Positions are [`Index`]es, resolved against the bytes as they are when the
//! mutation applies, so a shrunk case stays meaningful.

use proptest::prelude::*;
use proptest::sample::Index;

#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    /// Two bytes overwritten with a boundary value: string, binary and property lengths are
    /// 16-bit big-endian, so this is how most of them get corrupted.
    SetU16(Index, u16),
    Truncate(Index),
    Remove(Index, usize),
    Insert(Index, Vec<u8>),
    /// A piece of another packet of the corpus glued in.
    Splice(Index, Index, Index, usize),
    /// The Remaining Length of the n-th packet (modulo their number) replaced, possibly by a
    /// malformed five-byte Variable Byte Integer.
    Announce(usize, u32),
}

/// Lengths around every limit the decoder knows of, and the largest ones.
fn boundary_u16() -> impl Strategy<Value = u16> {
    prop_oneof![
        prop::sample::select(vec![0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0xffff]),
        any::<u16>(),
    ]
}

/// Remaining Lengths at each Variable Byte Integer width, around the configured packet limits,
/// the largest one, and beyond it (written as five bytes).
fn boundary_remaining() -> impl Strategy<Value = u32> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            4_090,
            16 * 1024 * 1024 - 5,
            268_435_455,
            u32::MAX,
        ]),
        any::<u32>(),
    ]
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        (any::<Index>(), boundary_u16()).prop_map(|(i, v)| Mutation::SetU16(i, v)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1..16usize).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), any::<Index>(), any::<Index>(), 1..64usize)
            .prop_map(|(at, src, from, n)| Mutation::Splice(at, src, from, n)),
        (0..8usize, boundary_remaining()).prop_map(|(n, v)| Mutation::Announce(n, v)),
    ]
}

/// A Fixed Header's Remaining Length at `at`: its value and width, if it is well formed.
fn remaining_at(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for i in 0..4 {
        let byte = *bytes.get(at + i)?;
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Where each packet's Remaining Length starts, and its width, following the lengths as far as
/// they lead.
fn remaining_lengths(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some((value, width)) = remaining_at(bytes, at + 1) {
        found.push((at + 1, width));
        at += 1 + width + value;
    }
    found
}

/// `value` as a Variable Byte Integer (MQTT 5.0 §1.5.5); past the largest one, five bytes.
fn var_int(mut value: u32) -> Vec<u8> {
    if value > 268_435_455 {
        return vec![0xff, 0xff, 0xff, 0xff, 0x7f];
    }
    let mut out = Vec::new();
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        out.push(if value > 0 { byte | 0x80 } else { byte });
        if value == 0 {
            return out;
        }
    }
}

/// Applies `mutation` to `bytes`; `corpus` supplies the pieces spliced in.
pub fn apply(bytes: &mut Vec<u8>, mutation: &Mutation, corpus: &[Vec<u8>]) {
    let len = bytes.len();
    let at = |i: &Index| if len == 0 { 0 } else { i.index(len) };
    match mutation {
        Mutation::FlipBit(i, bit) if len > 0 => bytes[at(i)] ^= 1 << bit,
        Mutation::SetByte(i, v) if len > 0 => bytes[at(i)] = *v,
        Mutation::SetU16(i, v) => {
            let start = at(i).min(len.saturating_sub(2));
            let end = (start + 2).min(len);
            bytes[start..end].copy_from_slice(&v.to_be_bytes()[..end - start]);
        }
        Mutation::Truncate(i) => bytes.truncate(at(i)),
        Mutation::Remove(i, n) => {
            let start = at(i);
            bytes.drain(start..(start + n).min(len));
        }
        Mutation::Insert(i, piece) => {
            let start = at(i);
            bytes.splice(start..start, piece.iter().copied());
        }
        Mutation::Splice(i, src, from, n) if !corpus.is_empty() => {
            let source = &corpus[src.index(corpus.len())];
            if !source.is_empty() {
                let from = from.index(source.len());
                let piece = &source[from..(from + n).min(source.len())];
                let start = at(i);
                bytes.splice(start..start, piece.iter().copied());
            }
        }
        Mutation::Announce(n, size) => {
            let found = remaining_lengths(bytes);
            if !found.is_empty() {
                let (start, width) = found[n % found.len()];
                bytes.splice(start..start + width, var_int(*size));
            }
        }
        _ => {}
    }
}
