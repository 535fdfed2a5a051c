#!/usr/bin/env bash
# Stops the local fleet hack/dev-up.sh started: the three Orca replicas, moto and Azurite,
# each by the pid dev-up recorded (and only if that pid still runs the program dev-up started),
# then checks that none of them is left and that their ports are free. Logs and configurations
# stay in the state directory ($ORCA_DEV_DIR, default .dev/ in the repository); remove it to
# start from nothing. Exit 0 when nothing is left, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${ORCA_DEV_DIR:-$PWD/.dev}"
run="$dir/run"
quiet=false
[ "${1:-}" = "--quiet" ] && quiet=true

say() { $quiet || printf '==> %s\n' "$*"; }

# Whether PID runs a program whose command line contains WORD (a recycled pid does not).
runs() {
    local pid=$1 word=$2
    [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$word"
}

# Stops the process NAME recorded in $run/NAME.pid (whose command line must contain WORD):
# SIGINT, up to 10 s, then SIGKILL.
stop() {
    local name=$1 word=$2 file="$run/$1.pid"
    [ -f "$file" ] || return 0
    local pid
    pid=$(cat "$file")
    if runs "$pid" "$word"; then
        kill -INT "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            runs "$pid" "$word" || break
            sleep 0.1
        done
        if runs "$pid" "$word"; then
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
        say "stopped $name (pid $pid)"
    fi
}

[ -d "$run" ] || { say "nothing to stop (no $run)"; exit 0; }

# What each recorded process runs: a word of its command line.
word_of() {
    case $1 in
        replica*) echo "conf/$1.yaml" ;;
        moto) echo moto_server ;;
        *) echo "$1" ;;
    esac
}

for name in replica1 replica2 replica3 moto azurite; do
    stop "$name" "$(word_of "$name")"
done

# Check: no recorded process is left, and no port of the fleet is still taken.
left=()
for file in "$run"/*.pid; do
    [ -f "$file" ] || continue
    name=$(basename "$file" .pid)
    pid=$(cat "$file")
    if runs "$pid" "$(word_of "$name")"; then
        left+=("$name (pid $pid)")
    else
        rm -f "$file"
    fi
done
if [ -f "$dir/ports" ]; then
    for port in $(cat "$dir/ports"); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            left+=("something on 127.0.0.1:$port")
        fi
    done
fi
if [ "${#left[@]}" -gt 0 ]; then
    echo "dev-down: still running: ${left[*]}" >&2
    exit 1
fi
say "nothing left running; logs and configurations are in $dir"
