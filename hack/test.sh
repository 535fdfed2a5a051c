#!/usr/bin/env bash
# Runs Orca's whole test suite: formatting, lints, unit tests and the end-to-end tests against
# real servers (moto's S3 server, the orca binary) started by the tests on loopback ports.
# Installs what a fresh machine lacks first. Usage: hack/test.sh [extra nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds persist outside the clone so CI and later runs rebuild only what changed.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/orca-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
hack/install-test-deps.sh
hack/install-azurite.sh

# A second S3 implementation that checks SigV4 (tests/origins.rs). Newer releases need a newer
# Rust; the first install compiles for several minutes, later runs find it in ~/.cargo/bin.
if ! command -v s3s-fs >/dev/null 2>&1; then
    step "installing s3s-fs 0.14.1"
    cargo install s3s-fs@0.14.1 --features binary --locked --quiet
fi

step "rustfmt"
cargo fmt --all -- --check

step "clippy"
cargo clippy --locked --all-targets -- -D warnings

step "deploy manifests"
cargo build --locked --quiet --bin orca
ORCA_BIN="$CARGO_TARGET_DIR/debug/orca" hack/check-deploy.sh

step "tests"
if command -v cargo-nextest >/dev/null 2>&1; then
    profile=default
    [ -n "${CI:-}" ] && profile=ci
    cargo nextest run --locked --profile "$profile" "$@"
    # nextest does not run doctests.
    step "doctests"
    cargo test --locked --doc
else
    cargo test --locked "$@"
fi

# The benchmark harness, as a one-minute smoke run, so it cannot rot (its targets are reported,
# not asserted; it fails only if something broke). Set ORCA_SKIP_BENCH=1 to skip it locally.
if [ -z "${ORCA_SKIP_BENCH:-}" ]; then
    step "benchmark smoke (hack/bench/run.sh --quick)"
    hack/bench/run.sh --quick
fi

# The soak (docs/reliability.md), for one minute: a fleet under checked load while a replica is
# killed and another frozen. Set ORCA_SKIP_SOAK=1 to skip it locally.
if [ -z "${ORCA_SKIP_SOAK:-}" ]; then
    step "soak (hack/soak.sh --minutes 1)"
    hack/soak.sh --minutes 1
fi
