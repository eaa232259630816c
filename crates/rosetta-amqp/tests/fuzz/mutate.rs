//! Mutations of valid encoded frames: what a buggy or hostile client sends once it has learnt
//! the framing. Positions are [`Index`]es, resolved against the bytes as they are when the
//! mutation applies, so a shrunk case stays meaningful.

use proptest::prelude::*;
use proptest::sample::Index;

use rosetta_amqp::codec::{FRAME_HEADER_SIZE, FRAME_OVERHEAD};

#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    /// Four bytes overwritten with a boundary value: lengths of frames, tables, arrays and
    /// long strings are 32-bit big-endian, so this is how most of them get corrupted.
    SetU32(Index, u32),
    Truncate(Index),
    Remove(Index, usize),
    Insert(Index, Vec<u8>),
    /// A piece of another frame of the corpus glued in.
    Splice(Index, Index, Index, usize),
    /// The payload size in the header of the n-th frame (modulo their number) replaced.
    Announce(usize, u32),
}

/// Sizes around every limit the decoder knows of, and the largest ones.
fn boundary_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            0x7f,
            0x80,
            0xff,
            0xffff,
            4_088,
            4_089,
            131_064,
            131_065,
            0x7fff_ffff,
            0xffff_fff7,
            0xffff_ffff,
        ]),
        any::<u32>(),
    ]
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        (any::<Index>(), boundary_u32()).prop_map(|(i, v)| Mutation::SetU32(i, v)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1..16usize).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), any::<Index>(), any::<Index>(), 1..64usize)
            .prop_map(|(at, src, from, n)| Mutation::Splice(at, src, from, n)),
        (0..8usize, boundary_u32()).prop_map(|(n, v)| Mutation::Announce(n, v)),
    ]
}

/// Where each frame starts, following the announced sizes as far as they lead.
fn frame_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + FRAME_HEADER_SIZE) {
        starts.push(at);
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]);
        at += size as usize + FRAME_OVERHEAD as usize;
    }
    starts
}

/// Applies `mutation` to `bytes`; `corpus` supplies the pieces spliced in.
pub fn apply(bytes: &mut Vec<u8>, mutation: &Mutation, corpus: &[Vec<u8>]) {
    let len = bytes.len();
    let at = |i: &Index| if len == 0 { 0 } else { i.index(len) };
    match mutation {
        Mutation::FlipBit(i, bit) if len > 0 => bytes[at(i)] ^= 1 << bit,
        Mutation::SetByte(i, v) if len > 0 => bytes[at(i)] = *v,
        Mutation::SetU32(i, v) => {
            let start = at(i).min(len.saturating_sub(4));
            let end = (start + 4).min(len);
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
            let starts = frame_starts(bytes);
            if !starts.is_empty() {
                let start = starts[n % starts.len()];
                bytes[start + 3..start + 7].copy_from_slice(&size.to_be_bytes());
            }
        }
        _ => {}
    }
}
