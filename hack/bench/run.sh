#!/usr/bin/env bash
# Orca's benchmark harness (issue 7): Orca side by side with nginx proxy_cache + slice, with nginx
# serving the same files from disk (sendfile: the ceiling), and with the origin itself.
#
#   hack/bench/run.sh [--quick]
#
# Sets up, all on 127.0.0.1 (on free ports the kernel picks):
#   - the origin: nginx serving $dir/objects as anonymous path-style S3 objects (bucket "bucket"),
#     plain, and a second server capped at 50 MB/s per connection (limit_rate 50m);
#   - the same nginx serving the same files on a third port: nginx-static, the ceiling;
#   - Orca (fs cache store, 8 MiB chunks, no tiers, readahead 8) in front of each origin;
#   - the floor for small objects: a bare Pingora server answering the same 4 KiB files from
#     memory (hack/bench/floor.rs, the bench-floor binary, built with --features bench-floor);
#   - nginx proxy_cache + slice 8m (settings from nginx's slice docs) in front of each origin;
#   - for figure 8, moto's S3 server as a shared cache store and 3 Orca replicas using it.
# Then measures figures 1-12 of the issue (9-12: sub-range fills and peak memory, on Orca
# instances of their own), prints a table with targets and PASS/FAIL (targets are not
# assertions: the script exits 0 whatever they say, and non-zero only if something broke), and
# writes $dir/results.tsv (every sample), $dir/summary.tsv, $dir/summary.json and a chart
# $dir/benchmarks.png (a full run also copies the chart to docs/benchmarks.png).
#
# --quick: small objects (64 MiB for 1 GiB, 16 MiB for 256 MiB), 4 clients for 16, 5 s wrk runs,
# one run of each; about a minute. The full run repeats each measurement 3 times (median and
# min-max) and takes well under 20 minutes.
#
# Every read checks status and size; one read per setup and figure also checks the bytes' SHA-256,
# so a fast wrong answer cannot score.
#
# Environment: ORCA_BENCH_DIR (default: a new /tmp/orca-bench.XXXXXX per run, so two runs never
# share files; a directory given is wiped at start; caches are removed at exit), CARGO_TARGET_DIR
# (default ~/.cache/orca-target), ORCA_BIN (an orca binary to use instead of building one),
# ORCA_BENCH_NO_BUILD=1 to use the built release binary, ORCA_FLOOR_BIN (a bench-floor binary;
# without one, and with ORCA_BIN or ORCA_BENCH_NO_BUILD=1 and none built, the floor's figures
# are left out), ORCA_BENCH_Z="OBJECTS BOUND_MIB READS RATE" (figure Z's scale instead of the
# mode's: objects of one chunk, the bound, Zipf reads per sequence, measured reads per second per
# stream), ORCA_BENCH_LIMIT_SECS (the watchdog: 300 s quick, 1500 s full).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

quick=false
case "${1:-}" in
    --quick) quick=true ;;
    "") ;;
    *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac

dir="${ORCA_BENCH_DIR:-$(mktemp -d /tmp/orca-bench.XXXXXX)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/orca-target}"
MiB=$((1024 * 1024))
if $quick; then
    big=$((64 * MiB)); med=$((16 * MiB)); nclients=4; wrk_secs=5; reps=1
    rss_clients=16; rss_secs=5; curl_max=60; limit_secs=300; fleet_clients=6
else
    big=$((1024 * MiB)); med=$((256 * MiB)); nclients=16; wrk_secs=20; reps=3
    rss_clients=64; rss_secs=20; curl_max=180; limit_secs=1500; fleet_clients=32
fi
limit_secs=${ORCA_BENCH_LIMIT_SECS:-$limit_secs}
chunk=$((8 * MiB)); readahead=8; origin_conc=64; ra_mem=$((1024 * MiB)); cap_rate=50m
small_count=256; small_size=4096; wrk_conns=64

say() { printf '==> [%ss] %s\n' "$(( $(date +%s) - t_start ))" "$*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }
t_start=$(date +%s)

# ---------------------------------------------------------------------------------------------
# Processes: every one we start is recorded here and stopped by pid on exit.
pids=()
cleanup() {
    local rc=$?
    set +e
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        local p=${pids[i]}
        kill -0 "$p" 2>/dev/null || continue
        kill -TERM "$p" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
    done
    # Keep results and logs, drop the bulky caches and objects.
    rm -rf "$dir/objects" "$dir"/cache-* "$dir"/slice-cache-*
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
say "installing what is missing (nginx, wrk, curl, gnuplot)"
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v gnuplot >/dev/null || need+=(gnuplot-nox)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    timeout 300 $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 600 $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
nginx -V 2>&1 | grep -q http_slice_module || die "this nginx lacks the slice module"

if [ -z "${ORCA_BIN:-}" ] && [ "${ORCA_BENCH_NO_BUILD:-0}" != 1 ]; then
    say "building orca (release)"
    timeout 1800 cargo build --release --locked --features bench-floor --bin orca --bin bench-floor >&2
fi
orca_bin="${ORCA_BIN:-$CARGO_TARGET_DIR/release/orca}"
[ -x "$orca_bin" ] || die "no orca binary at $orca_bin"
floor_bin="${ORCA_FLOOR_BIN:-$CARGO_TARGET_DIR/release/bench-floor}"
[ -x "$floor_bin" ] || { echo "bench: no bench-floor binary at $floor_bin: the floor's figures are left out" >&2; floor_bin=""; }

# The measured run is bounded: a watchdog ends it (through the EXIT trap) if it overruns. It
# starts after the installs and the build, which have deadlines of their own (a first release
# build on 2 cores takes minutes and is no part of the benchmark).
(
    sleep "$limit_secs" & s=$!
    trap 'kill $s 2>/dev/null; exit 0' TERM
    wait $s
    echo "bench: over ${limit_secs}s, giving up" >&2
    kill -TERM $$
) &
pids+=($!)

rm -rf "$dir"
mkdir -p "$dir/objects/small" "$dir/logs" "$dir/tmp"
raw="$dir/results.tsv"
printf 'figure\tsetup\tmetric\trep\tvalue\n' >"$raw"
rec() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$raw"; }
# Errors are recorded in the results file (err may run in a subshell) and counted at the end.
err() { echo "bench: ERROR: $*" >&2; rec error "$1" "${2:-}" 0 1; }

# Free ports picked by the kernel (all bound at once, so distinct), not a fixed range: two runs
# at once do not collide.
port_vars=(p_origin p_capped p_static p_slice p_slice_capped p_orca p_orca_fill p_orca_ops
    p_orcac p_orcac_fill p_orcac_ops p_moto p_f1 p_f1_fill p_f1_ops p_f2 p_f2_fill p_f2_ops
    p_f3 p_f3_fill p_f3_ops)
port_vars+=(p_floor)  # the bare Pingora floor (figure 5)
read -r -a free_ports < <(python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
' "${#port_vars[@]}")
[ "${#free_ports[@]}" -eq "${#port_vars[@]}" ] || die "could not pick ${#port_vars[@]} free ports"
for i in "${!port_vars[@]}"; do eval "${port_vars[i]}=${free_ports[i]}"; done

wait_http() {
    local url=$1 what=$2 log=$3
    for _ in $(seq 1 150); do
        curl -sf -o /dev/null --max-time 2 "$url" && return 0
        sleep 0.2
    done
    tail -n 20 "$log" >&2
    die "$what did not come up"
}

# ---------------------------------------------------------------------------------------------
# The SHA-256 of each source file, and which setups had one read's bytes checked per figure.
declare -A sha_of=() hashed=()
say "generating objects in $dir/objects"
# One random file per size; every other object of that size is a hard link to it (distinct keys,
# so distinct cache entries in Orca and nginx, but no extra disk or page cache on the origin).
head -c "$big" /dev/urandom >"$dir/objects/big-src"
head -c "$med" /dev/urandom >"$dir/objects/med-src"
sha_of[big]=$(sha256sum "$dir/objects/big-src" | cut -d' ' -f1)
sha_of[med]=$(sha256sum "$dir/objects/med-src" | cut -d' ' -f1)
head -c $((small_count * small_size)) /dev/urandom |
    split -b "$small_size" -d -a 3 - "$dir/objects/small/s"
link() { ln -f "$dir/objects/$1" "$dir/objects/$2"; }

# ---------------------------------------------------------------------------------------------
user_line=""; [ "$(id -u)" -eq 0 ] && user_line="user root;"
nginx_common() {
    cat <<EOF
$user_line
worker_processes 2;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
EOF
}
http_common() {
    cat <<EOF
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
    log_format bytes '\$request_method \$uri \$status \$body_bytes_sent';
EOF
}
start_nginx() { # name conf
    local name=$1 conf=$2
    mkdir -p "$dir/$name/tmp"
    nginx -p "$dir/$name" -c "$conf" -e "$dir/$name/error.log" -g 'daemon off;' \
        >"$dir/logs/$name.out" 2>&1 &
    pids+=($!)
    eval "pid_$name=$!"
}

say "starting the origin (:$p_origin, capped :$p_capped) and nginx-static (:$p_static)"
mkdir -p "$dir/origin"
cat >"$dir/origin/nginx.conf" <<EOF
$(nginx_common "$dir/origin")
http {
$(http_common "$dir/origin")
    server {
        listen 127.0.0.1:$p_origin;
        access_log $dir/logs/origin.log bytes;
        location /bucket/ { alias $dir/objects/; }
    }
    server {
        listen 127.0.0.1:$p_capped;
        access_log $dir/logs/origin-capped.log bytes;
        limit_rate $cap_rate;
        location /bucket/ { alias $dir/objects/; }
    }
    server {
        listen 127.0.0.1:$p_static;
        access_log off;
        location /bucket/ { alias $dir/objects/; }
    }
}
EOF
start_nginx origin "$dir/origin/nginx.conf"

say "starting nginx proxy_cache + slice (:$p_slice, capped origin :$p_slice_capped)"
mkdir -p "$dir/slice"
slice_server() { # port upstream zone
    cat <<EOF
    server {
        listen 127.0.0.1:$1;
        access_log off;
        location / {
            slice 8m;
            proxy_cache $3;
            proxy_cache_key \$uri\$is_args\$args\$slice_range;
            proxy_set_header Range \$slice_range;
            proxy_cache_valid 200 206 1h;
            proxy_cache_lock on;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://$2;
        }
    }
EOF
}
cat >"$dir/slice/nginx.conf" <<EOF
$(nginx_common "$dir/slice")
http {
$(http_common "$dir/slice")
    proxy_cache_path $dir/slice-cache-plain levels=1:2 keys_zone=plain:64m max_size=100g inactive=1d use_temp_path=off;
    proxy_cache_path $dir/slice-cache-capped levels=1:2 keys_zone=capped:64m max_size=100g inactive=1d use_temp_path=off;
    upstream origin_plain { server 127.0.0.1:$p_origin; keepalive 64; }
    upstream origin_capped { server 127.0.0.1:$p_capped; keepalive 64; }
$(slice_server "$p_slice" origin_plain plain)
$(slice_server "$p_slice_capped" origin_capped capped)
}
EOF
start_nginx slice "$dir/slice/nginx.conf"

start_orca() { # name origin_port edge fill ops [store and cluster yaml] [chunking line]
    local name=$1
    local chunking_line=${7:-}
    [ -n "$chunking_line" ] || chunking_line="chunking: {size: $chunk, tiers: [], readahead: $readahead}"
    local store=${6:-"cachestore:
  driver: fs
  fs: {root: $dir/cache-$name}"}
    mkdir -p "$dir/$name"
    cat >"$dir/$name/orca.yaml" <<EOF
# Generated by hack/bench/run.sh
listen:
  edge: 127.0.0.1:$3
  internal: 127.0.0.1:$4
  ops: 127.0.0.1:$5
origin: {id: bench, driver: s3, s3: {endpoint: "http://127.0.0.1:$2", region: us-east-1, path_style: true, anonymous: true}}
$store
${chunking_line}
limits: {origin_concurrency: $origin_conc, readahead_memory: $ra_mem}
logging: {level: warn, format: text}
EOF
    cat >"$dir/$name/pingora.yaml" <<EOF
version: 1
threads: 2
pid_file: $dir/$name/orca.pid
upgrade_sock: $dir/$name/upgrade.sock
grace_period_seconds: 1
graceful_shutdown_timeout_seconds: 1
EOF
    "$orca_bin" --config "$dir/$name/orca.yaml" -c "$dir/$name/pingora.yaml" \
        >>"$dir/logs/$name.log" 2>&1 &
    pids+=($!)
    eval "pid_$name=$!"
}
# The floor for small objects (figure 5): Pingora alone, answering the small files from memory.
start_floor() {
    [ -n "$floor_bin" ] || return 0
    "$floor_bin" --listen "127.0.0.1:$p_floor" --dir "$dir/objects/small" --prefix /bucket/small/ \
        --threads 2 >"$dir/logs/floor.log" 2>&1 &
    pids+=($!)
    pid_floor=$!
}
say "starting orca (:$p_orca) and orca on the capped origin (:$p_orcac)"
start_orca orca "$p_origin" "$p_orca" "$p_orca_fill" "$p_orca_ops"
start_orca orcac "$p_capped" "$p_orcac" "$p_orcac_fill" "$p_orcac_ops"
start_floor

: >"$dir/objects/probe"
wait_http "http://127.0.0.1:$p_origin/bucket/probe" origin "$dir/origin/error.log"
wait_http "http://127.0.0.1:$p_slice/bucket/probe" nginx-slice "$dir/slice/error.log"
wait_http "http://127.0.0.1:$p_orca_ops/readyz" orca "$dir/logs/orca.log"
wait_http "http://127.0.0.1:$p_orcac_ops/readyz" orca-capped "$dir/logs/orcac.log"
[ -z "$floor_bin" ] || wait_http "http://127.0.0.1:$p_floor/bucket/small/s000" floor "$dir/logs/floor.log"
for v in pid_origin pid_slice pid_orca pid_orcac; do
    kill -0 "${!v}" 2>/dev/null || die "${v#pid_} exited at start (see $dir/logs)"
done

# The origin must look like S3 enough: a strong ETag, Range and If-Match on static files.
etag=$(curl -sI "http://127.0.0.1:$p_origin/bucket/med-src" | tr -d '\r' | awk -F': ' 'tolower($1)=="etag"{print $2}')
case "$etag" in W/*|"") err origin-etag "weak or missing ETag: '$etag'" ;; esac
code=$(curl -s -o /dev/null -w '%{http_code}' -r 0-9 -H "If-Match: $etag" "http://127.0.0.1:$p_origin/bucket/med-src")
[ "$code" = 206 ] || err origin-if-match "Range + matching If-Match gave $code, not 206"
code=$(curl -s -o /dev/null -w '%{http_code}' -r 0-9 -H 'If-Match: "nope"' "http://127.0.0.1:$p_origin/bucket/med-src")
[ "$code" = 412 ] || err origin-if-match "a stale If-Match gave $code, not 412"

# ---------------------------------------------------------------------------------------------
# Helpers.
url() { # setup key
    case $1 in
        orca) echo "http://127.0.0.1:$p_orca/bucket/$2" ;;
        orcac) echo "http://127.0.0.1:$p_orcac/bucket/$2" ;;
        slice) echo "http://127.0.0.1:$p_slice/bucket/$2" ;;
        slicec) echo "http://127.0.0.1:$p_slice_capped/bucket/$2" ;;
        static) echo "http://127.0.0.1:$p_static/bucket/$2" ;;
        floor) echo "http://127.0.0.1:$p_floor/bucket/$2" ;;
        origin) echo "http://127.0.0.1:$p_origin/bucket/$2" ;;
        capped) echo "http://127.0.0.1:$p_capped/bucket/$2" ;;
    esac
}
now() { date +%s.%N; }
sha_for() { # expected_bytes: the hash of the source object of that size
    case $1 in
        "$big") echo "${sha_of[big]}" ;;
        "$med") echo "${sha_of[med]}" ;;
        *) echo "" ;;
    esac
}
# One read whose bytes are hashed and compared with the source object's: at least one read per
# setup and figure, so that a fast wrong answer cannot score.
check_bytes() { # url expected_bytes what
    local want got
    want=$(sha_for "$2")
    [ -n "$want" ] || { err hash "$3: no source hash for $2 bytes"; return; }
    got=$(curl -s --max-time "$curl_max" "$1" | sha256sum | cut -d' ' -f1)
    [ "$got" = "$want" ] || err hash "$3: $1 returned other bytes (sha256 $got, want $want)"
}
# Checks one URL of this setup and figure once (the first time asked).
check_once() { # setup figure url expected_bytes
    [ -n "${hashed[$1/$2]:-}" ] && return 0
    hashed[$1/$2]=1
    check_bytes "$3" "$4" "figure $2, $1"
}
# One read: prints "bytes seconds"; checks status and size.
get() { # url expected_bytes
    local out
    out=$(curl -s -o /dev/null --max-time "$curl_max" -w '%{http_code} %{size_download} %{time_total}' "$1") || true
    set -- $out "$1" "$2"
    if [ "${1:-}" != 200 ] || [ "${2:-}" != "$5" ]; then
        err read "$4: status ${1:-none}, ${2:-0} of $5 bytes"
    fi
    echo "${2:-0} ${3:-1}"
}
# (awk sums print with %.0f, not %d: Debian's mawk caps %d at 2^31 - 1.)
# N reads at once of the given URLs: prints "total_bytes wall_seconds".
par_get() { # expected_bytes url...
    local exp=$1; shift
    local t0 t1 i=0 ps=()
    t0=$(now)
    for u in "$@"; do
        get "$u" "$exp" >"$dir/tmp/par.$i" & ps+=($!); i=$((i + 1))
    done
    wait "${ps[@]}"
    t1=$(now)
    cat "$dir/tmp"/par.* | awk -v t0="$t0" -v t1="$t1" '{b += $1} END {printf "%.0f %.6f\n", b, t1 - t0}'
    rm -f "$dir/tmp"/par.*
}
mibps() { awk '{printf "%.1f\n", $1 / 1048576 / $2}'; }
# CPU seconds (user + sys) of a process and its children (nginx workers).
cpu_of() {
    local tck total=0 p
    tck=$(getconf CLK_TCK)
    for p in "$1" $(pgrep -P "$1" || true); do
        [ -r "/proc/$p/stat" ] || continue
        total=$((total + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    done
    awk -v t="$total" -v k="$tck" 'BEGIN {printf "%.2f\n", t / k}'
}
origin_bytes() { # log uri-prefix: body bytes the origin sent for keys under the prefix
    sleep 0.5
    awk -v p="/bucket/$2" 'index($2, p) == 1 {s += $4} END {printf "%.0f\n", s}' "$dir/logs/$1"
}
metric() { # ops_port name
    curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $2} END {printf "%.0f\n", s}'
}
warm() { # setup expected key...: read each once (cold fill), untimed
    local s=$1 exp=$2; shift 2
    local us=()
    for k in "$@"; do us+=("$(url "$s" "$k")"); done
    par_get "$exp" "${us[@]}" >/dev/null
}

cpu_orca=0; cpu_slice=0; warm_bytes_orca=0; warm_bytes_slice=0
timed_warm() { # setup figure rep expected url...: one parallel read, recorded as MiB/s
    local s=$1 fig=$2 rep=$3 exp=$4; shift 4
    local c0 c1 res
    check_once "$s" "$fig" "$1" "$exp"
    case $s in orca) c0=$(cpu_of "$pid_orca") ;; slice) c0=$(cpu_of "$pid_slice") ;; esac
    res=$(par_get "$exp" "$@")
    case $s in
        orca) c1=$(cpu_of "$pid_orca"); cpu_orca=$(awk -v a="$cpu_orca" -v b="$c0" -v c="$c1" 'BEGIN{print a + c - b}')
              warm_bytes_orca=$((warm_bytes_orca + ${res%% *})) ;;
        slice) c1=$(cpu_of "$pid_slice"); cpu_slice=$(awk -v a="$cpu_slice" -v b="$c0" -v c="$c1" 'BEGIN{print a + c - b}')
               warm_bytes_slice=$((warm_bytes_slice + ${res%% *})) ;;
    esac
    rec "$fig" "$s" MiB/s "$rep" "$(echo "$res" | mibps)"
}

# ---------------------------------------------------------------------------------------------
say "1. warm read of one $((big / MiB)) MiB object, one client (x$reps)"
link big-src w1
warm orca "$big" w1; warm slice "$big" w1
for r in $(seq 1 "$reps"); do
    for s in static orca slice origin; do
        timed_warm "$s" 1 "$r" "$big" "$(url "$s" w1)"
    done
done

say "2. warm reads by $nclients clients of $nclients different $((med / MiB)) MiB objects (x$reps)"
keys=()
for i in $(seq 1 "$nclients"); do link med-src "w2-$i"; keys+=("w2-$i"); done
warm orca "$med" "${keys[@]}"; warm slice "$med" "${keys[@]}"
for r in $(seq 1 "$reps"); do
    for s in static orca slice origin; do
        us=(); for k in "${keys[@]}"; do us+=("$(url "$s" "$k")"); done
        timed_warm "$s" 2 "$r" "$med" "${us[@]}"
    done
done

say "3. cold read of one $((big / MiB)) MiB object, one client, plain and capped origin (x$reps)"
for r in $(seq 1 "$reps"); do
    for mode in plain capped; do
        if [ $mode = plain ]; then sets="origin orca slice"; else sets="capped orcac slicec"; fi
        for s in $sets; do
            k="c3-$s-$r"; link big-src "$k"
            rec "3-$mode" "$s" MiB/s "$r" "$(get "$(url "$s" "$k")" "$big" | mibps)"
            check_once "$s" "3-$mode" "$(url "$s" "$k")" "$big"  # after the timed cold read
        done
    done
done

say "4. $nclients clients cold-reading one $((med / MiB)) MiB object at once, capped origin (x$reps)"
for r in $(seq 1 "$reps"); do
    for s in capped orcac slicec; do
        k="c4-$s-$r"; link med-src "$k"
        us=(); for _ in $(seq 1 "$nclients"); do us+=("$(url "$s" "$k")"); done
        m0=$(metric "$p_orcac_ops" orca_origin_bytes_total)
        res=$(par_get "$med" "${us[@]}")
        rec 4 "$s" wall_s "$r" "${res#* }"
        if [ "$s" != capped ]; then
            rec 4 "$s" origin_bytes_ratio "$r" "$(awk -v b="$(origin_bytes origin-capped.log "$k")" -v m="$med" 'BEGIN{printf "%.4f\n", b / m}')"
        fi
        if [ "$s" = orcac ]; then
            m1=$(metric "$p_orcac_ops" orca_origin_bytes_total)
            rec 4 "$s" metric_bytes_ratio "$r" "$(awk -v b=$((m1 - m0)) -v m="$med" 'BEGIN{printf "%.4f\n", b / m}')"
        fi
        check_once "$s" 4 "${us[0]}" "$med"  # after the counts, so its read is not in them
    done
done

say "5. $small_count objects of $small_size bytes, wrk $wrk_conns connections ${wrk_secs}s, warm (x$reps)"
cat >"$dir/small.lua" <<EOF
local n = $small_count
local i = 0
request = function()
    i = (i + 7) % n
    return wrk.format("GET", string.format("/bucket/small/s%03d", i))
end
EOF
for s in orca slice; do
    args=(); for i in $(seq 0 $((small_count - 1))); do args+=(-o /dev/null "$(url "$s" "$(printf 'small/s%03d' "$i")")"); done
    curl -s --max-time "$curl_max" "${args[@]}" || err small-warm "$s"
done
wrk_ms() { # wrk latency value -> ms
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f\n", n }'
}
small_setups="orca slice static"; [ -z "$floor_bin" ] || small_setups="$small_setups floor"
for s in $small_setups; do
    got=$(curl -s --max-time "$curl_max" "$(url "$s" small/s007)" | sha256sum | cut -d' ' -f1)
    [ "$got" = "$(sha256sum <"$dir/objects/small/s007" | cut -d' ' -f1)" ] ||
        err hash "figure 5, $s: small/s007 returned other bytes"
done
# The server processes whose CPU a setup's small requests cost (nginx-static is the origin's
# nginx, which serves nothing else during figure 5).
small_pid() {
    case $1 in orca) echo "$pid_orca" ;; slice) echo "$pid_slice" ;; static) echo "$pid_origin" ;; floor) echo "$pid_floor" ;; esac
}
# One wrk run of figure 5 against a setup: req/s, p99, and the server's CPU microseconds per
# request (user + sys over the run / requests served: less noisy than req/s on shared cores).
wrk_small() { # setup rep
    local s=$1 r=$2 base out rps p99 non2xx n c0 c1
    base=$(url "$s" "")
    c0=$(cpu_of "$(small_pid "$s")")
    out=$(timeout $((wrk_secs + 30)) wrk -t 2 -c "$wrk_conns" -d "${wrk_secs}s" --latency -s "$dir/small.lua" "${base%/bucket/}") || err wrk "$s"
    c1=$(cpu_of "$(small_pid "$s")")
    echo "$out" >"$dir/logs/wrk-$s-$r.txt"
    rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    n=$(echo "$out" | awk '/ requests in / {print $1}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    [ -z "$non2xx" ] || err wrk "$s: $non2xx non-2xx answers"
    rec 5 "$s" req/s "$r" "${rps:-0}"
    rec 5 "$s" p99_ms "$r" "$(wrk_ms "${p99:-0}")"
    [ "${n:-0}" -gt 0 ] && rec 5 "$s" cpu_us_per_req "$r" "$(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN{printf "%.2f\n", (b - a) * 1e6 / n}')"
    return 0
}
for r in $(seq 1 "$reps"); do
    for s in $small_setups; do wrk_small "$s" "$r"; done
done

say "6. peak RSS of orca: $rss_clients concurrent cold reads of different $((big / MiB)) MiB objects for ${rss_secs}s"
# In a freshly started Orca, so that VmHWM is this phase's peak and not an earlier phase's.
kill -TERM "$pid_orca"
for _ in $(seq 1 100); do kill -0 "$pid_orca" 2>/dev/null || break; sleep 0.1; done
start_orca orca "$p_origin" "$p_orca" "$p_orca_fill" "$p_orca_ops"
wait_http "http://127.0.0.1:$p_orca_ops/readyz" orca "$dir/logs/orca.log"
us=()
for i in $(seq 1 "$rss_clients"); do link big-src "r6-$i"; us+=("$(url orca "r6-$i")"); done
peak=0; ps=()
for u in "${us[@]}"; do
    curl -s -o /dev/null --max-time "$rss_secs" "$u" & ps+=($!)
done
end=$(( $(date +%s) + rss_secs + 2 ))
while [ "$(date +%s)" -lt "$end" ]; do
    v=$(awk '/^VmRSS/ {print $2}' "/proc/$pid_orca/status" 2>/dev/null || echo 0)
    [ "${v:-0}" -gt "$peak" ] && peak=$v
    sleep 0.2
done
wait "${ps[@]}" || true  # curl ends by --max-time here (exit 28): expected
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid_orca/status" 2>/dev/null || echo 0)
rec 6 orca peak_rss_sampled_MiB 1 $((peak / 1024))
rec 6 orca vmhwm_MiB 1 $((hwm / 1024))
rec 6 orca bound_MiB 1 $(((origin_conc * chunk + ra_mem) / MiB))
kill -0 "$pid_orca" 2>/dev/null || err orca "orca died during the RSS phase"

say "7. CPU seconds per GiB served warm (figures 1 and 2)"
rec 7 orca cpu_s_per_GiB 1 "$(awk -v c="$cpu_orca" -v b="$warm_bytes_orca" 'BEGIN{printf "%.3f\n", c / (b / 1073741824)}')"
rec 7 slice cpu_s_per_GiB 1 "$(awk -v c="$cpu_slice" -v b="$warm_bytes_slice" 'BEGIN{printf "%.3f\n", c / (b / 1073741824)}')"

say "8. a fleet: 3 replicas sharing an S3 cache store, $fleet_clients clients spread over them cold-reading one $((med / MiB)) MiB object, capped origin (x$reps)"
command -v moto_server >/dev/null || "$repo/hack/install-test-deps.sh" >&2
moto_server -H 127.0.0.1 -p "$p_moto" >"$dir/logs/moto.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$p_moto/" moto "$dir/logs/moto.log"
curl -sf -o /dev/null -X PUT "http://127.0.0.1:$p_moto/orca-cache" || err fleet "cannot create the cache bucket in moto"
fleet_peers="\"127.0.0.1:$p_f1_fill\", \"127.0.0.1:$p_f2_fill\", \"127.0.0.1:$p_f3_fill\""
export ORCA_CACHESTORE_ACCESS_KEY_ID=bench ORCA_CACHESTORE_SECRET_ACCESS_KEY=bench
fleet_edges=(); fleet_ops=()
for n in 1 2 3; do
    eval "edge=\$p_f$n fill=\$p_f${n}_fill ops=\$p_f${n}_ops"
    start_orca "fleet$n" "$p_capped" "$edge" "$fill" "$ops" "cachestore:
  driver: s3
  s3: {endpoint: \"http://127.0.0.1:$p_moto\", bucket: orca-cache, path_style: true}
cluster:
  peers: [$fleet_peers]
  self: \"127.0.0.1:$fill\""
    fleet_edges+=("$edge"); fleet_ops+=("$ops")
done
for n in 1 2 3; do
    ops=${fleet_ops[n - 1]}
    wait_http "http://127.0.0.1:$ops/healthz" "fleet replica $n" "$dir/logs/fleet$n.log"
    for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$ops/readyz" && break; sleep 0.2; done
    curl -sf -o /dev/null "http://127.0.0.1:$ops/readyz" ||
        err fleet "replica $n not ready: $(curl -s "http://127.0.0.1:$ops/readyz")"
done
fleet_metric() { # name: summed over the replicas
    local total=0 ops
    for ops in "${fleet_ops[@]}"; do total=$((total + $(metric "$ops" "$1"))); done
    echo "$total"
}
for r in $(seq 1 "$reps"); do
    k="c8-$r"; link med-src "$k"
    us=(); for i in $(seq 0 $((fleet_clients - 1))); do us+=("http://127.0.0.1:${fleet_edges[i % 3]}/bucket/$k"); done
    m0=$(fleet_metric orca_origin_bytes_total); f0=$(fleet_metric 'orca_peer_fills_total{result="ok"}')
    res=$(par_get "$med" "${us[@]}")
    m1=$(fleet_metric orca_origin_bytes_total); f1=$(fleet_metric 'orca_peer_fills_total{result="ok"}')
    rec 8 fleet wall_s "$r" "${res#* }"
    rec 8 fleet origin_bytes_ratio "$r" "$(awk -v b="$(origin_bytes origin-capped.log "$k")" -v m="$med" 'BEGIN{printf "%.4f\n", b / m}')"
    rec 8 fleet metric_bytes_ratio "$r" "$(awk -v b=$((m1 - m0)) -v m="$med" 'BEGIN{printf "%.4f\n", b / m}')"
    rec 8 fleet peer_fills "$r" $((f1 - f0))
    for i in 0 1 2; do check_once "fleet$i" 8 "${us[i]}" "$med"; done
done
for n in 1 2 3; do
    curl -s "http://127.0.0.1:${fleet_ops[n - 1]}/metrics" | grep -E '^orca_(origin_requests|origin_bytes|chunk_reads|peer_fills|cachestore_commits)_total' \
        >"$dir/logs/fleet$n.metrics" || true
done

# ---------------------------------------------------------------------------------------------
# Figure Z (issue 13): a working set larger than the cache's bound, read with Zipf-like
# popularity. Orca's fs store and nginx proxy_cache get the same bound (cachestore.fs.max_size
# and proxy_cache_path max_size) and the same request sequences (fixed seeds), a Zipf working
# set about 4x the bound, objects of one chunk (one slice). Two sequences:
#   - "zipf": Zipf reads only;
#   - "scan": the same Zipf reads with a batch job's one-pass scan of other objects interleaved
#     (one scan read after every second Zipf read), the case the policy exists for.
# Each runs in two halves: the first warms the caches, the second is measured: the hit ratio of
# its Zipf reads (1 - origin GETs / reads, from the origin's access log; the scan's reads are
# misses for any cache and are left out), and origin bytes per client byte over all its reads.
#
# Fairness. nginx's cache manager enforces max_size in rounds, at least every 10 s, sooner when
# an entry of any zone expires sooner; between rounds the cache holds more than its bound, and a
# larger cache hits more. So (1) a second zone holds one entry with `inactive=2s` that a loop
# keeps alive (refreshed every 0.25 s, so never found expired), which makes the manager run
# every one or two seconds, the tightest nginx enforces it;
# (2) the measured half is paced (curl --rate) so that a second of misses is a small part of the
# bound; (3) it starts once nginx is back at its bound. Both caches' sizes (du) are sampled during
# the measured half, and the peak and the mean / bound are recorded: they say how fair it was.
# The hit ratio the best possible cache of that size could reach on the sequence (the bound's
# worth of the most popular objects, each missed once) is computed and recorded beside them.
zipf_figure() {
    local zsize zcount zbound zreqs zrate zstreams=4 zhot=8
    if $quick; then
        zsize=$((256 * 1024)); zcount=128; zbound=$((8 * MiB)); zreqs=1200; zrate=100
    else
        zsize=$MiB; zcount=1024; zbound=$((256 * MiB)); zreqs=8000; zrate=25
    fi
    if [ -n "${ORCA_BENCH_Z:-}" ]; then # "OBJECTS BOUND_MIB READS RATE", e.g. "10240 1024 40000 100"
        local zbound_mib
        read -r zcount zbound_mib zreqs zrate <<<"$ORCA_BENCH_Z"
        zbound=$((zbound_mib * MiB))
    fi
    local zscans=$((zreqs / 2))
    say "Z. Zipf reads of $zcount objects of $((zsize / 1024)) KiB through a bound of $((zbound / MiB)) MiB, $zreqs requests in $zstreams streams, alone and with a scan"
    local zp; read -r -a zp < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
')
    local z_edge=${zp[0]} z_fill=${zp[1]} z_ops=${zp[2]} z_nginx=${zp[3]} z_tick=${zp[4]}
    head -c "$zsize" /dev/urandom >"$dir/objects/zipf-src"
    echo tick >"$dir/objects/zipf-tick"
    local zsha i
    zsha=$(sha256sum "$dir/objects/zipf-src" | cut -d' ' -f1)
    for i in $(seq 0 $((zcount - 1))); do link zipf-src "zo-$i"; link zipf-src "zn-$i"; done
    for i in $(seq 0 $((zscans - 1))); do link zipf-src "zso-$i"; link zipf-src "zsn-$i"; done
    # The same bound for both (Orca evicts down to 98 % of it, as nginx's cache manager evicts
    # to just below its max_size).
    start_orca zipf "$p_origin" "$z_edge" "$z_fill" "$z_ops" "cachestore:
  driver: fs
  fs: {root: $dir/cache-zipf, max_size: $zbound, min_free: 0, low_watermark: 98%}"
    mkdir -p "$dir/zslice"
    cat >"$dir/zslice/nginx.conf" <<EOF
$(nginx_common "$dir/zslice")
http {
$(http_common "$dir/zslice")
    proxy_cache_path $dir/slice-cache-zipf levels=1:2 keys_zone=zipf:16m max_size=$zbound inactive=1d use_temp_path=off;
    proxy_cache_path $dir/slice-cache-ztick levels=1:2 keys_zone=ztick:1m inactive=2s use_temp_path=off;
    upstream origin_zipf { server 127.0.0.1:$p_origin; keepalive 16; }
$(slice_server "$z_nginx" origin_zipf zipf)
    server {
        listen 127.0.0.1:$z_tick;
        access_log off;
        location / { proxy_cache ztick; proxy_cache_valid 200 1d; proxy_pass http://origin_zipf; }
    }
}
EOF
    start_nginx zslice "$dir/zslice/nginx.conf"
    wait_http "http://127.0.0.1:$z_ops/readyz" orca-zipf "$dir/logs/zipf.log"
    wait_http "http://127.0.0.1:$z_nginx/bucket/probe" nginx-zipf "$dir/zslice/error.log"
    # The manager's short-lived entry, kept alive for the whole figure.
    ( for _ in $(seq 1 $((limit_secs * 4))); do
        curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$z_tick/bucket/zipf-tick"; sleep 0.25
    done ) &
    local ticker=$!
    pids+=("$ticker")
    # The sequences: Zipf indices drawn with probability ~ 1 / (rank + 1), seed 13; a line is
    # "z INDEX" (a Zipf read) or "s INDEX" (a scan read). Also the best possible hit ratio of a
    # cache of the bound's size over the second half: the most popular objects that fit, each
    # missed on its first read.
    python3 - "$zcount" "$zreqs" "$((zbound / zsize))" "$dir/tmp" <<'EOF' | while read -r name best; do rec Z "$name" best_hit_ratio 1 "$best"; done
import random, sys
n, reqs, fit, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = random.Random(13)
weights = [1.0 / (i + 1) for i in range(n)]
draws = rng.choices(range(n), weights=weights, k=reqs)
seqs = {"zipf": [("z", i) for i in draws], "scan": []}
for j, i in enumerate(draws):
    seqs["scan"].append(("z", i))
    if j % 2 == 1:
        seqs["scan"].append(("s", j // 2))
for name, seq in seqs.items():
    with open(f"{out}/zipf-{name}.seq", "w") as f:
        f.writelines(f"{k} {i}\n" for k, i in seq)
    # The first half is the warm-up; the best cache holds the `fit` most popular objects.
    half = len(seq) // 2
    seen, hits, reads = set(), 0, 0
    for pos, (k, i) in enumerate(seq):
        if k == "z" and pos >= half:
            reads += 1
            hits += i < fit and i in seen
        if k == "z":
            seen.add(i)
    print(name, f"{hits / reads:.4f}")
EOF
    # Streams: request j goes to stream j mod zstreams; each stream is one curl (keep-alive),
    # printing "code bytes" per request. Half 1 warms the caches (unpaced), half 2 is measured
    # (paced: zrate requests per second per stream).
    zipf_run() { # seq base zprefix sprefix half outfile
        local seq=$1 base=$2 zprefix=$3 sprefix=$4 half=$5 out=$6 s ps=() n pace=()
        n=$(wc -l <"$seq")
        [ "$half" = 2 ] && pace=(--rate "$zrate/s")
        for s in $(seq 0 $((zstreams - 1))); do
            awk -v s="$s" -v k="$zstreams" -v h="$half" -v n="$n" -v b="$base" -v zp="$zprefix" -v sp="$sprefix" \
                'NR % k == s && ((h == 1 && NR <= n / 2) || (h == 2 && NR > n / 2)) {
                    printf "url = \"%s/bucket/%s%d\"\noutput = \"/dev/null\"\n", b, ($1 == "z" ? zp : sp), $2 }' \
                "$seq" >"$dir/tmp/zipf.$s.curl"
            curl -s "${pace[@]}" --max-time "$limit_secs" -K "$dir/tmp/zipf.$s.curl" \
                -w '%{http_code} %{size_download}\n' >"$out.$s" & ps+=($!)
        done
        wait "${ps[@]}" || true
        cat "$out".* >"$out"; rm -f "$out".*
        awk -v z="$zsize" -v w="$out" '$1 != 200 || $2 != z {bad++} END {if (bad) {print "zipf: " bad " bad answers in " w > "/dev/stderr"; exit 1}}' "$out" ||
            err zipf "bad answers through $zprefix (see $out)"
    }
    local seqname seq setup base zprefix sprefix cdir log0 client origin_gets origin_b sampler zreads
    for seqname in zipf scan; do
        seq="$dir/tmp/zipf-$seqname.seq"
        zreads=$(awk -v n="$(wc -l <"$seq")" 'NR > n / 2 && $1 == "z" {c++} END {print c + 0}' "$seq")
        for setup in orca slice; do
            if [ $setup = orca ]; then base="http://127.0.0.1:$z_edge"; zprefix=zo-; sprefix=zso-; cdir="$dir/cache-zipf"
            else base="http://127.0.0.1:$z_nginx"; zprefix=zn-; sprefix=zsn-; cdir="$dir/slice-cache-zipf"; fi
            zipf_run "$seq" "$base" "$zprefix" "$sprefix" 1 "$dir/tmp/zipf-$seqname-$setup-1.txt"
            # Measure from a cache at its bound: nginx trims at its next round.
            for _ in $(seq 1 60); do
                [ "$(du -sk "$cdir" | cut -f1)" -le $((zbound * 21 / 20 / 1024)) ] && break
                sleep 0.5
            done
            log0=$(wc -l <"$dir/logs/origin.log")
            ( for _ in $(seq 1 "$((limit_secs * 4))"); do du -sk "$cdir" 2>/dev/null | cut -f1; sleep 0.25; done ) >"$dir/tmp/zdu-$seqname-$setup.txt" &
            sampler=$!
            zipf_run "$seq" "$base" "$zprefix" "$sprefix" 2 "$dir/tmp/zipf-$seqname-$setup-2.txt"
            kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
            rec Z "$setup-$seqname" peak_size_per_bound 1 "$(sort -n "$dir/tmp/zdu-$seqname-$setup.txt" | tail -n 1 | awk -v b="$zbound" '{printf "%.3f\n", $1 * 1024 / b}')"
            rec Z "$setup-$seqname" mean_size_per_bound 1 "$(awk -v b="$zbound" '{s += $1; n++} END {printf "%.3f\n", s * 1024 / n / b}' "$dir/tmp/zdu-$seqname-$setup.txt")"
            sleep 0.5
            client=$(awk '{b += $2} END {printf "%.0f\n", b}' "$dir/tmp/zipf-$seqname-$setup-2.txt")
            read -r origin_gets origin_b < <(tail -n +$((log0 + 1)) "$dir/logs/origin.log" |
                awk -v p="/bucket/$zprefix" -v q="/bucket/$sprefix" '$1 == "GET" && index($2, p) == 1 {n++} $1 == "GET" && (index($2, p) == 1 || index($2, q) == 1) {b += $4} END {printf "%d %.0f\n", n, b}')
            rec Z "$setup-$seqname" hit_ratio 1 "$(awk -v g="$origin_gets" -v n="$zreads" 'BEGIN{printf "%.4f\n", 1 - g / n}')"
            rec Z "$setup-$seqname" origin_bytes_per_client_byte 1 "$(awk -v o="$origin_b" -v c="$client" 'BEGIN{printf "%.4f\n", o / c}')"
            got=$(curl -s --max-time "$curl_max" "$base/bucket/${zprefix}0" | sha256sum | cut -d' ' -f1)
            [ "$got" = "$zsha" ] || err hash "figure Z, $setup: ${zprefix}0 returned other bytes"
        done
    done
    kill "$ticker" 2>/dev/null || true
    # Orca's warm reads of the hottest objects (cached after the runs above: ranks 0-$zhot),
    # alone, then while one client scans cold objects (every one a fill and, the store being
    # at its bound, an eviction).
    local zrounds=$((zreqs / zstreams / zhot / 2))
    zhot_reads() { # outfile: each stream reads the hot objects zrounds times
        local s ps=()
        for s in $(seq 0 $((zstreams - 1))); do
            awk -v r="$zrounds" -v h="$zhot" -v e="$z_edge" 'BEGIN {
                for (j = 0; j < r; j++) for (i = 0; i < h; i++)
                    printf "url = \"http://127.0.0.1:%s/bucket/zo-%d\"\noutput = \"/dev/null\"\n", e, i }' \
                >"$dir/tmp/zhot.$s.curl"
            curl -s --max-time "$limit_secs" -K "$dir/tmp/zhot.$s.curl" -w '%{time_total}\n' >"$1.$s" & ps+=($!)
        done
        wait "${ps[@]}" || true
        cat "$1".* >"$1"; rm -f "$1".*
    }
    p99_of() { sort -n "$1" | awk '{v[NR] = $1} END {i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f\n", v[i] * 1000}'; }
    zhot_reads "$dir/tmp/zhot-quiet.txt"
    local e0 e1 scan
    e0=$(metric "$z_ops" orca_cachestore_evictions_total)
    # The scan (the coldest half, five passes at most) runs until the hot reads are done.
    awk -v c="$zcount" -v e="$z_edge" 'BEGIN {
        for (p = 0; p < 5; p++) for (i = c - 1; i >= c / 2; i--)
            printf "url = \"http://127.0.0.1:%s/bucket/zo-%d\"\noutput = \"/dev/null\"\n", e, i }' \
        >"$dir/tmp/zscan.curl"
    curl -s --max-time "$limit_secs" -K "$dir/tmp/zscan.curl" >/dev/null &
    scan=$!
    zhot_reads "$dir/tmp/zhot-evicting.txt"
    kill "$scan" 2>/dev/null || true; wait "$scan" 2>/dev/null || true
    e1=$(metric "$z_ops" orca_cachestore_evictions_total)
    [ $((e1 - e0)) -gt 0 ] || err zipf "no eviction during the scan ($e0 -> $e1)"
    rec Z orca warm_p99_ms_quiet 1 "$(p99_of "$dir/tmp/zhot-quiet.txt")"
    rec Z orca warm_p99_ms_evicting 1 "$(p99_of "$dir/tmp/zhot-evicting.txt")"
    rec Z orca evictions_during_scan 1 $((e1 - e0))
    kill -TERM "$pid_zipf" "$pid_zslice" 2>/dev/null || true
}
zipf_figure

# Orca's own view of the origin traffic, for the record.
for name in orca orcac; do
    eval "ops=\$p_${name}_ops"
    curl -s "http://127.0.0.1:$ops/metrics" | grep -E '^orca_(origin_requests|origin_bytes|chunk_reads)_total' \
        >"$dir/logs/$name.metrics" || true
done

# ---------------------------------------------------------------------------------------------
# 9-12. Sub-range fills of large chunks (issue 15), on Orca instances and ports of their own.
read -r p_t p_t_fill p_t_ops p_r p_r_fill p_r_ops p_r8 p_r8_fill p_r8_ops < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(9)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
')
if $quick; then rss_big_clients=4; else rss_big_clients=64; fi
chunk64="chunking: {size: $((64 * MiB)), tiers: [], readahead: $readahead}"
start_orca orcat "$p_capped" "$p_t" "$p_t_fill" "$p_t_ops" "" "$chunk64"
wait_http "http://127.0.0.1:$p_t_ops/readyz" orca-64MiB "$dir/logs/orcat.log"

say "9. first byte of a 4 KiB range at the end of a 64 MiB chunk, capped origin, cold (x$reps)"
# The last 4 KiB of the object's first 64 MiB chunk (the whole object in a quick run).
tail_a=$((64 * MiB - 4096)); tail_b=$((64 * MiB - 1))
tail_sha=$(dd if="$dir/objects/big-src" bs=4096 skip=$((tail_a / 4096)) count=1 2>/dev/null | sha256sum | cut -d' ' -f1)
ttfb() { # url what: the seconds to the first byte of the tail range; checks status, size, bytes
    local out
    out=$(curl -s -o "$dir/tmp/tail.out" --max-time "$curl_max" -r "$tail_a-$tail_b" \
        -w '%{http_code} %{size_download} %{time_starttransfer}' "$1") || true
    set -- $out "$2"
    [ "${1:-}" = 206 ] && [ "${2:-}" = 4096 ] || err read "$4: status ${1:-none}, ${2:-0} of 4096 bytes"
    [ "$(sha256sum <"$dir/tmp/tail.out" | cut -d' ' -f1)" = "$tail_sha" ] || err hash "figure 9, $4: other bytes"
    echo "${3:-1}"
}
for r in $(seq 1 "$reps"); do
    link big-src "t9-capped-$r"; link big-src "t9-orcat-$r"
    rec 9 capped ttfb_s "$r" "$(ttfb "http://127.0.0.1:$p_capped/bucket/t9-capped-$r" direct)"
    rec 9 orcat ttfb_s "$r" "$(ttfb "http://127.0.0.1:$p_t/bucket/t9-orcat-$r" orca)"
done

say "10. cold read of one $((big / MiB)) MiB object in the 64 MiB-chunk tier, capped origin (x$reps)"
for r in $(seq 1 "$reps"); do
    k="t10-$r-"; link big-src "$k"
    rec 10 orcat MiB/s "$r" "$(get "http://127.0.0.1:$p_t/bucket/$k" "$big" | mibps)"
    rec 10 orcat origin_bytes_ratio "$r" "$(awk -v b="$(origin_bytes origin-capped.log "$k")" -v m="$big" 'BEGIN{printf "%.4f\n", b / m}')"
    check_once orcat 10 "http://127.0.0.1:$p_t/bucket/$k" "$big"
done
kill -TERM "$pid_orcat" 2>/dev/null || true

# Peak memory under many cold fills at once: a fresh process per setup (VmHWM is this phase's
# peak), objects that are sparse files at the origin, every one read whole. rss_total sums a
# process and its children (nginx's workers), sampled.
rss_total() { # pid: KiB
    local t=0 p v
    for p in "$1" $(pgrep -P "$1" || true); do
        v=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
rss_phase() { # figure setup pid expected url...: reads them all at once, records the peak RSS
    local fig=$1 s=$2 pid=$3 exp=$4; shift 4
    local peak=0 v ps=() u
    for u in "$@"; do get "$u" "$exp" >/dev/null & ps+=($!); done
    while :; do
        v=$(rss_total "$pid"); [ "$v" -gt "$peak" ] && peak=$v
        for u in "${ps[@]}"; do kill -0 "$u" 2>/dev/null && break; u=""; done
        [ -n "$u" ] || break
        sleep 0.2
    done
    wait "${ps[@]}" || true
    rec "$fig" "$s" rss_MiB 1 $((peak / 1024))
    v=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ "$s" = slice ] || rec "$fig" "$s" vmhwm_MiB 1 $((v / 1024))
}
say "11. peak RSS: $rss_big_clients cold readers of $rss_big_clients objects in the 128 MiB-chunk tier"
truncate -s $((128 * MiB)) "$dir/objects/sparse128-src"
start_orca orcar "$p_origin" "$p_r" "$p_r_fill" "$p_r_ops" "" \
    "chunking: {size: $((128 * MiB)), tiers: [], readahead: $readahead}"
wait_http "http://127.0.0.1:$p_r_ops/readyz" orca-128MiB "$dir/logs/orcar.log"
us=(); for i in $(seq 1 "$rss_big_clients"); do link sparse128-src "r11-$i"; us+=("http://127.0.0.1:$p_r/bucket/r11-$i"); done
rss_phase 11 orcar "$pid_orcar" $((128 * MiB)) "${us[@]}"
kill -0 "$pid_orcar" 2>/dev/null || err orca "orca died during figure 11"
kill -TERM "$pid_orcar" 2>/dev/null || true
for _ in $(seq 1 100); do kill -0 "$pid_orcar" 2>/dev/null || break; sleep 0.1; done
rm -rf "$dir/cache-orcar"

say "12. peak RSS: $rss_big_clients cold readers of $rss_big_clients 32 MiB objects, 8 MiB chunks: Orca and nginx-slice"
truncate -s $((32 * MiB)) "$dir/objects/sparse32-src"
start_orca orcar8 "$p_origin" "$p_r8" "$p_r8_fill" "$p_r8_ops"
wait_http "http://127.0.0.1:$p_r8_ops/readyz" orca-8MiB "$dir/logs/orcar8.log"
for s in orcar8 slice; do
    us=()
    for i in $(seq 1 "$rss_big_clients"); do
        link sparse32-src "r12-$s-$i"
        if [ $s = slice ]; then us+=("$(url slice "r12-$s-$i")"); else us+=("http://127.0.0.1:$p_r8/bucket/r12-$s-$i"); fi
    done
    if [ $s = slice ]; then pid=$pid_slice; else pid=$pid_orcar8; fi
    rss_phase 12 "$s" "$pid" $((32 * MiB)) "${us[@]}"
done
kill -TERM "$pid_orcar8" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------
elapsed=$(( $(date +%s) - t_start ))
mode=full; $quick && mode=quick
python3 "$repo/hack/bench/summarize.py" "$raw" "$dir" "$mode" "$elapsed" \
    "big=$((big / MiB))MiB med=$((med / MiB))MiB clients=$nclients reps=$reps wrk=${wrk_secs}s rss_clients=$rss_clients"
if command -v gnuplot >/dev/null; then
    gnuplot -e "datafile='$dir/chart.dat'; outfile='$dir/benchmarks.png'; subtitle='$mode run, $(date -u +%Y-%m-%d)'" \
        "$repo/hack/bench/chart.gp" 2>"$dir/logs/gnuplot.log" || err chart "gnuplot failed: $(cat "$dir/logs/gnuplot.log")"
    if ! $quick && [ -f "$dir/benchmarks.png" ]; then cp "$dir/benchmarks.png" "$repo/docs/benchmarks.png"; fi
fi
say "results: $raw, $dir/summary.tsv, $dir/summary.json, $dir/benchmarks.png; took ${elapsed}s"
errors=$(grep -c '^error' "$raw" || true)
[ "$errors" -eq 0 ] || die "$errors error(s) during the run (see above and $dir/logs)"
