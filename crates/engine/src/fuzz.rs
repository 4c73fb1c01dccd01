//! The property tests' shared settings (test builds only): how many cases each runs.
//!
//! Short mode (`cargo test`, CI) runs each property's own small count; long mode
//! (`make fuzz`) sets `PROPTEST_CASES`, which every property here obeys.

use proptest::test_runner::Config;

/// The case count: `PROPTEST_CASES` when set (long mode), else `short`.
pub fn cases(short: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(short)
}

/// A proptest configuration of [`cases`]`(short)` cases, shrinking kept short.
pub fn config(short: u32) -> Config {
    Config {
        cases: cases(short),
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    }
}
