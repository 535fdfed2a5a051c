#!/usr/bin/env bash
# Orca's soak: three replicas sharing an S3 cache store (moto) under 32 checking clients while
# objects are replaced at the origin, one replica is killed and restarted and one is frozen.
#
#   hack/soak.sh [--minutes N] [--clients N] [--objects N]    (default 10 minutes; CI runs 1)
#
# Every byte read is checked by SHA-256 against the version the response's ETag names. Prints a
# JSON report (requests, bytes, mismatches, errors by kind, hung requests, RSS and descriptors at
# start and end) and exits 1 on any wrong byte, any hung request, no successful read, or
# descriptors or memory that do not come back near their start. See docs/reliability.md.
# Environment: ORCA_BIN (a binary to use; default: the release build, built if needed),
# CARGO_TARGET_DIR (default ~/.cache/orca-target).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/orca-target}"
command -v moto_server >/dev/null && python3 -c 'import boto3' 2>/dev/null || hack/install-test-deps.sh
if [ -z "${ORCA_BIN:-}" ]; then
    cargo build --locked --release --quiet --bin orca
    ORCA_BIN="$CARGO_TARGET_DIR/release/orca"
fi
exec python3 hack/soak.py --binary "$ORCA_BIN" "$@"
