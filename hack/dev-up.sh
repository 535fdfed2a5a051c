#!/usr/bin/env bash
# Brings up a local Orca fleet on 127.0.0.1 (docs/quickstart.md walks through it):
#   1. installs moto and Azurite if missing (hack/install-test-deps.sh, hack/install-azurite.sh)
#      and builds orca and orcaseed (debug profile; ORCA_BIN / ORCASEED_BIN use others);
#   2. starts moto (S3) and Azurite (Azure Blob);
#   3. creates the origin bucket `demo` (on moto; with --azure, the container `demo` on
#      Azurite is the origin) and the shared cache bucket `orca-cache` on moto, and seeds both
#      origins with orcaseed: three 20 MiB objects (three 8 MiB chunks each), twenty 64 KiB ones
#      and hello.txt;
#   4. starts three Orca replicas: static peers, a shared secret, the shared `s3` cache store
#      with a local tier per replica;
#   5. prints what to try.
# Idempotent: a fleet that is up and ready is left alone (its tips are printed again); anything
# else left from an earlier run is stopped first, so there is only ever one fleet.
# hack/dev-down.sh stops exactly what this started, by pid.
#
# State (pids, logs, configurations, caches, the peer secret) lives in $ORCA_DEV_DIR (default
# .dev/ in the repository). Ports: $ORCA_DEV_BASE_PORT (default 18400) for moto, +1 Azurite,
# and replica i (1..3) on +10i (edge), +10i+1 (internal), +10i+2 (ops).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

origin=moto
case "${1:-}" in
    "") ;;
    --azure) origin=azure ;;
    *)
        echo "usage: $0 [--azure]" >&2
        exit 2
        ;;
esac

dir="${ORCA_DEV_DIR:-$repo/.dev}"
base="${ORCA_DEV_BASE_PORT:-18400}"
moto_port=$base
azurite_port=$((base + 1))
edge() { echo $((base + 10 * $1)); }
internal() { echo $((base + 10 * $1 + 1)); }
ops() { echo $((base + 10 * $1 + 2)); }
# Azurite's well-known development account key (public, documented by Microsoft; not a secret).
azurite_key="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"

say() { printf '==> %s\n' "$*"; }

# Whether PID runs a program whose command line contains WORD (not a recycled pid, not a zombie).
runs() {
    [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q -- "$2"
}

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Waits (at most 30 s) for an answer from URL; with WAIT_OK=1, for a 2xx (Orca's /readyz
# answers 503 until its listeners and the cache store are ready).
wait_http() {
    local url=$1 what=$2 log=$3
    for _ in $(seq 1 150); do
        if curl -s ${WAIT_OK:+-f} -o /dev/null --max-time 2 "$url"; then
            return 0
        fi
        sleep 0.2
    done
    echo "dev-up: $what did not come up at $url; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
}

print_tips() {
    local rel=${dir#"$repo"/}
    local e1 e2 e3
    e1=$(edge 1)
    e2=$(edge 2)
    e3=$(edge 3)
    local origin_name="bucket \"demo\" on moto (S3, http://127.0.0.1:$moto_port)"
    [ "$origin" = azure ] && origin_name="container \"demo\" on Azurite (http://127.0.0.1:$azurite_port/devstoreaccount1)"
    # moto holds the same bytes in s3://demo as Azurite in az://demo (the same seeds).
    local origin_url="http://127.0.0.1:$moto_port"
    cat <<EOF

The fleet is up: three Orca replicas in front of $origin_name,
sharing the cache bucket "orca-cache" on moto, each with a local tier, peers with a shared secret.

  replica  edge (S3 clients)       ops (/metrics, /readyz)  log
EOF
    for i in 1 2 3; do
        printf '  %-8s %-23s %-24s %s\n' \
            "$i" "http://127.0.0.1:$(edge "$i")" "http://127.0.0.1:$(ops "$i")" "$rel/logs/replica$i.log"
    done
    cat <<EOF

Try (first: source $rel/env.sh  # credentials for the aws CLI; orca and orcaseed on PATH):

  # a 20 MiB object (three 8 MiB chunks), cold, through replica 2, and straight from the origin
  curl -s http://127.0.0.1:$e2/demo/big/obj-000000 | sha256sum
  aws --endpoint-url $origin_url s3 cp s3://demo/big/obj-000000 - | sha256sum

  # which replica coordinated each chunk: the coordinator is the one that fetched it from the
  # origin (one origin GET per chunk, fleet-wide); replica 2 counts the chunks peers sent it
  for p in $(ops 1) $(ops 2) $(ops 3); do echo "ops :\$p"; curl -s http://127.0.0.1:\$p/metrics | grep -E '^orca_(origin_requests_total.*get|chunk_reads_total|peer_fills_total.*ok)'; done

  # 100 bytes from the second chunk through each replica: warm now, the same bytes everywhere
  for p in $e1 $e2 $e3; do curl -s -r 9000000-9000099 http://127.0.0.1:\$p/demo/big/obj-000000 | sha256sum; done

  # the aws CLI, through replica 3
  aws --endpoint-url http://127.0.0.1:$e3 s3 ls s3://demo/
  aws --endpoint-url http://127.0.0.1:$e3 s3 cp s3://demo/hello.txt -

  # the origins, with orcaseed: list, and more data (same seed, same bytes, whatever --concurrency)
  orcaseed list s3://demo/big/
  orcaseed list az://demo/big/
  orcaseed generate s3://demo/more/ --count 4 --size 24MiB --seed 7

  # cache control (docs/operations.md): the admin token is the fleet's peer secret here
  orca warm s3://demo/big/ --ops http://127.0.0.1:$(ops 1) --token-file $rel/peer-secret
  orca inspect s3://demo/big/obj-000000 --ops http://127.0.0.1:$(ops 2) --token-file $rel/peer-secret
  orca purge s3://demo/big/obj-000000 --ops http://127.0.0.1:$(ops 3) --token-file $rel/peer-secret

Logs: $rel/logs/   Configurations: $rel/conf/   Stop: hack/dev-down.sh
EOF
}

# --- already up? -----------------------------------------------------------------------------

if [ -f "$dir/fleet" ] && [ "$(cat "$dir/fleet")" = "$origin $base" ]; then
    up=true
    for entry in moto:moto_server azurite:azurite replica1:conf/replica1.yaml \
        replica2:conf/replica2.yaml replica3:conf/replica3.yaml; do
        pid=$(cat "$dir/run/${entry%%:*}.pid" 2>/dev/null || true)
        if [ -z "$pid" ] || ! runs "$pid" "${entry#*:}"; then
            up=false
        fi
    done
    for i in 1 2 3; do
        $up && curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$(ops "$i")/readyz" || up=false
    done
    if $up; then
        say "the fleet in $dir is already up"
        print_tips
        exit 0
    fi
fi
# Whatever an earlier run left behind is stopped (by the pids it recorded).
hack/dev-down.sh --quiet
rm -f "$dir/fleet"

ports="$moto_port $azurite_port"
for i in 1 2 3; do
    ports="$ports $(edge "$i") $(internal "$i") $(ops "$i")"
done
for p in $ports; do
    if ! port_free "$p"; then
        echo "dev-up: port $p on 127.0.0.1 is in use; set ORCA_DEV_BASE_PORT (see the top of $0)" >&2
        exit 1
    fi
done

if [ -z "${ORCA_DEV_SKIP_INSTALL:-}" ]; then
    say "installing what is missing"
    hack/install-test-deps.sh
    hack/install-azurite.sh
fi
if [ -z "${ORCA_BIN:-}" ] || [ -z "${ORCASEED_BIN:-}" ]; then
    say "building orca and orcaseed (the first build takes several minutes)"
    cargo build --locked --bin orca --bin orcaseed
fi
orca_bin="${ORCA_BIN:-$CARGO_TARGET_DIR/debug/orca}"
orcaseed_bin="${ORCASEED_BIN:-$CARGO_TARGET_DIR/debug/orcaseed}"
azurite_bin="${AZURITE_BLOB:-${ORCA_AZURITE_DIR:-$HOME/.cache/orca-azurite}/node_modules/.bin/azurite-blob}"

# A fresh fleet: no data from an earlier run (logs are replaced too).
rm -rf "$dir/azurite" "$dir/cache" "$dir/logs" "$dir/conf"
mkdir -p "$dir/run" "$dir/logs" "$dir/conf" "$dir/cache"
echo "$ports" >"$dir/ports"

say "starting moto (S3) on 127.0.0.1:$moto_port"
moto_server -H 127.0.0.1 -p "$moto_port" </dev/null >"$dir/logs/moto.log" 2>&1 &
echo $! >"$dir/run/moto.pid"
say "starting Azurite (Azure Blob) on 127.0.0.1:$azurite_port"
"$azurite_bin" --blobHost 127.0.0.1 --blobPort "$azurite_port" --location "$dir/azurite" \
    --skipApiVersionCheck --disableTelemetry --silent </dev/null >"$dir/logs/azurite.log" 2>&1 &
echo $! >"$dir/run/azurite.pid"
wait_http "http://127.0.0.1:$moto_port/" moto "$dir/logs/moto.log"
wait_http "http://127.0.0.1:$azurite_port/" Azurite "$dir/logs/azurite.log"

# Everything below talks to the local servers only, with these development credentials.
export AWS_ACCESS_KEY_ID=dev AWS_SECRET_ACCESS_KEY=dev AWS_DEFAULT_REGION=us-east-1
export ORCA_CACHESTORE_ACCESS_KEY_ID=dev ORCA_CACHESTORE_SECRET_ACCESS_KEY=dev
export AZURE_STORAGE_KEY=$azurite_key
unset AWS_SESSION_TOKEN AWS_PROFILE AZURE_STORAGE_SAS_TOKEN
s3=(--endpoint-url "http://127.0.0.1:$moto_port")
az=(--endpoint-url "http://127.0.0.1:$azurite_port/devstoreaccount1")
seed() { "$orcaseed_bin" --no-progress "$@" | tail -n 1; }

say "creating buckets and seeding the origins with orcaseed"
seed "${s3[@]}" create-bucket s3://orca-cache
printf 'hello from the origin, through an Orca fleet\n' >"$dir/hello.txt"
for target in "s3://demo" "az://demo"; do
    if [ "${target%%:*}" = s3 ]; then flags=("${s3[@]}"); else flags=("${az[@]}"); fi
    seed "${flags[@]}" create-bucket "$target"
    seed "${flags[@]}" generate "$target/big/" --count 3 --size 20MiB --seed 1
    seed "${flags[@]}" generate "$target/small/" --count 20 --size 64KiB --seed 2
    seed "${flags[@]}" upload "$dir/hello.txt" "$target/hello.txt"
done

if [ ! -s "$dir/peer-secret" ]; then
    (umask 077 && head -c 24 /dev/urandom | base64 >"$dir/peer-secret")
fi
ORCA_PEER_SECRET=$(cat "$dir/peer-secret")
export ORCA_PEER_SECRET

if [ "$origin" = azure ]; then
    origin_yaml="  id: dev-azurite
  driver: azureblob
  azureblob:
    account: devstoreaccount1
    endpoint: http://127.0.0.1:$azurite_port/devstoreaccount1"
else
    origin_yaml="  id: dev-moto
  driver: s3
  s3:
    endpoint: http://127.0.0.1:$moto_port
    region: us-east-1
    path_style: true"
fi
peers="[127.0.0.1:$(internal 1), 127.0.0.1:$(internal 2), 127.0.0.1:$(internal 3)]"
for i in 1 2 3; do
    cat >"$dir/conf/replica$i.yaml" <<EOF
# Generated by hack/dev-up.sh: replica $i of the local fleet (see conf/orca.yaml for every key).
listen:
  edge: 127.0.0.1:$(edge "$i")
  internal: 127.0.0.1:$(internal "$i")
  ops: 127.0.0.1:$(ops "$i")
origin:
$origin_yaml
cachestore:
  driver: s3
  s3:
    endpoint: http://127.0.0.1:$moto_port
    region: us-east-1
    bucket: orca-cache
    path_style: true
  local:
    root: $dir/cache/replica$i
    max_size: 1GiB
cluster:
  peers: $peers
  self: 127.0.0.1:$(internal "$i")
  shared_secret_env: ORCA_PEER_SECRET
logging:
  level: info
  format: text
EOF
    cat >"$dir/conf/pingora$i.yaml" <<EOF
version: 1
threads: 2
pid_file: $dir/run/pingora$i.pid
upgrade_sock: $dir/run/upgrade$i.sock
grace_period_seconds: 1
graceful_shutdown_timeout_seconds: 1
EOF
done
say "starting three Orca replicas"
for i in 1 2 3; do
    "$orca_bin" --config "$dir/conf/replica$i.yaml" -c "$dir/conf/pingora$i.yaml" \
        </dev/null >"$dir/logs/replica$i.log" 2>&1 &
    echo $! >"$dir/run/replica$i.pid"
done
for i in 1 2 3; do
    WAIT_OK=1 wait_http "http://127.0.0.1:$(ops "$i")/readyz" "replica $i" "$dir/logs/replica$i.log"
done

cat >"$dir/env.sh" <<EOF
# Generated by hack/dev-up.sh: source it for the fleet's development credentials and orcaseed.
export AWS_ACCESS_KEY_ID=dev AWS_SECRET_ACCESS_KEY=dev AWS_DEFAULT_REGION=us-east-1
export AZURE_STORAGE_KEY='$azurite_key'
export PATH="$(dirname "$orca_bin"):$(dirname "$orcaseed_bin"):\$PATH"
# orcaseed talks to moto (s3://) unless told otherwise; az:// locations need the Azurite URL.
orcaseed() {
    case " \$* " in
        *" az://"*) command orcaseed --endpoint-url http://127.0.0.1:$azurite_port/devstoreaccount1 "\$@" ;;
        *) command orcaseed --endpoint-url http://127.0.0.1:$moto_port "\$@" ;;
    esac
}
EOF
echo "$origin $base" >"$dir/fleet"
print_tips
