//! Cache control end to end (`docs/cachectl.md`): warm, purge and inspect on the ops port and
//! through the `orca warm/purge/inspect` subcommands, on a fleet of `orca` binaries sharing a
//! moto bucket as their cache store, each with a local tier. Each replica reaches the origin
//! (moto) through a counting proxy of its own, so the tests count every origin request the
//! fleet makes; the stores are read directly (the bucket with S3 requests, the local tiers on
//! disk).

#![allow(clippy::unwrap_used)]

mod common;

use ::orca::cachestore::s3::S3Store;
use ::orca::chunk::ChunkId;
use common::orca::yaml_str;
use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

const MIB: usize = 1 << 20;
const BUCKET: &str = "bkt";
const STORE_BUCKET: &str = "orca-cache";
const SECRET: &str = "fleet-s3cr3t";
const WAIT: Duration = Duration::from_secs(60);

/// The shared [`common::Fleet`] with each replica's local tier and the admin token.
struct Fleet {
    inner: common::Fleet,
    /// Each replica's local tier root.
    local_roots: Vec<PathBuf>,
    /// Holds the admin token (the peers' shared secret).
    token_file: PathBuf,
}

impl std::ops::Deref for Fleet {
    type Target = common::Fleet;
    fn deref(&self) -> &common::Fleet {
        &self.inner
    }
}

impl std::ops::DerefMut for Fleet {
    fn deref_mut(&mut self) -> &mut common::Fleet {
        &mut self.inner
    }
}

impl Fleet {
    /// `n` replicas, peers of each other with a shared secret, sharing the store bucket, each
    /// with a local tier; 1 MiB chunks; metadata kept for an hour (only a purge makes a replica
    /// see a changed object sooner); `extra` appended to each configuration.
    async fn start(n: usize, extra: &str) -> Fleet {
        let inner = common::Fleet::start(n, &[BUCKET, STORE_BUCKET], |m| {
            let root = m.dir.join(format!("local-{}", m.index));
            m.config()
                .chunk_size("1MiB")
                .readahead(2)
                .origin_concurrency(4)
                .metadata_ttl("1h")
                .env("ORCA_CACHESTORE_ACCESS_KEY_ID", "test")
                .env("ORCA_CACHESTORE_SECRET_ACCESS_KEY", "test")
                .env("ORCA_PEER_SECRET", SECRET)
                .extra_yaml(&format!(
                    "{}cachestore:\n  driver: s3\n  s3:\n    endpoint: {}\n    bucket: {STORE_BUCKET}\n    path_style: true\n  local:\n    root: {}\n    max_size: 256MiB\n    min_free: 0\n{extra}",
                    m.everyone("  shared_secret_env: ORCA_PEER_SECRET\n"),
                    m.moto,
                    yaml_str(&root.to_string_lossy()),
                ))
        })
        .await;
        let local_roots = (0..n)
            .map(|i| inner.dir.path().join(format!("local-{i}")))
            .collect();
        let token_file = inner.dir.path().join("token");
        std::fs::write(&token_file, format!("{SECRET}\n")).unwrap();
        Fleet {
            inner,
            local_roots,
            token_file,
        }
    }

    /// Every origin request the fleet made.
    fn origin_log(&self) -> Vec<RequestRecord> {
        self.proxies.iter().flat_map(|p| p.counts().log).collect()
    }

    /// Origin chunk GETs (ranged) across the fleet, per range, of object `key`.
    fn origin_gets_of(&self, key: &str) -> Vec<String> {
        let path = format!("/{BUCKET}/{key}");
        let mut ranges: Vec<String> = self
            .origin_log()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path() == path)
            .map(|r| r.range.unwrap_or_default())
            .collect();
        ranges.sort();
        ranges
    }

    /// A request to replica `i`'s ops port, with `token` as the bearer token.
    async fn ops(&self, i: usize, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
        let url = format!("{}{path}", self.replicas[i].ops_url());
        let mut req = http_client().request(method.parse().unwrap(), &url);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let r = send(req)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let body = serde_json::from_slice(&r.body).unwrap_or_else(|_| Value::String(r.text()));
        (r.status, body)
    }

    /// Runs `orca <args> --ops <replica i> --token-file <token>` and returns its output.
    async fn cli(&self, i: usize, args: &[&str]) -> Output {
        let mut cmd = Command::new(orca_bin());
        cmd.args(args)
            .arg("--ops")
            .arg(self.replicas[i].ops_url())
            .arg("--token-file")
            .arg(&self.token_file)
            .env_remove("ORCA_CONFIG")
            .env_remove("ORCA_ADMIN_TOKEN")
            .env_remove("ORCA_OPS");
        tokio::task::spawn_blocking(move || run_bounded(&mut cmd, None, CLIENT_DEADLINE))
            .await
            .unwrap()
    }

    /// Polls a job on replica `i` until `done` says so (at most [`WAIT`]).
    async fn wait_job(&self, i: usize, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, job) = self
                .ops(i, "GET", &format!("/cache/jobs/{id}"), Some(SECRET))
                .await;
            assert_eq!(status, 200, "{job}");
            if done(&job) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job never got there: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn chunk_id(key: &str, etag: &str, index: u64) -> ChunkId {
    ChunkId::from_fields("test-origin", BUCKET, key, etag, MIB as u64, index)
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The objects of the warm test: (key, size).
const OBJECTS: [(&str, usize); 4] = [
    ("data/a.bin", 5 * MIB / 2),
    ("data/b.bin", 3 * MIB),
    ("data/sub/c.bin", MIB + 1),
    ("data/d.bin", 4 * MIB),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_fetches_each_chunk_once_fleet_wide_and_a_second_warm_fetches_nothing() {
    let fleet = Fleet::start(3, "").await;
    let mut objects = Vec::new();
    for (i, (key, size)) in OBJECTS.iter().enumerate() {
        let data = deterministic_bytes(i as u64 + 1, *size);
        fleet.put(key, &data).await;
        objects.push((*key, data));
    }
    let outside = deterministic_bytes(99, MIB);
    fleet.put("elsewhere/x.bin", &outside).await;
    let chunks: usize = OBJECTS.iter().map(|(_, s)| s.div_ceil(MIB)).sum();
    let bytes: usize = OBJECTS.iter().map(|(_, s)| s).sum();

    // The subcommand, through replica 1: plain progress lines (stdout is not a terminal).
    let out = fleet
        .cli(1, &["warm", "s3://bkt/data/", "--concurrency", "3"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("100%"), "{}", text(&out));
    assert!(
        stdout.contains(&format!("done: objects 4/4, chunks {chunks}/{chunks} ({chunks} fetched from the origin, 0 already cached), errors 0")),
        "{}",
        text(&out)
    );
    // Its job, as the ops port keeps it.
    let (status, jobs) = fleet.ops(1, "GET", "/cache/jobs", Some(SECRET)).await;
    assert_eq!(status, 200);
    let job = &jobs["jobs"][0];
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["prefix"], "data/");
    assert_eq!(job["concurrency"], 3);
    assert_eq!(job["chunks"]["done"], chunks);
    assert_eq!(job["chunks"]["total"], chunks);
    assert_eq!(job["bytes"]["done"], bytes);
    assert_eq!(job["bytes"]["total"], bytes);
    assert_eq!(job["objects"]["done"], 4);

    // Each chunk came from the origin exactly once, fleet-wide; nothing outside the prefix.
    for (key, data) in &objects {
        let ranges = fleet.origin_gets_of(key);
        let mut expected: Vec<String> = (0..data.len().div_ceil(MIB))
            .map(|i| format!("bytes={}-{}", i * MIB, ((i + 1) * MIB).min(data.len()) - 1))
            .collect();
        expected.sort();
        assert_eq!(ranges, expected, "{key}");
    }
    assert!(fleet.origin_gets_of("elsewhere/x.bin").is_empty());
    // Each by its coordinator (as inspect names it): through that replica's own origin proxy.
    let internal: Vec<String> = fleet.replicas.iter().map(|r| r.internal_addr()).collect();
    for (key, _) in &objects {
        let (status, report) = fleet
            .ops(
                0,
                "GET",
                &format!("/cache/inspect?bucket={BUCKET}&key={}", encode_key(key)),
                Some(SECRET),
            )
            .await;
        assert_eq!(status, 200, "{report}");
        for c in report["chunks"].as_array().unwrap() {
            let coordinator = c["coordinator"].as_str().unwrap();
            let replica = internal.iter().position(|a| a == coordinator).unwrap();
            let (from, len) = (c["offset"].as_u64().unwrap(), c["length"].as_u64().unwrap());
            let range = format!("bytes={from}-{}", from + len - 1);
            let path = format!("/{BUCKET}/{key}");
            let through = fleet.proxies[replica]
                .counts()
                .log
                .iter()
                .filter(|r| {
                    r.method == "GET"
                        && r.path() == path
                        && r.range.as_deref() == Some(range.as_str())
                })
                .count();
            assert_eq!(
                through, 1,
                "{key} {range} was not fetched by its coordinator {coordinator}"
            );
        }
    }

    // Every replica serves every object, byte-exact, without one more origin GET.
    let before = fleet
        .origin_log()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    for replica in 0..3 {
        for (key, data) in &objects {
            fleet.get_exact(replica, key, data).await;
        }
    }
    let after = fleet
        .origin_log()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert_eq!(after, before, "warm reads went to the origin");

    // A second warm (through the API, on replica 2) fetches nothing: listing and HEADs only.
    let mark: Vec<usize> = fleet.proxies.iter().map(|p| p.counts().total).collect();
    let (status, job) = fleet
        .ops(
            2,
            "POST",
            "/cache/warm?bucket=bkt&prefix=data%2F",
            Some(SECRET),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["concurrency"], 4, "ops.warm_concurrency by default");
    let id = job["id"].as_str().unwrap().to_string();
    let job = fleet.wait_job(2, &id, |j| j["state"] != "running").await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["chunks_fetched"], 0, "{job}");
    assert_eq!(job["chunks_cached"], chunks, "{job}");
    assert_eq!(job["chunks"]["done"], job["chunks"]["total"]);
    assert_eq!(job["errors"], 0);
    for (p, m) in fleet.proxies.iter().zip(mark) {
        for r in &p.counts().log[m..] {
            let listing =
                r.method == "GET" && r.path().trim_end_matches('/') == format!("/{BUCKET}");
            assert!(
                listing || r.method == "HEAD",
                "a second warm asked the origin {r:?}"
            );
        }
    }

    // One object, exactly: no listing.
    let (status, job) = fleet
        .ops(
            0,
            "POST",
            "/cache/warm?bucket=bkt&key=data%2Fb.bin&concurrency=2",
            Some(SECRET),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let job = fleet.wait_job(0, &id, |j| j["state"] != "running").await;
    assert_eq!(job["objects"]["total"], 1, "{job}");
    assert_eq!(job["chunks"]["total"], 3, "{job}");
    assert_eq!(job["chunks_fetched"], 0, "{job}");
    // Asking for more than ops.warm_max_concurrency is refused.
    let (status, _) = fleet
        .ops(
            0,
            "POST",
            "/cache/warm?bucket=bkt&prefix=&concurrency=17",
            Some(SECRET),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_stops_a_running_warm_job_and_ctrl_c_cancels_the_subcommands_job() {
    // One replica is enough: the job runs where it was asked.
    let fleet = Fleet::start(
        1,
        "limits:\n  origin_timeout: 60s\n  origin_concurrency: 4\n",
    )
    .await;
    for i in 0..4u64 {
        fleet
            .put(&format!("slow/{i}.bin"), &deterministic_bytes(i, 2 * MIB))
            .await;
    }
    // Every chunk GET stalls after its first bytes: the job cannot finish while this holds.
    fleet.proxies[0].push_fault(
        FaultRule::new(Fault::StallBodyAfter(4096, Duration::from_secs(45)))
            .method("GET")
            .with_range()
            .times(100),
    );
    let (status, job) = fleet
        .ops(
            0,
            "POST",
            "/cache/warm?bucket=bkt&prefix=slow%2F&concurrency=1",
            Some(SECRET),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    // Running: its first chunk GET reached the origin.
    let started = poll_until(WAIT, || {
        (fleet.proxies[0].counts().gets_with_range > 0).then_some(())
    });
    assert!(started.is_some(), "the job never asked the origin");
    let (status, job) = fleet
        .ops(0, "DELETE", &format!("/cache/jobs/{id}"), Some(SECRET))
        .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(job["chunks"]["done"], 0, "{job}");
    assert!(job["finished_at"].is_u64(), "{job}");
    // It stays stopped: no other chunk is asked for, and it never finishes.
    fleet.proxies[0].clear_faults();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let gets = fleet.proxies[0].counts().gets_with_range;
    assert_eq!(gets, 1, "a cancelled job asked for more chunks");
    let (_, job) = fleet
        .ops(0, "GET", &format!("/cache/jobs/{id}"), Some(SECRET))
        .await;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(job["chunks"]["done"], 0, "{job}");

    // The subcommand cancels its job on Ctrl-C (SIGINT) and exits 130.
    fleet.proxies[0].push_fault(
        FaultRule::new(Fault::StallBodyAfter(4096, Duration::from_secs(45)))
            .method("GET")
            .with_range()
            .times(100),
    );
    let out_path = fleet.dir.path().join("warm.out");
    let child = Command::new(orca_bin())
        .args(["warm", "s3://bkt/slow/", "--concurrency", "1", "--ops"])
        .arg(fleet.replicas[0].ops_url())
        .arg("--token-file")
        .arg(&fleet.token_file)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(fleet.dir.path().join("warm.err")).unwrap())
        .spawn()
        .unwrap();
    let mut child = ChildGuard::new("orca warm", child);
    let running = poll_until(WAIT, || {
        let out = std::fs::read_to_string(&out_path).unwrap_or_default();
        let id = out
            .strip_prefix("warm job ")?
            .split_whitespace()
            .next()?
            .to_string();
        (fleet.proxies[0].counts().gets_with_range > gets).then_some(id)
    });
    let id = running.expect("the subcommand's job never asked the origin");
    child.signal("INT");
    let status = child
        .wait_timeout(WAIT)
        .expect("orca warm did not exit on SIGINT");
    let err = std::fs::read_to_string(fleet.dir.path().join("warm.err")).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    let (_, job) = fleet
        .ops(0, "GET", &format!("/cache/jobs/{id}"), Some(SECRET))
        .await;
    assert_eq!(job["state"], "cancelled", "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_makes_every_replica_serve_a_changed_object_at_once_and_empties_the_stores() {
    let mut fleet = Fleet::start(3, "").await;
    let key = "reports/daily.csv";
    let old = deterministic_bytes(1, 5 * MIB / 2);
    let old_etag = fleet.put(key, &old).await;
    for replica in 0..3 {
        fleet.get_exact(replica, key, &old).await;
    }
    let ids: Vec<ChunkId> = (0..3).map(|i| chunk_id(key, &old_etag, i)).collect();
    // Every chunk in the shared store (committed by its coordinator), then, once read from
    // there again, in each replica's local tier.
    let store = fleet.moto.endpoint();
    for id in &ids {
        let mut stored = false;
        for _ in 0..600 {
            stored = head_object(&store, STORE_BUCKET, &S3Store::object_key(id))
                .await
                .is_some();
            if stored {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(stored, "chunk {} never reached the shared store", id.name());
    }
    for replica in 0..3 {
        fleet.get_exact(replica, key, &old).await;
    }
    let everywhere = |ids: &[ChunkId]| {
        ids.iter().all(|id| {
            fleet
                .local_roots
                .iter()
                .all(|root| fs_chunk_path(root, id).exists())
        })
    };
    assert!(
        poll_until(WAIT, || everywhere(&ids).then_some(())).is_some(),
        "the local tiers never held every chunk"
    );
    for id in &ids {
        assert!(head_object(&store, STORE_BUCKET, &S3Store::object_key(id))
            .await
            .is_some());
    }

    // inspect: the pinned version, each chunk's coordinator and tiers.
    let out = fleet
        .cli(0, &["inspect", &format!("s3://{BUCKET}/{key}")])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("pinned: etag {old_etag}, {} bytes", old.len())),
        "{stdout}"
    );
    assert!(
        stdout.contains("chunk size 1.0 MiB, 3 chunks, 3 cached"),
        "{stdout}"
    );
    for id in &ids {
        let line = stdout
            .lines()
            .find(|l| l.ends_with(&id.name()))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(line.contains("local,s3"), "{line}");
    }
    let (_, report) = fleet
        .ops(
            0,
            "GET",
            "/cache/inspect?bucket=bkt&key=reports%2Fdaily.csv",
            Some(SECRET),
        )
        .await;
    let peers: Vec<String> = fleet.replicas.iter().map(|r| r.internal_addr()).collect();
    for c in report["chunks"].as_array().unwrap() {
        assert!(
            peers.contains(&c["coordinator"].as_str().unwrap().to_string()),
            "{c}"
        );
        assert_eq!(c["tiers"]["s3"], c["length"], "{c}");
    }

    // The object changes at the origin; the fleet still serves the pinned version (an hour).
    let new = deterministic_bytes(2, 2 * MIB);
    let new_etag = fleet.put(key, &new).await;
    assert_ne!(new_etag, old_etag);
    fleet.get_exact(1, key, &old).await;

    let out = fleet
        .cli(2, &["purge", &format!("s3://{BUCKET}/{key}")])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for p in &peers {
        assert!(stdout.contains(p.as_str()), "{stdout}");
    }
    assert!(stdout.contains("s3 3 chunks"), "{stdout}");
    assert!(stdout.contains("local 3 chunks"), "{stdout}");
    // The old chunks are gone from the shared store and from every local tier.
    for id in &ids {
        assert!(head_object(&store, STORE_BUCKET, &S3Store::object_key(id))
            .await
            .is_none());
        for root in &fleet.local_roots {
            assert!(!fs_chunk_path(root, id).exists(), "{}", id.name());
        }
    }
    // Purging again is fine: nothing left to remove, every replica answers.
    let (status, report) = fleet
        .ops(
            0,
            "POST",
            "/cache/purge?bucket=bkt&key=reports%2Fdaily.csv",
            Some(SECRET),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["complete"], true);
    assert_eq!(report["replicas"].as_array().unwrap().len(), 3);
    for r in report["replicas"].as_array().unwrap() {
        assert_eq!(r["reached"], true, "{r}");
        for (_, t) in r["tiers"].as_object().unwrap() {
            assert_eq!(t["chunks"], 0, "{report}");
        }
    }
    // Every replica serves the new bytes at once; the origin is asked for them once.
    for replica in 0..3 {
        fleet.get_exact(replica, key, &new).await;
    }
    // Three chunks of the old version, two of the new, each once.
    assert_eq!(
        fleet.origin_gets_of(key).len(),
        5,
        "{:?}",
        fleet.origin_gets_of(key)
    );
    let out = fleet
        .cli(1, &["inspect", &format!("s3://{BUCKET}/{key}")])
        .await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("pinned: etag {new_etag}")),
        "{}",
        text(&out)
    );

    // A replica that is down is reported, not skipped: exit 1.
    drop(fleet.replicas.remove(2));
    let out = fleet
        .cli(0, &["purge", &format!("s3://{BUCKET}/{key}")])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{}: NOT PURGED", peers[2])),
        "{stdout}"
    );
    assert!(stdout.contains("incomplete"), "{stdout}");
    let (status, report) = fleet
        .ops(
            1,
            "POST",
            "/cache/purge?bucket=bkt&key=reports%2Fdaily.csv",
            Some(SECRET),
        )
        .await;
    assert_eq!(status, 502, "{report}");
    assert_eq!(report["complete"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_control_needs_the_secret() {
    let fleet = Fleet::start(2, "").await;
    fleet.put("k", b"bytes").await;
    let paths = [
        ("POST", "/cache/warm?bucket=bkt&prefix="),
        ("GET", "/cache/jobs"),
        ("GET", "/cache/jobs/0123456789abcdef"),
        ("DELETE", "/cache/jobs/0123456789abcdef"),
        ("POST", "/cache/purge?bucket=bkt&key=k"),
        ("GET", "/cache/inspect?bucket=bkt&key=k"),
    ];
    for (method, path) in paths {
        for token in [None, Some("wrong"), Some("")] {
            let (status, body) = fleet.ops(0, method, path, token).await;
            assert_eq!(status, 403, "{method} {path} with {token:?}: {body}");
        }
    }
    assert_eq!(
        fleet.ops(0, "GET", "/cache/jobs", Some(SECRET)).await.0,
        200
    );
    // The peers' purge on the internal port asks for the shared secret too.
    let url = format!(
        "{}/internal/purge?bucket=bkt&key=k",
        fleet.replicas[1].internal_url()
    );
    let r = send(http_client().post(&url)).await.unwrap();
    assert_eq!(r.status, 403);
    let r = send(
        http_client()
            .post(&url)
            .header("x-orca-peer-secret", SECRET),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // The subcommands: without the token, 1 and the refusal; a malformed target, 2.
    let mut cmd = Command::new(orca_bin());
    cmd.args(["purge", "s3://bkt/k", "--ops"])
        .arg(fleet.replicas[0].ops_url())
        .env_remove("ORCA_ADMIN_TOKEN");
    let out = tokio::task::spawn_blocking(move || run_bounded(&mut cmd, None, CLIENT_DEADLINE))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        text(&out)
    );
    let out = fleet.cli(0, &["purge", "bkt/k"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = fleet.cli(0, &["inspect", "s3://bkt/"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // The token from the environment works as the file does.
    let mut cmd = Command::new(orca_bin());
    cmd.args(["inspect", "s3://bkt/k", "--ops"])
        .arg(fleet.replicas[0].ops_url())
        .env("ORCA_ADMIN_TOKEN", SECRET);
    let out = tokio::task::spawn_blocking(move || run_bounded(&mut cmd, None, CLIENT_DEADLINE))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not cached"),
        "{}",
        text(&out)
    );
}
