#!/usr/bin/env bash
# Installs Azurite (Microsoft's Azure Storage emulator) for tests/azure.rs and the Azure demo:
# azurite@3.35.0 from the npm registry into $ORCA_AZURITE_DIR (default
# $HOME/.cache/orca-azurite). 3.35.0 is the newest release that runs on Node 20.
# Idempotent: silent when it is already there, one line when it installs.
# The tests find the binary at $AZURITE_BLOB, else at $DIR/node_modules/.bin/azurite-blob.
set -euo pipefail

VERSION=3.35.0
DIR="${ORCA_AZURITE_DIR:-$HOME/.cache/orca-azurite}"
BIN="$DIR/node_modules/.bin/azurite-blob"

installed_version() {
    node -p "require('$DIR/node_modules/azurite/package.json').version" 2>/dev/null || true
}

if [ -x "$BIN" ] && [ "$(installed_version)" = "$VERSION" ]; then
    exit 0
fi

for cmd in node npm; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        echo "install-azurite: $cmd is missing (Azurite needs Node.js 20 and npm)" >&2
        exit 1
    fi
done

mkdir -p "$DIR"
# A private package.json keeps npm from walking up into another project.
[ -f "$DIR/package.json" ] || echo '{"name":"orca-azurite","private":true}' >"$DIR/package.json"
npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error --save-exact \
    "azurite@$VERSION" >/dev/null
if [ ! -x "$BIN" ]; then
    echo "install-azurite: npm finished but $BIN is missing" >&2
    exit 1
fi
echo "installed azurite $VERSION in $DIR"
