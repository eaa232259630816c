//! Fuzzing on the stable toolchain: the frame decoder fed random and mutated bytes, and the
//! session driven by random operations interleaved with mutated frames, against a real broker.
//!
//! Each property runs a bounded number of cases so that `cargo test` stays quick;
//! `ROSETTA_FUZZ_CASES=<n>` runs `n` cases of every property instead (docs/reliability.md).

mod decoder;
mod mutate;
mod session;

use proptest::test_runner::Config;

/// `default_cases` cases, or `ROSETTA_FUZZ_CASES` when it is set.
pub(crate) fn config(default_cases: u32) -> Config {
    let cases = std::env::var("ROSETTA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        ..Config::default()
    }
}
