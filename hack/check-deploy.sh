#!/usr/bin/env bash
# Checks the Kubernetes manifests in deploy/kubernetes/ against the orca binary:
#   1. extracts orca.yaml and pingora.yaml from configmap.yaml;
#   2. runs `orca -t` on orca.yaml as written, except that the cache store's endpoint points
#      at a closed local port: every key is validated, and the only failure allowed is the
#      store's start-up check (the real store is not reachable from here);
#   3. runs `orca -t` on a copy whose cache store is an fs store in a temp dir: this must
#      pass, so the rest of the server (origin, cluster, pingora.yaml) builds;
#   4. cross-checks a few values that must agree between the files (ports, shutdown times).
# Placeholder credentials and ORCA_SELF are set; no network is used.
# Usage: hack/check-deploy.sh   (ORCA_BIN=path uses a prebuilt orca binary; DEPLOY=dir checks
# another copy of the manifests)
set -euo pipefail
cd "$(dirname "$0")/.."

DEPLOY="${DEPLOY:-deploy/kubernetes}"   # overridable, for testing this script
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

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Writes: as-written.yaml (store endpoint on a closed port), fs-store.yaml, pingora.yaml, and
# secret-var (the variable named by cluster.shared_secret_env, if any).
"$PYTHON" - "$DEPLOY" "$work" <<'EOF'
import copy, os, sys, yaml

deploy, work = sys.argv[1], sys.argv[2]
problems = []

def load(name):
    with open(os.path.join(deploy, name)) as f:
        return yaml.safe_load(f)

cm = load("configmap.yaml")
try:
    orca_text, pingora_text = cm["data"]["orca.yaml"], cm["data"]["pingora.yaml"]
except (KeyError, TypeError):
    sys.exit("check-deploy: configmap.yaml must have data.orca.yaml and data.pingora.yaml")
orca = yaml.safe_load(orca_text)
pingora = yaml.safe_load(pingora_text) or {}
if not isinstance(orca, dict):
    sys.exit("check-deploy: data.orca.yaml in configmap.yaml is not a YAML mapping")

def dump(name, doc):
    with open(os.path.join(work, name), "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)

as_written = copy.deepcopy(orca)
store = as_written.get("cachestore") or {}
if store.get("driver") == "s3":
    store.setdefault("s3", {})["endpoint"] = "http://127.0.0.1:1"
dump("as-written.yaml", as_written)

fs_store = copy.deepcopy(orca)
fs_store["cachestore"] = {"driver": "fs", "fs": {"root": os.path.join(work, "cache")}}
dump("fs-store.yaml", fs_store)

with open(os.path.join(work, "pingora.yaml"), "w") as f:
    f.write(pingora_text)

cluster = orca.get("cluster") or {}
with open(os.path.join(work, "secret-var"), "w") as f:
    f.write(cluster.get("shared_secret_env") or "")

# Cross-checks between the files.
def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])

dep = load("deployment.yaml")
pod = dep["spec"]["template"]["spec"]
c = next(c for c in pod["containers"] if c["name"] == "orca")
env = {e["name"]: e for e in c.get("env", [])}
internal = port_of((orca.get("listen") or {}).get("internal", "0.0.0.0:8444"))
dns = cluster.get("dns")
if dns and int(dns.get("port", 8444)) != internal:
    problems.append(f"cluster.dns.port {dns.get('port')} differs from listen.internal's port {internal}")
peers = load("service-peers.yaml")["spec"]
if peers.get("clusterIP") != "None":
    problems.append("service-peers.yaml: the peers' Service must be headless (clusterIP: None)")
fill_ports = [p for p in c.get("ports", []) if p.get("name") == "fill"]
if not fill_ports or fill_ports[0]["containerPort"] != internal:
    problems.append(f"deployment.yaml: container port 'fill' must be listen.internal's port {internal}")
self_value = env.get("ORCA_SELF", {}).get("value", "")
if (dns or cluster.get("peers")) and not cluster.get("self") and not self_value.endswith(f":{internal}"):
    problems.append(f"deployment.yaml: env ORCA_SELF ({self_value!r}) must end with :{internal}")
needed = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
if (orca.get("cachestore") or {}).get("driver") == "s3":
    needed += ["ORCA_CACHESTORE_ACCESS_KEY_ID", "ORCA_CACHESTORE_SECRET_ACCESS_KEY"]
if cluster.get("shared_secret_env"):
    needed.append(cluster["shared_secret_env"])
secret_keys = set((load("secret.example.yaml").get("stringData") or {}).keys())
for var in needed:
    if var not in env:
        problems.append(f"deployment.yaml: env {var} is not set")
    if var not in secret_keys:
        problems.append(f"secret.example.yaml: key {var} is missing")
pre_stop = ((c.get("lifecycle") or {}).get("preStop") or {})
sleep = 0
if "exec" in pre_stop:
    cmd = pre_stop["exec"].get("command", [])
    if len(cmd) == 2 and cmd[0] == "sleep":
        sleep = int(cmd[1])
elif "sleep" in pre_stop:
    sleep = int(pre_stop["sleep"]["seconds"])
grace = int(pingora.get("grace_period_seconds", 300))
final = int(pingora.get("graceful_shutdown_timeout_seconds", 5))
termination = int(pod.get("terminationGracePeriodSeconds", 30))
if sleep + grace + final >= termination:
    problems.append(
        f"terminationGracePeriodSeconds ({termination}) must exceed preStop sleep ({sleep}) + "
        f"grace_period_seconds ({grace}) + graceful_shutdown_timeout_seconds ({final})")

if problems:
    sys.exit("check-deploy: " + "\n check-deploy: ".join(problems))
EOF

secret_var=$(cat "$work/secret-var")
run_orca() {
    local env_args=(
        -u ORCA_CONFIG -u ORCA_LOG_LEVEL -u AWS_SESSION_TOKEN
        ORCA_SELF=10.0.0.1:8444
        AWS_ACCESS_KEY_ID=placeholder AWS_SECRET_ACCESS_KEY=placeholder
        ORCA_CACHESTORE_ACCESS_KEY_ID=placeholder ORCA_CACHESTORE_SECRET_ACCESS_KEY=placeholder
    )
    [ -n "$secret_var" ] && env_args+=("$secret_var=placeholder")
    env "${env_args[@]}" "$ORCA_BIN" -t --config "$1" -c "$work/pingora.yaml" 2>&1
}

# As written: the configuration must validate; the only failure accepted is the build's check
# of the s3 cache store, whose endpoint points at the closed port 1 (exit 2, one "unreachable"
# line naming the bucket). Anything else, a panic included, fails.
rc=0
out=$(run_orca "$work/as-written.yaml") || rc=$?
if [ "$rc" -ne 0 ]; then
    if grep -q '^orca: invalid configuration' <<<"$out"; then
        fail "orca.yaml in $DEPLOY/configmap.yaml is invalid:
$out
(line numbers refer to this extracted copy:)
$(cat -n "$work/as-written.yaml")"
    fi
    if [ "$rc" -ne 2 ] || grep -q 'panicked' <<<"$out" ||
        ! grep -Eq '^orca: .*cachestore\.s3: bucket "[^"]+" unreachable' <<<"$out"; then
        fail "orca -t on orca.yaml in $DEPLOY/configmap.yaml failed (exit $rc) otherwise than on its unreachable cache store:
$out"
    fi
fi

# With an fs store: everything must build.
if ! out=$(run_orca "$work/fs-store.yaml"); then
    fail "orca.yaml in $DEPLOY/configmap.yaml (cache store swapped for fs) does not pass orca -t:
$out"
fi

echo "check-deploy: $DEPLOY is consistent and its orca.yaml passes orca -t (cache store checks skipped)"
