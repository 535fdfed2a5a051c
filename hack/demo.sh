#!/usr/bin/env bash
# Brings up a working Orca demo on this machine:
#   1. installs what it needs (cmake, curl, moto, boto3, the aws CLI) if missing;
#   2. builds orca (release);
#   3. starts an origin on 127.0.0.1 and seeds it: moto's S3 server (bucket `demo`), or with
#      `--azure` Azurite's Blob service (container `demo`);
#   4. starts Orca in front of it with the fs cache store;
#   5. prints commands to try.
# `hack/demo.sh stop` stops everything. State (logs, cache, pids) lives in $ORCA_DEMO_DIR
# (default /tmp/orca-demo). Ports: ORCA_DEMO_MOTO_PORT (9000), ORCA_DEMO_AZURITE_PORT (10000),
# ORCA_DEMO_EDGE_PORT (8443), ORCA_DEMO_FILL_PORT (8444), ORCA_DEMO_OPS_PORT (8442).
# ORCA_BIN: an orca binary to run instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${ORCA_DEMO_DIR:-/tmp/orca-demo}"
moto_port="${ORCA_DEMO_MOTO_PORT:-9000}"
azurite_port="${ORCA_DEMO_AZURITE_PORT:-10000}"
edge_port="${ORCA_DEMO_EDGE_PORT:-8443}"
fill_port="${ORCA_DEMO_FILL_PORT:-8444}"
ops_port="${ORCA_DEMO_OPS_PORT:-8442}"
# Azurite's well-known development account key (public, documented by Microsoft; not a secret).
azurite_key="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/orca-target}"

say() { printf '==> %s\n' "$*"; }

stop_pid() {
    local file=$1
    [ -f "$file" ] || return 0
    local pid
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -INT "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

stop() {
    stop_pid "$dir/orca.pid.demo"
    stop_pid "$dir/moto.pid"
    stop_pid "$dir/azurite.pid"
}

case "${1:-}" in
    stop)
        stop
        say "demo stopped"
        exit 0
        ;;
    --azure) azure=true ;;
    "") azure=false ;;
    *)
        echo "usage: $0 [--azure | stop]" >&2
        exit 2
        ;;
esac

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Waits for any HTTP answer from URL (with WAIT_FAIL=1, for a 2xx: /readyz answers 503 until
# Orca's listeners are up).
wait_http() {
    local url=$1 what=$2 log=$3
    for _ in $(seq 1 150); do
        if curl -s ${WAIT_FAIL:+-f} -o /dev/null "$url"; then
            return 0
        fi
        sleep 0.2
    done
    echo "$what did not come up; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
}

stop
# A fresh cache and origin each time, so the first read shows a cold fill.
rm -rf "$dir/cache" "$dir/azurite"
mkdir -p "$dir"
origin_port=$moto_port
$azure && origin_port=$azurite_port
for p in "$origin_port" "$edge_port" "$fill_port" "$ops_port"; do
    if ! port_free "$p"; then
        echo "port $p on 127.0.0.1 is in use; set ORCA_DEMO_*_PORT (see the top of $0)" >&2
        exit 1
    fi
done

say "installing what is missing"
hack/install-test-deps.sh
if $azure; then
    hack/install-azurite.sh
    if ! python3 -c 'import azure.storage.blob' >/dev/null 2>&1; then
        python3 -m pip install --quiet --disable-pip-version-check azure-storage-blob
        echo "installed azure-storage-blob"
    fi
fi

if [ -z "${ORCA_BIN:-}" ]; then
    say "building orca (release; the first build takes several minutes)"
    cargo build --release --locked --bin orca
fi
orca_bin="${ORCA_BIN:-$CARGO_TARGET_DIR/release/orca}"

if $azure; then
    say "starting Azurite (Azure Blob) on 127.0.0.1:$azurite_port"
    "${ORCA_AZURITE_DIR:-$HOME/.cache/orca-azurite}/node_modules/.bin/azurite-blob" \
        --blobHost 127.0.0.1 --blobPort "$azurite_port" --location "$dir/azurite" \
        --skipApiVersionCheck --disableTelemetry --silent >"$dir/azurite.log" 2>&1 &
    echo $! >"$dir/azurite.pid"
    wait_http "http://127.0.0.1:$azurite_port/" "azurite" "$dir/azurite.log"
    say "seeding container demo"
    python3 - "$azurite_port" "$azurite_key" <<'PY'
import sys
from azure.storage.blob import BlobServiceClient
port, key = sys.argv[1], sys.argv[2]
svc = BlobServiceClient.from_connection_string(
    f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};"
    f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
c = svc.create_container("demo")
c.upload_blob("hello.txt", b"hello from the origin, through Orca\n")
# 40 MiB of deterministic bytes: five 8 MiB chunks.
block = bytes((i * 131 + 7) % 251 for i in range(1 << 20))
c.upload_blob("big.bin", block * 40)
c.upload_blob("empty", b"")
c.upload_blob("dir/a key with spaces+plus.txt", b"awkward keys work\n")
c.get_blob_client("page.bin").create_page_blob(size=512)
print("    hello.txt, big.bin (40 MiB), empty, 'dir/a key with spaces+plus.txt', page.bin (a page blob)")
PY
    origin_yaml="  id: demo-azurite
  driver: azureblob
  azureblob:
    account: devstoreaccount1
    endpoint: http://127.0.0.1:$azurite_port/devstoreaccount1"
    origin_name="container \"demo\" from Azurite"
else
    say "starting moto's S3 server on 127.0.0.1:$moto_port"
    moto_server -H 127.0.0.1 -p "$moto_port" >"$dir/moto.log" 2>&1 &
    echo $! >"$dir/moto.pid"
    wait_http "http://127.0.0.1:$moto_port/" "moto" "$dir/moto.log"
    say "seeding bucket demo"
    python3 - "$moto_port" <<'PY'
import sys, boto3
port = sys.argv[1]
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                  aws_access_key_id="demo", aws_secret_access_key="demo")
s3.create_bucket(Bucket="demo")
s3.put_object(Bucket="demo", Key="hello.txt", Body=b"hello from the origin, through Orca\n",
              ContentType="text/plain")
# 40 MiB of deterministic bytes: five 8 MiB chunks.
block = bytes((i * 131 + 7) % 251 for i in range(1 << 20))
s3.put_object(Bucket="demo", Key="big.bin", Body=block * 40)
s3.put_object(Bucket="demo", Key="empty", Body=b"")
s3.put_object(Bucket="demo", Key="dir/a key with spaces+plus.txt", Body=b"awkward keys work\n")
print("    hello.txt, big.bin (40 MiB), empty, 'dir/a key with spaces+plus.txt'")
PY
    origin_yaml="  id: demo-moto
  driver: s3
  s3:
    endpoint: http://127.0.0.1:$moto_port
    region: us-east-1
    path_style: true"
    origin_name="bucket \"demo\" from moto"
fi

say "starting orca (edge :$edge_port, fill :$fill_port, ops :$ops_port)"
cat >"$dir/orca.yaml" <<EOF
# Generated by hack/demo.sh; see conf/orca.yaml for every key.
listen:
  edge: 127.0.0.1:$edge_port
  internal: 127.0.0.1:$fill_port
  ops: 127.0.0.1:$ops_port
origin:
$origin_yaml
cachestore:
  driver: fs
  fs:
    root: $dir/cache
logging:
  level: info
  format: text
EOF
cat >"$dir/pingora.yaml" <<EOF
version: 1
threads: 2
pid_file: $dir/orca.pid
upgrade_sock: $dir/orca_upgrade.sock
grace_period_seconds: 5
graceful_shutdown_timeout_seconds: 5
EOF
AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AZURE_STORAGE_KEY="$azurite_key" \
    "$orca_bin" --config "$dir/orca.yaml" -c "$dir/pingora.yaml" >"$dir/orca.log" 2>&1 &
echo $! >"$dir/orca.pid.demo"
WAIT_FAIL=1 wait_http "http://127.0.0.1:$ops_port/readyz" "orca" "$dir/orca.log"

aws_orca="AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo aws --region us-east-1 --endpoint-url http://127.0.0.1:$edge_port"
cat <<EOF

Orca is serving $origin_name at http://127.0.0.1:$edge_port. Try:

  # the first 100 bytes of a 40 MiB object (cold: fetched from the origin, then cached)
  curl -s -r 0-99 http://127.0.0.1:$edge_port/demo/big.bin | od -A d -t u1 | head -3

  # the whole object and a listing with the aws CLI, and its sha256 (the origin holds
  # 40 copies of one 1 MiB block: every chunk is the same)
  $aws_orca s3 cp s3://demo/big.bin $dir/big.bin
  $aws_orca s3 ls s3://demo/ --recursive
  sha256sum $dir/big.bin

  # boto3
  python3 -c "import boto3; s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:$edge_port', region_name='us-east-1', aws_access_key_id='demo', aws_secret_access_key='demo'); print(s3.get_object(Bucket='demo', Key='hello.txt')['Body'].read().decode(), end='')"

  # a key with spaces and '+', and a missing key (an S3 XML error)
  curl -s "http://127.0.0.1:$edge_port/demo/dir/a%20key%20with%20spaces%2Bplus.txt"
  curl -s http://127.0.0.1:$edge_port/demo/nope
EOF
if $azure; then
    cat <<EOF

  # a page blob: Orca serves block blobs only (501 UnsupportedBlobType)
  curl -s http://127.0.0.1:$edge_port/demo/page.bin
EOF
fi
cat <<EOF

  # where the bytes came from: origin once per chunk, then the cache store
  curl -s http://127.0.0.1:$ops_port/metrics | grep -E '^orca_(chunk_reads|origin_requests)_total'

Logs: $dir/orca.log. Cache: $dir/cache. Stop: hack/demo.sh stop
EOF
