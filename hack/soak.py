#!/usr/bin/env python3
"""Orca's soak: a fleet under steady, checked load while things go wrong (see hack/soak.sh).

Starts moto (the origin bucket and the shared cache bucket), three Orca replicas sharing the
store (static peers, a shared secret, local tiers), seeds objects of mixed sizes, then runs
client threads that read random ranges through random replicas and check every byte against
the version the response's ETag names. Meanwhile objects are replaced at the origin, one
replica is killed (SIGKILL) and restarted, and one replica is frozen (SIGSTOP) and thawed.

Prints a report and exits 1 on any wrong byte, any hung request, a run with no successful
reads, or descriptors or memory that do not come back near their starting level. Every process
it starts is stopped by pid at exit; every server binds 127.0.0.1.
"""

import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

MIB = 1 << 20
CHUNK = MIB
ORIGIN_BUCKET = "soak"
CACHE_BUCKET = "soak-cache"
SECRET = "soak-secret"
# A request that takes longer than this is hung (the client's socket timeout is shorter per
# read; this catches a server that trickles). Well above the longest documented deadline a
# read can meet: the freeze of a peer (its fill client's timeout, then a local fill).
HUNG_AFTER = 90.0
SOCKET_TIMEOUT = 60.0

procs = []  # (name, Popen): stopped at exit
logs = {}  # pid -> log file


def log(msg):
    print(f"soak [{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port, path, what, proc, deadline=60.0):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            tail = ""
            if logs.get(proc.pid):
                with open(logs[proc.pid], errors="replace") as f:
                    tail = "".join(f.readlines()[-20:])
            raise SystemExit(f"soak: {what} exited during start-up ({proc.returncode})\n{tail}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"soak: {what} not ready on port {port} after {deadline:.0f}s")


def start(name, argv, logfile, env=None):
    out = open(logfile, "ab")
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env=env)
    procs.append((name, p))
    logs[p.pid] = logfile
    return p


def stop_all():
    for _, p in procs:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            p.terminate()
    for _, p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


class Replica:
    def __init__(self, n, workdir, binary, moto_port, ports, peers):
        self.n = n
        self.name = f"orca{n}"
        self.edge, self.fill, self.ops = ports
        self.dir = os.path.join(workdir, self.name)
        os.makedirs(self.dir, exist_ok=True)
        self.binary = binary
        self.log = os.path.join(self.dir, "orca.log")
        self.config = os.path.join(self.dir, "orca.yaml")
        peer_list = ", ".join(f'"127.0.0.1:{p}"' for p in peers)
        with open(self.config, "w") as f:
            f.write(f"""listen:
  edge: "127.0.0.1:{self.edge}"
  internal: "127.0.0.1:{self.fill}"
  ops: "127.0.0.1:{self.ops}"
origin:
  id: soak
  s3: {{endpoint: "http://127.0.0.1:{moto_port}", region: us-east-1, path_style: true}}
cachestore:
  driver: s3
  s3: {{endpoint: "http://127.0.0.1:{moto_port}", bucket: {CACHE_BUCKET}, path_style: true}}
  local: {{root: "{self.dir}/local", max_size: 24MiB, min_free: 0}}
chunking: {{size: 1MiB, tiers: [], readahead: 4}}
metadata: {{ttl: 2s, negative_ttl: 1s}}
cluster:
  peers: [{peer_list}]
  self: "127.0.0.1:{self.fill}"
  shared_secret_env: ORCA_PEER_SECRET
logging: {{level: info, format: text}}
""")
        with open(os.path.join(self.dir, "pingora.yaml"), "w") as f:
            f.write(f"---\nversion: 1\nthreads: 2\npid_file: {self.dir}/orca.pid\n"
                    f"upgrade_sock: {self.dir}/upgrade.sock\ngrace_period_seconds: 1\n"
                    "graceful_shutdown_timeout_seconds: 1\n")
        self.proc = None

    def start(self):
        env = dict(os.environ, ORCA_PEER_SECRET=SECRET, AWS_ACCESS_KEY_ID="soak",
                   AWS_SECRET_ACCESS_KEY="soak", AWS_REGION="us-east-1",
                   AWS_EC2_METADATA_DISABLED="true",
                   ORCA_CACHESTORE_ACCESS_KEY_ID="soak", ORCA_CACHESTORE_SECRET_ACCESS_KEY="soak")
        self.proc = start(self.name, [self.binary, "--config", self.config, "-c",
                                      os.path.join(self.dir, "pingora.yaml")], self.log, env)
        wait_http(self.ops, "/readyz", self.name, self.proc)

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def metrics(self):
        c = http.client.HTTPConnection("127.0.0.1", self.ops, timeout=10)
        c.request("GET", "/metrics")
        body = c.getresponse().read().decode()
        c.close()
        return body


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.ok = 0
        self.bytes = 0
        self.mismatches = []
        self.errors = {}
        self.hung = 0
        self.slowest = 0.0

    def error(self, kind):
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1


class Origin:
    """The objects and every version of them ever uploaded (ETag -> bytes)."""

    def __init__(self, s3, sizes, seed):
        self.s3 = s3
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.versions = {}
        self.sizes = {}
        for i, size in enumerate(sizes):
            self.put(f"obj-{i:02d}", size)

    def put(self, key, size):
        data = self.rng.randbytes(size)
        etag = hashlib.md5(data).hexdigest()
        with self.lock:
            self.versions[etag] = data
            self.sizes[key] = size
        self.s3.put_object(Bucket=ORIGIN_BUCKET, Key=key, Body=data)
        return etag

    def keys(self):
        with self.lock:
            return list(self.sizes.items())

    def bytes_of(self, etag):
        with self.lock:
            return self.versions.get(etag)


def client(cid, replicas, origin, stats, stop, seed):
    rng = random.Random(seed * 1000 + cid)
    while not stop.is_set():
        key, size = rng.choice(origin.keys())
        r = rng.choice(replicas)
        if rng.random() < 0.2:
            first, last = 0, size - 1
            headers = {}
        else:
            first = rng.randrange(size)
            last = min(size - 1, first + rng.choice([1, 4096, 65536, CHUNK, 3 * CHUNK]))
            headers = {"Range": f"bytes={first}-{last}"}
        started = time.time()
        kind = None
        try:
            c = http.client.HTTPConnection("127.0.0.1", r.edge, timeout=SOCKET_TIMEOUT)
            c.request("GET", f"/{ORIGIN_BUCKET}/{key}", headers=headers)
            resp = c.getresponse()
            body = resp.read()
            etag = (resp.getheader("ETag") or "").strip('"')
            status = resp.status
            c.close()
            if status not in (200, 206):
                code = body.split(b"<Code>")[-1].split(b"</Code>")[0].decode(errors="replace")
                kind = f"status {status} {code}" if b"<Code>" in body else f"status {status}"
            else:
                data = origin.bytes_of(etag)
                want = None if data is None else data[first:last + 1]
                if want is None or hashlib.sha256(body).digest() != hashlib.sha256(want).digest():
                    with stats.lock:
                        stats.mismatches.append(f"{r.name} {key} {headers} etag={etag} "
                                                f"got {len(body)} bytes")
                else:
                    with stats.lock:
                        stats.ok += 1
                        stats.bytes += len(body)
        except socket.timeout:
            kind = "timeout"
        except ConnectionRefusedError:
            kind = "refused"
        except (http.client.IncompleteRead, ConnectionResetError, http.client.RemoteDisconnected,
                BrokenPipeError):
            kind = "aborted"
        except OSError as e:
            kind = f"os: {e.__class__.__name__}"
        took = time.time() - started
        with stats.lock:
            stats.requests += 1
            stats.slowest = max(stats.slowest, took)
            if took > HUNG_AFTER:
                stats.hung += 1
        if kind:
            stats.error(kind)
            time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--objects", type=int, default=20)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    import boto3  # installed by hack/install-test-deps.sh
    from botocore.config import Config

    run_secs = args.minutes * 60
    freeze_secs = min(30.0, run_secs / 4)
    workdir = tempfile.mkdtemp(prefix="orca-soak.")
    keep = False
    try:
        moto_port = free_port()
        moto = start("moto", ["moto_server", "-H", "127.0.0.1", "-p", str(moto_port)],
                     os.path.join(workdir, "moto.log"))
        wait_http(moto_port, "/moto-api/", "moto", moto)
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}",
                          aws_access_key_id="soak", aws_secret_access_key="soak",
                          region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}))
        s3.create_bucket(Bucket=ORIGIN_BUCKET)
        s3.create_bucket(Bucket=CACHE_BUCKET)
        # Mixed sizes: tiny, one chunk, a chunk plus one byte, several chunks, an odd tail.
        ladder = [1, 4096, 200_000, CHUNK, CHUNK + 1, 3 * CHUNK - 7, 5 * CHUNK + 12345, 8 * CHUNK]
        sizes = [ladder[i % len(ladder)] for i in range(args.objects)]
        origin = Origin(s3, sizes, args.seed)
        log(f"seeded {args.objects} objects, {sum(sizes) / MIB:.1f} MiB, in {workdir}")

        ports = [(free_port(), free_port(), free_port()) for _ in range(3)]
        peers = [p[1] for p in ports]
        replicas = [Replica(n + 1, workdir, args.binary, moto_port, ports[n], peers)
                    for n in range(3)]
        for r in replicas:
            r.start()
        log("3 replicas ready; warming up")

        stats = Stats()
        stop = threading.Event()
        threads = [threading.Thread(target=client, args=(i, replicas, origin, stats, stop,
                                                          args.seed), daemon=True)
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        warmup = min(10.0, run_secs / 6)
        time.sleep(warmup)
        baseline = {r.name: (r.rss_kib(), r.fds()) for r in replicas}
        log(f"baseline (after {warmup:.0f}s): " + ", ".join(
            f"{n} rss {v[0] // 1024} MiB fds {v[1]}" for n, v in baseline.items()))

        t0 = time.time()
        events = [
            (run_secs * 0.25, "kill"),
            (run_secs * 0.50, "freeze"),
        ]
        replaced = 0
        victim, frozen = replicas[1], replicas[2]
        next_replace = t0 + 2
        while time.time() - t0 < run_secs:
            now = time.time()
            if events and now - t0 >= events[0][0]:
                _, what = events.pop(0)
                if what == "kill":
                    log(f"SIGKILL {victim.name} (pid {victim.proc.pid}), restart in 3s")
                    victim.proc.kill()
                    victim.proc.wait(timeout=10)
                    time.sleep(3)
                    victim.start()
                    log(f"{victim.name} back (pid {victim.proc.pid})")
                elif what == "freeze":
                    log(f"SIGSTOP {frozen.name} for {freeze_secs:.0f}s")
                    os.kill(frozen.proc.pid, signal.SIGSTOP)
                    time.sleep(freeze_secs)
                    os.kill(frozen.proc.pid, signal.SIGCONT)
                    log(f"SIGCONT {frozen.name}")
            if now >= next_replace:
                key, size = random.Random(int(now)).choice(origin.keys())
                origin.put(key, size)
                replaced += 1
                next_replace = now + max(2.0, run_secs / 30)
            time.sleep(0.2)

        stop.set()
        for t in threads:
            t.join(timeout=HUNG_AFTER + 10)
        stuck = sum(t.is_alive() for t in threads)
        time.sleep(3)  # pooled and keep-alive connections settle
        final = {r.name: (r.rss_kib(), r.fds()) for r in replicas}

        failures = []
        report = {
            "minutes": args.minutes,
            "clients": args.clients,
            "objects": args.objects,
            "requests": stats.requests,
            "ok": stats.ok,
            "bytes_checked": stats.bytes,
            "mismatches": len(stats.mismatches),
            "errors": stats.errors,
            "hung": stats.hung + stuck,
            "slowest_s": round(stats.slowest, 2),
            "objects_replaced": replaced,
            "killed": victim.name,
            "frozen": f"{frozen.name} for {freeze_secs:.0f}s",
            "rss_mib_start_end": {n: [baseline[n][0] // 1024, final[n][0] // 1024]
                                  for n in final},
            "fds_start_end": {n: [baseline[n][1], final[n][1]] for n in final},
        }
        print(json.dumps(report, indent=2), flush=True)
        for m in stats.mismatches[:10]:
            print(f"soak: MISMATCH {m}")
        if stats.mismatches:
            failures.append(f"{len(stats.mismatches)} reads returned wrong bytes")
        if stats.hung + stuck:
            failures.append(f"{stats.hung + stuck} requests hung past {HUNG_AFTER:.0f}s")
        if stats.ok == 0:
            failures.append("no read succeeded")
        for r in replicas:
            if r is victim:
                continue  # restarted: its baseline is another process's
            rss0, fd0 = baseline[r.name]
            rss1, fd1 = final[r.name]
            # Flat: descriptors within the peers' and clients' keep-alive pools of the start,
            # memory within the budgets' worth of growth (chunks in flight, warm caches).
            if fd1 > fd0 + 2 * args.clients + 64:
                failures.append(f"{r.name}: descriptors {fd0} -> {fd1}")
            if rss1 > rss0 * 2 + 256 * 1024:
                failures.append(f"{r.name}: RSS {rss0 // 1024} -> {rss1 // 1024} MiB")
        for r in replicas:
            if r.proc.poll() is not None:
                failures.append(f"{r.name} exited ({r.proc.returncode})")
        if failures:
            keep = True
            for f in failures:
                print(f"soak: FAIL: {f}")
            print(f"soak: logs kept in {workdir}")
            return 1
        print("soak: PASS")
        return 0
    finally:
        stop_all()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
