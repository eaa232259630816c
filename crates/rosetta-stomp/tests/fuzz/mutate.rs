//! Mutations of valid encoded frames: what a buggy or hostile client sends once it has learnt
//! the framing. Positions are [`Index`]es, resolved against the bytes as they are when the
//! mutation applies, so a shrunk case stays meaningful.

use proptest::prelude::*;
use proptest::sample::Index;

#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    /// A piece of STOMP syntax inserted: line ends, colons, escapes, NULs, commands.
    InsertToken(Index, &'static str),
    Truncate(Index),
    Remove(Index, usize),
    Insert(Index, Vec<u8>),
    /// A piece of another frame of the corpus glued in.
    Splice(Index, Index, Index, usize),
    /// A `content-length` header put in front of the n-th frame's headers (modulo their
    /// number); the first entry wins (STOMP 1.2 Repeated Header Entries), so it overrides any.
    Announce(usize, &'static str),
}

fn token() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "\n",
        "\r\n",
        "\r",
        ":",
        "::",
        "\\",
        "\\c",
        "\\n",
        "\\r",
        "\\t",
        "\0",
        "\n\n",
        "\u{e9}",
        "\u{ff}",
        "SEND\n",
        "CONNECT\n",
        "receipt:r\n",
        "transaction:t0\n",
        "x:y\n",
    ])
}

/// Lengths around the limits the decoder knows of, the largest ones, and not numbers at all.
fn content_length() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "0",
        "1",
        "5",
        "63",
        "64",
        "65",
        "134217728",
        "134217729",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        " 3",
        "",
        "0x10",
    ])
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        (any::<Index>(), token()).prop_map(|(i, t)| Mutation::InsertToken(i, t)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1..16usize).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), any::<Index>(), any::<Index>(), 1..64usize)
            .prop_map(|(at, src, from, n)| Mutation::Splice(at, src, from, n)),
        (0..8usize, content_length()).prop_map(|(n, v)| Mutation::Announce(n, v)),
    ]
}

/// Where each frame's headers start: after its command line, frames being ended by NULs.
fn header_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut frame = 0;
    while frame < bytes.len() {
        let Some(eol) = bytes[frame..].iter().position(|&b| b == b'\n') else {
            break;
        };
        starts.push(frame + eol + 1);
        match bytes[frame..].iter().position(|&b| b == 0) {
            Some(nul) => frame += nul + 1,
            None => break,
        }
    }
    starts
}

fn insert(bytes: &mut Vec<u8>, at: usize, piece: &[u8]) {
    bytes.splice(at..at, piece.iter().copied());
}

/// Applies `mutation` to `bytes`; `corpus` supplies the pieces spliced in.
pub fn apply(bytes: &mut Vec<u8>, mutation: &Mutation, corpus: &[Vec<u8>]) {
    let len = bytes.len();
    let at = |i: &Index| if len == 0 { 0 } else { i.index(len) };
    match mutation {
        Mutation::FlipBit(i, bit) if len > 0 => bytes[at(i)] ^= 1 << bit,
        Mutation::SetByte(i, v) if len > 0 => bytes[at(i)] = *v,
        Mutation::InsertToken(i, token) => insert(bytes, at(i), token.as_bytes()),
        Mutation::Truncate(i) => bytes.truncate(at(i)),
        Mutation::Remove(i, n) => {
            let start = at(i);
            bytes.drain(start..(start + n).min(len));
        }
        Mutation::Insert(i, piece) => insert(bytes, at(i), piece),
        Mutation::Splice(i, src, from, n) if !corpus.is_empty() => {
            let source = &corpus[src.index(corpus.len())];
            if !source.is_empty() {
                let from = from.index(source.len());
                let piece = &source[from..(from + n).min(source.len())];
                insert(bytes, at(i), piece);
            }
        }
        Mutation::Announce(n, value) => {
            let starts = header_starts(bytes);
            if !starts.is_empty() {
                let header = format!("content-length:{value}\n");
                insert(bytes, starts[n % starts.len()], header.as_bytes());
            }
        }
        _ => {}
    }
}
