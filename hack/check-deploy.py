#!/usr/bin/env python3
"""Checks the container image and the Kubernetes deployment against the orca binary (run by
hack/check-deploy.sh, which builds the binary first; read that file's header for what is checked).

Usage: check-deploy.py ORCA_BIN   (env DEPLOY=dir checks another copy of deploy/kubernetes,
DOCKERFILE=file another Dockerfile, RENDERER=lite renders with hack/kustomize-lite.py only)"""
import copy
import fnmatch
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.environ.get("DEPLOY", os.path.join(ROOT, "deploy", "kubernetes"))
DOCKERFILE = os.environ.get("DOCKERFILE", os.path.join(ROOT, "Dockerfile"))
LITE = os.path.join(ROOT, "hack", "kustomize-lite.py")
ORCA = sys.argv[1] if len(sys.argv) > 1 else sys.exit(__doc__)
# The only failure `orca -t` may report for a config whose s3 store is out of reach (the store's
# endpoint is pointed at a closed port: the real one is not reachable from here).
STORE_UNREACHABLE = re.compile(
    r'^orca: cache store check failed: cachestore\.s3: bucket "[^"]+" unreachable: ')
PLACEHOLDER_ENV = {
    "ORCA_SELF": "10.0.0.1:8444", "AWS_ACCESS_KEY_ID": "placeholder",
    "AWS_SECRET_ACCESS_KEY": "placeholder", "ORCA_CACHESTORE_ACCESS_KEY_ID": "placeholder",
    "ORCA_CACHESTORE_SECRET_ACCESS_KEY": "placeholder",
}
problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


# ---- units, as Orca and Kubernetes spell them ------------------------------------------------

def orca_size(v):
    m = re.fullmatch(r"(\d+)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?", str(v).strip())
    if not m:
        raise ValueError(f"size {v!r}")
    mult = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
            "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}[m.group(2)]
    return int(m.group(1)) * mult


def orca_duration(v):
    m = re.fullmatch(r"(\d+)(us|ms|s|m|h)", str(v).strip())
    if not m:
        raise ValueError(f"duration {v!r}")
    return int(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def k8s_quantity(v):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(v).strip())
    if not m:
        raise ValueError(f"quantity {v!r}")
    mult = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
            "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2)]
    return float(m.group(1)) * mult


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def under(path, directory):
    return os.path.normpath(path).startswith(os.path.normpath(directory).rstrip("/") + "/")


# ---- running orca ----------------------------------------------------------------------------

def run_orca(args, env_extra, cwd):
    env = {k: v for k, v in os.environ.items()
           if k not in ("ORCA_CONFIG", "ORCA_LOG_LEVEL", "ORCA_LOG", "AWS_SESSION_TOKEN")}
    env.update(PLACEHOLDER_ENV)
    env.update(env_extra)
    return subprocess.run([ORCA, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def panicked(out):
    return out.returncode == 101 or "panicked at" in out.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tls(work):
    """A CA and a certificate it signs for 127.0.0.1, localhost and orca-peers.orca.svc
    (openssl), for configs that name TLS files: {"ca", "cert", "key"} paths."""
    d = os.path.join(work, "tls")
    os.makedirs(d, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=check-deploy-ca"],
        ["req", "-new", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=orca"],
        ["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "0x1",
         "-days", "1", "-out", "leaf.pem", "-extfile", "leaf.ext"],
    ]
    with open(os.path.join(d, "leaf.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:orca-peers.orca.svc\n"
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n")
    for step in steps:
        out = subprocess.run(["openssl", *step], cwd=d, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            sys.exit(f"check-deploy: openssl {step[0]} failed: {out.stderr}")
    return {"ca": os.path.join(d, "ca.pem"), "cert": os.path.join(d, "leaf.pem"),
            "key": os.path.join(d, "leaf.key")}


def probe_live(where, orca_cfg, pingora_text, probes, env_extra, work):
    """Starts orca on the rendered config (fs store in a temp dir, listeners on free loopback
    ports, pid file and upgrade socket in the temp dir) and asks every probe's path on the ops
    port: each must answer 200 within 30 s. Stopped by pid with SIGINT (fast stop)."""
    cfg = copy.deepcopy(orca_cfg)
    ports = {k: free_port() for k in ("edge", "internal", "ops")}
    cfg["listen"] = {k: f"127.0.0.1:{p}" for k, p in ports.items()}
    cfg["cachestore"] = {"driver": "fs", "fs": {"root": os.path.join(work, "live-cache")}}
    cluster = cfg.get("cluster") or {}
    if "dns" in cluster:
        # Resolves nothing here: the replica is alone (and ready) after the first lookup.
        cluster["dns"] = dict(cluster["dns"], name="orca-peers.invalid", port=ports["internal"])
    pingora = yaml.safe_load(pingora_text) or {}
    pingora.update(pid_file=os.path.join(work, "orca.pid"),
                   upgrade_sock=os.path.join(work, "orca_upgrade.sock"))
    with open(os.path.join(work, "live.yaml"), "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    with open(os.path.join(work, "live-pingora.yaml"), "w") as f:
        yaml.safe_dump(pingora, f, sort_keys=False)
    env = {k: v for k, v in os.environ.items() if k not in ("ORCA_CONFIG", "ORCA_LOG")}
    env.update(PLACEHOLDER_ENV, ORCA_SELF=f"127.0.0.1:{ports['internal']}", **env_extra)
    log = open(os.path.join(work, "live.log"), "w")
    proc = subprocess.Popen([ORCA, "--config", os.path.join(work, "live.yaml"),
                             "-c", os.path.join(work, "live-pingora.yaml")],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for kind, path in probes:
            deadline, last = time.monotonic() + 30, None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with urllib.request.urlopen(
                            f"http://127.0.0.1:{ports['ops']}{path}", timeout=2) as r:
                        last = r.status
                except urllib.error.HTTPError as e:
                    last = e.code
                except OSError as e:
                    last = str(e)
                if last == 200:
                    break
                time.sleep(0.2)
            if proc.poll() is not None:
                problem(where, f"orca exited (status {proc.returncode}) before its probes "
                        f"answered; its log:\n{open(log.name).read()[-2000:]}")
                break
            if last != 200:
                problem(where, f"{kind} GET {path} on the ops port did not answer 200 within "
                        f"30 s (last: {last}); orca's log:\n{open(log.name).read()[-2000:]}")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


# ---- rendering -------------------------------------------------------------------------------

def render_cmd():
    if os.environ.get("RENDERER") == "lite":  # as on a machine without kustomize
        return None, None
    if shutil.which("kustomize"):
        return ["kustomize", "build"], "kustomize"
    if shutil.which("kubectl"):
        r = subprocess.run(["kubectl", "kustomize", "--help"], capture_output=True)
        if r.returncode == 0:
            return ["kubectl", "kustomize"], "kubectl kustomize"
    return None, None


def ident(d):
    m = d.get("metadata") or {}
    return (d.get("kind") or "", m.get("namespace") or "", m.get("name") or "")


def render(directory, cmd, tool):
    lite = subprocess.run([sys.executable, LITE, directory], capture_output=True, text=True)
    if lite.returncode != 0:
        problem(directory, f"hack/kustomize-lite.py failed: {lite.stderr.strip()}")
        return None
    lite_docs = sorted((d for d in yaml.safe_load_all(lite.stdout) if d), key=ident)
    if cmd is None:
        return lite_docs
    real = subprocess.run([*cmd, directory], capture_output=True, text=True)
    if real.returncode != 0:
        problem(directory, f"{tool} failed: {real.stderr.strip()}")
        return None
    docs = sorted((d for d in yaml.safe_load_all(real.stdout) if d), key=ident)
    if docs != lite_docs:
        diff = [ident(a) for a, b in zip(docs, lite_docs) if a != b] or "the resource lists"
        problem(directory, f"hack/kustomize-lite.py renders it otherwise than {tool} "
                f"(differs in {diff}): fix the fallback, or keep the overlays to what it supports")
    return docs


# ---- one rendered deployment -----------------------------------------------------------------

def check_rendering(where, docs, example_secret, work):
    by = {}
    for d in docs:
        by.setdefault(d.get("kind"), {})[(d.get("metadata") or {}).get("name")] = d
    try:
        cm = by["ConfigMap"]["orca-config"]
        dep = by["Deployment"]["orca"]
    except KeyError as e:
        return problem(where, f"no {e} in the rendering (ConfigMap orca-config, Deployment orca)")
    data = cm.get("data") or {}
    if "orca.yaml" not in data or "pingora.yaml" not in data:
        return problem(where, "ConfigMap orca-config must have data.orca.yaml and data.pingora.yaml")
    orca = yaml.safe_load(data["orca.yaml"])
    pingora = yaml.safe_load(data["pingora.yaml"]) or {}
    if not isinstance(orca, dict):
        return problem(where, "data.orca.yaml is not a YAML mapping")
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"].get("labels") or {}
    containers = {c["name"]: c for c in pod.get("containers", [])}
    if "orca" not in containers:
        return problem(where, "Deployment orca has no container named orca")
    c = containers["orca"]
    env = {e["name"]: e for e in c.get("env", [])}
    listen = orca.get("listen") or {}
    want = {"edge": port_of(listen.get("edge", "0.0.0.0:8443")),
            "fill": port_of(listen.get("internal", "0.0.0.0:8444")),
            "ops": port_of(listen.get("ops", "0.0.0.0:8442"))}
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}

    # Container ports vs listen.*, and the Services' target ports.
    for name, port in want.items():
        if ports.get(name) != port:
            problem(where, f"container port {name!r} is {ports.get(name)}, listen.* says {port}")
    for svc_name, svc in (by.get("Service") or {}).items():
        if (svc["spec"].get("selector") or {}) != {"app.kubernetes.io/name": "orca"}:
            continue
        for p in svc["spec"].get("ports", []):
            if p.get("targetPort") not in ports and p.get("targetPort") not in ports.values():
                problem(where, f"Service {svc_name} targets port {p.get('targetPort')!r}, "
                        "which the orca container does not have")
    peers = (by.get("Service") or {}).get("orca-peers")
    if peers is None or peers["spec"].get("clusterIP") != "None":
        problem(where, "Service orca-peers must exist and be headless (clusterIP: None)")
    ann = dep["spec"]["template"]["metadata"].get("annotations") or {}
    if "prometheus.io/port" in ann and int(ann["prometheus.io/port"]) != want["ops"]:
        problem(where, f"annotation prometheus.io/port {ann['prometheus.io/port']} is not "
                f"listen.ops's port {want['ops']}")

    # Probes: the ops port, /healthz for startup and liveness, /readyz for readiness.
    probes = []
    for kind, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                       ("readinessProbe", "/readyz")):
        get = (c.get(kind) or {}).get("httpGet")
        if not get:
            problem(where, f"the orca container has no {kind} with httpGet")
            continue
        if get.get("path") != path:
            problem(where, f"{kind} asks {get.get('path')!r}; Orca answers it on {path}")
        port = get.get("port")
        if ports.get(port, port) != want["ops"]:
            problem(where, f"{kind} asks port {port!r}, not the ops port {want['ops']}")
        probes.append((kind, get.get("path")))

    # Cluster wiring.
    cluster = orca.get("cluster") or {}
    dns = cluster.get("dns")
    if dns and int(dns.get("port", 8444)) != want["fill"]:
        problem(where, f"cluster.dns.port {dns.get('port')} differs from listen.internal's "
                f"port {want['fill']}")
    self_value = (env.get("ORCA_SELF") or {}).get("value", "")
    if (dns or cluster.get("peers")) and not cluster.get("self") \
            and not self_value.endswith(f":{want['fill']}"):
        problem(where, f"env ORCA_SELF ({self_value!r}) must end with :{want['fill']}")
    store = orca.get("cachestore") or {}
    if dns and store.get("driver") != "s3":
        problem(where, "a fleet (cluster.dns) needs the shared s3 cache store")

    # Secrets: every variable the config needs is set, from a key the Secret has. A cloud
    # identity on the ServiceAccount replaces the origin's keys: EKS IRSA's role annotation
    # (the AWS default chain's web-identity source), or AKS workload identity with
    # origin.azureblob.credentials: entra.
    sa_doc = (by.get("ServiceAccount") or {}).get(pod.get("serviceAccountName")) or {}
    sa_ann = (sa_doc.get("metadata") or {}).get("annotations") or {}
    origin = orca.get("origin") or {}
    needed = []
    if origin.get("driver", "s3") == "s3":
        s3 = origin.get("s3") or {}
        if "eks.amazonaws.com/role-arn" in sa_ann:
            if "AWS_ACCESS_KEY_ID" in env:
                problem(where, "the ServiceAccount has an IRSA role (eks.amazonaws.com/role-arn) "
                        "but env AWS_ACCESS_KEY_ID is set: static keys come first in the chain, "
                        "so the role would never be used; drop the keys")
        elif not s3.get("anonymous") and not s3.get("access_key_id"):
            needed += ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    else:
        az = origin.get("azureblob") or {}
        uses_wi = labels.get("azure.workload.identity/use") == "true"
        if az.get("credentials") == "entra":
            if "azure.workload.identity/client-id" in sa_ann and not uses_wi:
                problem(where, "the ServiceAccount has azure.workload.identity/client-id but the "
                        "pods lack the label azure.workload.identity/use: \"true\": the webhook "
                        "gives them no token")
        elif uses_wi:
            problem(where, "the pods use AKS workload identity but origin.azureblob.credentials "
                    "is not entra: Orca would not use it")
        elif not az.get("account_key") and not az.get("sas_token"):
            needed.append("AZURE_STORAGE_KEY")
    if store.get("driver") == "s3":
        needed += ["ORCA_CACHESTORE_ACCESS_KEY_ID", "ORCA_CACHESTORE_SECRET_ACCESS_KEY"]
    if cluster.get("shared_secret_env"):
        needed.append(cluster["shared_secret_env"])
    secret = (by.get("Secret") or {}).get("orca-credentials") or example_secret
    secret_keys = set((secret.get("stringData") or {}).keys()) | set((secret.get("data") or {}).keys())
    for var in needed:
        if var not in env:
            problem(where, f"env {var} is not set in the orca container")
    for e in env.values():
        ref = ((e.get("valueFrom") or {}).get("secretKeyRef") or {})
        if ref.get("name") == "orca-credentials" and ref.get("key") not in secret_keys:
            problem(where, f"env {e['name']} reads key {ref.get('key')} that the Secret lacks")

    # Shutdown: the grace period covers one chunk fill, the pod's grace covers it all.
    t = orca_duration((orca.get("limits") or {}).get("origin_timeout", "30s"))
    fill = 4 * t + 5
    pre_stop = (c.get("lifecycle") or {}).get("preStop") or {}
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
    if grace < fill:
        problem(where, f"pingora.yaml grace_period_seconds ({grace}) is shorter than one chunk "
                f"fill, 4 x limits.origin_timeout + 5 s = {fill:g} s")
    if sleep + grace + final >= termination:
        problem(where, f"terminationGracePeriodSeconds ({termination}) must exceed preStop sleep "
                f"({sleep}) + grace_period_seconds ({grace}) + graceful_shutdown_timeout_seconds "
                f"({final})")

    # Memory: the limit holds what the config lets Orca buffer.
    chunking = orca.get("chunking") or {}
    tiers = chunking.get("tiers")
    tiers = [{"size": "64MiB"}, {"size": "128MiB"}] if tiers is None else tiers
    largest = max([orca_size(chunking.get("size", "8MiB"))] + [orca_size(x["size"]) for x in tiers])
    limits = orca.get("limits") or {}
    concurrency = int(limits.get("origin_concurrency", 64))
    # docs/operations.md "Memory": the fills' windows (1 MiB each, at most 8 MiB shared, at
    # least 128 KiB each) spool the rest; 320 KiB per origin read in flight; with the s3
    # store, a 256 KiB piece per PUT; 16 MiB of pooled buffers; a local tier's copies hold
    # whole chunks.
    s3_store = store.get("driver", "fs") == "s3"
    local_tier = s3_store and (store.get("s3") or {}).get("local")
    windows = min(concurrency * 2**20, max(8 * 2**20, concurrency * 2**17))
    need = orca_size(limits.get("readahead_memory", "1GiB")) + windows \
        + concurrency * 320 * 2**10 + (concurrency * 2**18 if s3_store else 0) \
        + 16 * 2**20 + (concurrency * largest if local_tier else 0)
    mem_limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
    if mem_limit is None or k8s_quantity(mem_limit) < need:
        problem(where, f"memory limit {mem_limit} is below readahead_memory + the fills' windows "
                f"({windows / 2**20:.0f} MiB) + origin_concurrency x 320 KiB"
                f"{' + origin_concurrency x 256 KiB' if s3_store else ''} + 16 MiB"
                f"{' + origin_concurrency x largest chunk' if local_tier else ''}"
                f" = {need / 2**20:.0f} MiB")

    # Security: non-root, read-only root, no capabilities; writes only to emptyDirs.
    psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        problem(where, "runAsNonRoot is not set")
    if not csc.get("readOnlyRootFilesystem"):
        problem(where, "the orca container's root filesystem is not read-only")
    if csc.get("allowPrivilegeEscalation") is not False:
        problem(where, "allowPrivilegeEscalation is not false")
    if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
        problem(where, "capabilities do not drop ALL")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    writable = {m["mountPath"]: volumes.get(m["name"], {}) for m in c.get("volumeMounts", [])
                if not m.get("readOnly") and "emptyDir" in volumes.get(m["name"], {})}
    written = [("pingora.yaml pid_file", pingora.get("pid_file", "/tmp/pingora.pid")),
               ("pingora.yaml upgrade_sock", pingora.get("upgrade_sock", "/tmp/pingora_upgrade.sock"))]
    if store.get("driver", "fs") == "fs":
        written.append(("cachestore.fs.root", (store.get("fs") or {}).get("root", "./data/cache")))
    elif not local_tier:
        written.append(("the s3 store's spools", "/tmp/orca-spool"))
    for what, path in written:
        mount = next((m for m in writable if under(path, m) or os.path.normpath(path) == m), None)
        if not os.path.isabs(path) or mount is None:
            problem(where, f"{what} {path} is not on a writable emptyDir mount")
        elif what == "the s3 store's spools":
            size_limit = writable[mount]["emptyDir"].get("sizeLimit")
            room = concurrency * largest + 16 * 2**20
            if size_limit is None or k8s_quantity(size_limit) < room:
                problem(where, f"the /tmp emptyDir's sizeLimit ({size_limit}) must hold the fills' "
                        f"spools, origin_concurrency x largest chunk + 16 MiB = {room / 2**20:.0f} MiB")
        elif what == "cachestore.fs.root":
            size_limit = writable[mount]["emptyDir"].get("sizeLimit")
            max_size = (store.get("fs") or {}).get("max_size")
            if size_limit is None or max_size is None or orca_size(max_size) >= k8s_quantity(size_limit):
                problem(where, f"cachestore.fs.max_size ({max_size}) must be set below the cache "
                        f"emptyDir's sizeLimit ({size_limit}), or the kubelet evicts the pod")
    cfg_mount = next((m for m in c.get("volumeMounts", []) if "configMap" in volumes.get(m["name"], {})), None)
    args = c.get("args") or []
    for flag, key in (("--config", "orca.yaml"), ("-c", "pingora.yaml")):
        path = args[args.index(flag) + 1] if flag in args[:-1] else None
        if cfg_mount is None or path != os.path.join(cfg_mount["mountPath"], key):
            problem(where, f"args {flag} ({path}) is not the ConfigMap's {key}")

    # The rest of the objects.
    pdb = (by.get("PodDisruptionBudget") or {}).get("orca")
    if pdb is None or any(labels.get(k) != v for k, v in
                          ((pdb["spec"].get("selector") or {}).get("matchLabels") or {}).items()):
        problem(where, "PodDisruptionBudget orca is missing or does not select the orca pods")
    sa = pod.get("serviceAccountName")
    if sa not in (by.get("ServiceAccount") or {}):
        problem(where, f"serviceAccountName {sa!r} is not in the rendering")

    # TLS files (listen.edge_tls, listen.internal_tls, cluster.peer_ca) come from a mounted
    # Secret; for the runs below they are replaced by certificates made here.
    tls_paths = []
    for section in ("edge_tls", "internal_tls"):
        files = listen.get(section) or {}
        tls_paths += [(f"listen.{section}.{k}", files[k]) for k in ("cert", "key") if k in files]
    if cluster.get("peer_ca"):
        tls_paths.append(("cluster.peer_ca", cluster["peer_ca"]))
    secret_mounts = [m["mountPath"] for m in c.get("volumeMounts", [])
                     if "secret" in volumes.get(m["name"], {})]
    for what, path in tls_paths:
        if not any(under(path, m) for m in secret_mounts):
            problem(where, f"{what} {path} is not on a mounted Secret volume")
    if (listen.get("internal_tls") and (dns or cluster.get("peers"))
            and not cluster.get("peer_ca")):
        problem(where, "listen.internal_tls with peers needs cluster.peer_ca")
    made = make_tls(work) if tls_paths else None

    def runnable(doc):
        """`doc` with the TLS files made here in place of the Secret's."""
        doc = copy.deepcopy(doc)
        for section in ("edge_tls", "internal_tls"):
            if (doc.get("listen") or {}).get(section):
                doc["listen"][section] = dict(doc["listen"][section], cert=made["cert"], key=made["key"])
        if (doc.get("cluster") or {}).get("peer_ca"):
            doc["cluster"]["peer_ca"] = made["ca"]
        return doc

    # orca -t: as written (only an unreachable s3 store may fail), then with an fs store in a
    # temp dir (must pass), then live: the probes' paths answer 200.
    env_extra = {}
    if cluster.get("shared_secret_env"):
        env_extra[cluster["shared_secret_env"]] = "placeholder"
    entra = (origin.get("azureblob") or {}).get("credentials") == "entra"
    if entra and "azure.workload.identity/client-id" in sa_ann:
        # What AKS's webhook injects; the authority host is a closed port, so the first token
        # fetch fails at once (logged, not fatal) instead of reaching Entra from here.
        token = os.path.join(work, "azure-identity-token")
        with open(token, "w") as f:
            f.write("placeholder")
        env_extra.update(AZURE_CLIENT_ID=sa_ann["azure.workload.identity/client-id"],
                         AZURE_TENANT_ID="00000000-0000-0000-0000-000000000000",
                         AZURE_FEDERATED_TOKEN_FILE=token,
                         AZURE_AUTHORITY_HOST="https://127.0.0.1:1")
    as_written = runnable(orca)
    if store.get("driver") == "s3":
        as_written["cachestore"].setdefault("s3", {})["endpoint"] = "http://127.0.0.1:1"
    else:
        as_written["cachestore"] = dict(store, fs=dict(store.get("fs") or {}, root=os.path.join(work, "as-written-cache")))
    fs_store = runnable(orca)
    fs_store["cachestore"] = {"driver": "fs", "fs": {"root": os.path.join(work, "cache")}}
    with open(os.path.join(work, "pingora.yaml"), "w") as f:
        f.write(data["pingora.yaml"])
    for name, doc, may_fail in (("as-written", as_written, store.get("driver") == "s3"),
                                ("fs-store", fs_store, False)):
        path = os.path.join(work, f"{name}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
        out = run_orca(["-t", "--config", path, "-c", os.path.join(work, "pingora.yaml")], env_extra, work)
        if out.returncode == 0 and not panicked(out):
            continue
        if may_fail and out.returncode == 2 and not panicked(out) and STORE_UNREACHABLE.match(out.stderr):
            continue
        numbered = "\n".join(f"{i + 1:4} {line}" for i, line in enumerate(open(path).read().splitlines()))
        problem(where, f"orca -t on its orca.yaml ({name}) failed (exit {out.returncode}):\n"
                f"{out.stderr.strip()}\n(line numbers refer to this extracted copy:)\n{numbered}")
    live = runnable(orca)
    if entra:
        # The live run checks listeners and probes; without a token /readyz says 503, so it
        # runs on a shared key instead (Entra ID itself: tests/credentials.rs).
        live["origin"]["azureblob"] = dict(live["origin"]["azureblob"], credentials="shared_key")
        env_extra = dict(env_extra, AZURE_STORAGE_KEY="cGxhY2Vob2xkZXI=")
    probe_live(where, live, data["pingora.yaml"], probes, env_extra, work)
    if "moto" in (by.get("Deployment") or {}):
        check_with_moto(where, data["orca.yaml"], pod, by["Service"].get("moto"), env_extra, work)
    return {"user": psc.get("runAsUser"), "group": psc.get("runAsGroup"), "args": args,
            "ports": set(want.values()), "config_mount": cfg_mount and cfg_mount["mountPath"]}


def check_with_moto(where, orca_text, pod, service, env_extra, work):
    """An overlay with an in-cluster moto (overlays/dev): starts moto_server on a free loopback
    port, runs the orca pod's init containers' commands against it (they create the buckets),
    and runs `orca -t` on the overlay's orca.yaml with moto's Service address replaced by that
    port: every check passes, the cache store's start-up checks included."""
    if service is None:
        return problem(where, "a moto Deployment without a Service named moto")
    if not shutil.which("moto_server") or not shutil.which("curl"):
        print(f"check-deploy: {where}: moto_server or curl missing, so the emulator check is "
              "skipped (hack/install-test-deps.sh installs both)", file=sys.stderr)
        return None
    svc_port = service["spec"]["ports"][0]["port"]
    address = re.compile(rf"moto(\.orca(\.svc(\.cluster\.local)?)?)?:{svc_port}\b")
    if not address.search(orca_text):
        return problem(where, f"orca.yaml does not use the moto Service (moto...:{svc_port})")
    port = free_port()
    log = open(os.path.join(work, "moto.log"), "w")
    moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or moto.poll() is not None:
                    return problem(where, "moto_server did not start within 60 s")
                time.sleep(0.2)
        for init in pod.get("initContainers") or []:
            cmd = [address.sub(f"127.0.0.1:{port}", a) for a in init.get("command", []) + init.get("args", [])]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if out.returncode != 0:
                problem(where, f"init container {init['name']} failed against moto: {out.stderr}")
        path = os.path.join(work, "with-moto.yaml")
        with open(path, "w") as f:
            f.write(address.sub(f"127.0.0.1:{port}", orca_text))
        out = run_orca(["-t", "--config", path, "-c", os.path.join(work, "pingora.yaml")], env_extra, work)
        if out.returncode != 0 or panicked(out):
            problem(where, f"orca -t against moto (store checks included) failed "
                    f"(exit {out.returncode}):\n{out.stderr.strip()}")
    finally:
        moto.terminate()
        try:
            moto.wait(timeout=15)
        except subprocess.TimeoutExpired:
            moto.kill()
            moto.wait(timeout=15)
        log.close()
    return None


# ---- the Dockerfile --------------------------------------------------------------------------

def dockerfile_instructions(path):
    text = re.sub(r"\\\n", " ", open(path).read())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def exec_form(rest):
    return yaml.safe_load(rest) if rest.startswith("[") else shlex.split(rest)


def dockerignored(path, patterns):
    """Whether Docker leaves `path` out of the build context: the last matching pattern wins,
    and a pattern matching a parent directory excludes what is under it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(p, pat) for p in prefixes):
            excluded = not negate
    return excluded


def check_dockerfile(base, work):
    where = "Dockerfile" if DOCKERFILE == os.path.join(ROOT, "Dockerfile") else DOCKERFILE
    ins = dockerfile_instructions(DOCKERFILE)
    stages = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    if len(stages) < 2:
        return problem(where, "must be multi-stage: a build stage and a runtime stage")
    build, final = ins[stages[0]:stages[-1]], ins[stages[-1]:]
    channel = re.search(r'channel\s*=\s*"([^"]+)"', open(os.path.join(ROOT, "rust-toolchain.toml")).read()).group(1)
    build_from = build[0][1].split()
    if not build_from[0].startswith(f"rust:{channel}"):
        problem(where, f"the build stage's image {build_from[0]} is not rust:{channel} (rust-toolchain.toml)")
    stage_name = build_from[-1] if len(build_from) == 3 and build_from[1].upper() == "AS" else None
    runs = " ".join(r for w, r in build if w == "RUN")
    if "cargo build --release --locked --bin orca" not in runs:
        problem(where, "the build stage does not run cargo build --release --locked --bin orca")
    if "cmake" not in runs:
        problem(where, "the build stage does not install cmake (pingora's zlib-ng needs it)")
    entry = next((exec_form(r) for w, r in final if w == "ENTRYPOINT"), None)
    cmd = next((exec_form(r) for w, r in final if w == "CMD"), [])
    copies = {}
    for w, r in final:
        if w == "COPY":
            parts = r.split()
            srcs, dest = [p for p in parts[:-1] if not p.startswith("--")], parts[-1]
            from_stage = next((p.split("=", 1)[1] for p in parts if p.startswith("--from=")), None)
            for s in srcs:
                target = os.path.join(dest, os.path.basename(s)) if dest.endswith("/") else dest
                copies[target] = (from_stage, s)
                if from_stage is None and not os.path.isfile(os.path.join(ROOT, s)):
                    problem(where, f"COPY {s}: no such file in the repository")
    if not entry or copies.get(entry[0], (None,))[0] != stage_name:
        problem(where, f"ENTRYPOINT {entry} is not the binary copied from the build stage")
    user = next((r for w, r in final if w == "USER"), "")
    if not re.fullmatch(r"\d+:\d+", user) or user == "0:0" or user.startswith("0:"):
        problem(where, f"USER {user!r} must be a numeric non-root uid:gid")
    elif base and user != f"{base['user']}:{base['group']}":
        problem(where, f"USER {user} differs from the base Deployment's runAsUser:runAsGroup "
                f"{base['user']}:{base['group']}")
    exposed = {int(p.split("/")[0]) for w, r in final if w == "EXPOSE" for p in r.split()}
    conf = yaml.safe_load(open(os.path.join(ROOT, "conf", "orca.yaml")))
    listen = conf.get("listen") or {}
    conf_ports = {port_of(listen.get(k, d)) for k, d in
                  (("edge", ":8443"), ("internal", ":8444"), ("ops", ":8442"))}
    if exposed != conf_ports or (base and exposed != base["ports"]):
        problem(where, f"EXPOSE {sorted(exposed)} differs from conf/orca.yaml's listen ports "
                f"{sorted(conf_ports)} or the base Deployment's container ports")
    for flag, src in (("--config", "conf/orca.yaml"), ("-c", "conf/pingora.yaml")):
        path = cmd[cmd.index(flag) + 1] if flag in cmd[:-1] else None
        if copies.get(path) != (None, src):
            problem(where, f"CMD {flag} ({path}) is not where {src} is copied")
        elif base and base["config_mount"] != os.path.dirname(path):
            problem(where, f"the Deployment mounts its ConfigMap at {base['config_mount']}, not at "
                    f"the image's config directory {os.path.dirname(path)}")
    if base and base["args"] != cmd:
        problem(where, f"the base Deployment's args {base['args']} differ from CMD {cmd}")
    volumes = set()
    for w, r in final:
        if w == "VOLUME":
            volumes |= set(exec_form(r))
    workdir = next((r for w, r in reversed(final) if w == "WORKDIR"), "/")
    pingora = yaml.safe_load(open(os.path.join(ROOT, "conf", "pingora.yaml"))) or {}
    root = ((conf.get("cachestore") or {}).get("fs") or {}).get("root", "./data/cache")
    for what, path in (("conf/pingora.yaml pid_file", pingora.get("pid_file", "/tmp/pingora.pid")),
                       ("conf/pingora.yaml upgrade_sock", pingora.get("upgrade_sock", "/tmp/pingora_upgrade.sock")),
                       ("conf/orca.yaml cachestore.fs.root", os.path.join(workdir, root))):
        if not any(under(path, v) or os.path.normpath(path) == v for v in volumes):
            problem(where, f"{what} ({os.path.normpath(path)}) is not under a VOLUME {sorted(volumes)}: "
                    "a read-only root filesystem could not hold it")
    # The build context: .dockerignore must keep what the build and the COPYs read.
    ignore_path = os.path.join(os.path.dirname(DOCKERFILE), ".dockerignore")
    patterns = []
    if os.path.exists(ignore_path):
        patterns = [line.strip() for line in open(ignore_path)
                    if line.strip() and not line.startswith("#")]
    needed = ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml", "src/main.rs", "src/lib.rs"]
    needed += [s for (stage, s) in copies.values() if stage is None]
    for path in needed:
        if dockerignored(path, patterns):
            problem(".dockerignore", f"excludes {path}, which the image build needs")
    if shutil.which("hadolint"):
        out = subprocess.run(["hadolint", "--no-color", DOCKERFILE], capture_output=True, text=True)
        if out.returncode != 0:
            problem(where, f"hadolint:\n{out.stdout}{out.stderr}")
    # The image's default config: the shipped conf/, from the image's working directory.
    cwd = os.path.join(work, "image-workdir")
    os.makedirs(cwd)
    out = run_orca(["-t", "--config", os.path.join(ROOT, "conf", "orca.yaml"),
                    "-c", os.path.join(ROOT, "conf", "pingora.yaml")], {}, cwd)
    if out.returncode != 0 or panicked(out):
        problem("conf/orca.yaml", f"orca -t fails on the shipped config:\n{out.stderr}")


def main():
    cmd, tool = render_cmd()
    example = yaml.safe_load(open(os.path.join(DEPLOY, "base", "secret.example.yaml")))
    targets = ["base"] + sorted(os.path.join("overlays", o) for o in
                                os.listdir(os.path.join(DEPLOY, "overlays")))
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for t in targets:
            work = os.path.join(tmp, t.replace("/", "-"))
            os.makedirs(work)
            docs = render(os.path.join(DEPLOY, t), cmd, tool)
            if docs is not None:
                info = check_rendering(t, docs, example, work)
                if t == "base":
                    base = info
        check_dockerfile(base, tmp)
    if problems:
        sys.exit("check-deploy: " + "\ncheck-deploy: ".join(problems))
    print(f"check-deploy: {', '.join(targets)} rendered with "
          f"{tool or 'hack/kustomize-lite.py (no kustomize here)'}"
          f"{' (and kustomize-lite.py, identical)' if tool else ''}; every orca.yaml passes "
          f"orca -t (s3 store checks skipped; in full against a local moto for the overlay that "
          f"brings one), probes answer; Dockerfile agrees"
          f"{' (hadolint clean)' if shutil.which('hadolint') else ''}")


if __name__ == "__main__":
    main()
