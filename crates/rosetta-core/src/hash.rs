//! Hashers for the maps every publish and delivery looks things up in, where std's SipHash
//! cost more than the rest of the lookup.
//!
//! Keys a client chooses (exchange, queue and routing-key words, the names a permission cache
//! remembers) go through [`KeyedState`]: a multiply-and-fold hash, as in wyhash and foldhash,
//! keyed with random numbers drawn once per process. A client that cannot see the keys cannot
//! pick names that collide, so one filling a map with chosen names gets no worse than average
//! lookups. Numbers the broker hands out itself go through [`TagHasher`], with no key at all.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// The process's hash keys, drawn at first use.
fn keys() -> &'static [u64; 4] {
    static KEYS: OnceLock<[u64; 4]> = OnceLock::new();
    KEYS.get_or_init(|| {
        // Should the operating system's generator fail, std's hasher keys come from the same
        // source (read once per thread), so a client still cannot predict these.
        let fallback = RandomState::new();
        std::array::from_fn(|i| getrandom::u64().unwrap_or_else(|_| fallback.hash_one(i)))
    })
}

/// The high and low halves of the full product, folded: each output bit depends on every
/// input bit of both factors.
fn fold_multiply(x: u64, y: u64) -> u64 {
    let full = u128::from(x) * u128::from(y);
    (full as u64) ^ ((full >> 64) as u64)
}

/// Builds [`KeyedHasher`]s with the process's keys.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyedState {
    keys: &'static [u64; 4],
}

impl Default for KeyedState {
    fn default() -> Self {
        KeyedState { keys: keys() }
    }
}

impl BuildHasher for KeyedState {
    type Hasher = KeyedHasher;

    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher {
            keys: self.keys,
            acc: self.keys[0],
        }
    }
}

pub(crate) struct KeyedHasher {
    keys: &'static [u64; 4],
    acc: u64,
}

fn read_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("eight bytes"))
}

fn read_u32(bytes: &[u8]) -> u64 {
    u64::from(u32::from_le_bytes(
        bytes[..4].try_into().expect("four bytes"),
    ))
}

impl Hasher for KeyedHasher {
    fn finish(&self) -> u64 {
        self.acc
    }

    /// Full 16-byte blocks one multiply each, then the last 1 to 16 bytes as two words that may
    /// overlap the block before them. The length turns the keyed accumulator first, which makes
    /// the overlapping reads unambiguous: XORed into a word the client fills, it could be
    /// cancelled by one more byte.
    fn write(&mut self, bytes: &[u8]) {
        let [_, k1, k2, k3] = *self.keys;
        let len = bytes.len();
        let mut acc = self.acc.rotate_right(len as u32);
        let mut rest = bytes;
        while rest.len() > 16 {
            acc = fold_multiply(read_u64(rest) ^ k1, read_u64(&rest[8..]) ^ k2 ^ acc);
            rest = &rest[16..];
        }
        let (a, b) = if len >= 16 {
            (read_u64(&bytes[len - 16..]), read_u64(&bytes[len - 8..]))
        } else if len >= 8 {
            (read_u64(bytes), read_u64(&bytes[len - 8..]))
        } else if len >= 4 {
            (read_u32(bytes), read_u32(&bytes[len - 4..]))
        } else if len > 0 {
            let (first, mid, last) = (bytes[0], bytes[len / 2], bytes[len - 1]);
            (u64::from(first), (u64::from(mid) << 8) | u64::from(last))
        } else {
            (0, 0)
        };
        self.acc = fold_multiply(a ^ acc ^ k1, b ^ k3);
    }

    // Integers (string terminators, enum discriminants, lengths) take one multiply, not a
    // round of `write`.
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.acc = fold_multiply(self.acc ^ n, self.keys[2]);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// Hashes numbers the broker chose (delivery tags, queue sequence numbers, packet ids), or
/// numbers a limit keeps few (a connection's channels), so no client fills a map with keys of
/// its choosing and a defence against chosen keys buys nothing. The multiplier is odd, so
/// consecutive numbers land in distinct buckets, and it spreads them into the high bits the
/// table also reads.
#[derive(Default)]
pub struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        // 2^64 divided by the golden ratio (Fibonacci hashing).
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::KeyedState;

    #[test]
    fn every_length_and_every_byte_changes_the_hash() {
        let state = KeyedState::default();
        let mut seen = HashSet::new();
        let base: Vec<u8> = (0..40u8).collect();
        for len in 0..=base.len() {
            assert!(seen.insert(state.hash_one(&base[..len])), "length {len}");
            for at in 0..len {
                let mut changed = base[..len].to_vec();
                changed[at] ^= 0x20;
                assert!(seen.insert(state.hash_one(&changed)), "byte {at} of {len}");
            }
        }
    }

    #[test]
    fn a_string_is_hashed_as_its_words_would_not_be() {
        let state = KeyedState::default();
        assert_ne!(state.hash_one(("ab", "c")), state.hash_one(("a", "bc")));
        assert_eq!(
            state.hash_one("sensors"),
            state.hash_one(String::from("sensors"))
        );
    }

    #[test]
    fn names_one_byte_apart_in_length_do_not_collide_by_construction() {
        // Pairs whose last two words differ exactly by the change in length: with the length
        // XORed into the last word they collided whatever the keys.
        let state = KeyedState::default();
        for (short, long) in [
            ("a```````", "a````````"),
            ("ppppppppcccccccczzzzzzzz", "ppppppppccccccccc{zzzzzzz"),
        ] {
            assert_ne!(
                state.hash_one(short),
                state.hash_one(long),
                "{short} / {long}"
            );
        }
    }

    #[test]
    fn buckets_of_similar_names_spread() {
        // Names differing in one character, as generated ones do, must not share buckets: the
        // table indexes by the low bits and tags by the high ones.
        let state = KeyedState::default();
        let names: Vec<String> = (0..4096).map(|i| format!("client-{i:04}")).collect();
        let low: HashSet<u64> = names.iter().map(|n| state.hash_one(n) & 0xfff).collect();
        let high: HashSet<u64> = names.iter().map(|n| state.hash_one(n) >> 52).collect();
        assert!(low.len() > 2_400, "{} distinct low buckets", low.len());
        assert!(high.len() > 2_400, "{} distinct high buckets", high.len());
    }
}
