#!/usr/bin/env bash
# The long mode of the parsers' property tests (`make fuzz`; docs/fuzzing.md): every property
# runs alone, optimised, for $PROPTEST_CASES cases (default 10 million); prints per property
# the cases run and the time. A failure prints proptest's minimal input and stops.
# An argument, an extended regular expression, runs only the properties whose names match it.
set -euo pipefail
only="${1:-}"

cd "$(dirname "$0")/.."
export PROPTEST_CASES="${PROPTEST_CASES:-10000000}"
export RUST_BACKTRACE=0
# optimised, but an overflow still panics as in the debug builds of `cargo test`
export CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true
export CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true
# its own build directory: these settings differ from the package's release build
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/fuzz}"

engine=(-p nixos-test-ng-engine --lib)
protocol=(-p nixos-test-ng-agent-protocol --test properties)
agent=(-p nixos-test-ng-agent --bin nixos-test-ng-agent)

cargo test --release -q "${engine[@]}" --no-run
cargo test --release -q "${protocol[@]}" --no-run
cargo test --release -q "${agent[@]}" --no-run

list() {
    cargo test --release -q "$@" -- --list 2>/dev/null | sed -n 's/: test$//p'
}

run() {
    local name=$1
    shift
    local start end
    start=$(date +%s.%N)
    if ! out=$(cargo test --release -q "$@" -- --exact "$name" --test-threads=1 2>&1); then
        printf '%s\n' "$out" >&2
        printf 'FAILED %s\n' "$name" >&2
        exit 1
    fi
    end=$(date +%s.%N)
    printf '%-86s %12s cases %9.1f s\n' "$name" "$PROPTEST_CASES" "$(awk "BEGIN { print $end - $start }")"
}

selected() {
    grep -E -- "${only:-.}" || true
}

for t in $(list "${engine[@]}" | grep -E '::properties::|^transport::agent::tests::arbitrary_bytes' | selected); do
    run "$t" "${engine[@]}"
done
for t in $(list "${protocol[@]}" | selected); do
    run "$t" "${protocol[@]}"
done
for t in $(list "${agent[@]}" | grep -E '::properties::' | selected); do
    run "$t" "${agent[@]}"
done
