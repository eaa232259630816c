//! Password hashes in RabbitMQ's format, so that a `password_hash` exported from RabbitMQ
//! (`rabbitmqctl export_definitions`, the management API's definitions) works here unchanged and
//! the other way round.
//!
//! The format (`rabbit_password_hashing_sha256`, RabbitMQ's default since 3.6, and
//! `rabbit_password_hashing_sha512`) is the base64 encoding of a 4-byte random salt followed by
//! `SHA-256(salt ++ UTF-8 password)` (or SHA-512). Both decode to a length of their own (36 and
//! 68 bytes), so a hash says which algorithm made it. An empty hash is RabbitMQ's user without a
//! password, whom no password logs in ([`PasswordHash::none`]).

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256, Sha512};

/// Bytes of salt in front of the digest.
pub const SALT_LEN: usize = 4;

/// The digests RabbitMQ's internal user database uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    Sha256,
    Sha512,
}

impl HashAlgorithm {
    /// RabbitMQ's name for it, the `hashing_algorithm` of a user in a definitions file.
    pub fn rabbitmq_name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "rabbit_password_hashing_sha256",
            HashAlgorithm::Sha512 => "rabbit_password_hashing_sha512",
        }
    }

    fn digest_len(self) -> usize {
        match self {
            HashAlgorithm::Sha256 => 32,
            HashAlgorithm::Sha512 => 64,
        }
    }

    fn digest(self, salt: &[u8; SALT_LEN], password: &str) -> Vec<u8> {
        match self {
            HashAlgorithm::Sha256 => Sha256::new()
                .chain_update(salt)
                .chain_update(password.as_bytes())
                .finalize()
                .to_vec(),
            HashAlgorithm::Sha512 => Sha512::new()
                .chain_update(salt)
                .chain_update(password.as_bytes())
                .finalize()
                .to_vec(),
        }
    }
}

/// A salted password digest. Only the hash is kept: a password given in plain text is hashed
/// when it is read.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    algorithm: HashAlgorithm,
    salt: [u8; SALT_LEN],
    digest: Vec<u8>,
}

/// Why a `password_hash` value was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("not valid base64")]
    Base64,
    #[error(
        "decodes to {0} bytes; a RabbitMQ SHA-256 hash decodes to 36 (4 salt + 32 digest), a \
         SHA-512 hash to 68"
    )]
    Length(usize),
}

impl PasswordHash {
    /// Hashes `password` with SHA-256 and a fresh random salt, as `rabbitmqctl hash_password`
    /// does.
    pub fn new(password: &str) -> PasswordHash {
        PasswordHash::with_salt(HashAlgorithm::Sha256, fresh_salt(), password)
    }

    /// Hashes `password` with the given algorithm and salt.
    pub fn with_salt(
        algorithm: HashAlgorithm,
        salt: [u8; SALT_LEN],
        password: &str,
    ) -> PasswordHash {
        PasswordHash {
            algorithm,
            salt,
            digest: algorithm.digest(&salt, password),
        }
    }

    /// The hash of a user without a password, written as an empty `password_hash` (RabbitMQ's
    /// definitions export such users so): no password matches it, so the user can log in only
    /// with a client certificate.
    pub fn none() -> PasswordHash {
        PasswordHash {
            algorithm: HashAlgorithm::Sha256,
            salt: [0; SALT_LEN],
            digest: Vec::new(),
        }
    }

    /// Whether this is [`PasswordHash::none`].
    pub fn is_none(&self) -> bool {
        self.digest.is_empty()
    }

    /// Reads a hash in RabbitMQ's format (see the module documentation); an empty one is
    /// [`PasswordHash::none`]. Surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<PasswordHash, HashError> {
        if text.trim().is_empty() {
            return Ok(PasswordHash::none());
        }
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| HashError::Base64)?;
        let algorithm = [HashAlgorithm::Sha256, HashAlgorithm::Sha512]
            .into_iter()
            .find(|a| SALT_LEN + a.digest_len() == bytes.len())
            .ok_or(HashError::Length(bytes.len()))?;
        let (salt, digest) = bytes.split_at(SALT_LEN);
        let mut salt_bytes = [0u8; SALT_LEN];
        salt_bytes.copy_from_slice(salt);
        Ok(PasswordHash {
            algorithm,
            salt: salt_bytes,
            digest: digest.to_vec(),
        })
    }

    pub fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }

    /// Whether `password` is the one hashed. The digests are compared in constant time, so how
    /// long the answer takes says nothing about how much of a guess was right. Nothing matches
    /// [`PasswordHash::none`]: a digest is never empty (and the time taken is the same).
    pub fn verify(&self, password: &str) -> bool {
        constant_time_eq(&self.algorithm.digest(&self.salt, password), &self.digest)
    }
}

/// The hash in RabbitMQ's format: what `password_hash` takes.
impl fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(SALT_LEN + self.digest.len());
        bytes.extend_from_slice(&self.salt);
        bytes.extend_from_slice(&self.digest);
        f.write_str(&STANDARD.encode(bytes))
    }
}

/// Debug output names the algorithm only, so logging a user never prints its hash.
impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return f.write_str("PasswordHash(none)");
        }
        write!(f, "PasswordHash({})", self.algorithm.rabbitmq_name())
    }
}

/// A plain-text password, hashed at once with a fresh salt.
impl From<&str> for PasswordHash {
    fn from(password: &str) -> Self {
        PasswordHash::new(password)
    }
}

/// Compares two byte strings in time that depends only on their lengths: every byte pair is
/// looked at, the differences are OR-ed together, and the one branch is on the result.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

/// Four bytes from the operating system's random generator. Should it fail, std's randomly
/// keyed hasher (seeded from the same source once per thread, then stepped for each use) still
/// gives a different salt each time, which is all a salt must do: it is stored beside the
/// digest, not kept secret.
fn fresh_salt() -> [u8; SALT_LEN] {
    let mut salt = [0u8; SALT_LEN];
    if getrandom::fill(&mut salt).is_err() {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        salt.copy_from_slice(&hasher.finish().to_le_bytes()[..SALT_LEN]);
    }
    salt
}

#[cfg(test)]
mod tests {
    use super::*;

    // RabbitMQ's documented example (salt 0x908DC60A, password "test12"), the same value
    // Python gives:
    //   salt = bytes.fromhex("908DC60A")
    //   base64.b64encode(salt + hashlib.sha256(salt + b"test12").digest())
    const TEST12_SHA256: &str = "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR";
    //   base64.b64encode(salt + hashlib.sha512(salt + b"test12").digest())
    const TEST12_SHA512: &str = "kI3GChuNuIYf8lRbCCxZjgjKwsY19ns6+uFO0zcXRBGA/XGJPYD8OWMy7EB8TaOmAzjP2azv84GbINYwX2cDWb4DHnc=";
    const SALT: [u8; 4] = [0x90, 0x8d, 0xc6, 0x0a];

    #[test]
    fn a_rabbitmq_sha256_hash_checks_against_its_password() {
        let hash = PasswordHash::parse(TEST12_SHA256).expect("valid hash");
        assert_eq!(hash.algorithm(), HashAlgorithm::Sha256);
        assert!(hash.verify("test12"));
        assert!(!hash.verify("test13"));
        assert!(!hash.verify(""));
        assert!(!hash.verify("test12 "));
    }

    #[test]
    fn hashing_with_rabbitmqs_salt_gives_rabbitmqs_hash() {
        let hash = PasswordHash::with_salt(HashAlgorithm::Sha256, SALT, "test12");
        assert_eq!(hash.to_string(), TEST12_SHA256);
        let hash = PasswordHash::with_salt(HashAlgorithm::Sha512, SALT, "test12");
        assert_eq!(hash.to_string(), TEST12_SHA512);
    }

    #[test]
    fn a_rabbitmq_sha512_hash_is_recognised_by_its_length() {
        let hash = PasswordHash::parse(TEST12_SHA512).expect("valid hash");
        assert_eq!(hash.algorithm(), HashAlgorithm::Sha512);
        assert!(hash.verify("test12"));
        assert!(!hash.verify("test1"));
    }

    #[test]
    fn a_new_hash_round_trips_through_its_text_and_has_a_fresh_salt() {
        let first = PasswordHash::new("s3cret é");
        let second = PasswordHash::new("s3cret é");
        assert_ne!(first.to_string(), second.to_string(), "same salt twice");
        let parsed = PasswordHash::parse(&first.to_string()).expect("own output parses");
        assert_eq!(parsed, first);
        assert!(parsed.verify("s3cret é"));
        assert!(!parsed.verify("s3cret e"));
        assert_eq!(first.to_string().len(), TEST12_SHA256.len());
    }

    #[test]
    fn malformed_hashes_are_refused_with_the_reason() {
        assert_eq!(PasswordHash::parse("not base64!"), Err(HashError::Base64));
        assert_eq!(PasswordHash::parse("c2hvcnQ="), Err(HashError::Length(5)));
        // An MD5 hash (RabbitMQ's legacy rabbit_password_hashing_md5) is 20 bytes.
        assert_eq!(
            PasswordHash::parse(&STANDARD.encode([0u8; 20])),
            Err(HashError::Length(20))
        );
        assert!(PasswordHash::parse(&format!("  {TEST12_SHA256}\n")).is_ok());
    }

    #[test]
    fn an_empty_hash_is_a_user_without_a_password_and_matches_nothing() {
        for text in ["", "  \n"] {
            let hash = PasswordHash::parse(text).expect("an empty hash");
            assert!(hash.is_none());
            assert!(!hash.verify(""));
            assert!(!hash.verify("guest"));
            assert_eq!(hash.to_string(), "");
            assert_eq!(format!("{hash:?}"), "PasswordHash(none)");
        }
        assert!(!PasswordHash::new("").is_none());
    }

    #[test]
    fn debug_output_does_not_show_the_hash() {
        let hash = PasswordHash::parse(TEST12_SHA256).expect("valid hash");
        let debug = format!("{hash:?}");
        assert_eq!(debug, "PasswordHash(rabbit_password_hashing_sha256)");
    }

    #[test]
    fn constant_time_eq_compares_whole_byte_strings() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"xbc"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        let a = [0xffu8; 32];
        let mut b = a;
        b[31] = 0xfe;
        assert!(!constant_time_eq(&a, &b));
        b[31] = 0xff;
        assert!(constant_time_eq(&a, &b));
    }
}
